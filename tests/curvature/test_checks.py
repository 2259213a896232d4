"""Taylor gradient and HVP tests report the right orders ([Veitch] eq. 31)."""

import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature import functional_loss, gradient, gradient_test, hvp, hvp_test

DT = torch.float64


def _mlp_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    x, y = torch.randn(10, 3, dtype=DT), torch.randint(0, 3, (10,))
    return functional_loss(model, nn.CrossEntropyLoss(), x, y)


def test_gradient_test_orders_correct_and_wrong():
    loss_fn, params = _mlp_loss()
    g = torch.Generator().manual_seed(0)
    ok = gradient_test(loss_fn, params, generator=g)
    assert abs(float(ok.orders[0]) - 1) < 0.1
    assert abs(float(ok.orders[1]) - 2) < 0.15
    assert ok.passed()
    _, grad = gradient(loss_fn, params)
    wrong = tl.scale(grad, 1.5)  # a 50% error in the gradient
    bad = gradient_test(loss_fn, params, grad=wrong, generator=torch.Generator().manual_seed(0))
    assert abs(float(bad.orders[1]) - 1) < 0.15
    assert not bad.passed()
    # Same direction and steps: the table's first column does not depend on the gradient.
    torch.testing.assert_close(ok.errors[:, 0], bad.errors[:, 0])
    assert "order" in str(ok) and str(ok).count("\n") == len(ok.steps) + 1


def test_gradient_test_on_a_closed_form():
    # f(w) = sum w^3 at w = 1 along d: f(w + h d) - f(w) - h g.d = 3 h^2 sum d^2 + h^3 sum d^3
    d = [torch.tensor([1.0, 0.0], dtype=DT)]
    res = gradient_test(lambda ps: (ps[0] ** 3).sum(), [torch.ones(2, dtype=DT)], direction=d,
                        steps=[1e-2, 1e-3])
    torch.testing.assert_close(
        res.errors[:, 1], torch.tensor([3e-4 + 1e-6, 3e-6 + 1e-9], dtype=DT), rtol=1e-9, atol=0
    )


def test_hvp_test_orders_correct_and_wrong():
    loss_fn, params = _mlp_loss()
    d = tuple(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
              for p in params)
    ok = hvp_test(loss_fn, params, direction=d)
    assert abs(float(ok.orders[0]) - 2) < 0.15
    assert abs(float(ok.orders[1]) - 3) < 0.2
    assert ok.passed()
    hd = hvp(loss_fn, params, d)
    bad = hvp_test(loss_fn, params, direction=d, hessian_vector=tl.scale(hd, 0.8))
    assert abs(float(bad.orders[1]) - 2) < 0.2
    assert not bad.passed()


def test_bad_arguments():
    loss_fn, params = _mlp_loss()
    with pytest.raises(ValueError, match="Invalid steps"):
        gradient_test(loss_fn, params, steps=[0.1])
    with pytest.raises(ValueError, match="Invalid steps"):
        gradient_test(loss_fn, params, steps=[0.1, -0.01])
    with pytest.raises(ValueError, match="pass the direction too"):
        hvp_test(loss_fn, params, hessian_vector=tl.zeros_like(params))
    with pytest.raises(ValueError, match="grad has 1 tensors but there are 4 parameters"):
        gradient_test(loss_fn, params, grad=[torch.zeros(3, dtype=DT)])
    with pytest.raises(ValueError, match="Invalid HVP backend"):
        hvp_test(loss_fn, params, backend="magic")
