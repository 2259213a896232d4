"""The equal wall-clock budget of a problem: calibrated after tuning, stored, reused.

AlgoPerf ([Dahl2023]) gives every method the same training-time budget per workload. An
epoch budget does not: on the digits MLP Adam trains 0.1 s in 5 epochs and NewtonKrylov
1.5 s, so final-quality comparisons at equal epochs favour the expensive methods. With
``SweepConfig.equal = "time"`` a sweep therefore measures every method at one training
time ``T`` per problem:

1. **Tuning** runs every grid point on seed 0 with the epoch budget ``E`` (the problem's
   epochs, or ``--budget EPOCHS``), and selects each method's setting as usual.
2. **Calibration** (:func:`calibrate`): ``T`` is the training time the **slowest**
   selected setting took for its ``E`` epochs in tuning -- the most expensive method gets
   (about) its full epoch budget, every cheaper method gets the same seconds. A method
   whose tuning run did not learn (final training loss not :data:`MIN_LOSS_DECREASE`
   below its initial one, the verdict's rule; LSCG on the digits networks) does not set
   ``T``: it would stretch every method's budget for a run that fails anyway (on the
   digits CNN, 5.7 s against the slowest learning method's 1.7 s). ``T`` is raised to
   at least :data:`MIN_TIME_BUDGET` (below a second one-off costs and timer noise would
   decide times to target) and rounded to 3 significant digits.
3. **Measurement** runs train every method's selected setting on seeds ``0..N-1`` for
   ``T`` seconds of training (:func:`measurement_budget`; evaluation time excluded); a
   method that is fast per epoch runs more epochs, at most :data:`MAX_EPOCH_FACTOR` times
   ``E`` so that no run can go on for ever (it then keeps its last value until ``T``). The
   runner checks the budget after every step on the host clock, so a run stops within one
   step of ``T``; its evaluations are thinned to about :data:`EVAL_POINTS` per budget
   (:func:`min_eval_gap`), dense at short times.

``T`` is stored in the database (meta :data:`META_KEY`, per problem, with the tuning budget
and settings it was calibrated for), and the measurement runs' key includes the budget,
so a resumed sweep reuses ``T`` and its finished runs instead of calibrating anew on a
differently loaded machine. A different epoch budget or evaluation setting calibrates
again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from secondorder.bench.analysis import RunRecord
from secondorder.bench.runner import Budget
from secondorder.bench.store import Store

__all__ = [
    "EQUAL_CHOICES",
    "EVAL_POINTS",
    "MAX_EPOCH_FACTOR",
    "META_KEY",
    "MIN_LOSS_DECREASE",
    "MIN_TIME_BUDGET",
    "calibrate",
    "learned",
    "load_budget",
    "measurement_budget",
    "min_eval_gap",
    "save_budget",
]

#: What every method gets the same of in a sweep's measurement runs.
EQUAL_CHOICES = ("time", "epochs")
#: Seconds: the least training time of a calibrated budget.
MIN_TIME_BUDGET = 1.0
#: Epoch cap of a time-budgeted run, as a multiple of the tuning epoch budget.
MAX_EPOCH_FACTOR = 20.0
#: Least relative decrease of the training loss over a tuning run for its method to set
#: ``T`` (the verdict's rule for "failed to learn").
MIN_LOSS_DECREASE = 0.01
#: Evaluations per budget that the thinning of long runs aims at (plus the dense early ones).
EVAL_POINTS = 20
#: Meta key of the calibrated budgets: ``{problem: {"seconds", "slowest",
#: "slowest_seconds", "tuning_budget", "settings", "budget"}}`` (``budget``: the
#: measurement runs' budget, as stored in their key).
META_KEY = "time_budgets"


def calibrate(selected: Mapping[str, RunRecord],
              min_seconds: float = MIN_TIME_BUDGET) -> tuple[float, str | None, float]:
    """The training-time budget ``T`` of a problem (module docstring, step 2).

    Args:
        selected: per method, its selected tuning run (finished, with measurements).
        min_seconds: the least budget.

    Returns:
        ``(T, slowest method, its training time)``; when no method learned, the slowest
        of all sets ``T``; ``(min_seconds, None, nan)`` without a timed run.
    """
    slowest, worst = None, math.nan
    learners = {n: r for n, r in selected.items() if learned(r)} or selected  # none learned:
    for name, rec in learners.items():  # every method sets it, as without the rule
        t = rec.last.get("wall_time") if rec.measurements else None
        if t is not None and math.isfinite(t) and (slowest is None or t > worst):
            slowest, worst = name, float(t)
    seconds = max(worst, min_seconds) if slowest is not None else min_seconds
    return float(f"{seconds:.3g}"), slowest, worst


def learned(rec: RunRecord, min_decrease: float = MIN_LOSS_DECREASE) -> bool:
    """Whether ``rec``'s training loss fell by at least ``min_decrease`` of its initial
    value (True when the run recorded no training loss: nothing says it failed)."""
    losses = [m.get("train_loss") for m in rec.measurements]
    losses = [float(v) for v in losses if v is not None]
    if len(losses) < 2 or not all(math.isfinite(v) for v in (losses[0], losses[-1])):
        return len(losses) < 2
    first, final = losses[0], losses[-1]
    return final <= first - min_decrease * abs(first)


def measurement_budget(seconds: float, tuning: Budget,
                       factor: float = MAX_EPOCH_FACTOR) -> Budget:
    """``seconds`` of training, capped at ``factor`` times the tuning epochs."""
    if tuning.epochs is None:
        raise ValueError(f"Invalid tuning budget {tuning}: a time budget is calibrated from "
                         "an epoch budget")
    return Budget(epochs=factor * tuning.epochs, seconds=seconds)


def min_eval_gap(seconds: float) -> float:
    """The ``min_eval_gap`` of runs with a ``seconds`` budget
    (:func:`~secondorder.bench.runner.run`): ``seconds / EVAL_POINTS``."""
    return seconds / EVAL_POINTS


def load_budget(store: Store, sweep: str, problem: str, tuning: Mapping[str, float],
                settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored calibration of ``problem`` if it was made for this tuning budget and
    these settings, else ``None``."""
    entry = (store.get_meta(sweep, META_KEY, {}) or {}).get(problem)
    if (entry is None or entry.get("tuning_budget") != dict(tuning)
            or entry.get("settings") != dict(settings)):
        return None
    return entry


def save_budget(store: Store, sweep: str, problem: str, entry: Mapping[str, Any]) -> None:
    """Store the calibration ``entry`` of ``problem`` (others are kept)."""
    budgets = dict(store.get_meta(sweep, META_KEY, {}) or {})
    budgets[problem] = dict(entry)
    store.set_meta(sweep, META_KEY, budgets)
