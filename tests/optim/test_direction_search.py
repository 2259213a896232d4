"""Param groups of the line-search optimizers: per-group lr, shared structure, dispatch."""

from __future__ import annotations

import pytest
import torch
from problems import logistic_regression, split_quadratic

from secondorder import tensorlist as tl
from secondorder.optim import LBFGS, BarzilaiBorwein, NewtonCG, NonlinearCG
from secondorder.optim import line_search as ls
from secondorder.optim.direction_groups import GroupScale
from secondorder.optim.line_objective import LineObjective, search

# name -> (factory, a shared key, a second value for it)
OPTIMIZERS = {
    "LBFGS": (lambda ps, **kw: LBFGS(ps, full_batch=True, **kw), "history_size", 5),
    "LBFGS-none": (lambda ps, **kw: LBFGS(ps, line_search=None, lr=0.2, **kw), "c1", 0.01),
    "NonlinearCG": (lambda ps, **kw: NonlinearCG(ps, full_batch=True, **kw), "beta", "dai_yuan"),
    "NewtonCG": (lambda ps, **kw: NewtonCG(ps, **kw), "forcing", 0.1),
    "BB1": (lambda ps, **kw: BarzilaiBorwein(ps, mode="bb1", lr=0.05, **kw), "memory", 3),
    "SGD-BB": (lambda ps, **kw: BarzilaiBorwein(ps, lr=0.05, epoch_length=4, **kw),
               "epoch_length", 5),
}  # fmt: skip
NAMES = list(OPTIMIZERS)


def _groups(u, v, **second):
    return [{"params": [u]}, {"params": [v], **second}]


@pytest.mark.parametrize("name", NAMES)
def test_equal_group_lrs_are_bit_identical_to_one_group(name):
    make = OPTIMIZERS[name][0]
    p = logistic_regression()
    w1, b1 = p.x0[:-1].clone().requires_grad_(True), p.x0[-1:].clone().requires_grad_(True)
    w2, b2 = w1.detach().clone().requires_grad_(True), b1.detach().clone().requires_grad_(True)
    one = make([w1, b1])
    two = make(_groups(w2, b2))
    for _ in range(8):
        one.step(lambda: p.loss(torch.cat([w1, b1])))
        two.step(lambda: p.loss(torch.cat([w2, b2])))
        assert torch.equal(w1, w2) and torch.equal(b1, b2)
    assert float(p.loss(torch.cat([w1, b1]).detach())) < float(p.loss(p.x0)) - 0.1


@pytest.mark.parametrize("name", NAMES)
def test_zero_lr_group_is_exactly_the_problem_with_those_parameters_fixed(name):
    make = OPTIMIZERS[name][0]
    q = split_quadratic()
    u, v = q.params()
    two = make(_groups(u, v, lr=0.0))
    u1 = q.u0.clone().requires_grad_(True)
    one = make([u1])  # v held at v0 outside the optimizer
    for _ in range(10):
        two.step(lambda: q.loss(u, v))
        one.step(lambda: q.loss(u1, q.v0))
        assert torch.equal(u, u1)
        assert torch.equal(v, q.v0)
    assert two.counters.as_dict() == one.counters.as_dict()  # no gradient for v either
    assert float(q.loss(u.detach(), q.v0)) < float(q.loss(q.u0, q.v0)) - 0.1


# Settings under which each method converges on the split quadratic (cond 10) in `steps`.
# L-BFGS stops when the slope g.d > -tolerance_change; near the minimizer u* the slope is
# about -(u - u*)^T A_uu (u - u*), so tolerance_change = 1e-16 let it stop as soon as the
# error was ~1e-8, the very accuracy asserted below; 1e-20 lets it stop only below ~1e-10.
FREEZE_RUNS = {
    "LBFGS": (lambda ps: LBFGS(ps, full_batch=True, tolerance_grad=1e-12,
                               tolerance_change=1e-20), 20),
    "NonlinearCG": (lambda ps: NonlinearCG(ps, full_batch=True, tolerance_grad=1e-12), 30),
    "NewtonCG": (lambda ps: NewtonCG(ps, forcing=1e-10), 3),
    "BB1": (lambda ps: BarzilaiBorwein(ps, mode="bb1", lr=0.05), 100),
    "BB2": (lambda ps: BarzilaiBorwein(ps, mode="bb2", lr=0.05), 100),
}


