"""Tests of the shared Krylov solvers against dense float64 oracles."""

from __future__ import annotations

import pytest
import torch

from secondorder import tensorlist as tl
from secondorder.optim.krylov import sqrt_gradient_forcing, steihaug_cg, truncated_cg

DT = torch.float64
SHAPES = [(3,), (2, 2), (1,)]  # an 8-dim vector split across tensors of several shapes
N = 8


def split(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    like = tuple(torch.empty(s, dtype=DT) for s in SHAPES)
    return tuple(t.clone() for t in tl.unflatten(v, like))


def op(A: torch.Tensor):
    def matvec(vec):
        return split(A @ tl.flatten(vec))

    return matvec


def counted(A: torch.Tensor):
    calls = []

    def matvec(vec):
        calls.append(1)
        return split(A @ tl.flatten(vec))

    return matvec, calls


def spd(n: int, seed: int, cond: float = 10.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=DT)
    return q @ torch.diag(eig) @ q.T


def indefinite(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    eig = torch.linspace(-2.0, 3.0, n, dtype=DT)
    return q @ torch.diag(eig) @ q.T


def rand(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ----------------------------------------------------------------------------- truncated_cg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_truncated_cg_matches_dense_solve(seed):
    A, b = spd(N, seed, cond=100.0), rand(N, 10 + seed)
    res = truncated_cg(op(A), split(b), rtol=1e-13, max_iter=4 * N)
    assert res.status == "converged"
    x = tl.flatten(res.solution)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=0, atol=1e-10)
    assert [t.shape for t in res.solution] == [torch.Size(s) for s in SHAPES]
    torch.testing.assert_close(res.residual_norm, torch.linalg.norm(b - A @ x))


def test_truncated_cg_converges_in_n_steps():
    A, b = spd(N, 3, cond=5.0), rand(N, 4)
    res = truncated_cg(op(A), split(b), rtol=1e-12, max_iter=3 * N)
    assert res.status == "converged"
    assert res.iterations == N
    torch.testing.assert_close(
        tl.flatten(res.solution), torch.linalg.solve(A, b), atol=1e-12, rtol=0
    )


def test_truncated_cg_respects_max_iter_and_counts_products():
    A, b = spd(N, 5, cond=1e3), rand(N, 6)
    matvec, calls = counted(A)
    res = truncated_cg(matvec, split(b), rtol=1e-14, max_iter=3)
    assert res.status == "max_iter"
    assert res.iterations == 3 and len(calls) == 3
    # three CG steps minimize the A-norm error over the Krylov space K_3(A, b)
    K = torch.stack([b, A @ b, A @ A @ b], dim=1)
    coef = torch.linalg.solve(K.T @ A @ K, K.T @ b)
    torch.testing.assert_close(tl.flatten(res.solution), K @ coef, atol=1e-10, rtol=0)


def test_preconditioner_reduces_iterations():
    n = 40
    g = torch.Generator().manual_seed(0)
    d = torch.logspace(0, 5, n, dtype=DT)
    E = 0.01 * torch.randn(n, n, generator=g, dtype=DT)
    A = torch.diag(d) + (E + E.T) / 2  # diagonally dominant, condition ~1e5
    b = torch.randn(n, generator=g, dtype=DT)
    matvec = lambda v: (A @ v[0],)  # noqa: E731
    plain = truncated_cg(matvec, (b,), rtol=1e-10, max_iter=1000)
    jacobi = truncated_cg(
        matvec, (b,), rtol=1e-10, max_iter=1000, preconditioner=lambda r: (r[0] / d,)
    )
    exact = torch.linalg.solve(A, b)
    assert plain.status == jacobi.status == "converged"
    torch.testing.assert_close(jacobi.solution[0], exact, rtol=1e-8, atol=0)
    assert jacobi.iterations < plain.iterations / 3, (jacobi.iterations, plain.iterations)


def test_negative_curvature_at_first_iteration_returns_scaled_b():
    A = torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=DT))
    b = torch.tensor([2.0, 0.0, 0.0], dtype=DT)
    res = truncated_cg(lambda v: (A @ v[0],), (b,))
    assert res.status == "negative_curvature" and res.iterations == 1
    p = res.negative_curvature[0]
    assert (p @ A @ p).item() <= 0
    # tau = b^T b / |b^T A b| = 4 / 4
    torch.testing.assert_close(res.solution[0], b)
    # zero curvature: tau = 1
    Z = torch.diag(torch.tensor([0.0, 2.0], dtype=DT))
    b2 = torch.tensor([3.0, 0.0], dtype=DT)
    res = truncated_cg(lambda v: (Z @ v[0],), (b2,))
    assert res.status == "negative_curvature"
    torch.testing.assert_close(res.solution[0], b2)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_negative_curvature_later_returns_last_iterate(seed):
    A, b = indefinite(N, seed), rand(N, 20 + seed)
    A = A + torch.diag(torch.full((N,), 0.0, dtype=DT))
    res = truncated_cg(op(A), split(b), rtol=1e-12, keep_iterates=range(N + 1))
    assert res.status == "negative_curvature"
    p = tl.flatten(res.negative_curvature)
    assert (p @ A @ p).item() <= 0
    k = res.iterations
    x = tl.flatten(res.solution)
    if k > 1:
        # the last iterate is returned unchanged
        torch.testing.assert_close(x, tl.flatten(res.iterates[k - 1]), rtol=0, atol=0)
        # and it decreased the model q(x) = x^T A x / 2 - b^T x below q(0) = 0
        assert (0.5 * x @ A @ x - b @ x).item() < 0
    torch.testing.assert_close(res.residual_norm, torch.linalg.norm(b - A @ x))


