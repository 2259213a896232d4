"""SGD-BB ([Filippova] Alg. 3) step sizes per epoch on the [Filippova] study's CNN.

Prints, per epoch, the step ``eta_k`` used, the validation loss and accuracy, and the next
epoch's step with its upper bound ``tau_max / (k + 1)``: shows whether the Barzilai-Borwein
step is bounded, falls back to ``tau_0 / (k + 1)``, or grows until the network collapses
(docs/studies/filippova.md, "BB").

    PYTHONPATH=src python benchmarks/sgd_bb_steps.py --data-dir /work/shared/data/mnist-t10k \
        --max-train 2000 --epochs 10 --seeds 0 1 2 --tau-max 10
    PYTHONPATH=src python benchmarks/sgd_bb_steps.py --quick   # digits, 3 epochs, ~5 s
"""

from __future__ import annotations

import argparse
import math

import torch

from secondorder.bench.studies.problems import cnn
from secondorder.optim import BarzilaiBorwein


def run(problem, lr: float, tau_max: float, epochs: int, seed: int, batch: int = 128,
        sgd: bool = False) -> None:
    """Train with SGD-BB (or plain SGD at the fixed step ``lr``) and print one line per epoch."""
    model = problem.make_model(seed)
    x, y = problem.train.inputs, problem.train.targets
    steps = math.ceil(len(x) / batch)
    opt = BarzilaiBorwein(model.parameters(), lr=lr, epoch_length=steps, tau_max=tau_max)
    sgd_opt = torch.optim.SGD(model.parameters(), lr=lr) if sgd else None
    gen = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        eta = lr if sgd_opt is not None else opt.step_size
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            xb, yb = x[idx], y[idx]
            if sgd_opt is None:
                opt.step(lambda xb=xb, yb=yb: problem.loss(model(xb), yb).mean())
            else:
                sgd_opt.zero_grad()
                problem.loss(model(xb), yb).mean().backward()
                sgd_opt.step()
        with torch.no_grad():
            out = model(problem.validation.inputs)
            vl = float(problem.loss(out, problem.validation.targets).mean())
            va = float(problem.accuracy(out, problem.validation.targets))
        print(f"seed {seed} epoch {ep} eta {eta:.4g} val_loss {vl:.3f} val_acc {va:.3f} "
              f"next_eta {opt.step_size:.4g} next_bound {tau_max / (ep + 2):.4g}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--max-train", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--tau-max", type=float, default=10.0)
    ap.add_argument("--sgd", action="store_true", help="plain SGD at the fixed step --lr")
    ap.add_argument("--quick", action="store_true", help="digits, 3 epochs, seed 0")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        a.data_dir, a.epochs, a.seeds = None, 3, [0]
    problem = cnn(a.data_dir, max_train=a.max_train).problem
    for seed in a.seeds:
        run(problem, a.lr, a.tau_max, a.epochs, seed, sgd=a.sgd)


if __name__ == "__main__":
    main()
