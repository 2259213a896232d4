"""Why does the RMSProp-ellipsoid trust region stall? One factor at a time ([AdaptiveNorms]).

The case under study (issue "Studies II"): scikit-learn digits, MLP 64-32-10 tanh, batch
128, 5 epochs, ``TrustRegion`` defaults; the ellipsoidal (``norm="rmsprop"``) method was
reported to end one seed in three at a training loss of 0.73 while the spherical one
reached 0.09. This script

1. reproduces the case with the benchmark runner (:func:`secondorder.bench.runner.run`,
   the digits split of the benchmark, model seeded by ``seed``);
2. changes one factor at a time away from the defaults -- the same change for all three
   norms (spherical, RMSProp, Adagrad), never per norm -- and reports over ``--seeds``
   seeds the median final training loss, its spread (min-max), how many seeds *stall*
   (final loss above twice the median of that configuration), and the share of rejected
   trust-region steps and of steps that ended on negative curvature (read from
   ``state["global"]`` after every step);
3. ``--goal``: with the defaults, backprops each norm needs to reach 99% training accuracy
   on the MLP, the CNN and the autoencoder (its target: the loss spherical TR reaches at
   the end of the budget, median over seeds), median over seeds.

Every number is measured by the command that prints it; nothing is tuned per norm.

    python benchmarks/adaptive_norms_investigation.py --quick        # 3 seeds, 3 factors
    python benchmarks/adaptive_norms_investigation.py --seeds 10     # the factor table
    python benchmarks/adaptive_norms_investigation.py --goal --seeds 10 --epochs 15 \
        --set eta_expand=None                # Alg. 1 as printed (the old default)
    python benchmarks/adaptive_norms_investigation.py --goal --seeds 10 --epochs 15
        # the defaults (eta_expand=0.75)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch

from secondorder.bench import models as zoo
from secondorder.bench import problems as P
from secondorder.bench.registry import REGISTRY
from secondorder.bench.runner import Budget, run

NORMS = ("spherical", "rmsprop", "adagrad")

#: The factor table's baseline: [AdaptiveNorms] Alg. 1 as printed (the radius doubles after
#: every accepted step), the TrustRegion default when the investigation ran; each factor
#: changes one thing from it. (The default is now ``eta_expand=0.75``, the factor
#: ``eta_expand`` below.)
BASE: dict[str, Any] = {"eta_expand": None}

#: name -> (what it tests, TrustRegion keyword overrides shared by all three norms).
FACTORS: dict[str, tuple[str, dict[str, Any]]] = {
    "defaults": ("Alg. 1 as printed (the defaults before eta_expand=0.75)", {}),
    "raw_scale": ("no normalization to mean diagonal 1 (M = A^p as printed)",
                  {"normalize": False}),
    "power_1": ("M = A_t (Alg. 1 line 5) instead of A_t^(1/2)", {"power": 1.0}),
    "eps_1e-4": ("epsilon 1e-4 (default 1e-8)", {"epsilon": 1e-4}),
    "beta_0.99": ("beta 0.99 (default 0.9)", {"beta": 0.99}),
    "beta_0.5": ("beta 0.5", {"beta": 0.5}),
    "radius_0.1": ("initial radius 0.1 (default 1)", {"radius": 0.1}),
    "radius_10": ("initial radius 10", {"radius": 10.0}),
    "cg_10": ("CG cap 10 products (default 250)", {"max_cg_iter": 10}),
    "cg_3": ("CG cap 3 products", {"max_cg_iter": 3}),
    "no_cauchy": ("no Cauchy-point floor", {"cauchy_floor": False}),
    "eta_expand": ("radius grows only when rho >= 0.75 (Conn-Gould-Toint)",
                   {"eta_expand": 0.75}),
    "hess_sub_32": ("Hessian on 32 of the 128 samples (gradient on all)", {"_hess": 32}),
    "eigen_10": ("eigenpoint floor, 10 Lanczos products (Assumption 2)", {"eigen_steps": 10}),
    "g0_1e-1": ("Alg. 1 line 4: g := 0 below ||g|| 0.1, with the eigenpoint floor",
                {"tolerance_grad": 0.1, "eigen_steps": 10}),
    "eta_expand+cg_3": ("eta_expand 0.75 and CG cap 3 together",
                        {"eta_expand": 0.75, "max_cg_iter": 3}),
}
QUICK_FACTORS = ("defaults", "raw_scale", "power_1")


def tanh_mlp_problem() -> P.Problem:
    """The benchmark's digits split with the issue's MLP 64-32-10 tanh."""
    base = P.get_problem("digits_mlp")
    return dataclasses.replace(
        base, name="digits_mlp_tanh",
        make_model=functools.partial(zoo.seeded, lambda: zoo.MLP((64, 32, 10), "tanh")))


def train(problem: P.Problem, hyper: Mapping[str, Any], seed: int, epochs: int
          ) -> dict[str, float]:
    """One run with a plain loop (same split, init and batch order as the runner) that
    also reads the trust-region state after every step."""
    from secondorder.optim import TrustRegion

    hyper = dict(hyper)
    hess = hyper.pop("_hess", None)
    torch.manual_seed(seed)
    model = problem.make_model(seed)
    opt = TrustRegion(model.parameters(), **hyper)
    x_all, y_all = problem.train.inputs, problem.train.targets
    n, bs = len(x_all), problem.batch_size
    gen = torch.Generator().manual_seed(seed)
    steps = rejected = negative = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            x, y = x_all[idx], y_all[idx]

            def closure(x=x, y=y):
                return problem.loss(model(x), y)

            kwargs = {}
            if hess is not None:
                xs, ys = x[:hess], y[:hess]
                kwargs["hessian_closure"] = lambda xs=xs, ys=ys: problem.loss(model(xs), ys)
            opt.step(closure, **kwargs)
            g = opt.state["global"]
            steps += 1
            rejected += not g.get("accepted", True)
            negative += g.get("cg_status") == "negative_curvature"
    with torch.no_grad():
        out = model(x_all)
        loss = float(problem.loss(out, y_all).mean())
        acc = float(problem.accuracy(out, y_all))
    return {"loss": loss, "acc": acc, "rejected": rejected / steps,
            "negative": negative / steps, "radius": float(opt.state["global"]["radius"])}


def summarize(losses: list[float]) -> tuple[float, float, float, int]:
    """Median, min, max, and the count of seeds above twice the median (stalls)."""
    med = statistics.median(losses)
    return med, min(losses), max(losses), sum(v > 2 * med for v in losses)


def factor_table(seeds: int, epochs: int, factors: list[str]) -> None:
    problem = tanh_mlp_problem()
    print(f"digits MLP 64-32-10 tanh, batch {problem.batch_size}, {epochs} epochs, "
          f"seeds 0..{seeds - 1}; stall = final train loss > 2x the median")
    print("| factor | norm | median loss | min-max | stalled | worst seed | rejected | "
          "neg. curv. | final radius (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in factors:
        what, hyper = FACTORS[name]
        for norm in NORMS:
            t0 = time.perf_counter()
            res = [train(problem, {**BASE, **hyper, "norm": norm}, s, epochs)
                   for s in range(seeds)]
            losses = [r["loss"] for r in res]
            med, lo, hi, stalled = summarize(losses)
            worst = max(range(seeds), key=lambda s: losses[s])
            print(f"| {name} | {norm} | {med:.3f} | {lo:.3f}-{hi:.3f} | {stalled}/{seeds} | "
                  f"{worst} ({losses[worst]:.3f}) | "
                  f"{statistics.mean(r['rejected'] for r in res):.0%} | "
                  f"{statistics.mean(r['negative'] for r in res):.0%} | "
                  f"{statistics.median(r['radius'] for r in res):.3g} |", flush=True)
        print(f"<!-- {name}: {what}; {time.perf_counter() - t0:.0f} s for the last norm -->",
              flush=True)


def first_reaching(measurements: list[dict], key: str, target: float, above: bool) -> float:
    """Backprops at the first evaluation where ``key`` reaches ``target`` (inf if never)."""
    for m in measurements:
        v = m.get(key)
        if v is not None and (v >= target if above else v <= target):
            return m["backprops"]
    return math.inf


def goal(seeds: int, epochs: int, hyper: Mapping[str, Any] | None = None) -> None:
    """Backprops to 99% train accuracy (autoencoder: to a target loss) per norm, with
    ``hyper`` (shared by the three norms) over the defaults."""
    hyper = dict(hyper or {})
    problems = {"MLP (tanh 64-32-10)": tanh_mlp_problem(),
                "CNN (digits_cnn)": P.get_problem("digits_cnn"),
                "autoencoder (digits_autoencoder)": P.get_problem("digits_autoencoder")}
    spec = REGISTRY["TrustRegion"]
    extra = f" + {hyper}" if hyper else ""
    print(f"TrustRegion defaults{extra}, {epochs} epochs, 4 evaluations per epoch, seeds "
          f"0..{seeds - 1}; backprops to 99% train accuracy (autoencoder: to the median "
          "final loss of spherical TR), median over seeds (inf: not reached in the budget)")
    print("| problem | norm | median backprops to target | seeds reaching | median final "
          "loss | stalled (> 2x median) |")
    print("|---|---|---|---|---|---|")
    for pname, problem in problems.items():
        runs = {norm: [run(problem, spec, {**hyper, "norm": norm}, s, Budget(epochs=epochs),
                           evals_per_epoch=4).measurements for s in range(seeds)]
                for norm in NORMS}
        if problem.accuracy is None:
            target = statistics.median(r[-1]["train_loss"] for r in runs["spherical"])
            key, above = "train_loss", False
        else:
            target, key, above = 0.99, "train_acc", True
        for norm in NORMS:
            hits = [first_reaching(r, key, target, above) for r in runs[norm]]
            finals = [r[-1]["train_loss"] for r in runs[norm]]
            med, _, _, stalled = summarize(finals)
            reached = sum(math.isfinite(h) for h in hits)
            print(f"| {pname} | {norm} | {statistics.median(hits):.3g} | {reached}/{seeds} | "
                  f"{med:.4f} | {stalled}/{seeds} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs (factor table: 5, the issue's; --goal: 20)")
    ap.add_argument("--factors", nargs="*", default=None, choices=list(FACTORS))
    ap.add_argument("--goal", action="store_true", help="the backprops-to-target table")
    ap.add_argument("--quick", action="store_true", help="3 seeds, 3 factors, 2 epochs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="--goal: TrustRegion keywords shared by all norms (eta_expand=0.75)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.epochs = 3, args.epochs or 2
        args.factors = args.factors or list(QUICK_FACTORS)
    if args.goal:
        hyper = {k: None if v == "None" else float(v)
                 for k, v in (kv.split("=", 1) for kv in args.set)}
        goal(args.seeds, args.epochs or 20, hyper)
    else:
        factor_table(args.seeds, args.epochs or 5, args.factors or list(FACTORS))


if __name__ == "__main__":
    main()
