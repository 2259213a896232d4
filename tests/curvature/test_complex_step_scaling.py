"""Complex-step products do not depend on the direction's norm (issue 12 item 3).

The products run on ``unit_direction(v)`` and are scaled back by a power of two, so the
imaginary parts never reach the subnormal range (slow on CPUs, and digits are lost) nor
leave the range in which the first-order rules are exact. Speed is measured in
``benchmarks/complex_step_scaling.py``, not here.
"""

from __future__ import annotations

import math

import pytest
import torch
from nets import small_cnn, tanh_mlp

from secondorder import tensorlist as tl
from secondorder.curvature.complex_step import (
    complex_step_directional,
    complex_step_hvp,
    unit_direction,
)
from secondorder.curvature.functional import functional_loss
from secondorder.curvature.vhv import vhv

NORMS = (1e-14, 1e-12, 1e-8, 1e-3, 1e4, 1e8)
# float32 products of the unit direction agree with each other to ~2e-6 (10x margin)
TOL = {torch.float64: 1e-14, torch.float32: 2e-5}


def _problem(make, dtype):
    model, crit, x, y = make()
    loss_fn, params = functional_loss(model.to(dtype), crit, x.to(dtype), y)
    torch.manual_seed(5)
    u = tuple(torch.randn_like(p) for p in params)
    n = tl.norm(u)
    return loss_fn, params, tuple(t / n for t in u)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("make", [tanh_mlp, small_cnn], ids=["mlp", "cnn"])
def test_products_are_independent_of_the_direction_norm(make, dtype):
    loss_fn, params, u = _problem(make, dtype)
    hv1 = complex_step_hvp(loss_fn, params, u)
    q1 = float(vhv(loss_fn, params, u, backend="complex-step"))
    d1 = float(complex_step_directional(loss_fn, params, u))
    tol = TOL[dtype]
    for c in NORMS:
        v = tuple(t * c for t in u)
        hv = tl.scale(complex_step_hvp(loss_fn, params, v), 1.0 / c)
        assert float(tl.norm(tl.sub(hv, hv1)) / tl.norm(hv1)) < tol, c
        q = float(vhv(loss_fn, params, v, backend="complex-step")) / (c * c)
        assert q == pytest.approx(q1, rel=tol), c
        d = float(complex_step_directional(loss_fn, params, v)) / c
        assert d == pytest.approx(d1, rel=tol), c


def test_unit_direction_splits_off_a_power_of_two():
    v = (torch.tensor([3e-9, -5e-9], dtype=torch.float64), torch.tensor([], dtype=torch.float64),
         torch.tensor([[1e-9]], dtype=torch.float64))
    unit, scale = unit_direction(v, torch.float64)
    s = float(scale)
    assert math.log2(s) == round(math.log2(s))
    peak = max(float(t.abs().amax()) for t in unit if t.numel())
    assert 0.5 <= peak < 1.0
    for a, b in zip(unit, v, strict=True):
        assert torch.equal(a * scale, b)
    zero, one = unit_direction((torch.zeros(3),), torch.float32)
    assert float(one) == 1.0 and torch.equal(zero[0], torch.zeros(3))
    w = torch.ones(3, dtype=torch.float64)
    assert torch.equal(complex_step_hvp(lambda ps: (ps[0] ** 3).sum(), [w],
                                        [torch.zeros(3, dtype=torch.float64)])[0],
                       torch.zeros(3, dtype=torch.float64))
