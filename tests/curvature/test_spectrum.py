"""Extreme eigenvalues, Hutchinson trace and SLQ density against dense float64 spectra."""

import math

import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature import (
    CurvatureOperator,
    HessianOperator,
    eigenvalues,
    extreme_eigenpairs,
    functional_loss,
    hessian,
    spectral_density,
    trace,
)

DT = torch.float64


def _mlp_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    x, y = torch.randn(24, 3, dtype=DT), torch.randint(0, 3, (24,))
    return functional_loss(model, nn.CrossEntropyLoss(), x, y)


class _Dense(CurvatureOperator):
    def __init__(self, a):
        super().__init__([torch.zeros(a.shape[0], dtype=a.dtype)])
        self.a = a

    def _matvec(self, vec):
        return (self.a @ vec[0],)


def _random_symmetric(n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=DT)
    return (a + a.T) / math.sqrt(2 * n)


def test_top3_match_dense_mlp_hessian():
    loss_fn, params = _mlp_loss()
    dense = hessian(loss_fn, params)
    evals = torch.linalg.eigvalsh(dense)
    g = torch.Generator().manual_seed(0)
    top = eigenvalues(loss_fn, params, k=3, tol=1e-10, generator=g)
    torch.testing.assert_close(top, evals.flip(0)[:3], rtol=1e-8, atol=0)
    low = eigenvalues(loss_fn, params, k=2, which="smallest", tol=1e-10)
    torch.testing.assert_close(low, evals[:2], rtol=1e-8, atol=1e-10)
    mag = eigenvalues(loss_fn, params, k=1, which="magnitude", tol=1e-10)
    torch.testing.assert_close(mag.abs(), evals.abs().max().reshape(1), rtol=1e-8, atol=0)


def test_eigenvectors_are_eigenvectors():
    loss_fn, params = _mlp_loss()
    op = HessianOperator(loss_fn, params)
    values, vectors = eigenvalues(op, k=2, tol=1e-10, return_eigenvectors=True)
    for lam, v in zip(values, vectors, strict=True):
        assert abs(float(tl.norm(v)) - 1) < 1e-10
        residual = tl.norm(tl.sub(op.matvec(v), tl.scale(v, lam)))
        assert float(residual) < 1e-8 * float(values[0])


def test_few_steps_still_find_a_well_separated_top_eigenvalue():
    # 300-dim spectrum: 10 and 8 isolated above a bulk in [-1, 1]; fewer than 40 steps
    # suffice, and the convergence test stops there.
    n = 300
    g = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    bulk = 2 * torch.rand(n - 2, generator=g, dtype=DT) - 1
    lam = torch.cat([torch.tensor([10.0, 8.0], dtype=DT), bulk])
    op = _Dense(u @ torch.diag(lam) @ u.T)
    top = eigenvalues(op, k=2, num_steps=40, tol=1e-10, generator=g)
    torch.testing.assert_close(top, torch.tensor([10.0, 8.0], dtype=DT), rtol=1e-8, atol=0)
    assert op.num_products < 40


def test_trace_within_statistical_tolerance_and_improves_with_samples():
    a = _random_symmetric(40, seed=1) + torch.diag(torch.linspace(0, 2, 40, dtype=DT))
    exact = float(torch.trace(a))
    op = _Dense(a)
    g = torch.Generator().manual_seed(7)
    few = [trace(op, num_samples=10, generator=g) for _ in range(12)]
    many = [trace(op, num_samples=400, generator=g) for _ in range(12)]
    for est in few + many:
        assert abs(float(est.value) - exact) <= 4.5 * float(est.stderr)
    err_few = sum(abs(float(e.value) - exact) for e in few) / 12
    err_many = sum(abs(float(e.value) - exact) for e in many) / 12
    assert err_many < err_few / 3  # sqrt(40) = 6.3 in expectation
    # The sample variance is 2 sum_{i != j} a_ij^2.
    off = a - torch.diag(a.diagonal())
    sd = math.sqrt(2 * float(off.pow(2).sum()))
    assert 0.8 * sd < float(many[0].samples.std()) < 1.2 * sd


def test_trace_of_mlp_hessian():
    loss_fn, params = _mlp_loss()
    exact = float(torch.trace(hessian(loss_fn, params)))
    est = trace(loss_fn, params, num_samples=200, generator=torch.Generator().manual_seed(0))
    assert abs(float(est.value) - exact) <= 4 * float(est.stderr)


