"""The verdict of a sweep: who wins each problem, who failed to learn, which grids to widen.

Rules (all on the selected setting's repetitions, see :mod:`~secondorder.bench.summary`).
The **primary** comparison is at equal wall-clock time (AlgoPerf, [Dahl2023]): in a
time-budgeted sweep (:mod:`~secondorder.bench.time_budget`) every method trained for the
same calibrated time ``T``, so the best final quality is the best quality at equal time,
and the time to each target is measured within that budget (:data:`PRIMARY_CRITERIA`).
Backprops to each target are secondary (:data:`SECONDARY_CRITERIA`), as are the
equal-epoch and equal-backprop tables of the report.

- **Ranking by cost to a target** (:func:`rank_costs`): methods that reached the target in
  every seed come first, by mean cost; the first is the winner and every method whose 95%
  interval over seeds overlaps the winner's is a **tie**. Methods that reached it in only
  some seeds follow (more seeds first), then those that never did.
- **Best final quality** (:func:`best_quality`): the best mean final test metric (at equal
  time ``T`` in a time-budgeted sweep), ties by overlapping intervals in the same way.
- **Failed to learn** (:func:`failures_to_learn`): mean final test accuracy at most
  :data:`CHANCE_MARGIN` above chance (the share of the test split's most frequent label),
  or a mean final training loss that is less than :data:`MIN_LOSS_DECREASE` below the mean
  initial one.
- **Grid edges** (:func:`grid_edges`): a selected knob value that is the smallest or the
  largest value tried, or the only one.

:func:`answer` writes the cross-problem paragraph from these numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from secondorder.bench import time_budget
from secondorder.bench.summary import CostStat, MethodSummary, ProblemSummary, cost_stat

__all__ = [
    "CHANCE_MARGIN",
    "CRITERIA",
    "PRIMARY_CRITERIA",
    "SECONDARY_CRITERIA",
    "MIN_LOSS_DECREASE",
    "GridEdge",
    "Ranking",
    "answer",
    "best_quality",
    "failures_to_learn",
    "grid_edges",
    "quality_label",
    "rank_costs",
]

#: Accuracy within this many points of chance counts as not learning.
CHANCE_MARGIN = 0.02
#: A final training loss must be at least this fraction below the initial one.
MIN_LOSS_DECREASE = time_budget.MIN_LOSS_DECREASE

#: The primary rankings by cost to a target, after the best final quality:
#: (attribute of MethodSummary, target label, cost label, unit).
PRIMARY_CRITERIA = (
    ("time_to_target", "validation target", "time", "s"),
    ("time_to_loss_target", "training-loss target", "time", "s"),
)
#: The secondary rankings: backprop-equivalents to each target.
SECONDARY_CRITERIA = (
    ("backprops_to_target", "validation target", "backprops", ""),
    ("backprops_to_loss_target", "training-loss target", "backprops", ""),
)
#: All four rankings, primary first.
CRITERIA = PRIMARY_CRITERIA + SECONDARY_CRITERIA


@dataclass
class Ranking:
    """Methods ordered by one criterion.

    Attributes:
        order: ``(method, stat)`` of the methods that reached the target in every seed,
            best first.
        ties: the methods of ``order`` (after the first) whose interval overlaps the winner's.
        partial: ``(method, stat)`` of methods that reached it in some seeds only.
        never: methods that never reached it.
    """

    order: list[tuple[str, CostStat]]
    ties: list[str]
    partial: list[tuple[str, CostStat]]
    never: list[str]

    @property
    def winner(self) -> str | None:
        return self.order[0][0] if self.order else None


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def rank_costs(methods: Sequence[MethodSummary], attr: str) -> Ranking:
    """Rank ``methods`` by their per-seed costs ``getattr(m, attr)`` (module docstring)."""
    stats = [(m.optimizer, cost_stat(getattr(m, attr))) for m in methods]
    order = sorted([(n, s) for n, s in stats if s.complete], key=lambda t: t[1].center)
    partial = sorted([(n, s) for n, s in stats if not s.complete and s.reached > 0],
                     key=lambda t: (-t[1].reached / t[1].n, t[1].center))
    never = [n for n, s in stats if s.reached == 0]
    ties = []
    if order:
        win = order[0][1].interval
        ties = [n for n, s in order[1:] if _overlap(win, s.interval)]
    return Ranking(order, ties, partial, never)


def best_quality(ps: ProblemSummary) -> tuple[str, float, float, list[str]] | None:
    """``(method, mean, half-width, ties)`` of the best mean final test metric, or ``None``."""
    key, higher = ps.test_key, ps.higher
    vals = [(m.optimizer, *m.stat(key)) for m in ps.methods]
    vals = [v for v in vals if math.isfinite(v[1])]
    if not vals:
        return None
    vals.sort(key=lambda v: -v[1] if higher else v[1])
    name, mean, half = vals[0]

    def iv(m, h):
        h = 0.0 if math.isnan(h) else h
        return m - h, m + h

    ties = [n for n, m, h in vals[1:] if _overlap(iv(mean, half), iv(m, h))]
    return name, mean, half, ties


def quality_label(ps: ProblemSummary) -> str:
    """When the final quality is taken: ``"at equal training time (T s)"`` in a
    time-budgeted sweep, else ``"after the same epochs"`` (or budget)."""
    if ps.equal_time:
        return f"at equal training time ({ps.time_budget:.3g} s)"
    if math.isfinite(ps.tuning_epochs):
        return f"after the same epochs ({ps.tuning_epochs:g})"
    return "after the same budget"


def failures_to_learn(ps: ProblemSummary) -> dict[str, str]:
    """``{method: reason}`` for the methods that failed to learn (module docstring)."""
    out = {}
    chance = (ps.data or {}).get("chance_test")
    for m in ps.methods:
        reasons = []
        if ps.metric == "val_acc" and chance is not None:
            acc = m.stat("test_acc")[0]
            if math.isfinite(acc) and acc <= chance + CHANCE_MARGIN:
                reasons.append(f"final test accuracy {acc:.3g} is at chance level "
                               f"({chance:.3g}, the majority class)")
        final, first = m.stat("train_loss")[0], m.initial("train_loss")
        if (math.isfinite(final) and math.isfinite(first)
                and final > first - MIN_LOSS_DECREASE * abs(first)):
            reasons.append(f"final training loss {final:.4g} is no better than the initial "
                           f"{first:.4g}")
        if reasons:
            out[m.optimizer] = "; ".join(reasons)
    return out


@dataclass(frozen=True)
class GridEdge:
    """A selected knob value at the edge of the values tried."""

    optimizer: str
    knob: str
    value: float
    values: tuple[float, ...]
    side: str  # "largest", "smallest" or "only"

    def advice(self) -> str:
        """What to do, in words."""
        if self.side == "only":
            return (f"{self.optimizer}: {self.knob}={self.value:g} is the only value tried, so "
                    f"it was not tuned: use a grid with more values")
        rng = f"{self.values[0]:g} .. {self.values[-1]:g}"
        where = "above" if self.side == "largest" else "below"
        return (f"{self.optimizer}: {self.knob}={self.value:g} is the {self.side} value tried "
                f"({rng}): widen the grid {where} it")


def grid_edges(ps: ProblemSummary) -> list[GridEdge]:
    """The selected settings of ``ps`` at the edge of their grid."""
    out = []
    for m in ps.methods:
        vals = m.knob_values()
        if m.value is None or not vals:
            continue
        if len(vals) == 1:
            side = "only"
        elif m.value == vals[-1]:
            side = "largest"
        elif m.value == vals[0]:
            side = "smallest"
        else:
            continue
        out.append(GridEdge(m.optimizer, m.knob, m.value, tuple(vals), side))
    return out


def _names(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _wins(summaries: Sequence[ProblemSummary], attr: str) -> dict[str, list[str]]:
    """``{method: [problems it won or tied for first]}``."""
    wins: dict[str, list[str]] = {}
    for ps in summaries:
        r = rank_costs(ps.methods, attr)
        if r.winner is not None:
            for name in [r.winner, *r.ties]:
                wins.setdefault(name, []).append(ps.problem)
    return wins


def _leader(wins: dict[str, list[str]], n: int, what: str) -> str:
    if not wins:
        return f"no method reached the {what} in every seed on any problem"
    top = max(len(v) for v in wins.values())
    leaders = [k for k, v in wins.items() if len(v) == top]
    rest = sorted(((len(v), k) for k, v in wins.items() if k not in leaders), reverse=True)
    s = (f"{_names(leaders)} {'was' if len(leaders) == 1 else 'were'} first or tied first on "
         f"{top} of {n} problems")
    if rest:
        s += " (then " + ", ".join(f"{k} on {c}" for c, k in rest[:3]) + ")"
    return s


def answer(summaries: Sequence[ProblemSummary]) -> str:
    """The cross-problem paragraph: which method to use, from the numbers alone.

    The tally counts the primary criteria: the best final test metric (at equal training
    time in a time-budgeted sweep) and the time to each target; backprops to each target
    follow as secondary sentences.
    """
    n = len(summaries)
    if not n:
        return "No problem has results."
    parts = [f"Over {n} problem{'s' if n > 1 else ''}:"]
    if all(ps.equal_time for ps in summaries):
        when = "at equal training time"
    elif not any(ps.equal_time for ps in summaries):
        when = "after the same epochs"
    else:
        when = "at each problem's budget"
    quality: dict[str, list[str]] = {}
    for ps in summaries:
        q = best_quality(ps)
        if q is not None:
            for name in [q[0], *q[3]]:
                quality.setdefault(name, []).append(ps.problem)
    tally: dict[str, int] = {k: len(v) for k, v in quality.items()}
    primary: dict[str, list[str]] = {}  # sentence -> the criteria it describes
    for attr, target, cost, _ in PRIMARY_CRITERIA:
        wins = _wins(summaries, attr)
        for name, probs in wins.items():
            tally[name] = tally.get(name, 0) + len(probs)
        primary.setdefault(_leader(wins, n, target), []).append(f"{cost} to the {target}")
    if tally:
        top = sorted(tally.items(), key=lambda t: -t[1])
        best = [k for k, v in top if v == top[0][1]]
        parts.append(f"overall, {_names(best)} {'was' if len(best) == 1 else 'were'} first or "
                     f"tied first in {top[0][1]} of the {3 * n} (problem, criterion) pairs "
                     f"(the final test metric {when} and the time to the validation and the "
                     "training-loss targets)"
                     + ("; then " + ", ".join(f"{k} ({v})" for k, v in top[len(best):][:3])
                        if len(top) > len(best) else "") + ".")
    parts.append(f"For the final test metric {when}, "
                 + _leader(quality, n, "best test metric") + ".")
    for sentence, crits in primary.items():
        parts.append(f"By {_names(crits)}, {sentence}.")
    secondary: dict[str, list[str]] = {}
    for attr, target, cost, _ in SECONDARY_CRITERIA:
        secondary.setdefault(_leader(_wins(summaries, attr), n, target), []).append(
            f"{cost} to the {target}")
    for sentence, crits in secondary.items():
        parts.append(f"Secondary, by {_names(crits)}: {sentence}.")
    failed: dict[str, list[str]] = {}
    for ps in summaries:
        for name in failures_to_learn(ps):
            failed.setdefault(name, []).append(ps.problem)
        for name in ps.no_setting:
            failed.setdefault(name, []).append(ps.problem)
    if failed:
        parts.append("Failed to learn or had no usable setting: "
                     + "; ".join(f"{k} on {_names(v)}" for k, v in failed.items()) + ".")
    unreached = [ps.problem for ps in summaries
                 if not any(math.isfinite(c) for m in ps.methods for c in m.time_to_target)]
    if unreached:
        parts.append(f"No method reached the validation target on {_names(unreached)}.")
    edges = sum(len(grid_edges(ps)) for ps in summaries)
    if edges:
        parts.append(f"{edges} selected setting{'s' if edges > 1 else ''} lie at the edge of "
                     "the grid (flagged per problem): a wider grid may change these rankings.")
    one_seed = all(len(m.runs) <= 1 for ps in summaries for m in ps.methods)
    if one_seed:
        parts.append("With one seed there are no intervals: ties cannot be told from wins.")
    return " ".join(parts)
