"""Cost of the curvature inspection tools, as ratios to a baseline timed in the same run.

1. [Veitch] per-layer Hessians (:func:`secondorder.curvature.layer_hessians`, closed-form
   Hessian back-propagation) against the autograd baseline that gives the same blocks:
   ``torch.func.hessian`` of the loss with respect to each layer's (weight, bias) in turn.
2. Lanczos with full reorthogonalization (``eigenvalues``, top 3) against the same number
   of bare Hessian-vector products (the reorthogonalization overhead).

MLP 20-32-32-10 (tanh), batch 256, float64, CPU. Each pair is interleaved round by round;
the figure is the median ratio over rounds. Results are also checked to agree.

Usage: ``python benchmarks/curvature_tools.py [--rounds 10] [--threads N]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from secondorder.curvature import HessianOperator, eigenvalues, functional_loss, layer_hessians
from secondorder.curvature.diagonal import rademacher_like


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def autograd_layer_blocks(model: nn.Sequential, x, y) -> list[torch.Tensor]:
    """Baseline: dense Hessian w.r.t. each Linear's parameters with ``torch.func.hessian``."""
    names = dict(model.named_parameters())
    blocks = []
    for i, m in enumerate(model):
        if not isinstance(m, nn.Linear):
            continue
        keys = [f"{i}.weight", f"{i}.bias"]
        shapes = [names[k].shape for k in keys]
        sizes = [names[k].numel() for k in keys]

        def loss(flat, keys=keys, shapes=shapes, sizes=sizes):
            parts = torch.split(flat, sizes)
            ps = {k: p.view(s) for k, p, s in zip(keys, parts, shapes, strict=True)}
            out = torch.func.functional_call(model, ps, (x,), strict=False)
            return nn.functional.cross_entropy(out, y)

        flat = torch.cat([names[k].detach().reshape(-1) for k in keys])
        blocks.append(torch.func.hessian(loss)(flat))
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dt = torch.float64
    model = nn.Sequential(
        nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10)
    ).to(dt)
    x, y = torch.randn(256, 20, dtype=dt), torch.randint(0, 10, (256,))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, MLP 20-32-32-10 tanh, batch 256, float64")

    ours, ref = layer_hessians(model, x, y), autograd_layer_blocks(model, x, y)  # warm-up
    err = max(float((a - b).abs().max().detach()) for a, b in zip(ours, ref, strict=True))
    print(f"layer_hessians vs autograd blocks: max abs difference {err:.2e}")
    ratios = []
    for _ in range(args.rounds):
        t_ref = _time(lambda: autograd_layer_blocks(model, x, y))
        t_ours = _time(lambda: layer_hessians(model, x, y))
        ratios.append(t_ours / t_ref)
    print(f"layer_hessians / torch.func.hessian per layer: median {statistics.median(ratios):.3f}"
          f" (min {min(ratios):.3f}, max {max(ratios):.3f}) over {args.rounds} rounds")

    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    steps = 50
    ratios = []
    for r in range(args.rounds):
        g = torch.Generator().manual_seed(r)

        def bare(g=g):
            op = HessianOperator(loss_fn, params)
            v = rademacher_like(params, g)
            for _ in range(steps):
                v = op.matvec(v)
            op.free()

        t_ref = _time(bare)
        t_ours = _time(  # tol=0: all 50 steps, no early stop, to price the reorthogonalization
            lambda g=g: eigenvalues(loss_fn, params, k=3, num_steps=steps, tol=0, generator=g)
        )
        ratios.append(t_ours / t_ref)
    print(f"eigenvalues(k=3, 50 Lanczos steps, full reorth.) / 50 bare HVPs: median "
          f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