def test_callback_stops_and_sees_iterate_and_residual():
    A, b = spd(N, 7, cond=1e3), rand(N, 8)
    seen = []

    def callback(i, x, r):
        xf, rf = tl.flatten(x), tl.flatten(r)
        torch.testing.assert_close(rf, b - A @ xf)
        seen.append(i)
        return i >= 3

    res = truncated_cg(op(A), split(b), rtol=1e-14, callback=callback)
    assert res.status == "callback" and res.iterations == 3 and seen == [1, 2, 3]
    ref = truncated_cg(op(A), split(b), rtol=1e-14, max_iter=3)
    torch.testing.assert_close(tl.flatten(res.solution), tl.flatten(ref.solution), rtol=0, atol=0)


def test_callback_may_return_a_tensor_and_martens_quadratic_from_residual():
    """A 0-dim tensor stop flag (no host sync); phi(x) = -x^T (b + r) / 2 needs no product."""
    A, b = spd(N, 9, cond=1e3), rand(N, 9)
    phis = []

    def callback(i, x, r):
        phi = -0.5 * tl.dot(x, tl.add(split(b), r))
        xf = tl.flatten(x)
        torch.testing.assert_close(phi, 0.5 * xf @ A @ xf - b @ xf)
        phis.append(phi)
        return phi < -0.99 * (-0.5 * b @ torch.linalg.solve(A, b))

    res = truncated_cg(op(A), split(b), rtol=1e-14, callback=callback)
    assert res.status == "callback"
    assert all(float(phis[j + 1]) <= float(phis[j]) for j in range(len(phis) - 1))
    assert res.iterations == len(phis) < N


@pytest.mark.parametrize("case", ["converged", "negative", "callback", "max_iter"])
def test_check_every_does_not_change_results(case):
    # check_every=1 decides on the host in Python floats, the others in masked 0-dim
    # tensors: the same exits and iterations; the iterates agree to rounding, amplified by
    # the condition number over up to N iterations (measured: 6e-11 relative at worst)
    A = indefinite(N, 1) if case == "negative" else spd(N, 2, cond=100.0)
    b = rand(N, 3)
    kw = {"rtol": 1e-12}
    if case == "callback":
        kw["callback"] = lambda i, x, r: i >= 4
    if case == "max_iter":
        kw["max_iter"] = 5
    one = truncated_cg(op(A), split(b), check_every=1, **kw)
    four = truncated_cg(op(A), split(b), check_every=4, **kw)
    big = truncated_cg(op(A), split(b), check_every=1000, **kw)
    for other in (four, big):
        assert other.status == one.status and other.iterations == one.iterations
        torch.testing.assert_close(
            tl.flatten(other.solution), tl.flatten(one.solution), rtol=1e-8, atol=1e-12
        )
    # the masked loops of any period compute the same thing
    torch.testing.assert_close(tl.flatten(four.solution), tl.flatten(big.solution),
                               rtol=0, atol=0)


