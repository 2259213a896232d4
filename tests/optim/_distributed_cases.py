"""Problems and per-rank workers for test_distributed.py (imported by spawned processes).

Every case builds the same float64 MLP, gives rank ``r`` of ``W`` its shard of one batch
(``SHARDS`` sets the split) and records the parameters after each of ``STEPS`` steps.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback

import torch
import torch.distributed as dist
from torch import nn

from secondorder.curvature.ggn import GGNOperator
from secondorder.optim import (
    LBFGS,
    AdaHessian,
    AdaptiveCubic,
    HessianFree,
    NewtonCG,
    NewtonKrylov,
    NonlinearCG,
    TrustRegion,
)
from secondorder.optim.distributed import broadcast_random_state, set_process_group

N, D_IN, HIDDEN, CLASSES, STEPS = 24, 5, 6, 3, 3
TIMEOUT = datetime.timedelta(seconds=20)
FRAGILE_RADIUS = 1.0  # LBFGS's second step goes ~1.7 from the start

CASES = {
    "LBFGS": lambda ps: LBFGS(ps, history_size=5),
    "NonlinearCG": lambda ps: NonlinearCG(ps),
    "NewtonCG": lambda ps: NewtonCG(ps),
    "TrustRegion": lambda ps: TrustRegion(ps),
    "AdaptiveCubic": lambda ps: AdaptiveCubic(ps, norm="spherical"),
    "HessianFree": lambda ps: HessianFree(ps, fisher_probes=0, max_cg_iter=20),
    "NewtonKrylov": lambda ps: NewtonKrylov(ps, backend="autograd"),
    "AdaHessian": lambda ps: AdaHessian(ps, lr=0.1),
}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    return x, y


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES)).double()


def shard_bounds(rank: int, world: int, sizes: list[int] | None = None) -> tuple[int, int]:
    sizes = sizes or [N // world] * world
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def trajectory(name: str, x: torch.Tensor, y: torch.Tensor, steps: int = STEPS,
               fragile: torch.Tensor | None = None, trips: list | None = None) -> torch.Tensor:
    """Parameters (flat) after each step of optimizer ``name`` on the batch ``(x, y)``.

    ``fragile`` (bool per sample): those samples' losses are NaN once the parameters are
    farther than ``FRAGILE_RADIUS`` from the start (a line-search trial that goes too far);
    each such evaluation appends to ``trips``.
    """
    net = model()
    x0 = [p.detach().clone() for p in net.parameters()]
    opt = CASES[name](net.parameters())
    per_sample = nn.CrossEntropyLoss(reduction="none")

    def closure():
        out = per_sample(net(x), y)
        if fragile is not None:
            with torch.no_grad():
                far = sum(((p - q) ** 2).sum()
                          for p, q in zip(net.parameters(), x0, strict=True)) ** 0.5
            if bool(far > FRAGILE_RADIUS) and bool(fragile.any()):
                out = torch.where(fragile, torch.full_like(out, float("nan")), out)
                if trips is not None:
                    trips.append(float(far))
        return out

    kwargs = {}
    if name == "HessianFree":
        kwargs["ggn_closure"] = lambda: GGNOperator.from_model(net, nn.CrossEntropyLoss(), x, y)
    if name == "AdaHessian":  # probes from the global RNG, made identical on every rank
        if dist.is_initialized():
            torch.manual_seed(100 + dist.get_rank())  # deliberately different ...
            broadcast_random_state()  # ... then rank 0's state everywhere
        else:
            torch.manual_seed(100)
    out = []
    for _ in range(steps):
        opt.step(closure, **kwargs)
        out.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    return torch.stack(out)


def torch_optim_closure_trajectory(x: torch.Tensor, y: torch.Tensor,
                                   steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """LBFGS with a torch.optim-style closure (``zero_grad(); backward()``): the parameters
    after each step, and the flat ``.grad`` the last closure call left."""
    net = model()
    opt = LBFGS(net.parameters(), history_size=5)
    per_sample = nn.CrossEntropyLoss(reduction="none")

    def closure():
        opt.zero_grad()
        loss = per_sample(net(x), y)
        loss.mean().backward()
        return loss.detach()  # per-sample: the shards are weighted by their sizes

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    return torch.stack(out), grad


def _init(rank: int, world: int, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank,
                            world_size=world, timeout=TIMEOUT)


def run_case(rank: int, world: int, path: str, names: list[str], unequal: list[str],
             failing: list[str]) -> None:
    """One process group, three checks; saves a dict to ``path/rank{rank}.pt``.

    - ``"iterates"``: each optimizer of ``names`` on equal shards;
    - ``"unequal"``: each of ``unequal`` on shards of 2/3 and 1/3 of the batch (2 ranks);
    - ``"failures"``: each of ``failing`` with rank 1's shard NaN, then its closure raising.
    """
    _init(rank, world, path)
    out: dict[str, dict] = {}
    try:
        x, y = batch()
        lo, hi = shard_bounds(rank, world)
        out["iterates"] = {name: trajectory(name, x[lo:hi], y[lo:hi]) for name in names}
        fragile = torch.arange(N)[lo:hi] >= N // 2  # the last rank's shard (2 ranks)
        out["nan_trial"] = trajectory("LBFGS", x[lo:hi], y[lo:hi], fragile=fragile)
        out["torch_optim_closure"] = torch_optim_closure_trajectory(x[lo:hi], y[lo:hi])
        if unequal:
            lo, hi = shard_bounds(rank, world, [2 * N // 3, N // 3])
            out["unequal"] = {name: trajectory(name, x[lo:hi], y[lo:hi]) for name in unequal}
        out["failures"] = failures(rank, world, failing)
        if failing:
            out["stalled"] = stalled_peer(rank, world)
    except Exception:
        out["worker"] = traceback.format_exc()
    finally:
        torch.save(out, os.path.join(path, f"rank{rank}.pt"))
        dist.destroy_process_group()


def failures(rank: int, world: int, names: list[str]) -> dict[str, str]:
    """Rank 1 poisons its shard (NaN) or raises in its closure; what each rank saw."""
    seen: dict[str, str] = {}
    x, y = batch()
    lo, hi = shard_bounds(rank, world)
    xs, ys = x[lo:hi], y[lo:hi]
    for name in names:
        for fault in ("nan", "raise"):
            net = model()
            before = [p.detach().clone() for p in net.parameters()]
            opt = CASES[name](net.parameters())
            crit = nn.CrossEntropyLoss(reduction="none")

            def closure(fault=fault, net=net, crit=crit):
                out = crit(net(xs), ys)
                if rank == 1 and fault == "nan":
                    out = out * float("nan")
                if rank == 1 and fault == "raise":
                    raise KeyError("shard 1 is corrupt")
                return out

            kwargs = {}
            if name == "HessianFree":
                kwargs["ggn_closure"] = lambda net=net: GGNOperator.from_model(
                    net, nn.CrossEntropyLoss(), xs, ys)
            try:
                opt.step(closure, **kwargs)
                outcome = "stepped"
            except Exception as exc:  # recorded for the test to check
                outcome = f"{type(exc).__name__}: {exc}"
            moved = any(not torch.equal(a, p.detach())
                        for a, p in zip(before, net.parameters(), strict=True))
            seen[f"{name}/{fault}"] = f"{outcome} | moved={moved}"
    return seen


def stalled_peer(rank: int, world: int, timeout: float = 3.0) -> str:
    """Rank 1 never joins the step (stalled or dead): rank 0 must raise within ``timeout``."""
    group = dist.new_group(list(range(world)), timeout=datetime.timedelta(seconds=timeout))
    if rank != 0:
        time.sleep(timeout + 3.0)
        return "idle"
    net = model()
    opt = set_process_group(NewtonCG(net.parameters()), group)
    x, y = batch()
    t0 = time.perf_counter()
    try:
        opt.step(lambda: nn.functional.cross_entropy(net(x), y))
        outcome = "stepped"
    except Exception as exc:  # recorded for the test to check
        outcome = type(exc).__name__
    return f"{outcome} after {time.perf_counter() - t0:.1f} s"
