"""BarzilaiBorwein: Alg. 3 replayed by hand, BB1/BB2 convergence, digits MLP, errors."""

from __future__ import annotations

import pytest
import torch
from problems import (
    assert_state_dict_lockstep,
    digits_data,
    digits_minibatch_losses,
    quadratic,
    split_quadratic,
)

from secondorder.optim import BarzilaiBorwein
from secondorder.optim.barzilai_borwein import bb_step

T, BETA, LR, TAU0, TMIN, TMAX = 4, 0.5, 0.05, 0.2, 1e-3, 5.0


def _alg3_eta(ends, k):
    """Alg. 3's step of epoch k from the two previous epoch ends (x, averaged gradient)."""
    (x2, g2), (x1, g1) = ends[-2:]
    s, y = x1 - x2, g1 - g2
    e = float(s @ s / (T * (s @ y).abs()))
    return e if TMIN / (k + 1) <= e <= TMAX / (k + 1) else TAU0 / (k + 1)


def _alg3_by_hand(grad, x0, epochs, lr_at, ratio_at):
    """[Filippova] Alg. 3, literally: ``x <- x - eta ratio grad_i(x)`` with ``eta = lr_at(i)``
    in epochs 0 and 1, then :func:`_alg3_eta`. Returns the point and the epoch ends."""
    xr, ends = x0.clone(), []
    for k in range(epochs):
        eta = _alg3_eta(ends, k) if k > 1 else None
        g_avg = torch.zeros_like(x0)
        for t in range(T):
            i = k * T + t
            g = grad(xr, i)
            xr = xr - (lr_at(i) if k < 2 else eta) * ratio_at(i) * g
            g_avg = (1 - BETA) * g_avg + BETA * g
        ends.append((xr.clone(), g_avg))
    return xr, ends


def _noise(n, steps):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=gen, dtype=torch.float64) * 0.1 for _ in range(steps)]


def test_sgd_bb_matches_algorithm_3_by_hand():
    p = quadratic(n=5, cond=10.0)
    noise = _noise(5, 5 * T)
    x = p.param()
    opt = BarzilaiBorwein([x], lr=LR, epoch_length=T, beta=BETA, tau_0=TAU0, tau_min=TMIN,
                          tau_max=TMAX)
    for k in range(5 * T):
        opt.step(lambda k=k: p.loss(x) + noise[k] @ x)
    xr, ends = _alg3_by_hand(lambda x, i: p.A @ x - p.b + noise[i], p.x0, 5,
                             lambda i: LR, lambda i: 1.0)
    assert torch.allclose(x.detach(), xr, atol=1e-12)
    # the step of the next epoch, k = 5
    assert opt.step_size == pytest.approx(_alg3_eta(ends, 5), rel=1e-12)


@pytest.mark.parametrize("mode", ["bb1", "bb2"])
def test_deterministic_bb_solves_quadratic(mode):
    p = quadratic(n=20, cond=100.0)
    x = p.param()
    opt = BarzilaiBorwein([x], lr=0.01, mode=mode)
    for _ in range(150):
        opt.step(lambda: p.loss(x))
    assert torch.allclose(x.detach(), p.solution, atol=1e-6)
    # the line search's gradient is reused: one gradient per iteration plus backtracks
    assert opt.counters.gradients <= 1.3 * 150 + 1


def test_bb_steps_closed_form():
    s = (torch.tensor([1.0, 2.0], dtype=torch.float64),)
    y = (torch.tensor([2.0, 1.0], dtype=torch.float64),)
    assert float(bb_step(s, y, "bb1")) == pytest.approx(5 / 4)
    assert float(bb_step(s, y, "bb2")) == pytest.approx(4 / 5)


def test_minibatch_mlp_digits_lowers_loss_without_nan():
    steps = len(digits_data()[0]) // 64

    def make(ps):
        return BarzilaiBorwein(ps, lr=0.5, epoch_length=steps, tau_0=0.5)

    assert max(digits_minibatch_losses(make, epochs=5, batch_size=64)) < 0.5


