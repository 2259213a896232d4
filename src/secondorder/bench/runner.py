"""One benchmark run: a problem, an optimizer and its hyperparameters, a seed, a budget.

The run builds ``problem.make_model(seed)``, draws training batches with a
``torch.Generator`` seeded by ``seed`` (reshuffled each pass, DeepOBS-style), and steps
the optimizer with the closure protocol its registry entry names. Costs are counted by
:class:`~secondorder.bench.accounting.CostMeter`.

At step 0, ``evals_per_epoch`` times per pass through the training data and at the end,
it records train/validation/test loss (mean of the per-sample losses over the whole split)
and accuracy, the wall time spent **training only** (evaluation excluded, as in AlgoPerf),
and the cumulative counts.

Outcomes (``RunResult.status``): ``finished``; ``diverged`` when a training loss is NaN or
infinite or exceeds ``divergence_factor`` times the initial training loss (what was recorded
so far is kept, plus the diverging point); ``failed`` when the optimizer raises (the message
is kept). Neither ever propagates an exception to the sweep. The check after each step reads
the batch loss at the parameters the step started from: the value ``step`` returns (the
torch.optim convention; every secondorder optimizer returns it, also when it reused a cached
start without calling the closure), else the step's *first* closure value. A trust region
or ARC also evaluates trial points it then rejects (restoring the parameters), and such a
trial's loss, however large, is no loss of the model. A step
that does move the parameters somewhere bad is caught at the next step's start, or by the
full training loss of the evaluation that ends the run.

Curvature closures: optimizers that declare ``SUPPORTS_GAUSS_NEWTON`` and are configured
with ``curvature="gauss_newton"`` (HessianFree by default; TrustRegion and AdaptiveCubic
when asked) get :func:`make_ggn_closure` on the current batch, counted by the harness (see
:mod:`~secondorder.bench.accounting`).

Budgets (:class:`Budget`, any combination, the first reached stops the run): ``epochs`` are
passes of the data iterator through the training set (one full-batch step = one epoch);
``backprops`` are harness-measured backprop-equivalents (see
:mod:`~secondorder.bench.accounting`); ``seconds`` are training wall time. The budget is
checked after every step on the host clock (no device sync), so a run stops at the end of
the first step that exhausts it: within one step of a time budget.

Evaluations of long time-budgeted runs are thinned (``min_eval_gap``): a cheap method that
trains 20 times the epochs its evaluation schedule was made for keeps a curve of about
``T / min_eval_gap + log(T / t_1) / log(1 + EVAL_RELATIVE_GAP)`` points (``t_1``: the time
of its first evaluation after step 0), dense where times are short and time to target is
read, not thousands.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from secondorder.bench.accounting import CostMeter
from secondorder.bench.models import L2Penalized
from secondorder.bench.registry import OptimizerSpec
from secondorder.curvature.functional import functional_loss, functional_model
from secondorder.curvature.ggn import GGNOperator
from secondorder.curvature.operators import CurvatureOperator, HessianOperator
from secondorder.errors import NonFiniteLossError

__all__ = [
    "EVAL_RELATIVE_GAP",
    "Budget",
    "RunResult",
    "evaluate_split",
    "make_closure",
    "make_ggn_closure",
    "run",
    "uses_ggn_closure",
]


#: With ``min_eval_gap``: a scheduled evaluation also waits for this fraction of the
#: training time of the previous one (relative resolution of times to target).
EVAL_RELATIVE_GAP = 0.1


@dataclass(frozen=True)
class Budget:
    """When a run stops: the first of the given limits reached.

    Raises:
        ValueError: if no limit is given or one is not positive.
    """

    epochs: float | None = None
    backprops: float | None = None
    seconds: float | None = None

    def __post_init__(self):
        given = {k: v for k, v in asdict(self).items() if v is not None}
        if not given:
            raise ValueError("Invalid budget: give epochs, backprops or seconds")
        for k, v in given.items():
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"Invalid budget {k}: {v}; it must be a positive number")

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        status: ``"finished"``, ``"diverged"`` or ``"failed"``.
        measurements: one dict per evaluation (keys of
            :data:`secondorder.bench.store.MEASUREMENT_COLUMNS` plus ``optimizer_counters``).
        error: the exception or divergence message, else ``None``.
    """

    status: str
    measurements: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@torch.no_grad()
