"""Line searches, written once and composed into every optimizer.

A line search only calls the one-dimensional objective ``phi``; the optimizer writes it
(moving its parameters to ``x + t d`` and calling its closure)::

    phi(t) -> (loss, grad)                    # loss: 0-dim tensor, grad: tuple of tensors
    phi(t, need_grad=False) -> (loss, None)   # only asked for by backtracking(need_grad=False)

Every search returns a :class:`LineSearchResult` holding the loss and (when evaluated) the
gradient at the accepted step, so the optimizer reuses them instead of evaluating again.
Failure (no acceptable step within the budget, a direction that is not a descent
direction) is reported through ``success``/``message``, never by raising.

- :func:`backtracking`: Armijo backtracking ([NocedalWright2006] Alg. 3.1) with safeguarded
  quadratic/cubic interpolation ([NocedalWright2006] Sec. 3.5, eqs. 3.57-3.58).
- :func:`nonmonotone_backtracking`: the same with the Grippo-Lampariello-Lucidi acceptance
  test against the largest of the last ``M`` losses ([Raydan1997] for Barzilai-Borwein).
- :func:`strong_wolfe`: [NocedalWright2006] Alg. 3.5/3.6 with cubic interpolation, step for step
  the search of ``torch.optim.LBFGS`` (``torch.optim.lbfgs._strong_wolfe``).

Each evaluation costs exactly one host synchronization (the search's decisions are taken
on the host); nothing else syncs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from secondorder import tensorlist as tl

Objective = Callable[..., tuple[Tensor, "tuple[Tensor, ...] | None"]]

__all__ = [
    "LineSearchResult",
    "Objective",
    "backtracking",
    "cubic_interpolate",
    "nonmonotone_backtracking",
    "strong_wolfe",
]


@dataclass
class LineSearchResult:
    """Outcome of a line search.

    Attributes:
        step: the accepted step ``t`` (a float; ``0.0`` when no step improved on the start).
        loss: the loss at ``x + step * d`` (0-dim tensor, as ``phi`` returned it).
        grad: the gradient there, or ``None`` when the search never evaluated it at that
            step (e.g. ``backtracking(need_grad=False)``, or ``step == 0`` without ``grad0``).
        evaluations: calls of ``phi``.
        success: whether the search's conditions hold at ``step``.
        message: why the search stopped.
    """

    step: float
    loss: Tensor | None
    grad: tuple[Tensor, ...] | None
    evaluations: int
    success: bool
    message: str


def _as_loss(value: float | Tensor, like: Tensor | None) -> Tensor:
    if isinstance(value, Tensor):
        if value.requires_grad or value.dim():
            return value.detach().reshape(())
        return value  # detached and 0-dim already (an optimizer's loss): no two no-op calls
    kw = {} if like is None else {"device": like.device}
    return torch.tensor(float(value), dtype=torch.float64, **kw)


def _detached(x: Tensor) -> Tensor:
    """``x.detach()``, without the call when ``x`` has no graph."""
    return x.detach() if x.requires_grad else x


def _float64(x: Tensor) -> Tensor:
    """``x.double()``, without the call when ``x`` is float64 already (a no-op that still
    costs a dispatch, several times per line-search trial)."""
    return x if x.dtype is torch.float64 else x.double()


def _to_float(value: float | Tensor) -> float:
    if isinstance(value, Tensor):
        return float(value.detach() if value.requires_grad else value)
    return float(value)


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"Invalid {name} value: {value}; it must be a non-negative integer")


def _check_step(step: float) -> None:
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"Invalid step value: {step}; it must be positive and finite")


# ----------------------------------------------------------------------------- backtracking


def _interpolate_backtrack(
    loss0: float, slope0: float, t: float, f_t: float, t_prev: float | None, f_prev: float | None
) -> float:
    """Next trial of an Armijo backtracking ([NocedalWright2006] Sec. 3.5), safeguarded to ``[0.1,
       0.5] t``.

    The first backtrack minimizes the quadratic through ``phi(0), phi'(0), phi(t)``
    ([NocedalWright2006] eq. 3.57); later ones the cubic through ``phi(0), phi'(0)`` and the last
    two
    trials ([NocedalWright2006] eq. 3.58).
    """
    lo, hi = 0.1 * t, 0.5 * t
    if not math.isfinite(f_t):
        return hi
    new = math.nan
    if t_prev is None or f_prev is None or not math.isfinite(f_prev):
        denom = 2.0 * (f_t - loss0 - slope0 * t)
        if denom > 0:
            new = -slope0 * t * t / denom
    else:
        r1 = f_t - loss0 - slope0 * t
        r0 = f_prev - loss0 - slope0 * t_prev
        scale = 1.0 / (t_prev * t_prev * t * t * (t - t_prev))
        a = scale * (t_prev * t_prev * r1 - t * t * r0)
        b = scale * (-t_prev**3 * r1 + t**3 * r0)
        if a == 0.0:
            if b != 0.0:
                new = -slope0 / (2.0 * b)
        else:
            disc = b * b - 3.0 * a * slope0
            if disc >= 0:
                new = (-b + math.sqrt(disc)) / (3.0 * a)
    if not math.isfinite(new):
        return hi
    return min(max(new, lo), hi)


def _backtrack(
    phi: Objective,
    loss0: float | Tensor | None,
    reference: float | Tensor,
    slope0: float | Tensor,
    *,
    step: float,
    c1: float,
    shrink: float,
    max_evals: int,
    need_grad: bool,
    interpolate: bool,
    start_values: tuple[float, float] | None = None,
) -> LineSearchResult:
    if not 0 < c1 < 1:
        raise ValueError(f"Invalid c1 value: {c1}; it must lie in (0, 1)")
    if not 0 < shrink < 1:
        raise ValueError(f"Invalid shrink value: {shrink}; it must lie in (0, 1)")
    _check_step(step)
    _check_positive_int("max_evals", max_evals)
    like = next((v for v in (loss0, reference, slope0) if isinstance(v, Tensor)), None)
    if start_values is not None and reference is loss0:  # backtracking's call, with phi(0)
        # and phi'(0) read by the caller: nothing to read here
        f0, slope = float(start_values[0]), float(start_values[1])
        return _backtrack_from(phi, f0, f0, slope, _as_loss(loss0, like), step=step, c1=c1,
                               shrink=shrink, max_evals=max_evals, need_grad=need_grad,
                               interpolate=interpolate)
    vals = [slope0, reference] + ([] if loss0 is None else [loss0])
    vals = [v.detach().reshape(()).double() if isinstance(v, Tensor) else v for v in vals]
    on_device = [i for i, v in enumerate(vals) if isinstance(v, Tensor)]
    if on_device:  # one sync for all the tensors, wherever they live
        device = vals[on_device[0]].device
        host = torch.stack([vals[i].to(device) for i in on_device]).tolist()
        for i, h in zip(on_device, host, strict=True):
            vals[i] = h
    slope, ref = float(vals[0]), float(vals[1])
    f0 = None if loss0 is None else float(vals[2])
    start_loss = None if loss0 is None else _as_loss(loss0, like)
    return _backtrack_from(phi, f0, ref, slope, start_loss, step=step, c1=c1, shrink=shrink,
                           max_evals=max_evals, need_grad=need_grad, interpolate=interpolate)


def _backtrack_from(
    phi: Objective,
    f0: float | None,
    ref: float,
    slope: float,
    start_loss: Tensor | None,
    *,
    step: float,
    c1: float,
    shrink: float,
    max_evals: int,
    need_grad: bool,
    interpolate: bool,
) -> LineSearchResult:
    """:func:`_backtrack` once ``phi(0)``, the reference loss and ``phi'(0)`` are floats."""
    if not slope < 0:
        return LineSearchResult(
            0.0, start_loss, None, 0, False, f"not a descent direction: slope {slope} >= 0"
        )
    # with an unknown phi(0) interpolation has nothing to fit: plain shrinking
    interpolate = interpolate and f0 is not None and math.isfinite(f0)

    best = (0.0, math.inf if f0 is None else f0, start_loss, None)
    t, t_prev, f_prev = float(step), None, None
    for k in range(max_evals):
        loss, grad = phi(t) if need_grad else phi(t, need_grad=False)
        f = _to_float(loss)  # the one host sync of this evaluation
        if not math.isfinite(f):
            f = math.inf
        if f <= ref + c1 * t * slope:
            return LineSearchResult(t, _detached(loss), grad, k + 1, True,
                                    "armijo condition holds")
        if f < best[1]:
            best = (t, f, _detached(loss), grad)
        if interpolate:
            t, t_prev, f_prev = _interpolate_backtrack(f0, slope, t, f, t_prev, f_prev), t, f
        else:
            t = t * shrink
    t, _, loss, grad = best
    message = f"max_evals={max_evals} reached without sufficient decrease"
    return LineSearchResult(t, loss, grad, max_evals, False, message)