def test_state_dict_round_trip_in_lockstep():
    assert_state_dict_lockstep(lambda ps: BarzilaiBorwein(ps, mode="bb1"), quadratic(n=5), 4, 6)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=0.0, epoch_length=3), "Invalid lr value: 0.0"),
        (dict(mode="bb3"), "Invalid mode value: 'bb3'"),
        # the defaults say what to pass (issue 8: they raised "Invalid epoch_length value: None")
        (dict(), r"mode='sgd_bb' \(the default\) needs epoch_length, the number of steps per "
                 r"epoch: pass epoch_length=len\(train_loader\).*or mode='bb1' / mode='bb2'"),
        (dict(epoch_length=0), "Invalid epoch_length value: 0"),
        (dict(epoch_length=True), "Invalid epoch_length value: True"),
        (dict(epoch_length=3, beta=0.0), "Invalid beta value: 0.0"),
        (dict(epoch_length=3, tau_0=-1.0), "Invalid tau_0 value: -1.0"),
        (dict(epoch_length=3, tau_min=2.0, tau_max=1.0),
         r"Invalid tau_max value: 1.0; it must be >= tau_min \(2.0\)"),
        (dict(mode="bb1", memory=0), "Invalid memory value: 0"),
        (dict(mode="bb1", step_bounds=(1.0, 0.5)), r"Invalid step_bounds value: \(1.0, 0.5\)"),
    ],
)
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        BarzilaiBorwein([torch.zeros(2, requires_grad=True)], **kw)


def test_sgd_bb_with_group_lrs_and_lambda_lr_matches_algorithm_3_by_hand():
    # groups (lr, lr / 4): group g steps eta * lr_g / lr_max; epochs 0-1 use the scheduled
    # lr_max, later epochs the BB step measured on the actual moves
    q = split_quadratic(n=5, k=3)
    noise = _noise(5, 5 * T)
    u, v = q.params()
    opt = BarzilaiBorwein([{"params": [u]}, {"params": [v], "lr": LR / 4}], lr=LR,
                          epoch_length=T, beta=BETA, tau_0=TAU0, tau_min=TMIN, tau_max=TMAX)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.9**i)
    for i in range(5 * T):
        opt.step(lambda i=i: q.loss(u, v) + noise[i] @ torch.cat([u, v]))
        sched.step()

    def ratio_at(i):  # lr_v / lr_u as the scheduler computes them
        r = (LR / 4 * 0.9**i) / (LR * 0.9**i)
        return torch.tensor([1.0] * 3 + [r] * 2, dtype=torch.float64)

    xr, ends = _alg3_by_hand(lambda x, i: q.grad(x) + noise[i], torch.cat([q.u0, q.v0]), 5,
                             lambda i: LR * 0.9**i, ratio_at)
    assert _alg3_eta(ends[:-1], 4) != LR * 0.9 ** (4 * T)  # the BB step is in use
    assert torch.allclose(torch.cat([u, v]).detach(), xr, rtol=0, atol=1e-12)


def test_bb_first_step_is_the_scheduled_lr():
    q = split_quadratic()
    u, v = q.params()
    opt = BarzilaiBorwein([{"params": [u]}, {"params": [v], "lr": 0.01}], mode="bb2", lr=0.04,
                          memory=1)
    for g in opt.param_groups:
        g["lr"] /= 2  # as a scheduler would, before the first step
    g0 = q.grad(torch.cat([q.u0, q.v0]))
    opt.step(lambda: q.loss(u, v))
    r = torch.tensor([1.0] * 4 + [0.25] * 2, dtype=torch.float64)
    step = torch.cat([u, v]).detach() - torch.cat([q.u0, q.v0])
    assert opt.step_size == 0.02  # the first trial is the current lr_max
    assert torch.allclose(step, -0.02 * r * g0, rtol=0, atol=1e-15)
