"""The protocol every secondorder optimizer shares.

A :class:`SecondOrderOptimizer` is a :class:`torch.optim.Optimizer` whose ``step`` takes a
closure that **re-evaluates the model on the current batch and returns the loss without
calling backward**::

    def closure():
        return criterion(model(inputs), targets)

    optimizer.step(closure)

The optimizer differentiates the loss itself (with ``create_graph`` only when it needs
curvature) and drops every graph before ``step`` returns, so memory after 100 steps equals
memory after one. The closure may also return per-sample losses (a 1-D tensor, e.g. from
``reduction="none"``): they are averaged, and their count is used for the sample counters.
A closure in the torch.optim convention (``zero_grad(); loss.backward(); return loss``) also
works where only the gradient is needed; see :mod:`secondorder.optim.closure_convention`.

Costs are counted here, once, for every optimizer: loss evaluations, gradients and
Hessian(-like) vector products, each also in samples (see :class:`CostCounter`).

**Non-finite values never reach the parameters or the state.** Every ``step`` of every
subclass runs as a transaction (:class:`StepTransaction`, installed by
``__init_subclass__``): when the loss or gradient at the point the step starts from, or a
Hessian-vector product of an operator built there, is NaN or infinite, or when the step
raises any exception, the parameters and ``self.state`` are put back exactly as they were
before the step (the cost counters aside: they record the work done) and the step raises
(:class:`~secondorder.errors.NonFiniteLossError` for a non-finite value). Catch it to skip
a bad batch: the optimizer can go on as if that step had not been called (in a step of
several iterations, as if that iteration had not run: the ones before it stand). Points a step
tries *beyond* its start (line-search or trust-region trials) may be non-finite: the
algorithm rejects them, as documented by each optimizer. The start is every evaluation
before the step first moves the parameters (:meth:`SecondOrderOptimizer.set_params`,
:meth:`SecondOrderOptimizer.add_to_params`). The transaction costs one copy of the
parameters per step, plus a copy of the state tensors the step writes into in place
(``state_mutated_in_place``: AdaHessian's two moments; none for the other optimizers, whose
steps replace their state tensors instead of writing into them), and one host sync.

**Iterations per step.** :class:`~secondorder.optim.LBFGS`,
:class:`~secondorder.optim.NewtonCG` and :class:`~secondorder.optim.TrustRegion` take
``max_iter`` (default 1) and run up to that many iterations in one ``step``, reusing the
closure (``torch.optim.LBFGS``'s convention); ``step(closure, callback=f)`` calls ``f()``
after each iteration that moved the parameters (TrustRegion: each iteration, a rejected
trial included), and ``f`` returning ``True`` ends the step there (for a full-batch solve
to stop at a target, as ``scipy.optimize.minimize``'s and pytorch-minimize's callbacks do).
The step then behaves as that many one-iteration steps: the same iterates, and each
iteration is a transaction of its own (:meth:`SecondOrderOptimizer.commit_iteration`). An
iteration whose start is not finite (its loss, gradient or a Hessian-vector product there)
raises :class:`~secondorder.errors.NonFiniteLossError` and is undone alone; the iterations
before it stand, and so does every iteration the callback has seen, if the callback raises
(Ctrl-C in a long solve keeps the progress). The callback runs after the iteration's check:
it never sees an iterate that is then undone (except the landing of a fixed step,
``line_search=None``, which the next iteration checks as the next step would). A callback may
write the parameters (in place, so that their versions change, e.g. a projection under
``torch.no_grad()``); the write stands like an iteration: NewtonCG and TrustRegion evaluate
anew at the next iteration, and LBFGS ends the step (the next step evaluates anew). It must
not change the set of parameters (``requires_grad``, param groups); changes to the groups'
hyperparameters (an LR scheduler's step) take effect at the next step. Under
``torch.distributed`` the callback must return the same answer on every rank. What this
saves is the per-step cost, the step hooks and the group checks: 20-50 microseconds per
iteration on a CPU problem of a few parameters (``benchmarks/full_batch_solvers.py``).

**Low precision.** With float16 or bfloat16 parameters the closure, the gradient and the
Hessian-vector products run in the parameters' dtype. The methods that accumulate small
squares or ratios (trust region and ARC with their adaptive norms, Levenberg-Marquardt and
LSCG through :func:`~secondorder.optim.curvature_source.local_model`, Hessian-free, and
AdaHessian's moments) keep them, their Krylov scalars and their steps in
:func:`working_dtype`, at least float32, as mixed-precision training does; a step is
rounded to the parameters' dtype when it is applied. The line-search methods work in the
parameters' dtype. Every optimizer trains a float16 and a bfloat16 model about as well as
a float32 one (``tests/optim/test_every_optimizer.py``); Newton-Krylov's complex-step
backend refuses them at construction.

``state_dict()`` holds only tensors, numbers, strings, tuples, lists and dicts (the cost
counters as a plain dict), so ``torch.load`` with its default ``weights_only=True`` reads
a saved one.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.attention import double_differentiable_attention
from secondorder.curvature.engine_grad import engine_grad
from secondorder.curvature.operators import CurvatureOperator, HessianOperator
from secondorder.errors import NonFiniteLossError
from secondorder.optim.closure_convention import BackwardWatch, grads_from_attribute
from secondorder.optim.distributed import data_parallel_evaluate
from secondorder.optim.line_objective import versions
from secondorder.optim.step_transaction import StepTransaction, transactional

Closure = Callable[[], Tensor]
_NO_CONTEXT = contextlib.nullcontext()  # reusable: no state

__all__ = [
    "Closure",
    "CostCounter",
    "Evaluation",
    "SecondOrderOptimizer",
    "StepTransaction",
    "needs_working_precision",
    "to_working_precision",
    "working_dtype",
]


@dataclass
class CostCounter:
    """Cumulative work done by an optimizer.

    ``*_samples`` count the samples each operation touched: a gradient on a batch of
    ``b`` samples adds 1 to ``gradients`` and ``b`` to ``gradient_samples``. Samples are
    known when the closure returns per-sample losses, or from
    :attr:`SecondOrderOptimizer.samples_per_evaluation`; otherwise they stay 0.
    """

    loss_evals: int = 0
    gradients: int = 0
    hvps: int = 0
    loss_samples: int = 0
    gradient_samples: int = 0
    hvp_samples: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Evaluation:
    """Result of :meth:`SecondOrderOptimizer.evaluate`.

    Attributes:
        loss: the mean loss, detached, 0-dim.
        grads: the gradient (detached), one tensor per trainable parameter; ``None`` when
            no gradient was asked for.
        samples: number of samples the closure evaluated (0 when unknown).
        hessian: a :class:`HessianOperator` at this point when ``create_graph`` was asked
            for; each product is counted as one HVP. Call ``hessian.free()`` when done.
    """

    loss: Tensor
    grads: tuple[Tensor, ...] | None
    samples: int
    hessian: HessianOperator | None = None

    def is_finite(self) -> bool:
        """Whether loss and gradient are finite (one host sync)."""
        ok = torch.isfinite(self.loss)
        if self.grads is not None:
            ok = ok & tl.all_finite(self.grads)
        return bool(ok)


def _to_device(obj: Any, device: torch.device | None) -> Any:
    """Move every tensor inside dicts, lists, tuples and plain objects to ``device``."""
    if device is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [_to_device(v, device) for v in obj]
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in vars(obj).items():
            setattr(obj, k, _to_device(v, device))
    return obj


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a solver works in for tensors of ``dtype``: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def to_working_precision(vec: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``vec`` in :func:`working_dtype` (the same tensors when already float32/float64)."""
    return tuple(v.to(working_dtype(v.dtype)) for v in vec)