def test_keep_iterates_match_truncated_runs():
    A, b = spd(N, 4, cond=100.0), rand(N, 5)
    res = truncated_cg(op(A), split(b), rtol=1e-12, keep_iterates=[0, 2, 5, 50])
    assert sorted(res.iterates) == [0, 2, 5]
    assert torch.count_nonzero(tl.flatten(res.iterates[0])) == 0
    for k in (2, 5):
        ref = truncated_cg(op(A), split(b), rtol=1e-12, max_iter=k)
        torch.testing.assert_close(
            tl.flatten(res.iterates[k]), tl.flatten(ref.solution), rtol=0, atol=0
        )


def test_x0_warm_start():
    A, b = spd(N, 6, cond=100.0), rand(N, 7)
    exact = torch.linalg.solve(A, b)
    matvec, calls = counted(A)
    res = truncated_cg(matvec, split(b), x0=split(exact), rtol=1e-8)
    assert res.status == "converged" and res.iterations == 0 and len(calls) == 1
    res = truncated_cg(op(A), split(b), x0=split(exact + 0.1 * rand(N, 8)), rtol=1e-14)
    torch.testing.assert_close(tl.flatten(res.solution), exact, atol=1e-10, rtol=0)


def test_zero_rhs_converges_immediately():
    matvec, calls = counted(spd(N, 0))
    res = truncated_cg(matvec, split(torch.zeros(N, dtype=DT)))
    assert res.status == "converged" and res.iterations == 0 and calls == []
    assert float(tl.norm(res.solution)) == 0.0


def test_truncated_cg_bad_inputs():
    A = spd(N, 0)
    b = split(rand(N, 0))
    with pytest.raises(ValueError, match="Invalid rtol value: -1"):
        truncated_cg(op(A), b, rtol=-1)
    with pytest.raises(ValueError, match="Invalid atol value: -0.5"):
        truncated_cg(op(A), b, atol=-0.5)
    with pytest.raises(ValueError, match="Invalid max_iter value: -2"):
        truncated_cg(op(A), b, max_iter=-2)
    with pytest.raises(ValueError, match="Invalid check_every value: 0"):
        truncated_cg(op(A), b, check_every=0)
    with pytest.raises(ValueError, match="b must be a sequence of tensors"):
        truncated_cg(op(A), rand(N, 0))
    with pytest.raises(ValueError, match="b is empty"):
        truncated_cg(op(A), ())
    with pytest.raises(ValueError, match=r"x0\[1\] has shape \(4,\)"):
        truncated_cg(op(A), b, x0=(b[0], torch.zeros(4, dtype=DT), b[2]))


# ----------------------------------------------------------------------------- steihaug_cg


def model(A, g, s):
    return (g @ s + 0.5 * s @ A @ s).item()


def m_norm(s, m=None):
    return torch.sqrt(s @ s if m is None else s @ (m * s)).item()


def cauchy_point(A, g, radius, m=None):
    """Cauchy point of the M-norm trust-region problem (N&W eq. 4.11-4.12 after s = M^-1/2 u)."""
    m = torch.ones_like(g) if m is None else m
    h = m.rsqrt()
    gu, Au = h * g, h[:, None] * A * h[None, :]
    curv = gu @ Au @ gu
    gn = torch.linalg.norm(gu)
    tau = 1.0 if curv <= 0 else min(1.0, (gn**3 / (radius * curv)).item())
    return h * (-tau * radius / gn * gu)


def rand_metric(seed):
    return torch.exp(rand(N, 100 + seed))  # positive, spread over ~e^{-2}..e^{2}


def test_steihaug_interior_equals_newton_step():
    A, g = spd(N, 0, cond=50.0), rand(N, 1)
    newton = -torch.linalg.solve(A, g)
    for m in (None, rand_metric(0)):
        res = steihaug_cg(
            op(A),
            split(g),
            radius=1e3,
            metric=None if m is None else split(m),
            rtol=1e-13,
            max_iter=4 * N,
        )
        assert res.status == "converged" and not res.hits_boundary
        torch.testing.assert_close(tl.flatten(res.solution), newton, atol=1e-10, rtol=0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["spd", "indefinite"])
