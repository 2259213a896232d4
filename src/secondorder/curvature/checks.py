"""Taylor tests of a gradient and of a Hessian-vector product ([Veitch] Sec. 3.4, eq. 31).

[Veitch] asks that every objective pass a gradient test: along a random direction ``d``,
``(L(w + h d) - L(w - h d)) / (2h) = d^T grad L + O(h^2)`` (eq. 31). The same check in its
one-sided Taylor form reads the *order* of the remainders off a log-log plot:

- ``|f(w + h d) - f(w)|`` is ``O(h)``;
- ``|f(w + h d) - f(w) - h g^T d|`` is ``O(h^2)`` if ``g`` is the gradient, but only
  ``O(h)`` if ``g`` is wrong;
- ``|f(w + h d) - f(w) - h g^T d - h^2/2 d^T H d|`` is ``O(h^3)`` if also ``H d`` is right,
  ``O(h^2)`` otherwise.

:func:`gradient_test` and :func:`hvp_test` tabulate these errors over a range of ``h`` and fit
the slope of ``log(error)`` against ``log(h)``, skipping the points below the rounding
floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.functional import LossFunction, check_params, check_scalar_loss
from secondorder.curvature.hvp import check_backend, gradient, hvp

__all__ = ["TaylorTestResult", "gradient_test", "hvp_test"]


@dataclass
class TaylorTestResult:
    """A table of Taylor remainders and their observed orders.

    Attributes:
        steps: the step sizes ``h``, 1-D float64 tensor (CPU).
        errors: shape ``(len(steps), 2)``: column 0 the lower-order remainder, column 1 the
            remainder that uses the checked derivative.
        orders: the observed orders (log-log slopes) of the two columns, shape ``(2,)``;
            NaN where fewer than two points are above the rounding floor.
        expected: the orders a correct derivative gives, ``(1, 2)`` for the gradient test,
            ``(2, 3)`` for the HVP test.
        names: the column names.
    """

    steps: Tensor
    errors: Tensor
    orders: Tensor
    expected: tuple[int, int]
    names: tuple[str, str]

    def passed(self, tol: float = 0.3) -> bool:
        """True when the checked column's order is at least ``expected[1] - tol``."""
        return bool(self.orders[1] >= self.expected[1] - tol)

    def __str__(self) -> str:
        lines = [f"{'h':>10}  {self.names[0]:>14}  {self.names[1]:>14}"]
        for h, (e0, e1) in zip(self.steps.tolist(), self.errors.tolist(), strict=True):
            lines.append(f"{h:10.3e}  {e0:14.6e}  {e1:14.6e}")
        o0, o1 = self.orders.tolist()
        lines.append(
            f"{'order':>10}  {o0:14.3f}  {o1:14.3f}   (expected {self.expected[0]}, "
            f"{self.expected[1]})"
        )
        return "\n".join(lines)


def _slope(steps: Tensor, errors: Tensor, floor: float) -> float:
    keep = errors > floor
    if int(keep.sum()) < 2:
        return float("nan")
    x, y = steps[keep].log(), errors[keep].log()
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def _default_steps(dtype: torch.dtype, expected: int) -> Tensor:
    # Keep the checked remainder, ~h^expected, well above the rounding floor eps * |f|.
    eps = torch.finfo(dtype).eps
    smallest = max(eps ** (0.6 / expected), 1e-6)
    return torch.logspace(-1, float(torch.tensor(smallest).log10()), 8, dtype=torch.float64)


def _prepare(loss_fn, params, direction, generator, steps, expected):
    params = tuple(p.detach() for p in check_params(params))
    if direction is None:
        dev = generator.device if generator is not None else params[0].device
        direction = tuple(
            torch.randn(p.shape, generator=generator, device=dev).to(p.dtype).to(p.device)
            for p in params
        )
        direction = tl.scale(direction, 1.0 / tl.norm(direction))
    else:
        tl.check_like(direction, params, "direction")
        direction = tuple(d.detach().to(p.dtype) for d, p in zip(direction, params, strict=True))
    if steps is None:
        steps = _default_steps(params[0].dtype, expected)
    else:
        steps = torch.as_tensor(steps, dtype=torch.float64).reshape(-1)
        if steps.numel() < 2 or not bool((steps > 0).all()):
            raise ValueError(
                f"Invalid steps: {steps.tolist()}; give at least two positive step sizes"
            )
    with torch.no_grad():
        f0 = check_scalar_loss(loss_fn(params))
        shifted = torch.stack(
            [check_scalar_loss(loss_fn(tl.add(params, direction, float(h)))) for h in steps]
        )
    return params, direction, steps, f0, shifted


def _result(steps, f0, errors, expected, names) -> TaylorTestResult:
    errors = errors.detach().to(device="cpu", dtype=torch.float64)
    eps = torch.finfo(f0.dtype).eps
    floor = 100 * eps * max(1.0, abs(float(f0)))
    orders = torch.tensor([_slope(steps, errors[:, c], floor) for c in range(2)])
    return TaylorTestResult(steps, errors, orders, expected, names)


