"""Seconds for one run of each embedded problem at its default epoch budget.

For each problem, one run (seed 0, the optimizer's default hyperparameters) per optimizer
through the benchmark runner; prints the seconds and the ratio to SGD's run on the same
problem, measured side by side in this process. Used to keep the embedded suite small
enough for the 10-minute default bench (issue 5).

    python benchmarks/problem_budgets.py [--optimizers sgd adam LBFGS NewtonCG ...]

``--from-db DB [--sweep NAME]`` runs nothing: from an equal-epoch sweep recorded in ``DB``
(``secondorder bench --equal epochs``) it estimates what the equal-time protocol
(``secondorder.bench.time_budget``) costs on the same machine: per problem the calibrated
``T`` (the slowest selected setting's tuning time, at least ``MIN_TIME_BUDGET``), the
training seconds of the tuning runs (as recorded) and of ``seeds`` measurement runs per
method (``min(T, MAX_EPOCH_FACTOR x`` its recorded epoch-budget time``)``), and the wall
time scaled by the recorded sweep's wall seconds per training second (its phases' wall
times, ``meta`` ``timing``), which counts evaluations, process start-up and warm-ups at
the recorded rate.
"""

from __future__ import annotations

import argparse
import time

import torch

from secondorder.bench.problems import EMBEDDED, get_problem
from secondorder.bench.registry import available_optimizers, get_optimizer
from secondorder.bench.runner import Budget, run


def estimate_from_db(db: str, sweep: str) -> None:
    """The ``--from-db`` estimate (module docstring)."""
    import numpy as np

    from secondorder.bench.analysis import load_records
    from secondorder.bench.store import Store
    from secondorder.bench.summary import summarize
    from secondorder.bench.time_budget import MAX_EPOCH_FACTOR, MIN_TIME_BUDGET

    with Store(db, readonly=True) as st:
        records = load_records(st, sweep)
        seeds = st.get_meta(sweep, "config", {}).get("seeds", 3)
        phases = st.get_meta(sweep, "timing", {}).get("phases", {})
    old_train = sum(r.last.get("wall_time", 0.0) for r in records)
    old_wall = sum(ph["seconds"] for ph in phases.values())
    new_train = 0.0
    print(f"{'problem':20s} {'T (s)':>6s} {'slowest':>14s} {'tuning':>7s} {'measure':>8s}")
    for ps in summarize(records):
        times = {m.optimizer: float(np.median([r.last["wall_time"] for r in m.runs
                                               if r.seed == 0] or [np.nan]))
                 for m in ps.methods}
        slowest = max(times, key=lambda k: times[k])
        t = max(times[slowest], MIN_TIME_BUDGET)
        tuning = sum(r.last.get("wall_time", 0.0) for r in records
                     if r.problem == ps.problem and r.seed == 0)
        measure = seeds * sum(min(t, MAX_EPOCH_FACTOR * v) for v in times.values())
        new_train += tuning + measure
        print(f"{ps.problem:20s} {t:6.3g} {slowest:>14s} {tuning:7.1f} {measure:8.1f}")
    rate = old_wall / old_train if old_train else float("nan")
    print(f"recorded: {old_train:.0f} training s in {old_wall:.0f} s of phases "
          f"({rate:.2f} wall s per training s)")
    print(f"equal-time protocol: {new_train:.0f} training s, about {new_train * rate:.0f} s "
          "of phases at the recorded rate (plus calibration and the report)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=None)
    parser.add_argument("--problems", nargs="+", default=list(EMBEDDED))
    parser.add_argument("--from-db", metavar="DB",
                        help="estimate the equal-time protocol from a recorded sweep")
    parser.add_argument("--sweep", default="bench")
    args = parser.parse_args()
    if args.from_db:
        estimate_from_db(args.from_db, args.sweep)
        return
    torch.set_num_threads(2)
    names = args.optimizers or available_optimizers()
    if "sgd" not in names:
        names = ["sgd", *names]
    print(f"{'problem':20s} {'optimizer':16s} {'seconds':>8s} {'x sgd':>7s}  status")
    for pname in args.problems:
        problem = get_problem(pname)
        base = None
        for oname in names:
            spec = get_optimizer(oname)
            start = time.perf_counter()
            result = run(problem, spec, {}, 0, Budget(epochs=float(problem.epochs)))
            seconds = time.perf_counter() - start
            base = seconds if oname == "sgd" else base
            status = getattr(result, "status", "")
            print(f"{pname:20s} {oname:16s} {seconds:8.2f} {seconds / base:7.1f}  {status}")


if __name__ == "__main__":
    main()
