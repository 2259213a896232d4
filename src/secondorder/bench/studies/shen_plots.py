"""[Shen]'s figures that are not training curves: CG energy (Fig. 2), derivative cost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from secondorder.bench.studies.shen_costs import cg_energy, derivative_costs  # noqa: E402

__all__ = ["cg_energy_figure", "derivative_cost_figure"]


def cg_energy_figure(results, part: str, problem: str, path: Path, *,
                     iterations: int = 30, batch: int = 128) -> None:
    """E_Q and the relative residual along CG iterations (:func:`cg_energy`) on the data of
    ``(part, problem)`` of ``results``."""
    trace = cg_energy(results.problems[(part, problem)].problem, iterations=iterations,
                      batch=batch)
    its = list(range(len(trace.energy)))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10.4, 3.6))
    a.plot(its, trace.energy, ".-")
    a.set_ylabel("E_Q = g'dw + dw'H dw / 2")
    b.semilogy(its, trace.residual, ".-", color="C1")
    b.set_ylabel("||r|| / ||g||")
    stop = trace.first_negative
    for ax in (a, b):
        ax.set_xlabel("CG iteration")
        ax.grid(alpha=0.3)
        if stop is not None:
            ax.axvline(stop, ls=":", color="k",
                       label=f"Alg. 1 stops here (kappa < 0 at iteration {stop + 1})")
            ax.legend(fontsize=7)
    a.set_title("quadratic energy", fontsize=9)
    b.set_title("residual", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def derivative_cost_figure(path: Path, *, width_divisor: int = 1, batch: int = 8,
                           rounds: int = 3) -> dict:
    """Bars of autograd and complex-step ``H p`` seconds over a gradient's
    (:func:`derivative_costs`); returns the measurements."""
    costs = derivative_costs(width_divisor=width_divisor, batch=batch, rounds=rounds)
    names = list(costs)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [costs[n]["autograd_ratio"] for n in names], 0.4,
           label="autograd H p (double backward)")
    ax.bar([x + 0.2 for x in xs], [costs[n]["complex_step_ratio"] for n in names], 0.4,
           label="complex-step H p (eq. 10)")
    top = max(max(c["autograd_ratio"], c["complex_step_ratio"]) for c in costs.values())
    for x, n in zip(xs, names, strict=True):
        ax.text(x, top * 1.05, f"complex / autograd = {costs[n]['complex_over_autograd']:.2f}\n"
                f"(paper, VGG-19: 0.79)", ha="center", fontsize=7)
    ax.set_xticks(list(xs), [f"{n} (1/{width_divisor} width)" if width_divisor > 1 else n
                             for n in names])
    ax.set_ylabel("seconds / one gradient")
    ax.set_ylim(0, top * 1.35)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"one thread, batch {batch}, 3 x 32 x 32", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return costs
