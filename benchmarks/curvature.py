"""Cost of curvature products, as ratios to one gradient measured in the same run.

For an MLP 784-300-10 (batch 1000) and LeNet-5 (batch 256), float32 on the CPU, times:

- one gradient (forward + backward) — the baseline;
- one HVP through :func:`secondorder.curvature.hvp` per backend (each includes its own
  forward and first backward);
- a raw double backward written by hand with ``torch.autograd.grad`` (the library's
  overhead is ``hvp(autograd) / raw``);
- the marginal product inside a CG loop: ``HessianOperator @ v`` once the operator holds
  the gradient graph, against a raw ``torch.autograd.grad(g, params, v, retain_graph=True)``.

Usage: ``python benchmarks/curvature.py [--repeats 20] [--threads N]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from secondorder.curvature import HessianOperator, functional_loss, hvp


def lenet5() -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) for 1x28x28 inputs, as in seed 002 (sigmoid units)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10),
    )  # fmt: skip


def mlp() -> nn.Module:
    """Seed 003's network 784-300-10 with sigmoid hidden units."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.Sigmoid(), nn.Linear(300, 10))


RAW_RETAINED = "marginal product: raw autograd.grad(retain_graph)"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(name: str, model: nn.Module, batch: int, repeats: int) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    crit = nn.CrossEntropyLoss()
    params = [p for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]
    loss_fn, fparams = functional_loss(model, crit, x, y)

    def grad():
        torch.autograd.grad(crit(model(x), y), params)

    def raw_hvp():
        g = torch.autograd.grad(crit(model(x), y), params, create_graph=True)
        torch.autograd.grad(g, params, v)

    t_grad = median_time(grad, repeats)
    rows = [("gradient", t_grad)]
    t_raw = median_time(raw_hvp, repeats)
    rows.append(("raw double backward (torch.autograd.grad x2)", t_raw))
    for backend in ["autograd", "forward", "complex-step", "finite-difference"]:
        try:
            t = median_time(lambda b=backend: hvp(loss_fn, fparams, v, backend=b), repeats)
        except NotImplementedError:
            continue
        rows.append((f"hvp backend={backend}", t))

    op = HessianOperator(loss_fn, fparams)
    g = torch.autograd.grad(crit(model(x), y), params, create_graph=True)
    rows.append(("marginal product: HessianOperator @ v", median_time(lambda: op @ v, repeats)))
    rows.append(
        (
            RAW_RETAINED,
            median_time(lambda: torch.autograd.grad(g, params, v, retain_graph=True), repeats),
        )
    )
    print(f"\n{name} (batch {batch}, float32, {sum(p.numel() for p in params):,} parameters)")
    print(f"{'operation':52s} {'ms':>9s} {'x gradient':>11s}")
    for label, t in rows:
        print(f"{label:52s} {1e3 * t:9.2f} {t / t_grad:11.2f}")
    hv_t = dict(rows)
    print(
        f"library overhead hvp(autograd) / raw double backward: "
        f"{hv_t['hvp backend=autograd'] / t_raw:.3f}"
    )
    print(
        f"operator overhead vs raw retained backward: "
        f"{hv_t['marginal product: HessianOperator @ v'] / hv_t[RAW_RETAINED]:.3f}"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    bench_model("MLP 784-300-10", mlp(), 1000, args.repeats)
    bench_model("LeNet-5", lenet5(), 256, args.repeats)


if __name__ == "__main__":
    main()
