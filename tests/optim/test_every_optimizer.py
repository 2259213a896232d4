"""Rules every optimizer exported by :mod:`secondorder.optim` obeys, tested on each of them.

* **Non-finite values** (the transaction of :mod:`secondorder.optim.base`): a NaN/Inf loss
  or gradient at the point a step starts from, or a NaN Hessian-vector product there,
  makes the step raise :class:`NonFiniteLossError` with the parameters and the state (cost
  counters aside) bit-identical to before it, and the optimizer then goes on exactly as one
  that never saw the fault.
* **Low precision**: float16 / bfloat16 parameters train about as well as float32 ones.
* **state_dict** holds plain values only: ``torch.save`` / ``torch.load`` with the default
  ``weights_only=True`` round-trips it, and a fresh optimizer loaded from it steps in
  lockstep with the original.

A new optimizer exported from :mod:`secondorder.optim` must be added to ``FACTORIES``
(:func:`test_every_exported_optimizer_is_tested` fails otherwise).
"""

from __future__ import annotations

import copy
import gc
import io
import math
import weakref
from collections.abc import Callable

import pytest
import torch
from problems import digits_data, digits_mlp
from torch import Tensor

import secondorder.optim as so
from secondorder.curvature.operators import CurvatureOperator
from secondorder.errors import NonFiniteLossError
from secondorder.optim import base

DT = torch.float64
TARGET = torch.tensor([1.0, 2.0, 3.0], dtype=DT)

# Constructors with the defaults, except where a default needs an extra closure
# (Hessian-free's GGN and Fisher preconditioner) or a seed makes runs repeatable.
FACTORIES: dict[str, Callable[[list[Tensor]], so.SecondOrderOptimizer]] = {
    "AdaHessian": lambda p: so.AdaHessian(p, lr=0.1, generator=torch.Generator().manual_seed(0)),
    "AdaptiveCubic": lambda p: so.AdaptiveCubic(p),
    "BarzilaiBorwein": lambda p: so.BarzilaiBorwein(p, epoch_length=2),  # (no default: why)
    "HessianFree": lambda p: so.HessianFree(p, curvature="hessian", preconditioner=False),
    "LBFGS": lambda p: so.LBFGS(p),
    "LSCG": lambda p: so.LSCG(p),
    "LevenbergMarquardt": lambda p: so.LevenbergMarquardt(p),
    "NewtonCG": lambda p: so.NewtonCG(p),
    "NewtonKrylov": lambda p: so.NewtonKrylov(p),
    "NonlinearCG": lambda p: so.NonlinearCG(p),
    "TrustRegion": lambda p: so.TrustRegion(p),
}
NAMES = sorted(FACTORIES)


def exported_optimizers() -> set[str]:
    return {
        name
        for name in so.__all__
        if isinstance(getattr(so, name), type)
        and issubclass(getattr(so, name), so.SecondOrderOptimizer)
        and getattr(so, name) is not so.SecondOrderOptimizer
    }


def test_every_exported_optimizer_is_tested():
    assert exported_optimizers() == set(FACTORIES)


def loss_of(w: Tensor) -> Tensor:
    """A smooth convex loss, not quadratic (every method takes several steps)."""
    return ((w - TARGET) ** 2).sum() + 0.1 * (w**4).sum()


class NaNCurvature(torch.autograd.Function):
    """``sum(w^2)`` with a finite gradient ``2 w`` whose derivative is NaN.

    The backward multiplies by ``1 + 0 * sqrt(w - w)`` (value 1); differentiating it again
    gives ``0 * inf``: every Hessian-vector product through it is NaN, the loss and the
    gradient are not.
    """

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return (w * w).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return grad * 2 * w * (1 + 0 * torch.sqrt(w - w.detach()))


def test_nan_curvature_poisons_only_the_hessian_vector_product():
    w = torch.tensor([0.5, -1.0, 2.0], dtype=DT, requires_grad=True)
    loss = loss_of(w) + 0 * NaNCurvature.apply(w)
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    (hv,) = torch.autograd.grad(g, w, torch.ones_like(w))
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(g).all())
    assert bool(torch.isnan(hv).all())


class FaultyClosure:
    """``loss_of(w)``, with a fault injected at a chosen step.

    ``fault`` is ``"nan"`` / ``"inf"`` (the first closure call of step ``at_step`` returns
    a non-finite loss; at step 1 that is the very first call) or ``"hvp"`` (every call of
    step ``at_step`` carries a NaN Hessian-vector product, loss and gradient unchanged).
    """

    def __init__(self, w: Tensor, fault: str, at_step: int):
        self.w, self.fault, self.at_step = w, fault, at_step
        self.step = 0
        self.calls_in_step = 0

    def begin_step(self) -> None:
        self.step += 1
        self.calls_in_step = 0

    def __call__(self) -> Tensor:
        self.calls_in_step += 1
        loss = loss_of(self.w)
        if self.step != self.at_step:
            return loss
        if self.fault == "hvp":
            return loss + 0 * NaNCurvature.apply(self.w)
        if self.calls_in_step == 1:
            return loss * (math.nan if self.fault == "nan" else math.inf)
        return loss


