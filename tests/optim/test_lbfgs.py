"""L-BFGS: scipy/torch oracles, safeguards, state_dict, hyperparameter errors."""

from __future__ import annotations

import pytest
import torch
from problems import (
    assert_state_dict_lockstep,
    digits_minibatch_losses,
    logistic_regression,
    rosenbrock,
    scipy_minimize,
    split_quadratic,
)

from secondorder import tensorlist as tl
from secondorder.optim import LBFGS
from secondorder.optim.quasi_newton import LBFGSMemory, _two_loop_one, two_loop

PROBLEMS = [logistic_regression, rosenbrock]


def _run(problem, n_iter, **kw):
    x = problem.param()
    opt = LBFGS([x], full_batch=True, tolerance_grad=1e-12, tolerance_change=1e-16, **kw)
    for _ in range(n_iter):
        opt.step(lambda: problem.loss(x))
    return x.detach(), opt


@pytest.mark.parametrize("make", PROBLEMS)
def test_reaches_scipy_minimizer_within_1_5x_iterations(make):
    p = make()
    ref = scipy_minimize(p, "L-BFGS-B", gtol=1e-12, ftol=1e-16, maxcor=10)
    x, opt = _run(p, int(1.5 * ref.nit))
    xs = torch.as_tensor(ref.x)
    f = float(p.loss(x))
    assert abs(f - ref.fun) <= 1e-6 * max(1.0, abs(ref.fun))
    assert float((x - xs).abs().max()) <= 1e-4 * max(1.0, float(xs.abs().max()))
    # reuse of the line search's evaluation: about one gradient per iteration
    assert opt.counters.gradients <= 1.3 * opt.state["global"]["n_iter"] + 1


def _torch_lbfgs(problem, xt):
    """``torch.optim.LBFGS`` with strong Wolfe on ``problem`` at ``xt``, and its closure."""
    # max_iter=1 per step as users call it; max_eval=26 gives torch's search the same 25
    # extra trials (torch's default max_eval = 1 would allow none).
    ref = torch.optim.LBFGS([xt], lr=1, max_iter=1, max_eval=26, history_size=10,
                            line_search_fn="strong_wolfe")

    def tclosure():
        ref.zero_grad()
        loss = problem.loss(xt)
        loss.backward()
        return loss

    return ref, tclosure


@pytest.mark.parametrize("make", PROBLEMS)
def test_matches_torch_lbfgs_iterates(make):
    p = make()
    x = p.param()
    ours = LBFGS([x], full_batch=True, history_size=10)
    xt = p.param()
    ref, tclosure = _torch_lbfgs(p, xt)
    for _ in range(15):
        ours.step(lambda: p.loss(x))
        ref.step(tclosure)
        assert torch.allclose(x.detach(), xt.detach(), rtol=0, atol=1e-8)
    assert float(p.loss(x.detach())) < float(p.loss(p.x0)) - 1e-3


def test_two_loop_equals_dense_bfgs_inverse():
    torch.manual_seed(0)
    n = 6
    a = torch.randn(n, n, dtype=torch.float64)
    A = a @ a.T + n * torch.eye(n, dtype=torch.float64)
    ss = [torch.randn(n, dtype=torch.float64) for _ in range(3)]
    ys = [A @ s for s in ss]
    gamma = float(ss[-1] @ ys[-1] / (ys[-1] @ ys[-1]))
    H = gamma * torch.eye(n, dtype=torch.float64)
    for s, y in zip(ss, ys, strict=True):
        rho = 1 / (s @ y)
        V = torch.eye(n, dtype=torch.float64) - rho * torch.outer(y, s)
        H = V.T @ H @ V + rho * torch.outer(s, s)
    g = torch.randn(n, dtype=torch.float64)
    rhos = [1 / (s @ y) for s, y in zip(ss, ys, strict=True)]
    out = two_loop((g,), [(s,) for s in ss], [(y,) for y in ys], rhos, gamma)
    assert torch.allclose(out[0], H @ g, atol=1e-12)