@pytest.mark.parametrize("use_metric", [False, True])
def test_steihaug_boundary_and_cauchy_decrease(seed, kind, use_metric):
    A = spd(N, seed, cond=1e3) if kind == "spd" else indefinite(N, seed)
    g = rand(N, 50 + seed)
    m = rand_metric(seed) if use_metric else None
    newton_norm = m_norm(torch.linalg.solve(A, g), m)
    radius = 0.3 * newton_norm if kind == "spd" else 0.5 + seed
    res = steihaug_cg(op(A), split(g), radius, metric=None if m is None else split(m), rtol=1e-12)
    s = tl.flatten(res.solution)
    if kind == "spd":
        assert res.status == "boundary"
    assert res.hits_boundary
    assert abs(m_norm(s, m) - radius) <= 1e-10 * radius
    assert model(A, g, s) <= model(A, g, cauchy_point(A, g, radius, m)) + 1e-12
    torch.testing.assert_close(res.residual_norm, torch.linalg.norm(g + A @ s))
    # the residual vector and the first curvature, kept without extra products
    torch.testing.assert_close(tl.flatten(res.residual), -(g + A @ s), rtol=0, atol=1e-11)
    p0 = -g if m is None else -g / m
    torch.testing.assert_close(res.initial_curvature, p0 @ A @ p0, rtol=1e-13, atol=0)
    if res.status == "negative_curvature":
        p = tl.flatten(res.negative_curvature)
        assert (p @ A @ p).item() <= 0


def test_steihaug_identity_metric_equals_euclidean_path():
    for A in (spd(N, 1, cond=100.0), indefinite(N, 2)):
        g = rand(N, 3)
        for radius in (0.1, 1.0, 100.0):
            eu = steihaug_cg(op(A), split(g), radius, rtol=1e-12)
            mi = steihaug_cg(
                op(A), split(g), radius, metric=split(torch.ones(N, dtype=DT)), rtol=1e-12
            )
            assert (eu.status, eu.iterations, eu.hits_boundary) == (
                mi.status,
                mi.iterations,
                mi.hits_boundary,
            )
            torch.testing.assert_close(
                tl.flatten(mi.solution), tl.flatten(eu.solution), atol=1e-14, rtol=0
            )


@pytest.mark.parametrize("seed", range(3))
def test_steihaug_metric_equals_transformed_euclidean_problem(seed):
    m = rand_metric(seed)
    h = m.rsqrt()
    for A in (spd(N, seed, cond=100.0), indefinite(N, seed)):
        g = rand(N, 60 + seed)
        Au, gu = h[:, None] * A * h[None, :], h * g
        for radius in (0.05, 0.7, 1e3):
            ell = steihaug_cg(op(A), split(g), radius, metric=split(m), rtol=1e-10, max_iter=4 * N)
            eu = steihaug_cg(op(Au), split(gu), radius, rtol=1e-10, max_iter=4 * N)
            assert ell.status == eu.status
            if ell.status != "converged":  # late CG iterations may differ by rounding
                assert ell.iterations == eu.iterations
            # the same iteration in exact arithmetic; rounding differs (the metric spans e^4)
            s_ell, s_eu = tl.flatten(ell.solution), h * tl.flatten(eu.solution)
            torch.testing.assert_close(s_ell, s_eu, atol=1e-10, rtol=1e-9)


def test_steihaug_first_step_negative_curvature_goes_to_boundary_downhill():
    A = torch.diag(torch.tensor([-2.0, 1.0], dtype=DT))
    g = torch.tensor([1.0, 0.0], dtype=DT)
    res = steihaug_cg(lambda v: (A @ v[0],), (g,), radius=3.0)
    assert res.status == "negative_curvature" and res.hits_boundary and res.iterations == 1
    torch.testing.assert_close(res.solution[0], torch.tensor([-3.0, 0.0], dtype=DT))


def test_steihaug_negative_curvature_picks_lower_intersection():
    """After a step, the two boundary intersections along p differ; the lower model wins."""
    checked = 0
    for seed in range(10):
        A, g = indefinite(N, seed), rand(N, seed)
        res = steihaug_cg(op(A), split(g), 2.0, rtol=1e-12)
        if res.status != "negative_curvature" or res.iterations < 2:
            continue
        s, p = tl.flatten(res.solution), tl.flatten(res.negative_curvature)
        # the other intersection of the line s + t p with the sphere
        t_other = -2 * (s @ p) / (p @ p)
        assert model(A, g, s) <= model(A, g, s + t_other * p) + 1e-12
        checked += 1
    assert checked >= 2


