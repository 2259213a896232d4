"""Diagonal mass and the [AdaptiveNorms] Wigner / OLS baselines (closed forms and Monte Carlo)."""

import math

import pytest
import torch

from secondorder.curvature import (
    CurvatureOperator,
    diagonal_mass,
    ols_diagonal_mass,
    wigner_diagonal_mass,
)

DT = torch.float64


def test_diagonal_matrix_has_mass_one():
    assert float(diagonal_mass(torch.diag(torch.tensor([1.0, -2.0, 0.5])))) == 1.0


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_identity_plus_ones_closed_form(n):
    # diagonal entries 2, off-diagonal 1: 2n / (2n + n(n-1)) = 2 / (n + 1)
    a = torch.eye(n, dtype=DT) + torch.ones(n, n, dtype=DT)
    assert float(diagonal_mass(a)) == pytest.approx(2 / (n + 1), rel=1e-14)


def test_signs_do_not_cancel_and_operators_are_accepted():
    a = torch.tensor([[1.0, -1.0], [-1.0, -3.0]], dtype=DT)
    assert float(diagonal_mass(a)) == pytest.approx(4 / 6, rel=1e-14)

    class Op(CurvatureOperator):
        def _matvec(self, vec):
            return (a @ vec[0],)

    assert float(diagonal_mass(Op([torch.zeros(2, dtype=DT)]))) == pytest.approx(4 / 6)


def test_wigner_baseline_matches_monte_carlo():
    d, s1, s2, samples = 6, 2.0, 0.5, 20000
    g = torch.Generator().manual_seed(0)
    upper = torch.triu(s2 * torch.randn(samples, d, d, generator=g, dtype=DT), 1)
    diag = torch.diag_embed(s1 * torch.randn(samples, d, generator=g, dtype=DT))
    w = upper + upper.transpose(1, 2) + diag
    mc = float(diagonal_mass(w.abs().mean(0)))  # mass of the expected |W|
    expected = wigner_diagonal_mass(d, sigma_diag=s1, sigma_offdiag=s2)
    assert expected == pytest.approx(1 / (1 + 5 * 0.25))
    assert mc == pytest.approx(expected, rel=0.02)
    assert wigner_diagonal_mass(100) == pytest.approx(0.01)  # O(1/d) with equal scales


@pytest.mark.parametrize("d,n", [(5, 4), (8, 32)])
def test_ols_baseline_matches_monte_carlo(d, n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, d, n, generator=g, dtype=DT)
    mc = float(diagonal_mass((x @ x.transpose(1, 2)).abs().mean(0)))
    exact = ols_diagonal_mass(d, n, exact_gaussian=True)
    assert mc == pytest.approx(exact, rel=0.01)
    # The seed's large-n limit is already close for moderate n (its Fig. D.2 remark).
    limit = ols_diagonal_mass(d, n)
    assert limit == pytest.approx(math.sqrt(n) / (math.sqrt(n) + (d - 1) * math.sqrt(2 / math.pi)))
    assert abs(limit - exact) < 0.02


def test_ols_exact_tends_to_the_limit():
    gaps = [abs(ols_diagonal_mass(10, n, exact_gaussian=True) - ols_diagonal_mass(10, n))
            for n in (10, 100, 1000, 10000)]
    assert all(b < a / 5 for a, b in zip(gaps, gaps[1:], strict=False))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"square matrix, got shape \(2, 3\)"):
        diagonal_mass(torch.ones(2, 3))
    with pytest.raises(ValueError, match="zero matrix"):
        diagonal_mass(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="Invalid d: 0"):
        wigner_diagonal_mass(0)
    with pytest.raises(ValueError, match="Invalid sigmas"):
        wigner_diagonal_mass(3, sigma_diag=0.0)
    with pytest.raises(ValueError, match="Invalid n: 0"):
        ols_diagonal_mass(3, 0)
