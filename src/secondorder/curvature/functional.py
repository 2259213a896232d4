"""Loss functions of a list of parameter tensors.

The curvature API works on a *functional* loss ``loss_fn(params) -> scalar tensor`` so
that it can be evaluated at shifted, dual or complex parameters ([Shen] eq. 10 needs
``f(w + i h v)``). :func:`functional_loss` builds one from a ``torch.nn.Module``, a
criterion and a batch via :func:`torch.func.functional_call`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from secondorder.curvature.attention import double_differentiable_attention
from secondorder.errors import NonFiniteLossError

LossFunction = Callable[[Sequence[Tensor]], Tensor]

__all__ = [
    "LossFunction",
    "check_params",
    "check_scalar_loss",
    "functional_loss",
    "functional_model",
]


def check_params(params: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Validate a parameter list and return it as a tuple.

    Raises:
        ValueError: if ``params`` is a single tensor, is empty, or holds a non-tensor.
    """
    if isinstance(params, Tensor):
        raise ValueError(
            "params must be a sequence of tensors, got a single tensor; wrap it: [tensor]"
        )
    params = tuple(params)
    if len(params) == 0:
        raise ValueError("params is empty: there is no parameter to differentiate")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise ValueError(f"params[{i}] is a {type(p).__name__}, not a tensor")
    return params


def check_scalar_loss(loss: Tensor, *, check_finite: bool = True) -> Tensor:
    """Raise a clear error unless ``loss`` is a finite scalar tensor.

    ``check_finite`` costs one host sync; hot loops pass ``False`` and check later.

    Raises:
        ValueError: if ``loss`` is not a tensor or has more than one element.
        NonFiniteLossError: if ``check_finite`` and the loss is NaN or infinite.
    """
    if not isinstance(loss, Tensor):
        raise ValueError(f"the loss must be a tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"the loss must be a scalar, got a tensor of shape {tuple(loss.shape)}; "
            "reduce it (e.g. .mean()) before differentiating"
        )
    if check_finite and not bool(torch.isfinite(loss.detach().real).all()):
        raise NonFiniteLossError(f"the loss is not finite: {loss.detach().reshape(()).item()}")
    return loss.reshape(())


def functional_model(
    model: nn.Module,
    inputs: Tensor,
    *,
    params: Sequence[Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Callable[[Sequence[Tensor]], Tensor], tuple[Tensor, ...]]:
    """Turn a model and its inputs into ``(output_fn, params)``: outputs as a function of params.

    ``output_fn(ps)`` returns ``model(inputs)`` computed with the tensors ``ps`` in place of
    the model's trainable parameters (those with ``requires_grad``, or the given
    ``params``), in ``model.named_parameters()`` order. Buffers (batch-norm running
    statistics) are read from the model but each call works on copies of them, so
    evaluating curvature never changes the model (and ``torch.func`` transforms see no
    mutation of captured tensors). Attention runs with the math kernel, which autograd
    can differentiate twice (:mod:`secondorder.curvature.attention`). :func:`functional_loss`
    and :meth:`~secondorder.curvature.ggn.GGNOperator.from_model` are built on it.

    With ``dtype`` (e.g. ``torch.float32`` for a bfloat16 model) the model is evaluated in
    that precision: the returned ``params`` are copies of the parameters cast to ``dtype``,
    and floating-point inputs, buffers and the other parameters are cast too (once, here;
    the model itself is not touched). Curvature at these ``params`` is then computed in
    ``dtype``, as mixed-precision training keeps its optimizer state in float32
    (``docs/curvature_accuracy.md`` measures what this buys).

    Args:
        model: the network.
        inputs: the batch inputs.
        params: which of the model's parameters to treat as variables (default: all
            parameters that require grad).
        dtype: floating-point precision to evaluate the model in (default: as it is).

    Returns:
        ``(output_fn, params)`` with ``params`` the model's current parameter tensors (cast
        copies of them when ``dtype`` is given).

    Raises:
        ValueError: if no parameter requires grad, or ``dtype`` is not a floating-point
            dtype.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"Invalid dtype: {dtype!r}; expected a floating-point torch.dtype")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is not None:
        wanted = {id(p) for p in params}
        named = [(n, p) for n, p in named if id(p) in wanted]
    if not named:
        raise ValueError(
            f"{type(model).__name__} has no parameter that requires grad; nothing to differentiate"
        )
    names = [n for n, _ in named]
    buffers = dict(model.named_buffers())
    variables = tuple(p for _, p in named)
    if dtype is not None:
        inputs = _cast(inputs, dtype)
        buffers = {n: _cast(b, dtype) for n, b in buffers.items()}
        # The parameters that are not variables are passed too, in the same precision.
        chosen = set(names)
        buffers.update((n, p.detach().to(dtype)) for n, p in model.named_parameters()
                       if n not in chosen)
        variables = tuple(p.detach().to(dtype) for p in variables)

    def output_fn(ps: Sequence[Tensor]) -> Tensor:
        if len(ps) != len(names):
            raise ValueError(f"expected {len(names)} parameter tensors, got {len(ps)}")
        tensors = {n: b.clone() for n, b in buffers.items()}
        tensors.update(zip(names, ps, strict=True))
        with double_differentiable_attention():
            return torch.func.functional_call(model, tensors, (inputs,), strict=False)

    return output_fn, variables


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` if it holds floating-point numbers (indices and counters stay)."""
    return t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t


def functional_loss(
    model: nn.Module,
    criterion: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    params: Sequence[Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[LossFunction, tuple[Tensor, ...]]:
    """Turn a model, a criterion and a batch into ``(loss_fn, params)``.

    ``loss_fn(ps)`` returns ``criterion(model(inputs), targets)`` computed with the tensors
    ``ps`` in place of the model's trainable parameters (see :func:`functional_model`:
    ``named_parameters()`` order, buffers copied per call so the model never changes).

    Args:
        model: the network.
        criterion: loss of ``(outputs, targets)``, reducing to a scalar.
        inputs: the batch inputs.
        targets: the batch targets.
        params: which of the model's parameters to treat as variables (default: all
            parameters that require grad).
        dtype: floating-point precision to evaluate the model and the loss in (floating
            targets are cast too); see :func:`functional_model`.

    Returns:
        ``(loss_fn, params)`` with ``params`` the model's current parameter tensors (cast
        copies of them when ``dtype`` is given).

    Raises:
        ValueError: if no parameter requires grad, or ``dtype`` is not a floating-point
            dtype.

    Example:
        >>> model, x, y = nn.Linear(3, 1), torch.ones(4, 3), torch.zeros(4, 1)
        >>> loss_fn, params = functional_loss(model, nn.MSELoss(), x, y)
        >>> bool(torch.allclose(loss_fn(params), nn.MSELoss()(model(x), y)))
        True
    """
    output_fn, params = functional_model(model, inputs, params=params, dtype=dtype)
    if dtype is not None:
        targets = _cast(targets, dtype)

    def loss_fn(ps: Sequence[Tensor]) -> Tensor:
        return criterion(output_fn(ps), targets)

    loss_fn.model = model  # type: ignore[attr-defined]  # lets complex-step name modules
    return loss_fn, params