def test_steihaug_zero_gradient_and_check_every():
    A = indefinite(N, 0)
    res = steihaug_cg(op(A), split(torch.zeros(N, dtype=DT)), 1.0)
    assert res.status == "converged" and res.iterations == 0 and not res.hits_boundary
    g = rand(N, 1)
    for radius in (0.5, 50.0):
        a = steihaug_cg(op(spd(N, 1)), split(g), radius, rtol=1e-12)
        b = steihaug_cg(op(spd(N, 1)), split(g), radius, rtol=1e-12, check_every=3)
        assert (a.status, a.iterations) == (b.status, b.iterations)
        # host floats against tensor scalars: the same iteration, rounded differently
        torch.testing.assert_close(tl.flatten(a.solution), tl.flatten(b.solution),
                                   rtol=1e-10, atol=1e-13)


def test_steihaug_bad_inputs():
    A, g = spd(N, 0), split(rand(N, 0))
    with pytest.raises(ValueError, match="Invalid radius value: 0.0"):
        steihaug_cg(op(A), g, 0.0)
    with pytest.raises(ValueError, match="Invalid radius value: -1.0"):
        steihaug_cg(op(A), g, torch.tensor(-1.0))
    with pytest.raises(ValueError, match=r"metric has 1 tensors but there are 3"):
        steihaug_cg(op(A), g, 1.0, metric=(torch.ones(N, dtype=DT),))
    with pytest.raises(ValueError, match="Invalid check_every value: 0"):
        steihaug_cg(op(A), g, 1.0, check_every=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("check_every", [1, 7])
def test_cuda_matches_cpu(check_every):
    A, b, m = indefinite(N, 0) + 2.5 * torch.eye(N, dtype=DT), rand(N, 1), rand_metric(0)
    cpu = truncated_cg(op(A), split(b), rtol=1e-12, preconditioner=lambda r: tl.mul(r, split(m)))
    Ac = A.cuda()

    def op_cuda(vec):
        return split(Ac @ tl.flatten(vec))

    mc = tuple(t.cuda() for t in split(m))
    gpu = truncated_cg(
        op_cuda, tuple(t.cuda() for t in split(b)), rtol=1e-12, check_every=check_every,
        preconditioner=lambda r: tl.mul(r, mc),
    )  # fmt: skip
    assert (gpu.status, gpu.iterations) == (cpu.status, cpu.iterations)
    assert all(t.is_cuda for t in gpu.solution) and gpu.residual_norm.is_cuda
    torch.testing.assert_close(tl.flatten(gpu.solution).cpu(), tl.flatten(cpu.solution))
    for radius in (0.3, 100.0):
        s_cpu = steihaug_cg(op(indefinite(N, 1)), split(b), radius, metric=split(m))
        s_gpu = steihaug_cg(
            op(indefinite(N, 1).cuda()),
            tuple(t.cuda() for t in split(b)), radius, metric=mc, check_every=check_every,
        )  # fmt: skip
        assert (s_gpu.status, s_gpu.iterations) == (s_cpu.status, s_cpu.iterations)
        torch.testing.assert_close(tl.flatten(s_gpu.solution).cpu(), tl.flatten(s_cpu.solution))


def test_truncated_cg_returns_its_residual():
    A, b = spd(N, 7), rand(N, 8)
    res = truncated_cg(op(A), split(b), rtol=1e-3)
    x = tl.flatten(res.solution)
    torch.testing.assert_close(tl.flatten(res.residual), b - A @ x, rtol=0, atol=1e-12)
    assert res.initial_curvature is None


def test_sqrt_gradient_forcing():
    assert sqrt_gradient_forcing(1e-4) == pytest.approx(1e-2, rel=1e-15)
    assert sqrt_gradient_forcing(0.16) == pytest.approx(0.4, rel=1e-15)
    assert sqrt_gradient_forcing(4.0) == 0.5
    assert sqrt_gradient_forcing(4.0, eta_max=0.9) == 0.9
    assert sqrt_gradient_forcing(0.0) == 0.0
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="Invalid grad_norm value"):
            sqrt_gradient_forcing(bad)