def loss_about(q, x_c: torch.Tensor, reverse: bool = False):
    """``q.loss - q.loss(x_c)`` written as ``d^T A d / 2 + (A x_c - b)^T d``, ``d = x - x_c``.

    The same gradient ``A x - b`` everywhere, but near ``x_c`` the value is computed to full
    relative precision, where ``q.loss`` (about -2.16 there) rounds to a multiple of 4e-16:
    the last L-BFGS step to an error below 1e-8 lowers the loss by ~2e-16, which ``q.loss``
    cannot resolve, so whether the line search accepted it depended on the rounding of the
    BLAS in use (the error stayed at 1.02e-8 on some machines; here, with the dot products
    summed in reverse order, ``q.loss`` stops L-BFGS at 1.016e-8 on any machine).

    Args:
        q: the split quadratic.
        x_c: the point about which the loss is written (the conditional minimizer).
        reverse: sum the dot products in reverse order (another BLAS's rounding).
    """
    residual = q.A @ x_c - q.b

    def loss(u, v):
        d = torch.cat([u, v]) - x_c
        ad, r = q.A @ d, residual
        if reverse:
            d, ad, r = d.flip(0), ad.flip(0), r.flip(0)
        return 0.5 * d @ ad + r @ d

    return loss


@pytest.mark.parametrize("reverse", [False, True], ids=["forward-sum", "reverse-sum"])
@pytest.mark.parametrize("name", list(FREEZE_RUNS))
def test_zero_lr_group_stays_put_while_the_rest_reaches_its_conditional_minimizer(name, reverse):
    make, steps = FREEZE_RUNS[name]
    q = split_quadratic()
    u, v = q.params()
    u_star = q.conditional_minimizer(q.v0)  # A_uu^{-1} (b_u - A_uv v0)
    loss = loss_about(q, torch.cat([u_star, q.v0]), reverse)
    opt = make(_groups(u, v, lr=0.0))
    for _ in range(steps):
        opt.step(lambda: loss(u, v))
    assert torch.equal(v, q.v0)
    assert torch.allclose(u.detach(), u_star, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["LBFGS", "LBFGS-none", "NonlinearCG", "NewtonCG", "BB1"])
def test_freezing_or_unfreezing_a_group_restarts_the_method(name):
    make = OPTIMIZERS[name][0]
    q = split_quadratic()
    u, v = q.params()
    opt = make(_groups(u, v))
    for _ in range(2):
        opt.step(lambda: q.loss(u, v))
    # freeze v: the next step is the first step of a fresh optimizer over u alone
    opt.param_groups[1]["lr"] = 0.0
    v_fixed = v.detach().clone()
    u1 = u.detach().clone().requires_grad_(True)
    opt.step(lambda: q.loss(u, v))
    make([u1]).step(lambda: q.loss(u1, v_fixed))
    assert torch.equal(u, u1) and torch.equal(v, v_fixed)
    # unfreeze: the first step of a fresh two-group optimizer
    opt.param_groups[1]["lr"] = opt.param_groups[0]["lr"]
    u2 = u.detach().clone().requires_grad_(True)
    v2 = v.detach().clone().requires_grad_(True)
    opt.step(lambda: q.loss(u, v))
    make(_groups(u2, v2)).step(lambda: q.loss(u2, v2))
    assert torch.equal(u, u2) and torch.equal(v, v2)
    assert not torch.equal(v, v_fixed)