def _two_loop_reference(grad, s_hist, y_hist, rho_hist, gamma):
    """The two-loop as written before the one-tensor fast path (tensor-list calls, ``-a``)."""
    q = tl.clone(grad)
    alphas = []
    for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
        a = rho * tl.dot(s, q)
        for qi, yi in zip(q, y, strict=True):
            qi.addcmul_(yi, -a)
        alphas.append(a)
    for x in q:
        x.mul_(gamma)
    for s, y, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
        b = rho * tl.dot(y, q)
        for qi, si in zip(q, s, strict=True):
            qi.addcmul_(si, a - b)
    return q


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_two_loop_one_tensor_fast_path_is_bit_identical(dtype, shape):
    # the one-tensor path with tensor scalars (flat views, addcmul_ with value=-1; what a
    # GPU runs) must give the same bits as the tensor-list recursion it replaces; the CPU's
    # host-scalar path (what two_loop runs here) agrees to rounding of its float64 scalars
    torch.manual_seed(1)
    m = 6
    ss = [(torch.randn(shape, dtype=dtype),) for _ in range(m)]
    ys = [(s[0] * 2 + 0.3 * torch.randn(shape, dtype=dtype),) for s in ss]
    rhos = [1.0 / tl.dot(s, y) for s, y in zip(ss, ys, strict=True)]
    gamma = tl.dot(ss[-1], ys[-1]) / tl.dot(ys[-1], ys[-1])
    g = (torch.randn(shape, dtype=dtype),)
    out = two_loop(g, ss, ys, rhos, gamma)
    ref = _two_loop_reference(g, ss, ys, rhos, gamma)
    tensor_path = _two_loop_one(g[0], ss, ys, rhos, gamma, host_scalars=False)
    assert out[0].shape == tensor_path.shape == g[0].shape
    assert torch.equal(tensor_path, ref[0])
    host_tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert torch.allclose(out[0], ref[0], rtol=host_tol, atol=host_tol)
    # the multi-tensor path agrees too (split in two tensors: a different summation order
    # in the dots, so only to rounding)
    k = shape[-1] // 2
    split = [(x[0][..., :k].contiguous(), x[0][..., k:].contiguous()) for x in (g,)]
    cut = lambda h: [(v[0][..., :k].contiguous(), v[0][..., k:].contiguous()) for v in h]  # noqa: E731
    out2 = two_loop(split[0], cut(ss), cut(ys), rhos, gamma)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    assert torch.allclose(torch.cat(out2, -1), ref[0], rtol=tol, atol=tol)


def test_memory_skips_or_damps_bad_pairs():
    s = (torch.tensor([1.0, 0.0], dtype=torch.float64),)
    y = (torch.tensor([-1.0, 0.5], dtype=torch.float64),)
    store: dict = {}
    assert not LBFGSMemory(store, 5, curvature_rule="skip").update(s, y)
    assert len(store["lbfgs_s"]) == 0
    mem = LBFGSMemory(store, 5, curvature_rule="powell")
    assert mem.update(s, y)
    # Powell damping with B = I (gamma = 1): s^T y_damped = 0.2 s^T B s
    assert float(tl.dot(s, store["lbfgs_y"][0])) == pytest.approx(0.2)


def test_history_keeps_last_pairs():
    store: dict = {}
    mem = LBFGSMemory(store, 2)
    for k in range(1, 5):
        mem.update((torch.tensor([float(k)]),), (torch.tensor([2.0 * k]),))
    assert [float(s[0]) for s in store["lbfgs_s"]] == [3.0, 4.0]
    assert float(store["lbfgs_gamma"]) == pytest.approx(0.5)


def test_rollback_on_nonfinite_loss_keeps_iterate_finite():
    # f = sum(x^2) but NaN beyond |x| > 2: the unit step from x0 = 1.5 lands at -1.5*... ok,
    # a long first step from far out lands in the NaN region.
    x = torch.tensor([1.5, -1.0], dtype=torch.float64, requires_grad=True)

    def closure():
        f = (x**2).sum()
        return torch.where(x.abs().max() > 2, torch.full_like(f, float("nan")), f)

    opt = LBFGS([x], lr=10.0, line_search=None, full_batch=True)
    for _ in range(30):
        opt.step(closure)
        assert bool(torch.isfinite(x).all())
    assert float((x.detach() ** 2).sum()) < 1e-6


