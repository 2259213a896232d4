"""AdaHessian against the reference update (Yao et al.'s code) written out by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from problems import assert_no_tensor_growth, digits_subset_loss
from torch import nn

from secondorder.errors import NonFiniteLossError
from secondorder.optim import AdaHessian

DT = torch.float64


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
    ).to(DT)  # fmt: skip


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(6, 1, 6, 6, generator=gen, dtype=DT), torch.tensor([0, 1, 2, 0, 1, 2])


def _reference_run(model, x, y, steps, *, lr, betas, eps, wd, k, update_each, seed):
    """Yao et al.'s update (github amirgholami/adahessian), written out per tensor."""
    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    hess = None
    crit = nn.CrossEntropyLoss()
    for t in range(1, steps + 1):
        loss = crit(model(x), y)
        refresh = (t - 1) % update_each == 0
        grads = torch.autograd.grad(loss, params, create_graph=refresh)
        if refresh:
            zs = [torch.randint(0, 2, p.shape, generator=gen) * 2.0 - 1.0 for p in params]
            zs = [z.to(DT) for z in zs]
            hvs = torch.autograd.grad(grads, params, grad_outputs=zs)
            hess = []
            for hv, z in zip(hvs, zs, strict=True):
                if hv.dim() == 4:  # conv kernel: mean of |z * Hz| over the kh x kw block
                    hess.append(torch.abs(hv * z).sum(dim=[2, 3], keepdim=True) / z[0, 0].numel())
                else:
                    hess.append(torch.abs(hv * z))
        with torch.no_grad():
            for i, p in enumerate(params):
                g = grads[i].detach()
                m[i] = betas[0] * m[i] + (1 - betas[0]) * g
                v[i] = betas[1] * v[i] + (1 - betas[1]) * hess[i] * hess[i]
                bc1 = 1 - betas[0] ** t
                bc2 = 1 - betas[1] ** t
                denom = (v[i].sqrt() ** k) / math.sqrt(bc2) ** k + eps
                p.copy_(p - lr * (m[i] / bc1 / denom + wd * p))


@pytest.mark.parametrize(
    "wd, k, update_each",
    [(0.0, 1.0, 1), (0.1, 1.0, 1), (0.0, 0.5, 1), (0.0, 1.0, 2), (0.05, 0.5, 3)],
)
def test_matches_reference_update(wd, k, update_each):
    x, y = _batch()
    ours, ref = _model(), _model()
    kw = dict(lr=0.1, betas=(0.9, 0.99), eps=1e-4)
    opt = AdaHessian(
        ours.parameters(), weight_decay=wd, hessian_power=k, update_each=update_each,
        generator=torch.Generator().manual_seed(7), **kw,
    )  # fmt: skip
    crit = nn.CrossEntropyLoss()
    for _ in range(5):
        opt.step(lambda: crit(ours(x), y))
    _reference_run(ref, x, y, 5, betas=kw["betas"], lr=kw["lr"], eps=kw["eps"], wd=wd, k=k,
                   update_each=update_each, seed=7)  # fmt: skip
    start = _model().parameters()
    moved = max(float((a.detach() - b.detach()).abs().max())
                for a, b in zip(ours.parameters(), start, strict=True))
    assert moved > 1e-3  # the comparison is not vacuous
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_spatial_average_of_conv_kernel_and_blocks():
    # A separable loss has a diagonal Hessian c, so z * (H z) = c exactly for every draw.
    c4 = torch.arange(1.0, 1.0 + 2 * 3 * 3 * 3, dtype=DT).reshape(2, 3, 3, 3)
    c1 = torch.tensor([1.0, 3.0, -2.0, 6.0, 5.0], dtype=DT)
    w4 = nn.Parameter(torch.ones(2, 3, 3, 3, dtype=DT))
    w1 = nn.Parameter(torch.ones(5, dtype=DT))
    opt = AdaHessian([w4, w1], spatial_average_block_size=2)
    opt.step(lambda: 0.5 * (c4 * w4**2).sum() + 0.5 * (c1 * w1**2).sum())
    d4, d1 = opt.state[w4]["hessian_diag"], opt.state[w1]["hessian_diag"]
    expected4 = c4.abs().mean(dim=(2, 3), keepdim=True).expand_as(c4)
    torch.testing.assert_close(d4, expected4, rtol=0, atol=1e-14)
    assert d4[1, 2, 0, 0] == pytest.approx(float(c4[1, 2].mean()))  # one (out, in) filter
    torch.testing.assert_close(d1, torch.tensor([2.0, 2.0, 4.0, 4.0, 5.0], dtype=DT))


def test_update_each_reuses_diagonal_without_create_graph():
    x, y = _batch()
    model = _model()
    opt = AdaHessian(model.parameters(), update_each=3, generator=torch.Generator().manual_seed(0))
    crit = nn.CrossEntropyLoss()
    for _ in range(7):
        opt.step(lambda: crit(model(x), y))
    assert opt.counters.hvps == 3  # steps 1, 4, 7
    assert opt.counters.gradients == 7


def test_state_dict_round_trip_in_lockstep():
    x, y = _batch()
    crit = nn.CrossEntropyLoss()
    a = _model()
    opt_a = AdaHessian(a.parameters(), weight_decay=0.01, update_each=2,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip
    for _ in range(3):
        opt_a.step(lambda: crit(a(x), y))
    b = copy.deepcopy(a)
    opt_b = AdaHessian(b.parameters(), weight_decay=0.01, update_each=2,
                       generator=torch.Generator().manual_seed(999))  # fmt: skip
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for _ in range(4):
        opt_a.step(lambda: crit(a(x), y))
        opt_b.step(lambda: crit(b(x), y))
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)


