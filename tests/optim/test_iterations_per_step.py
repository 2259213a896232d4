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


class _NaNBelow(torch.autograd.Function):
    """Zeros shaped like ``x``, whose derivative is NaN where ``x[0] < c`` and 0 elsewhere
    (differentiable again, for Hessian-vector products)."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.save_for_backward(x)
        ctx.c = c
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x[0] < ctx.c, float("nan"), 0.0), None


def _nan_gradient_below(c: float):
    """A loss whose value is finite everywhere but whose gradient is NaN where
    ``x[0] < c``."""

    def loss(x: torch.Tensor) -> torch.Tensor:
        return ((x - 1.0) ** 2).sum() + _NaNBelow.apply(x, c).sum()

    return loss


def _one_iteration_steps(make, loss, x0, steps, **kw):
    """Run ``steps`` one-iteration steps; return the iterates and the step that raised
    (``None``), as a plain training loop would see them."""
    x = x0.clone().requires_grad_(True)
    opt = make([x], full_batch=True, **kw)
    path = []
    for k in range(steps):
        try:
            opt.step(lambda: loss(x))
        except NonFiniteLossError:
            return path, k, x.detach().clone()
        path.append(x.detach().clone())
    return path, None, x.detach().clone()


@pytest.mark.parametrize("name", ["lbfgs", "newton_cg", "trust_region"])
def test_a_later_iteration_at_a_non_finite_start_raises_and_undoes_only_itself(name):
    # iteration 1 lands where the loss is finite but the gradient is NaN: iteration 2 starts
    # there and raises, as the second one-iteration step does; iteration 1 stands (the
    # callback saw it), and the optimizer state is that after it
    loss = _nan_gradient_below(1.5)
    x0 = torch.tensor([2.0, 3.0], dtype=torch.float64)
    kw = {"radius": 10.0} if name == "trust_region" else {}
    path, raised_at, x_end = _one_iteration_steps(MAKERS[name], loss, x0, 10, **kw)
    x = x0.clone().requires_grad_(True)
    opt = MAKERS[name]([x], full_batch=True, max_iter=10, **kw)
    seen = []
    if name == "lbfgs":
        # L-BFGS checks every landing's gradient and goes back inside the iteration: no raise
        assert raised_at is None
        opt.step(lambda: loss(x), callback=lambda: seen.append(x.detach().clone()))
        assert torch.equal(x.detach(), x_end)
        return
    assert raised_at == 1 and len(path) == 1
    with pytest.raises(NonFiniteLossError):
        opt.step(lambda: loss(x), callback=lambda: seen.append(x.detach().clone()))
    assert len(seen) == 1 and torch.equal(seen[0], path[0])
    assert torch.equal(x.detach(), path[0])  # iteration 1 stands
    state = dict(opt.state["global"])
    with pytest.raises(NonFiniteLossError):  # and the next step raises as well
        opt.step(lambda: loss(x))
    assert torch.equal(x.detach(), path[0])
    assert opt.state["global"] == state


class _NaNCurvatureBelow(torch.autograd.Function):
    """``0``, with gradient 0 everywhere, whose gradient's derivative (the Hessian products)
    is NaN where ``x[0] < c``: a finite loss and gradient with NaN curvature."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.save_for_backward(x)
        ctx.c = c
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * _NaNBelow.apply(x, ctx.c), None


@pytest.mark.parametrize("name", ["newton_cg", "trust_region"])
def test_nan_curvature_at_a_later_iteration_raises_as_its_own_step_would(name):
    # the Hessian products at a later iteration's start are watched as at a step's start
    def loss(x):
        return ((x - 1.0) ** 4).sum() + _NaNCurvatureBelow.apply(x, 1.5)

    x0 = torch.tensor([3.0, 3.0], dtype=torch.float64)
    kw = {"radius": 10.0} if name == "trust_region" else {}
    path, raised_at, _ = _one_iteration_steps(MAKERS[name], loss, x0, 30, **kw)
    assert raised_at is not None and raised_at >= 2  # the loop meets it at a later step
    x = x0.clone().requires_grad_(True)
    opt = MAKERS[name]([x], full_batch=True, max_iter=30, **kw)
    seen = []
    with pytest.raises(NonFiniteLossError):
        opt.step(lambda: loss(x), callback=lambda: seen.append(x.detach().clone()))
    assert len(seen) == raised_at
    assert all(torch.equal(a, b) for a, b in zip(seen, path, strict=True))
    assert torch.equal(x.detach(), path[-1])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("name", ["lbfgs", "newton_cg", "trust_region"])
