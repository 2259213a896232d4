"""Lanczos tridiagonalization of a symmetric operator on lists of tensors.

``lanczos(matvec, v0, m)`` builds an orthonormal basis ``Q = [q_1, ..., q_m]`` of the
Krylov space ``K_m(A, v0)`` and the tridiagonal ``T = Q^T A Q`` (Golub & Van Loan
Alg. 10.1.1; with full reorthogonalization, Alg. 10.3.1 / Parlett ch. 13). The Ritz values
(eigenvalues of ``T``) approximate the extreme eigenvalues of ``A``; the first components of
``T``'s eigenvectors give the quadrature weights of stochastic Lanczos quadrature
(:mod:`secondorder.curvature.spectrum`); the ARC subproblem solves its cubic model in the
Krylov basis (``s = Q y``, :meth:`LanczosResult.combine`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from secondorder import tensorlist as tl

__all__ = ["LanczosResult", "lanczos"]

MatVec = Callable[[tuple[Tensor, ...]], Sequence[Tensor]]


@dataclass
class LanczosResult:
    """Output of :func:`lanczos`.

    Attributes:
        alphas: the diagonal of ``T``, shape ``(m,)`` with ``m`` the number of steps taken.
        betas: the off-diagonal of ``T``, shape ``(m - 1,)``.
        basis: the orthonormal Lanczos vectors ``q_1..q_m``, each a tuple shaped like ``v0``.
        v0_norm: ``||v0||`` (0-dim tensor), so that ``v0 = v0_norm * q_1``.
        breakdown: True when the iteration stopped early because ``beta`` vanished (the
            Krylov space is invariant and the Ritz values are exact eigenvalues of ``A``).
    """

    alphas: Tensor
    betas: Tensor
    basis: list[tuple[Tensor, ...]]
    v0_norm: Tensor = field(default_factory=lambda: torch.ones(()))
    breakdown: bool = False

    @property
    def num_steps(self) -> int:
        """The number ``m`` of Lanczos vectors built."""
        return int(self.alphas.numel())

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

    def combine(self, coeffs: Tensor) -> tuple[Tensor, ...]:
        """Map Krylov coordinates ``y`` (shape ``(m,)``) to the vector ``Q y``.

        Raises:
            ValueError: if ``coeffs`` does not have one entry per basis vector.
        """
        if coeffs.dim() != 1 or coeffs.numel() != len(self.basis):
            raise ValueError(
                f"coeffs must have shape ({len(self.basis)},), got {tuple(coeffs.shape)}"
            )
        return tl.lincomb(list(coeffs.unbind(0)), self.basis)


def lanczos(
    matvec: MatVec,
    v0: Sequence[Tensor],
    num_steps: int,
    *,
    reorthogonalize: bool = True,
    tol: float | None = None,
) -> LanczosResult:
    """Run ``num_steps`` steps of the symmetric Lanczos process from ``v0``.

    Recurrence (Golub & Van Loan Alg. 10.1.1)::

        q_1 = v0 / ||v0||
        w = A q_k - beta_{k-1} q_{k-1};  alpha_k = q_k^T w;  w -= alpha_k q_k
        beta_k = ||w||;  q_{k+1} = w / beta_k

    With ``reorthogonalize=True`` (default) ``w`` is also orthogonalized twice against all
    previous ``q_j`` (full reorthogonalization), which prevents the ghost copies of
    converged Ritz values that plain Lanczos produces in floating point. Memory is
    ``num_steps`` vectors either way (the basis is returned).

    The iteration stops early on breakdown, ``beta_k <= tol * max_j(|alpha_j| + beta_j)``:
    the Krylov space is then invariant (this always happens by step ``dim``). Each step
    reads ``beta_k`` on the host once (one sync per step, the price of the early stop).

    Args:
        matvec: the symmetric operator, a function of a tuple of tensors returning one
            (e.g. ``HessianOperator(...).matvec``).
        v0: the start vector (tuple of tensors), nonzero.
        num_steps: the maximum number ``m >= 1`` of Lanczos vectors.
        reorthogonalize: full reorthogonalization (recommended).
        tol: relative breakdown threshold; default ``1000 * eps`` of ``v0``'s dtype.

    Returns:
        A :class:`LanczosResult` with ``T``'s coefficients and the basis.

    Raises:
        ValueError: if ``num_steps < 1``, ``v0`` is a single tensor or empty, or ``v0`` is
            zero.

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
    scale = torch.zeros((), dtype=v0_norm.dtype, device=v0_norm.device)
    breakdown = False
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
            # Classical Gram-Schmidt against the whole basis, twice ("twice is enough",
            # Giraud et al. 2005): orthonormal to working precision.
            basis_k = flat_q[: k + 1]
            for _ in range(2):
                w = w - basis_k.T @ (basis_k @ w)
        if k == rows - 1:
            breakdown = rows < num_steps  # n vectors span the whole (invariant) space
            break
        beta = torch.linalg.vector_norm(w)
        scale = torch.maximum(scale, alpha.abs() + beta)
        if bool(beta <= tol * scale):  # one host sync per step, for the early stop
            breakdown = True
            break
        betas.append(beta)
        flat_q[k + 1] = w / beta
    basis = [tl.unflatten(flat_q[j], v0) for j in range(len(alphas))]

    like = v0_norm
    return LanczosResult(
        alphas=torch.stack(alphas),
        betas=torch.stack(betas) if betas else torch.zeros(0, dtype=like.dtype, device=like.device),
        basis=basis,
        v0_norm=v0_norm,
        breakdown=breakdown,
    )
