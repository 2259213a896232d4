"""[Shen]'s cost claims, measured on this machine, as ratios that compare across machines.

1. Derivative cost ([Shen] Sec. 5): one Hessian-vector product on VGG-19, single-thread
   CPU, took 58.1 s by the complex step and 73.4 s by PyTorch autograd (complex / autograd
   = 0.79, "27% faster"). We time a gradient, an autograd ``H p`` (double backward) and a
   complex-step ``H p`` (eq. 10) on VGG-11- and VGG-19-shaped networks at one thread
   (3 x 32 x 32 inputs, batch 8 by default) and print each product over the gradient and
   complex over autograd (:func:`secondorder.bench.studies.shen_costs.derivative_costs`).
2. Per-epoch breakdown ([Shen] supplementary "Time statistic": about 680 s per LeNet-5
   epoch on MNIST, 89.8% on the global gradient): ``NewtonKrylov`` steps (complex-step or
   autograd backend) on LeNet-5 (sigmoid), batch 128, global gradient over the training
   split, from the optimizer's counters (global gradient / batch gradient and Krylov loop /
   step sizing seconds), extrapolated from ``--steps`` steps to one epoch.

Usage::

    python benchmarks/shen_costs.py --quick
    python benchmarks/shen_costs.py --data-dir ../shared/data/mnist-t10k
    python benchmarks/shen_costs.py --width-divisor 1 --batch 8 --rounds 3 --steps 10
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from secondorder.bench.registry import REGISTRY
from secondorder.bench.runner import make_closure
from secondorder.bench.studies.shen_costs import derivative_costs
from secondorder.bench.studies.shen_problems import lenet
from secondorder.optim import NewtonKrylov

PAPER_RATIO = 58.1 / 73.4


def epoch_breakdown(data_dir: str | None, backend: str, steps: int, batch: int,
                    max_train: int | None) -> dict[str, float]:
    """Seconds per phase over ``steps`` NewtonKrylov steps, and one epoch extrapolated."""
    sp = lenet(data_dir, False, batch_size=batch, max_train=max_train)
    prob = sp.problem
    model = prob.make_model(0)
    opt = NewtonKrylov(model.parameters(), backend=backend)
    spec = REGISTRY["NewtonKrylov"]
    train = prob.train
    glob = make_closure(spec, model, opt, prob, train.inputs, train.targets, [None])
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(train), generator=gen)
    t0 = time.perf_counter()
    for i in range(steps):
        idx = perm[(i * batch) % len(train):][:batch]
        closure = make_closure(spec, model, opt, prob, train.inputs[idx], train.targets[idx],
                               [None])
        opt.step(closure, global_closure=glob)
    total = time.perf_counter() - t0
    c = opt.counters
    per_epoch = total / steps * math.ceil(len(train) / batch)
    parts = {"global": c.global_seconds, "krylov": c.krylov_seconds,
             "sizing": c.sizing_seconds}
    return {"data": sp.data, "train": len(train), "steps": steps, "seconds": total,
            "epoch_seconds": per_epoch, **{f"{k}_share": v / total for k, v in parts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1/16 width, batch 2, one round, 3 steps on 256 samples")
    ap.add_argument("--width-divisor", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="NewtonKrylov steps timed")
    ap.add_argument("--data-dir", default=None, help="folder with MNIST (else digits)")
    ap.add_argument("--max-train", type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.width_divisor, args.batch, args.rounds, args.steps = 16, 2, 1, 3
        args.max_train = args.max_train or 256
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, one thread")
    costs = derivative_costs(width_divisor=args.width_divisor, batch=args.batch,
                             rounds=args.rounds)
    print(f"\n1. One H p over one gradient (batch {args.batch}, 3x32x32, width "
          f"1/{args.width_divisor}, median of {args.rounds}); paper, VGG-19: complex / "
          f"autograd = {PAPER_RATIO:.2f}")
    print(f"{'net':8s} {'params':>10s} {'grad s':>8s} {'autograd':>9s} {'complex':>8s} "
          f"{'complex/autograd':>17s}")
    for name, r in costs.items():
        print(f"{name:8s} {r['parameters']:10.0f} {r['gradient']:8.3f} "
              f"{r['autograd_ratio']:9.2f} {r['complex_step_ratio']:8.2f} "
              f"{r['complex_over_autograd']:17.2f}")
    print(f"\n2. NewtonKrylov on LeNet-5 (sigmoid), batch 128, {args.steps} steps; paper: "
          "680 s per MNIST epoch, 89.8% on the global gradient")
    for backend in ("complex-step", "autograd"):
        b = epoch_breakdown(args.data_dir, backend, args.steps, 128, args.max_train)
        print(f"{backend:13s} {b['train']} training samples: {b['seconds']:.1f} s for "
              f"{b['steps']} steps, about {b['epoch_seconds']:.0f} s per epoch; global "
              f"gradient {100 * b['global_share']:.1f}%, batch gradient + Krylov "
              f"{100 * b['krylov_share']:.1f}%, step sizing {100 * b['sizing_share']:.1f}%")
    print(f"data: {b['data']}")


if __name__ == "__main__":
    main()