def state_snapshot(opt: so.SecondOrderOptimizer) -> list:
    """A deep copy of the state without the cost counters; parameters keyed by position."""
    index = {id(p): i for i, p in enumerate(opt.all_params())}
    items = [
        (index[id(k)] if isinstance(k, Tensor) else k, copy.deepcopy(v))
        for k, v in opt.state.items()
        if k != "counters"
    ]
    return sorted(items, key=lambda kv: str(kv[0]))


def assert_same(a, b, path: str = "state") -> None:
    """Bit-identical nested values (tensors by ``torch.equal``, NaN equal to NaN)."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b) or bool(
            (torch.isnan(a) == torch.isnan(b)).all() & ((a == b) | torch.isnan(a)).all()
        ), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("fault,at_step", [("nan", 1), ("nan", 3), ("inf", 3), ("hvp", 1),
                                           ("hvp", 3)])
@pytest.mark.parametrize("name", NAMES)
def test_a_fault_raises_and_leaves_no_trace(name, fault, at_step):
    """The faulty step raises and is undone; the run then matches a run without the fault.

    An optimizer that takes no Hessian-vector product (L-BFGS, nonlinear CG,
    Barzilai-Borwein) does not see a NaN curvature: that step is an ordinary step.
    """
    make = FACTORIES[name]
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    w_ref = w.detach().clone().requires_grad_(True)
    opt, ref = make([w]), make([w_ref])
    closure = FaultyClosure(w, fault, at_step)
    for step in range(1, at_step + 3):
        closure.begin_step()
        if step != at_step:
            opt.step(closure)
            ref.step(lambda: loss_of(w_ref))
        else:
            before_w, before_state = w.detach().clone(), state_snapshot(opt)
            hvps = opt.counters.hvps
            try:
                opt.step(closure)
            except NonFiniteLossError:
                assert torch.equal(w.detach(), before_w)
                assert_same(state_snapshot(opt), before_state)
            else:  # only an optimizer that never multiplies by the Hessian
                assert fault == "hvp" and opt.counters.hvps == hvps
                ref.step(lambda: loss_of(w_ref))
        assert torch.equal(w.detach(), w_ref.detach()), f"step {step}"
        assert bool(torch.isfinite(w).all())
    assert_same(state_snapshot(opt), state_snapshot(ref))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_loads_with_weights_only_and_steps_in_lockstep(name):
    """``torch.load``'s default ``weights_only=True`` reads the state dict; the loaded
    optimizer continues bit for bit, cost counters included (wall times apart)."""
    make = FACTORIES[name]
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = make([w])
    for _ in range(3):
        opt.step(lambda: loss_of(w))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only=True (the default since torch 2.6)
    assert saved["state"]["counters"] == opt.counters.as_dict()
    w2 = w.detach().clone().requires_grad_(True)
    opt2 = make([w2])
    opt2.load_state_dict(saved)
    assert _work(opt2.counters) == _work(opt.counters)
    for _ in range(3):
        opt.step(lambda: loss_of(w))
        opt2.step(lambda: loss_of(w2))
        assert torch.equal(w.detach(), w2.detach())
    assert _work(opt2.counters) == _work(opt.counters)


def _work(counters) -> dict:
    """The counted work, without wall-clock fields (``*_seconds``), which differ per run."""
    return {k: v for k, v in counters.as_dict().items() if not k.endswith("_seconds")}


@pytest.mark.parametrize("name", NAMES)
def test_shared_input_checks_name_the_problem(name):
    """Every optimizer (Hessian-free included: it raised raw torch errors) runs the checks of
    :meth:`~secondorder.optim.base.SecondOrderOptimizer.call_closure`; nothing moves."""
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = FACTORIES[name]([w])
    with pytest.raises(ValueError, match="the closure's loss does not require grad: return"):
        opt.step(lambda: loss_of(w).detach())
    with pytest.raises(ValueError, match="the closure must return the loss tensor, got float"):
        opt.step(lambda: 1.0)
    with pytest.raises(ValueError, match=r"returned a tensor of shape \(3, 2\)"):
        opt.step(lambda: loss_of(w) * torch.ones(3, 2, dtype=DT))
    w.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires grad: the optimizer has nothing"):
        opt.step(lambda: loss_of(w))
    assert not w.any() and opt.counters.gradients == 0


# ----------------------------------------------------------------------------- low precision
LOW_PRECISION_STEPS = 8


def digits_run(make: Callable, dtype: torch.dtype) -> tuple[float, float]:
    """Loss before and after ``LOW_PRECISION_STEPS`` steps of a 64-8-10 tanh MLP in ``dtype``
    on 128 digits; the loss is computed in float32 from the logits, as under autocast."""
    X, y = digits_data(torch.float32)
    X, y = X[:128].to(dtype), y[:128]
    model = digits_mlp(0, hidden=8, dtype=dtype)
    opt = make(list(model.parameters()))

    def closure():
        return torch.nn.functional.cross_entropy(model(X).float(), y)

    with torch.no_grad():
        before = float(closure())
    for _ in range(LOW_PRECISION_STEPS):
        opt.step(closure)
    with torch.no_grad():
        return before, float(closure())


LOW_PRECISION_RUNS = {
    **FACTORIES,
    # SGD-BB's first two epochs are SGD with lr (0.01 by default: no visible progress here)
    "BarzilaiBorwein": lambda p: so.BarzilaiBorwein(p, lr=0.5, epoch_length=2),
    "TrustRegion-adagrad": lambda p: so.TrustRegion(p, norm="adagrad"),
    "AdaptiveCubic-adagrad": lambda p: so.AdaptiveCubic(p, norm="adagrad"),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(LOW_PRECISION_RUNS))
def test_low_precision_parameters_train_like_float32(name, dtype):
    """float16 / bfloat16 parameters: the run lowers the loss at least half as much as the
    same run in float32 (which lowers it by 1% or more). Trust region with the RMSProp or
    Adagrad norm rejected every step in float16 (``epsilon`` = 1e-8 and the squared
    gradients rounded to 0) and ARC failed in its eigensolver; their norms, Krylov scalars
    and steps now work in float32."""
    make = LOW_PRECISION_RUNS[name]
    start32, end32 = digits_run(make, torch.float32)
    start, end = digits_run(make, dtype)
    assert end32 < 0.99 * start32
    assert start - end >= 0.5 * (start32 - end32), (start, end, start32, end32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_complex_step_newton_krylov_refuses_low_precision_at_construction(dtype):
    """The one setting that cannot work in low precision says so when it is built (it
    raised at the first step)."""
    w = torch.zeros(3, dtype=dtype, requires_grad=True)
    match = (rf"NewtonKrylov\(backend='complex-step'\) needs float32 or float64 parameters, "
             rf"got {dtype}: pass backend='autograd'")
    with pytest.raises(ValueError, match=match):
        so.NewtonKrylov([w], backend="complex-step")
    opt = so.NewtonKrylov([torch.zeros(2, requires_grad=True)], backend="complex-step")
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": [w]})
    assert len(opt.param_groups) == 1


class ScaledIdentity(CurvatureOperator):
    """``v -> c v`` at ``params`` (a Gauss-Newton stand-in; ``c = nan`` poisons it)."""

    def __init__(self, params, c: float):
        super().__init__(params)
        self.c = c

    def _matvec(self, vec):
        return tuple(self.c * v for v in vec)


GGN_OPTIMIZERS = {
    "AdaptiveCubic": lambda p: so.AdaptiveCubic(p, curvature="gauss_newton"),
    "HessianFree": lambda p: so.HessianFree(p, preconditioner=False),  # gauss_newton default
    "TrustRegion": lambda p: so.TrustRegion(p, curvature="gauss_newton"),
}


@pytest.mark.parametrize("name", sorted(GGN_OPTIMIZERS))
def test_a_nan_gauss_newton_product_raises_and_leaves_no_trace(name):
    """The rule covers the curvature operator a ``ggn_closure`` returns, too."""
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = GGN_OPTIMIZERS[name]([w])
    opt.step(lambda: loss_of(w), ggn_closure=lambda: ScaledIdentity((w,), 2.0))
    before_w, before_state = w.detach().clone(), state_snapshot(opt)
    with pytest.raises(NonFiniteLossError, match="Hessian-vector product"):
        opt.step(lambda: loss_of(w), ggn_closure=lambda: ScaledIdentity((w,), math.nan))
    assert torch.equal(w.detach(), before_w)
    assert_same(state_snapshot(opt), before_state)


@pytest.mark.parametrize("name", NAMES)
def test_float16_state_dict_round_trip_keeps_float32_state_and_steps_in_lockstep(name):
    """torch.optim.Optimizer.load_state_dict rounds per-parameter state to the parameter's
    dtype: AdaHessian's float32 moments of float16 parameters came back float16 and the
    reloaded optimizer drifted from the original."""
    make = FACTORIES[name]
    w = torch.full((3,), 0.25, dtype=torch.float16, requires_grad=True)

    def loss(x):
        return loss_of(x.float())

    opt = make([w])
    for _ in range(3):
        opt.step(lambda: loss(w))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    w2 = w.detach().clone().requires_grad_(True)
    opt2 = make([w2])
    opt2.load_state_dict(torch.load(buffer))
    assert_same(state_snapshot(opt2), state_snapshot(opt))
    for _ in range(3):
        opt.step(lambda: loss(w))
        opt2.step(lambda: loss(w2))
        assert torch.equal(w.detach(), w2.detach())


@pytest.mark.parametrize("name", NAMES)
def test_the_step_snapshot_is_freed_when_the_step_returns(name, monkeypatch):
    """No reference cycle keeps a step's copy of the parameters and state alive until the
    garbage collector runs (the watched Hessian operator held one)."""
    alive: weakref.WeakSet = weakref.WeakSet()
    init = base.StepTransaction.__init__

    def tracked_init(self, optimizer):
        init(self, optimizer)
        alive.add(self)

    monkeypatch.setattr(base.StepTransaction, "__init__", tracked_init)
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = FACTORIES[name]([w])
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            opt.step(lambda: loss_of(w))
        assert len(alive) == 0
    finally:
        gc.enable()