def evaluate_split(
    model: nn.Module, problem, split, chunk: int = 4096
) -> tuple[float, float | None]:
    """Mean per-sample loss and accuracy of ``model`` on ``split`` (accuracy ``None`` if the
    problem has none). One host sync per chunk."""
    n = len(split)
    total = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.float64)
    for i in range(0, n, chunk):
        x, y = split.inputs[i:i + chunk], split.targets[i:i + chunk]
        out = model(x)
        total += problem.loss(out, y).double().sum()
        if problem.accuracy is not None:
            correct += problem.accuracy(out, y).double() * len(x)
    loss = float(total) / n
    acc = None if problem.accuracy is None else float(correct) / n
    return loss, acc


def make_closure(spec: OptimizerSpec, model: nn.Module, optimizer, problem, x, y, last: list):
    """The closure of ``spec.protocol`` on the batch ``(x, y)``; its first call stores the
    detached mean loss in ``last[0]`` when that is ``None`` (the runner resets it before each
    step, so it holds the loss at the start of the step, never a rejected trial's).

    A ``"secondorder"`` closure also accepts the parameter tensors: ``closure(ps)`` returns
    the mean batch loss with ``ps`` in place of the model's trainable parameters
    (:func:`~secondorder.curvature.functional_model`), which is what
    ``NewtonKrylov(backend="complex-step")`` evaluates at complex parameters ([Shen] eq. 10).
    """
    if spec.protocol == "torch":
        def closure():
            optimizer.zero_grad()
            loss = problem.loss(model(x), y).mean()
            loss.backward()
            if last[0] is None:
                last[0] = loss.detach()
            return loss
    else:
        output_fn: list = []

        def closure(ps=None):
            if ps is not None:
                if not output_fn:
                    output_fn.append(functional_model(model, x)[0])
                return problem.loss(output_fn[0](ps), y).mean()
            losses = problem.loss(model(x), y)
            if last[0] is None:
                last[0] = losses.detach().mean()
            return losses
    return closure


