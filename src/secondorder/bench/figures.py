"""The report's figures (matplotlib, Agg): curves with bands, costs to target, profiles.

Conventions of every figure:

- **One look per optimizer** (:func:`method_style`), the same in every figure: greys and
  dashed lines for the first-order baselines; a colour of a colour-blind-safe palette
  (Paul Tol's "muted" plus two of Okabe-Ito's) and solid lines for the curvature methods;
  a marker of its own for every registered method. Other names get a stable look.
- **Mean over seeds with a 95% band** (:func:`mean_band`): the runs of the selected
  setting are interpolated onto a common grid over the range every finished run covers;
  the band is the Student-t interval of the mean. On a log axis the statistics are taken
  on ``log10`` of the values (a geometric mean).
- **Log axes** where the data spans more than :data:`DECADES_FOR_LOG` decades: losses, and
  backprops and time on x. Exact zeros (a solver at the optimum, the initial point at x =
  0) are drawn at a floor a decade below the smallest positive value; the caption says so.
- **Diverged and failed runs** are excluded from the mean, drawn thin, and end in an ``x``;
  the legend counts them.
- **Layout**: constrained layout with the legend outside the axes, so no tick label, axis
  label or legend entry falls outside the saved image (checked in the tests).

Each function returns ``(figure, caption)``; :func:`save` writes and closes the figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from scipy import stats  # noqa: E402

from secondorder.bench.analysis import RunRecord, median_cost, performance_profile  # noqa: E402
from secondorder.bench.registry import REGISTRY  # noqa: E402
from secondorder.bench.summary import MethodSummary, ProblemSummary, cost_stat  # noqa: E402

__all__ = [
    "DECADES_FOR_LOG",
    "cost_bars",
    "loss_curves",
    "mean_band",
    "method_style",
    "profiles",
    "save",
    "sensitivity",
    "metric_curves",
]

#: Curvature methods: Paul Tol's colour-blind-safe "muted" palette, then Okabe-Ito's
#: vermillion and blue.
PALETTE = ("#332288", "#CC6677", "#117733", "#DDAA33", "#88CCEE", "#882255", "#44AA99",
           "#999933", "#AA4499", "#D55E00", "#0072B2")
#: First-order baselines: greys (with dashed lines).
GREYS = ("#000000", "#4D4D4D", "#808080", "#B0B0B0", "#262626", "#666666", "#999999",
         "#C8C8C8")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d", "8", "H",
           "1", "2", "3", "4", "+", "x", "|", "_", "$a$", "$b$", "$c$", "$d$", "$e$", "$f$",
           "$g$", "$h$", "$k$")
#: Line styles: first-order baselines cycle through ``FIRST_ORDER_DASHES`` each time the greys
#: repeat, curvature methods through ``CURVATURE_DASHES`` each time the palette repeats.
FIRST_ORDER_DASHES = ("--", ":", (0, (6, 2, 1, 2, 1, 2)), (0, (1, 3)))
CURVATURE_DASHES = ("-", "-.", (0, (8, 2)), (0, (3, 1, 1, 1, 1, 1)))
#: A log axis is used when max / min positive value exceeds 10 ** DECADES_FOR_LOG.
DECADES_FOR_LOG = 1.0
_GRID_POINTS = 120
_X_AXES = (("data_epoch", "epochs (passes through the data)"),
           ("backprops", "backprop-equivalents (full-data gradients)"),
           ("wall_time", "training time (s, evaluation excluded)"))


def method_style(name: str) -> dict[str, object]:
    """The fixed ``color``, ``linestyle`` and ``marker`` of an optimizer (module docstring).

    First-order registry entries: greys, dashed (:data:`FIRST_ORDER_DASHES` once the greys
    repeat); the others: :data:`PALETTE`, solid (:data:`CURVATURE_DASHES` once the palette
    repeats); every registry entry has its own marker.
    """
    first = [n for n, s in REGISTRY.items() if s.first_order]
    other = [n for n, s in REGISTRY.items() if not s.first_order]
    if name in first:
        i = first.index(name)
        dashes = FIRST_ORDER_DASHES[(i // len(GREYS)) % len(FIRST_ORDER_DASHES)]
        return {"color": GREYS[i % len(GREYS)], "linestyle": dashes,
                "marker": MARKERS[list(REGISTRY).index(name) % len(MARKERS)]}
    if name in other:
        i = other.index(name)
        marker = MARKERS[list(REGISTRY).index(name) % len(MARKERS)]
    else:  # not registered (tests, plug-ins): a stable look after the registry's
        i = len(other) + sum(map(ord, name))
        marker = MARKERS[i % len(MARKERS)]
    dashes = CURVATURE_DASHES[(i // len(PALETTE)) % len(CURVATURE_DASHES)]
    return {"color": PALETTE[i % len(PALETTE)], "linestyle": dashes, "marker": marker}


def save(fig: Figure, path: str | Path, dpi: int = 90) -> Path:
    """Write ``fig`` to ``path`` (PNG) and close it."""
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _series(rec: RunRecord, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(m[x], m[y]) for m in rec.measurements
           if m.get(x) is not None and m.get(y) is not None and math.isfinite(m[y])]
    if not pts:
        return np.empty(0), np.empty(0)
    a = np.asarray(pts, dtype=float)
    return a[:, 0], a[:, 1]


class _Scale:
    """Whether an axis is logarithmic and the floor that zeros are drawn at."""

    def __init__(self, values: Sequence[float] | np.ndarray, allow_log: bool = True):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        pos = v[v > 0]
        self.log = bool(allow_log and pos.size and not (v < 0).any()
                        and pos.max() / pos.min() > 10 ** DECADES_FOR_LOG)
        self.floor = float(pos.min()) / 10 if pos.size else 0.0
        self.zeros = bool(self.log and (v == 0).any())
        low = self.floor if self.zeros else (float(pos.min()) if pos.size else 0.0)
        self.decades = float(np.log10(pos.max() / low)) if pos.size else 0.0

    def clip(self, v: np.ndarray) -> np.ndarray:
        return np.maximum(v, self.floor) if self.log else v

    def apply(self, ax, axis: str) -> None:
        """Set the scale of ``ax``'s ``axis`` (``"x"`` or ``"y"``). Log axes over less
        than 2.5 decades get 1-2-5 ticks as plain numbers; wider ones label decades only
        (labelled minor ticks collide on narrow panels)."""
        if not self.log:
            return
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        a = ax.xaxis if axis == "x" else ax.yaxis
        a.set_minor_formatter(NullFormatter())
        if self.decades < 2.5:
            a.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def mean_band(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], log_x: bool = False,
              log_y: bool = False, points: int = _GRID_POINTS
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean curve and 95% band of several runs' ``(x, y)`` series (module docstring).

    The grid spans the x-range that every run covers (log-spaced when ``log_x``); each run
    is interpolated linearly onto it; with ``log_y`` the mean and interval are of
    ``log10 y`` and mapped back. The interval is clipped to the runs' envelope (pointwise
    minimum and maximum). One run gives its own curve and no band (``lo = hi = mean``).

    Returns:
        ``(grid, mean, lo, hi)``; empty arrays when the runs share no x-range.
    """
    runs = [(np.asarray(x, float), np.asarray(y, float)) for x, y in zip(xs, ys, strict=True)
            if len(x)]
    if not runs:
        return (np.empty(0),) * 4
    lo_x, hi_x = max(x.min() for x, _ in runs), min(x.max() for x, _ in runs)
    if hi_x < lo_x:
        return (np.empty(0),) * 4
    if len(runs) == 1:
        x, y = runs[0]
        return x, y, y, y
    if hi_x == lo_x:
        grid = np.asarray([lo_x])
    elif log_x:
        grid = np.geomspace(max(lo_x, 1e-300), hi_x, points)
    else:
        grid = np.linspace(lo_x, hi_x, points)
    vals = np.stack([np.interp(grid, x, np.log10(y) if log_y else y) for x, y in runs])
    mean = vals.mean(0)
    half = stats.t.ppf(0.975, len(runs) - 1) * vals.std(0, ddof=1) / math.sqrt(len(runs))
    lo = np.maximum(mean - half, vals.min(0))
    hi = np.minimum(mean + half, vals.max(0))
    if log_y:
        mean, lo, hi = 10 ** mean, 10 ** lo, 10 ** hi
    return grid, mean, lo, hi


