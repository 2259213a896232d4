"""Figures: fixed styles, mean and band over seeds, log axes with a zero floor, and no text
outside the saved image for every kind of figure."""

import math

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.text import Text

from secondorder.bench import figures as figs
from secondorder.bench.registry import REGISTRY
from secondorder.bench.summary import summarize
from secondorder.bench.sweep import RunRecord

DPI = 90


def _run(i, opt, seed, lr, losses, accs, times, status="finished"):
    ms = [{"step": k, "data_epoch": float(k), "wall_time": float(times[k]),
           "backprops": 0.0 if k == 0 else 0.5 * 10.0 ** (k - 1), "train_loss": losses[k],
           "val_loss": losses[k], "test_loss": losses[k], "val_acc": accs[k], "test_acc": accs[k],
           "train_acc": accs[k]} for k in range(len(losses))]
    return RunRecord(i, "rosen", opt, {"lr": lr}, seed, {"epochs": 4}, status,
                     None, ms)


def _summary():
    """Three seeds of four methods over decades of loss; NewtonCG reaches exactly 0, one
    sgd repetition diverges; the long LevenbergMarquardt name stresses the legend."""
    recs = []
    rid = 0
    for seed in range(3):
        f = 1.0 + 0.1 * seed
        for opt, lr, losses, accs in (
            ("sgd", 0.1, [24.0, 10.0 * f, 5.0, 3.0, 2.0], [0.1, 0.3, 0.5, 0.6, 0.65]),
            ("adam", 0.01, [24.0, 4.0 * f, 1.0, 0.3, 0.1], [0.1, 0.5, 0.7, 0.8, 0.85]),
            ("NewtonCG", 1.0, [24.0, 1e-3 * f, 1e-9, 0.0, 0.0], [0.1, 0.9, 0.95, 0.95, 0.95]),
            ("LevenbergMarquardt", 0.01, [24.0, 1.0 * f, 1e-4, 1e-8, 1e-12],
             [0.1, 0.8, 0.9, 0.92, 0.93]),
        ):
            rid += 1
            times = [0.0, 0.01 * f, 0.1, 1.0, 10.0]
            status = "diverged" if (opt == "sgd" and seed == 2) else "finished"
            if status == "diverged":
                losses, accs, times = losses[:3] + [math.inf], accs[:4], times[:4]
            recs.append(_run(rid, opt, seed, lr, losses, accs, times, status))
    # A second adam setting for the sensitivity figure (not selected: it does not learn).
    recs.append(_run(rid + 1, "adam", 0, 0.1, [24.0, 30.0, 40.0, 50.0, 60.0], [0.1] * 5,
                     [0, 1, 2, 3, 4]))
    (ps,) = summarize(recs, {"rosen": {"chance_test": 0.1}})
    return ps


def _drawn_texts(fig) -> list[Text]:
    """The visible, non-empty text artists that are drawn: every text but the labels of
    ticks outside their axis's view limits (matplotlib keeps, but does not draw, those)."""
    ticks, drawn = set(), set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * (hi - lo)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                labels = (tick.label1, tick.label2)
                ticks.update(map(id, labels))
                if lo - slack <= tick.get_loc() <= hi + slack:
                    drawn.update(map(id, labels))
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
            and (id(t) not in ticks or id(t) in drawn)]


def _texts_outside(fig) -> list[str]:
    """Drawn text artists whose window extent leaves the figure (1 px slack)."""
    renderer = fig.canvas.get_renderer()
    w, h = fig.bbox.width, fig.bbox.height
    bad = []
    for t in _drawn_texts(fig):
        b = t.get_window_extent(renderer)
        if b.x0 < -1 or b.y0 < -1 or b.x1 > w + 1 or b.y1 > h + 1:
            bad.append(t.get_text())
    return bad


