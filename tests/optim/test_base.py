"""Protocol tests of SecondOrderOptimizer through a tiny damped Newton-CG optimizer.

The optimizer below is written the way every secondorder optimizer is: ``evaluate(closure,
create_graph=True)`` for loss, gradient and a counted Hessian operator, a shared solver
(:func:`truncated_cg`), ``add_to_params``, per-parameter state and global state.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.optim.base import SecondOrderOptimizer
from secondorder.optim.krylov import truncated_cg

DT = torch.float64


class TinyNewtonCG(SecondOrderOptimizer):
    """``x += lr * (d + momentum * d_prev)`` with ``(H + damping / (1 + k) I) d = -g``.

    Stateful on purpose (per-parameter ``d_prev``, global step count ``k``) so that a lost
    state changes the iterates.
    """

    def __init__(self, params, lr=1.0, damping=0.1, momentum=0.5):
        if not lr >= 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, {"lr": lr, "damping": damping, "momentum": momentum})
        self.cg_iterations: list[int] = []

    def step(self, closure):
        ev = self.evaluate(closure, create_graph=True)
        glob = self.state.setdefault("global", {"k": 0})
        damping = self.param_groups[0]["damping"] / (1 + glob["k"])
        res = truncated_cg(
            lambda v: tl.add(ev.hessian.matvec(v), v, damping), tl.neg(ev.grads), rtol=1e-12
        )
        ev.hessian.free()
        self.cg_iterations.append(res.iterations)
        update = []
        for p, grp, d in zip(self.params(), self.group_of(), res.solution, strict=True):
            st = self.state[p]
            if "d_prev" in st:
                d = d + grp["momentum"] * st["d_prev"]
            st["d_prev"] = d.clone()
            update.append(grp["lr"] * d)
        self.add_to_params(update)
        glob["k"] += 1
        return ev.loss


def make_problem(seed=0, per_sample=False):
    """Logistic regression in float64 (convex, not quadratic)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 3, generator=g, dtype=DT)
    y = (torch.randn(20, generator=g, dtype=DT) > 0).to(DT)
    torch.manual_seed(seed)
    model = nn.Linear(3, 1).to(DT)
    reduction = "none" if per_sample else "mean"
    crit = nn.BCEWithLogitsLoss(reduction=reduction)

    def closure():
        return crit(model(x).squeeze(-1), y)

    return model, closure, x, y


def newton_direction(model, x, y, damping):
    """Dense float64 oracle: -(H + damping I)^{-1} g over (weight, bias), flattened."""
    w0, b0 = model.weight.detach(), model.bias.detach()

    def loss(flat):
        w, b = flat[:3].view(1, 3), flat[3:]
        return nn.functional.binary_cross_entropy_with_logits((x @ w.T + b).squeeze(-1), y)

    flat = torch.cat([w0.reshape(-1), b0])
    H = torch.func.hessian(loss)(flat)
    g = torch.func.grad(loss)(flat)
    return -torch.linalg.solve(H + damping * torch.eye(4, dtype=DT), g)


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_first_step_is_the_damped_newton_step():
    model, closure, x, y = make_problem()
    d = newton_direction(model, x, y, 0.1)
    before = flat_params(model)
    TinyNewtonCG(model.parameters(), lr=0.7).step(closure)
    torch.testing.assert_close(flat_params(model), before + 0.7 * d, atol=1e-10, rtol=0)


def test_param_groups_with_different_lr_act_separately():
    model, closure, x, y = make_problem()
    d = newton_direction(model, x, y, 0.1)
    before = flat_params(model)
    opt = TinyNewtonCG(
        [{"params": [model.weight], "lr": 0.25}, {"params": [model.bias], "lr": 2.0}]
    )
    opt.step(closure)
    after = flat_params(model)
    torch.testing.assert_close(after[:3], before[:3] + 0.25 * d[:3], atol=1e-10, rtol=0)
    torch.testing.assert_close(after[3:], before[3:] + 2.0 * d[3:], atol=1e-10, rtol=0)
    # lr = 0 freezes a group
    model, closure, _, _ = make_problem(1)
    bias = model.bias.detach().clone()
    TinyNewtonCG([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.0}]).step(closure)
    assert torch.equal(model.bias.detach(), bias)


