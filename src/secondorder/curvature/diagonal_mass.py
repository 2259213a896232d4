"""Diagonal mass of a matrix and its random-matrix baselines ([AdaptiveNorms] Sec. 3.2, Fig. 2).

[AdaptiveNorms] (after [BeckerLeCun1988] measures how diagonally dominant a Hessian is by the
share of diagonal mass ``delta_A = sum_i |A_ii| / sum_ij |A_ij|`` and compares a network's
``delta_H`` with two baselines of the same dimension ``d``:

- Proposition 1 (Gaussian Wigner matrix ``W``: symmetric, diagonal entries
  ``N(0, sigma_1^2)``, off-diagonal ``N(0, sigma_2^2)``): since ``E|N(0, s^2)| =
  s sqrt(2/pi)``, ``delta_{E|W|} = 1 / (1 + (d - 1) sigma_2 / sigma_1)``, which falls like
  ``1/d``. (The seed's text prints the ratio as ``sigma_2/sigma_2``, a typo: with the
  entries' scales it must be off-diagonal over diagonal.)
- Proposition 2 (OLS Hessian ``H = X X^T``, ``X`` in ``R^{d x n}`` with i.i.d. zero-mean
  entries of variance ``sigma^2``): ``E|H_ii| = n sigma^2`` and, by the central limit
  theorem, ``E|H_ij| ~ sigma^2 sqrt(2 n / pi)``, so as ``n -> infinity``
  ``delta_{E|H|} -> sqrt(n) / (sqrt(n) + (d - 1) sqrt(2/pi))``. The seed states only this
  limit. For Gaussian entries the finite-``n`` value is exact too (derived here, not in the
  seed): conditionally on row ``j``, ``H_ij ~ N(0, sigma^2 ||x_j||^2)`` so
  ``E|H_ij| = sigma^2 sqrt(2/pi) c_n`` with ``c_n = E||z|| = sqrt(2) G((n+1)/2) / G(n/2)``
  for ``z ~ N(0, I_n)``, giving ``n / (n + (d - 1) sqrt(2/pi) c_n)``.

Both baselines are the diagonal mass of the *expected absolute* matrix, not the expected
diagonal mass of a sample.
"""

from __future__ import annotations

import math

from torch import Tensor

from secondorder.curvature.operators import CurvatureOperator

__all__ = ["diagonal_mass", "wigner_diagonal_mass", "ols_diagonal_mass"]


def diagonal_mass(matrix: Tensor | CurvatureOperator) -> Tensor:
    """``sum_i |A_ii| / sum_ij |A_ij|`` ([AdaptiveNorms] Sec. 3.2), a 0-dim tensor in ``(0, 1]``.

    Args:
        matrix: a square tensor, or a :class:`CurvatureOperator` (materialized densely).

    Returns:
        The share of diagonal mass.

    Raises:
        ValueError: if the matrix is not square or is all zeros.

    Example:
        >>> import torch
        >>> diagonal_mass(torch.eye(3) + torch.ones(3, 3))  # 6 / 12
        tensor(0.5000)
    """
    a = matrix.to_dense() if isinstance(matrix, CurvatureOperator) else matrix
    if a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"diagonal_mass needs a square matrix, got shape {tuple(a.shape)}")
    total = a.abs().sum()
    if not bool(total > 0):
        raise ValueError("diagonal_mass is undefined for the zero matrix")
    return a.diagonal().abs().sum() / total


def _check_dim(value, name: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value}; it must be a positive integer")


def wigner_diagonal_mass(d: int, *, sigma_diag: float = 1.0, sigma_offdiag: float = 1.0) -> float:
    """[AdaptiveNorms] Prop. 1: ``delta_{E|W|} = 1 / (1 + (d - 1) sigma_offdiag / sigma_diag)``.

    Args:
        d: the dimension.
        sigma_diag: standard deviation of the diagonal entries.
        sigma_offdiag: standard deviation of the off-diagonal entries.

    Returns:
        The expected-matrix diagonal mass (exact for Gaussian entries, any ``d``).

    Raises:
        ValueError: if ``d < 1`` or a sigma is not positive.

    Example:
        >>> wigner_diagonal_mass(4)
        0.25
    """
    _check_dim(d, "d")
    if not sigma_diag > 0 or not sigma_offdiag > 0:
        raise ValueError(
            f"Invalid sigmas: sigma_diag={sigma_diag}, sigma_offdiag={sigma_offdiag}; "
            "both must be positive"
        )
    return 1.0 / (1.0 + (d - 1) * sigma_offdiag / sigma_diag)


def ols_diagonal_mass(d: int, n: int, *, exact_gaussian: bool = False) -> float:
    """[AdaptiveNorms] Prop. 2: diagonal mass of ``E|X X^T|`` for ``X`` in ``R^{d x n}``.

    By default the seed's large-``n`` limit ``sqrt(n) / (sqrt(n) + (d - 1) sqrt(2/pi))``
    (any zero-mean i.i.d. entries with finite variance). With ``exact_gaussian=True`` the
    exact finite-``n`` value for Gaussian entries (module docstring), which tends to the
    same limit.

    Args:
        d: the dimension (number of features).
        n: the number of samples.
        exact_gaussian: return the exact Gaussian finite-``n`` value.

    Returns:
        The diagonal mass baseline; it does not depend on ``sigma``.

    Raises:
        ValueError: if ``d`` or ``n`` is not a positive integer.

    Example:
        >>> round(ols_diagonal_mass(1, 10), 12)
        1.0
    """
    _check_dim(d, "d")
    _check_dim(n, "n")
    c = math.sqrt(2.0 / math.pi)
    if exact_gaussian:
        c_n = math.sqrt(2.0) * math.exp(math.lgamma((n + 1) / 2) - math.lgamma(n / 2))
        return n / (n + (d - 1) * c * c_n)
    return math.sqrt(n) / (math.sqrt(n) + (d - 1) * c)
