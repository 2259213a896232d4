"""Lanczos tridiagonalization of a symmetric operator on lists of tensors.

``lanczos(matvec, v0, m)`` builds an orthonormal basis ``Q = [q_1, ..., q_m]`` of the
Krylov space ``K_m(A, v0)`` and the tridiagonal ``T = Q^T A Q`` ([GolubVanLoan2013]
Alg. 10.1.1; with full reorthogonalization, Sec. 10.3.1 and [Parlett1998] ch. 13). The Ritz
values (eigenvalues of ``T``) approximate the extreme eigenvalues of ``A``; the first
components of ``T``'s eigenvectors give the quadrature weights of stochastic Lanczos
quadrature (:mod:`secondorder.curvature.spectrum`); the ARC subproblem solves its cubic
model in the Krylov basis (``s = Q y``, :meth:`LanczosResult.combine`).

After ``m`` steps ``A Q = Q T + r e_m^T`` with ``||r|| = beta_m`` (:attr:`LanczosResult.
residual_norm`), so a Ritz pair ``(theta_i, y_i = Q s_i)`` has the residual
``||A y_i - theta_i y_i|| = beta_m |s_{m,i}|`` ([Parlett1998] eq. 13.2.4) without forming
``y_i``: :meth:`LanczosResult.ritz_residuals`. Some eigenvalue of ``A`` lies within that
distance of ``theta_i`` ([Parlett1998] Thm. 4.5.1).

When the Krylov space becomes invariant (``beta_k = 0``: breakdown) the Ritz values found
are exact eigenvalues of ``A``, but only one copy of each: the eigenvalues of ``A`` on the
orthogonal complement (further copies of a repeated eigenvalue, the null space of a
rank-deficient Hessian) are out of reach of ``v0``. With ``restart=True`` the process goes
on from a fresh random vector orthogonalized against the basis found, with ``beta_k = 0``
in ``T`` (``T`` becomes block diagonal, one block per Krylov space): after ``dim`` steps
``T`` holds the whole spectrum, zeros and multiplicities included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from secondorder import tensorlist as tl

__all__ = ["LanczosResult", "lanczos"]

MatVec = Callable[[tuple[Tensor, ...]], Sequence[Tensor]]

# Orthogonalizing a fresh random vector can only fail (come out zero to rounding) if the
# basis spans the whole space, which the step count rules out; retry a few times anyway.
_RESTART_TRIES = 3


@dataclass
class LanczosResult:
    """Output of :func:`lanczos`.

    Attributes:
        alphas: the diagonal of ``T``, shape ``(m,)`` with ``m`` the number of steps taken.
        betas: the off-diagonal of ``T``, shape ``(m - 1,)``; exactly 0 where a new Krylov
            block starts after a restart.
        flat_basis: the orthonormal Lanczos vectors as the rows of an ``(m, n)`` matrix
            (:attr:`basis` gives them shaped like ``v0``).
        like: tensors shaped like ``v0`` (the layout of one basis vector).
        v0_norm: ``||v0||`` (0-dim tensor), so that ``v0 = v0_norm * q_1``.
        breakdown: True when the iteration stopped early because ``beta`` vanished (the
            Krylov space is invariant and the Ritz values are exact eigenvalues of ``A``).
        residual_norm: ``beta_m = ||r||`` in ``A Q = Q T + r e_m^T`` (0-dim tensor); below
            the breakdown threshold after a breakdown.
        block_starts: the step index at which each Krylov block starts: ``(0,)`` without
            restarts, then one more entry per restart.
    """

    alphas: Tensor
    betas: Tensor
    flat_basis: Tensor
    like: tuple[Tensor, ...]
    v0_norm: Tensor = field(default_factory=lambda: torch.ones(()))
    breakdown: bool = False
    residual_norm: Tensor = field(default_factory=lambda: torch.zeros(()))
    block_starts: tuple[int, ...] = (0,)

    @property
    def num_steps(self) -> int:
        """The number ``m`` of Lanczos vectors built (one operator product each)."""
        return int(self.alphas.numel())

    @property
    def restarts(self) -> int:
        """How many times the process restarted after a breakdown."""
        return len(self.block_starts) - 1

    @property
    def basis(self) -> list[tuple[Tensor, ...]]:
        """The Lanczos vectors ``q_1..q_m``, each a tuple shaped like ``v0`` (views)."""
        return [tuple(tl.unflatten(q, self.like)) for q in self.flat_basis]

    def tridiagonal(self) -> Tensor:
        """The dense ``(m, m)`` symmetric tridiagonal matrix ``T = Q^T A Q``."""
        t = torch.diag(self.alphas)
        if self.betas.numel() > 0:
            t = t + torch.diag(self.betas, 1) + torch.diag(self.betas, -1)
        return t

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Eigen-decomposition of ``T``: Ritz values (ascending) and ``T``'s eigenvectors.

        Returns:
            ``(theta, S)`` with ``T = S diag(theta) S^T``; the Ritz vector ``i`` of ``A`` is
            ``combine(S[:, i])``.
        """
        return torch.linalg.eigh(self.tridiagonal())

    def ritz_residuals(self, s: Tensor | None = None) -> Tensor:
        """``||A y_i - theta_i y_i|| = beta_m |S_{m,i}|`` for every Ritz pair (module docstring).

        Args:
            s: ``T``'s eigenvectors from :meth:`ritz` (computed when omitted).

        Returns:
            A 1-D tensor, one residual norm per Ritz value in :meth:`ritz` order.
        """
        if s is None:
            s = self.ritz()[1]
        return self.residual_norm * s[-1].abs()

    def combine(self, coeffs: Tensor) -> tuple[Tensor, ...]:
        """Map Krylov coordinates ``y`` (shape ``(m,)``) to the vector ``Q y``.

        Raises:
            ValueError: if ``coeffs`` does not have one entry per basis vector.
        """
        if coeffs.dim() != 1 or coeffs.numel() != self.num_steps:
            raise ValueError(
                f"coeffs must have shape ({self.num_steps},), got {tuple(coeffs.shape)}"
            )
        flat = coeffs.to(self.flat_basis.dtype) @ self.flat_basis
        return tuple(tl.unflatten(flat, self.like))


