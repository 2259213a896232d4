"""The benchmark report: Markdown and HTML tables, matplotlib (Agg) PNG figures.

Everything is recomputed from the database (:mod:`~secondorder.bench.store`) with the
selection rule, targets and statistics of :mod:`~secondorder.bench.sweep`, so a report can
be rebuilt at any time (``secondorder report --out DIR``).

Tables, per problem:

- **Table 1** (layout of seed 000 Table 1): method, tuned knob value, test accuracy (mean
  and 95% CI over seeds; test loss on problems without accuracy), epoch time (training
  wall time per pass through the data, mean +- standard deviation over seeds).
- **Table 3/4** (seed 003 Tables 3 and 4): train and dev (validation) accuracy, runtime and
  runtime per iteration (optimizer step).
- **Summary**: final train loss, validation and test metric with 95% CI, backprops- and
  time-to-target (median over seeds; "-" when not reached, with the count of seeds that
  reached it), and diverged / failed runs among all runs of the method on the problem.

Figures (``figures/``): training loss against epochs, backprop-equivalents and seconds;
test accuracy against epochs; knob sensitivity (final validation metric against the knob
value, diverged settings marked); performance profiles over problems (backprops and time).
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from secondorder.bench.accounting import WEIGHTS  # noqa: E402
from secondorder.bench.registry import REGISTRY  # noqa: E402
from secondorder.bench.store import Store  # noqa: E402
from secondorder.bench.sweep import (  # noqa: E402
    TARGET_FRACTION,
    RunRecord,
    load_records,
    mean_ci,
    median_cost,
    metric_for,
    performance_profile,
    select_best,
    target_for,
    time_to_target,
)

__all__ = ["MethodSummary", "ProblemSummary", "summarize", "write_report"]


@dataclass
class MethodSummary:
    """Statistics of one optimizer on one problem (its selected setting's repetitions)."""

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

    def stat(self, key: str) -> tuple[float, float]:
        """Mean and 95% CI half-width of the final ``key`` over repetitions."""
        return mean_ci([r.last.get(key) for r in self.runs if r.last.get(key) is not None])

    def epoch_times(self) -> list[float]:
        return [r.last["wall_time"] / r.last["data_epoch"] for r in self.runs
                if r.last.get("data_epoch")]

    def step_times(self) -> list[float]:
        return [r.last["wall_time"] / r.last["step"] for r in self.runs if r.last.get("step")]

    def reached(self) -> int:
        return sum(math.isfinite(t) for t in self.backprops_to_target)


@dataclass
class ProblemSummary:
    """Everything the report says about one problem."""

    problem: str
    metric: str
    higher: bool
    target: float
    target_from: list[str]
    methods: list[MethodSummary]
    no_setting: list[str]


def summarize(records: Sequence[RunRecord]) -> list[ProblemSummary]:
    """Selection, repetitions, targets and costs to target per problem (sweep docstring)."""
    out = []
    for problem in dict.fromkeys(r.problem for r in records):
        recs = [r for r in records if r.problem == problem]
        key, higher = metric_for(recs)
        methods, no_setting = [], []
        for opt in dict.fromkeys(r.optimizer for r in recs):
            mine = [r for r in recs if r.optimizer == opt]
            tuning = [r for r in mine if r.seed == 0]
            best = select_best(tuning)
            diverged = sum(r.status == "diverged" for r in mine)
            failed = sum(r.status == "failed" for r in mine)
            if best is None:
                no_setting.append(opt)
                continue
            spec = REGISTRY.get(opt)
            knob = spec.knob if spec is not None else "?"
            reps = [r for r in mine if r.hyperparameters == best.hyperparameters
                    and r.budget == best.budget]
            methods.append(MethodSummary(opt, knob, best.hyperparameters.get(knob), reps,
                                         diverged, failed, len(mine), tuning))
        baselines = {m.optimizer: [r.measurements for r in m.runs] for m in methods
                     if REGISTRY.get(m.optimizer) is not None
                     and REGISTRY[m.optimizer].first_order}
        target_from = list(baselines) if baselines else [m.optimizer for m in methods]
        if not baselines:
            baselines = {m.optimizer: [r.measurements for r in m.runs] for m in methods}
        target = target_for(baselines, key, higher)
        for m in methods:
            m.backprops_to_target = [
                time_to_target(r.measurements, key, target, higher, "backprops") if r.ok
                else math.inf for r in m.runs]
            m.time_to_target = [
                time_to_target(r.measurements, key, target, higher, "wall_time") if r.ok
                else math.inf for r in m.runs]
        out.append(ProblemSummary(problem, key, higher, target, target_from, methods,
                                  no_setting))
    return out


# ------------------------------------------------------------------------- formatting
def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _pm(mean: float, half: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(half):
        return _fmt(mean, digits)
    return f"{mean:.{digits}g} ± {half:.2g}"


def _sd(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, math.nan
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _ttt(costs: list[float], digits: int = 3) -> str:
    med = median_cost(costs)
    k = sum(math.isfinite(c) for c in costs)
    return f"{_fmt(med, digits)} ({k}/{len(costs)})"


class _Doc:
    """Builds the Markdown and the HTML side by side."""

    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.md.append("| " + " | ".join(headers) + " |")
        self.md.append("|" + "|".join("---" for _ in headers) + "|")
        self.md += ["| " + " | ".join(r) + " |" for r in rows]
        self.md.append("")
        h = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in headers) + "</tr>"]
        h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        self.html.append("\n".join(h + ["</table>"]))

    def image(self, rel: str, alt: str) -> None:
        self.md += [f"![{alt}]({rel})", ""]
        self.html.append(f'<p><img src="{html.escape(rel)}" alt="{html.escape(alt)}" '
                         'style="max-width:100%"></p>')


# ------------------------------------------------------------------------- figures
def _series(rec: RunRecord, x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(m[x], m[y]) for m in rec.measurements
           if m.get(x) is not None and m.get(y) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _layout(fig) -> None:
    # Fixed margins: tight_layout costs about a second per figure.
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.88, wspace=0.28)


def _colors(names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab20")
    return {n: cmap(i % 20) for i, n in enumerate(names)}


def _linestyle(name: str) -> str:
    """First-order baselines dashed, curvature methods solid (15 colors are hard to tell)."""
    spec = REGISTRY.get(name)
    return "--" if spec is not None and spec.first_order else "-"


def _curves(ps: ProblemSummary, path: Path) -> None:
    colors = _colors([m.optimizer for m in ps.methods])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    xs = [("data_epoch", "epochs (passes through the data)"),
          ("backprops", "backprop-equivalents (full-data gradients)"),
          ("wall_time", "training time (s, evaluation excluded)")]
    positive = True
    for ax, (x, label) in zip(axes, xs, strict=True):
        for m in ps.methods:
            for i, r in enumerate(m.runs):
                a, b = _series(r, x, "train_loss")
                positive &= all(v > 0 for v in b)
                ax.plot(a, b, color=colors[m.optimizer], alpha=0.8 if i == 0 else 0.35,
                        linestyle=_linestyle(m.optimizer),
                        label=m.optimizer if i == 0 else None)
        ax.set_xlabel(label)
        ax.set_ylabel("training loss")
    if positive:
        for ax in axes:
            ax.set_yscale("log")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle(f"{ps.problem}: training loss (selected settings, all seeds)")
    _layout(fig)
    fig.subplots_adjust(right=0.87)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _test_metric(ps: ProblemSummary, path: Path) -> None:
    key = "test_acc" if ps.metric == "val_acc" else "test_loss"
    colors = _colors([m.optimizer for m in ps.methods])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in ps.methods:
        for i, r in enumerate(m.runs):
            a, b = _series(r, "data_epoch", key)
            ax.plot(a, b, color=colors[m.optimizer], alpha=0.8 if i == 0 else 0.35,
                    label=m.optimizer if i == 0 else None)
    if key == "test_loss":
        vals = [v for m in ps.methods for r in m.runs for v in _series(r, "data_epoch", key)[1]]
        if vals and all(v > 0 for v in vals):
            ax.set_yscale("log")
    ax.set_xlabel("epochs")
    ax.set_ylabel("test accuracy" if key == "test_acc" else "test loss")
    ax.legend(fontsize=7)
    ax.set_title(f"{ps.problem}: {'test accuracy' if key == 'test_acc' else 'test loss'}")
    _layout(fig)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _sensitivity(ps: ProblemSummary, path: Path) -> None:
    colors = _colors([m.optimizer for m in ps.methods])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in ps.methods:
        pts = sorted(((r.hyperparameters.get(m.knob), r) for r in m.tuning
                      if r.hyperparameters.get(m.knob) is not None), key=lambda t: t[0])
        ok = [(v, r.last.get(ps.metric)) for v, r in pts if r.ok and r.last.get(ps.metric)
              is not None]
        bad = [v for v, r in pts if not r.ok]
        if ok:
            ax.plot([p[0] for p in ok], [p[1] for p in ok], "o-", color=colors[m.optimizer],
                    label=f"{m.optimizer} ({m.knob})")
        if bad:
            ax.plot(bad, [0.0] * len(bad) if ps.higher else [math.nan] * len(bad), "x",
                    color=colors[m.optimizer])
    ax.set_xscale("log")
    ax.set_xlabel("knob value (learning rate, radius, sigma, damping, Taylor ratio)")
    ax.set_ylabel(f"final {ps.metric.replace('_', ' ')} (seed 0)")
    if not ps.higher:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(f"{ps.problem}: sensitivity (x = diverged/failed)")
    _layout(fig)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _profiles(summaries: Sequence[ProblemSummary], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (attr, label) in zip(
        axes, [("backprops_to_target", "backprops to target"),
               ("time_to_target", "time to target")], strict=True
    ):
        costs = {ps.problem: {m.optimizer: median_cost(getattr(m, attr)) for m in ps.methods}
                 for ps in summaries}
        taus, rho = performance_profile(costs)
        colors = _colors(list(rho))
        for name, r in rho.items():
            ax.step(taus, r, where="post", label=name, color=colors[name])
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("tau (ratio to the best method)")
        ax.set_ylabel("fraction of problems")
        ax.set_title(f"performance profile: {label}")
    axes[0].legend(fontsize=7)
    _layout(fig)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------- report
def _summary_rows(ps: ProblemSummary) -> list[list[str]]:
    rows = []
    test_key = "test_acc" if ps.metric == "val_acc" else "test_loss"
    for m in ps.methods:
        rows.append([
            m.optimizer, f"{m.knob}={_fmt(m.value, 3)}",
            _pm(*m.stat("train_loss")), _pm(*m.stat(ps.metric)), _pm(*m.stat(test_key)),
            _ttt(m.backprops_to_target), _ttt(m.time_to_target),
            f"{m.diverged}/{m.total_runs}", f"{m.failed}/{m.total_runs}",
        ])
    return rows


SUMMARY_HEADERS = ("Method", "Setting", "Final train loss", "Validation", "Test",
                   "Backprops to target", "Time to target (s)", "Diverged", "Failed")


def write_report(db_path: str | Path, out_dir: str | Path, sweep: str | None = None,
                 command: str | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` under ``out_dir``.

    Args:
        db_path: the results database.
        out_dir: destination folder (created).
        sweep: the sweep to report; default the most recently active one.
        command: the command line to print in the report.

    Returns:
        ``{"markdown": Path, "html": Path, "figures": [Path], "summaries": [...]}``.

    Raises:
        FileNotFoundError: if ``db_path`` does not exist.
        ValueError: if the database has no finished run for the sweep.
    """
    db_path = Path(db_path)
    if not db_path.exists():
        raise FileNotFoundError(f"no results database at {db_path}: run `secondorder bench`")
    out = Path(out_dir)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    with Store(db_path) as store:
        sweeps = store.sweeps()
        if sweep is None:
            if not sweeps:
                raise ValueError(f"the database {db_path} has no runs")
            sweep = sweeps[-1]
        records = load_records(store, sweep)
        skipped = store.get_meta(sweep, "skipped_optimizers", {}) or {}
        config = store.get_meta(sweep, "config", {}) or {}
        env = store.environment()
    if not records:
        raise ValueError(f"the database {db_path} has no finished run for sweep {sweep!r}")
    summaries = summarize(records)
    doc = _Doc()
    doc.heading(f"secondorder benchmark: {sweep}", 1)
    doc.para(f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {db_path.name}"
             + (f"; command: `{command}`" if command else "") + ".")
    if env:
        e = env[-1]
        doc.para(f"Environment: Python {e['python']}, torch {e['torch']}, numpy {e['numpy']}, "
                 f"secondorder {e['secondorder']}, device {e['device']}, {e['threads']} "
                 f"threads, {e['platform']}.")
    if config:
        doc.para(f"Sweep: seeds={config.get('seeds')}, grid={config.get('grid')}, "
                 f"budget={config.get('budget') or 'problem default epochs'}, "
                 f"workers={config.get('workers')}.")
    doc.heading("Protocol")
    doc.para(
        "Each optimizer's main knob is tuned on seed 0 over its grid; the setting with the "
        "best final validation metric (accuracy, else loss) is selected and rerun with all "
        "seeds. Intervals are 95% t-intervals over seeds. Wall time excludes evaluation. "
        "Costs are measured by the harness in backprop-equivalents per training-set size "
        f"(forward {WEIGHTS['forward']}, gradient backward {WEIGHTS['gradient']}, "
        f"Hessian-vector product {WEIGHTS['hvp']} per sample; one SGD epoch = 1). "
        f"Target: {TARGET_FRACTION:.0%} of the improvement over initialization of the best "
        "tuned first-order method's best validation value (mean over seeds); to-target "
        "figures are medians over seeds, with the number of seeds that reached it.")
    if skipped:
        doc.heading("Optimizers not run")
        doc.table(("Optimizer", "Reason"), [[k, v] for k, v in skipped.items()])
    figures: list[Path] = []
    # Summary over all problems first.
    doc.heading("Summary")
    for ps in summaries:
        doc.heading(f"{ps.problem}", 3)
        doc.para(f"Metric: {ps.metric} ({'higher' if ps.higher else 'lower'} is better); "
                 f"target {_fmt(ps.target)} from {', '.join(ps.target_from) or '-'}.")
        doc.table(SUMMARY_HEADERS, _summary_rows(ps))
        if ps.no_setting:
            doc.para("Every setting diverged or failed: " + ", ".join(ps.no_setting) + ".")
    for ps in summaries:
        doc.heading(f"Problem {ps.problem}")
        acc = ps.metric == "val_acc"
        test_key = "test_acc" if acc else "test_loss"
        doc.heading(f"Table 1: {ps.problem}", 3)
        doc.table(
            ("Method", "Knob", "Test accuracy" if acc else "Test loss", "Epoch time (s)"),
            [[m.optimizer, f"{m.knob}={_fmt(m.value, 3)}", _pm(*m.stat(test_key)),
              _pm(*_sd(m.epoch_times()), digits=3)] for m in ps.methods])
        doc.heading(f"Tables 3-4: {ps.problem}", 3)
        tr, va = ("train_acc", "val_acc") if acc else ("train_loss", "val_loss")
        doc.table(
            ("Solver", "Train acc" if acc else "Train loss", "Dev acc" if acc else "Dev loss",
             "Runtime (s)", "Runtime per iteration (s)", "Iterations"),
            [[m.optimizer, _pm(*m.stat(tr)), _pm(*m.stat(va)),
              _fmt(_sd([r.last.get("wall_time", math.nan) for r in m.runs])[0], 3),
              _fmt(_sd(m.step_times())[0], 3),
              _fmt(_sd([r.last.get("step", math.nan) for r in m.runs])[0], 4)]
             for m in ps.methods])
        for kind, fn in (("loss", _curves), ("test", _test_metric),
                         ("sensitivity", _sensitivity)):
            path = figdir / f"{ps.problem}_{kind}.png"
            fn(ps, path)
            figures.append(path)
            doc.image(f"figures/{path.name}", f"{ps.problem} {kind}")
    doc.heading("Performance profiles")
    path = figdir / "performance_profile.png"
    _profiles(summaries, path)
    figures.append(path)
    doc.image(f"figures/{path.name}", "performance profiles")
    failures = [r for r in records if r.status == "failed"]
    if failures:
        doc.heading("Failed runs")
        doc.table(("Problem", "Optimizer", "Setting", "Seed", "Error"),
                  [[r.problem, r.optimizer, str(r.hyperparameters), str(r.seed),
                    (r.error or "")[:200].replace("|", "/").replace("\n", " ")]
                   for r in failures])
    md = out / "report.md"
    md.write_text("\n".join(doc.md) + "\n")
    page = out / "report.html"
    page.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>secondorder benchmark"
        "</title><style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #aaa;padding:2px 6px}"
        "</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n")
    return {"markdown": md, "html": page, "figures": figures, "summaries": summaries}
