"""Seconds for one run of each embedded problem at its default epoch budget.

For each problem, one run (seed 0, the optimizer's default hyperparameters) per optimizer
through the benchmark runner; prints the seconds and the ratio to SGD's run on the same
problem, measured side by side in this process. Used to keep the embedded suite small
enough for the 10-minute default bench (issue 5).

    python benchmarks/problem_budgets.py [--optimizers sgd adam LBFGS NewtonCG ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from secondorder.bench.problems import EMBEDDED, get_problem
from secondorder.bench.registry import available_optimizers, get_optimizer
from secondorder.bench.runner import Budget, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=None)
    parser.add_argument("--problems", nargs="+", default=list(EMBEDDED))
    args = parser.parse_args()
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