@pytest.mark.parametrize("kind", ["interior", "boundary", "negative", "max_iter"])
@pytest.mark.parametrize("use_metric", [False, True])
def test_steihaug_host_branching_equals_masked_loop(kind, use_metric):
    # check_every=1 decides on the host in Python floats; any other value runs the masked
    # loop in 0-dim tensors. The same iteration: the same exits, iterates equal to rounding
    # (float64 here; the differences are a few units in the last place).
    A = indefinite(N, 4) if kind == "negative" else spd(N, 4, cond=100.0)
    g = split(rand(N, 5))
    metric = split(rand_metric(2)) if use_metric else None
    radius = 0.05 if kind == "boundary" else 1e3
    kw = dict(metric=metric, rtol=1e-10, max_iter=3 if kind == "max_iter" else 50)
    host = steihaug_cg(op(A), g, radius, check_every=1, **kw)
    masked = steihaug_cg(op(A), g, radius, check_every=2, **kw)
    expected = {"interior": "converged", "boundary": "boundary",
                "negative": "negative_curvature", "max_iter": "max_iter"}[kind]
    assert host.status == masked.status == expected
    assert host.iterations == masked.iterations
    assert host.hits_boundary == masked.hits_boundary
    torch.testing.assert_close(tl.flatten(host.solution), tl.flatten(masked.solution),
                               rtol=1e-10, atol=1e-13)
    # the residual after convergence is ~1e-10 |g|: compare it on the scale of |g| (~1)
    torch.testing.assert_close(tl.flatten(host.residual), tl.flatten(masked.residual),
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(host.initial_curvature, masked.initial_curvature, rtol=0, atol=0)
    torch.testing.assert_close(host.residual_norm, masked.residual_norm, rtol=0, atol=1e-10)


@pytest.mark.parametrize("check_every", [1, 3])
@pytest.mark.parametrize("use_metric", [False, True])
def test_steihaug_forcing_term(check_every, use_metric):
    # rtol may be a forcing term: a function of ||g||_{M^-1}, called once with that norm;
    # the solve is then the one with rtol fixed at its answer, and the squared norm it read
    # is returned (the trust region's Cauchy floor needs it as nu^2)
    A, g = spd(N, 3, cond=30.0), rand(N, 4)
    m = rand_metric(1) if use_metric else None
    metric = None if m is None else split(m)
    expected_nu2 = float(g @ (g if m is None else g / m))
    seen = []

    def forcing(grad_norm: float) -> float:
        seen.append(grad_norm)
        return 0.2

    res = steihaug_cg(op(A), split(g), 1e3, metric=metric, rtol=forcing, check_every=check_every)
    fixed = steihaug_cg(op(A), split(g), 1e3, metric=metric, rtol=0.2, check_every=check_every)
    assert seen == [pytest.approx(expected_nu2**0.5, rel=1e-13)]
    assert res.initial_residual_sqnorm == pytest.approx(expected_nu2, rel=1e-13)
    assert (res.status, res.iterations) == (fixed.status, fixed.iterations)
    assert 1 < res.iterations < N  # the tolerance stopped it, neither at once nor at the end
    torch.testing.assert_close(tl.flatten(res.solution), tl.flatten(fixed.solution),
                               rtol=0, atol=0)
    # the relative residual met the forcing term's tolerance, in the M^-1-norm
    r = tl.flatten(res.residual)
    r_norm = float(torch.sqrt(r @ (r if m is None else r / m)))
    assert r_norm <= 0.2 * expected_nu2**0.5 * (1 + 1e-12)
    # a fixed rtol on the masked loop reads nothing on the host
    if check_every > 1:
        assert fixed.initial_residual_sqnorm is None


def test_steihaug_forcing_term_bad_answer():
    A, g = spd(N, 0), split(rand(N, 0))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="Invalid rtol value from the forcing term"):
            steihaug_cg(op(A), g, 1.0, rtol=lambda _, bad=bad: bad)


def test_steihaug_host_boundary_roots_match_the_tensor_ones():
    # the host path's roots of a tau^2 + 2 b tau + c = 0 are _boundary_roots' arithmetic
    # on Python floats: the same float64 values, zero leading coefficient, infinities and
    # NaN included
    from secondorder.optim.krylov import _boundary_roots, _boundary_roots_host

    gen = torch.Generator().manual_seed(0)
    inf, nan = float("inf"), float("nan")
    cases = [(1.0, 0.0, 0.0), (2.0, 0.0, -1.0), (0.0, 0.0, -1.0), (0.0, 1.0, -1.0),
             (1e-300, -1e150, -1.0), (3.0, -1e-8, -1e-20), (1.0, 0.5, -inf), (1.0, -0.5, -inf),
             (inf, 1.0, -1.0), (1.0, nan, -1.0), (nan, 0.0, -1.0), (1.0, 1e200, -1e200)]
    for _ in range(200):
        a, b, c = torch.randn(3, generator=gen, dtype=DT).tolist()
        cases.append((abs(a) + 1e-3, b, -abs(c)))
    for a, b, c in cases:
        lo_t, hi_t = _boundary_roots(*(torch.tensor(x, dtype=DT) for x in (a, b, c)))
        lo, hi = _boundary_roots_host(a, b, c)
        for got, want in ((lo, float(lo_t)), (hi, float(hi_t))):
            assert got == want or (got != got and want != want), (a, b, c, got, want)
        assert lo <= 0 <= hi or (lo != lo or hi != hi)