def test_restart_on_non_descent_direction():
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = LBFGS([x], line_search=None, lr=0.1)
    st = opt.state["global"]
    # a memory that makes -H g an ascent direction (negative gamma)
    st.update(lbfgs_s=((torch.tensor([1.0, 0.0], dtype=torch.float64),),),
              lbfgs_y=((torch.tensor([-1.0, 0.0], dtype=torch.float64),),),
              lbfgs_rho=(torch.tensor(-1.0, dtype=torch.float64),),
              lbfgs_gamma=torch.tensor(-1.0, dtype=torch.float64), fresh=False, step_scale=1.0,
              n_iter=1)
    opt.step(lambda: 0.5 * (x**2).sum())
    # reset: steepest descent from (1, 1) with the fresh step lr * min(1, 1/|g|_1) = 0.05
    assert torch.allclose(x.detach(), torch.tensor([0.95, 0.95], dtype=torch.float64))
    assert len(st["lbfgs_s"]) == 0 and "pending" in st  # old pair gone, new one pending


def test_multibatch_overlap_pairs_measured_on_overlap():
    p = logistic_regression()
    x = p.param()
    n = 569
    opt = LBFGS([x], line_search=None, lr=0.5)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randperm(n, generator=gen)[:200]
    for _ in range(30):
        nxt = torch.randperm(n, generator=gen)[:200]
        overlap = batch[:100]
        nxt = torch.cat([overlap, nxt[:100]])
        opt.step(lambda b=batch: p.per_sample(x)[b],
                 overlap_closure=lambda o=overlap: p.per_sample(x)[o])
        batch = nxt
    assert float(p.loss(x.detach())) < 0.15
    # two gradients on the overlap per step, one on the batch
    assert opt.counters.gradients == 90
    assert opt.counters.gradient_samples == 30 * 200 + 60 * 100


def test_minibatch_mlp_digits_lowers_loss_without_nan():
    finals = digits_minibatch_losses(lambda ps: LBFGS(ps, lr=1.0), epochs=3, batch_size=128)
    assert max(finals) < 0.3


def test_state_dict_round_trip_in_lockstep():
    assert_state_dict_lockstep(lambda ps: LBFGS(ps, full_batch=True), rosenbrock(), 5, 10)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=0.0), "Invalid lr value: 0.0"),
        (dict(history_size=0), "Invalid history_size value: 0"),
        (dict(line_search="wolfe"), "Invalid line_search value: 'wolfe'"),
        (dict(max_iter=0), "Invalid max_iter value: 0"),
        (dict(tolerance_grad=-1.0), "Invalid tolerance_grad value: -1.0"),
        (dict(tolerance_change=-1.0), "Invalid tolerance_change value: -1.0"),
        (dict(c1=1.5), "Invalid c1 value: 1.5"),
        (dict(c2=1e-5), "Invalid c2 value: 1e-05"),
        (dict(max_ls_evals=0), "Invalid max_ls_evals value: 0"),
        (dict(curvature_eps=-1.0), "Invalid curvature_eps value: -1.0"),
        (dict(curvature_rule="clip"), "Invalid curvature_rule value: 'clip'"),
    ],
)
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        LBFGS([torch.zeros(2, requires_grad=True)], **kw)


def test_torch_lbfgs_nan_where_ours_stays_finite_and_converges():
    # log(cosh(x)) from x0 = 3: secant steps overshoot ever further (curvature decays),
    # cosh overflows and the gradient sinh/cosh = inf/inf is NaN.
    def f(x):
        return torch.log(torch.cosh(x)).sum()

    xt = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    ref = torch.optim.LBFGS([xt], lr=1, max_iter=1)

    def tclosure():
        ref.zero_grad()
        loss = f(xt)
        loss.backward()
        return loss

    for _ in range(30):
        ref.step(tclosure)
    assert bool(torch.isnan(xt).all())

    x = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    fixed = LBFGS([x], lr=1, line_search=None, full_batch=True)
    for _ in range(30):
        fixed.step(lambda: f(x))
        assert bool(torch.isfinite(x).all())  # rolled back whenever f or g overflowed
    z = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    wolfe = LBFGS([z], full_batch=True)
    for _ in range(30):
        wolfe.step(lambda: f(z))
    assert abs(float(z.detach())) < 1e-4


