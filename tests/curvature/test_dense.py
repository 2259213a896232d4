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


class _LayerNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.norm, self.head = nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(nn.functional.gelu(self.norm(self.linear(x))))


def test_layer_norm_model_matches_central_differences_of_the_gradient():
    # torch.func.hessian (vmapped layer-norm backward) was 0.05 off here, and asymmetric.
    torch.manual_seed(5)
    model = _LayerNormNet().to(DT)
    x, y = torch.randn(7, 6, dtype=DT), torch.randint(0, 3, (7,))
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    h = hessian(loss_fn, params)
    torch.testing.assert_close(h, h.T, atol=1e-13, rtol=0)
    n, step = h.shape[0], 1e-5
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def grad_at(w):
        ps = [t.view_as(p).requires_grad_(True) for t, p in
              zip(torch.split(w.clone(), [p.numel() for p in params]), params, strict=True)]
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(ps), ps)])

    eye = torch.eye(n, dtype=DT)
    fd = torch.stack([(grad_at(flat + step * e) - grad_at(flat - step * e)) / (2 * step)
                      for e in eye], 1)
    torch.testing.assert_close(h, fd, atol=1e-8, rtol=0)
