"""Quality at an equal budget read from recorded curves: equal time, epochs or backprops.

A time-budgeted sweep (:mod:`~secondorder.bench.time_budget`) trains every method for the
same calibrated time ``T``: its final values are the **equal-time** comparison, the
primary one (AlgoPerf, [Dahl2023]). The other views are read from the curves the sweep
recorded: a method's value at a budget ``b`` of a cost (``"wall_time"``, ``"data_epoch"``,
``"backprops"``) is the one of its last evaluation at or before ``b`` (:func:`value_at`):
what the run would report had its budget been ``b``.

- **Equal epochs**: at the tuning epoch budget ``E`` (the slowest method trained about
  ``E`` epochs in ``T``; a method that trained fewer reports its last value).
- **Equal backprops** and, for an equal-epoch sweep, **equal time**: at
  :func:`common_budget`, the shortest of the methods' run lengths (the median over seeds
  of each selected setting's final cost), the longest budget up to which **every** method
  has a curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secondorder.bench.analysis import mean_ci
from secondorder.bench.summary import ProblemSummary

__all__ = ["common_budget", "equal_time_budget", "equal_time_stats", "stats_at", "value_at"]


def common_budget(ps: ProblemSummary, cost: str = "wall_time") -> float:
    """The shortest median final ``cost`` of the methods' finished runs (module
    docstring); NaN without runs."""
    lengths = []
    for m in ps.methods:
        finals = [r.last.get(cost) for r in m.runs if r.ok and r.measurements]
        finals = [t for t in finals if t is not None and math.isfinite(t)]
        if finals:
            lengths.append(float(np.median(finals)))
    return min(lengths) if lengths else math.nan


def equal_time_budget(ps: ProblemSummary) -> float:
    """The common training time of a problem: the calibrated ``T`` of a time-budgeted
    sweep, else :func:`common_budget` of the wall time; NaN without runs."""
    if ps.equal_time:
        return ps.time_budget
    return common_budget(ps, "wall_time")


def value_at(measurements: Sequence[Mapping[str, Any]], key: str, limit: float,
             cost: str = "wall_time") -> float:
    """``key`` at the last measurement with ``cost <= limit`` (NaN if none)."""
    out = math.nan
    for m in measurements:
        if m.get(cost) is None or m[cost] > limit:
            break
        v = m.get(key)
        out = float(v) if v is not None else math.nan
    return out


def stats_at(ps: ProblemSummary, limit: float, keys: Sequence[str], cost: str = "wall_time"
             ) -> dict[str, dict[str, tuple[float, float]]]:
    """Per method, ``{key: (mean, 95% CI half-width)}`` over seeds at ``cost = limit``;
    the key ``"data_epoch"`` gives the epochs trained by then."""
    out = {}
    for m in ps.methods:
        runs = [r for r in m.runs if r.measurements]
        out[m.optimizer] = {
            k: mean_ci([v for r in runs
                        if math.isfinite(v := value_at(r.measurements, k, limit, cost))])
            for k in keys}
    return out


def equal_time_stats(ps: ProblemSummary, seconds: float,
                     keys: Sequence[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """:func:`stats_at` the training time ``seconds``."""
    return stats_at(ps, seconds, keys, "wall_time")
