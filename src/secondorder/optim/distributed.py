"""Data-parallel optimizers on ``torch.distributed``: every rank takes the identical step.

Supported pattern: a **plain** module on every rank (not ``DistributedDataParallel``), the
same initial parameters everywhere, and a closure on each rank returning the mean loss (or
per-sample losses) of *its own shard* of the batch::

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    broadcast_random_state()                 # identical probes / sub-samples on every rank
    optimizer = NewtonCG(model.parameters())
    optimizer.step(lambda: criterion(model(x_shard), y_shard))

When a process group is initialized (or one is set with :func:`set_process_group`), each
optimizer averages across ranks everything it derives from data, at the two places where
it touches data:

- :meth:`~secondorder.optim.base.SecondOrderOptimizer.evaluate` (and the Hessian-free
  evaluation, which also yields the Fisher diagonal): the loss, the gradient and the
  diagonal, in **one** all-reduce of a flat buffer that also carries each rank's status;
  line-search trial losses, Newton-Krylov's global gradient and trust-region / ARC ratios
  all come from here;
- every curvature-vector product (Hessian, Gauss-Newton, hence Hutchinson's ``z * Hz``):
  one all-reduce of the flat product.

With shards of ``n_r`` samples the average is weighted, ``g = sum_r n_r g_r / sum_r n_r``
(the gradient of the mean loss on the concatenated batch; ``H v`` likewise), when every
closure reports its sample count (per-sample losses, or ``samples_per_evaluation``);
otherwise the ranks weigh equally. A Gauss-Newton operator from ``ggn_closure`` takes the
weight of the same step's evaluation, so its batch should be the rank's shard. The
iterates then equal those of one process on the concatenated batch up to round-off, for
every optimizer whose randomness comes from a generator seeded identically on all ranks
(:func:`broadcast_random_state`).

Failures: a rank whose closure raises still joins the all-reduce, with its status flag
set; every other rank then raises :class:`RankFailedError` and the failing rank re-raises
its own exception, so no rank steps alone and none waits forever. A NaN on one shard
makes the averaged value NaN on every rank: at the start of a step the step transaction
(:mod:`secondorder.optim.base`), which watches the averaged loss, gradient and products,
undoes the step and raises :class:`~secondorder.errors.NonFiniteLossError` on every rank
alike (or the optimizer first rejects its own unchecked previous step, as one process
would); at a line-search trial every rank backtracks alike. A rank that dies
or stalls makes the others raise :class:`RankFailedError` after the timeout of
``init_process_group(timeout=...)``.

``DistributedDataParallel`` does not support double backward, and its gradient hooks
expect ``.backward()``: a closure that runs a DDP module raises :class:`ValueError`.

Not covered: ``NewtonCG(hessian_fraction=...)`` and the complex-step backend of
``NewtonKrylov`` call the closure outside these two places; with a process group they
would step on local data only, so their ``step`` raises :class:`ValueError` (on every rank
alike) before it evaluates anything.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.optim.optimizer import register_optimizer_step_pre_hook

from secondorder.curvature.operators import CurvatureOperator
from secondorder.errors import NonFiniteLossError
from secondorder.optim.closure_convention import BackwardWatch

__all__ = [
    "CommunicationStats",
    "DataParallelOperator",
    "RankFailedError",
    "broadcast_random_state",
    "communication_stats",
    "data_parallel_evaluate",
    "data_parallel_hessian_free_evaluate",
    "data_parallel_operator",
    "process_group_of",
    "set_process_group",
]

_LOCAL = "local"  # set_process_group(opt, None) stores this: never communicate


class RankFailedError(RuntimeError):
    """Another rank of the process group failed during the same evaluation.

    Raised on every rank but the failing one(s), which re-raise their own exception; the
    parameters are unchanged by the failed evaluation on all ranks.
    """


@dataclass
class CommunicationStats:
    """All-reduces issued by this process's optimizers and the bytes they carried."""

    all_reduces: int = 0
    bytes: int = 0

    def reset(self) -> None:
        self.all_reduces = 0
        self.bytes = 0


_STATS = CommunicationStats()
_STATE = threading.local()  # weight of this rank's data in the last evaluation


def communication_stats() -> CommunicationStats:
    """The process-wide :class:`CommunicationStats` (call ``.reset()`` to start counting)."""
    return _STATS


