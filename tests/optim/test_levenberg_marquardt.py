"""Levenberg-Marquardt damped Newton-CG, [Shen]'s baseline."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from problems import (
    DenseOperator,
    assert_hyperparameter_agrees,
    assert_no_tensor_growth,
    assert_state_dict_lockstep,
    digits_subset_loss,
    logistic_regression,
    scipy_minimize,
)
from torch import nn

from secondorder.optim import LevenbergMarquardt
from secondorder.optim.levenberg_marquardt import lm_direction, update_damping

DT = torch.float64


def test_direction_solves_damped_system_and_model_value():
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=DT))
    A = (Q * torch.tensor([0.1, 0.5, 1.0, 3.0, 4.0], dtype=DT)) @ Q.T
    g = torch.randn(5, generator=gen, dtype=DT)
    res = lm_direction(DenseOperator(A), (g,), 0.3, rtol=1e-13, max_iter=50)
    d = -torch.linalg.solve(A + 0.3 * torch.eye(5, dtype=DT), g)
    torch.testing.assert_close(res.direction[0], d, rtol=0, atol=1e-10)
    assert float(res.model_decrease) == pytest.approx(float(g @ d + 0.5 * d @ A @ d), rel=1e-10)


def test_damping_rule():
    assert update_damping(2.0, 0.1) == 3.0
    assert update_damping(2.0, -math.inf) == 3.0
    assert update_damping(2.0, 0.5) == 2.0
    assert update_damping(3.0, 0.9) == pytest.approx(2.0)
    assert update_damping(1e-9, 0.9, min_damping=1e-8) == 1e-8


def test_rejects_a_step_that_raises_the_loss():
    # f = sqrt(1 + x^2) at x = 3: the Newton step -g/H = -30 overshoots to f(-27) > f(3).
    x = nn.Parameter(torch.tensor([3.0], dtype=DT))
    opt = LevenbergMarquardt([x], damping=1e-8)
    opt.step(lambda: torch.sqrt(1 + x * x).sum())
    G = opt.state["global"]
    assert G["accepted"] is False and G["rho"] < 0
    assert float(x.detach()) == 3.0
    assert G["damping"] == pytest.approx(1.5e-8)


def test_converges_to_scipy_minimizer_on_logistic_regression():
    prob = logistic_regression()
    best = torch.as_tensor(
        scipy_minimize(prob, "L-BFGS-B", gtol=1e-12, ftol=1e-16, maxiter=5000).x, dtype=DT
    )
    x = prob.param()
    opt = LevenbergMarquardt([x], max_cg_iter=100, cg_rtol=1e-10)
    for _ in range(25):
        opt.step(lambda: prob.loss(x))
    assert float((x.detach() - best).norm()) < 1e-6
    (g,) = torch.autograd.grad(prob.loss(x), x)
    assert float(g.norm()) < 1e-10  # and a stationary point to far better than scipy's


def test_state_dict_round_trip_in_lockstep():
    prob = logistic_regression()
    assert_state_dict_lockstep(lambda ps: LevenbergMarquardt(ps, max_cg_iter=5), prob, 2, 3)
    x = prob.param()
    opt = LevenbergMarquardt([x], max_cg_iter=5)
    for _ in range(2):
        opt.step(lambda: prob.loss(x))
    opt_b = LevenbergMarquardt([x.detach().clone().requires_grad_(True)], max_cg_iter=5)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt_b.state["global"]["damping"] == opt.state["global"]["damping"] != 1.0


def test_graphs_freed_no_growth_over_50_steps():
    prob = logistic_regression()
    x = prob.param()
    opt = LevenbergMarquardt([x], max_cg_iter=3)
    assert_no_tensor_growth(lambda: opt.step(lambda: prob.loss(x)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_digits_mlp_minibatches(seed):
    final = digits_subset_loss(lambda ps: LevenbergMarquardt(ps, max_cg_iter=10), seed, epochs=2)
    assert final < 1.0  # from log(10) = 2.30; measured 0.56-0.80


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(damping=0.0), "Invalid damping value: 0.0"),
        (dict(increase=1.0), "Invalid increase value: 1.0"),
        (dict(decrease=1.0), "Invalid decrease value: 1.0"),
        (dict(min_damping=-1.0), "Invalid min_damping value: -1.0"),
        (dict(max_cg_iter=0), "Invalid max_cg_iter value: 0"),
        (dict(cg_rtol=-1.0), "Invalid cg_rtol value: -1.0"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LevenbergMarquardt([nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("key, value", [("damping", 2.0), ("max_cg_iter", 7), ("increase", 2.0)])
def test_hyperparameters_must_agree_across_groups(key, value):
    assert_hyperparameter_agrees(LevenbergMarquardt, key, value, "LevenbergMarquardt")


def test_group_values_are_checked_and_used():
    with pytest.raises(ValueError, match="Invalid damping value: -1.0"):
        LevenbergMarquardt([{"params": [nn.Parameter(torch.zeros(2))], "damping": -1.0}])
    # two agreeing groups that override the default run as one group with that value
    prob = logistic_regression()
    x, y = prob.param(), prob.param()
    one = LevenbergMarquardt([x], damping=5.0, max_cg_iter=5)
    two = LevenbergMarquardt([{"params": [y], "damping": 5.0}], max_cg_iter=5)
    for _ in range(3):
        one.step(lambda: prob.loss(x))
        two.step(lambda: prob.loss(y))
        assert torch.equal(x, y)
