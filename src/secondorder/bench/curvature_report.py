"""``secondorder curvature``: the Hessian of a problem at initialization, mid-training, end.

After [AdaptiveNorms] Fig. 2 (diagonal mass of network Hessians at random initialization, middle
and end of training, against random Wigner and OLS baselines) and PyHessian-style spectra:

- the model is trained with a registry optimizer (default Adam at its default learning
  rate) for the problem's epochs; checkpoints at epoch 0, half and the end;
- at each checkpoint, on the first ``batch`` training samples (32, the seed's batch size),
  in float64: the ``top`` largest eigenvalues (Lanczos,
  :func:`secondorder.curvature.spectrum.eigenvalues`), Hutchinson's trace estimate, the
  spectral density (stochastic Lanczos quadrature), and, when the network has at most
  ``max_dense`` parameters, the dense Hessian's diagonal mass
  ``delta_H = sum |H_ii| / sum |H_ij|`` ([AdaptiveNorms] Sec. 3.2) with the Wigner (Prop. 1) and
  OLS (Prop. 2, ``n = batch``) baselines of the same dimension.

Writes ``curvature_<problem>.md`` and ``figures/curvature_<problem>_{density,mass}.png``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from secondorder.bench.registry import get_optimizer  # noqa: E402
from secondorder.bench.runner import make_closure  # noqa: E402
from secondorder.curvature.dense import hessian  # noqa: E402
from secondorder.curvature.diagonal_mass import (  # noqa: E402
    diagonal_mass,
    ols_diagonal_mass,
    wigner_diagonal_mass,
)
from secondorder.curvature.functional import functional_loss  # noqa: E402
from secondorder.curvature.spectrum import eigenvalues, spectral_density, trace  # noqa: E402

__all__ = ["curvature_at", "curvature_report", "default_setting"]


def curvature_at(model: torch.nn.Module, problem, *, batch: int = 32, top: int = 5,
                 max_dense: int = 3000, seed: int = 0) -> dict[str, Any]:
    """Curvature figures of ``model`` on the first ``batch`` training samples (float64).

    Returns:
        ``{"eigenvalues", "trace", "trace_stderr", "density": SpectralDensity,
        "num_params", "diagonal_mass", "wigner", "ols"}`` (the last three ``None`` when
        the network has more than ``max_dense`` parameters).
    """
    m = copy.deepcopy(model).double()
    x = problem.train.inputs[:batch]
    x = x.double() if x.is_floating_point() else x
    y = problem.train.targets[:batch]
    y = y.double() if y.is_floating_point() else y

    def criterion(out, t):
        return problem.loss(out, t).mean()

    loss_fn, params = functional_loss(m, criterion, x, y)
    n = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(seed)
    k = min(top, n)
    ev = eigenvalues(loss_fn, params, k=k, num_steps=min(n, max(4 * k, 50)), generator=gen)
    tr = trace(loss_fn, params, num_samples=30, generator=gen)
    dens = spectral_density(loss_fn, params, num_steps=min(n, 40), num_probes=2, generator=gen)
    out: dict[str, Any] = {
        "eigenvalues": [float(v) for v in ev], "trace": float(tr.value),
        "trace_stderr": float(tr.stderr), "density": dens, "num_params": n,
        "diagonal_mass": None, "wigner": None, "ols": None,
    }
    if n <= max_dense:
        h = hessian(loss_fn, params, max_params=max_dense)
        out["diagonal_mass"] = float(diagonal_mass(h))
        out["wigner"] = float(wigner_diagonal_mass(n)) if n > 1 else 1.0
        out["ols"] = float(ols_diagonal_mass(n, len(x))) if n > 1 else 1.0
    return out


def _train(model, problem, spec, hyper, steps: int, seed: int) -> None:
    opt = spec.build(model.parameters(), **hyper)
    n = len(problem.train)
    bs = n if (problem.full_batch and spec.full_batch) else min(problem.batch_size, n)
    gen = torch.Generator().manual_seed(seed)
    last = [None]
    for _ in range(steps):
        idx = torch.randint(0, n, (bs,), generator=gen) if bs < n else slice(None)
        x, y = problem.train.inputs[idx], problem.train.targets[idx]
        opt.step(make_closure(spec, model, opt, problem, x, y, last))


def default_setting(spec) -> dict[str, Any]:
    """The optimizer's defaults, with a learning rate for torch.optim entries that have none
    (Adam 1e-3, others 1e-2): what :func:`curvature_report` trains with by default."""
    hyper = spec.hyperparameters()
    if "lr" not in hyper and spec.knob == "lr" and spec.module == "torch.optim":
        hyper["lr"] = 1e-3 if spec.class_name == "Adam" else 1e-2
    return hyper


def curvature_report(problem_name: str, out_dir: str | Path, *, optimizer: str = "adam",
                     epochs: float | None = None, top: int = 5, data_dir: str | None = None,
                     batch: int = 32, seed: int = 0,
                     hyperparameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``problem_name`` and report its curvature at three checkpoints (module docstring).

    ``hyperparameters`` (e.g. the benchmark's tuned setting) replace the optimizer's
    defaults.

    Returns:
        ``{"markdown": Path, "figures": [Path], "checkpoints": [(epoch, dict)], "text": str}``.

    Raises:
        ValueError: unknown problem or optimizer (naming the valid ones).
    """
    from secondorder.bench.problems import get_problem

    problem = get_problem(problem_name, data_dir=data_dir, seed=0)
    spec = get_optimizer(optimizer)
    hyper = spec.hyperparameters()
    hyper.update(default_setting(spec) if hyperparameters is None else hyperparameters)
    epochs = float(problem.epochs if epochs is None else epochs)
    n = len(problem.train)
    bs = n if (problem.full_batch and spec.full_batch) else min(problem.batch_size, n)
    total_steps = max(2, math.ceil(epochs * n / bs))
    torch.manual_seed(seed)
    model = problem.make_model(seed)
    checkpoints = []
    done = 0
    for frac in (0.0, 0.5, 1.0):
        target = round(frac * total_steps)
        _train(model, problem, spec, hyper, target - done, seed + target)
        done = target
        checkpoints.append((frac * epochs, curvature_at(model, problem, batch=batch, top=top,
                                                        seed=seed)))
    out = Path(out_dir)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    labels = ["initialization", "mid-training", "end"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for lab, (ep, c) in zip(labels, checkpoints, strict=True):
        d = c["density"]
        ax.semilogy(d.grid.numpy(), d.density.clamp_min(1e-12).numpy(),
                    label=f"{lab} (epoch {ep:g})")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"{problem_name}: Hessian spectral density (SLQ, batch {batch})")
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    dens_path = figdir / f"curvature_{problem_name}_density.png"
    fig.savefig(dens_path, dpi=90)
    plt.close(fig)
    figures = [dens_path]
    has_mass = checkpoints[0][1]["diagonal_mass"] is not None
    if has_mass:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        xs = range(3)
        w = 0.27
        ax.bar([i - w for i in xs], [c["diagonal_mass"] for _, c in checkpoints], w,
               label="network Hessian")
        ax.bar(list(xs), [c["wigner"] for _, c in checkpoints], w, label="Wigner (Prop. 1)")
        ax.bar([i + w for i in xs], [c["ols"] for _, c in checkpoints], w,
               label=f"OLS, n={batch} (Prop. 2)")
        ax.set_xticks(list(xs), labels)
        ax.set_yscale("log")
        ax.set_ylabel("diagonal mass delta")
        ax.set_title(f"{problem_name}: diagonal mass ([AdaptiveNorms] Fig. 2)")
        ax.legend(fontsize=8)
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.9)
        mass_path = figdir / f"curvature_{problem_name}_mass.png"
        fig.savefig(mass_path, dpi=90)
        plt.close(fig)
        figures.append(mass_path)
    head = ("| Checkpoint | Epoch | Top eigenvalues | Trace (± s.e.) | Diagonal mass | "
            "Wigner | OLS |")
    rows = [head, "|---|---|---|---|---|---|---|"]
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    for lab, (ep, c) in zip(labels, checkpoints, strict=True):
        rows.append(
            f"| {lab} | {ep:g} | {', '.join(f'{v:.4g}' for v in c['eigenvalues'])} | "
            f"{c['trace']:.4g} ± {c['trace_stderr']:.2g} | {fmt(c['diagonal_mass'])} | "
            f"{fmt(c['wigner'])} | {fmt(c['ols'])} |")
    text = "\n".join(rows)
    md = out / f"curvature_{problem_name}.md"
    md.write_text(
        f"# Curvature of {problem_name}\n\n"
        f"{checkpoints[0][1]['num_params']} parameters; trained with {optimizer} {hyper} "
        f"for {epochs:g} epochs; Hessian of the mean loss on the first {batch} training "
        "samples, float64.\n\n" + text + "\n\n"
        + "\n".join(f"![{p.stem}](figures/{p.name})" for p in figures) + "\n")
    return {"markdown": md, "figures": figures, "checkpoints": checkpoints, "text": text}
