"""What a table cell shows: a metric of one (problem, method) cell's runs.

Each metric is ``metric(results, part, problem, method) -> (value, text)``: ``value`` a float
(or ``None``) that the agreement line compares with the paper's number, ``text`` what the
cell prints. Over several seeds the value is the mean (``niters``: the median) and the text
adds the standard deviation. Diverged and failed runs print their status.

- ``niters``: iterations to convergence by [Veitch] eq. 29, the first ``k`` with
  ``|f(x_k) - f(x_{k-1})| <= CONVERGENCE_EPS`` on the full training loss (``> N`` if never).
- ``train_loss``, ``train_acc``, ``val_acc``, ``test_acc``: final values.
- ``knob``: the selected value of the method's tuned knob (its fixed value without a grid).
- ``epoch_time``: training seconds per epoch, mean +- sd over the epochs of seed 0
  ([Filippova] Table 1 "epoch time").
- ``epoch_ratio``: a method's mean epoch time over that of the part's first method (the
  paper's SGD), measured in the same study run.
- ``runtime``: training seconds of the whole budget; ``seconds_per_iteration``: that over the
  iterations; ``gradient_ratio``: seconds per iteration over one gradient of the same
  objective timed in the same run (machine independent).
- ``status``: finished / diverged / failed, with the final training loss.
- ``backprops_to_target``, ``seconds_to_target``: median over seeds of the backprops or
  training seconds at the first evaluation reaching :func:`target_of` (99% training
  accuracy; [AdaptiveNorms] Fig. 3), with the count of seeds that reach it.
- ``stalled``: seeds whose final training loss is above twice the median over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

__all__ = [
    "CONVERGENCE_EPS", "METRICS", "epoch_times", "failed_runs_note", "format_number", "niters",
]

#: [Veitch] eq. 29 tolerance (the paper does not state its epsilon).
CONVERGENCE_EPS = 1e-4

Metric = Callable[[Any, str, str, str], tuple[float | None, str]]


def format_number(x: float | None, digits: int = 4) -> str:
    """``x`` for a table cell: ``digits`` significant digits, scientific below 1e-3 and from 1e5."""
    if x is None or not math.isfinite(x):
        return "-" if x is None else str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def _summary(values: list[float], digits: int = 4) -> tuple[float | None, str]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, "-"
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return mean, format_number(mean, digits)
    return mean, f"{format_number(mean, digits)} ± {format_number(statistics.stdev(vals), 2)}"


def failed_runs_note(records) -> str:
    """`` (k/n failed)``-style note when some of ``records`` did not finish, else ``""``."""
    bad = [r.status for r in records if r.status != "finished"]
    return "" if not bad else f" ({len(bad)}/{len(records)} {'/'.join(sorted(set(bad)))})"


def _final(key: str, digits: int = 4) -> Metric:
    def metric(results, part, problem, method):
        recs = results.runs(part, problem, method)
        if not recs:
            return None, "not run"
        value, text = _summary([r.last.get(key) for r in recs], digits)
        return value, text + failed_runs_note(recs)

    return metric


def niters(train_losses: list[float], eps: float = CONVERGENCE_EPS) -> int | None:
    """First ``k >= 1`` with ``|f_k - f_{k-1}| <= eps`` ([Veitch] eq. 29), else ``None``."""
    for k in range(1, len(train_losses)):
        a, b = train_losses[k], train_losses[k - 1]
        if math.isfinite(a) and math.isfinite(b) and abs(a - b) <= eps:
            return k
    return None


def _niters(results, part, problem, method):
    recs = results.runs(part, problem, method)
    if not recs:
        return None, "not run"
    ks = [niters([m["train_loss"] for m in r.measurements]) for r in recs]
    budget = int(results.study.part(part).budget.get("iterations", 0))
    k = statistics.median([math.inf if k is None else k for k in ks])
    if not math.isfinite(k):  # the median run never converged
        return None, f"> {budget}" + failed_runs_note(recs)
    return float(k), f"{k:g}" + failed_runs_note(recs)


def _knob(results, part, problem, method):
    spec = results.study.part(part).method(method)
    hyper = results.selected.get((part, problem, method), spec.hyperparameters)
    knob = spec.knob
    if knob is None or knob not in hyper:
        return None, "-"
    v = float(hyper[knob])
    return v, f"{v:g}"


def epoch_times(record) -> list[float]:
    """Training seconds of each epoch: differences of the cumulative ``wall_time``."""
    walls = [m["wall_time"] for m in record.measurements if m.get("wall_time") is not None]
    return [b - a for a, b in zip(walls[:-1], walls[1:], strict=False)]


def _epoch_time(results, part, problem, method):
    recs = results.runs(part, problem, method)
    if not recs:
        return None, "not run"
    times = epoch_times(recs[0])
    if not times:
        return None, "-" + failed_runs_note(recs)
    mean = statistics.fmean(times)
    sd = statistics.stdev(times) if len(times) > 1 else 0.0
    return mean, f"{mean:.3g} ± {sd:.2g}" + failed_runs_note(recs)


def _epoch_ratio(results, part, problem, method):
    reference = results.study.part(part).methods[0].label
    ours, _ = _epoch_time(results, part, problem, method)
    ref, _ = _epoch_time(results, part, problem, reference)
    if ours is None or not ref:
        return None, "-"
    return ours / ref, f"{ours / ref:.2f}"


def _runtime(results, part, problem, method):
    return _final("wall_time", 3)(results, part, problem, method)


def _per_iteration(results, part, problem, method):
    recs = results.runs(part, problem, method)
    if not recs:
        return None, "not run"
    vals = [r.last["wall_time"] / r.last["step"] for r in recs if r.last.get("step")]
    value, text = _summary(vals, 3)
    return value, text + failed_runs_note(recs)


def _gradient_ratio(results, part, problem, method):
    recs = results.runs(part, problem, method)
    if not recs:
        return None, "not run"
    vals = []
    for r in recs:
        grad = (r.measurements[0].get("optimizer_counters") or {}).get("gradient_seconds")
        if grad and r.last.get("step"):
            vals.append(r.last["wall_time"] / r.last["step"] / grad)
    value, text = _summary(vals, 3)
    return value, text


def _status(results, part, problem, method):
    recs = results.runs(part, problem, method)
    if not recs:
        return None, "not run"
    parts = []
    for r in recs:
        loss = r.last.get("train_loss")
        text = f"{r.status}, final train loss {format_number(loss)}"
        if r.error:
            text += f" ({r.error[:80]})"
        parts.append(text)
    return None, "; ".join(parts)


#: Training accuracy that counts as "reached" ([AdaptiveNorms] Fig. 3's dotted line).
TARGET_ACCURACY = 0.99


def target_of(results, part: str, problem: str) -> tuple[str, float, bool]:
    """``(key, value, above)`` a run must reach: training accuracy >= 0.99, or, for a
    problem without accuracy (autoencoders), the training loss at or below the median final
    training loss of the part's first method ([AdaptiveNorms]: the spherical TR)."""
    first = results.study.part(part).methods[0].label
    recs = results.runs(part, problem, first)
    if recs and recs[0].measurements and recs[0].measurements[0].get("train_acc") is None:
        finals = [r.last.get("train_loss") for r in recs if r.last.get("train_loss") is not None]
        finals = [v for v in finals if math.isfinite(v)]
        return "train_loss", statistics.median(finals) if finals else -math.inf, False
    return "train_acc", TARGET_ACCURACY, True