# ----------------------------------------------------------------------------- groups
def set_process_group(optimizer: Any, group: Any) -> Any:
    """Choose the process group ``optimizer`` averages over, or ``None`` for local steps.

    Without this call an optimizer uses the default group whenever
    ``torch.distributed`` is initialized with more than one rank.

    Returns:
        ``optimizer``.
    """
    optimizer._data_parallel_group = _LOCAL if group is None else group
    return optimizer


def process_group_of(optimizer: Any) -> Any | None:
    """The group ``optimizer`` averages over, or ``None`` when it steps alone.

    The group set by :func:`set_process_group`, else the default group when it has more
    than one rank (one process pays nothing).
    """
    group = getattr(optimizer, "_data_parallel_group", None)
    if group is not None:
        return None if group == _LOCAL else group
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.group.WORLD if dist.get_world_size() > 1 else None


def broadcast_random_state(generator: torch.Generator | None = None, *, group: Any = None,
                           src: int = 0) -> None:
    """Copy rank ``src``'s random state to every rank (the global CPU RNG by default).

    Rademacher probes and sub-samples drawn from it are then identical on all ranks.
    """
    gen = generator if generator is not None else torch.default_generator
    state = gen.get_state()
    if dist.get_backend(group) == "nccl":
        buf = state.to("cuda")
        dist.broadcast(buf, src=src, group=group)
        state = buf.cpu()
    else:
        dist.broadcast(state, src=src, group=group)
    gen.set_state(state)


# ----------------------------------------------------------------------------- reduction
def _all_reduce_sum(buf: Tensor, group: Any) -> Tensor:
    """Sum ``buf`` over the group in place: the one communication primitive used here.

    Raises:
        RankFailedError: if the all-reduce fails or times out (a rank died, stalled, or
            is not stepping this optimizer).
    """
    try:
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    except RuntimeError as exc:  # gloo/NCCL timeouts and broken connections
        raise RankFailedError(
            f"the all-reduce over the {dist.get_world_size(group)} ranks of the optimizer's "
            "process group failed or timed out (init_process_group(timeout=...)): a rank "
            "died, stalled, or is not stepping this optimizer; the step is abandoned"
        ) from exc
    _STATS.all_reduces += 1
    _STATS.bytes += buf.numel() * buf.element_size()
    return buf


def _buffer_dtype(like: Tensor) -> torch.dtype:
    # sample counts and flags must stay exact: at least float32
    return torch.promote_types(like.dtype, torch.float32)


