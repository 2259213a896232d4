"""Data-parallel optimizers (secondorder.optim.distributed) on gloo, spawned here.

Oracle: one process on the concatenated batch. W processes on shards must reproduce its
iterates to 1e-10 in float64, for every optimizer; a failing rank must make every rank
raise, none stepping alone and none hanging.
"""

from __future__ import annotations

import datetime
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import _distributed_cases as cases  # noqa: E402

from secondorder.curvature.ggn import GGNOperator  # noqa: E402
from secondorder.optim import NewtonCG  # noqa: E402
from secondorder.optim.distributed import (  # noqa: E402
    communication_stats,
    process_group_of,
    set_process_group,
)

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")

NAMES = list(cases.CASES)
UNEQUAL = ["NewtonCG", "LBFGS", "HessianFree"]


def spawn(fn, world: int, path, *args, timeout: float = 120.0) -> list:
    ctx = mp.start_processes(fn, args=(world, str(path), *args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    while not ctx.join(timeout=1.0):
        if datetime.datetime.now() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} with {world} processes hung for {timeout} s")
    return [torch.load(os.path.join(path, f"rank{r}.pt")) for r in range(world)]


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    x, y = cases.batch()
    return {name: cases.trajectory(name, x, y) for name in NAMES}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    ranks = spawn(cases.run_case, 2, tmp_path_factory.mktemp("two"), NAMES, UNEQUAL, NAMES)
    assert all("worker" not in r for r in ranks), [r.get("worker") for r in ranks]
    return ranks


def check_iterates(ranks: list[dict], reference: dict, key: str, names: list[str]) -> None:
    x0 = torch.cat([p.detach().reshape(-1) for p in cases.model().parameters()])
    for name in names:
        ref = reference[name]
        moved = (ref - x0).norm(dim=1)
        assert torch.isfinite(ref).all() and bool((moved[1:] > 0.1).all()), (name, moved)
        for r, got in enumerate(ranks):
            err = (got[key][name] - ref).abs().max().item()
            assert err < 1e-10, f"{name}, rank {r} of {len(ranks)}: max |x - x_ref| = {err:.2e}"
            assert torch.equal(got[key][name], ranks[0][key][name]), f"{name}: ranks differ"


def test_two_shards_reproduce_the_full_batch_iterates(two_ranks, reference):
    check_iterates(two_ranks, reference, "iterates", NAMES)


def test_four_shards_reproduce_the_full_batch_iterates(tmp_path, reference):
    ranks = spawn(cases.run_case, 4, tmp_path, NAMES, [], [])
    assert all("worker" not in r for r in ranks), [r.get("worker") for r in ranks]
    check_iterates(ranks, reference, "iterates", NAMES)


def test_unequal_shards_are_weighted_by_their_sample_counts(two_ranks, reference):
    # 16 + 8 samples: an unweighted mean of the two shard means is a different loss
    check_iterates(two_ranks, reference, "unequal", UNEQUAL)


def test_nan_at_a_line_search_trial_on_one_shard_backtracks_like_one_process(two_ranks):
    x, y = cases.batch()
    trips: list[float] = []
    ref = cases.trajectory("LBFGS", x, y, fragile=torch.arange(cases.N) >= cases.N // 2,
                           trips=trips)
    assert trips, "the fragile samples never gave NaN: the test would prove nothing"
    assert torch.isfinite(ref).all()
    for got in two_ranks:
        assert (got["nan_trial"] - ref).abs().max().item() < 1e-10


def test_torch_optim_closures_are_averaged_and_leave_the_averaged_grad(two_ranks):
    # BackwardWatch path: the gradient comes from .grad, which backward() filled per shard
    x, y = cases.batch()
    ref, ref_grad = cases.torch_optim_closure_trajectory(x, y)
    shard_grad = cases.torch_optim_closure_trajectory(x[: cases.N // 2], y[: cases.N // 2])[1]
    assert (shard_grad - ref_grad).abs().max() > 1e-3  # a local .grad would be caught
    for got in two_ranks:
        iterates, grad = got["torch_optim_closure"]
        assert (iterates - ref).abs().max().item() < 1e-10
        assert (grad - ref_grad).abs().max().item() < 1e-10


def one_process_nan_outcome(name: str) -> str:
    """What one process reports for a batch whose second half (rank 1's shard) is NaN."""
    x, y = cases.batch()
    net = cases.model()
    before = [p.detach().clone() for p in net.parameters()]
    opt = cases.CASES[name](net.parameters())
    crit = nn.CrossEntropyLoss(reduction="none")
    poisoned = torch.arange(cases.N) >= cases.N // 2

    def closure():
        out = crit(net(x), y)
        return torch.where(poisoned, out * float("nan"), out)

    kwargs = {}
    if name == "HessianFree":
        kwargs["ggn_closure"] = lambda: GGNOperator.from_model(net, nn.CrossEntropyLoss(), x, y)
    try:
        opt.step(closure, **kwargs)
        outcome = "stepped"
    except Exception as exc:  # compared with the ranks' outcomes
        outcome = f"{type(exc).__name__}: {exc}"
    moved = any(not torch.equal(a, p.detach())
                for a, p in zip(before, net.parameters(), strict=True))
    return f"{outcome} | moved={moved}"


def test_a_failing_rank_makes_every_rank_raise(two_ranks):
    seen0, seen1 = two_ranks[0]["failures"], two_ranks[1]["failures"]
    for name in NAMES:
        raised0, raised1 = seen0[f"{name}/raise"], seen1[f"{name}/raise"]
        assert raised1.startswith("KeyError: 'shard 1 is corrupt'"), raised1
        assert raised0.startswith("RankFailedError: rank(s) [1] of 2 raised"), raised0
        assert raised0.endswith("moved=False") and raised1.endswith("moved=False")
        # NaN on shard 1 only, at the start of the step
        nan0, nan1 = seen0[f"{name}/nan"], seen1[f"{name}/nan"]
        assert nan0 == nan1, (name, nan0, nan1)
        # the averaged start point is NaN on every rank: each rank ends the step exactly as
        # one process whose batch has NaN losses on shard 1's half
        assert nan0 == one_process_nan_outcome(name), (name, nan0)
        assert nan0.startswith("NonFiniteLossError") and nan0.endswith("moved=False"), nan0


def test_a_stalled_rank_makes_the_others_raise_within_the_timeout(two_ranks):
    outcome, seconds = two_ranks[0]["stalled"].split(" after ")
    assert outcome == "RankFailedError", outcome
    assert float(seconds.split()[0]) < 3.0 + 5.0, seconds  # timeout 3 s, no hang


def test_one_process_does_not_communicate():
    net = nn.Linear(3, 1).double()
    opt = NewtonCG(net.parameters())
    assert process_group_of(opt) is None
    stats = communication_stats()
    stats.reset()
    x = torch.randn(8, 3, dtype=torch.float64)
    opt.step(lambda: (net(x) ** 2).mean())
    assert stats.all_reduces == 0 and stats.bytes == 0
    assert process_group_of(set_process_group(opt, None)) is None


def test_ddp_model_is_refused_with_the_supported_pattern(tmp_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rv", rank=0, world_size=1)
    try:
        net = nn.Linear(3, 1).double()
        ddp = nn.parallel.DistributedDataParallel(net)
        opt = NewtonCG(net.parameters())
        assert process_group_of(opt) is None  # one rank: local unless set explicitly
        set_process_group(opt, dist.group.WORLD)
        x = torch.randn(8, 3, dtype=torch.float64)
        before = net.weight.detach().clone()
        with pytest.raises(ValueError, match="DistributedDataParallel.*plain module on every rank"):
            opt.step(lambda: (ddp(x) ** 2).mean())
        assert torch.equal(net.weight, before)
        opt.step(lambda: (net(x) ** 2).mean())  # the supported pattern
        assert not torch.equal(net.weight, before)
        # sub-sampled Hessians are drawn outside the averaged evaluation: refused up front
        sub = set_process_group(NewtonCG(net.parameters(), hessian_fraction=0.5),
                                dist.group.WORLD)
        before = net.weight.detach().clone()
        with pytest.raises(ValueError, match="hessian_fraction.*hessian_closure"):
            sub.step(lambda: ((net(x) ** 2).reshape(-1)))
        assert torch.equal(net.weight, before)
    finally:
        dist.destroy_process_group()
