"""Step sizing of stochastic Newton-Krylov: the Taylor-ratio rule and Armijo backtracking.

The step half of :class:`~secondorder.optim.newton_krylov.NewtonKrylov` (module docstring
there for the whole algorithm):

* :func:`taylor_step_size`, [Shen] Alg. 1 lines 33-46: stretch or shrink ``gamma`` until the
  Taylor ratio (:func:`taylor_ratio`, eq. 13) lies in ``[eta~/2, eta~]``;
* :func:`armijo_step_size`, [Shen] supplementary eq. 1: the backtracking ablation.

Both call only ``phi(gamma) = f(w + gamma dw)`` (floats) and return a :class:`StepSize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["StepSize", "armijo_step_size", "taylor_ratio", "taylor_step_size"]


def taylor_ratio(f0: float, f1: float, slope: float, quad: float, gamma: float) -> float:
    """[Shen] eq. 13: ``|(f1 - f0 - E_Q) / (f1 - f0)|`` at step ``gamma``.

    ``E_Q = gamma slope + gamma^2 quad / 2`` (eq. 12 along ``gamma dw``); ``inf`` when
    ``f1 == f0``.

    Example:
        >>> taylor_ratio(1.0, 0.5, -1.0, 1.0, 1.0)  # E_Q = -0.5 = f1 - f0: exact model
        0.0
    """
    df = f1 - f0
    if df == 0.0 or not math.isfinite(df):
        return math.inf
    eq = gamma * slope + 0.5 * gamma * gamma * quad
    return abs((df - eq) / df)


@dataclass
class StepSize:
    """Result of :func:`taylor_step_size`.

    Attributes:
        step: the accepted ``gamma`` (0.0 when rejected).
        loss: ``f(w + step dw)`` (``f(w)`` when rejected).
        ratio: the Taylor ratio at ``step`` (``nan`` when rejected).
        evaluations: calls of ``phi``.
        status: ``"accepted"``, ``"fallback"`` (the 1e-6 step) or ``"rejected"``.
    """

    step: float
    loss: float
    ratio: float
    evaluations: int
    status: str


def taylor_step_size(
    phi: Callable[[float], float],
    f0: float,
    slope: float,
    quad: float,
    *,
    eta: float = 0.05,
    max_adjust: int = 10,
    fallback: float = 1e-6,
) -> StepSize:
    """[Shen] Alg. 1 lines 33-46: size ``gamma`` so the Taylor ratio is in ``[eta/2, eta]``.

    Args:
        phi: ``gamma -> f(w + gamma dw)``.
        f0: ``f(w)``.
        slope: ``g^T dw`` (negative for a descent direction).
        quad: ``dw^T H dw``.
        eta: the target ``eta~``.
        max_adjust: most stretch/shrink attempts after ``gamma = 1``.
        fallback: the step taken when they all fail (if it lowers ``f``).

    Returns:
        A :class:`StepSize`. Only a step with ``f(w + gamma dw) < f(w)`` is accepted.

    Example:
        >>> phi = lambda t: 0.5 * (1.0 - t) ** 2  # f(w + t dw) for f(x) = x^2/2, w = 1, dw = -1
        >>> taylor_step_size(phi, 0.5, -1.0, 1.0).step  # the quadratic model is exact
        1.0
    """
    gamma = 1.0
    f = phi(gamma)
    n = 1
    ratio = taylor_ratio(f0, f, slope, quad, gamma)
    if f < f0 and ratio <= eta:
        return StepSize(gamma, f, ratio, n, "accepted")
    # Line 36: an initial test size from the ratio (only ever a shrink here).
    gamma = min(0.5, eta / ratio) if math.isfinite(ratio) and ratio > 0 else 0.5
    for _ in range(max_adjust):
        f = phi(gamma)
        n += 1
        ratio = taylor_ratio(f0, f, slope, quad, gamma)
        if f < f0 and 0.5 * eta <= ratio <= eta:
            return StepSize(gamma, f, ratio, n, "accepted")
        gamma *= 0.5 if (ratio > eta or not f < f0) else 1.5
    f = phi(fallback)
    n += 1
    if f < f0:
        return StepSize(fallback, f, taylor_ratio(f0, f, slope, quad, fallback), n, "fallback")
    return StepSize(0.0, f0, math.nan, n, "rejected")


def armijo_step_size(
    phi: Callable[[float], float],
    f0: float,
    slope: float,
    *,
    c: float = 0.01,
    tau: float = 0.8,
    max_adjust: int = 10,
    fallback: float = 1e-6,
) -> StepSize:
    """Backtracking from ``gamma = 1`` by ``tau`` until ``phi(gamma) <= f0 + c gamma slope``.

    [Shen] supplementary eq. 1 (Armijo's sufficient decrease; the paper's comparison uses
    ``c = 0.01``, ``tau = 0.8``), with the same fallback and rejection as
    :func:`taylor_step_size`. ``ratio`` is ``nan`` (no Taylor ratio is computed).

    Example:
        >>> phi = lambda t: 0.5 * (1.0 - 2.0 * t) ** 2  # overshoots at t = 1
        >>> armijo_step_size(phi, 0.5, -2.0).step
        0.8
    """
    gamma, n = 1.0, 0
    for _ in range(max_adjust + 1):
        f = phi(gamma)
        n += 1
        if f < f0 and f <= f0 + c * gamma * slope:
            return StepSize(gamma, f, math.nan, n, "accepted")
        gamma *= tau
    f = phi(fallback)
    n += 1
    if f < f0:
        return StepSize(fallback, f, math.nan, n, "fallback")
    return StepSize(0.0, f0, math.nan, n, "rejected")
