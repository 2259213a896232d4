"""Cost of the shared Krylov solvers and of GGN products, as ratios measured in the same run.

1. ``truncated_cg`` on the damped GGN (``GGNOperator + 1e-3 I``, positive definite) of an MLP,
   50 iterations (``rtol=0``: no early stop, which would favour ``check_every=1``), with
   ``check_every`` = 1, 10, 50: the time of a solve relative to ``check_every=1`` (one
   host sync per iteration). On a GPU a larger ``check_every`` removes the syncs; on a
   CPU it should change nothing.
2. The same loop written by hand (plain CG with ``.item()``-free tensor scalars, no
   termination tests): the library's overhead is ``truncated_cg / raw``.
3. One ``GGNOperator`` product against one ``HessianOperator`` product at the same point
   (both after building their graphs once).

Usage: ``python benchmarks/krylov.py [--device cuda] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature import GGNOperator, HessianOperator, functional_loss
from secondorder.optim.krylov import truncated_cg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeats: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def raw_cg(matvec, b, iters):
    x = tl.zeros_like(b)
    r = p = b
    rr = tl.dot(r, r)
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / tl.dot(p, ap)
        x = tl.add(x, p, alpha)
        r = tl.sub(r, tl.scale(ap, alpha))
        rr_new = tl.dot(r, r)
        p = tl.add(r, p, rr_new / rr)
        rr = rr_new
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    print(f"device {device} ({name}), torch {torch.__version__}, float32")
    iters = 50
    for widths, batch in [
        ((64, 32, 10), 64),
        ((784, 512, 512, 10), 256),
        ((784, 2048, 2048, 10), 8192),
    ]:
        layers = []
        for a, b in zip(widths[:-1], widths[1:], strict=False):
            layers += [nn.Linear(a, b), nn.Tanh()]
        model = nn.Sequential(*layers[:-1]).to(device)
        x = torch.randn(batch, widths[0], device=device)
        y = torch.randint(0, widths[-1], (batch,), device=device)
        crit = nn.CrossEntropyLoss()
        loss_fn, params = functional_loss(model, crit, x, y)
        H = HessianOperator(loss_fn, params)
        G = GGNOperator.from_model(model, crit, x, y)
        b = tl.neg(H.gradient)

        def damped(v, G=G):  # PSD: no negative-curvature exit, all iterations run
            return tl.add(G.matvec(v), v, 1e-3)

        n = sum(p.numel() for p in params)
        print(f"\nMLP {widths}, batch {batch}, {n} parameters, {iters} CG iterations")
        solves = {
            ce: (lambda ce=ce, damped=damped, b=b: truncated_cg(
                damped, b, rtol=0.0, max_iter=iters, check_every=ce
            ))
            for ce in (1, 10, 50)
        }  # fmt: skip
        times = {ce: [] for ce in solves}
        for fn in solves.values():
            fn()  # warm-up
        for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
            for ce, fn in solves.items():
                times[ce].append(timeit(fn, device, 1))
        base = statistics.median(times[1])
        for ce, fn in solves.items():
            t, res = statistics.median(times[ce]), fn()
            print(
                f"  truncated_cg check_every={ce:>2}: {t * 1e3:8.2f} ms  ratio {t / base:.3f}"
                f"  ({res.status}, {res.iterations} iterations)"
            )
        t_raw = timeit(lambda damped=damped, b=b: raw_cg(damped, b, iters), device, args.repeats)
        print(f"  raw CG (no tests)          : {t_raw * 1e3:8.2f} ms  ratio {t_raw / base:.3f}")
        v = tuple(torch.randn_like(p) for p in params)
        t_h = timeit(lambda H=H, v=v: H.matvec(v), device, args.repeats * 5)
        t_g = timeit(lambda G=G, v=v: G.matvec(v), device, args.repeats * 5)
        print(f"  HessianOperator product    : {t_h * 1e3:8.3f} ms")
        ratio = t_g / t_h
        print(f"  GGNOperator product        : {t_g * 1e3:8.3f} ms  ratio to Hessian {ratio:.2f}")


if __name__ == "__main__":
    main()
