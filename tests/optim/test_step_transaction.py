"""The step transaction copies only what a step can change in place (issue 12, memory).

:class:`secondorder.optim.base.StepTransaction` used to clone every tensor of the state at
every step: for L-BFGS with its default history of 100 pairs, 200 parameter-sized copies
per step. It now clones the parameters and the state tensors under the keys an optimizer
names in ``state_mutated_in_place``, and keeps the rest by reference. These tests pin what
is copied, and that an undeclared in-place write is caught (``check_in_place``, on for the
whole optimizer suite by ``tests/optim/conftest.py``) or, without a declaration, undone.
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch import Tensor
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import secondorder.optim as so
from secondorder.optim.base import SecondOrderOptimizer, StepTransaction

DT = torch.float64


def loss_of(w: Tensor) -> Tensor:
    return ((w - torch.arange(1.0, 6.0, dtype=DT)) ** 2).sum() + 0.1 * (w**4).sum()


def tensors(obj) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def copied_numel(opt: SecondOrderOptimizer) -> int:
    """Elements of the state tensors a transaction taken now holds as its own copies."""
    live = {id(t) for t in tensors([v for k, v in opt.state.items() if k != "counters"])}
    snapshot = StepTransaction(opt)
    copies = tensors([v for _, v in snapshot._state])  # (the keys are the parameters)
    return sum(t.numel() for t in copies if id(t) not in live)


def test_lbfgs_history_is_kept_by_reference_not_copied_each_step():
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = so.LBFGS([w])
    for _ in range(6):
        opt.step(lambda: loss_of(w))
    history = opt.state["global"]["lbfgs_s"]
    assert len(history) >= 4  # a history worth copying: the old transaction cloned it
    snapshot = StepTransaction(opt)
    kept = dict(snapshot._state)["global"]["lbfgs_s"]
    assert all(a is b for pa, pb in zip(kept, history, strict=True)
               for a, b in zip(pa, pb, strict=True))
    assert copied_numel(opt) == 0


def test_adahessian_copies_its_two_moments_only():
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = so.AdaHessian([w], lr=0.1, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        opt.step(lambda: loss_of(w))
    assert {"exp_avg", "exp_hessian_diag_sq", "hessian_diag"} <= set(opt.state[w])
    assert copied_numel(opt) == 2 * w.numel()  # not the Hessian diagonal, which is replaced


class InPlaceBuffer(SecondOrderOptimizer):
    """A toy optimizer whose step writes into a state tensor, then may fail."""

    fail = False

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure):  # type: ignore[override]
        ev = self.evaluate(closure)
        buf = self.state.setdefault("global", {}).setdefault("buf", torch.zeros(3, dtype=DT))
        buf.add_(1.0)
        self.add_to_params(ev.grads, -0.1)
        if self.fail:
            raise RuntimeError("fails after writing into its state")
        return ev.loss


class DeclaredBuffer(InPlaceBuffer):
    state_mutated_in_place = frozenset({"buf"})


class UndeclaredBuffer(InPlaceBuffer):
    state_mutated_in_place = frozenset[str]()


@pytest.mark.parametrize("cls", [InPlaceBuffer, DeclaredBuffer])
def test_an_in_place_write_is_undone_when_declared_or_by_default(cls):
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = cls([w])
    opt.step(lambda: loss_of(w))
    before_w, before_buf = w.detach().clone(), opt.state["global"]["buf"].clone()
    opt.fail = True
    with pytest.raises(RuntimeError, match="fails after writing"):
        opt.step(lambda: loss_of(w))
    assert torch.equal(w.detach(), before_w)
    assert torch.equal(opt.state["global"]["buf"], before_buf)


def test_an_undeclared_in_place_write_is_named_by_the_check():
    assert StepTransaction.check_in_place  # tests/optim/conftest.py
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = UndeclaredBuffer([w])
    opt.step(lambda: loss_of(w))  # the first step creates the buffer: nothing to check yet
    with pytest.raises(AssertionError, match="UndeclaredBuffer.step wrote in place.*'buf'"):
        opt.step(lambda: loss_of(w))


class StartCopies(SecondOrderOptimizer):
    """Records what :meth:`params_at_start` returns before and after moving."""

    def __init__(self, params):
        super().__init__(params, {})
        self.seen: list[tuple[bool, bool]] = []

    def step(self, closure):  # type: ignore[override]
        ev = self.evaluate(closure)
        tr = self._transaction
        for _ in range(2):
            x0 = self.params_at_start()
            shared = all(a is b for a, b in zip(x0, tr._params, strict=True))
            same = all(torch.equal(a, p) for a, p in zip(x0, self.params(), strict=True))
            self.seen.append((shared, same))
            self.add_to_params(ev.grads, -0.1)
        return ev.loss


def test_params_at_start_shares_the_transaction_copy_until_the_parameters_move():
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = StartCopies([w])
    opt.step(lambda: loss_of(w))
    assert opt.seen == [(True, True), (False, True)]  # then a fresh copy of the moved point
    assert opt.params_at_start()[0] is not w and torch.equal(opt.params_at_start()[0], w)


class TupleBuffer(SecondOrderOptimizer):
    """Keeps a tuple of tensors (as an L-BFGS history) and a tensor under a named key that
    the tuple also holds; writes into the named one, then may fail."""

    state_mutated_in_place = frozenset({"buf"})
    fail = False
    write_into_tuple = False

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure):  # type: ignore[override]
        ev = self.evaluate(closure)
        st = self.state.setdefault("global", {})
        if "buf" not in st:
            st["buf"] = torch.zeros(3, dtype=DT)
            st["pairs"] = ((torch.ones(2, dtype=DT), torch.ones(2, dtype=DT)),)
            st["with_buf"] = (torch.ones(2, dtype=DT), st["buf"])
        st["buf"].add_(1.0)
        if self.write_into_tuple:
            st["pairs"][0][0].add_(1.0)
        self.add_to_params(ev.grads, -0.1)
        if self.fail:
            raise RuntimeError("fails after writing into its state")
        return ev.loss


def test_tuples_of_tensors_are_kept_whole_unless_they_hold_a_tensor_the_step_writes():
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = TupleBuffer([w])
    opt.step(lambda: loss_of(w))
    st = opt.state["global"]
    snapshot = dict(StepTransaction(opt)._state)["global"]
    assert snapshot["pairs"] is st["pairs"]  # kept whole: nothing in it is written
    # the tuple that also holds the written tensor is rebuilt around its one clone
    assert snapshot["with_buf"] is not st["with_buf"]
    assert snapshot["with_buf"][0] is st["with_buf"][0]
    assert snapshot["with_buf"][1] is snapshot["buf"] and snapshot["buf"] is not st["buf"]
    before = st["buf"].clone()
    opt.fail = True
    with pytest.raises(RuntimeError, match="fails after writing"):
        opt.step(lambda: loss_of(w))
    st = opt.state["global"]
    assert torch.equal(st["buf"], before) and st["with_buf"][1] is st["buf"]


def test_a_write_into_a_tensor_of_a_kept_tuple_is_named_by_the_check():
    assert StepTransaction.check_in_place  # tests/optim/conftest.py
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = TupleBuffer([w])
    opt.step(lambda: loss_of(w))
    opt.write_into_tuple = True
    with pytest.raises(AssertionError, match="TupleBuffer.step wrote in place.*'pairs'"):
        opt.step(lambda: loss_of(w))


def test_step_hooks_run_once_per_step_in_torch_order_and_may_replace_the_arguments():
    """The transaction wrapper runs torch.optim's step hooks itself (torch does not wrap
    the step a second time): global and own pre-hooks, then own and global post-hooks."""
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = so.LBFGS([w], full_batch=True)
    calls: list[str] = []
    other_calls: list[int] = []

    def other_closure():
        other_calls.append(1)
        return loss_of(w)

    def own_pre(o, args, kwargs):  # torch's convention: args[0] is the optimizer
        calls.append("own_pre")
        assert args[0] is o
        return (o, other_closure), kwargs

    handles = [
        register_optimizer_step_pre_hook(
            lambda o, a, k: calls.append("global_pre")),
        opt.register_step_pre_hook(own_pre),
        opt.register_step_post_hook(
            lambda o, a, k: calls.append(f"own_post:{a[0] is o}:{a[1].__name__}")),
        register_optimizer_step_post_hook(
            lambda o, a, k: calls.append("global_post")),
    ]
    try:
        opt.step(lambda: loss_of(w))
    finally:
        for h in handles:
            h.remove()
    assert calls == ["global_pre", "own_pre", "own_post:True:other_closure", "global_post"]
    assert other_calls  # the pre-hook's closure was the one stepped
    assert getattr(type(opt).step, "hooked", False)


def test_a_profiler_sees_one_optimizer_step_range_per_step():
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = so.LBFGS([w], full_batch=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            opt.step(lambda: loss_of(w))
    names = [e.name for e in prof.events()]
    assert names.count("Optimizer.step#LBFGS.step") == 3


class Containers(SecondOrderOptimizer):
    """Appends to lists in its state (one shared by two keys) and may fail afterwards."""

    state_mutated_in_place = frozenset[str]()
    fail = False
    odd = None  # a container the one-pass copy does not handle (then deepcopy does)

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure):  # type: ignore[override]
        ev = self.evaluate(closure)
        st = self.state.setdefault("global", {})
        if "log" not in st:
            shared = [torch.zeros(1, dtype=DT)]
            st.update(log=shared, again=shared, nested={"pairs": ((ev.loss, ev.loss),)})
            if self.odd is not None:
                st["odd"] = self.odd
        st["log"].append(ev.loss)
        st["nested"]["pairs"] = (*st["nested"]["pairs"], (ev.loss, ev.loss))
        if isinstance(st.get("odd"), dict):
            st["odd"]["n"] += 1
        self.add_to_params(ev.grads, -0.1)
        if self.fail:
            raise RuntimeError("fails after appending")
        return ev.loss


@pytest.mark.parametrize("odd", [None, collections.OrderedDict(n=0)], ids=["plain", "subclass"])
def test_a_failed_step_puts_back_shared_and_nested_containers(odd):
    """The one-pass copy of an optimizer that writes no state tensor in place (and its
    deepcopy fallback for containers it does not handle) restores what the step appended
    and keeps a list shared by two keys shared."""
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = Containers([w])
    opt.odd = odd
    for _ in range(2):
        opt.step(lambda: loss_of(w))
    st = opt.state["global"]
    log, pairs = list(st["log"]), st["nested"]["pairs"]
    opt.fail = True
    with pytest.raises(RuntimeError, match="fails after appending"):
        opt.step(lambda: loss_of(w))
    st = opt.state["global"]
    assert st["log"] == log and all(a is b for a, b in zip(st["log"], log, strict=True))
    assert st["again"] is st["log"] and st["nested"]["pairs"] is pairs
    if odd is not None:
        assert st["odd"] == {"n": 2} and type(st["odd"]) is collections.OrderedDict


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.complex64])
def test_the_start_point_watch_flags_exactly_the_non_finite_values(dtype):
    # the watch adds up v - v: 0 for finite entries, NaN for inf and NaN. Finite values
    # whose sum would overflow (float16 here) must not be flagged; one inf, -inf or NaN
    # among many must be, in a 0-dim or an n-dim tensor
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = so.NewtonCG([w])
    big = torch.full((10_000,), 6e4 if dtype == torch.float16 else 1e30, dtype=dtype)
    for values, finite in [
        ([big, torch.tensor(1.0, dtype=dtype)], True),
        ([big, torch.arange(3)], True),  # an integer tensor is always finite
        ([big, torch.tensor(float("inf"), dtype=dtype)], False),
    ] + [
        ([torch.cat([big, torch.tensor([bad], dtype=dtype)])], False)
        for bad in (float("inf"), float("-inf"), float("nan"))
    ]:
        tr = StepTransaction(opt)
        tr.watch(values)
        assert tr.start_was_finite() is finite
    many = StepTransaction(opt)  # past the fold of a long Krylov solve
    many.watch([big] * 300 + [torch.tensor(float("nan"), dtype=dtype)] + [big] * 300)
    assert many.start_was_finite() is False


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", [torch.complex32, torch.float8_e5m2, torch.float8_e4m3fn])
def test_the_watch_upcasts_dtypes_it_cannot_subtract(dtype):
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = so.NewtonCG([w])
    bad = torch.nan if dtype == torch.float8_e4m3fn else torch.inf  # e4m3fn has no inf
    for value, finite in [(1.0, True), (bad, False)]:
        v = torch.tensor([0.5, value, -2.0]).to(dtype)
        tr = StepTransaction(opt)
        tr.watch([v, torch.tensor(1.0, dtype=DT)])
        assert tr.start_was_finite() is finite


def test_the_watch_keeps_no_graph_alive():
    w = torch.ones(3, dtype=DT, requires_grad=True)
    (g,) = torch.autograd.grad((w**3).sum(), w, create_graph=True)
    tr = StepTransaction(so.NewtonCG([w]))
    tr.watch([g])
    assert all(f.grad_fn is None and not f.requires_grad for f in tr._flags)
    assert tr.start_was_finite()


class NestedAppender(SecondOrderOptimizer):
    """Declares ``state_containers_replaced`` but appends to a nested list (broken promise),
    or, with ``replace``, keeps it by assigning a new list (kept promise)."""

    state_mutated_in_place = frozenset[str]()
    state_containers_replaced = True

    def __init__(self, params, replace=False):
        super().__init__(params, {})
        self.replace = replace
        self.fail = False

    def step(self, closure):  # type: ignore[override]
        self.evaluate(closure)
        st = self.state["global"]
        history = st.setdefault("history", [])
        if self.replace:
            st["history"] = [*history, len(history)]
        else:
            history.append(len(history))
        st["count"] = st.get("count", 0) + 1
        if self.fail:
            raise RuntimeError("fails after changing the state")


def test_a_broken_state_containers_replaced_promise_is_named_by_the_check():
    assert StepTransaction.check_in_place  # tests/optim/conftest.py
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = NestedAppender([w])
    opt.step(lambda: loss_of(w))  # creates the list: nothing nested to check yet
    with pytest.raises(AssertionError, match="NestedAppender.step changed a list.*'history'"):
        opt.step(lambda: loss_of(w))


def test_a_kept_state_containers_replaced_promise_undoes_a_failed_step():
    # the snapshot is a shallow copy of each per-key dict: enough when nested containers
    # are replaced, not changed
    w = torch.zeros(5, dtype=DT, requires_grad=True)
    opt = NestedAppender([w], replace=True)
    for _ in range(3):
        opt.step(lambda: loss_of(w))
    before = dict(opt.state["global"])
    opt.fail = True
    with pytest.raises(RuntimeError, match="fails after changing"):
        opt.step(lambda: loss_of(w))
    assert opt.state["global"] == before and opt.state["global"]["history"] == [0, 1, 2]