def test_an_exception_in_the_callback_keeps_every_finished_iteration(name):
    # Ctrl-C in a long solve: the iterations done stand, as after a loop of steps
    problem = rosenbrock()
    x = problem.param()
    opt = MAKERS[name]([x], full_batch=True, max_iter=100)
    seen = []

    def callback():
        seen.append(x.detach().clone())
        if len(seen) == 5:
            raise _Stop

    with pytest.raises(_Stop):
        opt.step(lambda: problem.loss(x), callback=callback)
    assert torch.equal(x.detach(), seen[-1])
    ref, _, _ = _one_iteration_steps(MAKERS[name], problem.loss, problem.x0, 5)
    assert all(torch.equal(a, b) for a, b in zip(seen, ref, strict=True))


def test_lbfgs_callback_that_writes_the_parameters_is_not_given_a_stale_gradient():
    # a callback that projects the iterate: the next iteration (and step) evaluates anew
    problem = rosenbrock()
    x = problem.param()
    opt = LBFGS([x], full_batch=True, max_iter=20)
    calls = [0]

    def project():
        calls[0] += 1
        with torch.no_grad():
            x.clamp_(min=-1.0, max=0.5)

    opt.step(lambda: problem.loss(x), callback=project)
    assert calls[0] == 1  # the write ends the step
    projected = float(problem.loss(x.detach()))
    start_loss = opt.step(lambda: problem.loss(x), callback=project)
    # the step starts from the loss at the projected point, not the one cached before
    assert float(start_loss) == projected


@pytest.mark.parametrize("cls", [NewtonCG, TrustRegion])
def test_a_state_dict_without_max_iter_keeps_the_constructors(cls):
    x = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)
    old = cls([x]).state_dict()
    for group in old["param_groups"]:
        del group["max_iter"]  # saved before max_iter existed
    opt = cls([x], max_iter=4)
    opt.load_state_dict(old)
    calls = []
    opt.step(lambda: ((x - 1) ** 4).sum(), callback=lambda: calls.append(1))
    assert len(calls) == 4


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


@pytest.mark.parametrize("name", ["newton_cg", "trust_region"])
def test_a_callbacks_write_stands_when_a_later_iteration_is_undone(name):
    # the callback projects the iterate; the next iteration starts at a NaN gradient and is
    # undone: the projection stays, as after a training loop that projected between steps
    loss = _nan_gradient_below(0.0)
    x = torch.tensor([3.0, 3.0], dtype=torch.float64, requires_grad=True)
    kw = {"radius": 10.0} if name == "trust_region" else {}
    opt = MAKERS[name]([x], full_batch=True, max_iter=5, **kw)

    def project():
        with torch.no_grad():
            x[0] = -1.0  # where the gradient is NaN: the next iteration raises

    with pytest.raises(NonFiniteLossError):
        opt.step(lambda: loss(x), callback=project)
    assert float(x.detach()[0]) == -1.0


def test_a_user_norm_with_a_list_in_its_state_is_undone_with_the_step():
    # TrustRegion cannot vouch for a user's norm: its state is copied as a whole again
    from secondorder.optim.norms import DiagonalNorm

    class Logged(DiagonalNorm):
        def __init__(self):
            super().__init__("rmsprop")
            self.history = []

        def update(self, grad):
            super().update(grad)
            self.history.append(len(self.history))

        def state_dict(self):
            return {**super().state_dict(), "history": self.history}

        def load_state_dict(self, state):
            super().load_state_dict(state)
            self.history = state.get("history", [])

    x = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = TrustRegion([x], norm=Logged())
    assert not opt.state_containers_replaced
    opt.step(lambda: ((x - 1) ** 2).sum())
    calls = [0]

    def failing():
        calls[0] += 1
        if calls[0] == 2:  # the trial evaluation, after the norm's update
            raise RuntimeError("trial fails")
        return ((x - 1) ** 2).sum()

    with pytest.raises(RuntimeError, match="trial fails"):
        opt.step(failing)
    assert opt.state["global"]["norm"]["history"] == [0]


def test_the_state_containers_promise_is_not_inherited():
    class MyNewton(NewtonCG):
        pass

    class MyPromisingNewton(NewtonCG):
        state_containers_replaced = True

    assert NewtonCG.state_containers_replaced
    assert not MyNewton.state_containers_replaced
    assert MyPromisingNewton.state_containers_replaced
