"""Every optimizer step as a transaction: undo it when its start point is not finite.

:class:`StepTransaction` holds what one ``step`` may need to undo (a copy of the parameters
and of the optimizer state) and accumulates, without a host sync, whether the loss, gradient
and Hessian-vector products at the point the step starts from were finite.
:func:`transactional` wraps a subclass's ``step`` in one; ``SecondOrderOptimizer``'s
``__init_subclass__`` installs it (see :mod:`secondorder.optim.base` for the contract).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.errors import NonFiniteLossError

if TYPE_CHECKING:
    from secondorder.optim.base import SecondOrderOptimizer

__all__ = ["StepTransaction", "transactional"]


def _keyed_tensors(obj: Any, key: str) -> Iterable[tuple[str, Tensor]]:
    """``(key, tensor)`` for the tensors inside nested dicts, lists and tuples; ``key`` is the
    innermost string dict key above the tensor (``""`` when none)."""
    if isinstance(obj, Tensor):
        yield key, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _keyed_tensors(v, k if isinstance(k, str) else key)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _keyed_tensors(v, key)


class StepTransaction:
    """What one ``step`` may need to undo, and the finiteness of its start point.

    Holds a copy of the trainable parameters and of the optimizer state (all but the cost
    counters, plus :meth:`SecondOrderOptimizer.extra_state`) taken before the step, and a
    device boolean that is false once a loss, gradient or Hessian-vector product at the
    start point was NaN or infinite (accumulated without a host sync).

    The copy of the state is cheap: its containers (dicts, lists, tuples) are copied, but
    a tensor in it is cloned only when the step may write into it in place, i.e. when it
    sits under a key the optimizer names in
    :attr:`SecondOrderOptimizer.state_mutated_in_place` (every tensor when that is
    ``None``). The others are kept by reference: a step that replaces them (an L-BFGS pair
    is appended as a new tuple, a moment is overwritten by a new tensor) leaves the old
    tensor intact, so putting the old containers back restores the state bit for bit. An
    L-BFGS step thus costs one copy of the parameters, not ``2 m + 2``.

    Attributes:
        at_start: the parameters have not moved yet in this step.
        check_in_place: class-wide switch for tests: record the in-place version counter
            of every tensor kept by reference and raise ``AssertionError`` (naming its key)
            when the step changed one, i.e. the optimizer mutated a tensor it did not name
            in ``state_mutated_in_place``.
    """

    check_in_place: bool = False

    def __init__(self, optimizer: SecondOrderOptimizer):
        params = optimizer.all_params()
        self._params = [p.detach().clone() for p in params]
        self._copy_of = {
            id(p): (p, p._version, c) for p, c in zip(params, self._params, strict=True)
        }
        memo: dict[int, Any] = {id(p): p for p in params}  # the state's keys are not copied
        state = [(k, v) for k, v in optimizer.state.items() if k != "counters"]
        in_place = type(optimizer).state_mutated_in_place
        kept: list[tuple[str, Tensor, int]] = []
        tensors = list(_keyed_tensors(state, ""))
        if in_place is not None:  # clone a tensor met under a named key, wherever else it is
            for key, t in tensors:
                if key in in_place:
                    memo.setdefault(id(t), t.detach().clone())
        for key, t in tensors:  # each tensor once, not through deepcopy
            if id(t) not in memo:
                if in_place is None:
                    memo[id(t)] = t.detach().clone()
                else:
                    memo[id(t)] = t
                    if self.check_in_place:
                        kept.append((key, t, t._version))
        self._kept = kept
        self._state = copy.deepcopy(state, memo)
        self._extra = copy.deepcopy(optimizer.extra_state())
        self._finite: Tensor | None = None
        self.at_start = True

    def copies_if_unchanged(self, params: Sequence[Tensor]) -> tuple[Tensor, ...] | None:
        """This transaction's copies of ``params`` when none was written since it began."""
        out = []
        for p in params:
            entry = self._copy_of.get(id(p))
            if entry is None or entry[0] is not p or p._version != entry[1]:
                return None
            out.append(entry[2])
        return tuple(out)

    def check_kept_unchanged(self, optimizer: SecondOrderOptimizer) -> None:
        """With :attr:`check_in_place`: raise when a tensor kept by reference was written."""
        for key, t, version in self._kept:
            if t._version != version:
                raise AssertionError(
                    f"{type(optimizer).__name__}.step wrote in place into the state tensor "
                    f"under {key!r}, which its state_mutated_in_place does not name: the "
                    "step transaction could not undo it"
                )

    def watch(self, values: Iterable[Tensor | None]) -> None:
        """AND the finiteness of ``values`` into the start-point flag (no host sync)."""
        ts = [v.detach() for v in values if v is not None]
        if not ts:
            return
        ok = tl.all_finite(ts)
        self._finite = ok if self._finite is None else self._finite & ok

    def restart(self) -> None:
        """The step starts over at the current parameters: forget what was watched."""
        self._finite = None
        self.at_start = True

    def start_was_finite(self) -> bool:
        """Whether everything watched was finite (one host sync)."""
        return self._finite is None or bool(self._finite)

    def rollback(self, optimizer: SecondOrderOptimizer) -> None:
        """Put the parameters, the state and :meth:`~SecondOrderOptimizer.extra_state` back."""
        with torch.no_grad():
            for p, v in zip(optimizer.all_params(), self._params, strict=True):
                p.copy_(v)
        counters = optimizer.state.get("counters")
        optimizer.state.clear()
        for k, v in self._state:
            optimizer.state[k] = v
        if counters is not None:
            optimizer.state["counters"] = counters
        optimizer.load_extra_state(self._extra)


def transactional(step: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a subclass's ``step`` in a :class:`StepTransaction` (module docstring)."""

    @functools.wraps(step)
    def transactional_step(self: SecondOrderOptimizer, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_transaction", None) is not None:  # super().step() inside a step
            return step(self, *args, **kwargs)
        self._transaction = transaction = StepTransaction(self)
        message = (
            f"{type(self).__name__}: the loss, the gradient or a Hessian-vector product at the "
            "current parameters is NaN or infinite; the step was undone (parameters and "
            "optimizer state are as before it)"
        )
        try:
            out = step(self, *args, **kwargs)
            transaction.check_kept_unchanged(self)
            if not transaction.start_was_finite():
                raise NonFiniteLossError(message)
            return out
        except NonFiniteLossError:
            transaction.check_kept_unchanged(self)
            transaction.rollback(self)
            raise
        except BaseException as exc:
            transaction.rollback(self)
            if isinstance(exc, Exception) and not transaction.start_was_finite():
                # e.g. an eigensolver failing on NaN curvature: name the cause
                raise NonFiniteLossError(message) from exc
            raise
        finally:
            self._transaction = None

    transactional_step.transactional = True  # type: ignore[attr-defined]
    return transactional_step