class BenchCurvature(CurvatureOperator):
    """A curvature operator built by the harness: counted, with the L2 penalty's Hessian.

    ``B v = inner v + weight * mask * v``: ``inner`` is the GGN (or Hessian) operator of
    the batch, ``weight * mask`` the exact Hessian of an
    :class:`~secondorder.bench.models.L2Penalized` model's penalty ``weight/2 ||W||^2``
    (``mask`` selects the penalized tensors; ``weight = 0`` for other models). Each product
    is counted in ``meter`` as one Hessian-vector product on ``samples`` samples.

    Attributes:
        inner: the wrapped operator.
        loss: the inner operator's loss at the point (detached) or ``None``.
        outputs: the inner operator's network outputs (GGN only; optimizers read their
            first dimension as the batch size), else absent.
    """

    def __init__(self, inner: CurvatureOperator, *, meter: CostMeter | None, samples: int,
                 penalty_weight: float = 0.0, penalty_mask: tuple[bool, ...] = ()):
        super().__init__(inner.params)
        self.inner = inner
        self.loss = getattr(inner, "loss", None)
        outputs = getattr(inner, "outputs", None)
        if outputs is not None:
            self.outputs = outputs
        self._meter, self._samples = meter, samples
        self._weight = float(penalty_weight)
        self._mask = penalty_mask

    def _matvec(self, vec: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        out = tuple(self.inner.matvec(vec))
        if self._meter is not None:
            self._meter.count("hvp", self._samples)
        if self._weight == 0.0:
            return out
        return tuple(o + self._weight * v if m else o
                     for o, v, m in zip(out, vec, self._mask, strict=True))

    def free(self) -> None:
        """Release the inner operator's graph."""
        release = getattr(self.inner, "free", None)
        if callable(release):
            release()


def _penalty(model: nn.Module) -> tuple[float, tuple[bool, ...]]:
    """``(weight, mask)`` of an L2-penalized model's penalty over its trainable parameters
    in ``named_parameters`` order (the operators' order), or ``(0, ())``."""
    if not isinstance(model, L2Penalized) or model.weight == 0.0:
        return 0.0, ()
    penalized = {id(p) for p in model.model.parameters()
                 if p.requires_grad and (model.include_bias or p.dim() > 1)}
    return model.weight, tuple(id(p) in penalized for p in model.parameters() if p.requires_grad)


def make_ggn_closure(
    model: nn.Module, problem, inputs: Tensor, targets: Tensor, meter: CostMeter | None = None
) -> Callable[[], CurvatureOperator]:
    """The ``ggn_closure`` the runner passes to Gauss-Newton optimizers, on one batch.

    Each call returns a :class:`BenchCurvature` at the model's current parameters:

    - the generalized Gauss-Newton matrix ``J^T H_L J``
      (:meth:`GGNOperator.from_model <secondorder.curvature.ggn.GGNOperator.from_model>`)
      of the criterion ``mean(problem.loss(outputs, targets))`` -- the mean of the
      problem's per-sample loss, so its scale matches the closure's mean loss;
    - **plus the L2 penalty's Hessian** on :class:`~secondorder.bench.models.L2Penalized`
      models. Their last output column is the penalty ``p = weight/2 ||W||^2``, which the
      per-sample loss adds *linearly*: the output loss has zero curvature in that column,
      so ``J^T H_L J`` alone is the data term's GGN (still PSD) and silently drops the
      penalty's curvature ``weight I`` on ``W`` (a second-order term of the output, which
      the GGN discards). The penalty is part of the objective, not of the network, so
      ``weight * v`` is added on the penalized tensors exactly (the regularized GGN,
      ``J^T H_L J + weight I_W``, PSD, = the Hessian for linear models);
    - on ``"deterministic"`` problems (Rosenbrock, quadratics: the model returns the
      objective and the loss returns it unchanged, so ``H_L = 0`` and the GGN would be 0)
      the natural split is outputs = parameters, output loss = objective, whose GGN is the
      Hessian: a :class:`~secondorder.curvature.operators.HessianOperator` of the loss.

    Costs (module docstring of :mod:`~secondorder.bench.accounting`): the operator's forward
    goes through the model's forward hook; its other passes run on detached copies of the
    parameters, so they are counted here in ``meter``: the setup backward as a gradient,
    each product as one Hessian-vector product on the batch.

    Args:
        model: the trained model.
        problem: the problem (its per-sample ``loss`` and ``tags``).
        inputs: the batch inputs.
        targets: the batch targets.
        meter: the run's cost meter (``None``: nothing counted).

    Returns:
        A function of no argument returning the operator (call its ``free()`` when done;
        the optimizers do).
    """
    samples = int(inputs.shape[0])
    loss_fn = problem.loss

    def criterion(outputs: Tensor, t: Tensor) -> Tensor:
        return loss_fn(outputs, t).mean()

    deterministic = "deterministic" in tuple(getattr(problem, "tags", ()))

    def ggn_closure() -> CurvatureOperator:
        if deterministic:
            inner: CurvatureOperator = HessianOperator(
                *functional_loss(model, criterion, inputs, targets))
        else:
            inner = GGNOperator.from_model(model, criterion, inputs, targets)
        if meter is not None:
            meter.count("gradient", samples)
        weight, mask = _penalty(model)
        return BenchCurvature(inner, meter=meter, samples=samples, penalty_weight=weight,
                              penalty_mask=mask)

    return ggn_closure


def uses_ggn_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer declares ``SUPPORTS_GAUSS_NEWTON`` and is set to Gauss-Newton.

    The capability is the class attribute of
    :class:`~secondorder.optim.base.SecondOrderOptimizer` (``False`` for any other class).
    """
    supports = getattr(type(optimizer), "SUPPORTS_GAUSS_NEWTON", False)
    return supports is True and optimizer.param_groups[0].get("curvature") == "gauss_newton"


def run(
    problem,
    spec: OptimizerSpec,
    hyperparameters: Mapping[str, Any],
    seed: int,
    budget: Budget,
    *,
    evals_per_epoch: int = 1,
    divergence_factor: float = 1e3,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
    min_eval_gap: float = 0.0,
) -> RunResult:
    """Train once and record measurements (module docstring).

    Args:
        problem: a :class:`secondorder.bench.problems.Problem`.
        spec: the optimizer's registry entry.
        hyperparameters: keyword arguments for the optimizer (over ``spec.defaults``).
        seed: model initialization and batch order.
        budget: when to stop.
        evals_per_epoch: evaluations per pass through the training data (at least 1).
        divergence_factor: a training loss above this times the initial one diverges.
        progress: show a tqdm bar over steps.
        on_step: called with the step number after each step (tests use it).
        min_eval_gap: seconds; a scheduled evaluation (every ``1 / evals_per_epoch``
            epoch) is skipped unless the training time since the previous evaluation is at
            least ``min(min_eval_gap, EVAL_RELATIVE_GAP * t_prev)``, ``t_prev`` the training
            time of the previous evaluation (module docstring). ``0`` (default): every
            scheduled evaluation is taken. The evaluation at the end is always taken.

    Returns:
        A :class:`RunResult`; this function does not raise for optimizer failures.

    Raises:
        ValueError: for a bad ``evals_per_epoch`` or ``divergence_factor``.
    """
    if evals_per_epoch < 1:
        raise ValueError(f"Invalid evals_per_epoch: {evals_per_epoch}; it must be >= 1")
    if not divergence_factor > 1:
        raise ValueError(f"Invalid divergence_factor: {divergence_factor}; it must be > 1")
    if not (min_eval_gap >= 0 and math.isfinite(min_eval_gap)):
        raise ValueError(f"Invalid min_eval_gap: {min_eval_gap}; it must be >= 0")
    torch.manual_seed(seed)
    model = problem.make_model(seed)
    train = problem.train
    n = len(train)
    full = problem.full_batch and spec.full_batch
    batch_size = n if full else min(int(problem.batch_size), n)
    steps_per_epoch = math.ceil(n / batch_size)
    eval_every = max(1, steps_per_epoch // evals_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    measurements: list[dict[str, Any]] = []
    result = RunResult("finished", measurements)

    meter = CostMeter(model, train_size=n)
    bar = None
    try:
        try:
            kwargs = dict(hyperparameters)
            if full:
                kwargs.update(spec.full_batch_kwargs)
            if spec.epoch_length_kwarg is not None:
                kwargs[spec.epoch_length_kwarg] = steps_per_epoch
            optimizer = spec.build(model.parameters(), **kwargs)
        except Exception as e:  # noqa: BLE001 -- a bad setting is a failed run, not a crash
            result.status, result.error = "failed", f"{type(e).__name__}: {e}"
            return result
        if spec.protocol == "secondorder" and hasattr(optimizer, "samples_per_evaluation"):
            optimizer.samples_per_evaluation = batch_size
        step_kwargs = {}
        if spec.global_closure:
            step_kwargs["global_closure"] = make_closure(
                spec, model, optimizer, problem, train.inputs, train.targets, [None]
            )
        ggn = spec.protocol == "secondorder" and uses_ggn_closure(optimizer)
        train_time = 0.0
        samples_drawn = 0
        step = 0

        def record(train_loss_hint: float | None = None) -> dict[str, Any]:
            with meter.paused(), torch.no_grad():
                was_training = model.training
                model.eval()
                tr = evaluate_split(model, problem, train)
                va = evaluate_split(model, problem, problem.validation)
                te = evaluate_split(model, problem, problem.test)
                model.train(was_training)
            m = {
                "step": step, "data_epoch": samples_drawn / n, "wall_time": train_time,
                "train_loss": tr[0], "train_acc": tr[1], "val_loss": va[0], "val_acc": va[1],
                "test_loss": te[0], "test_acc": te[1],
            }
            m.update(meter.costs.as_dict())
            m["epoch"] = m.pop("epochs")
            counters = getattr(optimizer, "counters", None)
            if counters is not None and hasattr(counters, "as_dict"):
                m["optimizer_counters"] = counters.as_dict()
            measurements.append(m)
            return m

        initial = record()["train_loss"]
        if not math.isfinite(initial):
            result.status, result.error = "diverged", f"initial training loss is {initial}"
            return result
        threshold = divergence_factor * max(abs(initial), 1e-8)
        loss_now = initial

        def out_of_budget() -> bool:
            if budget.epochs is not None and samples_drawn / n >= budget.epochs - 1e-9:
                return True
            if budget.backprops is not None and meter.costs.backprops >= budget.backprops:
                return True
            return budget.seconds is not None and train_time >= budget.seconds

        def evaluation_due() -> bool:
            previous = measurements[-1]["wall_time"]
            return train_time - previous >= min(min_eval_gap, EVAL_RELATIVE_GAP * previous)

        total_steps = None
        if budget.epochs is not None:
            total_steps = math.ceil(budget.epochs * steps_per_epoch - 1e-9)
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, desc=f"{problem.name}/{spec.name}", leave=False)
        model.train()
        last: list[Tensor | None] = [None]
        perm = torch.randperm(n, generator=gen)
        pos = 0
        while not out_of_budget():
            t0 = time.perf_counter()
            if full:
                x, y = train.inputs, train.targets
            else:
                if pos >= n:
                    perm, pos = torch.randperm(n, generator=gen), 0
                idx = perm[pos:pos + batch_size]
                pos += batch_size
                x, y = train.inputs[idx], train.targets[idx]
            last[0] = None
            closure = make_closure(spec, model, optimizer, problem, x, y, last)
            if ggn:
                step_kwargs["ggn_closure"] = make_ggn_closure(model, problem, x, y, meter)
            try:
                returned = optimizer.step(closure, **step_kwargs)
            except NonFiniteLossError as e:
                train_time += time.perf_counter() - t0
                step += 1
                samples_drawn += len(x)
                result.status, result.error = "diverged", f"{type(e).__name__}: {e}"
                record()
                return result
            except Exception as e:  # noqa: BLE001 -- recorded, never crashes a sweep
                result.status, result.error = "failed", f"{type(e).__name__}: {e}"
                return result
            # the loss at the step's start: what ``step`` returns (torch.optim's convention,
            # and every secondorder optimizer's, also when it reused a cached start and never
            # called the closure), else the step's first closure value, else the last known
            start = returned if isinstance(returned, Tensor) else last[0]
            if start is not None:
                loss_now = float(start.detach().mean())
            train_time += time.perf_counter() - t0
            step += 1
            samples_drawn += len(x)
            if bar is not None:
                bar.update(1)
            if on_step is not None:
                on_step(step)
            if not math.isfinite(loss_now) or loss_now > threshold:
                result.status = "diverged"
                result.error = (
                    f"training loss {loss_now:.4g} at the start of step {step} "
                    f"(initial {initial:.4g}, limit {threshold:.4g})"
                )
                record()
                return result
            if out_of_budget() or (step % eval_every == 0 and evaluation_due()):
                m = record()
                if not math.isfinite(m["train_loss"]) or m["train_loss"] > threshold:
                    result.status = "diverged"
                    result.error = f"training loss {m['train_loss']:.4g} at step {step}"
                    return result
        if not measurements or measurements[-1]["step"] != step:
            record()
        return result
    finally:
        if bar is not None:
            bar.close()
        meter.close()