def reach(record, key: str, target: float, above: bool, x: str) -> float:
    """``x`` (``"backprops"``, ``"wall_time"``) at the first evaluation reaching the target
    (``inf`` if none does)."""
    for m in record.measurements:
        v = m.get(key)
        if v is not None and math.isfinite(v) and (v >= target if above else v <= target):
            return m[x]
    return math.inf


def _to_target(x: str) -> Metric:
    def metric(results, part, problem, method):
        recs = results.runs(part, problem, method)
        if not recs:
            return None, "not run"
        key, target, above = target_of(results, part, problem)
        hits = [reach(r, key, target, above, x) for r in recs]
        med = statistics.median(hits)
        n = sum(math.isfinite(h) for h in hits)
        text = f"{format_number(med, 3) if math.isfinite(med) else 'not reached'} ({n}/{len(recs)})"
        return (med if math.isfinite(med) else None), text + failed_runs_note(recs)

    return metric


def _stalled(results, part, problem, method):
    """Seeds whose final training loss exceeds twice the median over seeds."""
    recs = results.runs(part, problem, method)
    finals = [r.last.get("train_loss") for r in recs]
    finals = [v if v is not None and math.isfinite(v) else math.inf for v in finals]
    if not finals:
        return None, "not run"
    med = statistics.median(finals)
    n = sum(v > 2 * med for v in finals)
    return float(n), f"{n}/{len(finals)}"


METRICS: dict[str, Metric] = {
    "niters": _niters,
    "train_loss": _final("train_loss"),
    "train_acc": _final("train_acc"),
    "val_acc": _final("val_acc"),
    "test_acc": _final("test_acc"),
    "knob": _knob,
    "epoch_time": _epoch_time,
    "epoch_ratio": _epoch_ratio,
    "runtime": _runtime,
    "seconds_per_iteration": _per_iteration,
    "gradient_ratio": _gradient_ratio,
    "status": _status,
    "backprops_to_target": _to_target("backprops"),
    "seconds_to_target": _to_target("wall_time"),
    "stalled": _stalled,
}
