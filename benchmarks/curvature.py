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

from secondorder.bench.models import MLP, LeNet5
from secondorder.curvature import HessianOperator, functional_loss, hvp


def lenet5() -> nn.Module:
    """LeNet-5 with sigmoid units, as in [Shen] (the benchmark suite's model)."""
    return LeNet5("sigmoid")


def mlp() -> nn.Module:
    """[Veitch]'s network 784-300-10 with sigmoid hidden units."""
    return MLP([784, 300, 10], "sigmoid")


RAW_RETAINED = "marginal product: raw autograd.grad(retain_graph)"


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(fn, baseline, repeats: int) -> tuple[float, float]:
    """Median time of ``fn`` and median of the per-round ratios ``fn / baseline``.

    ``fn`` and ``baseline`` run back to back in every round, so a machine that slows down
    for a while slows both: the ratio is steadier than a ratio of two separate medians.
    """
    fn(), baseline()  # warm-up
    times, ratios = [], []
    for _ in range(repeats):
        tb = _time(baseline)
        tf = _time(fn)
        times.append(tf)
        ratios.append(tf / tb)
    return statistics.median(times), statistics.median(ratios)


def bench_model(name: str, model: nn.Module, batch: int, repeats: int) -> None:
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

    op = HessianOperator(loss_fn, fparams)
    g = torch.autograd.grad(crit(model(x), y), params, create_graph=True)

    def raw_retained():
        torch.autograd.grad(g, params, v, retain_graph=True)

    def op_product():
        op @ v

    rows = [("gradient", paired(grad, grad, repeats))]
    rows.append(("raw double backward (torch.autograd.grad x2)", paired(raw_hvp, grad, repeats)))
    for backend in ["autograd", "forward", "complex-step", "finite-difference"]:
        rows.append((
            f"hvp backend={backend}",
            paired(lambda b=backend: hvp(loss_fn, fparams, v, backend=b), grad, repeats),
        ))
    rows.append(("marginal product: HessianOperator @ v", paired(op_product, grad, repeats)))
    rows.append((RAW_RETAINED, paired(raw_retained, grad, repeats)))
    print(f"\n{name} (batch {batch}, float32, {sum(p.numel() for p in params):,} parameters)")
    print(f"{'operation':52s} {'ms':>9s} {'x gradient':>11s}")
    for label, (t, r) in rows:
        print(f"{label:52s} {1e3 * t:9.2f} {r:11.2f}")
    _, over = paired(lambda: hvp(loss_fn, fparams, v), raw_hvp, repeats)
    print(f"library overhead hvp(autograd) / raw double backward (paired): {over:.3f}")
    _, over = paired(op_product, raw_retained, repeats)
    print(f"operator overhead vs raw retained backward (paired): {over:.3f}")


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
