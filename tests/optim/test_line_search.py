"""Tests of the line searches: the conditions they promise, and torch's strong Wolfe search."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lbfgs import _strong_wolfe

from secondorder.optim.line_search import (
    backtracking,
    cubic_interpolate,
    nonmonotone_backtracking,
    strong_wolfe,
)

DT = torch.float64


def scalar_phi(fn, log=None):
    """phi for a 1-D function ``fn(t) -> (value, derivative)`` (floats)."""

    def phi(t, need_grad=True):
        if log is not None:
            log.append(t)
        f, g = fn(t)
        return torch.tensor(f, dtype=DT), ((torch.tensor([g], dtype=DT),) if need_grad else None)

    return phi


ONE_D = {
    # name: (phi(t) -> (value, slope), known minimizer)
    "quadratic": (lambda t: (2.0 * (t - 0.3) ** 2, 4.0 * (t - 0.3)), 0.3),
    "quartic": (lambda t: ((t - 2.0) ** 4, 4.0 * (t - 2.0) ** 3), 2.0),
    "exp": (lambda t: (math.exp(t) - 3.0 * t, math.exp(t) - 3.0), math.log(3.0)),
    "log-barrier": (
        lambda t: (
            (-math.log(1.0 - t) - 2 * t, 1.0 / (1.0 - t) - 2.0) if t < 1 else (math.inf, math.nan)
        ),
        0.5,
    ),
}


# ----------------------------------------------------------------------------- backtracking


@pytest.mark.parametrize("name", sorted(ONE_D))
@pytest.mark.parametrize("step", [1.0, 5.0, 30.0])
@pytest.mark.parametrize("interpolate", [True, False])
def test_backtracking_satisfies_armijo(name, step, interpolate):
    fn, _ = ONE_D[name]
    f0, s0 = fn(0.0)
    log = []
    c1 = 1e-4
    res = backtracking(scalar_phi(fn, log), f0, s0, step=step, c1=c1, interpolate=interpolate)
    assert res.success and res.evaluations == len(log)
    f_t, _ = fn(res.step)
    assert f_t <= f0 + c1 * res.step * s0
    assert res.loss.item() == f_t and res.grad is None
    # every rejected trial violated Armijo; consecutive trials shrink by [0.1, 0.5]
    for a, b in zip(log[:-1], log[1:], strict=True):
        assert fn(a)[0] > f0 + c1 * a * s0 or math.isnan(fn(a)[0])
        if interpolate:
            assert 0.1 * a - 1e-15 <= b <= 0.5 * a + 1e-15
        else:
            assert b == 0.5 * a


def test_backtracking_quadratic_interpolation_is_exact():
    fn, tstar = ONE_D["quadratic"]
    f0, s0 = fn(0.0)
    res = backtracking(scalar_phi(fn), f0, s0, step=1.0)
    assert res.success and res.evaluations == 2
    assert abs(res.step - tstar) <= 1e-15
    # accepted at once when the first trial satisfies Armijo
    res = backtracking(scalar_phi(fn), f0, s0, step=0.5)
    assert res.evaluations == 1 and res.step == 0.5


def test_backtracking_cubic_step_is_the_minimizer_of_a_cubic():
    """On a cubic phi, the second backtrack (N&W eq. 3.58) lands on its minimizer exactly."""
    fn = lambda t: (-t + 0.5 * t**3, -1.0 + 1.5 * t**2)  # noqa: E731
    tstar = math.sqrt(2.0 / 3.0)  # the local minimizer
    log = []
    res = backtracking(scalar_phi(fn, log), 0.0, -1.0, step=20.0, c1=0.5)
    # quadratic through phi(0), phi'(0), phi(20): minimizer 1/20, safeguarded up to 0.1 * 20
    assert log[:2] == [20.0, 2.0]
    assert len(log) == 3 and log[2] == pytest.approx(tstar, abs=1e-12)
    assert res.success and res.step == log[2]
    # the safeguard clips the cubic minimizer to [0.1, 0.5] of the last trial
    log = []
    backtracking(scalar_phi(fn, log), 0.0, -1.0, step=100.0, c1=0.5)
    assert log[:3] == [100.0, 10.0, 1.0]


def test_backtracking_handles_non_finite_losses():
    fn = lambda t: (math.nan, math.nan) if t > 0.2 else ((t - 0.1) ** 2, 2 * (t - 0.1))  # noqa: E731
    log = []
    res = backtracking(scalar_phi(fn, log), 0.01, -0.2, step=1.0)
    assert res.success and res.step <= 0.2 and log[:3] == [1.0, 0.5, 0.25]


def test_backtracking_returns_gradient_when_asked():
    fn, _ = ONE_D["exp"]
    res = backtracking(scalar_phi(fn), *fn(0.0), step=3.0, need_grad=True)
    assert res.success
    torch.testing.assert_close(res.grad[0], torch.tensor([fn(res.step)[1]], dtype=DT))


def test_backtracking_failure_is_reported_not_raised():
    calls = []
    # non-descent direction: no evaluation at all
    res = backtracking(scalar_phi(lambda t: (t, 1.0), calls), 0.0, 1.0)
    assert not res.success and res.step == 0.0 and res.evaluations == 0 and calls == []
    assert "not a descent direction" in res.message
    # a wrong (negative) slope on an increasing function: budget runs out, step 0 kept
    res = backtracking(scalar_phi(lambda t: (t, 1.0), calls), 0.0, -1.0, max_evals=5)
    assert not res.success and res.evaluations == 5 == len(calls)
    assert res.step == 0.0 and res.loss.item() == 0.0 and "max_evals=5" in res.message
    # the best trial below loss0 is returned when there is one
    fn = lambda t: (-1e-9 * t, -1e-9)  # noqa: E731  (tiny decrease, Armijo with c1=0.9 fails)
    res = backtracking(scalar_phi(fn), 0.0, -1.0, c1=0.9, max_evals=3, interpolate=False)
    assert not res.success and res.step == 1.0


def test_nonmonotone_accepts_against_the_reference_loss():
    fn = lambda t: (1.0 + 0.5 * t, 0.5)  # noqa: E731  # the loss increases along d
    f0 = 1.0
    mono = backtracking(scalar_phi(fn), f0, -1.0, max_evals=4)
    assert not mono.success
    res = nonmonotone_backtracking(scalar_phi(fn), 2.0, -1.0, loss0=f0)
    assert res.success and res.step == 1.0 and res.evaluations == 1
    assert fn(res.step)[0] <= 2.0 + 1e-4 * res.step * -1.0
    # with the reference equal to the loss it is the monotone search
    fq, tstar = ONE_D["quadratic"]
    a = nonmonotone_backtracking(scalar_phi(fq), fq(0.0)[0], fq(0.0)[1], loss0=fq(0.0)[0])
    b = backtracking(scalar_phi(fq), *fq(0.0))
    assert (a.step, a.evaluations) == (b.step, b.evaluations) and abs(a.step - tstar) < 1e-15
    # without loss0 it shrinks by `shrink`
    log = []
    res = nonmonotone_backtracking(scalar_phi(fq, log), 0.2, -1.2, shrink=0.25)
    assert log == [1.0, 0.25] and res.success


def test_backtracking_tensor_inputs_and_errors():
    fn, _ = ONE_D["quadratic"]
    f0, s0 = fn(0.0)
    res = backtracking(scalar_phi(fn), torch.tensor(f0, dtype=DT), torch.tensor(s0, dtype=DT))
    assert res.success and abs(res.step - 0.3) < 1e-15
    with pytest.raises(ValueError, match="Invalid c1 value: 1.5"):
        backtracking(scalar_phi(fn), f0, s0, c1=1.5)
    with pytest.raises(ValueError, match="Invalid shrink value: 1.0"):
        backtracking(scalar_phi(fn), f0, s0, shrink=1.0)
    with pytest.raises(ValueError, match="Invalid step value: -1.0"):
        backtracking(scalar_phi(fn), f0, s0, step=-1.0)
    with pytest.raises(ValueError, match="Invalid max_evals value: -3"):
        nonmonotone_backtracking(scalar_phi(fn), f0, s0, max_evals=-3)


# ----------------------------------------------------------------------------- strong Wolfe


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def quadratic(x):
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=DT)
    return 0.5 * x @ A @ x - x.sum()


def wiggly(x):  # non-convex along the line: needs zooming
    return torch.sin(3 * x).sum() + 0.1 * (x**2).sum()


PROBLEMS = {
    "rosenbrock": (rosenbrock, [-1.2, 1.0]),
    "quadratic": (quadratic, [2.0, -1.0]),
    "wiggly": (wiggly, [0.3, -0.2]),
}


def value_and_grad(fn, x):
    x = x.detach().requires_grad_(True)
    f = fn(x)
    (g,) = torch.autograd.grad(f, x)
    return f.detach(), g


def run_both(fn, x0, d, step, **kw):
    """Our strong_wolfe (on a 2-tensor split of x) and torch's, from the same point."""
    f0, g0 = value_and_grad(fn, x0)

    def obj_func(x, t, d):
        f, g = value_and_grad(fn, x + t * d)
        return float(f), g

    torch_kw = {"c1": kw.get("c1", 1e-4), "c2": kw.get("c2", 0.9)}
    torch_kw["tolerance_change"] = kw.get("tolerance_change", 1e-9)
    torch_kw["max_ls"] = kw.get("max_evals", 25)
    tf, tg, tt, tevals = _strong_wolfe(obj_func, x0, step, d, float(f0), g0, g0.dot(d), **torch_kw)

    def phi(t):
        f, g = value_and_grad(fn, x0 + t * d)
        return f, (g[:1], g[1:])

    ours = strong_wolfe(phi, (d[:1], d[1:]), f0, (g0[:1], g0[1:]), step=step, **kw)
    return ours, (float(tf), tg, float(tt), tevals), (float(f0), g0)