def test_graphs_freed_no_growth_over_50_steps():
    x, y = _batch()
    model = _model()
    opt = AdaHessian(model.parameters(), generator=torch.Generator().manual_seed(0))
    crit = nn.CrossEntropyLoss()
    assert_no_tensor_growth(lambda: opt.step(lambda: crit(model(x), y)))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_digits_mlp_minibatches(seed):
    def make(ps):
        return AdaHessian(ps, lr=0.3, generator=torch.Generator().manual_seed(seed))

    final = digits_subset_loss(make, seed, epochs=4)
    assert final < 0.55  # from log(10) = 2.30; measured 0.29-0.45


def _separable(w, c):
    # elementwise, so the Hessian is diagonal and z * (H z) = f'' exactly for any signs z
    return (c * torch.cosh(w) + w**3 / 3 - w).sum()


GROUP_HP = [
    dict(lr=0.1, betas=(0.9, 0.999), eps=1e-4, weight_decay=0.0, hessian_power=1.0),
    dict(lr=0.03, betas=(0.5, 0.9), eps=1e-2, weight_decay=0.1, hessian_power=0.5),
]


def test_per_group_hyperparameters_match_separate_runs():
    gen = torch.Generator().manual_seed(0)
    starts = [torch.randn(4, generator=gen, dtype=DT), torch.randn(3, 2, generator=gen, dtype=DT)]
    cs = [torch.rand(4, generator=gen, dtype=DT) + 1, torch.rand(3, 2, generator=gen, dtype=DT) + 1]
    ws = [s.clone().requires_grad_(True) for s in starts]
    opt = AdaHessian([{"params": [w], **hp} for w, hp in zip(ws, GROUP_HP, strict=True)],
                     generator=torch.Generator().manual_seed(1))
    for _ in range(6):
        opt.step(lambda: sum(_separable(w, c) for w, c in zip(ws, cs, strict=True)))
    for i in range(2):
        for hp in GROUP_HP:
            w = starts[i].clone().requires_grad_(True)
            alone = AdaHessian([w], generator=torch.Generator().manual_seed(2), **hp)
            for _ in range(6):
                alone.step(lambda w=w, c=cs[i]: _separable(w, c))
            # bit-identical with the group's own hyperparameters, different with the other's
            assert torch.equal(ws[i], w) == (hp is GROUP_HP[i])


def test_group_lr_zero_stays_put_and_group_values_are_checked():
    a = torch.ones(2, dtype=DT, requires_grad=True)
    b = torch.ones(2, dtype=DT, requires_grad=True)
    opt = AdaHessian([{"params": [a]}, {"params": [b], "lr": 0.0, "weight_decay": 0.5}])
    opt.step(lambda: (a**2).sum() + (b**2).sum())
    assert torch.equal(b.detach(), torch.ones(2, dtype=DT))
    assert bool((a.detach() < 1).all())
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0: 1.0"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "betas": (1.0, 0.9)})
    with pytest.raises(ValueError, match="Invalid learning rate: -0.1"):
        AdaHessian([{"params": [a], "lr": -0.1}])
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "Invalid learning rate: 0.0"),
        (dict(lr=-1.0), "Invalid learning rate: -1.0"),
        (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
        (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
        (dict(betas=(0.9,)), r"Invalid betas: \(0.9,\)"),
        (dict(eps=0.0), "Invalid epsilon value: 0.0"),
        (dict(weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
        (dict(hessian_power=1.5), "Invalid Hessian power value: 1.5"),
        (dict(update_each=0), "Invalid update_each: 0"),
        (dict(update_each=1.5), "Invalid update_each: 1.5"),
        (dict(n_samples=0), "Invalid n_samples: 0"),
        (dict(spatial_average_block_size=0), "Invalid spatial_average_block_size: 0"),
        (dict(generator=3), "Invalid generator: int"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaHessian([nn.Parameter(torch.zeros(2))], **kwargs)


def test_a_nan_loss_raises_and_leaves_weights_and_moments_as_they_were():
    """Issue 8's reproduction: a closure returning ``loss * nan`` on its 2nd call turned
    every weight into NaN for good, silently. Now that step raises and is undone: the run
    equals one that skipped that batch."""
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    w_ref = torch.zeros(3, dtype=DT, requires_grad=True)
    target = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    opt = AdaHessian([w], lr=0.1, generator=torch.Generator().manual_seed(0))
    ref = AdaHessian([w_ref], lr=0.1, generator=torch.Generator().manual_seed(0))
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        loss = ((w - target) ** 2).sum()
        return loss * math.nan if calls == 2 else loss

    for step in range(4):
        if step == 1:
            moments = copy.deepcopy(opt.state[w])
            with pytest.raises(NonFiniteLossError, match="AdaHessian: the loss, the gradient"):
                opt.step(closure)
            assert all(torch.equal(moments[k], opt.state[w][k]) for k in moments)
            continue
        opt.step(closure)
        ref.step(lambda: ((w_ref - target) ** 2).sum())
        assert torch.equal(w.detach(), w_ref.detach())
    assert bool(torch.isfinite(w).all()) and float(((w.detach() - target) ** 2).sum()) < 14.0
