"""HVP backends and HessianOperator against the dense float64 Hessian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature import HessianOperator, functional_loss, gradient, hvp
from secondorder.errors import NonFiniteLossError


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (10,))
    return model, nn.CrossEntropyLoss(), x, y


def _cnn():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 2, 3),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2, 3),
    ).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    return model, nn.CrossEntropyLoss(), x, y


def _softmax_regression():
    torch.manual_seed(2)
    model = nn.Linear(5, 3).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return model, nn.CrossEntropyLoss(), x, y


PROBLEMS = {"mlp_tanh": _mlp, "cnn_relu_pool": _cnn, "softmax_ce": _softmax_regression}


def dense_hessian(loss_fn, params):
    flat = tl.flatten(params).detach()
    return torch.func.hessian(lambda w: loss_fn(tl.unflatten(w, params)))(flat)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(params=list(PROBLEMS), name="problem")
def problem_fixture(request):
    model, crit, x, y = PROBLEMS[request.param]()
    loss_fn, params = functional_loss(model, crit, x, y)
    H = dense_hessian(loss_fn, params)
    g = torch.Generator().manual_seed(3)
    v = tuple(torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params)
    return loss_fn, params, v, H


@pytest.mark.parametrize("backend", ["autograd", "forward"])
def test_exact_backends_match_dense_hessian(problem, backend):
    loss_fn, params, v, H = problem
    out = tl.flatten(hvp(loss_fn, params, v, backend=backend))
    assert _rel(out, H @ tl.flatten(v)) <= 1e-10


@pytest.mark.parametrize("scheme,tol", [("forward", 1e-6), ("central", 1e-8)])
def test_finite_difference_close_to_dense_hessian(problem, scheme, tol):
    loss_fn, params, v, H = problem
    out = tl.flatten(hvp(loss_fn, params, v, backend="finite-difference", scheme=scheme))
    ref = H @ tl.flatten(v)
    # the ReLU/max-pool CNN is only piecewise smooth: a kink inside [w - h v, w + h v]
    # is possible in principle, but not for this draw.
    assert _rel(out, ref) <= tol


def test_hvp_does_not_touch_param_grads_or_values(problem):
    loss_fn, params, v, _ = problem
    before = tl.clone(params)
    hvp(loss_fn, params, v)
    assert all(p.grad is None for p in params)
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_operator_products_match_dense_and_count(problem):
    loss_fn, params, v, H = problem
    op = HessianOperator(loss_fn, params)
    w = tuple(torch.linspace(-1, 2, p.numel(), dtype=p.dtype).reshape(p.shape) for p in params)
    assert _rel(tl.flatten(op @ v), H @ tl.flatten(v)) <= 1e-10
    assert _rel(tl.flatten(op @ w), H @ tl.flatten(w)) <= 1e-10
    flat = op @ tl.flatten(v)
    assert flat.dim() == 1 and _rel(flat, H @ tl.flatten(v)) <= 1e-10
    assert op.num_products == 3
    assert torch.allclose(op.to_dense(), H, atol=1e-12, rtol=0)
    loss, grad = gradient(loss_fn, params)
    assert torch.equal(loss, op.loss)
    assert _rel(tl.flatten(op.gradient), tl.flatten(grad)) <= 1e-14


def test_operator_to_scipy_solves_with_scipy_cg():
    from scipy.sparse.linalg import cg

    model, crit, x, y = _softmax_regression()
    model.weight.data.zero_()

    # L2 regularization makes the softmax-regression Hessian positive definite.
    def loss_fn(ps):
        return crit(
            torch.func.functional_call(model, {"weight": ps[0], "bias": ps[1]}, (x,)), y
        ) + 0.1 * tl.dot(ps, ps)

    params = tuple(p.detach() for p in model.parameters())
    op = HessianOperator(loss_fn, params)
    H = dense_hessian(loss_fn, params).numpy()
    b = np.arange(op.dim, dtype=np.float64)
    sol, info = cg(op.to_scipy(), b, rtol=1e-12, maxiter=200)
    assert info == 0
    np.testing.assert_allclose(sol, np.linalg.solve(H, b), rtol=1e-8, atol=1e-10)


def test_freed_operator_refuses_products():
    model, crit, x, y = _mlp()
    loss_fn, params = functional_loss(model, crit, x, y)
    op = HessianOperator(loss_fn, params)
    op.free()
    with pytest.raises(RuntimeError, match="freed"):
        op @ tuple(torch.ones_like(p) for p in params)


def test_quadratic_closed_form_all_backends():
    A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, -1.0], [0.0, -1.0, 2.0]], dtype=torch.float64)

    def f(ps):
        return 0.5 * ps[0] @ A @ ps[0] + torch.sin(ps[1]).sum() * 0.0

    params = (torch.randn(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    v = (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    for backend in ["autograd", "forward", "finite-difference"]:
        out = hvp(f, params, v, backend=backend)
        assert torch.allclose(out[0], A @ v[0], atol=1e-7, rtol=0)
        assert torch.allclose(out[1], torch.zeros(2, dtype=torch.float64), atol=1e-7)


# ----------------------------------------------------------------------------- errors
def _simple():
    model, crit, x, y = _mlp()
    return functional_loss(model, crit, x, y)


def test_wrong_number_of_vectors_is_an_error():
    loss_fn, params = _simple()
    with pytest.raises(ValueError, match="vec has 1 tensors but there are 4 parameters"):
        hvp(loss_fn, params, (torch.ones(3),))


def test_wrong_vector_shape_is_an_error():
    loss_fn, params = _simple()
    v = [torch.ones_like(p) for p in params]
    v[2] = torch.ones(3, 3, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"vec\[2\] has shape \(3, 3\) but parameter 2 has shape \(4, 8\)"
    ):
        hvp(loss_fn, params, v)


def test_single_tensor_vector_is_an_error():
    loss_fn, params = _simple()
    with pytest.raises(ValueError, match="single tensor"):
        hvp(loss_fn, params, torch.ones(3))


def test_non_scalar_loss_is_an_error():
    model, _, x, y = _mlp()
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(reduction="none"), x, y)
    with pytest.raises(
        ValueError, match=r"the loss must be a scalar, got a tensor of shape \(10,\)"
    ):
        hvp(loss_fn, params, [torch.ones_like(p) for p in params])


def test_nan_loss_is_an_error():
    model, crit, x, y = _mlp()
    x = x.clone()
    x[0, 0] = float("nan")
    loss_fn, params = functional_loss(model, crit, x, y)
    with pytest.raises(NonFiniteLossError, match="the loss is not finite: nan"):
        hvp(loss_fn, params, [torch.ones_like(p) for p in params])


def test_inf_loss_is_an_error():
    params = (torch.ones(2, dtype=torch.float64),)
    with pytest.raises(NonFiniteLossError, match="the loss is not finite: inf"):
        hvp(lambda ps: (ps[0] / 0.0).sum(), params, [torch.ones(2, dtype=torch.float64)])


def test_no_parameter_requiring_grad_is_an_error():
    model, crit, x, y = _mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="Sequential has no parameter that requires grad"):
        functional_loss(model, crit, x, y)


def test_unknown_backend_and_scheme_are_errors():
    loss_fn, params = _simple()
    v = [torch.ones_like(p) for p in params]
    with pytest.raises(ValueError, match="Invalid HVP backend: 'pearlmutter'"):
        hvp(loss_fn, params, v, backend="pearlmutter")
    with pytest.raises(ValueError, match="Invalid finite-difference scheme: 'backward'"):
        hvp(loss_fn, params, v, backend="finite-difference", scheme="backward")
    with pytest.raises(ValueError, match="Invalid finite-difference step: h=0"):
        hvp(loss_fn, params, v, backend="finite-difference", h=0)


def test_curvature_never_changes_batch_norm_statistics_and_forward_mode_works():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ELU(), nn.Linear(5, 2)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 2, (8,))
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    v = tuple(torch.randn_like(p) for p in params)
    stats = {n: b.clone() for n, b in model.named_buffers()}
    # torch.func.hessian is off by a few percent through training-mode batch norm in
    # torch 2.13; torch.autograd.functional.hessian (double backward) is the oracle here.
    flat = tl.flatten(params).detach()
    H = torch.autograd.functional.hessian(lambda w: loss_fn(tl.unflatten(w, params)), flat)
    for backend in ["autograd", "forward", "complex-step"]:
        assert (
            _rel(tl.flatten(hvp(loss_fn, params, v, backend=backend)), H @ tl.flatten(v)) <= 1e-10
        )
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())
