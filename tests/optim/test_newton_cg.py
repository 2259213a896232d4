"""NewtonCG: scipy 'Newton-CG' oracle, one-step quadratic, noLS, sub-sampling, errors."""

from __future__ import annotations

import pytest
import torch
from problems import (
    assert_state_dict_lockstep,
    digits_minibatch_losses,
    logistic_regression,
    quadratic,
    rosenbrock,
    scipy_minimize,
    split_quadratic,
)

from secondorder.optim import NewtonCG, TrustRegion
from secondorder.optim.newton_cg import eisenstat_walker


@pytest.mark.parametrize("make", [logistic_regression, rosenbrock])
@pytest.mark.parametrize("search", ["armijo", "strong_wolfe"])
def test_reaches_scipy_newton_cg_minimizer_within_1_5x_iterations(make, search):
    p = make()
    ref = scipy_minimize(p, "Newton-CG", xtol=1e-12)
    x = p.param()
    opt = NewtonCG([x], line_search=search, tolerance_grad=1e-12)
    for _ in range(int(1.5 * ref.nit)):
        opt.step(lambda: p.loss(x))
    xs = torch.as_tensor(ref.x)
    assert abs(float(p.loss(x.detach())) - ref.fun) <= 1e-6 * max(1.0, abs(ref.fun))
    assert float((x.detach() - xs).abs().max()) <= 1e-4 * max(1.0, float(xs.abs().max()))


def test_quadratic_one_step_with_exact_cg():
    p = quadratic(n=20, cond=100.0)
    x = p.param()
    opt = NewtonCG([x], forcing=1e-12, max_cg_iter=100)
    opt.step(lambda: p.loss(x))
    assert torch.allclose(x.detach(), p.solution, atol=1e-9)


def test_no_line_search_is_the_fixed_step():
    p = quadratic(n=10, cond=10.0)
    x = p.param()
    opt = NewtonCG([x], lr=0.3, line_search=None, forcing=1e-12, max_cg_iter=50)
    opt.step(lambda: p.loss(x))
    g0 = p.A @ p.x0 - p.b
    expected = p.x0 - 0.3 * torch.linalg.solve(p.A, g0)
    assert torch.allclose(x.detach(), expected, atol=1e-10)
    assert opt.counters.loss_evals == 1  # no line search: one evaluation per step


def test_negative_curvature_at_first_cg_iteration_gives_descent():
    # f = -x^2/2 + y^2: the Hessian is indefinite along the gradient direction at (1, 0)
    x = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = NewtonCG([x], line_search="armijo")
    loss0 = float(-0.5 * x[0].detach() ** 2 + x[1].detach() ** 2)
    opt.step(lambda: -0.5 * x[0] ** 2 + x[1] ** 2)
    assert opt.state["global"]["cg_status"] == "negative_curvature"
    assert float(-0.5 * x[0].detach() ** 2 + x[1].detach() ** 2) < loss0


def test_hessian_subsampling_counts_and_converges():
    p = logistic_regression()
    x = p.param()
    opt = NewtonCG([x], hessian_fraction=0.1, generator=torch.Generator().manual_seed(0))
    for _ in range(15):
        opt.step(lambda: p.per_sample(x))
    ref = scipy_minimize(p, "Newton-CG", xtol=1e-12)
    assert abs(float(p.loss(x.detach())) - ref.fun) <= 1e-5 * ref.fun  # linear rate
    c = opt.counters
    assert c.hvp_samples == c.hvps * 57  # round(0.1 * 569) samples per product
    assert c.gradient_samples == 15 * (569 + 57)


def test_hessian_fraction_needs_per_sample_losses():
    p = logistic_regression()
    x = p.param()
    opt = NewtonCG([x], hessian_fraction=0.5)
    with pytest.raises(ValueError, match="per-sample losses"):
        opt.step(lambda: p.loss(x))


