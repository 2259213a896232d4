"""Harness cost accounting: counts forward/backward passes and HVPs by hooks."""

import pytest
import torch
from torch import nn

from secondorder.bench.accounting import WEIGHTS, CostMeter, Costs
from secondorder.optim.base import SecondOrderOptimizer


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g,
                                                                             dtype=torch.float64)


class KHVP(SecondOrderOptimizer):
    """Test optimizer: one gradient with graph, then ``k`` Hessian-vector products."""

    def __init__(self, params, k=3, lr=0.01):
        super().__init__(params, {"lr": lr})
        self.k = k

    def step(self, closure):
        ev = self.evaluate(closure, create_graph=True)
        v = ev.grads
        for _ in range(self.k):
            v = ev.hessian @ v
        ev.hessian.free()
        self.add_to_params(ev.grads, -self.param_groups[0]["lr"])
        return ev.loss


def test_sgd_step_counts_exactly_the_batch():
    model = _model()
    x, y = _data(100)
    b = 16
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with CostMeter(model, train_size=100) as meter:
        def closure():
            opt.zero_grad()
            loss = (model(x[:b]) - y[:b]).pow(2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        c = meter.costs
        assert (c.forwards, c.forward_samples, c.gradients, c.gradient_samples, c.hvps) == (
            1, b, 1, b, 0)
        assert c.backprops == pytest.approx(b / 100)  # forward 1/2 + gradient 1/2 per sample
        assert c.epochs == pytest.approx(b / 100)


@pytest.mark.parametrize("k", [1, 4])
def test_k_hvps_count_k_times_the_batch(k):
    model = _model()
    x, y = _data(40)
    opt = KHVP(model.parameters(), k=k)
    with CostMeter(model, train_size=40) as meter:
        for _ in range(2):
            opt.step(lambda: (model(x[:10]) - y[:10]).pow(2).squeeze(1))
        c = meter.costs
    assert (c.forwards, c.gradients, c.hvps) == (2, 2, 2 * k)
    assert (c.forward_samples, c.gradient_samples, c.hvp_samples) == (20, 20, 20 * k)
    # Harness and optimizer counters agree.
    assert opt.counters.hvps == c.hvps and opt.counters.hvp_samples == c.hvp_samples
    assert c.backprops == pytest.approx((0.5 * 20 + 0.5 * 20 + 1.0 * 20 * k) / 40)


def test_paused_evaluation_is_not_counted_and_hooks_are_removed():
    model = _model()
    x, y = _data(8)
    meter = CostMeter(model, train_size=8)
    with meter.paused(), torch.no_grad():
        model(x)
    assert meter.costs.forwards == 0
    (model(x) - y).pow(2).mean().backward()
    assert (meter.costs.forwards, meter.costs.gradients) == (1, 1)
    meter.close()
    (model(x) - y).pow(2).mean().backward()
    assert (meter.costs.forwards, meter.costs.gradients) == (1, 1)


def test_functional_call_and_repeated_backward_are_counted():
    model = _model()
    x, y = _data(12)
    with CostMeter(model, train_size=24) as meter:
        params = dict(model.named_parameters())
        out = torch.func.functional_call(model, params, (x,))
        loss = (out - y).pow(2).mean()
        loss.backward(retain_graph=True)
        loss.backward()  # a second backward through the same graph: counted as an HVP-cost pass
        c = meter.costs
    assert (c.forwards, c.forward_samples, c.gradients, c.hvps, c.hvp_samples) == (1, 12, 1, 1, 12)


def test_explicit_counts_follow_the_weights_and_respect_pause():
    model = _model()
    meter = CostMeter(model, train_size=10)
    meter.count("gradient", 8)
    meter.count("hvp", 8, n=3)
    with meter.paused():
        meter.count("hvp", 8)
    c = meter.costs
    assert (c.gradients, c.gradient_samples, c.hvps, c.hvp_samples) == (1, 8, 3, 24)
    assert c.backprops == pytest.approx((0.5 * 8 + 24) / 10)
    meter.close()


def test_costs_weights_on_hand_numbers():
    c = Costs(forwards=3, forward_samples=30, gradients=2, gradient_samples=20, hvps=5,
              hvp_samples=50, train_size=10)
    assert WEIGHTS == {"forward": 0.5, "gradient": 0.5, "hvp": 1.0}
    assert c.backprop_samples == 15 + 10 + 50
    assert c.backprops == pytest.approx(7.5)
    assert c.epochs == pytest.approx(3.0)
    d = c.as_dict()
    assert d["backprops"] == pytest.approx(7.5) and "train_size" not in d


def test_bad_inputs():
    with pytest.raises(ValueError, match="Invalid train_size: 0"):
        CostMeter(_model(), train_size=0)
    m = _model()
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        CostMeter(m, train_size=3)
    with CostMeter(_model(), train_size=3) as meter:
        with pytest.raises(ValueError, match="Invalid kind: 'backward'"):
            meter.count("backward", 1)
        with pytest.raises(ValueError, match="Invalid count: 1 passes of -2 samples"):
            meter.count("hvp", -2)
