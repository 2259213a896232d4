"""Spectra of curvature operators: extreme eigenvalues, trace, spectral density.

- :func:`eigenvalues`: the ``k`` extreme eigenvalues by Lanczos with full
  reorthogonalization (:mod:`secondorder.curvature.lanczos`), the Ritz values of ``T``.
- :func:`trace`: Hutchinson's estimator ``E[z^T H z] = tr(H)`` with Rademacher ``z``.
- :func:`spectral_density`: stochastic Lanczos quadrature (Golub & Meurant; Ghorbani et
  al. 2019; PyHessian's ``density``). For a unit probe ``q = z/||z||`` the ``m``-step
  Lanczos tridiagonal ``T = S diag(theta) S^T`` gives the Gauss quadrature
  ``q^T f(H) q ~ sum_j tau_j f(theta_j)`` with ``tau_j = S_{1j}^2`` (the ``tau_j`` sum to 1).
  Averaging over probes estimates the spectral measure ``(1/n) sum_i delta(lambda_i)``;
  Gaussian broadening of width ``sigma`` turns it into a density.

Every function takes either a :class:`~secondorder.curvature.CurvatureOperator` (a
Hessian, a :class:`~secondorder.curvature.dataset.DatasetHessianOperator`, ...) or a loss
function with its ``params``, from which a :class:`HessianOperator` is built once and freed
at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.diagonal import rademacher_like
from secondorder.curvature.functional import LossFunction, check_params
from secondorder.curvature.lanczos import lanczos
from secondorder.curvature.operators import CurvatureOperator, HessianOperator

__all__ = ["eigenvalues", "trace", "spectral_density", "TraceEstimate", "SpectralDensity"]

WHICH = ("largest", "smallest", "magnitude")


class _Operator:
    """Context manager: the given operator, or a HessianOperator built and then freed."""

    def __init__(self, operator_or_loss, params):
        if isinstance(operator_or_loss, CurvatureOperator):
            self.op, self.owned = operator_or_loss, False
        elif callable(operator_or_loss):
            if params is None:
                raise ValueError("params is required when a loss function is given")
            self.op = HessianOperator(operator_or_loss, check_params(params))
            self.owned = True
        else:
            raise ValueError(
                "expected a CurvatureOperator or a loss function, got "
                f"{type(operator_or_loss).__name__}"
            )

    def __enter__(self) -> CurvatureOperator:
        return self.op

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.op.free()


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Invalid {name}: {value}; it must be a positive integer")


def _start_vector(op: CurvatureOperator, v0, generator) -> tuple[Tensor, ...]:
    if v0 is not None:
        tl.check_like(v0, op.params, "v0")
        return tuple(v0)
    return rademacher_like(op.params, generator)


def eigenvalues(
    operator_or_loss: CurvatureOperator | LossFunction,
    params: Sequence[Tensor] | None = None,
    *,
    k: int = 3,
    which: str = "largest",
    num_steps: int | None = None,
    v0: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    return_eigenvectors: bool = False,
):
    """The ``k`` extreme eigenvalues of a symmetric curvature operator, by Lanczos.

    Runs ``num_steps`` Lanczos steps with full reorthogonalization from ``v0`` (default: a
    Rademacher vector) and returns the extreme Ritz values. Extreme eigenvalues converge
    first; with ``num_steps = n`` (or on breakdown) they are exact to rounding.

    Args:
        operator_or_loss: a :class:`CurvatureOperator`, or a loss function (with ``params``).
        params: the point, when a loss function is given.
        k: how many eigenvalues, ``1 <= k <= min(n, num_steps)``.
        which: ``"largest"`` (algebraic, descending), ``"smallest"`` (algebraic,
            ascending) or ``"magnitude"`` (largest ``|lambda|``, descending in ``|lambda|``).
        num_steps: Lanczos steps; default ``min(n, max(4 k, 50))``.
        v0: start vector shaped like the parameters.
        generator: random generator for the default start vector.
        return_eigenvectors: also return the Ritz vectors (tuples shaped like the params).

    Returns:
        A 1-D tensor of ``k`` eigenvalues, or ``(values, vectors)`` with ``vectors`` a list
        of ``k`` unit-norm tuples when ``return_eigenvectors``.

    Raises:
        ValueError: bad ``k``, ``which``, ``num_steps``, ``v0``; missing ``params``.

    Example:
        >>> A = torch.diag(torch.tensor([4.0, -1.0, 2.0, 0.5], dtype=torch.float64))
        >>> f = lambda ps: 0.5 * ps[0] @ A @ ps[0]
        >>> eigenvalues(f, [torch.zeros(4, dtype=torch.float64)], k=2).round(decimals=10)
        tensor([4., 2.], dtype=torch.float64)
    """
    if which not in WHICH:
        raise ValueError(f"Invalid which: {which!r}; choose one of {WHICH}")
    _check_positive_int(k, "k")
    if num_steps is not None:
        _check_positive_int(num_steps, "num_steps")
    with _Operator(operator_or_loss, params) as op:
        n = op.dim
        if k > n:
            raise ValueError(f"Invalid k: {k}; the operator has only {n} dimensions")
        steps = min(n, max(4 * k, 50)) if num_steps is None else num_steps
        if k > steps:
            raise ValueError(f"Invalid k: {k}; it cannot exceed num_steps={steps}")
        res = lanczos(op.matvec, _start_vector(op, v0, generator), steps)
        theta, s = res.ritz()
        if k > theta.numel():
            # Breakdown: v0 lies in an invariant subspace of dimension < k.
            raise ValueError(
                f"Invalid k: {k}; the Krylov space of v0 is invariant with dimension "
                f"{theta.numel()}, pick another v0"
            )
        if which == "largest":
            idx = torch.argsort(theta, descending=True)[:k]
        elif which == "smallest":
            idx = torch.argsort(theta)[:k]
        else:
            idx = torch.argsort(theta.abs(), descending=True)[:k]
        values = theta[idx]
        if not return_eigenvectors:
            return values
        return values, [res.combine(s[:, i]) for i in idx.tolist()]


@dataclass
class TraceEstimate:
    """Hutchinson trace estimate.

    Attributes:
        value: the mean of the samples, a 0-dim tensor.
        stderr: the standard error of the mean (0 with one sample).
        samples: the individual ``z^T H z``, a 1-D tensor.
    """

    value: Tensor
    stderr: Tensor
    samples: Tensor


def trace(
    operator_or_loss: CurvatureOperator | LossFunction,
    params: Sequence[Tensor] | None = None,
    *,
    num_samples: int = 100,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of ``tr(H)``: the mean of ``z^T H z`` over Rademacher ``z``.

    Each sample is unbiased with variance ``2 sum_{i != j} H_ij^2``.

    Args:
        operator_or_loss: a :class:`CurvatureOperator`, or a loss function (with ``params``).
        params: the point, when a loss function is given.
        num_samples: number of probes (one product each).
        generator: random generator for the probes.

    Returns:
        A :class:`TraceEstimate`.

    Raises:
        ValueError: bad ``num_samples``; missing ``params``.
    """
    _check_positive_int(num_samples, "num_samples")
    with _Operator(operator_or_loss, params) as op:
        samples = []
        for _ in range(num_samples):
            z = rademacher_like(op.params, generator)
            samples.append(tl.dot(z, op.matvec(z)))
    samples_t = torch.stack(samples)
    stderr = (
        samples_t.std() / math.sqrt(num_samples)
        if num_samples > 1
        else torch.zeros((), dtype=samples_t.dtype, device=samples_t.device)
    )
    return TraceEstimate(value=samples_t.mean(), stderr=stderr, samples=samples_t)


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature output.

    Attributes:
        grid: the points where the density is evaluated, 1-D.
        density: the broadened density on ``grid`` (integrates to 1 up to the tails beyond
            the grid, which starts and ends ``6 sigma`` past the extreme nodes).
        nodes: Ritz values per probe, shape ``(num_probes, m)``.
        weights: quadrature weights per probe, shape ``(num_probes, m)``, rows sum to 1.
        sigma: the Gaussian broadening width used.
    """

    grid: Tensor
    density: Tensor
    nodes: Tensor
    weights: Tensor
    sigma: float

    def moment(self, power: int = 1) -> Tensor:
        """``(1/num_probes) sum_p sum_j tau_pj theta_pj^power``, estimating ``tr(H^power)/n``."""
        return (self.weights * self.nodes**power).sum(dim=1).mean()


def spectral_density(
    operator_or_loss: CurvatureOperator | LossFunction,
    params: Sequence[Tensor] | None = None,
    *,
    num_steps: int = 50,
    num_probes: int = 1,
    sigma: float | None = None,
    num_points: int | None = None,
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019, Alg. 1).

    For each of ``num_probes`` Rademacher probes, ``num_steps`` Lanczos steps give nodes
    ``theta_j`` and weights ``tau_j`` (module docstring). The density is
    ``phi(t) = (1/num_probes) sum_p sum_j tau_pj N(t; theta_pj, sigma^2)``, on a uniform
    grid from ``min theta - 6 sigma`` to ``max theta + 6 sigma``.

    Args:
        operator_or_loss: a :class:`CurvatureOperator`, or a loss function (with ``params``).
        params: the point, when a loss function is given.
        num_steps: Lanczos steps per probe (capped at ``n``).
        num_probes: number of random probes.
        sigma: broadening width; default PyHessian's ``sqrt(1e-5 * max(1, range))`` with
            ``range`` the spread of the nodes.
        num_points: grid size; default enough for 5 points per ``sigma`` (at most 10^5,
            at least 1000).
        generator: random generator for the probes.

    Returns:
        A :class:`SpectralDensity`.

    Raises:
        ValueError: bad ``num_steps``, ``num_probes``, ``num_points`` or ``sigma``.
    """
    _check_positive_int(num_steps, "num_steps")
    _check_positive_int(num_probes, "num_probes")
    if num_points is not None:
        _check_positive_int(num_points, "num_points")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"Invalid sigma: {sigma}; it must be positive")
    nodes, weights = [], []
    with _Operator(operator_or_loss, params) as op:
        steps = min(num_steps, op.dim)
        for _ in range(num_probes):
            res = lanczos(op.matvec, rademacher_like(op.params, generator), steps)
            theta, s = res.ritz()
            tau = s[0] ** 2
            pad = steps - theta.numel()  # breakdown: pad with zero-weight nodes
            if pad:
                theta = torch.cat([theta, theta[-1:].expand(pad)])
                tau = torch.cat([tau, tau.new_zeros(pad)])
            nodes.append(theta)
            weights.append(tau)
    nodes_t, weights_t = torch.stack(nodes), torch.stack(weights)
    lo, hi = float(nodes_t.min()), float(nodes_t.max())
    if sigma is None:
        sigma = math.sqrt(1e-5 * max(1.0, hi - lo))
    lo, hi = lo - 6 * sigma, hi + 6 * sigma
    if num_points is None:
        num_points = int(min(1e5, max(1000, math.ceil(5 * (hi - lo) / sigma))))
    grid = torch.linspace(lo, hi, num_points, dtype=nodes_t.dtype, device=nodes_t.device)
    density = torch.zeros_like(grid)
    # One probe at a time, so memory is (num_points, m).
    for theta, tau in zip(nodes_t, weights_t, strict=True):
        gauss = torch.exp(-0.5 * ((grid[:, None] - theta[None]) / sigma) ** 2)
        density = density + gauss @ tau
    density = density / (num_probes * sigma * math.sqrt(2 * math.pi))
    return SpectralDensity(grid=grid, density=density, nodes=nodes_t, weights=weights_t,
                           sigma=float(sigma))