@contextmanager
def _refuse_ddp() -> Iterator[None]:
    """Raise ``ValueError`` if a ``DistributedDataParallel`` module runs in this block."""
    ddp = torch.nn.parallel.DistributedDataParallel

    def hook(module: torch.nn.Module, args: Any) -> None:
        if isinstance(module, ddp):
            raise ValueError(
                "the closure runs a DistributedDataParallel module: DDP does not support "
                "double backward (curvature products) and secondorder optimizers average "
                "across ranks themselves. Use the plain module on every rank (same initial "
                "parameters) and a closure computing the mean loss of this rank's shard"
            )

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _reduce_blocks(
    optimizer: Any,
    group: Any,
    loss: Tensor | None,
    blocks: Sequence[Sequence[Tensor] | None],
    samples: int,
    error: BaseException | None,
    like: Sequence[Tensor],
    what: str,
) -> tuple[Tensor, list[tuple[Tensor, ...] | None]]:
    """Weighted mean over ranks of ``loss`` and each block, plus status, in one all-reduce.

    Layout: ``[failed (W) | non-finite (W) | unknown-count | weight | w*loss | w*blocks]``
    where ``W`` is the world size and ``w`` this rank's sample count (1 when unknown).
    A failed rank contributes zeros and its flag.

    Raises:
        RankFailedError: on ranks that did not fail, when another rank failed.
        ValueError: if some ranks report sample counts and others do not.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    dtype = _buffer_dtype(like[0])
    device = like[0].device
    sizes = [sum(p.numel() for p in like) if b is not None else 0 for b in blocks]
    head = torch.zeros(2 * world + 3, dtype=dtype, device=device)
    if error is not None:
        head[rank] = 1.0
        body = torch.zeros(sum(sizes), dtype=dtype, device=device)
    else:
        w = float(samples) if samples > 0 else 1.0
        head[2 * world] = 0.0 if samples > 0 else 1.0
        head[2 * world + 1] = w
        head[2 * world + 2] = loss.detach().to(dtype) * w
        head[world + rank] = (~torch.isfinite(loss.detach())).to(dtype)
        flats = [_flatten_dense_tensors([t.detach().to(dtype) for t in b]) * w
                 for b in blocks if b is not None]
        body = torch.cat(flats) if flats else torch.zeros(0, dtype=dtype, device=device)
    buf = _all_reduce_sum(torch.cat([head, body]), group)
    head, body = buf[: 2 * world + 3], buf[2 * world + 3:]
    failed = torch.nonzero(head[:world]).flatten().tolist()  # one sync per evaluation
    if failed:
        if error is not None:
            error.add_note(f"(rank {rank} of {world}; every other rank raised RankFailedError)")
            raise error
        raise RankFailedError(
            f"rank(s) {failed} of {world} raised while {what}; no rank takes this step "
            "(see the failing rank's own traceback)"
        )
    unknown = int(head[2 * world])
    if unknown not in (0, world):
        raise ValueError(
            f"{unknown} of {world} ranks do not report their sample count: return per-sample "
            "losses (or set samples_per_evaluation) on every rank, or on none"
        )
    total = head[2 * world + 1]
    _STATE.fraction = (float(samples) if samples > 0 else 1.0) / float(total)
    mean_loss = (head[2 * world + 2] / total).to(loss.dtype)
    out: list[tuple[Tensor, ...] | None] = []
    offset = 0
    for b, n in zip(blocks, sizes, strict=True):
        if b is None:
            out.append(None)
            continue
        flat = body[offset: offset + n] / total
        offset += n
        out.append(tuple(t.to(p.dtype) for t, p in
                         zip(_unflatten_dense_tensors(flat, list(like)), like, strict=True)))
    return mean_loss, out


def _check_supported(optimizer: Any) -> None:
    groups = getattr(optimizer, "param_groups", [])
    if any(g.get("hessian_fraction") is not None for g in groups):
        raise ValueError(
            "NewtonCG(hessian_fraction=...) draws its Hessian sub-sample outside the evaluation "
            "that is averaged across ranks; with a process group pass hessian_closure on a "
            "sub-batch of each shard instead"
        )
    if any(g.get("backend") == "complex-step" for g in groups):
        raise ValueError(
            "NewtonKrylov(backend='complex-step') is not data-parallel; with a process group "
            "use backend='autograd'"
        )


# ----------------------------------------------------------------------------- operators
class DataParallelOperator(CurvatureOperator):
    """``v -> sum_r (n_r / N) B_r v``: a rank-local operator averaged by one all-reduce.

    Other attributes (``loss``, ``outputs``, ...) are read from the local operator;
    ``gradient`` (when given) is the averaged gradient.
    """

    def __init__(self, local: CurvatureOperator, group: Any, fraction: float,
                 gradient: tuple[Tensor, ...] | None = None, loss: Tensor | None = None):
        super().__init__(local.params)
        self.local = local
        self.group = group
        self.fraction = fraction
        if gradient is not None:
            self.gradient = gradient
        if loss is not None:
            self.loss = loss

    def __getattr__(self, name: str) -> Any:
        if name == "local":  # not yet set: avoid recursing
            raise AttributeError(name)
        return getattr(self.local, name)

    def _matvec(self, vec: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        hv = tuple(self.local.matvec(vec))
        dtype = _buffer_dtype(hv[0])
        flat = _flatten_dense_tensors([h.detach().to(dtype) for h in hv]) * self.fraction
        flat = _all_reduce_sum(flat, self.group)
        return tuple(t.to(h.dtype) for t, h in
                     zip(_unflatten_dense_tensors(flat, list(hv)), hv, strict=True))

    def free(self) -> None:
        release = getattr(self.local, "free", None)
        if callable(release):
            release()


def data_parallel_operator(optimizer: Any, op: CurvatureOperator) -> CurvatureOperator:
    """``op`` averaged across ranks (weighted like the last evaluation), or ``op`` alone."""
    group = process_group_of(optimizer)
    if group is None or isinstance(op, DataParallelOperator):
        return op
    return DataParallelOperator(op, group, getattr(_STATE, "fraction", None)
                                or 1.0 / dist.get_world_size(group))


# ----------------------------------------------------------------------------- evaluations
def _run_local(optimizer: Any, fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """Run this rank's part of an evaluation; its start-point watch is deferred until the
    values are averaged (every rank must agree on undoing the step)."""
    optimizer._start_watch_deferred = True
    try:
        with _refuse_ddp():
            return fn(), None
    except Exception as exc:  # reported to every rank by the all-reduce, re-raised after it
        return None, exc
    finally:
        optimizer._start_watch_deferred = False


def _before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    """Global ``torch.optim`` step pre-hook: refuse what is not data-parallel, up front.

    Runs before every optimizer's ``step``; does nothing for an optimizer without a
    process group (one ``getattr`` and ``dist.is_initialized()``).
    """
    if not hasattr(optimizer, "evaluate") or process_group_of(optimizer) is None:
        return
    _check_supported(optimizer)


register_optimizer_step_pre_hook(_before_step)


def _write_back_grads(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """Put the averaged gradient into ``.grad`` after a torch.optim-style closure.

    Its ``backward()`` left this rank's gradient there; as with
    ``DistributedDataParallel``, ``.grad`` then holds the average on every rank.
    """
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if p.grad is not None:
                p.grad.copy_(g)


def data_parallel_evaluate(method: Callable) -> Callable:
    """Decorate :meth:`SecondOrderOptimizer.evaluate` to average its result across ranks.

    The start-point watch (:meth:`~secondorder.optim.base.SecondOrderOptimizer.watch_start`)
    sees the averaged loss, gradient and products, identical on every rank, so a NaN on one
    shard undoes the step on all ranks alike. A torch.optim-style closure (it ran
    ``backward()``; :class:`~secondorder.optim.closure_convention.BackwardWatch`) has its
    ``.grad`` averaged too.
    """

    @functools.wraps(method)
    def evaluate(self, closure, *, grad: bool = True, create_graph: bool = False,
                 check_finite: bool = False, **kwargs: Any):
        group = process_group_of(self)
        if group is None:
            return method(self, closure, grad=grad, create_graph=create_graph,
                          check_finite=check_finite, **kwargs)
        params = self.params()
        watch = BackwardWatch(closure, params)  # records a torch.optim-style closure
        ev, error = _run_local(self, lambda: method(self, watch, grad=grad,
                                                    create_graph=create_graph, **kwargs))
        loss, (grads,) = _reduce_blocks(
            self, group, None if ev is None else ev.loss,
            [None if not grad else (params if ev is None else ev.grads)],
            0 if ev is None else ev.samples, error, params, "evaluating the closure")
        hessian = ev.hessian
        if hessian is not None:
            hessian = DataParallelOperator(hessian, group, _STATE.fraction, grads, loss)
        if grads is not None and watch.ran_backward:
            _write_back_grads(params, grads)
        self.watch_start(loss, grads or (), hessian)
        if check_finite and not bool(torch.isfinite(loss)):
            raise NonFiniteLossError(f"the averaged loss is not finite: {loss.item()}")
        return dataclasses.replace(ev, loss=loss, grads=grads, hessian=hessian)

    return evaluate


def data_parallel_hessian_free_evaluate(method: Callable) -> Callable:
    """Decorate ``HessianFree._evaluate`` (loss, gradient, Fisher diagonal, Hessian)."""

    @functools.wraps(method)
    def evaluate(self, closure, *, fisher: bool, create_graph: bool):
        group = process_group_of(self)
        if group is None:
            return method(self, closure, fisher=fisher, create_graph=create_graph)
        before = self.counters.loss_samples  # the method adds this rank's sample count
        out, error = _run_local(self, lambda: method(self, closure, fisher=fisher,
                                                     create_graph=create_graph))
        params = self.params()
        loss, grads, diag, hessian = out if out is not None else (None, params, params, None)
        samples = self.counters.loss_samples - before if out is not None else 0
        loss, (grads, diag) = _reduce_blocks(
            self, group, loss, [grads, diag if fisher else None], samples, error, params,
            "evaluating the closure")
        if hessian is not None:
            hessian = DataParallelOperator(hessian, group, _STATE.fraction, grads, loss)
        self.watch_start(loss, (*grads, *(diag or ())), hessian)
        return loss, grads, diag, hessian

    return evaluate
