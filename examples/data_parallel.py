"""Data-parallel NewtonCG with torchrun: each rank trains on its shard, all take one step.

    torchrun --standalone --nproc_per_node=2 examples/data_parallel.py --steps 5

The supported pattern (see :mod:`secondorder.optim.distributed`): a plain module on every
rank with the same initial parameters, a closure returning the mean loss of this rank's
shard, and no ``DistributedDataParallel`` wrapper; the optimizer averages losses,
gradients and Hessian-vector products across ranks, so every rank takes the same step.
"""

from __future__ import annotations

import argparse
import datetime

import torch
import torch.distributed as dist
from torch import nn

from secondorder.optim import NewtonCG
from secondorder.optim.distributed import broadcast_random_state, communication_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024, help="global batch size")
    args = parser.parse_args()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=60))  # env:// (torchrun)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if backend == "nccl" \
        else torch.device("cpu")
    torch.manual_seed(0)  # same initial parameters and data on every rank
    model = nn.Sequential(nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 10)).to(device)
    x = torch.rand(args.batch, 784, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    shard = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
    xs, ys = x[shard], y[shard]
    broadcast_random_state()  # identical random draws on every rank
    criterion = nn.CrossEntropyLoss()
    optimizer = NewtonCG(model.parameters(), max_cg_iter=20)
    for step in range(args.steps):
        loss = optimizer.step(lambda: criterion(model(xs), ys))
        if rank == 0:
            print(f"step {step}: loss {float(loss):.6f}")
    if rank == 0:
        stats = communication_stats()
        print(f"{world} ranks, {stats.all_reduces} all-reduces, {stats.bytes:,} bytes")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
