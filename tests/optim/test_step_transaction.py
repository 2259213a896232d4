"""The step transaction copies only what a step can change in place (issue 12, memory).

:class:`secondorder.optim.base.StepTransaction` used to clone every tensor of the state at
every step: for L-BFGS with its default history of 100 pairs, 200 parameter-sized copies
per step. It now clones the parameters and the state tensors under the keys an optimizer
names in ``state_mutated_in_place``, and keeps the rest by reference. These tests pin what
is copied, and that an undeclared in-place write is caught (``check_in_place``, on for the
whole optimizer suite by ``tests/optim/conftest.py``) or, without a declaration, undone.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

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
