"""AdaHessian's spatial average: |D| (reference code) vs signed D ([Filippova] Alg. 2)."""

from __future__ import annotations

import pytest
import torch

from secondorder.optim import AdaHessian
from secondorder.optim.adahessian import signed_spatial_average

DT = torch.float64


def _first_step(mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # f(w) = 1/2 sum h w^2 on a (1, 1, 2, 2) kernel: the Hessian is diag(h), so every
    # Rademacher probe gives z * (H z) = h exactly, and the first AdaHessian step is
    # w - lr * g / (|D^(s)| + eps) (bias corrections cancel at t = 1).
    h = torch.tensor([4.0, -2.0, 1.0, 1.0], dtype=DT).reshape(1, 1, 2, 2)
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=DT).reshape(1, 1, 2, 2))
    w0 = w.detach().clone()
    opt = AdaHessian([w], lr=0.1, eps=1e-12, spatial_average=mode,
                     generator=torch.Generator().manual_seed(0))
    opt.step(lambda: 0.5 * (h * w * w).sum())
    return w0, w.detach(), h


@pytest.mark.parametrize("mode", ["abs", "signed"])
def test_first_step_uses_the_chosen_block_average(mode):
    w0, w1, h = _first_step(mode)
    block = h.abs().mean() if mode == "abs" else h.mean()  # 2.0 vs 1.0
    expected = w0 - 0.1 * (h * w0) / block.abs()
    torch.testing.assert_close(w1, expected, rtol=0, atol=1e-12)


def test_signed_average_cancels_and_abs_does_not():
    d = [torch.tensor([[1.0, -3.0, 2.0, 4.0]], dtype=DT)]
    torch.testing.assert_close(signed_spatial_average(d, 2)[0],
                               torch.tensor([[-1.0, -1.0, 3.0, 3.0]], dtype=DT))
    assert torch.equal(signed_spatial_average(d)[0], d[0])


def test_bad_spatial_average_is_named():
    with pytest.raises(ValueError, match="Invalid spatial_average: 'mean'"):
        AdaHessian([torch.nn.Parameter(torch.zeros(2))], spatial_average="mean")
