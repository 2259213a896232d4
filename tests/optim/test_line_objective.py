"""The line objective and the start-of-step helpers the line-search optimizers share."""

from __future__ import annotations

import math

import pytest
import torch

from secondorder.optim.base import SecondOrderOptimizer
from secondorder.optim.line_objective import (
    LineObjective,
    finite_start,
    is_finite,
    max_abs,
    search,
    start_evaluation,
    versions,
)

F64 = torch.float64
A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=F64)
RHS = torch.tensor([1.0, -2.0], dtype=F64)


class Probe(SecondOrderOptimizer):
    """The optimizer shell with no step."""


def _setup(start=(0.5, 1.5)):
    w = torch.tensor(start, dtype=F64, requires_grad=True)
    return w, Probe([w], {}), (lambda: 0.5 * w @ A @ w - RHS @ w)


def _loss_and_grad(x):
    return 0.5 * x @ A @ x - RHS @ x, A @ x - RHS


def test_line_objective_evaluates_at_x0_plus_t_d():
    w, opt, closure = _setup()
    x0 = w.detach().clone()
    d = torch.tensor([-1.0, 2.0], dtype=F64)
    phi = LineObjective(opt, closure, (x0,), (d,))
    loss, grad = phi(0.25)
    f, g = _loss_and_grad(x0 + 0.25 * d)
    assert torch.allclose(loss, f, rtol=0, atol=1e-15)
    assert torch.allclose(grad[0], g, rtol=0, atol=1e-15)
    assert torch.equal(w.detach(), x0 + 0.25 * d) and phi.last_t == 0.25
    loss, grad = phi(0.5, need_grad=False)
    assert grad is None and torch.allclose(loss, _loss_and_grad(x0 + 0.5 * d)[0], rtol=0,
                                           atol=1e-15)
    assert phi.evaluations == 2 and opt.counters.loss_evals == 2
    phi.move(0.0)
    assert torch.equal(w.detach(), x0)


def test_search_leaves_the_parameters_at_the_accepted_step():
    # Along the Newton direction of the quadratic, t = 1 satisfies both Wolfe conditions.
    w, opt, closure = _setup()
    x0 = w.detach().clone()
    f0, g0 = _loss_and_grad(x0)
    d = -torch.linalg.solve(A, g0)
    phi = LineObjective(opt, closure, (x0,), (d,))
    t, loss, grad = search(phi, "strong_wolfe", f0, (g0,), g0 @ d, step=1.0)
    assert t == 1.0
    assert torch.allclose(w.detach(), torch.linalg.solve(A, RHS), rtol=0, atol=1e-14)
    assert torch.allclose(grad[0], torch.zeros(2, dtype=F64), rtol=0, atol=1e-14)
    assert torch.allclose(loss, _loss_and_grad(w.detach())[0], rtol=0, atol=1e-15)
    # a fixed step evaluates nothing
    t, loss, grad = search(phi, None, f0, (g0,), g0 @ d, step=0.5)
    assert (t, loss, grad) == (0.5, None, None) and phi.evaluations == 1
    assert torch.allclose(w.detach(), x0 + 0.5 * d, rtol=0, atol=1e-15)


def test_start_evaluation_reuses_the_cache_only_while_the_parameters_are_unchanged():
    w, opt, closure = _setup()
    cached = (torch.tensor(7.0, dtype=F64), (torch.ones(2, dtype=F64),), versions([w]))
    store = {"cache": cached}
    loss, grad = start_evaluation(opt, closure, store, reuse=True)
    assert loss is cached[0] and grad is cached[1] and "cache" not in store
    assert opt.counters.loss_evals == 0

    with torch.no_grad():
        w.add_(0.0)  # written in place: the version counter moves
    assert versions([w]) != cached[2]
    store = {"cache": cached}
    loss, grad = start_evaluation(opt, closure, store, reuse=True)
    f, g = _loss_and_grad(w.detach())
    assert torch.allclose(loss, f, rtol=0, atol=1e-15) and opt.counters.loss_evals == 1
    assert torch.allclose(grad[0], g, rtol=0, atol=1e-15) and "cache" not in store

    store = {"cache": (cached[0], cached[1], versions([w]))}
    start_evaluation(opt, closure, store, reuse=False)  # mini-batch mode: never reused
    assert opt.counters.loss_evals == 2 and "cache" not in store


def test_finite_start_rolls_back_to_the_last_checked_point():
    w, opt, _ = _setup(start=(3.0, 0.0))
    x_good = torch.tensor([0.5, 1.5], dtype=F64)

    def closure():  # not finite beyond w[0] = 2
        q = 0.5 * w @ A @ w - RHS @ w
        return torch.where(w[0] > 2, torch.tensor(math.inf, dtype=F64), q)

    resets = []
    store = {"x_good": (x_good.clone(),)}
    first, loss, grad = finite_start(opt, closure, store, False, lambda: resets.append(1))
    f, g = _loss_and_grad(x_good)
    assert math.isinf(float(first)) and resets == [1] and "x_good" not in store
    assert torch.equal(w.detach(), x_good)
    assert torch.allclose(loss, f, rtol=0, atol=1e-15)
    assert torch.allclose(grad[0], g, rtol=0, atol=1e-15)


def test_finite_start_without_a_point_to_go_back_to():
    w, opt, _ = _setup(start=(3.0, 0.0))

    def closure():
        return (w * math.inf).sum()

    first, loss, grad = finite_start(opt, closure, {}, False, lambda: pytest.fail("reset"))
    assert grad is None and first is loss and math.isnan(float(loss))
    assert torch.equal(w.detach(), torch.tensor([3.0, 0.0], dtype=F64))


def test_is_finite_and_max_abs():
    one = torch.tensor(1.0)
    assert is_finite(one, (torch.ones(3),)) and is_finite(one, None)
    assert not is_finite(torch.tensor(math.nan), None)
    assert not is_finite(one, (torch.ones(2), torch.tensor([0.0, math.inf])))
    assert max_abs((torch.tensor([1.0, -3.5]), torch.tensor(2.0))) == 3.5
    assert max_abs(()) == 0.0