def _legend(fig: Figure, methods: Sequence[MethodSummary], marker: bool = True) -> None:
    handles = []
    for m in methods:
        st = method_style(m.optimizer)
        label = m.optimizer
        n_bad = sum(not r.ok for r in m.runs)
        if n_bad:
            label += f" ({n_bad}/{len(m.runs)} runs diverged/failed)"
        handles.append(Line2D([], [], color=st["color"], linestyle=st["linestyle"],
                              marker=st["marker"] if marker else None, label=label))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)


def _draw_runs(ax, m: MethodSummary, x: str, y: str, xs: _Scale, ys: _Scale) -> None:
    """The mean and band of ``m``'s finished runs and the marked diverged/failed ones."""
    st = method_style(m.optimizer)
    good = [_series(r, x, y) for r in m.runs if r.ok]
    good = [(xs.clip(a), ys.clip(b)) for a, b in good if len(a)]
    grid, mean, lo, hi = mean_band([a for a, _ in good], [b for _, b in good], xs.log, ys.log)
    if len(grid):
        every = max(1, len(grid) // 6)
        ax.plot(grid, mean, color=st["color"], linestyle=st["linestyle"],
                marker=st["marker"], markevery=(MARKERS.index(st["marker"]) % every, every),
                markersize=4, linewidth=1.4)
        if len(good) > 1:
            ax.fill_between(grid, lo, hi, color=st["color"], alpha=0.18, linewidth=0)
    for r in m.runs:
        if r.ok:
            continue
        a, b = _series(r, x, y)
        if len(a):
            a, b = xs.clip(a), ys.clip(b)
            ax.plot(a, b, color=st["color"], linestyle=":", linewidth=0.8, alpha=0.7)
            ax.plot(a[-1:], b[-1:], "x", color=st["color"], markersize=7, mew=1.5)


def _scales(ps: ProblemSummary, x: str, y: str, log_x: bool) -> tuple[_Scale, _Scale]:
    xv, yv = [], []
    for m in ps.methods:
        for r in m.runs:
            a, b = _series(r, x, y)
            xv += a.tolist()
            yv += b.tolist()
    return _Scale(xv, allow_log=log_x), _Scale(yv, allow_log=y.endswith("loss"))


def _floor_note(scales: Sequence[tuple[str, _Scale]]) -> str:
    notes = [f"exact zeros of {what} drawn at {s.floor:.2g}" for what, s in scales if s.zeros]
    return (" " + "; ".join(notes) + ".") if notes else ""


_BAND = ("Lines: mean over seeds of the selected setting's finished runs (geometric mean on a "
         "log axis), shaded: 95% t-interval of the mean clipped to the range the seeds span, over "
         "the x-range every run covers; dotted lines ending in x: diverged or failed runs.")


def loss_curves(ps: ProblemSummary) -> tuple[Figure, str]:
    """Training loss against epochs, backprop-equivalents and training time."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    notes = []
    for ax, (x, label) in zip(axes, _X_AXES, strict=True):
        xs, ys = _scales(ps, x, "train_loss", log_x=x != "data_epoch")
        for m in ps.methods:
            _draw_runs(ax, m, x, "train_loss", xs, ys)
        xs.apply(ax, "x")
        ys.apply(ax, "y")
        ax.set_xlabel(label)
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3, which="both" if ys.log else "major")
        notes += [(label.split(" (")[0], xs), ("the training loss", ys)]
    _legend(fig, ps.methods)
    fig.suptitle(f"{ps.problem}: training loss")
    uniq = {n: s for n, s in notes if s.zeros}
    return fig, _BAND + _floor_note(list(uniq.items()))


def metric_curves(ps: ProblemSummary) -> tuple[Figure, str]:
    """Test accuracy (or test loss) against epochs and training time."""
    key = ps.test_key
    what = "test accuracy" if key == "test_acc" else "test loss"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    notes = []
    for ax, (x, label) in zip(axes, (_X_AXES[0], _X_AXES[2]), strict=True):
        xs, ys = _scales(ps, x, key, log_x=x != "data_epoch")
        for m in ps.methods:
            _draw_runs(ax, m, x, key, xs, ys)
        xs.apply(ax, "x")
        ys.apply(ax, "y")
        ax.set_xlabel(label)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        notes += [(label.split(" (")[0], xs), (f"the {what}", ys)]
    _legend(fig, ps.methods)
    fig.suptitle(f"{ps.problem}: {what}")
    uniq = {n: s for n, s in notes if s.zeros}
    return fig, _BAND + _floor_note(list(uniq.items()))


def cost_bars(ps: ProblemSummary) -> tuple[Figure, str]:
    """Backprops and time to the validation and the training-loss targets, as bars."""
    panels = (("backprops_to_target", "backprops to the validation target"),
              ("time_to_target", "time to the validation target (s)"),
              ("backprops_to_loss_target", "backprops to the training-loss target"),
              ("time_to_loss_target", "time to the training-loss target (s)"))
    names = [m.optimizer for m in ps.methods]
    fig, axes = plt.subplots(2, 2, figsize=(12, 1.6 + 0.62 * max(len(names), 2)),
                             layout="constrained")
    for ax, (attr, label) in zip(axes.flat, panels, strict=True):
        st_all = [cost_stat(getattr(m, attr)) for m in ps.methods]
        vals = [v for s in st_all if math.isfinite(s.center) for v in s.interval]
        scale = _Scale([v for v in vals if v > 0] + [0.0] * any(v <= 0 for v in vals))
        top = max(vals) if vals else 1.0
        for i, (name, s) in enumerate(zip(names, st_all, strict=True)):
            st = method_style(name)
            if s.reached == 0 or not math.isfinite(s.center):
                ax.text(0.01, i, f"not reached (0/{s.n})" if s.reached == 0
                        else f"reached in {s.reached}/{s.n} seeds", va="center",
                        fontsize=8, transform=ax.get_yaxis_transform())
                continue
            c = float(scale.clip(np.asarray([s.center]))[0])
            err = None
            if s.complete and math.isfinite(s.half):
                lo = float(scale.clip(np.asarray([s.center - s.half]))[0])
                err = [[c - lo], [s.half]]
            ax.barh(i, c, xerr=err, color=st["color"], alpha=0.85 if s.complete else 0.35,
                    hatch=None if s.complete else "//", edgecolor="black", linewidth=0.5,
                    error_kw={"capsize": 3, "elinewidth": 1})
            if not s.complete:
                ax.text(c, i, f" {s.reached}/{s.n} seeds", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(len(names) - 0.5, -0.5)  # first method on top, every row inside
        scale.apply(ax, "x")
        if not scale.log:
            ax.set_xlim(0, top * 1.25 if top > 0 else 1.0)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"{ps.problem}: cost to target (validation target {ps.target:.4g}, "
                 f"training-loss target {ps.loss_target:.4g})")
    caption = ("Bars: mean over seeds with 95% t-interval when every seed reached the target; "
               "hatched: median over seeds when only some did (seeds that reached it noted).")
    return fig, caption


def sensitivity(ps: ProblemSummary) -> tuple[Figure, str]:
    """Final validation metric of the tuning runs (seed 0) against the knob value."""
    fig, ax = plt.subplots(figsize=(8.5, 4.4), layout="constrained")
    values = []
    for m in ps.methods:
        st = method_style(m.optimizer)
        pts = sorted(((r.hyperparameters.get(m.knob), r) for r in m.tuning
                      if r.hyperparameters.get(m.knob) is not None), key=lambda t: t[0])
        ok = [(v, r.last.get(ps.metric)) for v, r in pts
              if r.ok and r.last.get(ps.metric) is not None]
        bad = [v for v, r in pts if not r.ok]
        values += [p[1] for p in ok]
        if ok:
            ax.plot([p[0] for p in ok], [p[1] for p in ok], color=st["color"],
                    linestyle=st["linestyle"], marker=st["marker"], markersize=5)
        if bad:
            ax.plot(bad, [0.0 if ps.higher else max(values or [1.0])] * len(bad), "x",
                    color=st["color"], markersize=8, mew=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("knob value (learning rate, radius, sigma, damping, Taylor ratio)")
    ax.set_ylabel(f"final {ps.metric.replace('_', ' ')} (seed 0)")
    ys = _Scale(values, allow_log=not ps.higher)
    ys.apply(ax, "y")
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=method_style(m.optimizer)["color"],
                      linestyle=method_style(m.optimizer)["linestyle"],
                      marker=method_style(m.optimizer)["marker"],
                      label=f"{m.optimizer} ({m.knob})") for m in ps.methods]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    ax.set_title(f"{ps.problem}: sensitivity to the tuned knob")
    return fig, ("Final validation metric of each tuning run; x: diverged or failed settings "
                 "(drawn at 0 accuracy, or at the worst loss).")


def profiles(summaries: Sequence[ProblemSummary]) -> tuple[Figure, str]:
    """Dolan-More performance profiles of the four costs to target."""
    panels = (("backprops_to_target", "backprops, validation target"),
              ("time_to_target", "time, validation target"),
              ("backprops_to_loss_target", "backprops, training-loss target"),
              ("time_to_loss_target", "time, training-loss target"))
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), layout="constrained")
    names: list[str] = []
    for ax, (attr, label) in zip(axes.flat, panels, strict=True):
        costs = {ps.problem: {m.optimizer: median_cost(getattr(m, attr)) for m in ps.methods}
                 for ps in summaries}
        taus, rho = performance_profile(costs)
        for name, r in rho.items():
            st = method_style(name)
            ax.step(taus, r, where="post", color=st["color"], linestyle=st["linestyle"])
            if name not in names:
                names.append(name)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("tau (ratio to the best method's cost)")
        ax.set_ylabel("fraction of problems")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    order = [n for n in REGISTRY if n in names] + [n for n in names if n not in REGISTRY]
    handles = [Line2D([], [], color=method_style(n)["color"],
                      linestyle=method_style(n)["linestyle"], label=n) for n in order]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return fig, ("Fraction of problems on which a method's median cost over seeds is within a "
                 "factor tau of the best method's; a method that did not reach the target "
                 "never counts.")
