"""Time per step of the secondorder optimizers, as ratios to an SGD step in the same run.

Models (float32, CPU, synthetic data, batch 128): LeNet-5 on 1x28x28 inputs ([Shen]'s
sigmoid LeNet) and an MLP 784-300-10 ([Veitch]). Each method's step is timed on the same
batch, interleaved round by round with the baseline so that drift of the machine hits all
methods alike; the figure is the median over rounds.

- baseline: ``torch.optim.SGD`` (``zero_grad``, forward, ``backward``, ``step``);
- ``torch_optimizer.Adahessian`` (the reference implementation, only if installed: it is
  not a dependency of secondorder; ``pip install --no-deps torch-optimizer pytorch-ranger``);
- the floor of an AdaHessian step: forward, backward with ``create_graph`` and one double
  backward, written by hand (no random draws, no update);
- every secondorder optimizer in :data:`METHODS` that exists in :mod:`secondorder.optim`
  when the script runs (missing ones are skipped with a message).

Goals checked at the end: AdaHessian <= 2.5x an SGD step and <= 1.0x the reference
``torch_optimizer.Adahessian`` step.

Usage: ``python benchmarks/curvature_methods.py [--rounds 20] [--threads N]``.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import secondorder.optim as so
from secondorder.bench.models import MLP, LeNet5

# name -> constructor kwargs; a step is ``opt.step(closure)`` unless noted in STEP_KWARGS.
METHODS: dict[str, dict] = {
    "AdaHessian": dict(lr=0.15),
    "AdaHessian(update_each=2)": dict(lr=0.15, update_each=2),
    "NewtonKrylov": dict(taylor_ratio=0.05, backend="autograd"),
    "NewtonKrylov(complex-step)": dict(taylor_ratio=0.05, backend="complex-step"),
    "LSCG": dict(),
    "LevenbergMarquardt": dict(),
}


def lenet5() -> nn.Module:
    """LeNet-5 with sigmoid units, as in [Shen] (the benchmark suite's model)."""
    return LeNet5("sigmoid")


def mlp() -> nn.Module:
    """[Veitch]'s network 784-300-10 with sigmoid hidden units."""
    return MLP([784, 300, 10], "sigmoid")


def _class_for(label: str):
    name = label.split("(")[0]
    return getattr(so, name, None)


def make_steppers(factory: Callable[[], nn.Module], x, y) -> dict[str, Callable[[], None]]:
    """One ``step()`` callable per method, each on its own copy of the model."""
    crit = nn.CrossEntropyLoss()
    steppers: dict[str, Callable[[], None]] = {}

    torch.manual_seed(0)
    m_sgd = factory()
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=1e-3)

    def sgd_step():
        sgd.zero_grad()
        crit(m_sgd(x), y).backward()
        sgd.step()

    steppers["SGD"] = sgd_step

    torch.manual_seed(0)
    m_floor = factory()
    ps_floor = list(m_floor.parameters())
    z_floor = [torch.randint(0, 2, p.shape, dtype=p.dtype).mul_(2).sub_(1) for p in ps_floor]

    def floor_step():
        # The arithmetic any AdaHessian step needs: forward, backward with create_graph and
        # one double backward (a fixed probe, no random draws, no update).
        g = torch.autograd.grad(crit(m_floor(x), y), ps_floor, create_graph=True)
        torch.autograd.grad(g, ps_floor, z_floor)

    steppers["floor: grad(create_graph) + 1 HVP"] = floor_step

    try:
        torch_optimizer = importlib.import_module("torch_optimizer")
    except ImportError:
        print("torch_optimizer not installed: skipping the reference Adahessian")
    else:
        torch.manual_seed(0)
        m_ref = factory()
        ref = torch_optimizer.Adahessian(m_ref.parameters(), lr=0.15, hessian_power=1.0)

        def ref_step():
            ref.zero_grad(set_to_none=True)
            crit(m_ref(x), y).backward(create_graph=True)
            ref.step()
            # break the parameter <-> .grad reference cycle that backward(create_graph=True)
            # leaves (torch warns about it); otherwise the reference leaks graphs
            ref.zero_grad(set_to_none=True)

        steppers["torch_optimizer.Adahessian"] = ref_step

    for label, kwargs in METHODS.items():
        cls = _class_for(label)
        if cls is None:
            print(f"secondorder.optim has no {label.split('(')[0]}: skipped")
            continue
        torch.manual_seed(0)
        model = factory()
        try:
            opt = cls(model.parameters(), **kwargs)
        except (TypeError, ValueError) as e:
            print(f"{label}: cannot construct ({e}); skipped")
            continue

        if "complex-step" in label:
            from secondorder.curvature import functional_loss

            loss_fn, params = functional_loss(model, crit, x, y)

            def closure(ps=None, loss_fn=loss_fn, params=params):
                return loss_fn(params if ps is None else ps)
        else:

            def closure(model=model):
                return crit(model(x), y)

        def step(opt=opt, closure=closure):
            opt.step(closure)

        try:
            step()
        except NotImplementedError as e:
            print(f"{label}: {e}; skipped")
            continue
        steppers[label] = step
    return steppers


def bench(name: str, factory, batch: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    steppers = make_steppers(factory, x, y)
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for fn in steppers.values():  # warm-up
        fn()
        fn()
    for _ in range(rounds):
        for k, fn in steppers.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["SGD"]
    ref = med.get("torch_optimizer.Adahessian")
    print(f"\n### {name}, batch {batch}: median of {rounds} rounds")
    print("| method | ms / step | x SGD step | x torch_optimizer.Adahessian |")
    print("|---|---:|---:|---:|")
    for k, t in med.items():
        r = f"{t / ref:.2f}" if ref else "n/a"
        print(f"| {k} | {1e3 * t:.2f} | {t / base:.2f} | {r} |")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    verdicts = []
    for name, factory in [("LeNet-5", lenet5), ("MLP 784-300-10", mlp)]:
        med = bench(name, factory, 128, args.rounds)
        if "AdaHessian" in med:
            r_sgd = med["AdaHessian"] / med["SGD"]
            verdicts.append(f"{name}: AdaHessian {r_sgd:.2f}x SGD (goal <= 2.5): "
                            f"{'met' if r_sgd <= 2.5 else 'NOT met'}")
            if "torch_optimizer.Adahessian" in med:
                r_ref = med["AdaHessian"] / med["torch_optimizer.Adahessian"]
                verdicts.append(f"{name}: AdaHessian {r_ref:.2f}x torch_optimizer.Adahessian "
                                f"(goal <= 1.0): {'met' if r_ref <= 1.0 else 'NOT met'}")
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
