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
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

try:  # torch's registries of global step hooks (private: without them torch wraps the step)
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
except ImportError:  # pragma: no cover - depends on the torch version
    _global_optimizer_pre_hooks = _global_optimizer_post_hooks = None

from secondorder.errors import NonFiniteLossError

if TYPE_CHECKING:
    from secondorder.optim.base import SecondOrderOptimizer

__all__ = ["StepTransaction", "transactional"]


def _keyed_tensors(
    obj: Any, key: str, frozen: list[tuple[str, tuple, tuple[Tensor, ...]]] | None = None
) -> Iterable[tuple[str, Tensor]]:
    """``(key, tensor)`` for the tensors inside nested dicts, lists and tuples; ``key`` is the
    innermost string dict key above the tensor (``""`` when none).

    With ``frozen`` (a list), a tuple that holds only tensors, or only tuples of tensors, is
    not walked item by item: ``(key, the tuple, its tensors)`` is appended to ``frozen``
    instead (:func:`_tensors_of_frozen`).
    """
    if isinstance(obj, Tensor):
        yield key, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _keyed_tensors(v, k if isinstance(k, str) else key, frozen)
    elif isinstance(obj, (list, tuple)):
        if frozen is not None and type(obj) is tuple:
            flat = _tensors_of_frozen(obj)
            if flat is not None:
                frozen.append((key, obj, flat))
                return
        for v in obj:
            yield from _keyed_tensors(v, key, frozen)


def _tensors_of_frozen(obj: tuple) -> tuple[Tensor, ...] | None:
    """The tensors of a tuple of tensors, or of a tuple of tuples of tensors (an L-BFGS
    history); ``None`` for any other tuple.

    Such a tuple cannot change except through its tensors, so a snapshot that keeps its
    tensors by reference can keep the tuple itself. The type checks run over the distinct
    item types only (``set(map(type, ...))`` iterates in C): a history of 100 pairs costs
    a few microseconds, not a Python call per tensor.
    """
    types = set(map(type, obj))
    if types == {tuple}:
        obj = tuple(chain.from_iterable(obj))
        types = set(map(type, obj))
    if types <= _PLAIN_TENSOR_TYPES or all(issubclass(t, Tensor) for t in types):
        return obj
    return None


_PLAIN_TENSOR_TYPES = frozenset({Tensor, torch.nn.Parameter})
#: dtypes whose ``(v - v).sum()`` torch computes (the start-point watch's flag)
_SUBTRACTABLE = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64,
                           torch.complex64, torch.complex128})


def _nested_containers(state: list[tuple[Any, Any]]) -> Iterable[tuple[str, Any, list]]:
    """``(key, container, its items)`` for every list and dict nested below the state's
    per-key values (those are copied by the snapshot; what is below them is promised not to
    change by ``state_containers_replaced``)."""
    for k, v in state:
        yield from _containers_below(v, k if isinstance(k, str) else "", top=True)


def _containers_below(obj: Any, key: str, top: bool) -> Iterable[tuple[str, Any, list]]:
    if type(obj) is dict:
        if not top:
            yield key, obj, list(obj.items())
        for k, v in obj.items():
            if isinstance(v, (list, tuple, dict)):
                yield from _containers_below(v, k if isinstance(k, str) else key, False)
    elif isinstance(obj, (list, tuple)):
        if type(obj) is list and not top:
            yield key, obj, list(obj)
        for v in obj:
            if isinstance(v, (list, tuple, dict)):
                yield from _containers_below(v, key, False)


class _Unhandled(Exception):
    """Raised by :func:`_copy_keeping_tensors` on a type it does not copy itself."""


_MISSING = object()
#: types ``copy.deepcopy`` returns as they are
_ATOMIC = frozenset({type(None), int, float, bool, complex, str, bytes})


