"""Complex-step products: Hessian-vector product ([Shen] eq. 10) and directional
derivative ([Shen] eq. 5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.complex_step.mode import ComplexStepMode
from secondorder.curvature.complex_step.steps import check_step, complex_dtype, first_order_step
from secondorder.curvature.functional import LossFunction, check_params, check_scalar_loss
from secondorder.errors import NonFiniteLossError

__all__ = [
    "check_finite_loss",
    "check_point",
    "complex_step_directional",
    "complex_step_hvp",
    "unit_direction",
]


def unit_direction(
    vec: Sequence[Tensor], dtype: torch.dtype, h: float | None = None
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Split a direction as ``vec = scale * unit`` with ``max |unit|`` in ``[1/2, 1)``.

    Once the truncation error is below rounding (``h <= first_order_step``, the default
    steps always are) the products are linear in the direction (``v^T H v`` quadratic),
    so they are computed for ``unit`` and scaled back. Without this, a direction of small
    norm (late in training) puts the imaginary parts ``h v`` and their ``O(h^2)`` cross
    terms into the subnormal range, where CPU arithmetic is up to ~100x slower and loses
    digits; a large one leaves the range in which the first-order rules are exact.
    ``scale`` is a power of two (``2^e`` from ``frexp`` of ``max |vec|``), so dividing and
    multiplying back are exact. No host sync. A larger ``h`` (a study of the truncation
    error, [Shen] Fig. 1) keeps the literal step ``h vec``: ``scale = 1``.

    Args:
        vec: the direction (any float dtype; cast to ``dtype``).
        dtype: the parameters' real dtype.
        h: the complex step; ``None`` always splits.

    Returns:
        ``(unit, scale)`` with ``scale`` a 0-dim tensor (``1`` for a zero or non-finite
        direction, or a step above :func:`first_order_step`).
    """
    vec = tuple(v.detach().to(dtype) for v in vec)
    peaks = [v.abs().amax() for v in vec if v.numel() > 0]
    one = torch.ones((), dtype=dtype, device=vec[0].device if vec else None)
    if not peaks or (h is not None and h > first_order_step(dtype)):
        return vec, one
    peak = torch.stack(peaks).amax()
    _, exponent = torch.frexp(peak)  # peak = m 2^e, m in [1/2, 1)
    usable = torch.isfinite(peak) & (peak > 0)
    scale = torch.where(usable, torch.ldexp(one, exponent), one)
    return tuple(v / scale for v in vec), scale


def _complex_point(params: tuple[Tensor, ...], vec: Sequence[Tensor], h: float) -> tuple:
    return tuple(
        torch.complex(p.detach(), v.detach().to(p.dtype) * h)
        for p, v in zip(params, vec, strict=True)
    )


def check_finite_loss(value: Tensor) -> None:
    """Raise :class:`~secondorder.errors.NonFiniteLossError` unless ``value`` is finite.

    ``value`` is the real part of a complex (or bicomplex) evaluation: ``f(w)`` to
    ``O(h^2)``. One host sync, the same as the autograd backend's check.

    Raises:
        NonFiniteLossError: ``value`` is NaN or infinite.
    """
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteLossError(f"the loss is not finite: {value.reshape(()).item()}")