def test_eisenstat_walker_choice_2():
    assert eisenstat_walker(1.0, None, None) == 0.5
    assert eisenstat_walker(0.1, 1.0, 0.3) == pytest.approx(0.9 * 0.01)
    # safeguard: 0.9 * 0.5^2 = 0.225 > 0.1 keeps eta from dropping too fast
    assert eisenstat_walker(0.01, 1.0, 0.5) == pytest.approx(0.225)


def test_default_forcing_is_sqrt_gradient_and_bounds_the_cg_residual():
    # min(0.5, sqrt(|g|)): 0.5 at the start of a badly scaled quadratic (|g| >> 1), and the
    # CG solve stops as soon as |r| <= eta |g| -- fewer products than the exact solve.
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    A = q @ torch.diag(torch.logspace(0, 3, 40, dtype=torch.float64)) @ q.T
    b = torch.randn(40, dtype=torch.float64) * 10
    runs = {}
    for forcing in ("sqrt_gradient", 1e-10):
        x = torch.zeros(40, dtype=torch.float64, requires_grad=True)
        opt = NewtonCG([x], forcing=forcing) if forcing != "sqrt_gradient" else NewtonCG([x])
        opt.step(lambda: 0.5 * x @ A @ x - b @ x)  # noqa: B023
        runs[forcing] = opt
    st = runs["sqrt_gradient"].state["global"]
    assert st["eta"] == 0.5 and st["gnorm"] > 1
    assert st["cg_iterations"] < runs[1e-10].state["global"]["cg_iterations"]
    assert runs["sqrt_gradient"].counters.hvps == st["cg_iterations"]


def test_minibatch_mlp_digits_lowers_loss_without_nan():
    finals = digits_minibatch_losses(lambda ps: NewtonCG(ps, max_cg_iter=10), 2, 128)
    assert max(finals) < 0.3


def test_state_dict_round_trip_in_lockstep():
    assert_state_dict_lockstep(NewtonCG, rosenbrock(), 3, 5)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=0.0), "Invalid lr value: 0.0"),
        (dict(line_search="wolfe"), "Invalid line_search value: 'wolfe'"),
        (dict(max_cg_iter=0), "Invalid max_cg_iter value: 0"),
        (dict(forcing="ew"), "Invalid forcing value: 'ew'"),
        (dict(forcing=1.5), "Invalid forcing value: 1.5"),
        (dict(hessian_fraction=0.0), "Invalid hessian_fraction value: 0.0"),
        (dict(c1=1.0), "Invalid c1 value: 1.0"),
        (dict(max_ls_evals=0), "Invalid max_ls_evals value: 0"),
    ],
)
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        NewtonCG([torch.zeros(2, requires_grad=True)], **kw)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_group_lrs_and_step_lr_scale_the_fixed_newton_step_exactly(gamma):
    # line_search=None: group g moves lr_g p_g with p = -A^{-1} g (the lr read at each step)
    q = split_quadratic()
    u, v = q.params()
    opt = NewtonCG([{"params": [u], "lr": 0.8}, {"params": [v], "lr": 0.2}], line_search=None,
                   forcing=1e-12, max_cg_iter=50)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma)
    x = torch.cat([q.u0, q.v0])
    for i in range(4):
        opt.step(lambda: q.loss(u, v))
        sched.step()
        lr = torch.tensor([0.8] * 4 + [0.2] * 2, dtype=torch.float64) * gamma**i
        p = -torch.linalg.solve(q.A, q.grad(x))
        assert float(q.grad(x) @ (lr * p)) < 0  # the Newton branch, not the safeguard
        x = x + lr * p
        assert torch.allclose(torch.cat([u, v]).detach(), x, rtol=0, atol=1e-10)
    assert opt.counters.loss_evals == 4