def _copy_keeping_tensors(obj: Any, key: str, memo: dict[int, Any],
                          kept: list[tuple[str, Tensor, int]], record: bool) -> Any:
    """``copy.deepcopy(obj, memo)`` for a state that keeps every tensor by reference.

    Copies dicts and lists, rebuilds a tuple only when an item of it was copied, and keeps
    tensors (recorded in ``kept`` with their key and version when ``record``), ``memo``'s
    objects and atomic values as they are: one walk in which a tuple of tensors (an L-BFGS
    history) costs a few C-level calls (:func:`_tensors_of_frozen`). Shared and recursive
    containers are copied once, as deepcopy does.

    Raises:
        _Unhandled: on anything else (a subclass of dict, list or tuple, any other object):
            the caller then copies the state with ``copy.deepcopy``.
    """
    t = type(obj)
    if t in _ATOMIC:
        return obj
    done = memo.get(id(obj), _MISSING)
    if done is not _MISSING:
        return done
    if t is dict:
        new: Any = {}
        memo[id(obj)] = new
        for k, v in obj.items():
            if type(k) not in _ATOMIC and id(k) not in memo:
                raise _Unhandled(k)
            # an atomic value is kept here, without a call per entry (counters, flags)
            new[k] = v if type(v) in _ATOMIC else _copy_keeping_tensors(
                v, k if isinstance(k, str) else key, memo, kept, record)
        return new
    if t is list:
        new = []
        memo[id(obj)] = new
        new.extend(_copy_keeping_tensors(v, key, memo, kept, record) for v in obj)
        return new
    if t is tuple:
        flat = _tensors_of_frozen(obj)
        if flat is not None:  # kept whole; its tensors need no memo entry (all are kept)
            if record:
                kept += [(key, x, x._version) for x in flat if id(x) not in memo]
            memo[id(obj)] = obj
            return obj
        if set(map(type, obj)) <= _ATOMIC:  # a tuple of numbers and flags: kept whole
            memo[id(obj)] = obj
            return obj
        items = [_copy_keeping_tensors(v, key, memo, kept, record) for v in obj]
        new = obj if all([a is b for a, b in zip(items, obj, strict=True)]) else tuple(items)
        memo[id(obj)] = new
        return new
    if isinstance(obj, Tensor):
        memo[id(obj)] = obj
        if record:
            kept.append((key, obj, obj._version))
        return obj
    raise _Unhandled(obj)