CASES = [
    ("rosenbrock", "neg_grad", 1.0, {}),
    ("rosenbrock", "neg_grad", 1e-3, {}),  # extrapolation, then zoom
    ("rosenbrock", "neg_grad", 1e-5, {"c2": 0.1}),
    ("rosenbrock", "newton", 1.0, {}),
    ("quadratic", "neg_grad", 1.0, {}),
    ("quadratic", "neg_grad", 1e-2, {"c2": 0.1}),  # extrapolate with cubic steps
    ("quadratic", "neg_grad", 50.0, {"c2": 0.1}),  # zoom
    ("wiggly", "neg_grad", 3.0, {"c2": 0.1}),  # zoom with insufficient progress
    ("wiggly", "neg_grad", 10.0, {"c2": 0.01}),
    ("wiggly", "neg_grad", 10.0, {"c2": 0.01, "max_evals": 2}),  # budget runs out in zoom
    ("rosenbrock", "neg_grad", 1e-6, {"max_evals": 1}),  # budget runs out bracketing
    ("wiggly", "neg_grad", 10.0, {"c1": 1e-7, "c2": 1e-6, "tolerance_change": 1e-2}),
]


def direction(fn, x0, kind):
    _, g = value_and_grad(fn, x0)
    if kind == "neg_grad":
        return -g
    H = torch.func.hessian(fn)(x0)
    return -torch.linalg.solve(H, g)