def _dense_lbfgs_fixed_step(q, lrs_per_step, m=10):
    """Reference: line_search=None with per-group lr, the BFGS inverse built densely.

    ``d = -H g`` (N&W eq. 7.19 from the stored pairs, ``H_0 = s^T y / y^T y I``), each
    group moves ``t (lr_g / lr_max) d_g`` with ``t = lr_max`` (times ``min(1, 1/|D|_1)``
    at the first step); a pair is kept when ``s^T y > 1e-8 |s| |y|``.
    """
    n, k = q.A.shape[0], q.k
    eye = torch.eye(n, dtype=torch.float64)
    x = torch.cat([q.u0, q.v0])
    pairs, prev, fresh, out = [], None, True, []
    for lr_u, lr_v in lrs_per_step:
        g = q.grad(x)
        if prev is not None:
            s, y = prev[0], g - prev[1]
            if s @ y > 1e-8 * s.norm() * y.norm():
                pairs = (pairs + [(s, y)])[-m:]
        lr = max(lr_u, lr_v)
        r = torch.tensor([lr_u / lr] * k + [lr_v / lr] * (n - k), dtype=torch.float64)
        H = eye
        if pairs:
            s, y = pairs[-1]
            H = (s @ y) / (y @ y) * eye
        for s, y in pairs:
            rho = 1 / (s @ y)
            V = eye - rho * torch.outer(y, s)
            H = V.T @ H @ V + rho * torch.outer(s, s)
        d = -r * (H @ g)
        if not g @ d < 0:
            pairs, fresh, d = [], True, -r * g
        t = lr * min(1.0, 1.0 / float((r * g).abs().sum())) if fresh else lr
        prev, fresh = (t * d, g), False
        x = x + t * d
        out.append(x.clone())
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_group_lrs_and_step_lr_scale_the_fixed_step_exactly(gamma):
    q = split_quadratic()
    u, v = q.params()
    opt = LBFGS([{"params": [u], "lr": 0.5}, {"params": [v], "lr": 0.125}], line_search=None)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=gamma)
    lrs = [(0.5 * gamma ** (i // 2), 0.125 * gamma ** (i // 2)) for i in range(10)]
    for i, expected in enumerate(_dense_lbfgs_fixed_step(q, lrs)):
        assert [g["lr"] for g in opt.param_groups] == list(lrs[i])
        opt.step(lambda: q.loss(u, v))
        sched.step()
        assert torch.allclose(torch.cat([u, v]).detach(), expected, rtol=0, atol=1e-12)
    assert float(q.loss(u.detach(), v.detach())) < float(q.loss(q.u0, q.v0)) - 0.5


def test_step_lr_acts_as_on_torch_lbfgs():
    p = rosenbrock()
    x, xt = p.param(), p.param()
    ours = LBFGS([x], full_batch=True, history_size=10)  # _torch_lbfgs keeps 10 pairs
    ref, tclosure = _torch_lbfgs(p, xt)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (ours, ref)]
    for _ in range(12):
        ours.step(lambda: p.loss(x))
        ref.step(tclosure)
        for s in scheds:
            s.step()
        assert torch.allclose(x.detach(), xt.detach(), rtol=0, atol=1e-8)
    assert ours.param_groups[0]["lr"] == 1 / 16


@pytest.mark.parametrize(("norm", "step"), [("l1", 1.0 / 40.0), ("l2", 0.5)])
def test_first_step_norm_sets_the_first_trial(norm, step):
    # f = |x|^2 / 2 at x = 0.1 (400 entries): g = x, |g|_1 = 40, |g|_2 = 2, so the first
    # fixed step is lr * min(1, 1/|g|) = 1/40 (torch's L1 rule) or 1/2 (scipy's L2 rule).
    x = torch.full((400,), 0.1, dtype=torch.float64, requires_grad=True)
    opt = LBFGS([x], line_search=None, first_step_norm=norm)
    opt.step(lambda: 0.5 * (x * x).sum())
    expected = torch.full((400,), 0.1 * (1 - step), dtype=torch.float64)
    torch.testing.assert_close(x.detach(), expected, rtol=1e-12, atol=0)


def test_first_step_norm_rejects_unknown_names():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="first_step_norm.*'linf'"):
        LBFGS([x], first_step_norm="linf")


class _NaNGradientNearZero(torch.autograd.Function):
    """Identity whose backward is NaN where ``max |x| < 0.5`` (finite loss, NaN gradient)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.where(x.abs().max() < 0.5, torch.full_like(g, float("nan")), g)


def test_a_landing_point_with_a_nan_gradient_is_undone_inside_the_step():
    """The line search accepts a point on its loss (Armijo); its gradient is NaN: the
    parameters go back to the start of the iteration, the memory is reset and the step scale
    halved (the landing check, read together with max |g|, max |s| and the loss change)."""
    x = torch.tensor([1.5, -1.0], dtype=torch.float64, requires_grad=True)

    def closure():
        return (_NaNGradientNearZero.apply(x) ** 2).sum()

    opt = LBFGS([x], lr=10.0, line_search="armijo", max_iter=1)
    opt.step(closure)
    st = opt.state["global"]
    assert torch.equal(x.detach(), torch.tensor([1.5, -1.0], dtype=torch.float64))
    assert st["step_scale"] == 0.5 and len(st["lbfgs_s"]) == 0


@pytest.mark.parametrize("line_search", ["strong_wolfe", "armijo"])
def test_full_batch_start_floats_are_those_of_the_cached_evaluation(line_search):
    # a full-batch step leaves float(loss) and max |g| of the evaluation the next step
    # starts from (no read there); after a landing with a NaN gradient is undone they must be
    # the start's again, not the landing's
    x = torch.tensor([1.5, -1.0], dtype=torch.float64, requires_grad=True)

    def closure():
        return (_NaNGradientNearZero.apply(x) ** 2).sum()

    opt = LBFGS([x], lr=10.0, line_search=line_search, full_batch=True, max_iter=3)
    st = opt.state["global"]
    seen_rollback = False
    for _ in range(6):
        before = st.get("step_scale", 1.0)
        opt.step(closure)
        seen_rollback |= st["step_scale"] < before
        if "cache_floats" in st:
            loss, g, _ = st["cache"]
            assert st["cache_floats"][0] is loss
            assert st["cache_floats"][1] == float(loss)
            assert st["cache_floats"][2] == float(g[0].abs().max())
    # Armijo accepts the NaN-gradient landing on its loss, and the step undoes it; the strong
    # Wolfe search treats the NaN slope as an infinite loss and never lands there
    assert seen_rollback == (line_search == "armijo")


def test_two_loop_host_path_in_float16_beyond_range():
    # float16 on the CPU: rho = 2500 and q = 1000 give a coefficient beyond float16's range;
    # the host path must give the tensor path's infinities/NaN, not raise (review finding),
    # so that LBFGS sees a non-descent direction and restarts from steepest descent
    dt = torch.float16
    s = (torch.full((4,), 1e-2, dtype=dt),)
    y = (torch.full((4,), 1e-2, dtype=dt),)
    sy = torch.dot(s[0], y[0])
    rho, gamma = 1.0 / sy, sy / torch.dot(y[0], y[0])
    g = (torch.full((4,), 1000.0, dtype=dt),)
    host = two_loop(g, [s], [y], [rho], gamma)[0]
    tensor_path = _two_loop_one(g[0], [s], [y], [rho], gamma, host_scalars=False)
    assert torch.equal(host.isnan(), tensor_path.isnan()) and bool(host.isnan().all())
