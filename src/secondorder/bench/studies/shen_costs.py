"""[Shen]'s measurements that are not training runs: CG energy (Fig. 2) and derivative cost.

- :func:`cg_energy`: CG on ``H_B dw = -g`` ([Shen] Alg. 1 lines 10-28 without early
  termination: ``g`` the full-training-set gradient, ``H_B`` a mini-batch Hessian by
  complex-step products, eq. 10), recording per iteration the quadratic energy
  ``E_Q = g^T dw + dw^T H_B dw / 2`` (eq. 12), the residual ``||r|| / ||g||`` and the
  curvature ``kappa = p^T H_B p`` (where Alg. 1 would stop). [Shen] Fig. 2: ``E_Q``
  decreases monotonically while the residual does not, so the residual misleads as a
  progress measure.
- :func:`derivative_costs`: seconds of a gradient, an autograd Hessian-vector product
  (double backward) and a complex-step one (eq. 10) on VGG-shaped networks at one thread,
  as ratios to the gradient ([Shen] Sec. 5: complex step 58.1 s vs PyTorch autograd 73.4 s
  for one ``H p`` on VGG-19, single-thread CPU).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from secondorder import tensorlist as tl
from secondorder.bench import models as zoo
from secondorder.curvature import functional_loss
from secondorder.curvature.hvp import gradient, hvp

__all__ = ["CGTrace", "VGG19_CONFIG", "cg_energy", "derivative_costs", "vgg"]

#: VGG-19 (config E) for 32 x 32 inputs.
VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
    512, 512, 512, 512, "M")


@dataclass
class CGTrace:
    """Per-iteration values of :func:`cg_energy` (index 0: the start ``dw = 0``)."""

    energy: list[float]
    residual: list[float]
    curvature: list[float]

    @property
    def first_negative(self) -> int | None:
        """The first iteration whose curvature is negative (Alg. 1 stops there), if any."""
        return next((i for i, k in enumerate(self.curvature) if k < 0), None)


def cg_energy(problem, *, seed: int = 0, batch: int = 128, iterations: int = 30,
              backend: str = "complex-step") -> CGTrace:
    """CG on ``H_B dw = -g`` at the model's initialization (module docstring).

    Computed in float64 so that the trace shows the method, not float32 rounding.
    """
    model = problem.make_model(seed).double()
    train = problem.train
    xs, ys = train.inputs.double(), train.targets
    if ys.is_floating_point():
        ys = ys.double()

    def mean_loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return problem.loss(outputs, targets).mean()

    full_fn, params = functional_loss(model, mean_loss, xs, ys)
    _, g = gradient(full_fn, params)
    batch_fn, _ = functional_loss(model, mean_loss, xs[:batch], ys[:batch])
    x = tl.zeros_like(g)
    r = tl.neg(g)
    p = r
    rr = tl.dot(r, r)
    g_norm = float(tl.norm(g))
    trace = CGTrace([0.0], [1.0], [])
    for _ in range(iterations):
        hp = hvp(batch_fn, params, p, backend)
        kappa = tl.dot(p, hp)
        trace.curvature.append(float(kappa))
        alpha = rr / kappa
        x = tl.add(x, p, alpha)
        r = tl.sub(r, tl.scale(hp, alpha))
        rr_new = tl.dot(r, r)
        p = tl.add(r, p, rr_new / rr)
        rr = rr_new
        # E_Q = g.x + x.Hx/2 with Hx = -(r + g)
        trace.energy.append(float(tl.dot(g, x) - 0.5 * tl.dot(x, tl.add(r, g))))
        trace.residual.append(float(rr) ** 0.5 / g_norm)
    return trace


def vgg(config: tuple[int | str, ...], width_divisor: int = 1, num_classes: int = 10
        ) -> nn.Module:
    """A VGG of ``config`` for 3 x 32 x 32 inputs, batch norm and ReLU, classifier 512-512-10,
    every width divided by ``width_divisor``."""
    layers: list[nn.Module] = []
    channels = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        width = max(int(item) // width_divisor, 1)
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    fc = max(512 // width_divisor, 1)
    layers += [nn.Flatten(), nn.Linear(channels, fc), nn.ReLU(), nn.Linear(fc, fc), nn.ReLU(),
               nn.Linear(fc, num_classes)]
    return nn.Sequential(*layers)


def _median_seconds(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _time_products(model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator,
                   rounds: int) -> dict[str, float]:
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    v = tuple(torch.randn(p.shape, generator=gen) for p in params)
    row = {
        "gradient": _median_seconds(lambda: gradient(loss_fn, params), rounds),
        "autograd_hvp": _median_seconds(lambda: hvp(loss_fn, params, v, "autograd"), rounds),
        "complex_step_hvp": _median_seconds(
            lambda: hvp(loss_fn, params, v, "complex-step"), rounds),
    }
    row["autograd_ratio"] = row["autograd_hvp"] / row["gradient"]
    row["complex_step_ratio"] = row["complex_step_hvp"] / row["gradient"]
    row["complex_over_autograd"] = row["complex_step_hvp"] / row["autograd_hvp"]
    row["parameters"] = float(sum(p.numel() for p in params))
    return row


def derivative_costs(*, width_divisor: int = 1, batch: int = 8, rounds: int = 3,
                     threads: int = 1, seed: int = 0) -> dict[str, dict[str, float]]:
    """Seconds of a gradient and of autograd / complex-step ``H p`` on VGG-11 and VGG-19.

    Returns:
        ``{"VGG-11": {"gradient": s, "autograd_hvp": s, "complex_step_hvp": s,
        "autograd_ratio": ..., "complex_step_ratio": ..., "complex_over_autograd": ...},
        "VGG-19": ...}`` (medians over ``rounds`` after a warm-up; ratios to the gradient).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        for name, config in (("VGG-11", zoo.VGG11_CONFIG), ("VGG-19", VGG19_CONFIG)):
            model = zoo.seeded(lambda config=config: vgg(config, width_divisor), seed)
            row = _time_products(model, x, y, gen, rounds)
            out[name] = row
        return out
    finally:
        torch.set_num_threads(previous)
