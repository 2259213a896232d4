"""What a sweep runs: :class:`SweepConfig` (problems, optimizers, seeds, budget, grid ...)
and :class:`Task` (one run, with the key under which the database stores it).

The protocol that executes them is in :mod:`~secondorder.bench.sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from secondorder.bench import time_budget
from secondorder.bench.runner import Budget

__all__ = ["MIN_CURVE_POINTS", "SweepConfig", "Task"]

#: Evaluations per run that the default evaluation frequency aims at.
MIN_CURVE_POINTS = 10


@dataclass
class SweepConfig:
    """What a sweep runs.

    Attributes:
        problems: problem names.
        optimizers: registry names (unavailable ones are skipped and noted).
        seeds: repetitions of the selected setting (seeds ``0..seeds-1``).
        budget: per-run budget; ``None`` uses each problem's ``epochs``. With
            ``equal="time"`` and an epoch budget, this is the tuning budget and the
            measurement runs get the calibrated time instead.
        grid: grid level of the knob (``"quick"``, ``"default"``, ``"full"``).
        workers: processes; 1 runs in this process.
        evals_per_epoch: evaluations per pass through the training data; ``None``: per
            problem, enough for :data:`MIN_CURVE_POINTS` evaluations over its epoch
            budget (:meth:`evals_for`).
        data_dir: directory of file-based problems.
        name: the sweep's name in the database.
        retry_failed: claim again the runs that failed (raised) before this sweep started.
        equal: what every method's measurement runs get the same of: ``"time"``, a
            training-time budget per problem calibrated after tuning
            (:mod:`~secondorder.bench.time_budget`; only with an epoch budget: ``budget``
            ``None`` or epochs only), or ``"epochs"``, the tuning budget.
        min_time_budget: seconds, the least calibrated budget
            (:data:`~secondorder.bench.time_budget.MIN_TIME_BUDGET`).
    """

    problems: Sequence[str]
    optimizers: Sequence[str]
    seeds: int = 5
    budget: Budget | None = None
    grid: str = "default"
    workers: int = 1
    evals_per_epoch: int | None = 1
    data_dir: str | None = None
    name: str = "bench"
    retry_failed: bool = True
    equal: str = "epochs"
    min_time_budget: float = time_budget.MIN_TIME_BUDGET

    def __post_init__(self):
        if self.equal not in time_budget.EQUAL_CHOICES:
            raise ValueError(f"Invalid equal: {self.equal!r}; choose one of "
                             f"{', '.join(time_budget.EQUAL_CHOICES)}")
        if not (self.min_time_budget > 0 and math.isfinite(self.min_time_budget)):
            raise ValueError(f"Invalid min_time_budget: {self.min_time_budget}; it must be "
                             "a positive number of seconds")
        if self.seeds < 1:
            raise ValueError(f"Invalid seeds: {self.seeds}; it must be >= 1")
        if self.workers < 1:
            raise ValueError(f"Invalid workers: {self.workers}; it must be >= 1")
        if self.evals_per_epoch is not None and self.evals_per_epoch < 1:
            raise ValueError(
                f"Invalid evals_per_epoch: {self.evals_per_epoch}; it must be >= 1")
        if not self.problems:
            raise ValueError("Invalid problems: the list is empty")
        if not self.optimizers:
            raise ValueError("Invalid optimizers: the list is empty")

    @property
    def calibrates(self) -> bool:
        """Whether the measurement runs get a calibrated time budget (``equal="time"``
        with an epoch budget)."""
        return self.equal == "time" and (self.budget is None
                                         or set(self.budget.as_dict()) == {"epochs"})

    def evals_for(self, problem) -> int:
        """Evaluations per epoch on ``problem``: the configured number, or
        ``ceil(MIN_CURVE_POINTS / epochs)`` (at least 1) for the epochs of the budget (the
        problem's when the budget counts backprops or seconds), so that short runs (the
        digits CNN trains 4 epochs) still give curves of :data:`MIN_CURVE_POINTS` points.
        A step is never split: a full-batch problem evaluates at most once per epoch."""
        if self.evals_per_epoch is not None:
            return self.evals_per_epoch
        epochs = (self.budget.epochs if self.budget is not None
                  and self.budget.epochs is not None else float(problem.epochs))
        return max(1, math.ceil(MIN_CURVE_POINTS / epochs - 1e-9))


@dataclass(frozen=True)
class Task:
    """One run to execute (picklable for worker processes)."""

    sweep: str
    problem: str
    optimizer: str
    hyperparameters: tuple[tuple[str, Any], ...]
    seed: int
    budget: tuple[tuple[str, float], ...]
    evals_per_epoch: int
    data_dir: str | None
    settings: tuple[tuple[str, Any], ...] = ()
    retry_failed_before: float | None = None
    min_eval_gap: float = 0.0  # follows from the budget, so not part of the key

    def key(self) -> tuple:
        """Arguments of :meth:`Store.find_run`/:meth:`Store.claim_run`."""
        return (self.sweep, self.problem, self.optimizer, dict(self.hyperparameters), self.seed,
                dict(self.budget), dict(self.settings))
