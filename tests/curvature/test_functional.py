"""functional_model / functional_loss and the parameter and loss checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature.functional import (
    check_params,
    check_scalar_loss,
    functional_loss,
    functional_model,
)
from secondorder.errors import NonFiniteLossError


def _linear_regression():
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randn(10, 1, dtype=torch.float64)
    return model, x, y


def test_check_params_returns_a_tuple_and_names_the_problem():
    a, b = torch.zeros(2), torch.zeros(3)
    assert check_params([a, b]) == (a, b)
    with pytest.raises(ValueError, match=r"single tensor; wrap it: \[tensor\]"):
        check_params(a)
    with pytest.raises(ValueError, match="params is empty: there is no parameter"):
        check_params([])
    with pytest.raises(ValueError, match=r"params\[1\] is a float, not a tensor"):
        check_params([a, 1.0])


def test_check_scalar_loss_accepts_one_element_and_rejects_the_rest():
    out = check_scalar_loss(torch.tensor([2.5]))
    assert out.shape == () and out.item() == 2.5
    with pytest.raises(ValueError, match="the loss must be a tensor, got float"):
        check_scalar_loss(2.5)
    with pytest.raises(ValueError, match=r"must be a scalar, got a tensor of shape \(2, 3\); "
                                         r"reduce it \(e.g. .mean\(\)\)"):
        check_scalar_loss(torch.zeros(2, 3))
    with pytest.raises(NonFiniteLossError, match="the loss is not finite: inf"):
        check_scalar_loss(torch.tensor(float("inf")))
    nan = check_scalar_loss(torch.tensor(float("nan")), check_finite=False)
    assert torch.isnan(nan)


def test_functional_loss_of_least_squares_has_the_closed_form_hessian():
    # MSE of y ~ X w + b: H = 2/n [X 1]^T [X 1] (closed form), in (w, b) order.
    model, x, y = _linear_regression()
    loss_fn, params = functional_loss(model, nn.MSELoss(), x, y)
    assert [p is q for p, q in zip(params, model.parameters(), strict=True)] == [True, True]
    assert loss_fn.model is model
    assert torch.equal(loss_fn(params), nn.MSELoss()(model(x), y))
    shifted = (params[0] + 1.0, params[1] - 2.0)
    expected = ((x @ shifted[0].T + shifted[1] - y) ** 2).mean()
    assert torch.allclose(loss_fn(shifted), expected, rtol=1e-14, atol=0)

    flat = tl.flatten(params).detach()
    dense = torch.autograd.functional.hessian(lambda v: loss_fn(tl.unflatten(v, params)), flat)
    design = torch.cat([x, torch.ones(10, 1, dtype=torch.float64)], dim=1)
    assert torch.allclose(dense, 2.0 / 10 * design.T @ design, rtol=0, atol=1e-12)


def test_functional_model_chooses_trainable_or_given_parameters_in_order():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    model[0].bias.requires_grad_(False)
    x = torch.randn(4, 2)
    output_fn, params = functional_model(model, x)
    assert [p.shape for p in params] == [(3, 2), (1, 3), (1,)]
    assert torch.equal(output_fn(params), model(x))
    zeroed = (torch.zeros(3, 2), params[1], params[2])
    # first layer output = frozen bias only: relu(b0) @ W1^T + b1
    expected = torch.relu(model[0].bias) @ params[1].T + params[2]
    assert torch.allclose(output_fn(zeroed), expected.expand(4, 1), rtol=0, atol=1e-6)

    only_last, chosen = functional_model(model, x, params=[model[2].weight])
    assert chosen == (model[2].weight,)
    assert torch.allclose(only_last([2.0 * model[2].weight]) - model[2].bias,
                          2.0 * (model(x) - model[2].bias), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="expected 1 parameter tensors, got 3"):
        only_last(params)


def test_buffers_are_copied_so_the_model_never_changes():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(5, 2), torch.randn(5, 3)
    loss_fn, params = functional_loss(model, nn.MSELoss(), x, y)
    for _ in range(3):
        loss_fn(params)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert int(after["1.num_batches_tracked"]) == 0


def test_dtype_evaluates_a_bfloat16_model_in_float32_copies():
    torch.manual_seed(3)
    model = nn.Linear(4, 2).to(torch.bfloat16)
    x = torch.randn(6, 4).to(torch.bfloat16)
    y = torch.randn(6, 2)
    loss_fn, params = functional_loss(model, nn.MSELoss(), x, y, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in params)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(p is not q for p, q in zip(params, model.parameters(), strict=True))
    expected = nn.MSELoss()(x.float() @ model.weight.float().T + model.bias.float(), y)
    assert loss_fn(params).dtype == torch.float32
    assert torch.allclose(loss_fn(params), expected, rtol=1e-6, atol=0)


def test_bad_model_or_dtype_is_named():
    model = nn.Linear(2, 1)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="Linear has no parameter that requires grad"):
        functional_loss(model, nn.MSELoss(), torch.zeros(1, 2), torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"Invalid dtype: torch.int32; expected a floating"):
        functional_model(nn.Linear(2, 1), torch.zeros(1, 2), dtype=torch.int32)
    with pytest.raises(ValueError, match="Invalid dtype: 'float32'"):
        functional_model(nn.Linear(2, 1), torch.zeros(1, 2), dtype="float32")
