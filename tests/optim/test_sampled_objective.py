"""SampledObjective ([Veitch] eq. 28): fixed vs reshuffled batches, with L-BFGS."""

from __future__ import annotations

import pytest
import torch
from problems import digits_data

from secondorder.optim import LBFGS, SampledObjective


def _setup(mode, seed=0, **kw):
    X, y = digits_data(torch.float64)
    X, y = X[:300], y[:300]
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 10).double()
    ce = torch.nn.CrossEntropyLoss(reduction="none")
    obj = SampledObjective(model, ce, (X, y), batch_size=50, mode=mode,
                           generator=torch.Generator().manual_seed(seed), **kw)
    return X, y, model, ce, obj


def test_eq28_is_the_mean_of_batch_means():
    X, y, model, ce, obj = _setup("fixed", num_batches=4)
    expected = torch.stack([ce(model(X[b]), y[b]).mean() for b in obj.batches]).mean()
    assert torch.allclose(obj(), expected, atol=1e-14)
    assert obj.num_samples == 200
    assert all(len(set(b.tolist())) == 50 for b in obj.batches)  # without replacement


def test_default_fixed_batches_cover_the_data_once_and_stay_fixed():
    X, y, model, ce, obj = _setup("fixed")
    assert len(obj.batches) == 6
    assert sorted(torch.cat(obj.batches).tolist()) == list(range(300))
    v1, v2 = obj(), obj()
    assert torch.equal(v1, v2)  # deterministic: full-batch loss on 300 samples
    assert torch.allclose(v1, ce(model(X), y).mean())


def test_reshuffled_batches_change_per_iteration_not_per_call():
    X, y, model, ce, obj = _setup("reshuffled", num_batches=2)
    obj.next_iteration()
    first = torch.cat(obj.batches).clone()
    v1, v2 = obj(), obj()
    assert torch.equal(v1, v2)  # same iteration: same batches, same value
    assert torch.equal(first, torch.cat(obj.batches))
    obj.next_iteration()
    assert not torch.equal(first, torch.cat(obj.batches))
    assert float(obj().detach()) != float(v1.detach())


def test_line_search_trials_of_one_step_see_one_objective():
    # [Veitch] sec. 4.1 redraws the batches per iteration: every closure call of one L-BFGS
    # step (its strong-Wolfe trials included) must evaluate the same eq. 28 objective.
    X, y, model, ce, obj = _setup("reshuffled", num_batches=2)
    opt = LBFGS(model.parameters(), line_search="strong_wolfe")
    seen: list[list[tuple[int, ...]]] = []

    def spy():
        seen[-1].append(tuple(torch.cat(obj.batches).tolist()))
        return obj()

    for _ in range(4):
        seen.append([])
        obj.next_iteration()
        opt.step(spy)
    assert any(len(calls) > 1 for calls in seen)  # the line search made trial calls
    assert all(len(set(calls)) == 1 for calls in seen)  # one draw per iteration
    assert len({calls[0] for calls in seen}) == 4  # and a new draw at each iteration


def test_per_sample_output():
    X, y, model, ce, obj = _setup("fixed", num_batches=2, per_sample=True)
    out = obj()
    assert out.shape == (100,)


def test_fixed_batches_let_lbfgs_converge_reshuffled_do_not():
    # [Veitch] sec. 4.1: with fixed batches L-BFGS minimizes eq. 28; reshuffling breaks it.
    finals = {}
    for mode in ("fixed", "reshuffled"):
        X, y, model, ce, obj = _setup(mode, num_batches=2)
        opt = LBFGS(model.parameters(), full_batch=(mode == "fixed"))
        for _ in range(60):
            obj.step(opt)
        fixed_obj = SampledObjective(model, ce, (X, y), batch_size=50, num_batches=2,
                                     generator=torch.Generator().manual_seed(0))
        g = torch.autograd.grad(fixed_obj(), list(model.parameters()))
        finals[mode] = float(torch.cat([t.reshape(-1) for t in g]).norm())
    assert finals["fixed"] < 1e-3
    assert finals["reshuffled"] > 10 * finals["fixed"]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(batch_size=0), "Invalid batch_size: 0"),
        (dict(batch_size=10, num_batches=0), "Invalid num_batches: 0"),
        (dict(batch_size=10, mode="random"), "Invalid mode: 'random'"),
    ],
)
def test_bad_arguments(kw, match):
    X, y = torch.zeros(20, 3), torch.zeros(20)
    with pytest.raises(ValueError, match=match):
        SampledObjective(torch.nn.Linear(3, 1), torch.nn.MSELoss(), (X, y), **kw)


def test_mismatched_data():
    with pytest.raises(ValueError, match="20 inputs but 19 targets"):
        SampledObjective(torch.nn.Linear(3, 1), torch.nn.MSELoss(),
                         (torch.zeros(20, 3), torch.zeros(19)), batch_size=5)
