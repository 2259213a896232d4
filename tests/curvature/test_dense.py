"""Dense Hessian against closed forms and the double-backward operator."""

import pytest
import torch
from torch import nn

from secondorder.curvature import HessianOperator, functional_loss, hessian

DT = torch.float64


def test_quadratic_plus_separate_block_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=DT)
    a = a + a.T
    params = [torch.randn(4, generator=g, dtype=DT), torch.randn(2, 1, generator=g, dtype=DT)]

    def f(ps):
        return 0.5 * ps[0] @ a @ ps[0] + (ps[1] ** 3).sum()

    h = hessian(f, params)
    expected = torch.zeros(6, 6, dtype=DT)
    expected[:4, :4] = a
    expected[4:, 4:] = torch.diag(6 * params[1].reshape(-1))
    torch.testing.assert_close(h, expected, atol=1e-13, rtol=0)


def test_logistic_regression_closed_form():
    # mean BCE-with-logits of x^T w + b: H = [X 1]^T diag(p(1-p)) [X 1] / m.
    torch.manual_seed(1)
    model = nn.Linear(3, 1).to(DT)
    x, y = torch.randn(12, 3, dtype=DT), torch.randint(0, 2, (12, 1)).to(DT)
    loss_fn, params = functional_loss(model, nn.BCEWithLogitsLoss(), x, y)
    p = torch.sigmoid(model(x)).detach().reshape(-1)
    xb = torch.cat([x, torch.ones(12, 1, dtype=DT)], 1)
    expected = xb.T @ torch.diag(p * (1 - p)) @ xb / 12
    torch.testing.assert_close(hessian(loss_fn, params), expected, atol=1e-14, rtol=0)


def test_mlp_matches_double_backward_operator():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    x, y = torch.randn(10, 3, dtype=DT), torch.randint(0, 3, (10,))
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    h = hessian(loss_fn, params)
    assert h.shape == (31, 31)
    torch.testing.assert_close(h, HessianOperator(loss_fn, params).to_dense(), atol=1e-12, rtol=0)
    torch.testing.assert_close(h, h.T, atol=1e-14, rtol=0)


def test_too_many_parameters_is_refused():
    params = [torch.zeros(10, 10, dtype=DT)]
    with pytest.raises(ValueError, match=r"100 parameters, more than max_params=50"):
        hessian(lambda ps: (ps[0] ** 2).sum(), params, max_params=50)
    with pytest.raises(ValueError, match="Invalid max_params: 0"):
        hessian(lambda ps: (ps[0] ** 2).sum(), params, max_params=0)


def test_non_scalar_loss_is_refused():
    with pytest.raises(ValueError, match="the loss must be a scalar"):
        hessian(lambda ps: ps[0] ** 2, [torch.zeros(3, dtype=DT)])