def test_state_dict_round_trip_steps_in_lockstep():
    model, closure, x, y = make_problem(2)
    opt = TinyNewtonCG(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.step(closure)
    saved = copy.deepcopy(opt.state_dict())
    assert saved["state"]["global"] == {"k": 3} and saved["state"]["counters"]["loss_evals"] == 3

    model2, closure2, _, _ = make_problem(2)
    model2.load_state_dict(model.state_dict())
    opt2 = TinyNewtonCG(model2.parameters(), lr=123.0)  # the loaded groups override lr
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == 0.5
    assert opt2.counters.as_dict() == opt.counters.as_dict()

    fresh_model, fresh_closure, _, _ = make_problem(2)
    fresh_model.load_state_dict(model.state_dict())
    fresh = TinyNewtonCG(fresh_model.parameters(), lr=0.5)  # same point, state lost
    for _ in range(3):
        opt.step(closure)
        opt2.step(closure2)
        fresh.step(fresh_closure)
        assert torch.equal(flat_params(model), flat_params(model2))
    # without the state (momentum, damping schedule) the iterates differ: the test has teeth
    assert (flat_params(fresh_model) - flat_params(model)).abs().max() > 1e-6
    assert opt2.counters.as_dict() == opt.counters.as_dict()


def test_step_lr_scheduler_changes_the_step():
    model, closure, x, y = make_problem(3)
    opt = TinyNewtonCG(model.parameters(), lr=1.0, momentum=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(closure)
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5
    d = newton_direction(model, x, y, 0.1 / 2)  # damping schedule: k = 1
    before = flat_params(model)
    opt.step(closure)
    torch.testing.assert_close(flat_params(model), before + 0.5 * d, atol=1e-10, rtol=0)


def test_frozen_parameters_are_untouched_and_excluded():
    model, closure, x, y = make_problem(4)
    model.bias.requires_grad_(False)
    bias = model.bias.detach().clone()
    opt = TinyNewtonCG(model.parameters())
    assert opt.params() == (model.weight,)
    for _ in range(3):
        opt.step(closure)
    assert torch.equal(model.bias.detach(), bias)
    assert model.bias.grad is None and model.weight.grad is None  # no .grad written either


def test_counters_are_exact():
    model, closure, _, _ = make_problem(5)
    opt = TinyNewtonCG(model.parameters())
    for _ in range(4):
        opt.step(closure)
    hvps = sum(opt.cg_iterations)
    assert hvps >= 4
    assert opt.counters.as_dict() == {
        "loss_evals": 4, "gradients": 4, "hvps": hvps,
        "loss_samples": 0, "gradient_samples": 0, "hvp_samples": 0,
    }  # fmt: skip
    # samples_per_evaluation fills the sample counters for scalar closures
    opt.samples_per_evaluation = 7
    opt.step(closure)
    c = opt.counters
    assert (c.loss_samples, c.gradient_samples) == (7, 7)
    assert c.hvp_samples == 7 * opt.cg_iterations[-1]


def test_counters_with_per_sample_losses():
    model, closure, x, y = make_problem(6, per_sample=True)
    opt = TinyNewtonCG(model.parameters())
    ref_model, ref_closure, _, _ = make_problem(6)
    ref = TinyNewtonCG(ref_model.parameters())
    for _ in range(3):
        loss = opt.step(closure)
        ref_loss = ref.step(ref_closure)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-14, atol=0)  # averaged
    torch.testing.assert_close(flat_params(model), flat_params(ref_model), rtol=0, atol=1e-12)
    hvps = sum(opt.cg_iterations)
    assert opt.counters.as_dict() == {
        "loss_evals": 3, "gradients": 3, "hvps": hvps,
        "loss_samples": 60, "gradient_samples": 60, "hvp_samples": 20 * hvps,
    }  # fmt: skip


class _Box:
    """Holds a tensor saved for backward, so that the test can see whether graphs live."""

    def __init__(self, t):
        self.t = t


def test_memory_does_not_grow_and_graphs_are_freed():
    model, closure, _, _ = make_problem(7)
    boxes: weakref.WeakSet = weakref.WeakSet()

    def pack(t):
        box = _Box(t)
        boxes.add(box)
        return box

    def tracked_closure():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.t):
            return closure()

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))

    opt = TinyNewtonCG(model.parameters(), damping=1.0)
    opt.step(tracked_closure)
    gc.collect()
    assert len(boxes) == 0  # no forward graph survives step()
    after_one = live_tensors()
    for _ in range(100):
        opt.step(tracked_closure)
    assert len(boxes) == 0
    assert live_tensors() == after_one


