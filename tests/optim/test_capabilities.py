"""Capabilities are declared as class attributes and agree with what ``step`` does."""

import inspect

import pytest
import torch

import secondorder.optim as so

DT = torch.float64
# constructor arguments that make one step run on a closure alone
KWARGS = {"BarzilaiBorwein": {"mode": "bb1"}, "HessianFree": {"curvature": "hessian"}}
OPTIMIZERS = sorted(
    (c for c in vars(so).values()
     if isinstance(c, type) and issubclass(c, so.SecondOrderOptimizer)
     and c not in (so.SecondOrderOptimizer, so.AdaptiveNormOptimizer)),
    key=lambda c: c.__name__,
)


def test_every_optimizer_is_covered():
    assert len(OPTIMIZERS) == 11


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_gauss_newton_support_matches_step_signature(cls):
    takes = "ggn_closure" in inspect.signature(cls.step).parameters
    assert cls.SUPPORTS_GAUSS_NEWTON is takes


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_needs_curvature_matches_the_counted_products(cls):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g, dtype=DT)
    y = (torch.randn(30, generator=g, dtype=DT) > 0).to(DT)
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = cls([w], **KWARGS.get(cls.__name__, {}))
    for _ in range(2):
        opt.step(lambda: torch.nn.functional.binary_cross_entropy_with_logits(
            x @ w, y, reduction="none"))
    assert (opt.counters.hvps > 0) is cls.NEEDS_CURVATURE, opt.counters