@pytest.mark.parametrize("make", [rosenbrock, logistic_regression])
@pytest.mark.parametrize("line_search", ["armijo", "strong_wolfe"])
def test_full_batch_starts_from_the_accepted_trial_and_keeps_the_iterates(make, line_search):
    # full_batch=True evaluates the line search's trials with their Hessian graph and
    # starts the next step from the accepted one: the same iterates bit for bit, one
    # closure call less per step, and a fresh evaluation once the parameters are written
    p = make()
    runs = {}
    for full_batch in (False, True):
        x = p.param()
        opt = NewtonCG([x], line_search=line_search, full_batch=full_batch)
        calls = [0]

        def closure(x=x, calls=calls):
            calls[0] += 1
            return p.loss(x)

        path, per_step = [], []
        for k in range(12):
            if k == 6:  # an in-place write between steps: the kept evaluation is stale
                with torch.no_grad():
                    x.mul_(1.0)
            before = calls[0]
            opt.step(closure)
            per_step.append(calls[0] - before)
            path.append(x.detach().clone())
        runs[full_batch] = (path, per_step)
    (path0, calls0), (path1, calls1) = runs[False], runs[True]
    assert all(torch.equal(a, b) for a, b in zip(path0, path1, strict=True))
    # a step after one that searched (more than its start evaluation) starts from the kept
    # trial, except after the write; a converged step (max |g| <= tolerance) searches not
    reused = [k > 0 and k != 6 and calls0[k - 1] > 1 for k in range(12)]
    assert calls1 == [c - r for c, r in zip(calls0, reused, strict=True)]
    assert sum(reused) >= 4
    assert float(p.loss(path1[-1])) < float(p.loss(p.x0)) - 1e-2


def test_full_batch_is_off_without_a_line_search_and_survives_deepcopy():
    import copy

    p = rosenbrock()
    x = p.param()
    fixed = NewtonCG([x], line_search=None, lr=0.5, full_batch=True)
    fixed.step(lambda: p.loss(x))
    assert fixed._kept_evaluation is None  # a fixed step evaluates nowhere: nothing kept
    y = p.param()
    opt = NewtonCG([y], full_batch=True)
    opt.step(lambda: p.loss(y))
    assert opt._kept_evaluation is not None
    twin = copy.deepcopy(opt)
    assert twin._kept_evaluation is None  # a copy starts with a fresh evaluation
    with pytest.raises(ValueError, match="Invalid full_batch value"):
        NewtonCG([y], full_batch="yes")


def test_full_batch_drops_a_non_finite_trial():
    # the trial's loss is NaN beyond a threshold: the line search backs off; an evaluation
    # at a non-finite point is never the next step's start
    x = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)

    def closure():
        loss = ((x - 1.0) ** 4).sum() + (x**2).sum()
        return torch.where(x.abs().max() > 3.5, torch.tensor(float("nan"), dtype=x.dtype), loss)

    ref = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)

    def ref_closure():
        loss = ((ref - 1.0) ** 4).sum() + (ref**2).sum()
        return torch.where(ref.abs().max() > 3.5, torch.tensor(float("nan"), dtype=x.dtype),
                           loss)

    opt, plain = NewtonCG([x], lr=10.0, full_batch=True), NewtonCG([ref], lr=10.0)
    for _ in range(6):
        opt.step(closure)
        plain.step(ref_closure)
        assert torch.equal(x.detach(), ref.detach())
        kept = opt._kept_evaluation
        assert kept is None or bool(torch.isfinite(kept[0].loss))
    assert float(closure().detach()) < 2.0


@pytest.mark.parametrize("make", [lambda ps: NewtonCG(ps, full_batch=True),
                                  lambda ps: TrustRegion(ps, norm="spherical", full_batch=True)])
def test_a_rolled_back_step_keeps_no_evaluation(make):
    # A finite loss and gradient but a NaN Hessian product at the start: the step searches,
    # may keep its trial's evaluation, and is then undone by the step transaction. The
    # kept graph must go with it (it belongs to the undone step), not wait for the next.
    from secondorder.errors import NonFiniteLossError

    x = torch.tensor([0.0, 3.0], dtype=torch.float64, requires_grad=True)
    opt = make([x])

    def closure():
        return x[0].abs() ** 1.5 + (x[1] - 1.0) ** 2  # d2/dx0^2 is infinite at 0

    with pytest.raises(NonFiniteLossError):
        opt.step(closure)
    assert opt._kept_evaluation is None
    assert torch.equal(x.detach(), torch.tensor([0.0, 3.0], dtype=torch.float64))
