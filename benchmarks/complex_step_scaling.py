"""Cost of complex-step products vs the direction's norm, before/after direction scaling.

Complex-step products ([Shen] eq. 10, 11) put ``h v`` into the imaginary parts. For a
direction of small norm those (and their ``O(h^2)`` cross terms) used to become subnormal,
which CPUs process up to ~100x slower. The products now run on
:func:`~secondorder.curvature.complex_step.unit_direction` and scale back. "before"
replaces that split with the identity (the previous behaviour) in the same process.

For each round, one gradient, then every (mode, product, norm) call in turn; the figure
is the median over rounds of (product time / gradient time in the same round), so a
loaded machine shifts both alike.

    python benchmarks/complex_step_scaling.py --quick
    python benchmarks/complex_step_scaling.py --hidden 1024 --batch 256 --rounds 5
    python benchmarks/complex_step_scaling.py --newton-krylov 3 --hidden 1024 --batch 256
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import secondorder.curvature.complex_step as cs
from secondorder import tensorlist as tl
from secondorder.curvature import functional_loss, gradient, hvp, vhv
from secondorder.curvature.complex_step import products

NORMS = (1.0, 1e-3, 1e-6)


@contextlib.contextmanager
def scaling(enabled: bool) -> Iterator[None]:
    """Run with the direction split (``enabled``) or with the previous literal step."""
    if enabled:
        yield
        return
    original = products.unit_direction

    def literal(vec, dtype, h=None):
        vec = tuple(v.detach().to(dtype) for v in vec)
        return vec, torch.ones((), dtype=dtype)

    products.unit_direction = literal
    cs.unit_direction = literal  # bicomplex_vhv looks it up on the package
    try:
        yield
    finally:
        products.unit_direction = original
        cs.unit_direction = original


class SubnormalCounter(TorchFunctionMode):
    """Counts subnormal numbers among the real and imaginary parts of every tensor the
    forward pass produces (entered outside the complex-step mode, it sees the ops its
    rules run). Machine-independent: the cause of the slowdown, not its cost."""

    def __init__(self) -> None:
        super().__init__()
        self.subnormal = 0
        self.total = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                with torch._C.DisableTorchFunction():
                    parts = torch.view_as_real(t.detach()) if t.is_complex() else t.detach()
                    tiny = torch.finfo(parts.dtype).tiny
                    self.subnormal += int(((parts.abs() < tiny) & (parts != 0)).sum())
                    self.total += parts.numel()
        return out


def subnormal_fraction(fn: Callable[[], object], enabled: bool) -> float:
    counter = SubnormalCounter()
    with scaling(enabled), counter:
        fn()
    return counter.subnormal / max(counter.total, 1)


def mlp(inputs: int, hidden: int, classes: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden // 2),
                         nn.Tanh(), nn.Linear(hidden // 2, classes)).to(dtype)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def products_table(args: argparse.Namespace, dtype: torch.dtype) -> None:
    model = mlp(784, args.hidden, 10, dtype)
    x = torch.randn(args.batch, 784, dtype=dtype)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    n_params = sum(p.numel() for p in params)
    torch.manual_seed(1)
    u = tuple(torch.randn_like(p) for p in params)
    u = tl.scale(u, 1.0 / float(tl.norm(u)))
    calls = {}
    for mode in ("before", "after"):
        for norm in args.norms:
            v = tl.scale(u, norm)
            calls[(mode, "hvp", norm)] = lambda v=v: hvp(loss_fn, params, v, "complex-step")
            calls[(mode, "vhv", norm)] = lambda v=v: vhv(loss_fn, params, v, "complex-step")
    ratios: dict[tuple, list[float]] = {key: [] for key in calls}
    for r in range(args.rounds + 1):  # round 0 warms up
        g = seconds(lambda: gradient(loss_fn, params))
        for key, fn in calls.items():
            with scaling(key[0] == "after"):
                t = seconds(fn)
            if r > 0:
                ratios[key].append(t / g)
    print(f"MLP 784-{args.hidden}-{args.hidden // 2}-10 tanh, {n_params} parameters, "
          f"batch {args.batch}, {dtype}, {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| product | direction norm | before (x gradient) | after (x gradient) "
          "| subnormal fraction of forward values, before / after |")
    print("|---|---|---|---|---|")
    for product in ("hvp", "vhv"):
        for norm in args.norms:
            b = statistics.median(ratios[("before", product, norm)])
            a = statistics.median(ratios[("after", product, norm)])
            fn = calls[("after", product, norm)]
            sb, sa = subnormal_fraction(fn, False), subnormal_fraction(fn, True)
            print(f"| {product} | {norm:g} | {b:.1f} | {a:.1f} | {sb:.2e} / {sa:.2e} |")


def newton_krylov_table(args: argparse.Namespace, dtype: torch.dtype) -> None:
    from secondorder.optim import NewtonKrylov

    x = torch.randn(args.batch, 784, dtype=dtype)
    y = torch.randint(0, 10, (args.batch,))
    print(f"NewtonKrylov(backend='complex-step', max_cg_iter={args.max_cg_iter}), "
          f"{args.newton_krylov} steps, same batch, seconds per step:")
    for mode in ("before", "after"):
        model = mlp(784, args.hidden, 10, dtype)
        loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
        opt = NewtonKrylov(params, backend="complex-step", max_cg_iter=args.max_cg_iter)

        def closure(ps=None, loss_fn=loss_fn, params=params):
            return loss_fn(params if ps is None else ps)

        times = []
        with scaling(mode == "after"):
            for _ in range(args.newton_krylov):
                times.append(seconds(lambda opt=opt, closure=closure: opt.step(closure)))
        with torch.no_grad():
            final = float(closure())
        print(f"  {mode}: " + ", ".join(f"{t:.2f}" for t in times) + f" (loss {final:.4g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small MLP, 2 rounds")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--newton-krylov", type=int, default=0, metavar="STEPS",
                        help="also time STEPS NewtonKrylov steps before/after")
    parser.add_argument("--max-cg-iter", type=int, default=10)
    parser.add_argument("--norms", type=float, nargs="+", default=list(NORMS),
                        help="direction norms (default: 1 1e-3 1e-6)")
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.batch, args.rounds = 128, 64, 2
    if args.hidden < 2 or args.batch < 1 or args.rounds < 1:
        parser.error("--hidden must be >= 2, --batch and --rounds >= 1")
    dtype = getattr(torch, args.dtype)
    products_table(args, dtype)
    if args.newton_krylov:
        newton_krylov_table(args, dtype)


if __name__ == "__main__":
    main()
