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
    top = eigenvalues(loss_fn, params, k=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(top, evals.flip(0)[:3], rtol=1e-8, atol=0)
    low = eigenvalues(loss_fn, params, k=2, which="smallest")
    torch.testing.assert_close(low, evals[:2], rtol=1e-8, atol=1e-10)
    mag = eigenvalues(loss_fn, params, k=1, which="magnitude")
    torch.testing.assert_close(mag.abs(), evals.abs().max().reshape(1), rtol=1e-8, atol=0)


def test_eigenvectors_are_eigenvectors():
    loss_fn, params = _mlp_loss()
    op = HessianOperator(loss_fn, params)
    values, vectors = eigenvalues(op, k=2, return_eigenvectors=True)
    for lam, v in zip(values, vectors, strict=True):
        assert abs(float(tl.norm(v)) - 1) < 1e-10
        residual = tl.norm(tl.sub(op.matvec(v), tl.scale(v, lam)))
        assert float(residual) < 1e-8 * float(values[0])


def test_few_steps_still_find_a_well_separated_top_eigenvalue():
    # 300-dim spectrum: 10 and 8 isolated above a bulk in [-1, 1]; 40 steps suffice.
    n = 300
    g = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    bulk = 2 * torch.rand(n - 2, generator=g, dtype=DT) - 1
    lam = torch.cat([torch.tensor([10.0, 8.0], dtype=DT), bulk])
    op = _Dense(u @ torch.diag(lam) @ u.T)
    top = eigenvalues(op, k=2, num_steps=40, generator=g)
    torch.testing.assert_close(top, torch.tensor([10.0, 8.0], dtype=DT), rtol=1e-8, atol=0)
    assert op.num_products == 40


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