def _host_and_masked(solve):
    return solve(check_every=1), solve(check_every=2)


def test_host_scalars_beyond_the_dtype_range_become_infinities():
    # float16: alpha = r^T z / p^T B p = 1e5 exceeds the dtype's range. torch refuses such a
    # Python float as a kernel's scalar; the host loop passes the infinity a float16 0-dim
    # tensor would hold, so it ends where the masked loop ends (review finding: it raised)
    B = torch.eye(4, dtype=torch.float16) * 1e-5
    g = (torch.ones(4, dtype=torch.float16),)
    host, masked = _host_and_masked(
        lambda **kw: steihaug_cg(lambda v: (B @ v[0],), g, 10.0, **kw))
    assert host.status == masked.status == "boundary"
    assert torch.equal(host.solution[0], masked.solution[0])
    assert torch.equal(host.solution[0], torch.full((4,), -5.0, dtype=torch.float16))
    host, masked = _host_and_masked(
        lambda **kw: truncated_cg(lambda v: (B @ v[0],), g, max_iter=2, **kw))
    assert (host.status, host.iterations) == (masked.status, masked.iterations)
    assert torch.equal(host.solution[0].isinf(), masked.solution[0].isinf())


def test_truncated_cg_host_survives_a_zero_r_z():
    # an indefinite preconditioner (outside the contract) can make r^T z = 0 with r != 0:
    # the masked loop divides to NaN; the host loop must not raise ZeroDivisionError
    A = torch.eye(2, dtype=DT)
    P = torch.tensor([1.0, -1.0], dtype=DT)
    b = (torch.ones(2, dtype=DT),)
    host, masked = _host_and_masked(lambda **kw: truncated_cg(
        lambda v: (A @ v[0],), b, preconditioner=lambda r: (P * r[0],), **kw))
    assert (host.status, host.iterations) == (masked.status, masked.iterations)
    assert bool(host.solution[0].isnan().all()) and bool(masked.solution[0].isnan().all())


def test_steihaug_host_squares_the_radius_in_the_dtype():
    # float32: radius 1e-31 squares to 0, so the region has no room: the masked loop stops
    # on the boundary with s = 0, and so must the host loop (squaring in float64 let a step
    # 20 times the radius through)
    B = torch.eye(4) * 1e12
    g = (torch.full((4,), 1e-18),)
    host, masked = _host_and_masked(
        lambda **kw: steihaug_cg(lambda v: (B @ v[0],), g, 1e-31, **kw))
    assert host.status == masked.status == "boundary"
    assert torch.equal(host.solution[0], masked.solution[0])


def test_steihaug_host_with_an_infinite_radius_matches_the_masked_loop():
    # radius inf: ||s + tau p||^2 = inf has NaN roots; Python's min/max would drop the NaN
    A = indefinite(N, 0)
    g = split(rand(N, 1))
    host, masked = _host_and_masked(
        lambda **kw: steihaug_cg(op(A), g, float("inf"), rtol=1e-12, **kw))
    assert (host.status, host.iterations) == (masked.status, masked.iterations)
    assert bool(tl.flatten(host.solution).isnan().all())
    assert bool(tl.flatten(masked.solution).isnan().all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_callback_flag_on_the_cpu():
    # a callback may return a CPU tensor for CUDA vectors (review finding: the host loop
    # stacked it with CUDA numbers)
    A, b = spd(N, 2).cuda(), split(rand(N, 3))

    def matvec(vec):
        return split(A @ tl.flatten(vec))

    res = truncated_cg(matvec, tuple(t.cuda() for t in b), rtol=1e-14,
                       callback=lambda i, x, r: torch.tensor(i >= 3))
    assert res.status == "callback" and res.iterations == 3
