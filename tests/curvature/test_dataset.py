"""DatasetHessianOperator against the dense Hessian of the full-data mean loss."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secondorder import tensorlist as tl
from secondorder.curvature import (
    DatasetHessianOperator,
    batch_mean,
    eigenvalues,
    functional_loss,
    gradient,
    hessian,
)
from secondorder.errors import DataFormatError

DT = torch.float64


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 3)).to(DT)
    x, y = torch.randn(11, 3, dtype=DT), torch.randint(0, 3, (11,))
    return model, x, y


def test_equals_dense_full_data_hessian_with_uneven_last_batch():
    model, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # batches of 4, 4, 3
    assert [len(b[1]) for b in loader] == [4, 4, 3]
    op = DatasetHessianOperator(model, nn.CrossEntropyLoss(), loader)
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    dense = hessian(loss_fn, params)
    torch.testing.assert_close(op.to_dense(), dense, atol=1e-12, rtol=0)
    # An unweighted mean of the batch Hessians would be wrong: check that it differs.
    per_batch = [
        hessian(functional_loss(model, nn.CrossEntropyLoss(), xb, yb)[0], params)
        for xb, yb in loader
    ]
    assert (torch.stack(per_batch).mean(0) - dense).abs().max() > 1e-4


def test_loss_and_gradient_equal_full_data_values():
    model, x, y = _problem()
    loader = [(x[:5], y[:5]), (x[5:7], y[5:7]), (x[7:], y[7:])]
    op = DatasetHessianOperator(model, nn.CrossEntropyLoss(), loader)
    loss, grads = op.loss_and_gradient()
    loss_ref, grads_ref = gradient(*functional_loss(model, nn.CrossEntropyLoss(), x, y))
    torch.testing.assert_close(loss, loss_ref, atol=1e-14, rtol=0)
    torch.testing.assert_close(grads, grads_ref, atol=1e-14, rtol=0)
    assert all(g.grad_fn is None for g in grads)


def test_products_follow_the_model_and_work_with_eigenvalues():
    model, x, y = _problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    op = DatasetHessianOperator(model, nn.CrossEntropyLoss(), loader)
    with torch.no_grad():
        model[0].weight.add_(0.5)  # the operator is at the model's *current* parameters
    loss_fn, params = functional_loss(model, nn.CrossEntropyLoss(), x, y)
    dense = hessian(loss_fn, params)
    top = eigenvalues(op, k=2, num_steps=op.dim, tol=0)
    torch.testing.assert_close(top, torch.linalg.eigvalsh(dense).flip(0)[:2], rtol=1e-8, atol=0)
    v = tuple(torch.randn_like(p) for p in params)
    hv = op.matvec(v)
    torch.testing.assert_close(tl.flatten(hv), dense @ tl.flatten(v), atol=1e-12, rtol=0)
    assert all(h.grad_fn is None for h in hv)  # no graph survives a product


def test_batch_mean_weights_by_batch_size():
    data = [(torch.ones(3, 1), torch.zeros(3)), (torch.ones(1, 1), torch.zeros(1))]
    values = iter([torch.tensor(2.0), torch.tensor(6.0)])
    (mean,) = batch_mean(data, lambda x, y: (next(values),))
    assert float(mean) == pytest.approx((3 * 2.0 + 1 * 6.0) / 4)


def test_bad_data():
    model, x, y = _problem()
    op = DatasetHessianOperator(model, nn.CrossEntropyLoss(), [x])
    with pytest.raises(DataFormatError, match="batch 0 is a Tensor; expected an"):
        op.loss_and_gradient()
    with pytest.raises(DataFormatError, match="yielded no samples"):
        DatasetHessianOperator(model, nn.CrossEntropyLoss(), []).loss_and_gradient()
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        DatasetHessianOperator(frozen, nn.MSELoss(), [])
