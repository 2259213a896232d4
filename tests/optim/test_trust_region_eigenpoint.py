"""The eigenpoint floor of [AdaptiveNorms] Assumption 2 and Alg. 1 line 4's g := 0 case."""

from __future__ import annotations

import pytest
import torch

from secondorder import tensorlist as tl
from secondorder.optim import TrustRegion
from secondorder.optim.norms import DiagonalNorm, SphericalNorm
from secondorder.optim.trust_region import eigen_point, model_decrease, solve_subproblem


def _dense(h: torch.Tensor):
    return lambda v: (h @ v[0],)


@pytest.mark.parametrize("diagonal", [False, True])
def test_eigen_point_is_the_boundary_step_along_the_leftmost_eigenvector(diagonal):
    """Dense float64 oracle: with d Lanczos steps, the eigenpoint is radius M^{-1/2} v_min
    (v_min of M^{-1/2} B M^{-1/2}), signed downhill, with the model's own decrease."""
    torch.manual_seed(0)
    d = 6
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    b = q @ torch.diag(torch.tensor([-3.0, -1.0, 0.5, 1.0, 2.0, 4.0],
                                    dtype=torch.float64)) @ q.T
    g = (torch.randn(d, dtype=torch.float64),)
    if diagonal:
        norm = DiagonalNorm("adagrad", epsilon=1e-3)
        norm.update((torch.rand(d, dtype=torch.float64) + 0.5,))
        m = norm.metric()[0]
    else:
        norm, m = SphericalNorm(), torch.ones(d, dtype=torch.float64)
    radius = 0.7
    step, dec = eigen_point(_dense(b), g, radius, norm, num_steps=d)
    c = b / torch.sqrt(m)[:, None] / torch.sqrt(m)[None, :]
    vals, vecs = torch.linalg.eigh(c)
    want = radius * vecs[:, 0] / torch.sqrt(m)
    if float(g[0] @ want) > 0:
        want = -want
    assert torch.allclose(step[0], want, atol=1e-10)
    assert abs(float(torch.sqrt(step[0] @ (m * step[0]))) - radius) < 1e-10  # on boundary
    exact = model_decrease(g, step, (b @ step[0],))
    assert abs(float(dec) - float(exact)) < 1e-10
    assert float(dec) >= -0.5 * radius**2 * float(vals[0]) - 1e-12  # at least |theta| r^2/2


def test_eigen_point_is_zero_without_negative_curvature():
    b = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    step, dec = eigen_point(_dense(b), (torch.ones(3, dtype=torch.float64),), 1.0,
                            SphericalNorm(), num_steps=3)
    assert float(tl.norm(step)) == 0.0 and float(dec) == 0.0


def test_solve_subproblem_takes_the_eigenpoint_when_steihaug_has_no_decrease():
    """g = 0 at a saddle: Steihaug's CG and the Cauchy point return 0; the eigenpoint
    floor gives the decrease radius^2 |lambda_min| / 2."""
    b = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    g = (torch.zeros(2, dtype=torch.float64),)
    plain = solve_subproblem(_dense(b), g, 0.5, SphericalNorm())
    assert float(plain.predicted_decrease) == 0.0
    floor = solve_subproblem(_dense(b), g, 0.5, SphericalNorm(), eigen_steps=2)
    assert abs(float(floor.predicted_decrease) - 0.5 * 0.25 * 1.0) < 1e-12
    assert abs(abs(float(floor.step[0][1])) - 0.5) < 1e-12 and abs(float(floor.step[0][0])) < 1e-12


def test_alg1_line4_leaves_a_saddle_only_with_the_eigenpoint():
    """f = w1^2 - w2^2 + w2^4 started at the saddle (0, 0): g = 0 <= tolerance_grad. Without the
    floor the step is skipped (w stays); with it, Alg. 1 solves with g := 0 and descends."""
    def run(eigen_steps):
        w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = TrustRegion([w], radius=0.5, norm="spherical", tolerance_grad=1e-8,
                          eigen_steps=eigen_steps)

        def closure():
            return w[0] ** 2 - w[1] ** 2 + w[1] ** 4

        for _ in range(5):
            opt.step(closure)
        return w.detach(), float(closure().detach())

    w_plain, f_plain = run(0)
    assert torch.equal(w_plain, torch.zeros(2, dtype=torch.float64)) and f_plain == 0.0
    w_eig, f_eig = run(2)
    assert f_eig < -0.2  # the minimum is -1/4 at w2 = +-1/sqrt(2)


def test_eigen_steps_is_validated():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="Invalid eigen_steps value: -1"):
        TrustRegion([w], eigen_steps=-1)
