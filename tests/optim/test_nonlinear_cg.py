"""NonlinearCG: scipy 'CG' oracle, beta formulas, digits MLP, state_dict, errors."""

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
from secondorder.optim import NonlinearCG
from secondorder.optim import line_search as ls
from secondorder.optim.nonlinear_cg import BETA_RULES, cg_beta


@pytest.mark.parametrize("make", [logistic_regression, rosenbrock])
def test_reaches_scipy_cg_minimizer_within_1_5x_iterations(make):
    p = make()
    ref = scipy_minimize(p, "CG", gtol=1e-9)
    x = p.param()
    opt = NonlinearCG([x], full_batch=True, tolerance_grad=1e-12, tolerance_change=1e-16)
    for _ in range(int(1.5 * ref.nit)):
        opt.step(lambda: p.loss(x))
    xs = torch.as_tensor(ref.x)
    assert abs(float(p.loss(x.detach())) - ref.fun) <= 1e-6 * max(1.0, abs(ref.fun))
    assert float((x.detach() - xs).abs().max()) <= 1e-4 * max(1.0, float(xs.abs().max()))


def test_beta_formulas_closed_form():
    g = (torch.tensor([1.0, 2.0], dtype=torch.float64),)
    go = (torch.tensor([2.0, 0.0], dtype=torch.float64),)
    d = (torch.tensor([-2.0, 1.0], dtype=torch.float64),)
    # y = (-1, 2); g.y = 3; |g|^2 = 5; |go|^2 = 4; d.y = 4; |y|^2 = 5; d.g = 0
    assert float(cg_beta("fletcher_reeves", g, go, d)) == pytest.approx(5 / 4)
    assert float(cg_beta("polak_ribiere_plus", g, go, d)) == pytest.approx(3 / 4)
    assert float(cg_beta("hestenes_stiefel", g, go, d)) == pytest.approx(3 / 4)
    assert float(cg_beta("dai_yuan", g, go, d)) == pytest.approx(5 / 4)
    assert float(cg_beta("hager_zhang", g, go, d)) == pytest.approx((3 - 2 * 5 / 4 * 0) / 4)
    g2 = (torch.tensor([1.0, 0.0], dtype=torch.float64),)
    assert float(cg_beta("polak_ribiere_plus", g2, go, d)) == 0.0  # g.y = -1: PR+ clamps


@pytest.mark.parametrize("beta", BETA_RULES)
def test_every_beta_is_exact_cg_on_a_quadratic(beta):
    # with exact line searches all formulas coincide with linear CG: n steps on n = 2 dims
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = NonlinearCG([x], beta=beta, c1=1e-10, c2=1e-8, full_batch=True, tolerance_change=1e-16,
                      powell_restart=False, max_ls_evals=50)
    for _ in range(4):
        opt.step(lambda: 0.5 * x @ (A @ x) - b @ x)
    assert torch.allclose(x.detach(), torch.linalg.solve(A, b), atol=1e-6)


def test_minibatch_mlp_digits_lowers_loss_without_nan():
    finals = digits_minibatch_losses(NonlinearCG, epochs=3, batch_size=128)
    assert max(finals) < 0.5


def test_state_dict_round_trip_in_lockstep():
    assert_state_dict_lockstep(lambda ps: NonlinearCG(ps, full_batch=True), rosenbrock(), 5, 10)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=-1.0), "Invalid lr value: -1.0"),
        (dict(beta="pr"), "Invalid beta value: 'pr'"),
        (dict(restart_every=0), "Invalid restart_every value: 0"),
        (dict(max_iter=0), "Invalid max_iter value: 0"),
        (dict(c1=0.0), "Invalid c1 value: 0.0"),
        (dict(c2=2.0), "Invalid c2 value: 2.0"),
        (dict(max_ls_evals=0), "Invalid max_ls_evals value: 0"),
        (dict(tolerance_grad=-1.0), "Invalid tolerance_grad value: -1.0"),
    ],
)
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        NonlinearCG([torch.zeros(2, requires_grad=True)], **kw)


def test_group_lrs_scale_the_searched_direction():
    # reference: PR+ on the unscaled d, strong Wolfe (c2 = 0.1) along D = diag(lr_g / lr_max) d
    # from the trial lr * min(1, 1 / |D_sd|_1) after a restart, else N&W eq. 3.60 capped by lr
    q = split_quadratic()
    u, v = q.params()
    opt = NonlinearCG([{"params": [u]}, {"params": [v], "lr": 0.25}], full_batch=True,
                      powell_restart=False)
    r = (1.0, 0.25)
    x = (q.u0.clone(), q.v0.clone())

    def f_and_g(y):
        g = q.grad(torch.cat(y))
        return q.loss(*y), (g[:4], g[4:])

    loss, g = f_and_g(x)
    d_old = g_old = loss_old = None
    for _ in range(4):
        opt.step(lambda: q.loss(u, v))
        beta = 0.0
        if d_old is not None:
            beta = max(0.0, float(tl.dot(g, tl.sub(g, g_old)) / tl.dot(g_old, g_old)))
        d = tl.neg(g) if beta == 0 else tl.add(tl.neg(g), d_old, beta)
        D = tuple(ri * di for ri, di in zip(r, d, strict=True))
        gtd = float(tl.dot(g, D))
        assert gtd < 0
        if beta == 0:  # (re)start
            l1 = float(sum(ri * gi.abs().sum() for ri, gi in zip(r, g, strict=True)))
            t0 = min(1.0, 1.0 / l1)
        else:
            t0 = min(1.0, float(1.01 * 2 * (loss - loss_old) / gtd))

        def phi(t, x=x, D=D):
            return f_and_g(tl.add(x, D, t))

        res = ls.strong_wolfe(phi, D, loss, g, step=t0, c1=1e-4, c2=0.1)
        x = tl.add(x, D, res.step)
        d_old, g_old, loss_old = d, g, loss
        loss, g = res.loss, res.grad
        assert torch.allclose(u.detach(), x[0], rtol=0, atol=1e-12)
        assert torch.allclose(v.detach(), x[1], rtol=0, atol=1e-12)
    assert float(loss) < float(q.loss(q.u0, q.v0)) - 0.5