@pytest.mark.parametrize("name,kind,step,kw", CASES)
def test_strong_wolfe_matches_torch(name, kind, step, kw):
    fn, x = PROBLEMS[name]
    x0 = torch.tensor(x, dtype=DT)
    d = direction(fn, x0, kind)
    ours, (tf, tg, tt, tevals), _ = run_both(fn, x0, d, step, **kw)
    assert ours.evaluations == tevals
    assert ours.step == pytest.approx(tt, rel=1e-12, abs=1e-300)
    assert ours.loss.item() == pytest.approx(tf, rel=1e-12, abs=1e-14)
    torch.testing.assert_close(torch.cat(ours.grad), tg, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kind,step,kw", CASES)
def test_strong_wolfe_conditions_hold_on_success(name, kind, step, kw):
    fn, x = PROBLEMS[name]
    x0 = torch.tensor(x, dtype=DT)
    d = direction(fn, x0, kind)
    ours, _, (f0, g0) = run_both(fn, x0, d, step, **kw)
    c1, c2 = kw.get("c1", 1e-4), kw.get("c2", 0.9)
    slope0 = float(g0 @ d)
    f_t, g_t = value_and_grad(fn, x0 + ours.step * d)
    torch.testing.assert_close(torch.cat(ours.grad), g_t)
    if ours.success:
        assert f_t.item() <= f0 + c1 * ours.step * slope0
        assert abs(float(g_t @ d)) <= -c2 * slope0
    else:  # the budget or the bracket tolerance ran out; the best point is kept
        assert "max_evals" in ours.message or "tolerance_change" in ours.message
        assert f_t.item() <= f0


@pytest.mark.parametrize("name,kind,step,kw", CASES)
def test_strong_wolfe_start_values_change_nothing(name, kind, step, kw):
    # a caller that read phi(0) and phi'(0) passes them: the same trials and result, bit
    # for bit (max |d|, for the bracket tolerance, is then read only when zooming)
    fn, x = PROBLEMS[name]
    x0 = torch.tensor(x, dtype=DT)
    d = direction(fn, x0, kind)
    f0, g0 = value_and_grad(fn, x0)
    runs = []
    for start_values in (None, (float(f0), float(torch.dot(g0, d)))):
        trials = []

        def phi(t, trials=trials):
            trials.append(t)
            f, g = value_and_grad(fn, x0 + t * d)
            return f, (g,)

        res = strong_wolfe(phi, (d,), f0, (g0,), step=step, start_values=start_values, **kw)
        runs.append((trials, res))
    (t0, r0), (t1, r1) = runs
    assert t0 == t1
    assert (r1.step, r1.evaluations, r1.success, r1.message) == (
        r0.step, r0.evaluations, r0.success, r0.message)
    assert torch.equal(r1.loss, r0.loss) and torch.equal(r1.grad[0], r0.grad[0])


@pytest.mark.parametrize("name", sorted(ONE_D))
@pytest.mark.parametrize("step", [1.0, 30.0])
def test_backtracking_start_values_change_nothing(name, step):
    fn, _ = ONE_D[name]
    f0, s0 = fn(0.0)
    runs = []
    for start_values in (None, (f0, s0)):
        log = []
        res = backtracking(scalar_phi(fn, log), torch.tensor(f0, dtype=DT),
                           torch.tensor(s0, dtype=DT), step=step, start_values=start_values)
        runs.append((log, res))
    (l0, r0), (l1, r1) = runs
    assert l0 == l1
    assert (r1.step, r1.evaluations, r1.success) == (r0.step, r0.evaluations, r0.success)
    assert torch.equal(r1.loss, r0.loss)


def test_strong_wolfe_exercises_every_exit():
    outcomes = set()
    for name, kind, step, kw in CASES:
        fn, x = PROBLEMS[name]
        x0 = torch.tensor(x, dtype=DT)
        ours, _, _ = run_both(fn, x0, direction(fn, x0, kind), step, **kw)
        outcomes.add(ours.message.split("=")[0].split(" ")[0])
    assert outcomes == {"strong", "max_evals", "bracket"}


def test_strong_wolfe_non_descent_is_reported():
    fn, x = PROBLEMS["quadratic"]
    x0 = torch.tensor(x, dtype=DT)
    f0, g0 = value_and_grad(fn, x0)
    calls = []

    def phi(t):
        calls.append(t)
        f, g = value_and_grad(fn, x0 + t * g0)
        return f, (g,)

    res = strong_wolfe(phi, (g0,), f0, (g0,))
    assert not res.success and res.step == 0.0 and res.evaluations == 0 and calls == []
    assert "not a descent direction" in res.message and res.grad[0] is g0


def test_strong_wolfe_non_finite_trial_is_bisected():
    fn, x = PROBLEMS["quadratic"]
    x0 = torch.tensor(x, dtype=DT)
    f0, g0 = value_and_grad(fn, x0)

    def phi(t):
        if t > 1.0:
            return torch.tensor(math.nan, dtype=DT), (torch.full_like(g0, math.nan),)
        f, g = value_and_grad(fn, x0 - t * g0)
        return f, (g,)

    res = strong_wolfe(phi, (-g0,), f0, (g0,), step=4.0, c2=0.5)
    assert res.success and 0 < res.step <= 1.0 and math.isfinite(res.loss.item())


def test_cubic_interpolate_matches_torch():
    from torch.optim.lbfgs import _cubic_interpolate

    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        x1, f1, g1, x2, f2, g2 = torch.randn(6, generator=g, dtype=DT).tolist()
        ref = _cubic_interpolate(*[torch.tensor(v, dtype=DT) for v in (x1, f1, g1, x2, f2, g2)])
        assert cubic_interpolate(x1, f1, g1, x2, f2, g2) == pytest.approx(float(ref), rel=1e-14)
    # exact on a cubic: phi(t) = t^3 - 3t has its minimizer at 1
    assert cubic_interpolate(0.0, 0.0, -3.0, 2.0, 2.0, 9.0) == pytest.approx(1.0, abs=1e-15)


def test_strong_wolfe_errors():
    d = (torch.ones(2, dtype=DT),)
    phi = lambda t: (torch.tensor(0.0), d)  # noqa: E731
    with pytest.raises(ValueError, match="Invalid c1, c2 values: 0.5, 0.4"):
        strong_wolfe(phi, d, 0.0, d, c1=0.5, c2=0.4)
    with pytest.raises(ValueError, match="Invalid step value: 0.0"):
        strong_wolfe(phi, d, 0.0, d, step=0.0)
    with pytest.raises(ValueError, match="Invalid max_evals value: -1"):
        strong_wolfe(phi, d, 0.0, d, max_evals=-1)
    with pytest.raises(ValueError, match="Invalid tolerance_change value: -1"):
        strong_wolfe(phi, d, 0.0, d, tolerance_change=-1.0)
    with pytest.raises(ValueError, match=r"grad0\[0\] has shape \(3,\)"):
        strong_wolfe(phi, d, 0.0, (torch.ones(3, dtype=DT),))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_strong_wolfe_on_cuda_matches_cpu():
    fn, x = PROBLEMS["rosenbrock"]
    results = []
    for device in ("cpu", "cuda"):
        x0 = torch.tensor(x, dtype=DT, device=device)
        f0, g0 = value_and_grad(fn, x0)

        def phi(t, x0=x0, g0=g0):
            f, g = value_and_grad(fn, x0 - t * g0)
            return f, (g,)

        res = strong_wolfe(phi, (-g0,), f0, (g0,), step=1e-3)
        assert res.loss.device.type == device and res.grad[0].device.type == device
        results.append(res)
    assert (results[0].step, results[0].evaluations) == (results[1].step, results[1].evaluations)