def backtracking(
    phi: Objective,
    loss0: float | Tensor,
    slope0: float | Tensor,
    *,
    step: float = 1.0,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_evals: int = 30,
    need_grad: bool = False,
    interpolate: bool = True,
    start_values: tuple[float, float] | None = None,
) -> LineSearchResult:
    """Armijo backtracking line search ([NocedalWright2006] Alg. 3.1).

    Accepts the first trial ``t`` with ``phi(t) <= phi(0) + c1 t phi'(0)`` ([NocedalWright2006] eq.
    3.4),
    starting from ``step``. A rejected trial is replaced by the minimizer of the quadratic
    through ``phi(0), phi'(0), phi(t)`` (first backtrack, [NocedalWright2006] eq. 3.57) or of the
    cubic
    through ``phi(0), phi'(0)`` and the last two trials ([NocedalWright2006] eq. 3.58), safeguarded
    to
    ``[0.1 t, 0.5 t]``; a non-finite loss halves ``t``. On a quadratic the first backtrack
    lands on the exact minimizer.

    Args:
        phi: the objective along the direction (module docstring).
        loss0: ``phi(0)``.
        slope0: ``phi'(0) = g0 . d``; must be negative.
        step: the first trial.
        c1: sufficient-decrease constant in ``(0, 1)``.
        shrink: factor of the plain backtracking ``t <- shrink t`` (``interpolate=False``).
        max_evals: most calls of ``phi``.
        need_grad: evaluate the gradient at every trial (then ``phi(t)`` is called, else
            ``phi(t, need_grad=False)``), so that ``grad`` is returned.
        interpolate: use the safeguarded interpolation instead of ``shrink``.
        start_values: ``(phi(0), phi'(0))`` as floats, when the caller has read them (the
            float64 values of ``loss0`` and ``slope0``): the search then reads nothing
            before its first trial.

    Returns:
        A :class:`LineSearchResult`. On failure (budget spent, or ``slope0 >= 0`` which
        costs no evaluation) ``step`` is the trial with the lowest loss if it is below
        ``loss0``, else ``0.0`` with ``loss0``.

    Raises:
        ValueError: if ``c1`` or ``shrink`` is outside ``(0, 1)``, ``step`` is not positive
            or ``max_evals`` is negative.

    Example:
        >>> def phi(t, need_grad=True):
        ...     return torch.tensor((t - 0.3) ** 2, dtype=torch.float64), None
        >>> res = backtracking(phi, loss0=0.09, slope0=-0.6)
        >>> round(res.step, 12), res.evaluations, res.success
        (0.3, 2, True)
    """
    return _backtrack(
        phi, loss0, loss0, slope0, step=step, c1=c1, shrink=shrink, max_evals=max_evals,
        need_grad=need_grad, interpolate=interpolate, start_values=start_values,
    )  # fmt: skip