def test_slq_density_integrates_to_one_and_first_moment_is_trace_over_n():
    n = 60
    a = _random_symmetric(n, seed=2) + torch.diag(torch.linspace(0, 3, n, dtype=DT))
    op = _Dense(a)
    g = torch.Generator().manual_seed(1)
    res = spectral_density(op, num_steps=20, num_probes=30, generator=g)
    assert res.nodes.shape == (30, 20) and res.weights.shape == (30, 20)
    torch.testing.assert_close(res.weights.sum(1), torch.ones(30, dtype=DT), atol=1e-12, rtol=0)
    integral = torch.trapezoid(res.density, res.grid)
    assert abs(float(integral) - 1) < 1e-6
    first = torch.trapezoid(res.grid * res.density, res.grid)
    assert abs(float(first - res.moment(1))) < 1e-6
    # Quadrature is exact for degree <= 2m-1: per probe, moment 1 is q^T A q = z^T A z / n.
    mean_probe = trace(op, num_samples=30, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(res.moment(1), mean_probe.value / n, atol=1e-12, rtol=0)
    # ... and it estimates tr(A)/n within the statistical tolerance of 30 probes.
    tol = 4 * float(mean_probe.stderr) / n
    assert abs(float(res.moment(1)) - float(torch.trace(a)) / n) <= tol
    # The second moment estimates ||A||_F^2 / n.
    assert abs(float(res.moment(2)) / (float(a.pow(2).sum()) / n) - 1) < 0.15


def test_slq_with_full_dimension_recovers_the_eigenvalues():
    a = torch.diag(torch.tensor([-1.0, 0.5, 2.0, 4.0], dtype=DT))
    u, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=DT))
    res = spectral_density(_Dense(u @ a @ u.T), num_steps=10, num_probes=2)
    for p in range(2):
        live = res.weights[p] > 1e-12
        torch.testing.assert_close(
            res.nodes[p][live], torch.tensor([-1.0, 0.5, 2.0, 4.0], dtype=DT), atol=1e-10, rtol=0
        )


def test_bad_arguments():
    loss_fn, params = _mlp_loss()
    with pytest.raises(ValueError, match="Invalid k: 0"):
        eigenvalues(loss_fn, params, k=0)
    with pytest.raises(ValueError, match="Invalid k: 100; the operator has only 38 dimensions"):
        eigenvalues(loss_fn, params, k=100)
    with pytest.raises(ValueError, match="Invalid k: 5; it cannot exceed num_steps=4"):
        eigenvalues(loss_fn, params, k=5, num_steps=4)
    with pytest.raises(ValueError, match="Invalid which: 'top'"):
        eigenvalues(loss_fn, params, which="top")
    with pytest.raises(ValueError, match="params is required"):
        eigenvalues(loss_fn)
    with pytest.raises(ValueError, match="expected a CurvatureOperator or a loss function"):
        trace(3.0)
    with pytest.raises(ValueError, match="Invalid num_samples: 0"):
        trace(loss_fn, params, num_samples=0)
    with pytest.raises(ValueError, match="Invalid sigma: -1"):
        spectral_density(loss_fn, params, sigma=-1.0)
    with pytest.raises(ValueError, match="Invalid num_probes: 0"):
        spectral_density(loss_fn, params, num_probes=0)


