"""Per-problem statistics of a sweep: selected settings, two targets, costs to reach them.

:func:`summarize` turns the runs of the database (:func:`~secondorder.bench.analysis.load_records`)
into one :class:`ProblemSummary` per problem, with the selection rule of
:mod:`~secondorder.bench.sweep`. Two targets per problem:

- the **validation target** (:func:`~secondorder.bench.analysis.target_for`): ``v0 + 0.99 (v* -
  v0)``, where ``v*`` is the best tuned first-order method's best validation value (mean
  over seeds) and ``v0`` the mean initial value: a generalization target (AlgoPerf);
- the **training-loss target** (:func:`loss_target`): the lowest training loss a tuned
  first-order method reaches (the mean over seeds of each run's lowest training loss, the
  best method's): an optimization target. Exact solvers, whose optimum may generalize worse
  than the path of an early-stopped first-order method (breast-cancer logistic regression:
  validation accuracy 0.9386 at the optimum, 0.955 along SGD's path), reach it.

A value reaches a target when it is at least as good up to a tolerance (:func:`reaches`):
``|target| * REACH_RTOL + |v0| * REACH_ATOL``, so a target equal to the best value a method
attains counts as reached despite float32 round-off, and so do values at machine zero when
the target is a tiny positive loss.

**Time-budgeted sweeps** (:mod:`~secondorder.bench.time_budget`): with the calibrated
budgets of the database (``budgets``), a problem's tuning runs are its seed-0 runs with the
tuning budget, and a method's repetitions are the runs of its selected setting with the
measurement budget (``T`` seconds), so "final" values are values at equal training time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secondorder.bench.analysis import (
    RunRecord,
    best_value,
    mean_ci,
    metric_for,
    select_best,
    target_for,
)
from secondorder.bench.registry import REGISTRY

__all__ = [
    "REACH_ATOL",
    "REACH_RTOL",
    "CostStat",
    "MethodSummary",
    "ProblemSummary",
    "cost_stat",
    "cost_to_target",
    "loss_target",
    "reaches",
    "summarize",
]

#: Relative tolerance of :func:`reaches` (on the target's magnitude).
REACH_RTOL = 1e-4
#: Absolute tolerance of :func:`reaches`, relative to the initial value's magnitude.
REACH_ATOL = 1e-9


def reaches(value: float | None, target: float, higher: bool, initial: float = 0.0) -> bool:
    """Whether ``value`` reaches ``target`` (at least as good, up to the module's tolerance).

    Args:
        value: the measured value (``None`` and non-finite values never reach).
        target: the target (NaN is never reached).
        higher: whether higher is better.
        initial: the initial value, which scales the absolute tolerance.
    """
    if value is None or not math.isfinite(value) or not math.isfinite(target):
        return False
    tol = abs(target) * REACH_RTOL + (abs(initial) * REACH_ATOL if math.isfinite(initial) else 0)
    return value >= target - tol if higher else value <= target + tol


def cost_to_target(measurements: Sequence[Mapping[str, Any]], key: str, target: float,
                   higher: bool, cost: str, initial: float = 0.0) -> float:
    """``cost`` at the first measurement whose ``key`` :func:`reaches` ``target``; ``inf``
    if none does."""
    for m in measurements:
        if reaches(m.get(key), target, higher, initial) and m.get(cost) is not None:
            return float(m[cost])
    return math.inf


def loss_target(baselines: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]
                ) -> tuple[float, str | None]:
    """The training-loss target (module docstring) and the method that sets it.

    Args:
        baselines: per method, the measurement lists of its repetitions.

    Returns:
        The lowest, over methods, mean over seeds of each run's lowest training loss, and
        that method; ``(nan, None)`` without finite losses.
    """
    best, who = math.nan, None
    for name, runs in baselines.items():
        vals = [best_value(ms, "train_loss", False) for ms in runs if ms]
        vals = [v for v in vals if math.isfinite(v)]
        if vals:
            v = float(np.mean(vals))
            if math.isnan(best) or v < best:
                best, who = v, name
    return best, who


@dataclass(frozen=True)
class CostStat:
    """A cost to target over seeds: ``reached`` of ``n`` seeds; when every seed reached it,
    the mean and its 95% t-interval half-width (NaN with one seed), else the median
    (``inf`` when most seeds missed)."""

    reached: int
    n: int
    center: float
    half: float

    @property
    def complete(self) -> bool:
        """Every seed reached the target."""
        return self.n > 0 and self.reached == self.n

    @property
    def interval(self) -> tuple[float, float]:
        """``(low, high)``; the point itself when there is no interval."""
        h = 0.0 if math.isnan(self.half) else self.half
        return self.center - h, self.center + h


def cost_stat(costs: Sequence[float]) -> CostStat:
    """:class:`CostStat` of per-seed costs (``inf`` = not reached)."""
    finite = [c for c in costs if math.isfinite(c)]
    if costs and len(finite) == len(costs):
        m, h = mean_ci(finite)
        return CostStat(len(finite), len(costs), m, h)
    med = float(np.median(np.asarray(costs, dtype=float))) if costs else math.inf
    return CostStat(len(finite), len(costs), med, math.nan)


@dataclass
class MethodSummary:
    """Statistics of one optimizer on one problem (its selected setting's repetitions).

    The four cost lists hold one value per repetition (``inf``: not reached, or the run
    diverged or failed).
    """

    optimizer: str
    knob: str
    value: Any
    runs: list[RunRecord]
    diverged: int
    failed: int
    total_runs: int
    tuning: list[RunRecord] = field(default_factory=list)
    backprops_to_target: list[float] = field(default_factory=list)
    time_to_target: list[float] = field(default_factory=list)
    backprops_to_loss_target: list[float] = field(default_factory=list)
    time_to_loss_target: list[float] = field(default_factory=list)

    def stat(self, key: str) -> tuple[float, float]:
        """Mean and 95% CI half-width of the final ``key`` over repetitions."""
        return mean_ci([r.last.get(key) for r in self.runs if r.last.get(key) is not None])

    def initial(self, key: str) -> float:
        """Mean over repetitions of ``key`` at the first evaluation (NaN if none)."""
        vals = [r.measurements[0].get(key) for r in self.runs if r.measurements]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    def epoch_times(self) -> list[float]:
        return [r.last["wall_time"] / r.last["data_epoch"] for r in self.runs
                if r.last.get("data_epoch")]

    def step_times(self) -> list[float]:
        return [r.last["wall_time"] / r.last["step"] for r in self.runs if r.last.get("step")]

    def reached(self) -> int:
        """Seeds that reached the validation target."""
        return sum(math.isfinite(t) for t in self.backprops_to_target)

    def knob_values(self) -> list[Any]:
        """The knob values tried in tuning (seed 0), sorted, without repeats."""
        vals = {r.hyperparameters.get(self.knob) for r in self.tuning}
        vals.discard(None)
        return sorted(vals)

    @property
    def first_order(self) -> bool:
        spec = _spec(self.optimizer)
        return spec is not None and spec.first_order


def _spec(name: str):
    """The registry entry of ``name``, or of a plug-in optimizer (None if unknown here)."""
    from secondorder.bench.plugins import find_optimizer

    try:
        return REGISTRY.get(name) or find_optimizer(name)
    except ValueError:  # an entry point that fails to load
        return None


def _varied(tuning: Sequence[RunRecord]) -> str:
    """The hyperparameter whose value differs between tuning runs (``"?"`` if none/several)."""
    keys = {k for r in tuning for k in r.hyperparameters}
    varied = [k for k in sorted(keys)
              if len({repr(r.hyperparameters.get(k)) for r in tuning}) > 1]
    return varied[0] if len(varied) == 1 else "?"


@dataclass
class ProblemSummary:
    """Everything the report says about one problem.

    Attributes:
        metric, higher: the validation metric and whether higher is better.
        target, target_from: the validation target and the methods that set it.
        loss_target, loss_target_from: the training-loss target and its methods.
        initial_metric, initial_loss: mean initial validation metric and training loss
            (they scale :func:`reaches`' tolerance).
        no_setting: methods whose every tuning run diverged or failed.
        data: :func:`~secondorder.bench.datafacts.data_facts` of the problem, if known.
        time_budget: the calibrated training time ``T`` of every repetition (NaN: the
            repetitions had the tuning budget, an equal-epoch sweep).
        tuning_epochs: the epoch budget of the tuning runs (NaN if not an epoch budget).
        calibration: the stored calibration (:data:`~secondorder.bench.time_budget.META_KEY`)
            or ``None``.
    """

    problem: str
    metric: str
    higher: bool
    target: float
    target_from: list[str]
    methods: list[MethodSummary]
    no_setting: list[str]
    loss_target: float = math.nan
    loss_target_from: list[str] = field(default_factory=list)
    initial_metric: float = math.nan
    initial_loss: float = math.nan
    data: dict[str, Any] | None = None
    time_budget: float = math.nan
    tuning_epochs: float = math.nan
    calibration: dict[str, Any] | None = None

    @property
    def equal_time(self) -> bool:
        """Whether the repetitions trained for one calibrated time (module docstring)."""
        return math.isfinite(self.time_budget)

    @property
    def test_key(self) -> str:
        """The test-split counterpart of the metric."""
        return "test_acc" if self.metric == "val_acc" else "test_loss"


def _mean_initial(methods: Sequence[MethodSummary], key: str) -> float:
    vals = [m.initial(key) for m in methods]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def summarize(records: Sequence[RunRecord],
              data: Mapping[str, dict[str, Any]] | None = None,
              budgets: Mapping[str, Mapping[str, Any]] | None = None) -> list[ProblemSummary]:
    """Selection, repetitions, both targets and the costs to reach them, per problem.

    Args:
        records: terminal runs (:func:`~secondorder.bench.analysis.load_records`).
        data: optional ``{problem: data_facts}`` attached to the summaries.
        budgets: the calibrated time budgets of a time-budgeted sweep (meta
            :data:`~secondorder.bench.time_budget.META_KEY`), else ``None``.
    """
    out = []
    for problem in dict.fromkeys(r.problem for r in records):
        recs = [r for r in records if r.problem == problem]
        key, higher = metric_for(recs)
        calib = (budgets or {}).get(problem)
        methods, no_setting = [], []
        for opt in dict.fromkeys(r.optimizer for r in recs):
            mine = [r for r in recs if r.optimizer == opt]
            tuning = [r for r in mine if r.seed == 0
                      and (calib is None or r.budget == calib["tuning_budget"])]
            best = select_best(tuning)
            diverged = sum(r.status == "diverged" for r in mine)
            failed = sum(r.status == "failed" for r in mine)
            if best is None:
                no_setting.append(opt)
                continue
            spec = _spec(opt)
            knob = spec.knob if spec is not None else _varied(tuning)
            reps = [r for r in mine if r.hyperparameters == best.hyperparameters
                    and r.budget == (best.budget if calib is None else calib["budget"])]
            if not reps:  # time-budgeted runs not done yet (an interrupted sweep)
                continue
            methods.append(MethodSummary(opt, knob, best.hyperparameters.get(knob), reps,
                                         diverged, failed, len(mine), tuning))
        if not methods and not no_setting:
            continue
        baselines = {m.optimizer: [r.measurements for r in m.runs] for m in methods
                     if m.first_order}
        target_from = list(baselines) if baselines else [m.optimizer for m in methods]
        if not baselines:
            baselines = {m.optimizer: [r.measurements for r in m.runs] for m in methods}
        target = target_for(baselines, key, higher)
        ltarget, lfrom = loss_target(baselines)
        v0, l0 = _mean_initial(methods, key), _mean_initial(methods, "train_loss")
        for m in methods:
            def costs(k, tgt, better, init, cost, m=m):
                return [cost_to_target(r.measurements, k, tgt, better, cost, init) if r.ok
                        else math.inf for r in m.runs]

            m.backprops_to_target = costs(key, target, higher, v0, "backprops")
            m.time_to_target = costs(key, target, higher, v0, "wall_time")
            m.backprops_to_loss_target = costs("train_loss", ltarget, False, l0, "backprops")
            m.time_to_loss_target = costs("train_loss", ltarget, False, l0, "wall_time")
        epochs = [r.budget.get("epochs") for r in recs if r.seed == 0]
        tuning_epochs = (calib["tuning_budget"].get("epochs", math.nan) if calib is not None
                         else max((e for e in epochs if e is not None), default=math.nan))
        out.append(ProblemSummary(problem, key, higher, target, target_from, methods,
                                  no_setting, ltarget, [lfrom] if lfrom else [], v0, l0,
                                  (data or {}).get(problem),
                                  math.nan if calib is None else float(calib["seconds"]),
                                  float(tuning_epochs), None if calib is None else dict(calib)))
    return out