def check_point(params: Sequence[Tensor], vec: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Validate a point and a direction for the complex step; return ``params`` as a tuple.

    Raises:
        ValueError: bad ``params``, ``vec`` not shaped like them, or a dtype other than
            float32/float64.
    """
    params = check_params(params)
    tl.check_like(vec, params, "vec")
    for p in params:
        complex_dtype(p.dtype)
        if p.is_complex():
            raise ValueError(f"complex step needs real parameters, got {p.dtype}")
    return params


def complex_step_hvp(
    loss_fn: LossFunction,
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
    h: float | None = None,
    *,
    required: Sequence[bool] | None = None,
) -> tuple[Tensor, ...]:
    """Hessian-vector product by the complex step, [Shen] eq. 10.

    ``H v = Im(g(w + i h v)) / h``: one complex forward pass (under
    :class:`ComplexStepMode`) and one backward pass. Exact to rounding for any ``h`` small
    enough that ``h^2`` is negligible (no subtractive cancellation, [Shen] Fig. 1).

    Args:
        loss_fn: scalar loss of a list of tensors; a ``.model`` attribute (set by
            :func:`~secondorder.curvature.functional_loss`) lets errors name the module.
        params: the point ``w`` (float32 or float64 tensors).
        vec: the direction ``v``, shaped like ``params``.
        h: complex step (default :func:`default_step`).
        required: per parameter, whether the loss is known to depend on it (e.g. its real
            gradient is nonzero). A required parameter that the complex evaluation never
            reaches means ``loss_fn`` ignored the tensor it was given (a closure reading
            the model's own parameter): an error, not a zero row. Default: none required
            (an unused parameter gets a zero product).

    Returns:
        A tuple shaped like ``params`` (their dtype).

    Raises:
        ValueError: bad ``params``/``vec``/``h``/``required``, non-float32/64 parameters,
            non-scalar loss, or a required parameter the loss does not depend on.
        NonFiniteLossError: the loss is NaN or infinite.
        ComplexStepUnsupportedError: the loss uses an op without a complex-step rule.

    Example:
        >>> f = lambda ps: (ps[0] ** 3).sum()
        >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> hv = complex_step_hvp(f, [w], [torch.ones(2, dtype=torch.float64)])[0]  # 6 w
        >>> [round(x, 12) for x in hv.tolist()]
        [6.0, 12.0]
    """
    params = check_point(params, vec)
    h = check_step(h, params[0].dtype)
    unit, scale = unit_direction(vec, params[0].dtype, h)
    zs = tuple(z.requires_grad_(True) for z in _complex_point(params, unit, h))
    first_order = h <= first_order_step(params[0].dtype)
    with torch.enable_grad():
        with ComplexStepMode(getattr(loss_fn, "model", None), first_order):
            loss = loss_fn(zs)
        loss = check_scalar_loss(loss, check_finite=False)
        check_finite_loss(loss.detach().real)
        if loss.requires_grad:
            grads = torch.autograd.grad(loss.real, zs, allow_unused=True)
        else:
            grads = (None,) * len(zs)
    if required is not None:
        _check_reached(grads, params, required)
    # autograd gives conj(f*'(z)); Im of the holomorphic gradient is -Im of it.
    return tuple(
        torch.zeros_like(p) if g is None else (g.imag * (-1.0 / h) * scale).to(p.dtype)
        for p, g in zip(params, grads, strict=True)
    )


def _check_reached(grads: Sequence[Tensor | None], params: tuple[Tensor, ...],
                   required: Sequence[bool]) -> None:
    required = tuple(bool(r) for r in required)
    if len(required) != len(params):
        raise ValueError(f"required has {len(required)} entries for {len(params)} parameters")
    for i, (g, need) in enumerate(zip(grads, required, strict=True)):
        if need and g is None:
            raise ValueError(
                f"the loss does not depend on the tensor it was given for params[{i}] "
                f"(shape {tuple(params[i].shape)}), although it depends on that parameter: "
                "the loss function must compute the loss from the tensors it is passed, "
                "not read the model's own parameters"
            )


def complex_step_directional(
    loss_fn: LossFunction,
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
    h: float | None = None,
) -> Tensor:
    """Directional derivative ``g^T v = Im f(w + i h v) / h`` ([Shen] eq. 5 along ``v``).

    One complex forward pass, no backward.

    Args:
        loss_fn: scalar loss of a list of tensors.
        params: the point ``w``.
        vec: the direction ``v``, shaped like ``params``.
        h: complex step (default :func:`default_step`).

    Returns:
        A 0-dim tensor of the parameters' dtype.

    Raises:
        ValueError: bad ``params``/``vec``/``h`` or non-scalar loss.
        NonFiniteLossError: the loss is NaN or infinite.
        ComplexStepUnsupportedError: the loss uses an op without a complex-step rule.

    Example:
        >>> f = lambda ps: (ps[0] ** 2).sum()
        >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> complex_step_directional(f, [w], [torch.tensor([1.0, 1.0], dtype=torch.float64)])
        tensor(6., dtype=torch.float64)
    """
    params = check_point(params, vec)
    h = check_step(h, params[0].dtype)
    unit, scale = unit_direction(vec, params[0].dtype, h)
    zs = _complex_point(params, unit, h)
    first_order = h <= first_order_step(params[0].dtype)
    with torch.no_grad(), ComplexStepMode(getattr(loss_fn, "model", None), first_order):
        loss = loss_fn(zs)
    loss = check_scalar_loss(loss, check_finite=False)
    check_finite_loss(loss.real)
    if not loss.is_complex():
        return torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    return (loss.imag / h * scale).to(params[0].dtype)