def nonmonotone_backtracking(
    phi: Objective,
    reference_loss: float | Tensor,
    slope0: float | Tensor,
    *,
    loss0: float | Tensor | None = None,
    step: float = 1.0,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_evals: int = 30,
    need_grad: bool = False,
    interpolate: bool = True,
) -> LineSearchResult:
    """Nonmonotone Armijo backtracking ([Grippo1986]; [Raydan1997].

    Accepts the first ``t`` with ``phi(t) <= reference_loss + c1 t phi'(0)`` where
    ``reference_loss = max(f_{k-M+1}, ..., f_k)`` over the last ``M`` accepted losses (the
    caller keeps that history). This lets the Barzilai-Borwein step increase the loss
    occasionally while still converging. Rejected trials shrink as in
    :func:`backtracking`: the safeguarded interpolation of ``phi`` needs the current loss
    ``loss0 = phi(0)`` (Raydan's safeguarded quadratic rule); without it ``t <- shrink t``.

    Args:
        phi: the objective along the direction (module docstring).
        reference_loss: the largest of the last ``M`` losses (equals ``loss0`` for ``M = 1``,
            which is :func:`backtracking`).
        slope0: ``phi'(0) = g0 . d``; must be negative.
        loss0: ``phi(0)``, for interpolation (optional).
        step: the first trial (the Barzilai-Borwein step).
        c1: sufficient-decrease constant in ``(0, 1)``.
        shrink: factor of the plain backtracking.
        max_evals: most calls of ``phi``.
        need_grad: evaluate the gradient at every trial (see :func:`backtracking`).
        interpolate: use the safeguarded interpolation when ``loss0`` is given.

    Returns:
        A :class:`LineSearchResult`; on failure as :func:`backtracking` (``loss`` is
        ``None`` when ``step`` is ``0.0`` and ``loss0`` was not given).

    Raises:
        ValueError: as :func:`backtracking`.
    """
    return _backtrack(
        phi, loss0, reference_loss, slope0, step=step, c1=c1, shrink=shrink,
        max_evals=max_evals, need_grad=need_grad, interpolate=interpolate,
    )  # fmt: skip


