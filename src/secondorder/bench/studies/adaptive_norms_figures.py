"""[AdaptiveNorms]'s figures: quadratics (Fig. 1), diagonal mass (Fig. 2), mean curves with
confidence bands (Figs. 3, 9-11) and autoencoder reconstructions (Fig. 12).

Figs. 1 and 2 are computed by their draw functions (a 2-D simulation and dense Hessians of
a small network), the others are drawn from the study's runs in the store, except Fig. 12,
which retrains seed 0 of each method (the store keeps measurements, not weights).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402
from torch import nn  # noqa: E402

from secondorder.bench.studies.metrics import TARGET_ACCURACY  # noqa: E402

__all__ = [
    "QUADRATICS",
    "confidence_band",
    "diagonal_mass_checkpoints",
    "draw_curves",
    "draw_diagonal_mass",
    "draw_quadratics",
    "draw_reconstructions",
    "quadratic_runs",
]

@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for the block (the figures' tiny kernels run up to 50x
    slower with two threads on a shared 2-core machine; measured: 1.9 s vs 112 s for one
    Fig. 2 run while another job ran)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


#: Fig. 1's three quadratics ``f(w) = (w - w*)^T H (w - w*) / 2``: name -> H.
QUADRATICS: dict[str, np.ndarray] = {}


def _rotated(h: np.ndarray, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    r = np.array([[c, -s], [s, c]])
    return r @ h @ r.T


QUADRATICS["well-conditioned (kappa 2)"] = np.diag([1.0, 2.0])
QUADRATICS["ill-conditioned, axis-aligned (kappa 1e2)"] = np.diag([0.02, 2.0])
QUADRATICS["ill-conditioned, rotated 30 deg (kappa 1e2)"] = _rotated(np.diag([0.02, 2.0]), 30)
MINIMIZER = np.array([1.0, 1.0])
#: Step sizes: GD 1 / L (L = 2, the largest eigenvalue); Adagrad's eta (same for all).
GD_LR, ADAGRAD_LR, ADAGRAD_EPS = 0.5, 1.0, 1e-8


def quadratic_runs(h: np.ndarray, starts: np.ndarray, iters: int
                   ) -> dict[str, tuple[np.ndarray, np.ndarray, list]]:
    """GD and diagonal Adagrad from each start: ``method -> (log10 suboptimality
    (inits x iters+1), iterates of the first start (iters+1 x 2), implicit regions of the
    first start)``. A region is ``(center, semi-axes)``: GD's ball of radius
    ``lr ||g||``; Adagrad's ellipse ``||s||_{A^{1/2}} <= lr ||g||_{A^{-1/2}}`` with
    ``A = diag(sum g^2) + eps`` ([AdaptiveNorms] eqs. 4-6), semi-axes ``r / A_ii^{1/4}``."""
    out = {}
    for method in ("GD", "Adagrad"):
        logs = np.zeros((len(starts), iters + 1))
        path, regions = [], []
        for k, w0 in enumerate(starts):
            w, acc = w0.astype(float).copy(), np.zeros(2)
            for t in range(iters + 1):
                d = w - MINIMIZER
                logs[k, t] = math.log10(max(0.5 * d @ h @ d, 1e-300))
                if k == 0:
                    path.append(w.copy())
                if t == iters:
                    break
                g = h @ d
                if method == "GD":
                    if k == 0:
                        r = GD_LR * np.linalg.norm(g)
                        regions.append((w.copy(), np.array([r, r])))
                    w = w - GD_LR * g
                else:
                    acc = acc + g * g
                    a = acc + ADAGRAD_EPS
                    if k == 0:
                        r = ADAGRAD_LR * math.sqrt(float(g @ (g / np.sqrt(a))))
                        regions.append((w.copy(), r / a**0.25))
                    w = w - ADAGRAD_LR * g / np.sqrt(a)
        out[method] = (logs, np.array(path), regions)
    return out


def confidence_band(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Mean over axis 0 and its two-sided Student-t confidence interval at ``level``."""
    n = values.shape[0]
    mean = values.mean(axis=0)
    if n < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.5 + level / 2, n - 1) * values.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def draw_quadratics(path: Path, *, inits: int = 30, iters: int = 100, seed: int = 0) -> None:
    """Fig. 1: iterates and implicit trust regions (top, every other region), mean log
    suboptimality with 90% intervals over ``inits`` random starts in [-5, 5]^2 (bottom)."""
    from matplotlib.patches import Ellipse

    starts = np.random.default_rng(seed).uniform(-5.0, 5.0, size=(inits, 2))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.4))
    for j, (name, h) in enumerate(QUADRATICS.items()):
        runs = quadratic_runs(h, starts, iters)
        ax = axes[0][j]
        xs, ys = np.meshgrid(np.linspace(-6, 6, 200), np.linspace(-6, 6, 200))
        dx, dy = xs - MINIMIZER[0], ys - MINIMIZER[1]
        zs = 0.5 * (h[0, 0] * dx * dx + 2 * h[0, 1] * dx * dy + h[1, 1] * dy * dy)
        ax.contour(xs, ys, np.log10(zs + 1e-6), levels=20, cmap="Greys", linewidths=0.5)
        for method, color in (("GD", "C0"), ("Adagrad", "C3")):
            _, pts, regions = runs[method]
            ax.plot(pts[:12, 0], pts[:12, 1], ".-", color=color, label=method, lw=1)
            for c, axes_len in regions[:12:2]:
                ax.add_patch(Ellipse(tuple(c), 2 * axes_len[0], 2 * axes_len[1], fill=False,
                                     color=color, alpha=0.6, lw=0.8))
        ax.plot(*MINIMIZER, "k*", ms=10)
        ax.set_xlim(-6, 6)
        ax.set_ylim(-6, 6)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1][j]
        for method, color in (("GD", "C0"), ("Adagrad", "C3")):
            mean, lo, hi = confidence_band(runs[method][0], 0.90)
            ax.plot(mean, color=color, label=method)
            ax.fill_between(np.arange(len(mean)), lo, hi, color=color, alpha=0.25)
        ax.set_xlabel("iteration")
        ax.set_ylabel("log10 suboptimality (mean, 90% interval)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- Fig. 2
def _flat_hessian(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of the mean batch loss in the flattened parameters (float64)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    m64 = model.double()

    def f(flat):
        parts = torch.split(flat, sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        out = torch.func.functional_call(m64, params, (x.double(),))
        return loss_fn(out, y).mean()

    hess = torch.func.hessian(f)(flat0)
    model.float()
    return hess


def diagonal_mass_checkpoints(inputs: torch.Tensor, targets: torch.Tensor, *, hidden: int,
                              runs: int, batch: int = 32, max_steps: int = 3000,
                              lr: float = 1e-3) -> dict[str, list[float]]:
    """[AdaptiveNorms] Fig. 2: the diagonal mass ``delta_H`` of a tanh MLP's batch Hessian
    (batch ``batch``) with random Gaussian inputs and labels, and on the data at
    initialization, in the middle of training and after 90% training accuracy with
    RMSProp (checkpoints chosen by accuracy: "middle" is the first step at or above the
    accuracy half way between the initial one and 0.9). Returns ``name -> values``
    (one per run), plus ``"d"`` (the dimension) and the Wigner and OLS baselines."""
    from secondorder.curvature.diagonal_mass import (
        diagonal_mass,
        ols_diagonal_mass,
        wigner_diagonal_mass,
    )

    loss_fn = nn.CrossEntropyLoss(reduction="none")
    out: dict[str, list[float]] = {"random inputs": [], "initialization": [], "middle": [],
                                   "90% train accuracy": []}
    d = 0
    for r in range(runs):
        gen = torch.Generator().manual_seed(r)
        torch.manual_seed(r)
        model = nn.Sequential(nn.Linear(inputs.shape[1], hidden), nn.Tanh(),
                              nn.Linear(hidden, 10))
        d = sum(p.numel() for p in model.parameters())

        def mass(x, y, model=model):
            return float(diagonal_mass(_flat_hessian(model, loss_fn, x, y)))

        def sample(gen=gen):
            idx = torch.randint(len(inputs), (batch,), generator=gen)
            return inputs[idx], targets[idx]

        xr = torch.randn(batch, inputs.shape[1], generator=gen)
        yr = torch.randint(10, (batch,), generator=gen)
        out["random inputs"].append(mass(xr, yr))
        out["initialization"].append(mass(*sample()))
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        with torch.no_grad():
            acc0 = float((model(inputs).argmax(1) == targets).float().mean())
        middle_target = acc0 + (0.9 - acc0) / 2
        got_middle = False
        for step in range(max_steps):
            x, y = sample()
            opt.zero_grad()
            loss_fn(model(x), y).mean().backward()
            opt.step()
            if step % 10 == 0:
                with torch.no_grad():
                    acc = float((model(inputs).argmax(1) == targets).float().mean())
                if not got_middle and acc >= middle_target:
                    out["middle"].append(mass(*sample()))
                    got_middle = True
                if acc >= 0.9:
                    out["90% train accuracy"].append(mass(*sample()))
                    break
    out["d"] = [float(d)]
    out["Wigner"] = [wigner_diagonal_mass(d)]
    out["OLS"] = [ols_diagonal_mass(d, batch)]
    return out


def draw_diagonal_mass(path: Path, inputs: torch.Tensor, targets: torch.Tensor, *,
                       hidden: int, runs: int) -> dict[str, list[float]]:
    """Fig. 2 as bars: mean and 95% interval of ``delta_H`` per checkpoint, with the
    Wigner and OLS baselines of the same dimension as horizontal lines."""
    with one_thread():
        res = diagonal_mass_checkpoints(inputs, targets, hidden=hidden, runs=runs)
    names = ["random inputs", "initialization", "middle", "90% train accuracy"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, name in enumerate(names):
        vals = np.array(res[name])
        if len(vals) == 0:
            continue
        mean, lo, hi = confidence_band(vals[:, None], 0.95)
        ax.bar(i, mean[0], color="C0", alpha=0.7)
        ax.errorbar(i, mean[0], yerr=[[mean[0] - lo[0]], [hi[0] - mean[0]]], color="k",
                    capsize=4)
    ax.axhline(res["Wigner"][0], color="C3", ls="--", label=f"Wigner {res['Wigner'][0]:.2g}")
    ax.axhline(res["OLS"][0], color="C2", ls=":", label=f"OLS (n=32) {res['OLS'][0]:.2g}")
    ax.set_xticks(range(len(names)), [f"{n}\n({len(res[n])} runs)" for n in names],
                  fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(f"diagonal mass delta_H (d = {int(res['d'][0])})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return res


# ----------------------------------------------------------------------- Figs. 3, 9-11
def _grid_mean(records, x: str, y: str, points: int = 60):
    """Seeds interpolated onto a common grid of ``x`` (up to the smallest final ``x``)."""
    series = []
    for r in records:
        ms = [m for m in r.measurements if m.get(x) is not None and m.get(y) is not None
              and math.isfinite(m[y])]
        if len(ms) >= 2:
            series.append((np.array([m[x] for m in ms]), np.array([m[y] for m in ms])))
    if not series:
        return None
    end = min(s[0][-1] for s in series)
    grid = np.linspace(0.0, end, points)
    vals = np.array([np.interp(grid, xs, ys) for xs, ys in series])
    return grid, vals


_X_LABELS = {"backprops": "backprops (full-data gradient equivalents)",
             "data_epoch": "epochs", "wall_time": "training time (s)"}


def draw_curves(results, part: str, problems: Sequence[str], methods: Sequence[str],
                panels: Sequence[tuple[str, str]], path: Path, *, title: str = "") -> None:
    """Rows = problems, columns = ``(x, y)`` panels; per method the mean over seeds and
    its 95% interval; the 99% training-accuracy line on accuracy panels."""
    fig, axes = plt.subplots(len(problems), len(panels), squeeze=False,
                             figsize=(4.6 * len(panels), 3.4 * len(problems)))
    for i, prob in enumerate(problems):
        for j, (x, y) in enumerate(panels):
            ax = axes[i][j]
            drawn = False
            for k, meth in enumerate(methods):
                got = _grid_mean(results.runs(part, prob, meth), x, y)
                if got is None:
                    continue
                grid, vals = got
                mean, lo, hi = confidence_band(vals, 0.95)
                style = "-" if meth.startswith(("TR", "ARC")) else "--"
                ax.plot(grid, mean, style, color=f"C{k}", label=meth, lw=1.3)
                ax.fill_between(grid, lo, hi, color=f"C{k}", alpha=0.18)
                drawn = True
            if y == "train_acc" and drawn:
                ax.axhline(TARGET_ACCURACY, color="green", ls=":", lw=1.2)
            if y == "train_loss" and drawn:
                ax.set_yscale("log")
            if not drawn:
                ax.text(0.5, 0.5, f"no {y}", ha="center", transform=ax.transAxes)
            ax.set_xlabel(_X_LABELS.get(x, x), fontsize=8)
            ax.set_ylabel(y.replace("_", " "), fontsize=8)
            ax.set_title(f"{prob}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- Fig. 12
def draw_reconstructions(results, part: str, problem: str, methods: Sequence[tuple[str, str,
                                                                                  dict]],
                         path: Path, *, images: int = 8) -> None:
    """Fig. 12: test images (top row) and each method's reconstruction after retraining
    seed 0 with the part's budget (``methods``: ``(label, registry name, hyper)``)."""
    from secondorder.bench.registry import REGISTRY
    from secondorder.bench.runner import Budget, run

    sp = results.problems[(part, problem)]
    budget = Budget(**dict(results.study.part(part).budget))
    x = sp.problem.test.inputs[:images]
    rows = [("test images", x)]
    for label, name, hyper in methods:
        box: list[nn.Module] = []

        def capture(seed, box=box, make=sp.problem.make_model):
            model = make(seed)
            box.append(model)
            return model

        prob = dataclasses.replace(sp.problem, make_model=capture)
        with one_thread():
            res = run(prob, REGISTRY[name], hyper, 0, budget)
        with torch.no_grad():
            rec = box[0].eval()(x) if box else torch.zeros_like(x)
        rows.append((f"{label} ({res.status})", rec))
    side = int(round(math.sqrt(x[0].numel())))
    fig, axes = plt.subplots(len(rows), images, squeeze=False,
                             figsize=(1.1 * images, 1.25 * len(rows)))
    for i, (label, imgs) in enumerate(rows):
        for j in range(images):
            ax = axes[i][j]
            ax.imshow(imgs[j].reshape(side, side).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
