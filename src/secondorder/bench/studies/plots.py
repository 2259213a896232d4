"""Figure helpers of the studies (matplotlib, Agg): curves per method, Rosenbrock paths."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["curves", "rosenbrock_paths"]


def _series(record, x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for m in record.measurements:
        xv = m.get(x)
        yv = m.get(y) if y in m else (m.get("optimizer_counters") or {}).get(y)
        if xv is not None and yv is not None and math.isfinite(yv):
            xs.append(xv)
            ys.append(yv)
    return xs, ys


def curves(results, part: str, problems: Sequence[str], panels: Sequence[tuple[str, str]],
           path: Path, *, x: str = "step", xlabel: str = "iteration", logy: Sequence[str] = (),
           title: str = "") -> None:
    """One row of panels per problem, one panel per ``(measurement key, label)``, one line
    per method (seed 0; diverged runs end where they diverged)."""
    methods = [m.label for m in results.study.part(part).methods]
    fig, axes = plt.subplots(len(problems), len(panels), squeeze=False,
                             figsize=(5.2 * len(panels), 3.6 * len(problems)))
    for i, prob in enumerate(problems):
        for j, (key, label) in enumerate(panels):
            ax = axes[i][j]
            for k, meth in enumerate(methods):
                recs = results.runs(part, prob, meth)
                if not recs:
                    continue
                xs, ys = _series(recs[0], x, key)
                if key in logy:
                    pairs = [(a, b) for a, b in zip(xs, ys, strict=True) if b > 0]
                    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
                style = "-" if k < 10 else "--"
                ax.plot(xs, ys, style, label=f"{meth}"
                        + ("" if recs[0].status == "finished" else f" ({recs[0].status})"))
            if key in logy:
                ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.set_title(f"{prob}" if len(problems) > 1 else (title or prob), fontsize=9)
            ax.grid(alpha=0.3)
            if i == 0 and j == len(panels) - 1:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rosenbrock_paths(results, part: str, problem: str, path: Path, *, a: float = 1.0,
                     b: float = 50.0) -> None:
    """Iterates of each method in the plane over the contours of the Rosenbrock function."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    xs, ys = np.meshgrid(np.linspace(-2.0, 2.0, 300), np.linspace(-1.0, 3.0, 300))
    zs = (a - xs) ** 2 + b * (ys - xs**2) ** 2
    ax.contour(xs, ys, np.log10(zs + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
    for k, meth in enumerate([m.label for m in results.study.part(part).methods]):
        recs = results.runs(part, problem, meth)
        if not recs:
            continue
        pts = [(m.get("optimizer_counters") or {}).get("x") for m in recs[0].measurements]
        pts = np.array([p for p in pts if p is not None and all(map(math.isfinite, p))])
        if len(pts):
            end = f"ends at ({pts[-1, 0]:.3g}, {pts[-1, 1]:.3g})"
            ax.plot(pts[:, 0], pts[:, 1], ".-", ms=4 - k, lw=2.0 - 0.4 * k, zorder=10 - k,
                    label=f"{meth}: {len(pts) - 1} it., {end}")
    ax.plot([a], [a * a], "r*", ms=12, label="minimum (1, 1)")
    ax.set_xlim(-2, 2)
    ax.set_ylim(-1, 3)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
