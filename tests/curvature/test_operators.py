"""CurvatureOperator and HessianOperator against dense float64 Hessians and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature.functional import functional_loss
from secondorder.curvature.operators import CurvatureOperator, HessianOperator
from secondorder.errors import NonFiniteLossError

TOL = 1e-10


def _mlp_loss():
    """Tanh MLP 3-4-2 with cross-entropy in float64: ``(loss_fn, params)``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    return functional_loss(model, nn.CrossEntropyLoss(), x, y)


def _dense_hessian(loss_fn, params) -> torch.Tensor:
    """The oracle: ``torch.autograd.functional.hessian`` of the flattened loss."""
    flat = tl.flatten(params).detach()
    return torch.autograd.functional.hessian(lambda v: loss_fn(tl.unflatten(v, params)), flat)


def test_hessian_operator_matches_the_dense_hessian():
    loss_fn, params = _mlp_loss()
    op = HessianOperator(loss_fn, params)
    oracle = _dense_hessian(loss_fn, params)
    assert op.dim == 26 and op.shape == (26, 26)
    assert op.to_dense().shape == (26, 26)
    assert torch.allclose(op.to_dense(), oracle, rtol=0, atol=TOL)
    assert oracle.abs().max() > 1e-2  # not trivially zero
    assert torch.allclose(op.loss, loss_fn(params).detach(), rtol=0, atol=1e-14)
    grads = torch.autograd.grad(loss_fn(params), params)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-14)
               for a, b in zip(op.gradient, grads, strict=True))


def test_matvec_follows_the_input_format_and_counts():
    loss_fn, params = _mlp_loss()
    op = HessianOperator(loss_fn, params)
    calls = []
    op.on_product = lambda: calls.append(1)
    oracle = _dense_hessian(loss_fn, params)
    v = torch.randn(op.dim, dtype=torch.float64)
    expected = oracle @ v

    as_tuple = op @ tl.unflatten(v, params)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(params)
    assert torch.allclose(tl.flatten(as_tuple), expected, rtol=0, atol=TOL)

    as_flat = op.matvec(v)
    assert as_flat.shape == (op.dim,)
    assert torch.allclose(as_flat, expected, rtol=0, atol=TOL)

    as_list = op.matvec(list(tl.unflatten(v, params)))
    assert torch.allclose(tl.flatten(as_list), expected, rtol=0, atol=TOL)

    as_numpy = op.matvec(v.numpy())
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float64
    np.testing.assert_allclose(as_numpy, expected.numpy(), rtol=0, atol=TOL)
    as_numpy32 = op.matvec(v.numpy().astype(np.float32))
    assert as_numpy32.dtype == np.float32

    assert op.num_products == 5 and len(calls) == 5


def test_to_scipy_is_a_linear_operator_with_the_hessian_spectrum():
    loss_fn, params = _mlp_loss()
    op = HessianOperator(loss_fn, params)
    oracle = _dense_hessian(loss_fn, params).numpy()
    lin = op.to_scipy()
    assert isinstance(lin, spla.LinearOperator)
    assert lin.shape == (26, 26) and lin.dtype == np.float64
    v = np.random.default_rng(0).standard_normal(26)
    np.testing.assert_allclose(lin @ v, oracle @ v, rtol=0, atol=TOL)
    np.testing.assert_allclose(lin.rmatvec(v), oracle.T @ v, rtol=0, atol=TOL)
    top = spla.eigsh(lin, k=2, which="LA", return_eigenvectors=False)
    exact = np.linalg.eigvalsh(oracle)
    np.testing.assert_allclose(np.sort(top), exact[-2:], rtol=1e-8, atol=1e-12)


def test_from_gradient_wraps_an_existing_graph():
    loss_fn, params = _mlp_loss()
    xs = tuple(p.detach().requires_grad_(True) for p in params)
    loss = loss_fn(xs)
    grads = torch.autograd.grad(loss, xs, create_graph=True)
    op = HessianOperator.from_gradient(xs, grads, loss)
    assert torch.allclose(op.to_dense(), _dense_hessian(loss_fn, params), rtol=0, atol=TOL)
    assert op.loss.requires_grad is False
    assert HessianOperator.from_gradient(xs, grads).loss is None


def test_parameters_with_constant_or_no_gradient_have_zero_rows():
    # f(a, b, c) = a^T A a + 3 sum(b); c unused: b has a constant gradient, c none.
    a_mat = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    params = [torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
              torch.ones(1, dtype=torch.float64)]

    def loss_fn(ps):
        a, b, _ = ps
        return a @ a_mat @ a + 3.0 * b.sum()

    op = HessianOperator(loss_fn, params)
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected[:2, :2] = 2.0 * a_mat
    assert torch.equal(op.to_dense(), expected)
    assert torch.equal(op.gradient[1], torch.full((3,), 3.0, dtype=torch.float64))
    assert torch.equal(op.gradient[2], torch.zeros(1, dtype=torch.float64))

    linear = HessianOperator(lambda ps: 3.0 * ps[0].sum(), [torch.ones(2)])
    assert torch.equal(linear.matvec(torch.ones(2)), torch.zeros(2))


def test_free_releases_the_graph():
    loss_fn, params = _mlp_loss()
    op = HessianOperator(loss_fn, params)
    op.free()
    with pytest.raises(RuntimeError, match="graph has been freed"):
        op.matvec(torch.ones(op.dim, dtype=torch.float64))


def test_bad_inputs_raise_clear_errors():
    loss_fn, params = _mlp_loss()
    with pytest.raises(ValueError, match=r"got a single tensor; wrap it: \[tensor\]"):
        HessianOperator(loss_fn, params[0])
    with pytest.raises(ValueError, match="params is empty"):
        HessianOperator(loss_fn, [])
    with pytest.raises(ValueError, match=r"must be a scalar, got a tensor of shape \(2,\)"):
        HessianOperator(lambda ps: ps[0] * 2.0, [torch.ones(2)])
    with pytest.raises(NonFiniteLossError, match="the loss is not finite: nan"):
        HessianOperator(lambda ps: (ps[0] * float("nan")).sum(), [torch.ones(2)])
    op = HessianOperator(loss_fn, params)
    with pytest.raises(ValueError, match=r"a 1-D tensor with 26 entries, got shape \(25,\)"):
        op.matvec(torch.ones(25, dtype=torch.float64))
    wrong = [torch.ones(1, dtype=torch.float64)] + list(tl.zeros_like(params))[1:]
    with pytest.raises(ValueError, match=r"vec\[0\] has shape \(1,\) but parameter 0 has shape"):
        op.matvec(wrong)
    with pytest.raises(ValueError, match="vec has 1 tensors but there are 4 parameters"):
        op.matvec([params[0]])
    assert op.num_products == 0  # rejected products are not counted


def test_the_base_class_needs_a_product():
    op = CurvatureOperator([torch.zeros(2)])
    with pytest.raises(NotImplementedError):
        op.matvec(torch.ones(2))