# ----------------------------------------------------------------------------- strong Wolfe


def cubic_interpolate(
    x1: float,
    f1: float,
    g1: float,
    x2: float,
    f2: float,
    g2: float,
    bounds: tuple[float, float] | None = None,
) -> float:
    """Minimizer of the cubic through ``(x1, f1, g1)`` and ``(x2, f2, g2)``, clipped to bounds.

    [NocedalWright2006] eq. 3.59, as in ``torch.optim.lbfgs._cubic_interpolate`` (ported from
    minFunc's
    ``polyinterp``): when the cubic has no minimizer, the midpoint of the bounds.

    Args:
        x1: first abscissa.
        f1: value at ``x1``.
        g1: derivative at ``x1``.
        x2: second abscissa.
        f2: value at ``x2``.
        g2: derivative at ``x2``.
        bounds: ``(lo, hi)`` (default: the interval between ``x1`` and ``x2``).

    Returns:
        The clipped minimizer.
    """
    if bounds is not None:
        lo, hi = bounds
    else:
        lo, hi = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, lo), hi)
    return (lo + hi) / 2.0


@dataclass
class _Point:
    """A trial of the strong Wolfe search: step, loss (float and tensor), slope, gradient."""

    t: float
    f: float
    gtd: float
    loss: Tensor | None
    grad: tuple[Tensor, ...] | None


