"""One full-batch NewtonCG and LBFGS step, data-parallel on 1 and 2 (or more) processes.

An MNIST-shaped MLP (784-hidden-10, tanh, cross-entropy) on a synthetic batch of ``batch``
samples (a fixed stand-in for MNIST: the cost depends on the shapes, not the pixels). With
``W`` processes (gloo, one intra-op thread each) every rank holds ``batch / W`` samples
and :mod:`secondorder.optim.distributed` averages losses, gradients and Hessian-vector
products across ranks. The 1-process run uses one thread, so the ratio
``time(W) / time(1)`` measures what the extra processes buy; bytes and all-reduces per
step are counted by :func:`~secondorder.optim.distributed.communication_stats` on rank 0.

    python benchmarks/distributed_step.py --quick
    python benchmarks/distributed_step.py --batch 4096 --hidden 256 --rounds 5 --worlds 1 2 4
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from secondorder.optim import LBFGS, NewtonCG
from secondorder.optim.distributed import communication_stats

OPTIMIZERS = {
    "NewtonCG": lambda ps: NewtonCG(ps, max_cg_iter=10, forcing=1e-12),
    "LBFGS": lambda ps: LBFGS(ps, history_size=10),
}


def data(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)


def model(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, hidden), nn.Tanh(), nn.Linear(hidden, 10))


def worker(rank: int, world: int, path: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        x, y = data(args.batch)
        shard = args.batch // world
        xs, ys = x[rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard]
        crit = nn.CrossEntropyLoss()
        results = {}
        for name, make in OPTIMIZERS.items():
            net = model(args.hidden)
            opt = make(net.parameters())

            def closure(net=net):
                return crit(net(xs), ys)

            opt.step(closure)  # warm-up: allocations, first line search
            stats = communication_stats()
            times = []
            stats.reset()
            for _ in range(args.rounds):
                dist.barrier()
                t0 = time.perf_counter()
                opt.step(closure)
                times.append(time.perf_counter() - t0)
            results[name] = {
                "seconds": statistics.median(times),
                "bytes_per_step": stats.bytes / args.rounds,
                "all_reduces_per_step": stats.all_reduces / args.rounds,
                "hvps_per_step": opt.counters.hvps / (args.rounds + 1),
                "loss_evals_per_step": opt.counters.loss_evals / (args.rounds + 1),
            }
        if rank == 0:
            with open(os.path.join(path, "result.json"), "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


def run(world: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as path:
        mp.start_processes(worker, args=(world, path, args), nprocs=world, start_method="spawn")
        with open(os.path.join(path, "result.json")) as f:
            return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="batch 512, hidden 32, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.hidden, args.rounds = 512, 32, 2
    params = sum(p.numel() for p in model(args.hidden).parameters())
    runs = {w: run(w, args) for w in args.worlds}
    print(f"MLP 784-{args.hidden}-10 ({params} parameters), batch {args.batch}, "
          f"median of {args.rounds} steps, one thread per process")
    print("| optimizer | processes | s/step | time / time(1 process) | all-reduces/step "
          "| bytes/step | HVPs/step | loss evals/step |")
    print("|---|---|---|---|---|---|---|---|")
    base = runs[args.worlds[0]]
    for name in OPTIMIZERS:
        for w, res in runs.items():
            r = res[name]
            print(f"| {name} | {w} | {r['seconds']:.3f} | "
                  f"{r['seconds'] / base[name]['seconds']:.2f} | {r['all_reduces_per_step']:.1f} "
                  f"| {r['bytes_per_step']:,.0f} | {r['hvps_per_step']:.1f} "
                  f"| {r['loss_evals_per_step']:.1f} |")


if __name__ == "__main__":
    main()
