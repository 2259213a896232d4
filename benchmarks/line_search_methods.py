"""Full-batch line-search methods side by side on [Veitch]'s network (784-300-10 sigmoid).

The objective is [Veitch] eq. 28 over fixed batches of ``--batch`` samples covering the data
once (so it is the mean cross-entropy over all samples), on MNIST t10k
(/work/shared/data/mnist-t10k, IDX parsed here) or synthetic MNIST-shaped data. In one run:

* scipy.optimize 'L-BFGS-B' and 'CG' with numpy callbacks around the same torch model
  (float64 numpy <-> float32 torch, as [Veitch] does);
* torch.optim.LBFGS (strong Wolfe, history 10, called once per step: ``max_iter=1``,
  ``max_eval=26`` so its line search has torch's usual 25 extra trials);
* secondorder LBFGS and NonlinearCG (``full_batch=True``).

Printed per method: loss evaluations per iteration, seconds per iteration as a ratio to
one full gradient (loss + backward, measured in the same run), and the wall time to reach
the loss scipy L-BFGS-B reaches in ``--iters`` iterations (as a ratio to torch and scipy).
The torch-side methods report the loss at the start of each step, so their time-to-target
includes one step of lag (the same for both).

Usage: ``python benchmarks/line_search_methods.py [--samples 5000] [--iters 50]``
"""

from __future__ import annotations

import argparse
import gzip
import os
import time

import numpy as np
import scipy.optimize
import torch
from torch import nn

from secondorder.optim import LBFGS, NonlinearCG

MNIST = "/work/shared/data/mnist-t10k"


def load_data(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    img = os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")
    lab = os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")
    if os.path.exists(img) and os.path.exists(lab):
        with gzip.open(img, "rb") as f:
            raw = f.read()
        n = int.from_bytes(raw[4:8], "big")
        X = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 784)
        with gzip.open(lab, "rb") as f:
            y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
        X = torch.as_tensor(X[:samples] / 255.0, dtype=torch.float32)
        return X, torch.as_tensor(y[:samples].astype(np.int64)), "MNIST t10k"
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(samples, 784, generator=gen)
    W = torch.randn(784, 10, generator=gen)
    return X, (X @ W).argmax(1), "synthetic"


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 300), nn.Sigmoid(), nn.Linear(300, 10))


class Run:
    """Loss trajectory with wall times and evaluation counts."""

    def __init__(self, name: str):
        self.name, self.times, self.losses, self.evals, self.t0 = name, [], [], 0, 0.0

    def start(self):
        self.t0 = time.perf_counter()

    def record(self, loss: float):
        self.times.append(time.perf_counter() - self.t0)
        self.losses.append(loss)

    def time_to(self, target: float) -> float:
        for t, v in zip(self.times, self.losses, strict=True):
            if v <= target:
                return t
        return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--max-iters", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    X, y, source = load_data(args.samples, args.seed)
    ce = nn.CrossEntropyLoss()
    model = make_model(args.seed)
    params = list(model.parameters())
    x0 = nn.utils.parameters_to_vector(params).detach().clone()
    # eq. 28 over fixed covering batches = mean over all samples (equal batch sizes)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(args.seed))
    n_used = (len(X) // args.batch) * args.batch
    Xb, yb = X[perm[:n_used]], y[perm[:n_used]]

    def closure():
        return ce(model(Xb), yb)

    def reset():
        with torch.no_grad():
            nn.utils.vector_to_parameters(x0.clone(), params)  # no aliasing of x0

    # one full gradient
    reset()
    for _ in range(2):
        torch.autograd.grad(closure(), params)
    t = time.perf_counter()
    for _ in range(5):
        torch.autograd.grad(closure(), params)
    t_grad = (time.perf_counter() - t) / 5

    runs: dict[str, Run] = {}

    def scipy_run(method: str, maxiter: int, target: float | None) -> Run:
        reset()
        run = Run(f"scipy {method}")

        def fun(v):
            run.evals += 1
            with torch.no_grad():
                nn.utils.vector_to_parameters(torch.tensor(v, dtype=torch.float32), params)
            loss = closure()
            g = torch.autograd.grad(loss, params)
            return float(loss.detach()), torch.cat([t.reshape(-1) for t in g]).double().numpy()

        def cb(intermediate_result):
            run.record(float(intermediate_result.fun))
            if target is not None and intermediate_result.fun <= target:
                raise StopIteration

        run.start()
        scipy.optimize.minimize(fun, x0.double().numpy(), jac=True, method=method,
                                callback=cb, options=dict(maxiter=maxiter, gtol=0.0))
        return run

    runs["lbfgsb"] = scipy_run("L-BFGS-B", args.iters, None)
    target = runs["lbfgsb"].losses[-1]
    runs["cg"] = scipy_run("CG", args.max_iters, target)

    def torch_run(name: str, make_opt, plain_torch: bool) -> Run:
        reset()
        run = Run(name)
        opt = make_opt()

        def tclosure():
            run.evals += 1
            opt.zero_grad()
            loss = closure()
            loss.backward()
            return loss

        run.start()
        for _ in range(args.max_iters):
            loss = opt.step(tclosure) if plain_torch else opt.step(closure)
            run.record(float(loss))
            if run.losses[-1] <= target:
                break
        if not plain_torch:
            run.evals = opt.counters.loss_evals
        return run

    runs["torch"] = torch_run("torch.optim.LBFGS", lambda: torch.optim.LBFGS(
        params, lr=1, max_iter=1, max_eval=26, history_size=10,
        line_search_fn="strong_wolfe"), True)  # fmt: skip
    runs["ours_lbfgs"] = torch_run(
        "secondorder LBFGS", lambda: LBFGS(params, history_size=10, full_batch=True), False
    )
    runs["ours_nlcg"] = torch_run(
        "secondorder NonlinearCG", lambda: NonlinearCG(params, full_batch=True), False
    )

    print(f"data: {source}, {n_used} samples, fixed batches of {args.batch}; "
          f"784-300-10 sigmoid; one full gradient = {t_grad * 1e3:.1f} ms")
    print(f"target: scipy L-BFGS-B loss after {args.iters} iterations = {target:.6f}")
    print(f"{'method':26s} {'iters':>5s} {'evals/iter':>10s} {'s/iter / grad':>13s} "
          f"{'time to target (s)':>18s}")
    for r in runs.values():
        it = len(r.losses)
        per_iter = r.times[-1] / it / t_grad if it else float("nan")
        print(f"{r.name:26s} {it:5d} {r.evals / max(it, 1):10.2f} {per_iter:13.2f} "
              f"{r.time_to(target):18.2f}")
    tt = {k: r.time_to(target) for k, r in runs.items()}
    ours_gpi = runs["ours_lbfgs"].evals / max(len(runs["ours_lbfgs"].losses), 1)
    print(
        f"ratios: ours LBFGS / torch LBFGS = {tt['ours_lbfgs'] / tt['torch']:.2f} (goal <= 0.7);"
        f" ours LBFGS / scipy L-BFGS-B = {tt['ours_lbfgs'] / tt['lbfgsb']:.2f} (goal <= 1.0);"
        f" ours NLCG / scipy CG = {tt['ours_nlcg'] / tt['cg']:.2f} (goal <= 1.0);"
        f" ours LBFGS gradients/iter = {ours_gpi:.2f} (goal <= 1.3)"
    )

if __name__ == "__main__":
    main()