def test_clear_errors():
    model, closure, _, _ = make_problem()
    opt = TinyNewtonCG(model.parameters())
    with pytest.raises(ValueError, match="the closure must return the loss tensor, got float"):
        opt.step(lambda: 1.0)
    with pytest.raises(ValueError, match=r"returned a tensor of shape \(2, 10\)"):
        opt.step(lambda: closure().new_ones(2, 10) * closure())
    with pytest.raises(ValueError, match="loss does not require grad"):
        opt.step(lambda: closure().detach())
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires grad"):
        opt.step(closure)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        TinyNewtonCG(model.parameters(), lr=-1)


def test_scalar_shaped_losses_are_accepted():
    """A one-element loss of any shape is the scalar loss; a 1-D one is per-sample."""
    model, closure, _, _ = make_problem(8)
    opt = TinyNewtonCG(model.parameters())
    before = opt.counters.loss_samples
    loss = opt.step(lambda: closure().reshape(1, 1))
    assert loss.shape == () and opt.counters.loss_samples == before
    opt.step(lambda: closure().reshape(1))
    assert opt.counters.loss_samples == before + 1


def test_loading_a_state_dict_copies_global_state():
    model, closure, _, _ = make_problem(4)
    opt = TinyNewtonCG(model.parameters())
    opt.step(closure)
    opt.state["global"]["buffer"] = torch.ones(2, dtype=DT)
    model2, closure2, _, _ = make_problem(4)
    opt2 = TinyNewtonCG(model2.parameters())
    opt2.load_state_dict(opt.state_dict())  # no deepcopy by the caller
    opt2.step(closure2)
    opt2.state["global"]["buffer"].add_(1.0)
    assert opt.state["global"]["k"] == 1 and opt2.state["global"]["k"] == 2
    assert torch.equal(opt.state["global"]["buffer"], torch.ones(2, dtype=DT))
    assert opt.counters.loss_evals == 1 and opt2.counters.loss_evals == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_checkpoint_loads_into_a_cuda_optimizer():
    model, closure, x, y = make_problem(5)
    opt = TinyNewtonCG(model.parameters())
    opt.step(closure)
    opt.state["global"]["buffer"] = torch.ones(2, dtype=DT)
    cuda_model = nn.Linear(3, 1).to(DT).cuda()
    cuda_model.load_state_dict(model.state_dict())
    opt2 = TinyNewtonCG(cuda_model.parameters())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state["global"]["buffer"].device.type == "cuda"
    assert all(
        s["d_prev"].device.type == "cuda"
        for k, s in opt2.state.items()
        if isinstance(k, torch.Tensor)
    )


def test_set_params_along_writes_what_set_params_then_add_to_params_write():
    """``set_params_along(x0, d, t)`` is the two writes of ``set_params(x0)`` and
    ``add_to_params(d, t)``: the same bits, grad mode restored, the parameters still leaves."""
    gen = torch.Generator().manual_seed(3)
    x0 = (torch.randn(4, 3, generator=gen, dtype=DT), torch.randn(3, generator=gen, dtype=DT))
    d = tuple(torch.randn(v.shape, generator=gen, dtype=DT) for v in x0)
    a = [torch.zeros_like(v, requires_grad=True) for v in x0]
    b = [torch.zeros_like(v, requires_grad=True) for v in x0]
    opt_a, opt_b = TinyNewtonCG(a), TinyNewtonCG(b)
    for t in (0.3, 1e-7, -2.5):
        opt_a.set_params(x0)
        opt_a.add_to_params(d, t)
        with torch.no_grad():
            opt_b.set_params_along(x0, d, t)
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p, q) and q.is_leaf and q.requires_grad
    assert torch.is_grad_enabled()
    with torch.no_grad():
        opt_b.set_params_along(x0, d, 1.0)
        assert not torch.is_grad_enabled()  # the caller's mode is put back
