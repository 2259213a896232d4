"""Top Hessian eigenvalue: ``secondorder`` Lanczos against PyHessian's power iteration.

Problem (issue 8 item 6): an MLP 784-300-10 (sigmoid, :class:`secondorder.bench.models.MLP`,
float32, 238,510 parameters) on 1,000 images with the cross-entropy loss: the first 1,000
MNIST test images when ``--data-dir`` points at MNIST (read by
:func:`secondorder.bench.data.load_image_set`), else 1,000 synthetic images of that shape
(uniform pixels, random labels).

Methods, each timed from the model and the batch to the eigenvalue (building the gradient
graph included):

- ``ours``: :func:`secondorder.curvature.extreme_eigenpairs` with ``k=1`` and ``--tol``
  (default 1e-3, the library default): Lanczos stopped when the residual bound of the top
  Ritz value is below ``tol * theta``.
- ``pyhessian``: ``pyhessian.hessian(model, criterion, data=(x, y), cuda=False)
  .eigenvalues(top_n=1)`` with its defaults ``maxIter=100, tol=1e-3`` (power iteration
  stopped when two consecutive Rayleigh quotients differ by less than ``tol``, relatively)
  [Yao2020]. Install it with the ``peers`` extra (``pip install -e .[peers]``).

The reference is the same model in float64, ``extreme_eigenpairs(k=1, tol=1e-10)``. Both
methods start from a fresh random vector each round; the rounds alternate the two methods
and the figures are medians over rounds (time ratio per round, relative error, products).

Usage: ``python benchmarks/top_eigenvalue.py [--data-dir DIR] [--rounds 7] [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import platform
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from secondorder.bench.data import images_to_float, load_image_set
from secondorder.bench.models import MLP, count_parameters, seeded
from secondorder.curvature import extreme_eigenpairs, functional_loss

NUM_IMAGES = 1000


def load_batch(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The 1,000-image batch: MNIST test images from ``data_dir``, or synthetic ones."""
    if data_dir is None:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(NUM_IMAGES, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (NUM_IMAGES,), generator=g)
        return x, y, "synthetic 1x28x28 images, uniform pixels, random labels"
    images = load_image_set(data_dir, "mnist")
    x = torch.from_numpy(images_to_float(images.test_images[:NUM_IMAGES]))
    y = torch.from_numpy(images.test_labels[:NUM_IMAGES]).long()
    return x, y, f"MNIST test images 0..{NUM_IMAGES - 1} from {images.folder}"


def ours(model: nn.Module, x, y, tol: float, seed: int) -> tuple[float, int]:
    """Top eigenvalue and number of Hessian-vector products, by Lanczos."""
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    res = extreme_eigenpairs(loss_fn, params, k=1, tol=tol,
                             generator=torch.Generator().manual_seed(seed))
    return float(res.values[0]), res.num_steps


class PyHessianPower:
    """PyHessian's ``eigenvalues(top_n=1)``, counting its Hessian-vector products."""

    def __init__(self) -> None:
        # The optional ``peers`` extra. ``pyhessian.hessian`` is also the name of its class,
        # so the module is fetched by name.
        ph = importlib.import_module("pyhessian.hessian")
        self.module = ph
        self.products = 0
        inner = ph.hessian_vector_product

        def counted(*args, **kwargs):
            self.products += 1
            return inner(*args, **kwargs)

        ph.hessian_vector_product = counted  # the name its power iteration calls

    def __call__(self, model: nn.Module, x, y, seed: int) -> tuple[float, int]:
        torch.manual_seed(seed)  # its start vector comes from the global generator
        self.products = 0
        with warnings.catch_warnings():  # its backward(create_graph=True) warns; we reset .grad
            warnings.filterwarnings("ignore", "Using backward.. with create_graph=True")
            comp = self.module.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
            values, _ = comp.eigenvalues(top_n=1)
        for p in model.parameters():  # it leaves a graph-carrying .grad behind
            p.grad = None
        return float(values[0]), self.products


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder with MNIST (else synthetic)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--tol", type=float, default=1e-3, help="our relative tolerance")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be positive, got {args.rounds}")
    rounds = 2 if args.quick else args.rounds
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        peer = PyHessianPower()
    except ImportError as exc:
        print(f"pyhessian is not installed ({exc}); pip install -e .[peers]", file=sys.stderr)
        return 2

    x, y, what = load_batch(args.data_dir)
    model = seeded(lambda: MLP([784, 300, 10]), 0)
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads")
    print(f"MLP 784-300-10 sigmoid, float32, {count_parameters(model):,} parameters; {what}")

    ref_model = copy.deepcopy(model).double()
    ref = extreme_eigenpairs(*functional_loss(ref_model, nn.CrossEntropyLoss(), x.double(), y),
                             k=1, tol=1e-10, num_steps=100,
                             generator=torch.Generator().manual_seed(123))
    lam = float(ref.values[0])
    print(f"reference (float64, tol 1e-10): {lam:.10g} after {ref.num_steps} products, "
          f"residual bound {float(ref.residuals[0]):.1e}")

    ours(model, x, y, args.tol, seed=999)  # warm-up, both
    peer(model, x, y, seed=999)
    rows = {"ours": [], "pyhessian": []}
    for r in range(rounds):
        for name in (("ours", "pyhessian") if r % 2 == 0 else ("pyhessian", "ours")):
            t0 = time.perf_counter()
            value, products = (ours(model, x, y, args.tol, seed=r) if name == "ours"
                               else peer(model, x, y, seed=r))
            rows[name].append((time.perf_counter() - t0, abs(value - lam) / abs(lam), products))

    ratios = [o[0] / p[0] for o, p in zip(rows["ours"], rows["pyhessian"], strict=True)]
    print(f"\n{rounds} rounds, medians (ours: tol={args.tol:g}; pyhessian: tol=1e-3, "
          "maxIter=100)")
    print(f"{'method':<11} {'time s':>8} {'rel. error':>11} {'max rel. err':>13} {'HVPs':>5}")
    for name, data in rows.items():
        t, e, n = (statistics.median(c) for c in zip(*data, strict=True))
        print(f"{name:<11} {t:8.3f} {e:11.2e} {max(d[1] for d in data):13.2e} {n:5.0f}")
    print(f"time ours / pyhessian: median {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{q:.2f}' for q in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
