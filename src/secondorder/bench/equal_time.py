"""Quality at equal training time: every method judged after the same wall-clock budget.

With an epoch budget, cheap methods stop long before expensive ones (on the digits MLP
Adam trains about 0.1 s, NewtonKrylov 1.5 s), so final-quality columns favour the
expensive methods. AlgoPerf ([Dahl2023] gives every method the same time budget
instead. From the curves a sweep already recorded, the equal-time view reads every
method's quality at one common training time ``T`` (:func:`equal_time_budget`): the
shortest of the methods' run times (the median over seeds of each selected setting's
final training time), the longest time up to which **every** method has a curve. A
method's value at ``T`` is the one of its last evaluation at or before ``T``
(:func:`value_at`): what the run would report had its budget been ``T`` seconds.

To give every method a longer common budget, rerun with ``secondorder bench
--budget-seconds T`` (every run then stops after ``T`` seconds of training).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from secondorder.bench.analysis import mean_ci
from secondorder.bench.summary import ProblemSummary

__all__ = ["equal_time_budget", "equal_time_stats", "value_at"]


def equal_time_budget(ps: ProblemSummary) -> float:
    """The common training time ``T`` of a problem (module docstring); NaN without runs."""
    times = []
    for m in ps.methods:
        finals = [r.last.get("wall_time") for r in m.runs if r.ok and r.measurements]
        finals = [t for t in finals if t is not None and math.isfinite(t)]
        if finals:
            times.append(float(np.median(finals)))
    return min(times) if times else math.nan


def value_at(measurements: Sequence[Mapping[str, Any]], key: str, seconds: float) -> float:
    """``key`` at the last measurement with training time ``<= seconds`` (NaN if none)."""
    out = math.nan
    for m in measurements:
        if m.get("wall_time") is None or m["wall_time"] > seconds:
            break
        v = m.get(key)
        out = float(v) if v is not None else math.nan
    return out


def equal_time_stats(ps: ProblemSummary, seconds: float,
                     keys: Sequence[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per method, ``{key: (mean, 95% CI half-width)}`` over seeds at ``seconds``; the
    key ``"data_epoch"`` gives the epochs trained by then."""
    out = {}
    for m in ps.methods:
        runs = [r for r in m.runs if r.measurements]
        out[m.optimizer] = {
            k: mean_ci([v for r in runs
                        if math.isfinite(v := value_at(r.measurements, k, seconds))])
            for k in keys}
    return out