@pytest.mark.parametrize("name", NAMES)
def test_all_lrs_zero_moves_nothing(name):
    make = OPTIMIZERS[name][0]
    q = split_quadratic()
    u, v = q.params()
    opt = make(_groups(u, v))
    for g in opt.param_groups:
        g["lr"] = 0.0
    for _ in range(3):
        loss = opt.step(lambda: q.loss(u, v))
    assert torch.equal(u, q.u0) and torch.equal(v, q.v0)
    assert float(loss) == pytest.approx(float(q.loss(q.u0, q.v0)), rel=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_shared_hyperparameter_differing_at_construction_raises(name):
    make, key, other = OPTIMIZERS[name]
    u, v = split_quadratic().params()
    default = make([u]).defaults[key]
    with pytest.raises(ValueError, match=rf"{key} differs between param groups: "
                       rf"{default!r} vs {other!r}; it must be the same for all groups"):
        make(_groups(u, v, **{key: other}))


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_checks_shared_hyperparameters_and_lr(name):
    make, key, other = OPTIMIZERS[name]
    u, v = split_quadratic().params()
    opt = make([u])
    with pytest.raises(ValueError, match=rf"{key} differs between param groups"):
        opt.add_param_group({"params": [v], key: other})
    with pytest.raises(ValueError, match=r"Invalid lr value: -0.1"):
        opt.add_param_group({"params": [v], "lr": -0.1})
    assert len(opt.param_groups) == 1  # rejected groups are not added
    opt.add_param_group({"params": [v], "lr": 0.0})
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("name", NAMES)
def test_shared_hyperparameter_changed_in_one_group_raises_at_step(name):
    make, key, other = OPTIMIZERS[name]
    q = split_quadratic()
    u, v = q.params()
    opt = make(_groups(u, v))
    opt.param_groups[1][key] = other
    with pytest.raises(ValueError, match=rf"{key} differs between param groups"):
        opt.step(lambda: q.loss(u, v))


def test_invalid_value_in_a_group_raises():
    u, v = split_quadratic().params()
    with pytest.raises(ValueError, match="Invalid history_size value: 0"):
        LBFGS([{"params": [u], "history_size": 0}])
    with pytest.raises(ValueError, match="Invalid c2 value: 2.0"):
        NonlinearCG([{"params": [u], "c2": 2.0}, {"params": [v], "c2": 2.0}])


def test_group_scale_ratios():
    u, v = split_quadratic().params()
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = LBFGS([{"params": [u], "lr": 0.5}, {"params": [v, w], "lr": 0.125}])
    scale = GroupScale.of(opt)
    assert scale.lr == 0.5 and scale.ratios == (1.0, 0.25, 0.25)
    vec = (torch.ones(4), torch.full((2,), 2.0), torch.full((3,), -4.0))
    out = scale.apply(vec)
    assert [x.tolist() for x in out] == [[1.0] * 4, [0.5] * 2, [-1.0] * 3]
    same = GroupScale.of(LBFGS([{"params": [u], "lr": 0.3}, {"params": [v], "lr": 0.3}]))
    assert same.ratios is None and same.apply(vec)[2] is vec[2]  # nothing computed


@pytest.mark.parametrize("method", ["strong_wolfe", "armijo", "nonmonotone", None])
def test_search_dispatch_equals_the_named_search(method):
    q = split_quadratic()
    u, v = q.params()
    opt = LBFGS(_groups(u, v))
    x0 = (q.u0.clone(), q.v0.clone())
    g = torch.split(q.grad(torch.cat(x0)), [4, 2])
    d = (-g[0], -0.5 * g[1])
    loss0 = q.loss(*x0)
    slope = -(g[0] @ g[0] + 0.5 * g[1] @ g[1])
    ref_loss = loss0 + 1.0
    phi = LineObjective(opt, lambda: q.loss(u, v), x0, d)
    t, loss, grad = search(phi, method, loss0, g, slope, step=2.0, need_grad=True,
                           reference_loss=ref_loss)
    # the dispatch leaves the parameters at x0 + t d
    assert all(torch.equal(a, b) for a, b in zip((u, v), tl.add(x0, d, t), strict=True))
    ref_phi = LineObjective(opt, lambda: q.loss(u, v), x0, d)
    if method == "strong_wolfe":
        res = ls.strong_wolfe(ref_phi, d, loss0, g, step=2.0)
    elif method == "armijo":
        res = ls.backtracking(ref_phi, loss0, slope, step=2.0, need_grad=True)
    elif method == "nonmonotone":
        res = ls.nonmonotone_backtracking(ref_phi, ref_loss, slope, loss0=loss0, step=2.0,
                                          need_grad=True)
    else:
        res = ls.LineSearchResult(2.0, None, None, 0, True, "fixed")
    assert t == res.step
    assert (loss is None) == (res.loss is None) and (grad is None) == (res.grad is None)
    if loss is not None:
        assert torch.equal(loss, res.loss)
    if grad is not None:
        assert all(torch.equal(a, b) for a, b in zip(grad, res.grad, strict=True))
