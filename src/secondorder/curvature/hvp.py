"""Hessian-vector products of a functional loss, by several backends.

``hvp(loss_fn, params, vec, backend=...)`` returns ``H(params) @ vec`` as a tuple shaped
like ``params``. Backends:

- ``"autograd"`` (default): Pearlmutter's double backward,
  ``Hv = d/dw <grad f(w), v>`` via two :func:`torch.autograd.grad` calls.
- ``"forward"``: forward-over-reverse, :func:`torch.func.jvp` of :func:`torch.func.grad`.
  Under :class:`torch.autocast` it works where every op's forward-mode rule follows the
  casts (linear layers, layer norm, attention) and raises a ``RuntimeError`` that says so
  where one does not (convolutions).

For a bfloat16 or float16 model, build the loss with ``functional_loss(..., dtype=
torch.float32)`` to take the products in float32 (``docs/curvature_accuracy.md``).
- ``"complex-step"``: [Shen] eq. 10, ``Hv = Im(grad f(w + i h v)) / h``; exact to
  rounding for any ``h`` small enough (no subtractive cancellation). See
  :mod:`secondorder.curvature.complex_step`.
- ``"finite-difference"``: ``(g(w + h v) - g(w)) / h`` (``scheme="forward"``) or
  ``(g(w + h v) - g(w - h v)) / (2h)`` (``scheme="central"``); for comparison only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature import complex_step
from secondorder.curvature.attention import double_differentiable_attention
from secondorder.curvature.functional import LossFunction, check_params, check_scalar_loss
from secondorder.curvature.operators import HessianOperator

BACKENDS = ("autograd", "forward", "complex-step", "finite-difference")

__all__ = ["BACKENDS", "hvp", "gradient", "check_backend"]


def check_backend(backend: str) -> str:
    """Return ``backend`` or raise ``ValueError`` naming the valid ones."""
    if backend not in BACKENDS:
        raise ValueError(f"Invalid HVP backend: {backend!r}; choose one of {BACKENDS}")
    return backend


def _leaves(params: Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(p.detach().requires_grad_(True) for p in params)


def gradient(loss_fn: LossFunction, params: Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Loss and gradient at ``params`` (no graph kept).

    Raises:
        ValueError: if the loss is not a scalar.
        NonFiniteLossError: if the loss is NaN or infinite.
    """
    params = check_params(params)
    xs = _leaves(params)
    with torch.enable_grad():
        loss = check_scalar_loss(loss_fn(xs))
        grads = torch.autograd.grad(loss, xs, allow_unused=True)
    grads = tuple(torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads, strict=True))
    return loss.detach(), grads


def _hvp_autograd(loss_fn: LossFunction, params: tuple[Tensor, ...], vec: tuple[Tensor, ...]):
    # Pearlmutter: one forward, a first backward with create_graph, a second backward.
    return HessianOperator(loss_fn, params)._matvec(vec)


def _hvp_forward(loss_fn: LossFunction, params: tuple[Tensor, ...], vec: tuple[Tensor, ...]):
    def loss_and_aux(q):
        loss = check_scalar_loss(loss_fn(q), check_finite=False)
        return loss, loss.detach()

    def grad_fn(ps):
        return torch.func.grad(loss_and_aux, has_aux=True)(ps)

    try:
        with double_differentiable_attention():
            _, hv, loss = torch.func.jvp(
                grad_fn, (tuple(p.detach() for p in params),), (tuple(vec),), has_aux=True
            )
    except RuntimeError as exc:
        if not torch.is_autocast_enabled(params[0].device.type):
            raise
        raise RuntimeError(
            "hvp(backend='forward') failed under torch.autocast: forward-mode AD does not "
            "follow autocast's casts through every op (a convolution's tangent stays in the "
            "parameters' dtype while autocast casts its input). Use backend='autograd', or "
            f"take the product outside the autocast region. Cause: {exc}"
        ) from exc
    check_scalar_loss(loss)  # NaN/Inf: NonFiniteLossError, as the other backends
    return tuple(hv)


def _hvp_finite_difference(
    loss_fn: LossFunction,
    params: tuple[Tensor, ...],
    vec: tuple[Tensor, ...],
    h: float,
    scheme: str,
):
    plus = tl.add(tl.clone(params), vec, h)
    _, g_plus = gradient(loss_fn, plus)
    if scheme == "forward":
        _, g0 = gradient(loss_fn, params)
        return tl.scale(tl.sub(g_plus, g0), 1.0 / h)
    minus = tl.add(tl.clone(params), vec, -h)
    _, g_minus = gradient(loss_fn, minus)
    return tl.scale(tl.sub(g_plus, g_minus), 0.5 / h)


def hvp(
    loss_fn: LossFunction,
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
    backend: str = "autograd",
    *,
    h: float | None = None,
    scheme: str = "central",
) -> tuple[Tensor, ...]:
    """Hessian-vector product ``H(params) @ vec``.

    Args:
        loss_fn: scalar loss of a list of tensors (see
            :func:`~secondorder.curvature.functional_loss`).
        params: the point, a sequence of tensors.
        vec: the direction, shaped like ``params``.
        backend: one of :data:`BACKENDS` (module docstring).
        h: step for ``"complex-step"`` (default 1e-20 in float64, 1e-10 in float32... see
            :func:`~secondorder.curvature.complex_step.default_step`) and
            ``"finite-difference"`` (default ``eps**(1/2)`` forward, ``eps**(1/3)`` central).
        scheme: ``"forward"`` or ``"central"`` for ``"finite-difference"``.

    Returns:
        A tuple of tensors shaped like ``params``.

    Raises:
        ValueError: bad backend or scheme, ``vec`` not shaped like ``params``, non-scalar loss.
        NonFiniteLossError: NaN or infinite loss.
        ComplexStepUnsupportedError: ``"complex-step"`` through an op without a rule.
        RuntimeError: ``"forward"`` under :class:`torch.autocast` through an op whose
            forward-mode rule does not follow autocast's casts (module docstring).

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> f = lambda ps: 0.5 * ps[0] @ A @ ps[0]
        >>> w, v = torch.zeros(2).double(), torch.tensor([1.0, 0.0]).double()
        >>> hvp(f, [w], [v])[0]
        tensor([2., 1.], dtype=torch.float64)
    """
    check_backend(backend)
    params = check_params(params)
    tl.check_like(vec, params, "vec")
    vec = tuple(v.detach().to(dtype=p.dtype) for v, p in zip(vec, params, strict=True))
    if backend == "autograd":
        return _hvp_autograd(loss_fn, params, vec)
    if backend == "forward":
        return _hvp_forward(loss_fn, params, vec)
    if backend == "complex-step":
        return complex_step.complex_step_hvp(loss_fn, params, vec, h=h)
    if scheme not in ("forward", "central"):
        raise ValueError(
            f"Invalid finite-difference scheme: {scheme!r}; use 'forward' or 'central'"
        )
    eps = torch.finfo(params[0].dtype).eps
    if h is None:
        h = eps ** (0.5 if scheme == "forward" else 1.0 / 3.0)
    if not h > 0:
        raise ValueError(f"Invalid finite-difference step: h={h}; it must be positive")
    return _hvp_finite_difference(loss_fn, params, vec, float(h), scheme)