class StepTransaction:
    """What one ``step`` may need to undo, and the finiteness of its start point.

    Holds a copy of the trainable parameters and of the optimizer state (all but the cost
    counters, plus :meth:`SecondOrderOptimizer.extra_state`) taken before the step, and
    device flags that are no longer all zero once a loss, gradient or Hessian-vector
    product at the start point was NaN or infinite (accumulated without a host sync).

    The copy of the state is cheap: its containers (dicts, lists, tuples) are copied, but
    a tensor in it is cloned only when the step may write into it in place, i.e. when it
    sits under a key the optimizer names in
    :attr:`SecondOrderOptimizer.state_mutated_in_place` (every tensor when that is
    ``None``). The others are kept by reference: a step that replaces them (an L-BFGS pair
    is appended as a new tuple, a moment is overwritten by a new tensor) leaves the old
    tensor intact, so putting the old containers back restores the state bit for bit. An
    L-BFGS step thus costs one copy of the parameters, not ``2 m + 2``. An optimizer that
    declares :attr:`SecondOrderOptimizer.state_containers_replaced` (it never changes a
    nested container either) gets only a shallow copy of each per-key dict: a few
    microseconds, cheap enough for one transaction per iteration
    (:meth:`SecondOrderOptimizer.commit_iteration`).

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
        state = [(k, v) for k, v in optimizer.state.items() if k != "counters"]
        cls = type(optimizer)
        in_place = cls.state_mutated_in_place
        self._containers: list[tuple[str, Any, list[Any]]] = []
        if optimizer.state_containers_replaced and in_place is not None and not in_place:
            # the step writes only into the per-key dicts: a shallow copy of each is the
            # snapshot (with check_in_place, tests also verify that promise)
            self._state = [(k, dict(v) if type(v) is dict else list(v) if type(v) is list
                            else v) for k, v in state]
            self._kept: list[tuple[str, Tensor, int]] = []
            if self.check_in_place:
                _copy_keeping_tensors(state, "", {id(p): p for p in params}, self._kept, True)
                self._containers = list(_nested_containers(state))
            extra = optimizer.extra_state()
            self._extra = None if extra is None else copy.deepcopy(extra)
            self._flags: list[Tensor] = []
            self.at_start = True
            return
        memo: dict[int, Any] = {id(p): p for p in params}  # the state's keys are not copied
        kept: list[tuple[str, Tensor, int]] = []
        copied = None
        if in_place is not None and not in_place:  # no tensor to clone: one pass, no deepcopy
            try:
                copied = _copy_keeping_tensors(state, "", memo, kept, self.check_in_place)
            except _Unhandled:
                memo = {id(p): p for p in params}
                kept = []
        if copied is None:
            copied = self._copy_state(state, memo, in_place, kept)
        self._kept = kept
        self._state = copied
        extra = optimizer.extra_state()
        self._extra = None if extra is None else copy.deepcopy(extra)
        self._flags = []
        self.at_start = True

    def _copy_state(self, state: list[tuple[Any, Any]], memo: dict[int, Any],
                    in_place: frozenset[str] | None,
                    kept: list[tuple[str, Tensor, int]]) -> list[tuple[Any, Any]]:
        """``state`` with its containers copied by ``copy.deepcopy``, the tensors under
        ``in_place`` keys cloned (every tensor when ``in_place`` is ``None``), the others
        kept by reference and, with :attr:`check_in_place`, recorded in ``kept``."""
        # tuples of tensors (an L-BFGS history) are kept whole, not walked tensor by tensor,
        # unless the step may write into them (every tensor is cloned when in_place is None)
        frozen: list[tuple[str, tuple, tuple[Tensor, ...]]] | None = (
            None if in_place is None else []
        )
        tensors = list(_keyed_tensors(state, "", frozen))
        if frozen:
            tensors += [(key, t) for key, tup, flat in frozen if key in in_place for t in flat]
        cloned: set[int] = set()
        if in_place is not None:  # clone a tensor met under a named key, wherever else it is
            for key, t in tensors:
                if key in in_place and id(t) not in memo:
                    memo[id(t)] = t.detach().clone()
                    cloned.add(id(t))
            for key, tup, flat in frozen or ():
                if key in in_place:
                    continue  # rebuilt by deepcopy around its clones
                if cloned.isdisjoint(map(id, flat)):
                    memo[id(tup)] = tup  # nothing in it is cloned: keep the tuple itself
                    if self.check_in_place:
                        kept += [(key, t, t._version) for t in flat if id(t) not in memo]
                else:  # a tensor in it is also under a named key: walk it
                    tensors += [(key, t) for t in flat]
        for key, t in tensors:  # each tensor once, not through deepcopy
            if id(t) not in memo:
                if in_place is None:
                    memo[id(t)] = t.detach().clone()
                else:
                    memo[id(t)] = t
                    if self.check_in_place:
                        kept.append((key, t, t._version))
        return copy.deepcopy(state, memo)

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
        """With :attr:`check_in_place`: raise when a tensor kept by reference was written,
        or (``state_containers_replaced``) a nested list or dict of the state was changed."""
        for key, t, version in self._kept:
            if t._version != version:
                raise AssertionError(
                    f"{type(optimizer).__name__}.step wrote in place into the state tensor "
                    f"under {key!r}, which its state_mutated_in_place does not name: the "
                    "step transaction could not undo it"
                )
        for key, container, items in self._containers:
            if type(container) is dict:
                changed = len(container) != len(items) or any(
                    k not in container or container[k] is not v for k, v in items)
            else:
                changed = len(container) != len(items) or any(
                    a is not b for a, b in zip(container, items, strict=False))
            if changed:
                raise AssertionError(
                    f"{type(optimizer).__name__}.step changed a {type(container).__name__} "
                    f"nested in its state under {key!r} in place, but declares "
                    "state_containers_replaced: the step transaction could not undo it"
                )

    def check_start(self, optimizer: SecondOrderOptimizer) -> None:
        """Raise :class:`NonFiniteLossError` when something watched was not finite (one host
        sync, none when nothing was watched); the flags are then cleared, so a second
        check costs nothing."""
        self.check_kept_unchanged(optimizer)
        if not self.start_was_finite():
            raise NonFiniteLossError(_non_finite_message(optimizer))
        self._flags = []

    def watch(self, values: Iterable[Tensor | None]) -> None:
        """Record the finiteness of ``values`` for the start-point check (no host sync).

        One 0-dim flag per tensor, ``sum(v - v)``: exactly 0 when every entry is finite
        (``x - x = 0`` for a finite ``x``, with no overflow possible) and NaN otherwise
        (``inf - inf`` and ``nan - nan`` are NaN), in two operations where
        ``isfinite(v).all()`` takes five (and a temporary no larger than the ``|v|`` that
        ``isfinite`` makes). Dtypes torch cannot subtract and sum (complex32, float8) are
        upcast first, which is exact. The flags are kept in a list and reduced once, by
        :meth:`start_was_finite`: no stack and no AND per call.
        """
        flags = self._flags
        for v in values:
            if v is None or not (v.is_floating_point() or v.is_complex()):
                continue  # integers and booleans are always finite
            if v.requires_grad:  # a gradient with its graph: keep no graph alive in a flag
                v = v.detach()
            if v.dtype not in _SUBTRACTABLE:  # complex32, float8: upcast first (exact)
                v = v.to(torch.complex64 if v.is_complex() else torch.float32)
            if v.dim() == 0:
                flags.append(v - v)
            else:
                flags.append((v - v).sum())
        if len(flags) > 256:  # a long Krylov solve: fold, so the list stays short
            self._flags = [torch.stack(flags).sum()]

    def restart(self) -> None:
        """The step starts over at the current parameters: forget what was watched."""
        self._flags = []
        self.at_start = True

    def start_was_finite(self) -> bool:
        """Whether everything watched was finite (one host sync)."""
        flags = self._flags
        if not flags:
            return True
        if len(flags) == 1:
            return flags[0].item() == 0
        return all(v == 0 for v in torch.stack(flags).tolist())  # (no sum: two calls)

    def rollback(self, optimizer: SecondOrderOptimizer) -> None:
        """Put the parameters, the state and :meth:`~SecondOrderOptimizer.extra_state` back,
        and free an evaluation the step kept for the next one."""
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
        optimizer.discard_kept_evaluation()  # made during the undone step: no longer valid


def transactional(step: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a subclass's ``step`` in a :class:`StepTransaction` (module docstring).

    The wrapper also does what ``torch.optim.Optimizer`` wraps every ``step`` in (its
    ``profile_hook_step``), so that torch does not wrap it a second time (the wrapper is
    marked ``hooked``): the global and the optimizer's step pre- and post-hooks, in torch's
    order, outside the transaction, and the ``Optimizer.step#<class>.step`` profiler range.
    The range is opened only while a profiler runs: outside one, torch's
    ``record_function`` is a few microseconds per step that record nothing, which on a
    problem of a few parameters is a visible share of a step.
    """

    @functools.wraps(step)
    def transactional_step(self: SecondOrderOptimizer, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_transaction", None) is not None:  # super().step() inside a step
            return step(self, *args, **kwargs)
        if _global_optimizer_pre_hooks is None:  # torch runs the hooks (profile_hook_step)
            return _transaction_step(step, self, args, kwargs)
        if torch._C._autograd._profiler_enabled():
            name = f"Optimizer.step#{type(self).__name__}.step"
            with torch.autograd.profiler.record_function(name):
                return _hooked_transaction(step, self, args, kwargs)
        return _hooked_transaction(step, self, args, kwargs)

    transactional_step.transactional = True  # type: ignore[attr-defined]
    if _global_optimizer_pre_hooks is not None:  # else torch's profile_hook_step wraps it
        transactional_step.hooked = True  # type: ignore[attr-defined]  # torch: not again
    return transactional_step


def _hooked_transaction(step: Callable[..., Any], self: SecondOrderOptimizer,
                        args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """torch.optim's step hooks around one transaction, as torch's ``profile_hook_step``
    calls them: ``hook(optimizer, args, kwargs)`` with ``args`` starting with the optimizer,
    and a pre-hook may return ``(new_args, new_kwargs)`` (``new_args`` again starting with
    the optimizer)."""
    full = (self, *args)
    pre = self._optimizer_step_pre_hooks
    if _global_optimizer_pre_hooks or pre:
        for pre_hook in chain(_global_optimizer_pre_hooks.values(), pre.values()):
            result = pre_hook(self, full, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    full, kwargs = result
                else:
                    raise RuntimeError(
                        f"{step} must return None or a tuple of (new_args, new_kwargs), but "
                        f"got {result}."
                    )
    out = _transaction_step(step, full[0], tuple(full[1:]), kwargs)
    self._optimizer_step_code()
    post = self._optimizer_step_post_hooks
    if post or _global_optimizer_post_hooks:
        for post_hook in chain(post.values(), _global_optimizer_post_hooks.values()):
            post_hook(self, full, kwargs)
    return out


def _transaction_step(step: Callable[..., Any], self: SecondOrderOptimizer,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``step(self, *args, **kwargs)`` as a :class:`StepTransaction`."""
    self._transaction = StepTransaction(self)
    try:
        out = step(self, *args, **kwargs)
        self._transaction.check_start(self)
        return out
    except NonFiniteLossError:
        transaction = self._transaction  # the current iteration's (commit_iteration)
        transaction.check_kept_unchanged(self)
        transaction.rollback(self)
        raise
    except BaseException as exc:
        transaction = self._transaction
        transaction.rollback(self)
        if isinstance(exc, Exception) and not transaction.start_was_finite():
            # e.g. an eigensolver failing on NaN curvature: name the cause
            raise NonFiniteLossError(_non_finite_message(self)) from exc
        raise
    finally:
        self._transaction = None


def _non_finite_message(optimizer: SecondOrderOptimizer) -> str:
    return (
        f"{type(optimizer).__name__}: the loss, the gradient or a Hessian-vector product at "
        "the current parameters is NaN or infinite; the step (in a step of several "
        "iterations, this iteration) was undone: parameters and optimizer state are as "
        "before it"
    )