def needs_working_precision(params: Sequence[Tensor]) -> bool:
    """Whether a parameter is in a dtype below float32 (float16, bfloat16)."""
    return any(working_dtype(p.dtype) != p.dtype for p in params)


class SecondOrderOptimizer(torch.optim.Optimizer):
    """Base class: closure protocol, differentiation, parameter access, cost counters.

    ``step(closure)`` takes a closure that re-evaluates the model and returns the loss (no
    backward; torch.optim's closures work too: :mod:`secondorder.optim.closure_convention`)
    and returns the loss before the step (detached). Subclasses implement it with
    :meth:`evaluate`, :meth:`params`,
    :meth:`set_params` / :meth:`add_to_params`, and keep state that spans all groups (a
    quasi-Newton memory, a trust radius) in ``self.state["global"]``, which
    ``state_dict()`` round-trips. Per-group hyperparameters are read from
    ``self.param_groups``; :meth:`group_of` maps each trainable tensor to its group.

    Every ``step`` defined by a subclass is made a :class:`StepTransaction` (module
    docstring): a subclass only has to evaluate through :meth:`evaluate` (or
    :meth:`call_closure` and :meth:`watch_start`) and move through :meth:`set_params` /
    :meth:`add_to_params`, and keep anything outside ``self.state`` that a step changes in
    :meth:`extra_state`.

    Capabilities are class attributes (read by the benchmark harness and by callers that
    must know what to pass to ``step``; a subclass sets the ones that apply):

    * :attr:`NEEDS_CURVATURE`: ``step`` takes Hessian (or Gauss-Newton) products, so the
      closure's loss must be twice differentiable and a step costs more than a gradient.
    * :attr:`SUPPORTS_GAUSS_NEWTON`: ``step`` accepts ``ggn_closure=`` (a callable returning
      a :class:`~secondorder.curvature.operators.CurvatureOperator`) and uses it when the
      optimizer is configured with ``curvature="gauss_newton"``.

    Attributes:
        samples_per_evaluation: samples per closure call, used for the sample counters when
            the closure returns a scalar (``None``: unknown).
    """

    NEEDS_CURVATURE: ClassVar[bool] = False
    SUPPORTS_GAUSS_NEWTON: ClassVar[bool] = False
    _transaction: StepTransaction | None = None
    # set by secondorder.optim.distributed while a rank evaluates its shard: the rank-averaged
    # values are watched afterwards instead, so that every rank agrees on the outcome
    _start_watch_deferred: bool = False
    #: Keys of ``self.state`` entries (per-parameter or nested in ``state["global"]``)
    #: whose tensors ``step`` writes into in place: the step transaction clones those and
    #: keeps the others by reference (:class:`StepTransaction`). ``None``, the default for
    #: a subclass that does not say, clones every tensor of the state at every step.
    state_mutated_in_place: frozenset[str] | None = None
    #: ``True`` when ``step`` changes ``self.state`` only by assigning to (or removing)
    #: entries of its per-key dicts (``state["global"]``, a parameter's dict), never by
    #: changing a list or dict nested in them (it replaces those instead), and writes into
    #: no state tensor (``state_mutated_in_place`` empty). The step transaction's snapshot
    #: is then a shallow copy of each per-key dict: one dict copy per step (or per
    #: iteration), however long the state. Under ``StepTransaction.check_in_place`` (on in
    #: the test suite) a step that breaks the promise raises ``AssertionError``. A subclass
    #: does not inherit it (each class makes the promise for its own step), and an instance
    #: may withdraw it (``TrustRegion`` with a user's norm, whose state it cannot vouch for).
    state_containers_replaced: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "state_containers_replaced" not in cls.__dict__:  # a promise is not inherited:
            cls.state_containers_replaced = False  # a subclass makes it for its own step
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "transactional", False):
            cls.step = transactional(step)  # type: ignore[method-assign]

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]
    ):
        super().__init__(params, defaults)
        self.samples_per_evaluation: int | None = None
        self._transaction = None

    # ----------------------------------------------------------------- transactions
    def extra_state(self) -> Any:
        """State a step changes outside ``self.state`` (e.g. a random generator's state).

        A step that fails is undone by restoring it with :meth:`load_extra_state`; the
        default is ``None`` (nothing).
        """
        return None

    def load_extra_state(self, extra: Any) -> None:
        """Restore what :meth:`extra_state` returned."""

    def watch_start(self, loss: Tensor | None, grads: Sequence[Tensor | None] = (),
                    hessian: CurvatureOperator | None = None) -> None:
        """Check ``loss``, ``grads`` and every product of ``hessian`` (a Hessian, GGN or any
        curvature operator built at the step's start) at the step's start.

        Called by :meth:`evaluate` for each evaluation made before the step first moves the
        parameters; an optimizer that differentiates its closure itself calls it too. A
        non-finite value makes the step raise and be undone (module docstring). Outside a
        step it does nothing. Under ``torch.distributed`` it sees the rank-averaged values
        (:mod:`secondorder.optim.distributed` calls it after averaging).
        """
        tr = self._transaction
        if tr is None or not tr.at_start or self._start_watch_deferred:
            return
        tr.watch([loss, *grads])
        if hessian is not None:
            # weak references: no cycle through the operator, which holds the graph, and
            # no snapshot kept alive by an operator that outlives the step
            op_ref, tr_ref, product = weakref.ref(hessian), weakref.ref(tr), type(hessian)._matvec

            def watched_product(vec: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
                out = product(op_ref(), vec)
                current = tr_ref()
                if current is not None and self._transaction is current:
                    current.watch(out)
                return out

            hessian._matvec = watched_product  # type: ignore[method-assign]

    def commit_iteration(self) -> None:
        """End an iteration of a step that runs several (``max_iter``, "iterations per step"
        in the module docstring), as a step of its own would end.

        Raises :class:`~secondorder.errors.NonFiniteLossError`, undoing this iteration only,
        when its start was not finite; otherwise the iteration stands, and what follows (a
        callback, the next iteration) runs in a new transaction: a non-finite start or an
        exception there undoes nothing before it. Call it before a callback sees the
        iterate. Outside a step it does nothing.
        """
        if self._transaction is not None:
            self._transaction.check_start(self)
            self._transaction = StepTransaction(self)

    def run_iterations(self, iteration: Callable[[], tuple[Tensor, bool]], max_iter: int,
                       callback: Callable[[], Any] | None) -> Tensor:
        """Run up to ``max_iter`` iterations of a step ("iterations per step" in the module
        docstring): ``iteration()`` returns the loss at its start and whether it moved the
        parameters (the step ends when it did not). Each iteration that is followed by
        another or by the callback is committed (:meth:`commit_iteration`) before the
        callback (:meth:`call_iteration_callback`) runs.

        Returns:
            The loss at the start of the first iteration (what ``step`` returns).
        """
        first_loss = None
        for it in range(max_iter):
            loss, moved = iteration()
            if first_loss is None:
                first_loss = loss
            if not moved:
                break
            if callback is not None or it + 1 < max_iter:  # (the last: the step's own check)
                self.commit_iteration()
            if callback is not None and self.call_iteration_callback(callback)[0]:
                break
        return first_loss

    def call_iteration_callback(self, callback: Callable[[], Any]) -> tuple[bool, bool]:
        """Call a step's ``callback`` after :meth:`commit_iteration`.

        Returns:
            ``(stop, wrote)``: whether it returned ``True``, and whether it wrote the
            parameters (their in-place versions changed). A write stands like the iteration
            before it: what follows runs in a new transaction, which an exception later in
            the step does not undo past.
        """
        before = versions(self.params())
        stop = bool(callback())
        wrote = versions(self.params()) != before
        if wrote:
            self.commit_iteration()
        return stop, wrote

    def restart_step(self) -> None:
        """The step goes on from the current parameters as if it had just started there.

        For an optimizer that rejects its own previous, unchecked move (a fixed step that
        landed where the loss is not finite) and goes back to its last checked point: the
        evaluations made at the rejected point no longer count for the start-point check.
        """
        if self._transaction is not None:
            self._transaction.restart()

    def _moved(self) -> None:
        if self._transaction is not None:
            self._transaction.at_start = False

    # ----------------------------------------------------------------- kept evaluation
    #: An evaluation with its Hessian graph that a full-batch step keeps for the next step
    #: to start from, and the parameter versions it belongs to (``TrustRegion`` and
    #: ``NewtonCG`` with ``full_batch=True``). Not optimizer state (it holds a graph); a
    #: class default, so a deep-copied or unpickled optimizer starts without one.
    _kept_evaluation: tuple[Evaluation, tuple[int, ...]] | None = None

    def keep_evaluation(self, evaluation: Evaluation) -> None:
        """Keep ``evaluation``, made at the current parameters, for the next step."""
        self.discard_kept_evaluation()
        self._kept_evaluation = (evaluation, versions(self.params()))

    def take_kept_evaluation(self) -> Evaluation | None:
        """The kept evaluation when the parameters have not been written since (their
        in-place versions), else ``None``; consumed either way (a graph not returned is
        freed)."""
        stored, self._kept_evaluation = self._kept_evaluation, None
        if stored is None:
            return None
        if stored[1] == versions(self.params()):
            return stored[0]
        if stored[0].hessian is not None:
            stored[0].hessian.free()
        return None

    def discard_kept_evaluation(self) -> None:
        """Free the kept evaluation's graph and forget it (a rolled-back step calls this)."""
        stored, self._kept_evaluation = self._kept_evaluation, None
        if stored is not None and stored[0].hessian is not None:
            stored[0].hessian.free()

    # ----------------------------------------------------------------- parameters
    def all_params(self) -> tuple[Tensor, ...]:
        """The tensors of all groups that require grad (also those a method leaves out)."""
        # a list comprehension, not a generator: called several times per step
        return tuple([p for g in self.param_groups for p in g["params"] if p.requires_grad])

    def params(self) -> tuple[Tensor, ...]:
        """The trainable tensors of all groups, in group order (those requiring grad)."""
        return tuple([p for g in self.param_groups for p in g["params"] if p.requires_grad])

    def group_of(self) -> tuple[dict[str, Any], ...]:
        """The param group of each tensor of :meth:`params`, in the same order."""
        return tuple(g for g in self.param_groups for p in g["params"] if p.requires_grad)

    def params_at_start(self) -> tuple[Tensor, ...]:
        """Detached copies of :meth:`params` as they are now, for a step to go back to.

        While the parameters have not been written since the step began, these are the
        step transaction's own copies (no new copy: one parameter-sized copy less per
        step); otherwise fresh ones. Read them, never write into them.
        """
        params = self.params()
        tr = self._transaction
        copies = None if tr is None else tr.copies_if_unchanged(params)
        return copies if copies is not None else tl.clone(params)

    def set_params(self, values: Sequence[Tensor]) -> None:
        """Copy ``values`` into the trainable parameters."""
        self._moved()
        prev = torch.is_grad_enabled()  # torch.no_grad() without its Python-level object
        torch._C._set_grad_enabled(False)
        try:
            torch._foreach_copy_(list(self.params()), list(values))
        finally:
            torch._C._set_grad_enabled(prev)

    def add_to_params(self, direction: Sequence[Tensor], alpha: float | Tensor = 1.0) -> None:
        """``params += alpha * direction`` in place (``alpha`` may be a 0-dim tensor)."""
        self._moved()
        ps = list(self.params())
        prev = torch.is_grad_enabled()  # torch.no_grad() without its Python-level object
        torch._C._set_grad_enabled(False)
        try:
            if isinstance(alpha, Tensor):
                torch._foreach_add_(ps, torch._foreach_mul(list(direction), alpha))
            else:
                torch._foreach_add_(ps, list(direction), alpha=alpha)
        finally:
            torch._C._set_grad_enabled(prev)

    def set_params_along(self, x0: Sequence[Tensor], direction: Sequence[Tensor],
                         t: float) -> None:
        """``params = x0 + t * direction`` in place: :meth:`set_params` then
        :meth:`add_to_params` (the same two writes), with one parameter lookup and one
        grad-mode switch (a line search moves the parameters once per trial)."""
        self._moved()
        ps = list(self.params())
        prev = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            torch._foreach_copy_(ps, list(x0))
            torch._foreach_add_(ps, list(direction), alpha=t)
        finally:
            torch._C._set_grad_enabled(prev)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict`` with the cost counters as a plain dict.

        Every value is a tensor, number, string, ``None``, tuple, list or dict, so
        ``torch.load`` reads a saved state dict with its default ``weights_only=True``.
        """
        sd = super().state_dict()
        counters = sd["state"].get("counters")
        if isinstance(counters, CostCounter):
            sd["state"]["counters"] = counters.as_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; state that spans all groups is copied and moved to the params' device.

        ``torch.optim.Optimizer`` casts per-parameter state but stores other entries (here
        ``"global"`` and ``"counters"``) by reference; this copies them, so two optimizers
        never share a quasi-Newton memory, and moves their tensors next to the parameters
        (a CPU checkpoint loads into a CUDA optimizer). Per-parameter state saved in the
        parameter's :func:`working_dtype` (float32 moments of float16 parameters) keeps that
        dtype, which ``torch.optim.Optimizer`` would round to the parameter's.
        """
        super().load_state_dict(state_dict)
        params = self.params()
        device = params[0].device if params else None
        for key in list(self.state):
            if not isinstance(key, Tensor):
                self.state[key] = _to_device(copy.deepcopy(self.state[key]), device)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        all_params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, all_params, strict=True):
            saved = state_dict["state"].get(i)
            if not (isinstance(saved, dict) and p.is_floating_point()):
                continue
            for k, v in saved.items():
                if (isinstance(v, Tensor) and v.dtype != p.dtype
                        and v.dtype == working_dtype(p.dtype)):
                    self.state[p][k] = v.to(device=p.device, copy=True)

    # ----------------------------------------------------------------- counters
    @property
    def counters(self) -> CostCounter:
        """Cumulative cost counters (kept in the state; ``state_dict()`` saves them as a
        plain dict of ints, which loading turns back into a :class:`CostCounter`)."""
        c = self.state.get("counters")
        if not isinstance(c, CostCounter):
            c = CostCounter(**c) if isinstance(c, dict) else CostCounter()
            self.state["counters"] = c
        return c

    def count_hvps(self, n: int = 1, samples: int = 0) -> None:
        """Record ``n`` Hessian(-like) vector products on ``samples`` samples each."""
        c = self.counters
        c.hvps += n
        c.hvp_samples += n * samples

    # ----------------------------------------------------------------- evaluation
    @data_parallel_evaluate  # averages across ranks when torch.distributed is initialized
    def evaluate(
        self,
        closure: Closure,
        *,
        grad: bool = True,
        create_graph: bool = False,
        check_finite: bool = False,
    ) -> Evaluation:
        """Call the closure and differentiate it.

        An evaluation made before the step first moves the parameters is the start point:
        it is watched (:meth:`watch_start`, module docstring).

        Args:
            closure: re-evaluates the model and returns the loss (no backward), or, in the
                torch.optim convention, also runs backward; its ``.grad`` is then used.
            grad: compute the gradient.
            create_graph: keep the gradient's graph and return a counted
                :class:`HessianOperator` in ``Evaluation.hessian``.
            check_finite: raise :class:`NonFiniteLossError` on a NaN/Inf loss (one sync).

        Returns:
            An :class:`Evaluation`.

        Raises:
            ValueError: if no parameter requires grad, the closure returns something other
                than a tensor with one element or a 1-D tensor of per-sample losses, (with
                ``grad``) its loss does not require grad, or ``create_graph`` is asked of a
                closure that ran backward (torch.optim convention).
            NonFiniteLossError: if ``check_finite`` and the loss is not finite.
        """
        params = self.params()
        watch = BackwardWatch(
            closure, params, graph_needed_by=type(self).__name__ if create_graph else None
        )
        # A graph kept for HVPs needs attention that autograd can differentiate twice.
        attention = double_differentiable_attention() if create_graph else _NO_CONTEXT
        prev = torch.is_grad_enabled()  # torch.enable_grad() without its Python object
        torch._C._set_grad_enabled(True)
        try:
            with attention:
                _, loss, samples = self._call_closure(watch, False, params)
                if check_finite and not bool(torch.isfinite(loss.detach())):
                    raise NonFiniteLossError(
                        f"the closure returned a non-finite loss: {loss.item()}"
                    )
                if not grad:
                    self.watch_start(loss)
                    return Evaluation(loss.detach(), None, samples)
                if watch.ran_backward:  # torch.optim-style closure: its backward filled .grad
                    grads = grads_from_attribute(params)
                elif not loss.requires_grad:
                    raise ValueError(
                        "the closure's loss does not require grad: return the loss tensor "
                        "computed from the parameters, inside the closure, without detaching it"
                    )
                else:
                    grads = engine_grad(
                        (loss,), params, create_graph=create_graph, allow_unused=True
                    )
        finally:
            torch._C._set_grad_enabled(prev)
        c = self.counters
        c.gradients += 1
        c.gradient_samples += samples
        hessian = None
        loss = loss.detach()  # (once: the operator, the watch and the result share it)
        if create_graph:
            hessian = HessianOperator.from_gradient(params, grads, loss)
            hessian.on_product = lambda: self.count_hvps(1, samples)
            gs = hessian.gradient
        else:
            gs = tuple(
                torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
            )
        self.watch_start(loss, gs, hessian)
        return Evaluation(loss, gs, samples, hessian)

    def call_closure(
        self, closure: Closure, *, need_grad: bool = True
    ) -> tuple[Tensor, Tensor, int, tuple[Tensor, ...]]:
        """The input checks every optimizer shares, around one closure call (counted).

        Call it under ``torch.enable_grad()`` to differentiate the loss.

        Args:
            closure: re-evaluates the model and returns the loss (no backward).
            need_grad: the loss will be differentiated: it must require grad.

        Returns:
            ``(out, loss, samples, params)``: the closure's output, the mean loss (0-dim,
            with its graph), the number of samples (0 when unknown) and :meth:`params`.

        Raises:
            ValueError: if no parameter requires grad, the closure returns something other
                than a tensor with one element or a 1-D tensor of per-sample losses, or
                ``need_grad`` and its loss does not require grad.
        """
        params = self.params()
        out, loss, samples = self._call_closure(closure, need_grad, params)
        return out, loss, samples, params

    def _call_closure(
        self, closure: Closure, need_grad: bool, params: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor, int]:
        """:meth:`call_closure` with :meth:`params` already at hand."""
        if not params:
            raise ValueError("no parameter requires grad: the optimizer has nothing to optimize")
        out = closure()
        loss, samples = self._reduce(out)
        c = self.counters
        c.loss_evals += 1
        c.loss_samples += samples
        if need_grad and not loss.requires_grad:
            raise ValueError(
                "the closure's loss does not require grad: return the loss tensor "
                "computed from the parameters, inside the closure, without detaching it"
            )
        return out, loss, samples

    def _reduce(self, out: Tensor) -> tuple[Tensor, int]:
        if not isinstance(out, Tensor):
            raise ValueError(
                f"the closure must return the loss tensor, got {type(out).__name__}; "
                "secondorder closures return the loss and do not call backward()"
            )
        if out.dim() == 1:
            return out.mean(), out.numel()
        if out.numel() != 1:
            raise ValueError(
                f"the closure returned a tensor of shape {tuple(out.shape)}; return a scalar "
                "loss or a 1-D tensor of per-sample losses"
            )
        return (out if out.dim() == 0 else out.reshape(())), int(self.samples_per_evaluation or 0)