StopTest = Callable[[LanczosResult], bool]


def _orthogonalize(w: Tensor, basis: Tensor) -> Tensor:
    # Classical Gram-Schmidt against the whole basis, twice ("twice is enough", Giraud et
    # al. 2005): orthonormal to working precision, two matrix-vector products per pass.
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _fresh_direction(basis: Tensor, generator: torch.Generator | None) -> Tensor | None:
    """A random unit vector orthogonal to the rows of ``basis``, or None if none is found."""
    n = basis.shape[1]
    # Drawn on the generator's device (then moved), as rademacher_like does: a seeded CPU
    # generator gives the same restarts whatever the operator's device.
    dev = generator.device if generator is not None else basis.device
    for _ in range(_RESTART_TRIES):
        r = torch.randn(n, generator=generator, dtype=basis.dtype, device=dev).to(basis.device)
        r_norm = torch.linalg.vector_norm(r)
        r = _orthogonalize(r, basis)
        norm = torch.linalg.vector_norm(r)
        # A random vector keeps a fraction ~sqrt((n - rows) / n) of its norm.
        if bool(norm > 1e-3 * r_norm * ((n - basis.shape[0]) / n) ** 0.5):
            return r / norm
    return None


def lanczos(
    matvec: MatVec,
    v0: Sequence[Tensor],
    num_steps: int,
    *,
    reorthogonalize: bool = True,
    tol: float | None = None,
    restart: bool = False,
    generator: torch.Generator | None = None,
    stop: StopTest | None = None,
) -> LanczosResult:
    """Run up to ``num_steps`` steps of the symmetric Lanczos process from ``v0``.

    Recurrence ([GolubVanLoan2013] Alg. 10.1.1)::

        q_1 = v0 / ||v0||
        w = A q_k - beta_{k-1} q_{k-1};  alpha_k = q_k^T w;  w -= alpha_k q_k
        beta_k = ||w||;  q_{k+1} = w / beta_k

    With ``reorthogonalize=True`` (default) ``w`` is also orthogonalized twice against all
    previous ``q_j`` (full reorthogonalization), which prevents the ghost copies of
    converged Ritz values that plain Lanczos produces in floating point. Memory is
    ``num_steps`` vectors either way (the basis is returned).

    Breakdown is ``beta_k <= tol * max_j(|alpha_j| + beta_j)``: the Krylov space is then
    invariant (this always happens by step ``dim``). Without ``restart`` the iteration
    stops there; with it, it continues from a fresh random vector orthogonal to the basis
    (module docstring). Each step reads ``beta_k`` on the host once (one sync per step).

    Args:
        matvec: the symmetric operator, a function of a tuple of tensors returning one
            (e.g. ``HessianOperator(...).matvec``).
        v0: the start vector (tuple of tensors), nonzero.
        num_steps: the maximum number ``m >= 1`` of Lanczos vectors.
        reorthogonalize: full reorthogonalization (recommended; required by ``restart``).
        tol: relative breakdown threshold; default ``1000 * eps`` of ``v0``'s dtype.
        restart: on breakdown, go on in the orthogonal complement of the basis.
        generator: random generator for the restart vectors.
        stop: called after every step with the result so far (its
            :attr:`~LanczosResult.breakdown` set when that step found an invariant space);
            returning True ends the iteration there. Without it the iteration runs
            ``num_steps`` steps or until a breakdown that is not restarted.

    Returns:
        A :class:`LanczosResult` with ``T``'s coefficients and the basis.

    Raises:
        ValueError: if ``num_steps < 1``, ``v0`` is a single tensor or empty, ``v0`` is
            zero, or ``restart`` is asked without ``reorthogonalize``.

    Example:
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> res = lanczos(lambda v: (A @ v[0],), (torch.ones(3, dtype=torch.float64),), 5)
        >>> res.num_steps, res.breakdown
        (3, True)
        >>> torch.linalg.eigvalsh(res.tridiagonal()).round(decimals=12)
        tensor([1., 2., 3.], dtype=torch.float64)
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"Invalid num_steps: {num_steps}; it must be a positive integer")
    if isinstance(v0, Tensor) or len(v0) == 0:
        raise ValueError("v0 must be a non-empty tuple of tensors shaped like the parameters")
    if restart and not reorthogonalize:
        raise ValueError(
            "restart=True needs reorthogonalize=True: a restart vector is orthogonalized "
            "against the whole basis"
        )
    v0 = tuple(v.detach() for v in v0)
    if tol is None:
        tol = 1000.0 * torch.finfo(v0[0].dtype).eps
    v0_norm = tl.norm(v0)
    if not bool(v0_norm > 0):
        raise ValueError("v0 is zero: the Lanczos process needs a nonzero start vector")

    # The basis lives in the rows of one flat matrix Q, so that reorthogonalization is two
    # matrix-vector products per pass instead of one small op per basis vector and tensor.
    n = sum(v.numel() for v in v0)
    rows = min(num_steps, n)
    flat_q = torch.empty(rows, n, dtype=v0_norm.dtype, device=v0_norm.device)
    flat_q[0] = tl.flatten(v0) / v0_norm
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    block_starts = [0]
    zero = torch.zeros((), dtype=v0_norm.dtype, device=v0_norm.device)
    scale = zero

    def result(residual: Tensor, breakdown: bool) -> LanczosResult:
        m = len(alphas)
        return LanczosResult(
            alphas=torch.stack(alphas),
            betas=torch.stack(betas[: m - 1]) if m > 1 else zero.new_zeros(0),
            flat_basis=flat_q[:m],
            like=v0,
            v0_norm=v0_norm,
            breakdown=breakdown,
            residual_norm=residual,
            block_starts=tuple(block_starts),
        )

    for k in range(rows):
        q = flat_q[k]
        out = tuple(x.detach() for x in matvec(tl.unflatten(q, v0)))
        tl.check_like(out, v0, "matvec(q)")
        w = tl.flatten(out)
        if k > 0:
            w = w - betas[k - 1] * flat_q[k - 1]
        alpha = torch.dot(q, w)
        w = w - alpha * q
        alphas.append(alpha)
        if reorthogonalize:
            w = _orthogonalize(w, flat_q[: k + 1])
        beta = torch.linalg.vector_norm(w)
        scale = torch.maximum(scale, alpha.abs() + beta)
        # One host sync per step, for the early stop. n vectors span the whole space.
        invariant = k + 1 == n or bool(beta <= tol * scale)
        if k == rows - 1:
            return result(beta, invariant)
        if stop is not None and stop(result(beta, invariant)):
            return result(beta, invariant)
        if invariant:
            fresh = _fresh_direction(flat_q[: k + 1], generator) if restart else None
            if fresh is None:
                return result(beta, True)
            block_starts.append(k + 1)
            betas.append(zero)
            flat_q[k + 1] = fresh
        else:
            betas.append(beta)
            flat_q[k + 1] = w / beta
    raise AssertionError("unreachable: the loop returns at its last step")