def _mlp39():
    """MLP 5-4-3 (39 parameters): softmax shift invariance gives a 5-dim null space."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    x, y = torch.randn(16, 5, dtype=DT), torch.randint(0, 3, (16,))
    return functional_loss(model, nn.CrossEntropyLoss(), x, y)


def test_all_39_eigenvalues_of_a_39_parameter_mlp_including_the_repeated_zeros():
    # The Krylov space of any v0 has dimension <= 35 (the 0 eigenvalue is repeated): the
    # old code refused k > 35 ("Krylov space ... invariant, pick another v0").
    loss_fn, params = _mlp39()
    evals = torch.linalg.eigvalsh(hessian(loss_fn, params))
    assert int((evals.abs() < 1e-12).sum()) >= 5
    res = extreme_eigenpairs(loss_fn, params, k=39, generator=torch.Generator().manual_seed(0))
    assert res.converged and res.restarts >= 4 and res.num_steps == 39
    torch.testing.assert_close(res.values, evals.flip(0), atol=1e-12, rtol=0)
    low = eigenvalues(loss_fn, params, k=39, which="smallest")
    torch.testing.assert_close(low, evals, atol=1e-12, rtol=0)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_wanted_values_that_reach_into_a_repeated_zero_get_every_copy(which):
    # 35 of 39 values: the wanted set holds several copies of 0, which only restarts find.
    loss_fn, params = _mlp39()
    evals = torch.linalg.eigvalsh(hessian(loss_fn, params))
    expected = evals.flip(0)[:35] if which == "largest" else evals[:35]
    got = eigenvalues(loss_fn, params, k=35, which=which, tol=1e-10,
                      generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_zero_hessian_gives_zeros_in_two_products():
    op = _Dense(torch.zeros(6, 6, dtype=DT))
    res = extreme_eigenpairs(op, k=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.values, torch.zeros(2, dtype=DT))
    assert res.converged and res.num_steps == 2 and op.num_products == 2
    assert torch.equal(res.residuals, torch.zeros(2, dtype=DT))


@pytest.mark.parametrize("which", ["largest", "magnitude"])
def test_rank_one_hessian(which):
    # f = (sum of all parameters)^2: H = 2 * 1 1^T on 43 parameters, eigenvalues 86 and 0.
    loss_fn, params = _mlp_loss()
    rank1 = lambda ps: sum(p.sum() for p in ps) ** 2  # noqa: E731
    n = sum(p.numel() for p in params)
    evals = torch.linalg.eigvalsh(hessian(rank1, params))
    torch.testing.assert_close(evals[-1], torch.tensor(2.0 * n, dtype=DT))
    got = eigenvalues(rank1, params, k=3, which=which, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, evals.flip(0)[:3], atol=1e-12, rtol=1e-14)


def test_start_vector_inside_an_invariant_subspace_restarts_and_finds_the_top():
    # v0 in span(e1, e2): its Krylov space holds only 1 and 2; the old code returned 2.
    op = _Dense(torch.diag(torch.arange(1.0, 7.0, dtype=DT)))
    v0 = (torch.tensor([1.0, 1.0, 0, 0, 0, 0], dtype=DT),)
    res = extreme_eigenpairs(op, k=2, v0=v0, tol=1e-12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.values, torch.tensor([6.0, 5.0], dtype=DT), atol=1e-12, rtol=0)
    assert res.restarts >= 1


def test_stops_when_the_residual_bounds_meet_tol_and_the_bounds_hold():
    loss_fn, params = _mlp_loss()
    evals = torch.linalg.eigvalsh(hessian(loss_fn, params))
    steps = {}
    for tol in (1e-2, 1e-3, 1e-6):
        g = torch.Generator().manual_seed(0)
        res = extreme_eigenpairs(loss_fn, params, k=2, tol=tol, generator=g,
                                 return_eigenvectors=True)
        assert res.converged and res.num_steps < 38
        assert bool((res.residuals <= tol * res.values.abs()).all())
        # Rigorous: an eigenvalue lies within the residual bound of each value ...
        dist = (res.values[:, None] - evals[None]).abs().min(1).values
        assert bool((dist <= res.residuals + 1e-14).all())
        # ... and the bound is the true residual of the Ritz vector.
        op = HessianOperator(loss_fn, params)
        for lam, v, r in zip(res.values, res.vectors, res.residuals, strict=True):
            true_r = tl.norm(tl.sub(op.matvec(v), tl.scale(v, lam)))
            assert abs(float(true_r - r)) <= 1e-9 * float(res.values[0])
        steps[tol] = res.num_steps
    assert steps[1e-2] < steps[1e-3] < steps[1e-6]


def test_running_out_of_steps_is_reported():
    loss_fn, params = _mlp_loss()
    res = extreme_eigenpairs(loss_fn, params, k=3, num_steps=4, tol=1e-6)
    assert not res.converged and res.num_steps == 4
    with pytest.warns(RuntimeWarning, match="did not converge to tol=1e-06 in 4 Lanczos steps"):
        eigenvalues(loss_fn, params, k=3, num_steps=4, tol=1e-6)


def test_bad_tol():
    loss_fn, params = _mlp_loss()
    with pytest.raises(ValueError, match="Invalid tol: 1.5"):
        eigenvalues(loss_fn, params, tol=1.5)
    with pytest.raises(ValueError, match="Invalid tol: -0.1"):
        extreme_eigenpairs(loss_fn, params, tol=-0.1)