def gradient_test(
    loss_fn: LossFunction,
    params: Sequence[Tensor],
    *,
    direction: Sequence[Tensor] | None = None,
    grad: Sequence[Tensor] | None = None,
    steps: Sequence[float] | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> TaylorTestResult:
    """Check a gradient by the order of its Taylor remainder ([Veitch] eq. 31).

    Tabulates ``|f(w + h d) - f(w)|`` (order 1) and ``|f(w + h d) - f(w) - h g^T d|``
    (order 2 if ``g`` is the gradient, 1 if it is wrong) and their log-log slopes.

    Args:
        loss_fn: scalar loss of a list of tensors.
        params: the point ``w``.
        direction: the direction ``d`` (default: a random unit vector).
        grad: the gradient to check (default: autograd's, which checks the loss itself).
        steps: the step sizes ``h`` (default: 8 log-spaced values from 0.1 down to where
            ``h^2`` nears the rounding floor of the dtype).
        generator: random generator for the default direction.

    Returns:
        A :class:`TaylorTestResult`; ``result.orders[1]`` near 2 means the gradient is
        right, and ``print(result)`` shows the table.

    Raises:
        ValueError: bad ``params``, ``direction``, ``grad`` shapes or ``steps``.

    Example:
        >>> f = lambda ps: (ps[0] ** 3).sum()
        >>> w = [torch.ones(3, dtype=torch.float64)]
        >>> round(float(gradient_test(f, w).orders[1]))
        2
        >>> round(float(gradient_test(f, w, grad=[torch.zeros(3, dtype=torch.float64)]).orders[1]))
        1
    """
    params, direction, steps, f0, shifted = _prepare(
        loss_fn, params, direction, generator, steps, expected=2
    )
    if grad is None:
        _, grad = gradient(loss_fn, params)
    else:
        tl.check_like(grad, params, "grad")
    slope = tl.dot(tuple(g.detach() for g in grad), direction)
    h = steps.to(dtype=shifted.dtype, device=shifted.device)
    e0 = (shifted - f0).abs()
    e1 = (shifted - f0 - h * slope).abs()
    return _result(steps, f0, torch.stack([e0, e1], 1), (1, 2), ("|f(w+hd)-f|", "|... - h g.d|"))


def hvp_test(
    loss_fn: LossFunction,
    params: Sequence[Tensor],
    *,
    direction: Sequence[Tensor] | None = None,
    hessian_vector: Sequence[Tensor] | None = None,
    backend: str = "autograd",
    steps: Sequence[float] | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> TaylorTestResult:
    """Check a Hessian-vector product by the order of the second-order Taylor remainder.

    Tabulates ``|f(w + h d) - f(w) - h g^T d|`` (order 2) and
    ``|f(w + h d) - f(w) - h g^T d - h^2/2 d^T (H d)|`` (order 3 if ``H d`` is right, 2 if
    not), with ``g`` autograd's gradient.

    Args:
        loss_fn: scalar loss of a list of tensors.
        params: the point ``w``.
        direction: the direction ``d`` (default: a random unit vector; give it when you
            pass ``hessian_vector``).
        hessian_vector: the product ``H d`` to check (default: :func:`hvp` with
            ``backend``, which checks that backend).
        backend: the :func:`hvp` backend used when ``hessian_vector`` is not given.
        steps: the step sizes ``h`` (default: 8 log-spaced values from 0.1 down to where
            ``h^3`` nears the rounding floor).
        generator: random generator for the default direction.

    Returns:
        A :class:`TaylorTestResult`; ``result.orders[1]`` near 3 means the product is right.

    Raises:
        ValueError: ``hessian_vector`` without ``direction``, bad shapes, bad ``steps`` or
            ``backend``.
    """
    check_backend(backend)
    if hessian_vector is not None and direction is None:
        raise ValueError("hessian_vector is H d for a given d: pass the direction too")
    params, direction, steps, f0, shifted = _prepare(
        loss_fn, params, direction, generator, steps, expected=3
    )
    _, grad = gradient(loss_fn, params)
    if hessian_vector is None:
        hessian_vector = hvp(loss_fn, params, direction, backend)
    else:
        tl.check_like(hessian_vector, params, "hessian_vector")
    slope = tl.dot(grad, direction)
    curv = tl.dot(tuple(v.detach() for v in hessian_vector), direction)
    h = steps.to(dtype=shifted.dtype, device=shifted.device)
    e1 = (shifted - f0 - h * slope).abs()
    e2 = (shifted - f0 - h * slope - 0.5 * h * h * curv).abs()
    return _result(
        steps, f0, torch.stack([e1, e2], 1), (2, 3), ("|... - h g.d|", "|... - h^2/2 dHd|")
    )