KINDS = {
    "loss": figs.loss_curves,
    "test": figs.metric_curves,
    "to_target": figs.cost_bars,
    "sensitivity": figs.sensitivity,
    "profile": lambda ps: figs.profiles([ps]),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_figure_kind_keeps_its_text_inside_the_saved_image(kind, tmp_path):
    fig, caption = KINDS[kind](_summary())
    assert caption
    path = tmp_path / f"{kind}.png"
    fig.set_dpi(DPI)  # layout and window extents at the resolution of the saved image
    fig.savefig(path, dpi=DPI)  # what figures.save does, without closing the figure
    try:
        assert _texts_outside(fig) == []
        # The saved image is the whole figure (no bbox cropping that could hide a clip).
        img = mpimg.imread(path)
        w, h = fig.get_size_inches() * DPI
        assert img.shape[:2] == (round(h), round(w))
        legends = fig.legends or [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        if kind != "to_target":
            # The legend lies outside every axes.
            r = fig.canvas.get_renderer()
            lb = legends[0].get_window_extent(r)
            for ax in fig.axes:
                assert not lb.overlaps(ax.get_window_extent(r))
    finally:
        plt.close(fig)


def test_the_text_check_catches_a_clipped_label():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_ylabel("a y-label pushed out of the figure")
    fig.subplots_adjust(left=0.0)
    fig.canvas.draw()
    try:
        assert "a y-label pushed out of the figure" in _texts_outside(fig)
    finally:
        plt.close(fig)


def test_method_styles_are_fixed_and_distinct():
    looks = {n: figs.method_style(n) for n in REGISTRY}
    assert looks == {n: figs.method_style(n) for n in REGISTRY}  # the same in every figure
    assert len({(s["color"], s["linestyle"]) for s in looks.values()}) == len(REGISTRY)
    assert len({s["marker"] for s in looks.values()}) == min(len(REGISTRY), len(figs.MARKERS))
    for n, s in looks.items():
        assert (s["linestyle"] in figs.FIRST_ORDER_DASHES) == REGISTRY[n].first_order
    assert figs.method_style("my_plugin") == figs.method_style("my_plugin")


def test_mean_band_mean_interval_clipped_to_the_runs_and_log_mean():
    x = np.array([0.0, 1.0, 2.0])
    grid, mean, lo, hi = figs.mean_band([x, x], [np.ones(3), 3 * np.ones(3)], points=5)
    np.testing.assert_allclose(grid, np.linspace(0, 2, 5))
    np.testing.assert_allclose(mean, 2.0)
    # t(0.975, 1) * sd / sqrt(2) = 12.7 > 1: clipped to the runs' envelope [1, 3].
    np.testing.assert_allclose(lo, 1.0) and np.testing.assert_allclose(hi, 3.0)
    ys = [np.array([1.0, 2.0, 2.0]), np.array([1.0, 2.2, 2.2]), np.array([1.0, 1.8, 1.8])]
    _, mean, lo, hi = figs.mean_band([x, x, x], ys, points=3)
    half = 4.302653 * 0.2 / math.sqrt(3)  # sd 0.2 at x = 1, 2
    np.testing.assert_allclose(lo[1:], np.maximum(2.0 - half, 1.8))
    np.testing.assert_allclose(hi[1:], np.minimum(2.0 + half, 2.2))
    # Log y: the geometric mean; a shorter run limits the grid to the common range.
    _, mean, _, _ = figs.mean_band([x, x[:2]], [np.array([1.0, 100.0, 1.0]),
                                                np.array([1.0, 1.0])], log_y=True, points=3)
    np.testing.assert_allclose(mean, [1.0, math.sqrt(10.0), 10.0])
    g, m, lo, hi = figs.mean_band([x], [np.ones(3)])
    assert (g is x or np.array_equal(g, x)) and np.array_equal(lo, hi)


def test_loss_axes_are_logarithmic_and_zeros_are_floored_and_said():
    ps = _summary()
    fig, caption = figs.loss_curves(ps)
    try:
        assert [ax.get_yscale() for ax in fig.axes] == ["log"] * 3
        # epochs stay linear; backprops and time span decades
        assert [ax.get_xscale() for ax in fig.axes] == ["linear", "log", "log"]
        assert "exact zeros of the training loss drawn at 1e-13" in caption
        assert "exact zeros of training time drawn at" in caption
        ymin = min(line.get_ydata().min() for line in fig.axes[0].get_lines()
                   if len(line.get_ydata()))
        assert ymin == pytest.approx(1e-13)  # NewtonCG's zeros at a decade below 1e-12
        # The diverged sgd run is drawn dotted and ends in an x; the legend counts it.
        ax = fig.axes[0]
        assert any(line.get_marker() == "x" for line in ax.get_lines())
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "sgd (1/3 runs diverged/failed)" in labels
    finally:
        plt.close(fig)


def test_cost_bars_show_intervals_and_unreached(tmp_path):
    ps = _summary()
    fig, _ = figs.cost_bars(ps)
    try:
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        # sgd never gets near the training-loss target (NewtonCG's zeros are not first-order;
        # the target is adam's 0.1): "not reached"; NewtonCG reaches everything.
        assert any(t.startswith("not reached") for t in texts)
        bars = [p for p in fig.axes[0].patches]
        assert len(bars) >= 2
    finally:
        plt.close(fig)
    path = figs.save(figs.cost_bars(ps)[0], tmp_path / "bars.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