def strong_wolfe(
    phi: Objective,
    direction: Sequence[Tensor],
    loss0: float | Tensor,
    grad0: Sequence[Tensor],
    *,
    step: float = 1.0,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_evals: int = 25,
    start_values: tuple[float, float] | None = None,
) -> LineSearchResult:
    """Line search for the strong Wolfe conditions ([NocedalWright2006] Alg. 3.5 and 3.6).

    Finds ``t`` with ``phi(t) <= phi(0) + c1 t phi'(0)`` and ``|phi'(t)| <= -c2 phi'(0)``
    ([NocedalWright2006] eq. 3.7). Step for step the search of ``torch.optim.LBFGS``
    (``torch.optim.lbfgs._strong_wolfe``, after minFunc):

    1. *Bracketing* (Alg. 3.5): from ``step``, extrapolate by :func:`cubic_interpolate`
       bounded to ``[t + 0.01 (t - t_prev), 10 t]`` until the Armijo condition fails or
       the loss stops decreasing (after the second trial), the slope turns non-negative,
       or the strong Wolfe conditions hold.
    2. *Zoom* (Alg. 3.6): cubic interpolation inside the bracket; a trial within 10% of the
       bracket's length from an end is accepted once, and moved to 10% from the nearest
       end when the previous trial also made insufficient progress or it lies on an end.
       It stops when the bracket is shorter than ``tolerance_change / max|d|``.
    3. ``max_evals`` is torch's ``max_ls``: trials after the first, so ``phi`` is called at
       most ``max_evals + 1`` times. If bracketing spends it, the result is the better of
       ``0`` and the last trial.

    The decisions use float64 host scalars; in float64 the steps equal torch's bit for bit
    up to the summation order of ``g . d``. (torch does them in the parameters' dtype, so
    float32 runs may differ in the last digits.) A non-finite loss or slope is treated as
    an infinite loss, which shrinks the bracket by bisection instead of propagating NaN.

    Args:
        phi: the objective along the direction; called as ``phi(t)``, it must return the
            gradient (module docstring).
        direction: the search direction ``d``.
        loss0: ``phi(0)``.
        grad0: the gradient at ``x`` (``phi'(0) = grad0 . d`` must be negative).
        step: the first trial.
        c1: sufficient-decrease constant, ``0 < c1 < c2 < 1``.
        c2: curvature constant.
        tolerance_change: smallest bracket length times ``max|d|`` before giving up.
        max_evals: torch's ``max_ls`` (see 3.).
        start_values: ``(phi(0), phi'(0))`` as floats, when the caller has read them (the
            float64 values of ``loss0`` and ``grad0 . direction``, computed by
            :func:`~secondorder.tensorlist.dot`): the search then reads nothing before its
            first trial. (``max |d|``, for the bracket tolerance, is read only if the
            search zooms.)

    Returns:
        A :class:`LineSearchResult` with the gradient at ``step``. ``success`` is False
        when the budget or the bracket tolerance ran out (``step`` is then the lowest point
        of the bracket) or when ``d`` is not a descent direction (``step = 0``, no
        evaluation).

    Raises:
        ValueError: if ``0 < c1 < c2 < 1`` fails, ``step`` is not positive, ``max_evals``
            is negative, or ``grad0``/``direction`` are not shaped alike.

    Example:
        >>> x0 = torch.tensor([2.0], dtype=torch.float64)
        >>> d = torch.tensor([-1.0], dtype=torch.float64)
        >>> def phi(t):
        ...     x = x0 + t * d
        ...     return (x**2).sum(), (2 * x,)
        >>> res = strong_wolfe(phi, (d,), loss0=4.0, grad0=(2 * x0,), step=1.0)
        >>> res.success, res.step
        (True, 1.0)
    """
    if not 0 < c1 < c2 < 1:
        raise ValueError(f"Invalid c1, c2 values: {c1}, {c2}; they must satisfy 0 < c1 < c2 < 1")
    _check_step(step)
    _check_positive_int("max_evals", max_evals)
    if not tolerance_change >= 0:
        raise ValueError(f"Invalid tolerance_change value: {tolerance_change}; it must be >= 0")
    direction = tuple(direction)
    grad0 = tuple(grad0)
    tl.check_like(grad0, direction, "grad0")

    start_loss = _as_loss(loss0, direction[0])
    if start_values is None:
        f, gtd = torch.stack(
            [start_loss.double(), tl.dot(grad0, direction).double()]
        ).tolist()
    else:
        f, gtd = float(start_values[0]), float(start_values[1])
    d_norm: float | None = None  # max |d|, read when the zoom first needs it
    start = _Point(0.0, f, gtd, start_loss, grad0)
    if not gtd < 0:
        return LineSearchResult(
            0.0, start_loss, grad0, 0, False, f"not a descent direction: slope {gtd} >= 0"
        )
    evals = 0

    def evaluate(t: float) -> _Point:
        nonlocal evals
        evals += 1
        loss, grad = phi(t)
        if loss.requires_grad or loss.dim():  # (an optimizer's line objective: neither)
            loss = loss.detach().reshape(())
        fv, gv = torch.stack([_float64(loss), _float64(tl.dot(grad, direction))]).tolist()
        if not (math.isfinite(fv) and math.isfinite(gv)):
            fv = math.inf
        return _Point(t, fv, gv, loss, tuple(grad))

    def armijo_fails(p: _Point) -> bool:
        return p.f > f + c1 * p.t * gtd

    def curvature_holds(p: _Point) -> bool:
        return abs(p.gtd) <= -c2 * gtd

    # Alg. 3.5: bracket an interval containing a strong Wolfe point.
    new = evaluate(float(step))
    prev = start
    bracket: list[_Point] = []
    done = False
    trials = 0
    while trials < max_evals:
        if armijo_fails(new) or (trials > 1 and new.f >= prev.f):
            bracket = [prev, new]
            break
        if curvature_holds(new):
            bracket, done = [new], True
            break
        if new.gtd >= 0:
            bracket = [prev, new]
            break
        t = cubic_interpolate(
            prev.t, prev.f, prev.gtd, new.t, new.f, new.gtd,
            bounds=(new.t + 0.01 * (new.t - prev.t), new.t * 10),
        )  # fmt: skip
        prev, new = new, evaluate(t)
        trials += 1
    if trials == max_evals:
        bracket = [start, new]

    # Alg. 3.6: zoom inside the bracket.
    insufficient_progress = False
    low, high = (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)
    message = "strong wolfe conditions hold" if done else ""
    while not done and trials < max_evals:
        a, b = bracket[0].t, bracket[1].t
        if d_norm is None:
            d_norm = float(torch.stack([d.abs().max() for d in direction
                                        if d.numel() > 0]).max().double())
        if abs(b - a) * d_norm < tolerance_change:
            message = f"bracket shorter than tolerance_change={tolerance_change}"
            break
        t = cubic_interpolate(a, bracket[0].f, bracket[0].gtd, b, bracket[1].f, bracket[1].gtd)
        lo, hi = min(a, b), max(a, b)
        eps = 0.1 * (hi - lo)
        if min(hi - t, t - lo) < eps:  # close to an end of the bracket
            if insufficient_progress or t >= hi or t <= lo:
                t = hi - eps if abs(t - hi) < abs(t - lo) else lo + eps
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False
        new = evaluate(t)
        trials += 1
        if armijo_fails(new) or new.f >= bracket[low].f:
            bracket[high] = new
            low, high = (0, 1) if bracket[0].f <= bracket[1].f else (1, 0)
        else:
            if curvature_holds(new):
                done = True
                message = "strong wolfe conditions hold"
            elif new.gtd * (bracket[high].t - bracket[low].t) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = new
    if not done and not message:
        message = f"max_evals={max_evals} reached without the strong wolfe conditions"

    best = bracket[low]
    return LineSearchResult(best.t, best.loss, best.grad, evals, done, message)
