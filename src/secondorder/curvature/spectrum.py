"""Spectra of curvature operators: extreme eigenvalues, trace, spectral density.

- :func:`extreme_eigenpairs` / :func:`eigenvalues`: the ``k`` extreme eigenvalues by
  Lanczos with full reorthogonalization (:mod:`secondorder.curvature.lanczos`), the Ritz
  values of ``T``, stopped when their residual bounds meet a relative tolerance and
  restarted when the Krylov space is invariant.
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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.diagonal import rademacher_like
from secondorder.curvature.functional import LossFunction, check_params
from secondorder.curvature.lanczos import LanczosResult, lanczos
from secondorder.curvature.operators import CurvatureOperator, HessianOperator

__all__ = [
    "EigenResult",
    "SpectralDensity",
    "TraceEstimate",
    "eigenvalues",
    "extreme_eigenpairs",
    "spectral_density",
    "trace",
]

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


@dataclass
class EigenResult:
    """Extreme eigenpairs found by :func:`extreme_eigenpairs`.

    Attributes:
        values: the ``k`` eigenvalues, ordered as ``which`` asks (1-D tensor).
        residuals: ``||H y_i - lambda_i y_i||`` for each unit Ritz vector ``y_i``, a
            rigorous bound: ``H`` has an eigenvalue within ``residuals[i]`` of
            ``values[i]`` ([Parlett1998] Thm. 4.5.1). The eigenvalue error is usually far
            smaller, about ``residual^2 / gap`` (Thm. 11.7.1).
        num_steps: Lanczos steps taken, one operator product each.
        converged: True when every wanted value met the tolerance before ``num_steps``
            ran out (or the whole space was spanned).
        restarts: Krylov spaces found invariant and restarted from a fresh vector.
        tol: the relative tolerance asked for.
        vectors: the ``k`` unit Ritz vectors (tuples shaped like the parameters) when asked
            for, else None.
    """

    values: Tensor
    residuals: Tensor
    num_steps: int
    converged: bool
    restarts: int
    tol: float
    vectors: list[tuple[Tensor, ...]] | None = None


def _select(theta: Tensor, k: int, which: str) -> Tensor:
    """Indices of the ``k`` wanted values of ``theta``, in output order."""
    if which == "largest":
        return torch.argsort(theta, descending=True)[:k]
    if which == "smallest":
        return torch.argsort(theta)[:k]
    return torch.argsort(theta.abs(), descending=True)[:k]


def _beyond(values: Tensor, threshold: Tensor, margin: Tensor, which: str) -> Tensor:
    """Which ``values`` are more extreme than ``threshold`` by more than ``margin``."""
    if which == "largest":
        return values > threshold + margin
    if which == "smallest":
        return values < threshold - margin
    return values.abs() > threshold.abs() + margin


def _ritz_pairs(res: LanczosResult) -> tuple[Tensor, Tensor, Tensor]:
    """Ritz values, ``T``'s eigenvectors and residual bounds, in float64 on the host.

    ``T`` is block diagonal after restarts; every block but the last spans an invariant
    space (its Ritz values are exact, residual 0), so the blocks before the last and the
    last one are decomposed apart (equal values in two blocks cannot mix their vectors).
    """
    t = res.tridiagonal().detach().to("cpu", torch.float64)
    b = res.block_starts[-1]
    theta_prev, s_prev = torch.linalg.eigh(t[:b, :b])
    theta_last, s_last = torch.linalg.eigh(t[b:, b:])
    residual = float(res.residual_norm) * s_last[-1].abs()
    theta = torch.cat([theta_prev, theta_last])
    s = torch.block_diag(s_prev, s_last)
    return theta, s, torch.cat([torch.zeros_like(theta_prev), residual])


class _Converged:
    """Stopping test of :func:`extreme_eigenpairs`: are the wanted Ritz values final?

    A Ritz value is converged when its residual bound is at most ``tol * |theta|`` (or
    below the breakdown threshold ``eps_tol * ||T||``, which lets zero eigenvalues
    converge). The wanted values must all be converged. After a restart the current
    Krylov block explores the complement of the invariant blocks before it, so its
    extreme Ritz value(s) toward ``which`` must be converged too, or a larger eigenvalue of
    the complement could be missed. When a block is found invariant, the complement left
    holds only further copies of that block's eigenvalues (a Gaussian restart vector has
    a component along every eigenvector of the complement); the iteration stops only if no
    such copy could enter the wanted set. The first block starts from a vector that may
    miss eigenvectors (a Rademacher vector often does, on structured matrices), so its
    breakdown always leads to a restart.
    """

    def __init__(self, k: int, which: str, tol: float, eps_tol: float, dim: int):
        self.k, self.which, self.tol, self.eps_tol, self.dim = k, which, tol, eps_tol, dim

    def __call__(self, res: LanczosResult) -> bool:
        if res.num_steps >= self.dim:
            return True
        theta, _, residual = _ritz_pairs(res)
        if theta.numel() < self.k:
            return False
        floor = self.eps_tol * theta.abs().max()
        ok = residual <= torch.clamp(self.tol * theta.abs(), min=float(floor))
        wanted = _select(theta, self.k, self.which)
        if not bool(ok[wanted].all()):
            return False
        first_block = res.block_starts[-1] == 0
        last = slice(res.block_starts[-1], None)
        if res.breakdown:
            if first_block:
                return False
            threshold = theta[wanted[-1]]
            margin = torch.clamp(self.tol * threshold.abs(), min=float(floor))
            return not bool(_beyond(theta[last], threshold, margin, self.which).any())
        if first_block:
            return True
        block = theta[last]
        ends = {"largest": [block.argmax()], "smallest": [block.argmin()]}.get(
            self.which, [block.argmin(), block.argmax()]
        )
        return all(bool(ok[last][i]) for i in ends)


def extreme_eigenpairs(
    operator_or_loss: CurvatureOperator | LossFunction,
    params: Sequence[Tensor] | None = None,
    *,
    k: int = 3,
    which: str = "largest",
    tol: float = 1e-3,
    num_steps: int | None = None,
    v0: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    return_eigenvectors: bool = False,
) -> EigenResult:
    """The ``k`` extreme eigenvalues of a symmetric curvature operator, with error bounds.

    Lanczos with full reorthogonalization ([GolubVanLoan2013] Alg. 10.1.1,
    :func:`~secondorder.curvature.lanczos.lanczos`) from ``v0`` (default: a Rademacher
    vector), stopped as soon as the wanted Ritz values have converged: residual bound
    ``beta_m |s_{m,i}| <= tol * |theta_i|`` ([Parlett1998] Sec. 13.2; the stopping rule of
    ARPACK). Each test is the eigen-decomposition of the small ``T`` on the host. When
    the Krylov space becomes invariant the process restarts from a random vector
    orthogonal to it, so repeated and zero eigenvalues (a rank-deficient Hessian) are
    found too; with ``num_steps = n`` the whole spectrum is exact to rounding.

    Like any single-vector Krylov method, an eigenvalue whose eigenvectors are orthogonal
    to the start vector, or a second copy of a repeated eigenvalue inside one Krylov
    space, is found only through a breakdown and restart: ``residuals`` certify that each
    value is (near) an eigenvalue, not that none was skipped.

    Args:
        operator_or_loss: a :class:`CurvatureOperator`, or a loss function (with ``params``).
        params: the point, when a loss function is given.
        k: how many eigenvalues, ``1 <= k <= min(n, num_steps)``.
        which: ``"largest"`` (algebraic, descending), ``"smallest"`` (algebraic,
            ascending) or ``"magnitude"`` (largest ``|lambda|``, descending in ``|lambda|``).
        tol: relative tolerance on the residual bounds, in ``[0, 1)``; 0 runs all
            ``num_steps`` steps. Values below ``1000 eps`` of the dtype (the breakdown
            threshold) act as that.
        num_steps: the most Lanczos steps (products); default ``min(n, max(4 k, 50))``.
        v0: start vector shaped like the parameters.
        generator: random generator for the default start vector and the restarts.
        return_eigenvectors: also return the Ritz vectors.

    Returns:
        An :class:`EigenResult`.

    Raises:
        ValueError: bad ``k``, ``which``, ``tol``, ``num_steps``, ``v0``; missing ``params``.

    Example:
        >>> A = torch.diag(torch.tensor([4.0, -1.0, 2.0, 0.5], dtype=torch.float64))
        >>> f = lambda ps: 0.5 * ps[0] @ A @ ps[0]
        >>> res = extreme_eigenpairs(f, [torch.zeros(4, dtype=torch.float64)], k=2)
        >>> res.values.round(decimals=10), res.converged
        (tensor([4., 2.], dtype=torch.float64), True)
    """
    if which not in WHICH:
        raise ValueError(f"Invalid which: {which!r}; choose one of {WHICH}")
    _check_positive_int(k, "k")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 <= tol < 1:
        raise ValueError(f"Invalid tol: {tol}; it must be a number in [0, 1)")
    if num_steps is not None:
        _check_positive_int(num_steps, "num_steps")
    with _Operator(operator_or_loss, params) as op:
        n = op.dim
        if k > n:
            raise ValueError(f"Invalid k: {k}; the operator has only {n} dimensions")
        steps = min(n, max(4 * k, 50)) if num_steps is None else num_steps
        if k > steps:
            raise ValueError(f"Invalid k: {k}; it cannot exceed num_steps={steps}")
        start = _start_vector(op, v0, generator)
        eps_tol = 1000.0 * torch.finfo(start[0].dtype).eps
        converged = _Converged(k, which, float(tol), eps_tol, n)
        res = lanczos(
            op.matvec, start, steps, restart=True, generator=generator,
            stop=converged if tol > 0 else None,
        )  # fmt: skip
        theta, s, residual = _ritz_pairs(res)
        idx = _select(theta, k, which)
        like = res.alphas
        vectors = None
        if return_eigenvectors:
            vectors = [res.combine(s[:, i].to(like)) for i in idx.tolist()]
        return EigenResult(
            values=theta[idx].to(like),
            residuals=residual[idx].to(like),
            num_steps=res.num_steps,
            converged=converged(res),
            restarts=res.restarts,
            tol=float(tol),
            vectors=vectors,
        )


def eigenvalues(
    operator_or_loss: CurvatureOperator | LossFunction,
    params: Sequence[Tensor] | None = None,
    *,
    k: int = 3,
    which: str = "largest",
    tol: float = 1e-3,
    num_steps: int | None = None,
    v0: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    return_eigenvectors: bool = False,
):
    """The ``k`` extreme eigenvalues of a symmetric curvature operator, by Lanczos.

    :func:`extreme_eigenpairs` without the error bounds (same arguments; see there for the
    method and the stopping rule). It warns (``RuntimeWarning``) when ``num_steps`` ran
    out before the wanted values met ``tol``.

    Returns:
        A 1-D tensor of ``k`` eigenvalues, or ``(values, vectors)`` with ``vectors`` a list
        of ``k`` unit-norm tuples when ``return_eigenvectors``.

    Raises:
        ValueError: bad ``k``, ``which``, ``tol``, ``num_steps``, ``v0``; missing ``params``.

    Example:
        >>> A = torch.diag(torch.tensor([4.0, -1.0, 2.0, 0.5], dtype=torch.float64))
        >>> f = lambda ps: 0.5 * ps[0] @ A @ ps[0]
        >>> eigenvalues(f, [torch.zeros(4, dtype=torch.float64)], k=2).round(decimals=10)
        tensor([4., 2.], dtype=torch.float64)
    """
    res = extreme_eigenpairs(
        operator_or_loss, params, k=k, which=which, tol=tol, num_steps=num_steps, v0=v0,
        generator=generator, return_eigenvectors=return_eigenvectors,
    )  # fmt: skip
    if not res.converged:
        worst = float((res.residuals.double() / res.values.double().abs().clamp_min(1e-300)).max())
        warnings.warn(
            f"eigenvalues: the {k} wanted values did not converge to tol={tol} in "
            f"{res.num_steps} Lanczos steps (largest relative residual {worst:.1e}); raise "
            "num_steps, or use extreme_eigenpairs() for the residual bounds",
            RuntimeWarning,
            stacklevel=2,
        )
    if not return_eigenvectors:
        return res.values
    return res.values, res.vectors


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
    """Spectral density by stochastic Lanczos quadrature ([Ghorbani2019], Alg. 1).

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
