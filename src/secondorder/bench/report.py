"""The benchmark report: Markdown and HTML with PNG figures, rebuilt from the database.

Everything is recomputed from the database (:mod:`~secondorder.bench.store`) with the
selection rule of :mod:`~secondorder.bench.sweep`, the targets of
:mod:`~secondorder.bench.summary` and the verdict rules of :mod:`~secondorder.bench.verdict`,
so a report can be rebuilt at any time (``secondorder report --out DIR``).

The report opens with the **verdict**: per problem, the data used, the training-time budget
(:mod:`~secondorder.bench.time_budget`), both targets, the best final test metric at equal
training time, the winner, ties and runners-up by time to each target (primary) and by
backprops (secondary), the methods that failed to learn, and the selected settings at the
edge of their grid; then, across problems, a paragraph in words and the performance
profiles. Then:

- **Summary table** per problem: final train loss, validation and test metric (mean and
  95% CI over seeds; in a time-budgeted sweep these are values at equal training time),
  backprops and time to each target (mean and 95% CI when every seed reached it, else the
  median, with the number of seeds that reached it), notes, and diverged / failed runs
  among all runs of the method on the problem.
- Secondary tables per problem (:mod:`~secondorder.bench.equal_time`): every method's
  train loss, validation and test metric at equal epochs and at equal backprops (an
  equal-epoch sweep: at equal training time and equal backprops).
- Under every table, the timing conditions (:mod:`~secondorder.bench.timing`); a warning
  at the top names each phase during which other processes competed for the cores.
- **Table 1** (layout of [Filippova] Table 1): method, tuned knob value, test accuracy
  (test loss on problems without accuracy), epoch time (mean +- standard deviation).
- **Tables 3-4** ([Veitch] Tables 3 and 4): train and dev (validation) accuracy, runtime
  and runtime per iteration (optimizer step).

Figures (``figures/``, :mod:`~secondorder.bench.figures`): training loss against epochs,
backprops and time; test metric against epochs and time; costs to target as bars; knob
sensitivity; performance profiles.
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secondorder.bench import figures as figs
from secondorder.bench import timing, verdict
from secondorder.bench.accounting import WEIGHTS
from secondorder.bench.analysis import TARGET_FRACTION, load_records
from secondorder.bench.datafacts import META_KEY, describe, facts_from_registry
from secondorder.bench.equal_time import common_budget, stats_at
from secondorder.bench.store import Store
from secondorder.bench.summary import (
    REACH_ATOL,
    REACH_RTOL,
    CostStat,
    MethodSummary,
    ProblemSummary,
    cost_stat,
    summarize,
)
from secondorder.bench.time_budget import MAX_EPOCH_FACTOR, MIN_TIME_BUDGET
from secondorder.bench.time_budget import META_KEY as BUDGET_META_KEY

__all__ = ["SUMMARY_HEADERS", "MethodSummary", "ProblemSummary", "summarize", "write_report"]


# ------------------------------------------------------------------------- formatting
def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
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


def _cost(s: CostStat, unit: str = "", digits: int = 3) -> str:
    """``mean ± half unit`` when every seed reached, else the median; then ``(k/n)``."""
    u = f" {unit}" if unit else ""
    if s.complete:
        return f"{_pm(s.center, s.half, digits)}{u} ({s.reached}/{s.n})"
    if math.isfinite(s.center):
        return f"median {_fmt(s.center, digits)}{u} ({s.reached}/{s.n})"
    return f"- ({s.reached}/{s.n})"


class _Doc:
    """Builds the Markdown and the HTML side by side (``**bold**`` in both)."""

    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    @staticmethod
    def _h(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))

    def heading(self, text: str, level: int = 2) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{self._h(text)}</p>")

    def bullets(self, items: Sequence[str]) -> None:
        if not items:
            return
        self.md += [f"- {t}" for t in items] + [""]
        self.html.append("<ul>" + "".join(f"<li>{self._h(t)}</li>" for t in items) + "</ul>")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.md.append("| " + " | ".join(headers) + " |")
        self.md.append("|" + "|".join("---" for _ in headers) + "|")
        self.md += ["| " + " | ".join(r) + " |" for r in rows]
        self.md.append("")
        h = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in headers) + "</tr>"]
        h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        self.html.append("\n".join(h + ["</table>"]))

    def image(self, rel: str, alt: str, caption: str = "") -> None:
        self.md += [f"![{alt}]({rel})", ""] + ([f"*{caption}*", ""] if caption else [])
        self.html.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(alt)}" '
                         'style="max-width:100%">'
                         + (f"<figcaption>{html.escape(caption)}</figcaption>" if caption
                            else "") + "</figure>")


# ------------------------------------------------------------------------- verdict text
def _ranking_line(r: verdict.Ranking, target: str, cost: str, unit: str) -> str:
    head = f"{cost.capitalize()} to the {target}: "
    if r.winner is None:
        s = head + "no method reached it in every seed"
    else:
        win = r.order[0][1]
        s = head + f"**{r.winner}** {_cost(win, unit)}"
        if r.ties:
            s += "; tie (overlapping intervals): " + ", ".join(
                f"{n} {_cost(st, unit)}" for n, st in r.order if n in r.ties)
        rest = [(n, st) for n, st in r.order[1:] if n not in r.ties][:3]
        if rest:
            s += "; runners-up: " + ", ".join(f"{n} {_cost(st, unit)}" for n, st in rest)
    if r.partial:
        s += "; in some seeds only: " + ", ".join(f"{n} ({st.reached}/{st.n})"
                                                   for n, st in r.partial)
    if r.never:
        s += "; never: " + ", ".join(r.never)
    return s + "."


def _targets_line(ps: ProblemSummary) -> str:
    what = ps.metric.replace("val_", "validation ").replace("acc", "accuracy")
    return (f"Targets: {what} {'>=' if ps.higher else '<='} {_fmt(ps.target)} "
            f"({TARGET_FRACTION:.0%} of the best improvement of "
            f"{', '.join(ps.target_from) or '-'}); training loss <= {_fmt(ps.loss_target)} "
            f"(the lowest reached by {', '.join(ps.loss_target_from) or '-'}).")


def _budget_line(ps: ProblemSummary) -> str:
    """How long every method trained on ``ps``."""
    if not ps.equal_time:
        if not math.isfinite(ps.tuning_epochs):  # --budget-backprops / --budget-seconds
            budget = next((r.budget for m in ps.methods for r in m.runs), {})
            what = ", ".join(f"{v:g} {k}" for k, v in budget.items()) or "-"
            return f"Budget: every run had the same budget ({what})."
        return (f"Budget: every method trained the same epochs ({ps.tuning_epochs:g}), so "
                "cheap methods trained for less time (the equal-time table below reads "
                "the curves at a common time).")
    c = ps.calibration or {}
    slowest = c.get("slowest")
    why = (f"the slowest selected setting that learned, {slowest}, took "
           f"{c.get('slowest_seconds', 0):.3g} s for its {ps.tuning_epochs:g} tuning epochs"
           if slowest else "no timed tuning run of a method that learned")
    return (f"Budget: every method trained {ps.time_budget:.3g} s (calibrated after tuning: "
            f"{why}; at least {MIN_TIME_BUDGET:g} s; at most {MAX_EPOCH_FACTOR:g} x "
            f"{ps.tuning_epochs:g} epochs).")


def _verdict_items(ps: ProblemSummary) -> list[str]:
    items = [_budget_line(ps)]
    q = verdict.best_quality(ps)
    what = "test accuracy" if ps.test_key == "test_acc" else "test loss"
    if q is not None:
        name, mean, half, ties = q
        items.append(f"Best final {what} {verdict.quality_label(ps)}: **{name}** "
                     f"{_pm(mean, half)}" + (f"; tie: {', '.join(ties)}" if ties else "") + ".")
    items += [_ranking_line(verdict.rank_costs(ps.methods, attr), target, cost, unit)
              for attr, target, cost, unit in verdict.PRIMARY_CRITERIA]
    items += ["Secondary: " + _ranking_line(verdict.rank_costs(ps.methods, attr), target,
                                            cost, unit)
              for attr, target, cost, unit in verdict.SECONDARY_CRITERIA]
    failed = verdict.failures_to_learn(ps)
    if failed:
        items.append("Failed to learn: " + "; ".join(f"**{k}** ({v})"
                                                    for k, v in failed.items()) + ".")
    if ps.data is None or "chance_test" not in (ps.data or {}):
        if ps.metric == "val_acc":
            items.append("Chance level unknown (data not recorded): accuracy not checked "
                         "against chance.")
    if ps.no_setting:
        items.append("Every setting diverged or failed: " + ", ".join(ps.no_setting) + ".")
    edges = verdict.grid_edges(ps)
    for e in edges:
        if e.side != "only":
            items.append("Grid edge: " + e.advice() + ".")
    single = [f"{e.optimizer} ({e.knob}={e.value:g})" for e in edges if e.side == "only"]
    if single:
        items.append("Not tuned (one value tried; use a grid with more values): "
                     + ", ".join(single) + ".")
    return items


# ------------------------------------------------------------------------- tables
SUMMARY_HEADERS = ("Method", "Setting", "Final train loss", "Validation", "Test",
                   "Backprops to val. target", "Time to val. target (s)",
                   "Backprops to loss target", "Time to loss target (s)", "Notes",
                   "Diverged", "Failed")


def summary_rows(ps: ProblemSummary) -> list[list[str]]:
    """The rows of the per-problem summary table (:data:`SUMMARY_HEADERS`) for ``ps``."""
    failed = verdict.failures_to_learn(ps)
    edges = {e.optimizer: e for e in verdict.grid_edges(ps)}
    rows = []
    for m in ps.methods:
        notes = []
        if m.optimizer in failed:
            notes.append("failed to learn")
        if m.optimizer in edges:
            e = edges[m.optimizer]
            notes.append("only value tried" if e.side == "only" else f"{e.side} value tried")
        rows.append([
            m.optimizer, f"{m.knob}={_fmt(m.value, 3)}",
            _pm(*m.stat("train_loss")), _pm(*m.stat(ps.metric)), _pm(*m.stat(ps.test_key)),
            _cost(cost_stat(m.backprops_to_target)), _cost(cost_stat(m.time_to_target)),
            _cost(cost_stat(m.backprops_to_loss_target)),
            _cost(cost_stat(m.time_to_loss_target)),
            ", ".join(notes) or "-",
            f"{m.diverged}/{m.total_runs}", f"{m.failed}/{m.total_runs}",
        ])
    return rows


def _paper_tables(doc: _Doc, ps: ProblemSummary, timing_line: str) -> None:
    acc = ps.metric == "val_acc"
    doc.heading(f"Table 1: {ps.problem}", 3)
    doc.table(
        ("Method", "Knob", "Test accuracy" if acc else "Test loss", "Epoch time (s)"),
        [[m.optimizer, f"{m.knob}={_fmt(m.value, 3)}", _pm(*m.stat(ps.test_key)),
          _pm(*_sd(m.epoch_times()), digits=3)] for m in ps.methods])
    doc.para(timing_line)
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
    doc.para(timing_line)


def _secondary_tables(doc: _Doc, ps: ProblemSummary, timing_line: str) -> None:
    """Quality at equal epochs and equal backprops (a time-budgeted sweep) or at equal
    time and equal backprops (an equal-epoch sweep), read from the recorded curves
    (:mod:`~secondorder.bench.equal_time`)."""
    acc = ps.metric == "val_acc"
    keys = ("train_loss", ps.metric, ps.test_key, "data_epoch", "wall_time", "backprops")
    views = []
    if ps.equal_time:
        views.append(("Equal epochs", "data_epoch", ps.tuning_epochs,
                      f"Every method after {ps.tuning_epochs:g} epochs (the tuning budget), "
                      "read from the equal-time runs (a method that trained fewer epochs "
                      "in the time budget shows its last value)."))
    else:
        views.append(("Equal training time", "wall_time", common_budget(ps, "wall_time"),
                      "Every method after {b:.3g} s of training (the shortest median run "
                      "time of the selected settings; value of the last evaluation at or "
                      "before it). The default `--equal time` gives every method the same "
                      "time budget instead."))
    views.append(("Equal backprops", "backprops", common_budget(ps, "backprops"),
                  "Every method after {b:.3g} backprop-equivalents (the shortest median "
                  "run of the selected settings)."))
    for title, cost, limit, text in views:
        if not math.isfinite(limit):
            continue
        stats = stats_at(ps, limit, keys, cost)
        doc.heading(f"{title}: {ps.problem} (secondary)", 3)
        doc.para(text.format(b=limit))
        doc.table(("Method", "Train loss", "Val acc" if acc else "Val loss",
                   "Test acc" if acc else "Test loss", "Epochs", "Time (s)", "Backprops"),
                  [[name, _pm(*st["train_loss"]), _pm(*st[ps.metric]), _pm(*st[ps.test_key]),
                    _fmt(st["data_epoch"][0], 3), _fmt(st["wall_time"][0], 3),
                    _fmt(st["backprops"][0], 3)] for name, st in stats.items()])
        doc.para(timing_line)


def _figure(doc: _Doc, figures: list[Path] | None, figdir: Path, name: str, alt: str,
            made) -> None:
    if figures is None:  # an interim report: no figures
        return
    fig, caption = made() if callable(made) else made
    path = figs.save(fig, figdir / name)
    figures.append(path)
    doc.image(f"figures/{path.name}", alt, caption)


# ------------------------------------------------------------------------- report
def _protocol(doc: _Doc) -> None:
    doc.heading("Protocol")
    doc.para(
        "Each optimizer's main knob is tuned on seed 0 over its grid with the problem's epoch "
        "budget; the setting with the best final validation metric (accuracy, else loss) is "
        "selected and rerun with all seeds. In a time-budgeted sweep (the default) these "
        "reruns all train for the same time T per problem: the training time the slowest "
        f"selected setting took in tuning, at least {MIN_TIME_BUDGET:g} s, cheap methods "
        f"running more epochs (at most {MAX_EPOCH_FACTOR:g} times the budget); final values "
        "are then values at equal time, and times to target lie within T. Intervals are 95% "
        "t-intervals over seeds. Wall time excludes evaluation. "
        "Costs are measured by the harness in backprop-equivalents per training-set size "
        f"(forward {WEIGHTS['forward']}, gradient backward {WEIGHTS['gradient']}, "
        f"Hessian-vector product {WEIGHTS['hvp']} per sample; one SGD epoch = 1). "
        f"Validation target: {TARGET_FRACTION:.0%} of the improvement over initialization of "
        "the best tuned first-order method's best validation value (mean over seeds). "
        "Training-loss target: the lowest training loss a tuned first-order method reaches "
        "(mean over seeds of each run's lowest). A value reaches a target when it is at "
        f"least as good up to {REACH_RTOL:g} times the target's magnitude plus {REACH_ATOL:g} "
        "times the initial value's. Costs to target: mean and 95% interval when every seed "
        "reached the target, else the median, with the seeds that reached it; a winner must "
        "reach the target in every seed, and methods whose intervals overlap the winner's "
        f"are tied. Failed to learn: final test accuracy within {verdict.CHANCE_MARGIN:g} of "
        "chance (the majority class of the test split), or a final training loss less than "
        f"{verdict.MIN_LOSS_DECREASE:.0%} below the initial one.")


def write_report(db_path: str | Path, out_dir: str | Path, sweep: str | None = None,
                 command: str | None = None, *, with_figures: bool = True,
                 note: str | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` under ``out_dir``.

    Args:
        db_path: the results database.
        out_dir: destination folder (created).
        sweep: the sweep to report; default the most recently active one.
        command: the command line to print in the report.
        with_figures: draw the figures (the interim reports of a running sweep do not).
        note: a paragraph printed first (e.g. "interim report: 3 of 10 problems done").

    Returns:
        ``{"markdown": Path, "html": Path, "figures": [Path], "summaries": [...],
        "answer": str}``.

    Raises:
        FileNotFoundError: if ``db_path`` does not exist.
        ValueError: if the database has no finished run for the sweep.
    """
    db_path = Path(db_path)
    if not db_path.exists():
        raise FileNotFoundError(f"no results database at {db_path}: run `secondorder bench`")
    with Store(db_path, readonly=True) as store:
        sweeps = store.sweeps()
        if sweep is None:
            if not sweeps:
                raise ValueError(f"the database {db_path} has no runs")
            sweep = sweeps[-1]
        records = load_records(store, sweep)
        skipped = store.get_meta(sweep, "skipped_optimizers", {}) or {}
        config = store.get_meta(sweep, "config", {}) or {}
        data = store.get_meta(sweep, META_KEY, None)
        env = store.environment()
        conditions = store.get_meta(sweep, timing.META_KEY, {}) or {}
        budgets = (store.get_meta(sweep, BUDGET_META_KEY, None)
                   if config.get("equal") == "time" else None)
    if not records:
        raise ValueError(f"the database {db_path} has no finished run for sweep {sweep!r}")
    problems = list(dict.fromkeys(r.problem for r in records))
    data_note = ""
    if data is None:
        data = facts_from_registry(problems, config.get("data_dir"))
        data_note = (" (not recorded by this older sweep: recomputed from the problem "
                     "definition, split seed 0)")
    summaries = summarize(records, data, budgets)
    out = Path(out_dir)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    figures: list[Path] | None = [] if with_figures else None
    doc = _Doc()
    doc.heading(f"secondorder benchmark: {sweep}", 1)
    doc.para(f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {db_path.name}"
             + (f"; command: `{command}`" if command else "") + ".")
    if note:
        doc.para(f"**{note}**")
    timing_line = timing.describe(conditions)
    for w in timing.warnings_for(conditions):
        doc.para(f"**Warning:** {w}.")

    doc.heading("Verdict")
    for ps in summaries:
        doc.heading(ps.problem, 3)
        doc.para(describe(ps.data) + (data_note if ps.data else ""))
        doc.para(_targets_line(ps))
        doc.bullets(_verdict_items(ps))
    doc.heading("Across problems", 3)
    paragraph = verdict.answer(summaries)
    doc.para(paragraph)
    _figure(doc, figures, figdir, "performance_profile.png", "performance profiles",
            lambda: figs.profiles(summaries))

    if env:
        e = env[-1]
        doc.para(f"Environment: Python {e['python']}, torch {e['torch']}, numpy {e['numpy']}, "
                 f"secondorder {e['secondorder']}, device {e['device']}, {e['threads']} "
                 f"threads, {e['platform']}.")
    if config:
        tuning_budget = config.get('budget') or 'problem default epochs'
        budget = (f"tuning {tuning_budget}, then every method the same calibrated training "
                  "time per problem" if config.get("equal") == "time" else tuning_budget)
        doc.para(f"Sweep: seeds={config.get('seeds')}, grid={config.get('grid')}, "
                 f"budget={budget}, workers={config.get('workers')}.")
    _protocol(doc)
    if skipped:
        doc.heading("Optimizers not run")
        doc.table(("Optimizer", "Reason"), [[k, v] for k, v in skipped.items()])
    doc.heading("Summary")
    for ps in summaries:
        doc.heading(f"{ps.problem}: final values {verdict.quality_label(ps)}", 3)
        doc.para(f"Metric: {ps.metric} ({'higher' if ps.higher else 'lower'} is better). "
                 + _targets_line(ps))
        doc.table(SUMMARY_HEADERS, summary_rows(ps))
        doc.para(timing_line)
        _secondary_tables(doc, ps, timing_line)
    for ps in summaries:
        doc.heading(f"Problem {ps.problem}")
        _paper_tables(doc, ps, timing_line)
        for kind, fn in (("loss", figs.loss_curves), ("test", figs.metric_curves),
                         ("to_target", figs.cost_bars), ("sensitivity", figs.sensitivity)):
            _figure(doc, figures, figdir, f"{ps.problem}_{kind}.png",
                    f"{ps.problem} {kind.replace('_', ' ')}", lambda fn=fn, ps=ps: fn(ps))
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
        "figcaption{font-style:italic;font-size:90%}"
        "</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n")
    return {"markdown": md, "html": page, "figures": figures or [], "summaries": summaries,
            "answer": paragraph}
