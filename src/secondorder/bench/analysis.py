"""The statistics of a sweep's runs: records, selection, targets, costs, profiles.

The rules (selection, targets, time to target, performance profiles) are those of the
protocol in :mod:`~secondorder.bench.sweep`'s module docstring, steps 2-6; this module
holds them apart from the machinery that executes runs, so that the report, the summary
and the studies read runs back without importing the worker pool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secondorder.bench.store import TERMINAL, Store

__all__ = [
    "TARGET_FRACTION",
    "RunRecord",
    "best_value",
    "load_records",
    "mean_ci",
    "median_cost",
    "metric_for",
    "performance_profile",
    "select_best",
    "target_for",
    "time_to_target",
]

#: Fraction of the best first-order improvement that defines the target.
TARGET_FRACTION = 0.99


@dataclass
class RunRecord:
    """A run with its measurements, as read back from the database."""

    id: int
    problem: str
    optimizer: str
    hyperparameters: dict[str, Any]
    seed: int
    budget: dict[str, float]
    status: str
    error: str | None
    measurements: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Finished (not diverged, failed or interrupted)."""
        return self.status == "finished"

    @property
    def last(self) -> dict[str, Any]:
        return self.measurements[-1] if self.measurements else {}


def load_records(store: Store, sweep: str | None = None) -> list[RunRecord]:
    """All terminal runs of ``sweep`` with their measurements.

    For a named sweep, a problem's runs are those with the settings of the sweep's latest
    invocation (meta ``"settings"``): runs made with another evaluation frequency or other
    data files stay in the database but are not mixed into its statistics.
    """
    current = {} if sweep is None else store.get_meta(sweep, "settings", {})
    return [
        RunRecord(r["id"], r["problem"], r["optimizer"], r["hyperparameters"], r["seed"],
                  r["budget"], r["status"], r["error"], store.measurements(r["id"]),
                  r["settings"])
        for r in store.runs(sweep, status=TERMINAL)
        if r["problem"] not in current or r["settings"] == current[r["problem"]]
    ]


def metric_for(records: Iterable[RunRecord]) -> tuple[str, bool]:
    """``("val_acc", True)`` if the runs record a validation accuracy, else
    ``("val_loss", False)``; the flag says whether higher is better."""
    for r in records:
        for m in r.measurements:
            if m.get("val_acc") is not None:
                return "val_acc", True
    return "val_loss", False


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def select_best(records: Sequence[RunRecord]) -> RunRecord | None:
    """The tuning run with the best final validation metric (protocol step 2 in
    :mod:`~secondorder.bench.sweep`); ``None`` if every run diverged or failed."""
    ok = [r for r in records if r.ok and r.measurements]
    if not ok:
        return None
    key, higher = metric_for(ok)

    def score(r: RunRecord):
        v = r.last.get(key)
        loss = r.last.get("val_loss")
        v = v if _finite(v) else (-math.inf if higher else math.inf)
        loss = loss if _finite(loss) else math.inf
        return (-v if higher else v, loss)

    return min(ok, key=score)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its ``confidence`` interval (Student t, ``n-1`` dof).

    Returns ``(nan, nan)`` for no values and ``(value, nan)`` for one.
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    m = float(x.mean())
    if x.size == 1:
        return m, math.nan
    from scipy import stats  # imported here: worker processes never need it (1 s of import)

    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, half


def best_value(measurements: Sequence[Mapping[str, Any]], key: str, higher: bool) -> float:
    """Best value of ``key`` over a run's measurements (NaN if none)."""
    vals = [m[key] for m in measurements if _finite(m.get(key))]
    if not vals:
        return math.nan
    return max(vals) if higher else min(vals)


def target_for(
    baselines: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    key: str,
    higher: bool,
    fraction: float = TARGET_FRACTION,
) -> float:
    """The target of a problem (:mod:`~secondorder.bench.sweep`, protocol step 4).

    Args:
        baselines: per baseline optimizer, the measurement lists of its repetitions.
        key: the validation metric.
        higher: whether higher is better.
        fraction: share of the best improvement required.

    Returns:
        ``v0 + fraction (v* - v0)``; NaN when no baseline has a finite value.
    """
    best, inits = None, []
    for runs in baselines.values():
        vals = [best_value(ms, key, higher) for ms in runs if ms]
        vals = [v for v in vals if _finite(v)]
        inits += [ms[0][key] for ms in runs if ms and _finite(ms[0].get(key))]
        if not vals:
            continue
        v = float(np.mean(vals))
        if best is None or (v > best if higher else v < best):
            best = v
    if best is None or not inits:
        return math.nan
    v0 = float(np.mean(inits))
    return v0 + fraction * (best - v0)


def time_to_target(
    measurements: Sequence[Mapping[str, Any]],
    key: str,
    target: float,
    higher: bool,
    cost: str = "wall_time",
) -> float:
    """``cost`` (``"wall_time"``, ``"backprops"``, ``"epoch"``...) at the first measurement
    whose ``key`` reaches ``target``; ``inf`` if none does (or the target is NaN)."""
    if not _finite(target):
        return math.inf
    for m in measurements:
        v = m.get(key)
        if _finite(v) and (v >= target if higher else v <= target):
            return float(m[cost])
    return math.inf


def median_cost(costs: Sequence[float]) -> float:
    """Median over seeds, ``inf`` counted as the largest value."""
    if not costs:
        return math.inf
    return float(np.median(np.asarray(costs, dtype=float)))


def performance_profile(
    costs: Mapping[str, Mapping[str, float]], taus: Sequence[float] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Dolan-More performance profiles.

    Args:
        costs: ``costs[problem][method]`` (``inf`` = target not reached; a method missing on
            a problem counts as ``inf``).
        taus: ratios at which to evaluate; default a log grid from 1 to the largest finite
            ratio (times 1.1).

    Returns:
        ``(taus, {method: rho})`` with ``rho(tau)`` = fraction of problems where the
        method's cost is at most ``tau`` times the best cost on that problem.
    """
    methods = sorted({m for row in costs.values() for m in row})
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    for row in costs.values():
        finite = [c for c in row.values() if math.isfinite(c)]
        best = min(finite) if finite else math.nan
        for m in methods:
            c = row.get(m, math.inf)
            if not math.isfinite(c):
                ratios[m].append(math.inf)
            elif c <= best:
                ratios[m].append(1.0)
            else:
                ratios[m].append(c / best if best > 0 else math.inf)
    if taus is None:
        fin = [r for rs in ratios.values() for r in rs if math.isfinite(r)]
        hi = max(fin + [1.0]) * 1.1
        taus = np.unique(np.concatenate([[1.0], np.geomspace(1.0, hi, 200)]))
    taus = np.asarray(taus, dtype=float)
    n = max(len(costs), 1)
    rho = {m: np.array([sum(r <= t for r in rs) / n for t in taus]) for m, rs in ratios.items()}
    return taus, rho
