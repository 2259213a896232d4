"""``max_iter`` iterations in one ``step`` and the per-iteration ``callback`` (the contract
in :mod:`secondorder.optim.base`, "iterations per step"): the iterates of as many
one-iteration steps, one transaction, early end by the callback, and a later iteration's
non-finite start left for the next step to raise on."""

from __future__ import annotations

import pytest
import torch
from problems import logistic_regression, rosenbrock

from secondorder.errors import NonFiniteLossError
from secondorder.optim import LBFGS, NewtonCG, TrustRegion

MAKERS = {
    "lbfgs": lambda ps, **kw: LBFGS(ps, **kw),
    "newton_cg": lambda ps, **kw: NewtonCG(ps, **kw),
    "newton_cg_wolfe": lambda ps, **kw: NewtonCG(ps, line_search="strong_wolfe", **kw),
    "trust_region": lambda ps, **kw: TrustRegion(ps, norm="spherical", **kw),
    "trust_region_rmsprop": lambda ps, **kw: TrustRegion(ps, norm="rmsprop", radius=0.5, **kw),
}


def _path(make, problem, full_batch: bool, max_iter: int, iterations: int):
    """The iterates after each iteration, through steps of ``max_iter`` iterations (the
    callback records each one; the last step is cut to the iterations asked for), until
    ``iterations`` or a step that does not move (converged: ``tolerance_grad``)."""
    x = problem.param()
    opt = make([x], full_batch=full_batch, max_iter=max_iter)
    path = []

    def callback() -> bool:
        path.append(x.detach().clone())
        return len(path) >= iterations

    while len(path) < iterations:
        before = len(path)
        opt.step(lambda: problem.loss(x), callback=callback)
        if len(path) == before:
            break
    return path, opt


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("make_problem", [rosenbrock, logistic_regression])
@pytest.mark.parametrize("full_batch", [False, True])
def test_many_iterations_in_one_step_are_the_one_iteration_steps(name, make_problem,
                                                                 full_batch):
    # the iterates of max_iter=25 (and of 7, which splits the run over several steps) are
    # those of 25 one-iteration steps bit for bit, and the optimizer state ends the same
    if name == "lbfgs" and not full_batch:
        pytest.skip("LBFGS without full_batch evaluates its start anew at every step "
                    "(torch.optim.LBFGS's loop); the iterates then agree to rounding only")
    problem = make_problem()
    make = MAKERS[name]
    one, opt1 = _path(make, problem, full_batch, 1, 25)
    for max_iter in (25, 7):
        many, opt_k = _path(make, problem, full_batch, max_iter, 25)
        assert len(many) == len(one) >= 5
        for k, (a, b) in enumerate(zip(one, many, strict=True)):
            assert torch.equal(a, b), f"iterate {k + 1} differs with max_iter={max_iter}"
        g1, gk = opt1.state["global"], opt_k.state["global"]
        for key in ("radius", "rho", "accepted", "gnorm", "eta", "n_iter", "step_scale"):
            assert g1.get(key) == gk.get(key), key


@pytest.mark.parametrize("name", ["lbfgs", "newton_cg", "trust_region"])
def test_the_callback_ends_the_step(name):
    problem = rosenbrock()
    x = problem.param()
    opt = MAKERS[name]([x], full_batch=True, max_iter=100)
    calls = []

    def callback() -> bool:
        calls.append(x.detach().clone())
        return len(calls) == 3

    start = x.detach().clone()
    loss = opt.step(lambda: problem.loss(x), callback=callback)
    assert len(calls) == 3  # ended by the callback, not by max_iter
    assert torch.equal(calls[-1], x.detach())
    assert float(loss) == float(problem.loss(start))  # the loss at the start of the step
    # without a callback the step runs all its iterations (or stops at a tolerance)
    x2 = problem.param()
    opt2 = MAKERS[name]([x2], full_batch=True, max_iter=3)
    opt2.step(lambda: problem.loss(x2))
    assert torch.equal(x2.detach(), calls[-1])


class _NaNGradientBelow(torch.autograd.Function):
    """``0``, whose gradient is NaN where ``x[0] < c`` and 0 elsewhere (differentiable
    again, for Hessian-vector products)."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.save_for_backward(x)
        ctx.c = c
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        bad = torch.where(x[0] < ctx.c, float("nan"), 0.0)
        return grad * bad * torch.ones_like(x), None


def _nan_gradient_below(c: float):
    """A loss whose value is finite everywhere but whose gradient is NaN where
    ``x[0] < c``."""

    def loss(x: torch.Tensor) -> torch.Tensor:
        return ((x - 1.0) ** 2).sum() + _NaNGradientBelow.apply(x, c)

    return loss


@pytest.mark.parametrize("name", ["lbfgs", "newton_cg", "trust_region"])
def test_a_later_iteration_at_a_non_finite_start_ends_the_step_and_the_next_step_raises(name):
    # one iteration lands where the loss is finite but the gradient is NaN: a step of many
    # iterations stops there without raising, as the one-iteration step that landed there
    # did; the next step then raises and leaves everything as it was
    loss = _nan_gradient_below(1.5)
    x = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
    kw = {"radius": 10.0} if name == "trust_region" else {}
    opt = MAKERS[name]([x], full_batch=True, max_iter=10, **kw)
    calls = []
    opt.step(lambda: loss(x), callback=lambda: calls.append(1))
    if name == "lbfgs":
        # L-BFGS checks every landing's gradient and goes back to its last finite iterate
        assert torch.isfinite(torch.autograd.functional.jacobian(loss, x.detach())).all()
        return
    assert len(calls) == 1
    assert float(x.detach()[0]) < 1.5  # at the point with the NaN gradient
    at = x.detach().clone()
    state = {k: v for k, v in opt.state["global"].items()}
    with pytest.raises(NonFiniteLossError):
        opt.step(lambda: loss(x))
    assert torch.equal(x.detach(), at)
    assert opt.state["global"] == state


@pytest.mark.parametrize("name", ["lbfgs", "newton_cg", "trust_region"])
def test_a_non_finite_first_start_still_raises_and_undoes_the_step(name):
    loss = _nan_gradient_below(1.5)
    x = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    opt = MAKERS[name]([x], full_batch=True, max_iter=10)
    with pytest.raises(NonFiniteLossError):
        opt.step(lambda: loss(x), callback=lambda: pytest.fail("no iteration ran"))
    assert torch.equal(x.detach(), torch.tensor([1.0, 3.0], dtype=torch.float64))


@pytest.mark.parametrize("cls", [NewtonCG, TrustRegion])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_max_iter_must_be_a_positive_integer(cls, bad):
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="max_iter"):
        cls([x], max_iter=bad)
