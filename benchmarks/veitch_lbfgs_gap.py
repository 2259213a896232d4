"""Our LBFGS beside scipy's L-BFGS-B on the [Veitch] study's two-hidden-layer sigmoid MLP.

One factor at a time through ``--hp`` (ours: ``{"history_size": 10}``, scipy's ``maxcor``;
``{"first_step_norm": "l2"}``, scipy's first step), ``--float64``
(model and data in float64), the optimizer (``LBFGS`` or ``scipy_lbfgsb``). Runs the study's
own iteration loop (:func:`secondorder.bench.studies.iterations.run_iterations`, fixed
batches of 1000 covering the training set) and prints the training loss at a few iterations,
the final validation accuracy and the closure calls (docs/studies/veitch.md, Table 3).

    PYTHONPATH=src python benchmarks/veitch_lbfgs_gap.py --data-dir \
        /work/shared/data/mnist-t10k --max-train 7000 --optimizer LBFGS --seed 0
    PYTHONPATH=src python benchmarks/veitch_lbfgs_gap.py --quick   # digits, 20 iterations
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from secondorder.bench import problems as P
from secondorder.bench.studies.iterations import run_iterations
from secondorder.bench.studies.problems import mlp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--max-train", type=int, default=7000)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--optimizer", default="LBFGS", choices=("LBFGS", "scipy_lbfgsb"))
    ap.add_argument("--hp", default="{}", help='JSON keyword arguments, e.g. \'{"lr": 0.1}\'')
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--quick", action="store_true", help="digits, 20 iterations")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        a.data_dir, a.iterations = None, 20
    p = mlp(a.data_dir, hidden_layers=2, max_train=a.max_train).problem
    if a.float64:
        make = p.make_model

        def f64(s: P.Split) -> P.Split:
            return P.Split(s.inputs.double(), s.targets)

        p = dataclasses.replace(p, make_model=lambda seed: make(seed).double(),
                                train=f64(p.train), validation=f64(p.validation),
                                test=f64(p.test))
    t = time.time()
    r = run_iterations(p, a.optimizer, json.loads(a.hp), a.seed, a.iterations,
                       sampling="fixed", batch_size=1000)
    loss = [m["train_loss"] for m in r.measurements]
    at = {k: round(loss[k], 4) for k in (0, 10, 25, 50, 75, len(loss) - 1) if k < len(loss)}
    evals = r.measurements[-1].get("optimizer_counters", {}).get("evaluations")
    print(f"{a.optimizer} {a.hp} seed {a.seed} {'float64' if a.float64 else 'float32'} "
          f"{r.status} {r.error or ''} {time.time() - t:.0f} s")
    print(f"  train loss at iteration {at}; val acc {r.measurements[-1]['val_acc']:.3f}; "
          f"closure calls {evals}")


if __name__ == "__main__":
    main()
