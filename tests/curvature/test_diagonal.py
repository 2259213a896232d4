"""Hessian diagonal: exact vs dense, Hutchinson's 1/sqrt(samples) error, spatial averaging."""

import math

import pytest
import torch
from torch import nn

from secondorder import tensorlist as tl
from secondorder.curvature import functional_loss, hessian, hessian_diagonal, spatially_averaged
from secondorder.curvature.operators import CurvatureOperator, HessianOperator

DT = torch.float64


def _mlp_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 3)).to(DT)
    x, y = torch.randn(16, 3, dtype=DT), torch.randint(0, 3, (16,))
    return functional_loss(model, nn.CrossEntropyLoss(), x, y)


def _conv_loss():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2)).to(DT)
    x, y = torch.randn(4, 2, 4, 4, dtype=DT), torch.randint(0, 2, (4,))
    return functional_loss(model, nn.CrossEntropyLoss(), x, y)


def test_exact_diagonal_equals_dense_diagonal():
    loss_fn, params = _mlp_loss()
    d = hessian_diagonal(loss_fn, params, method="exact")
    torch.testing.assert_close(
        tl.flatten(d), torch.diagonal(hessian(loss_fn, params)), atol=1e-12, rtol=0
    )


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    w = torch.tensor([1.0, -2.0, 3.0], dtype=DT)
    d = hessian_diagonal(lambda ps: (w * ps[0] ** 2).sum() / 2, [torch.ones(3, dtype=DT)])
    torch.testing.assert_close(d[0], w, atol=1e-14, rtol=0)


class _Dense(CurvatureOperator):
    """A matrix as an operator on one flat parameter: cheap products for statistics."""

    def __init__(self, a):
        super().__init__([torch.zeros(a.shape[0], dtype=a.dtype)])
        self.a = a

    def _matvec(self, vec):
        return (self.a @ vec[0],)


def test_hutchinson_error_falls_like_inverse_sqrt_samples():
    loss_fn, params = _mlp_loss()
    dense = hessian(loss_fn, params)
    op = _Dense(dense)
    g = torch.Generator().manual_seed(123)
    counts = [4, 16, 64, 256, 1024]
    errors = []
    for n in counts:
        # RMS error over a few repeats, so the fit is not at the mercy of one draw.
        sq = [
            (hessian_diagonal(op, num_samples=n, generator=g)[0] - dense.diagonal()).pow(2).sum()
            for _ in range(8)
        ]
        errors.append(math.sqrt(float(torch.stack(sq).mean())))
    x = torch.log(torch.tensor(counts, dtype=DT))
    y = torch.log(torch.tensor(errors, dtype=DT))
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert -0.7 <= slope <= -0.3, (slope, errors)
    # The variance of one sample's entry i is sum_{j != i} H_ij^2 (module docstring).
    off = dense - torch.diag(dense.diagonal())
    predicted = math.sqrt(float(off.pow(2).sum()) / 256)
    assert 0.7 * predicted < errors[3] < 1.3 * predicted


def test_hutchinson_on_a_loss_function_is_unbiased():
    loss_fn, params = _mlp_loss()
    exact = tl.flatten(hessian_diagonal(loss_fn, params, method="exact"))
    off = hessian(loss_fn, params)
    off = off - torch.diag(off.diagonal())
    g = torch.Generator().manual_seed(0)
    est = tl.flatten(hessian_diagonal(loss_fn, params, num_samples=64, generator=g))
    # Each entry's standard error is sqrt(sum_{j != i} H_ij^2 / 64); allow 4 of them.
    tol = 4 * (off.pow(2).sum(1) / 64).sqrt() + 1e-12
    assert bool(((est - exact).abs() <= tol).all())


def test_hutchinson_is_reproducible_with_a_generator():
    loss_fn, params = _mlp_loss()
    a = hessian_diagonal(loss_fn, params, num_samples=3, generator=torch.Generator().manual_seed(5))
    b = hessian_diagonal(loss_fn, params, num_samples=3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_spatial_average_numbers():
    # One 3x3 filter with entries -4..4 (|.| mean 20/9) and one with 0..8 (mean 4).
    kernel = torch.stack([torch.arange(-4.0, 5.0), torch.arange(0.0, 9.0)]).reshape(2, 1, 3, 3)
    bias = torch.tensor([1.0, -3.0, 2.0, 4.0, -6.0, 5.0, 7.0])
    avg_k, avg_b = spatially_averaged([kernel, bias], block_size=3)
    torch.testing.assert_close(avg_k[0, 0], torch.full((3, 3), 20.0 / 9.0))
    torch.testing.assert_close(avg_k[1, 0], torch.full((3, 3), 4.0))
    torch.testing.assert_close(avg_b, torch.tensor([2.0, 2.0, 2.0, 5.0, 5.0, 5.0, 7.0]))
    # Without block_size, non-convolution tensors are only made absolute.
    torch.testing.assert_close(spatially_averaged([bias])[0], bias.abs())


def test_spatial_average_of_a_conv_kernel_diagonal():
    loss_fn, params = _conv_loss()
    exact = hessian_diagonal(loss_fn, params, method="exact")
    avg = hessian_diagonal(loss_fn, params, method="exact", spatial_average=True, block_size=4)
    kernel = exact[0].abs()  # (3, 2, 3, 3)
    for o in range(3):
        for i in range(2):
            torch.testing.assert_close(
                avg[0][o, i], kernel[o, i].mean().expand(3, 3), atol=1e-14, rtol=0
            )
    lin_w = exact[2].abs()  # (2, 12): blocks of 4 along the last dim
    torch.testing.assert_close(
        avg[2], lin_w.reshape(2, 3, 4).mean(-1, keepdim=True).expand(2, 3, 4).reshape(2, 12)
    )
    assert bool((avg[0] > 0).all())


def test_accepts_an_operator():
    loss_fn, params = _mlp_loss()
    op = HessianOperator(loss_fn, params)
    torch.testing.assert_close(
        tl.flatten(hessian_diagonal(op, method="exact")), torch.diagonal(op.to_dense())
    )


def test_bad_arguments():
    loss_fn, params = _mlp_loss()
    with pytest.raises(ValueError, match="Invalid method: 'lanczos'"):
        hessian_diagonal(loss_fn, params, method="lanczos")
    with pytest.raises(ValueError, match="Invalid num_samples: 0"):
        hessian_diagonal(loss_fn, params, num_samples=0)
    with pytest.raises(ValueError, match="Invalid block_size: 0"):
        hessian_diagonal(loss_fn, params, spatial_average=True, block_size=0)
    with pytest.raises(ValueError, match="params is required"):
        hessian_diagonal(loss_fn)
    with pytest.raises(ValueError, match=r"38 parameters, more than max_params=10"):
        hessian_diagonal(loss_fn, params, method="exact", max_params=10)
