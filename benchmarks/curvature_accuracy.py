"""Accuracy of each Hessian-vector-product backend by precision, against float64.

For each model and each way of computing (the model's dtype, or a float32 product for a
bfloat16 model via ``functional_loss(..., dtype=torch.float32)``, or ``torch.autocast``),
every backend of :func:`secondorder.curvature.hvp` takes the product with one random
direction; the figure is ``||Hv - Hv_ref|| / ||Hv_ref||`` with ``Hv_ref`` the float64
double-backward product at the *same* weights (the low-precision weights cast exactly to
float64), so only the arithmetic differs. The gradient's own error in that precision is
shown for scale: a product cannot be trusted below it.

Models (seeded, CPU): ``mlp`` (MLP 64-128-10, tanh), ``bn-cnn`` (two 3x3 convolutions with
batch norm in train mode, a residual connection, average pooling, linear; 16x16 inputs).

Usage: ``python benchmarks/curvature_accuracy.py [--quick] [--batch 64]``; prints a
Markdown table (docs/curvature_accuracy.md holds one).
"""

from __future__ import annotations

import argparse
import copy
import platform

import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature import functional_loss, gradient, hvp

BACKENDS = ("autograd", "forward", "complex-step", "finite-difference")


class ResidualBNNet(nn.Module):
    """conv-BN-ReLU, then a residual conv-BN block, pooling and a linear head."""

    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels))
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        z = self.stem(x)
        z = torch.relu(z + self.block(z))
        return self.head(nn.functional.adaptive_avg_pool2d(z, 1).flatten(1))


def problems(batch: int):
    """``(name, model in float32, inputs, targets)``."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
    x, y = torch.randn(batch, 64, generator=g), torch.randint(0, 10, (batch,), generator=g)
    yield "mlp", mlp, x, y
    torch.manual_seed(1)
    yield ("bn-cnn (train mode)", ResidualBNNet().train(),
           torch.randn(batch, 3, 16, 16, generator=g), torch.randint(0, 10, (batch,), generator=g))


def rel(a, b) -> float:
    return float(tl.norm(tl.sub(tuple(t.double() for t in a), b)) / tl.norm(b))


def settings(model, x):
    """``(label, model, inputs, functional_loss dtype, autocast dtype)``."""
    yield "float64", copy.deepcopy(model).double(), x.double(), None, None
    yield "float32", model, x, None, None
    yield "float32 under autocast(bf16)", model, x, None, torch.bfloat16
    bf = copy.deepcopy(model).to(torch.bfloat16)
    yield "bfloat16", bf, x.bfloat16(), None, None
    yield "bfloat16, dtype=float32", bf, x.bfloat16(), torch.float32, None


def measure(model, x, y, dtype, autocast, v64):
    """Relative errors of the gradient and of each backend's product."""
    ref_model = copy.deepcopy(model).double()
    ref_fn, ref_params = functional_loss(ref_model, nn.CrossEntropyLoss(), x.double(), y)
    ref = hvp(ref_fn, ref_params, v64)
    _, ref_grad = gradient(ref_fn, ref_params)
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y, dtype=dtype)
    v = tuple(t.to(params[0].dtype) for t in v64)
    ctx = (torch.autocast("cpu", dtype=autocast) if autocast is not None
           else torch.autocast("cpu", enabled=False))
    out = {}
    with ctx:
        out["gradient"] = f"{rel(gradient(loss_fn, params)[1], ref_grad):.1e}"
        for backend in BACKENDS:
            try:
                out[backend] = f"{rel(hvp(loss_fn, params, v, backend=backend), ref):.1e}"
            except (RuntimeError, ValueError, TypeError) as exc:
                reason = str(exc).split(";")[0].split(". ")[0].split(" Cause")[0]
                out[backend] = f"fails: {reason[:80]}".replace("|", "/")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="batch 16")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be positive, got {args.batch}")
    batch = 16 if args.quick else args.batch
    print(f"torch {torch.__version__}, {platform.machine()}, batch {batch}\n")
    print("| model | precision | gradient | " + " | ".join(BACKENDS) + " |")
    print("|---|---|---|" + "---|" * len(BACKENDS))
    for name, model, x, y in problems(batch):
        for label, m, xs, dtype, autocast in settings(model, x):
            weights64 = functional_loss(copy.deepcopy(m).double(), nn.CrossEntropyLoss(),
                                        xs.double(), y)[1]
            g = torch.Generator().manual_seed(1)
            v64 = tuple(torch.randn(p.shape, generator=g, dtype=torch.float64) for p in weights64)
            res = measure(m, xs, y, dtype, autocast, v64)
            cells = [res["gradient"]] + [res[b] for b in BACKENDS]
            print(f"| {name} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
