"""[Veitch] per-layer Hessian back-propagation against the dense Hessian's diagonal blocks."""

import pytest
import torch
from torch import nn

from secondorder.curvature import functional_loss, hessian, layer_hessians

DT = torch.float64


def _mlp(widths, act, bias=True):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(DT)


def _dense_blocks(model, x, y):
    def ce(logits, targets):
        if targets.dtype.is_floating_point:  # probability targets
            return -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
        return nn.functional.cross_entropy(logits, targets)

    loss_fn, params = functional_loss(model, ce, x, y)
    h = hessian(loss_fn, params)
    blocks, start = [], 0
    for m in model:
        if isinstance(m, nn.Linear):
            n = sum(p.numel() for p in m.parameters())
            blocks.append(h[start : start + n, start : start + n])
            start += n
    return blocks


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
@pytest.mark.parametrize("widths", [(3, 4, 3), (3, 4, 5, 2)], ids=["1-hidden", "2-hidden"])
def test_blocks_equal_dense_hessian_diagonal_blocks(act, widths):
    torch.manual_seed(0)
    model = _mlp(widths, act)
    x = 1.5 * torch.randn(7, widths[0], dtype=DT)
    y = torch.randint(0, widths[-1], (7,))
    blocks = layer_hessians(model, x, y)
    expected = _dense_blocks(model, x, y)
    assert len(blocks) == len(widths) - 1
    for b, e in zip(blocks, expected, strict=True):
        assert b.shape == e.shape
        torch.testing.assert_close(b, e, atol=1e-10, rtol=0)


def test_without_bias_and_with_probability_targets():
    torch.manual_seed(1)
    model = _mlp((2, 3, 4, 3), nn.Tanh, bias=False)
    x = torch.randn(5, 2, dtype=DT)
    y = torch.softmax(torch.randn(5, 3, dtype=DT), 1)
    blocks = layer_hessians(model, x, y)
    assert [b.shape[0] for b in blocks] == [6, 12, 12]
    for b, e in zip(blocks, _dense_blocks(model, x, y), strict=True):
        torch.testing.assert_close(b, e, atol=1e-10, rtol=0)


def test_output_layer_block_closed_form():
    # Softmax regression: H_b = sum_i (diag(p_i) - p_i p_i^T) / m ([Veitch] eqs. 80, 83).
    torch.manual_seed(2)
    model = _mlp((2, 3), nn.Tanh)
    x = torch.randn(4, 2, dtype=DT)
    y = torch.tensor([0, 2, 1, 1])
    (block,) = layer_hessians(model, x, y)
    p = torch.softmax(model(x), 1).detach()
    hb = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    torch.testing.assert_close(block[6:, 6:], hb, atol=1e-14, rtol=0)


def test_unsupported_architectures_are_named():
    x, y = torch.randn(4, 3, dtype=DT), torch.tensor([0, 1, 0, 1])
    relu = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(DT)
    with pytest.raises(ValueError, match="module 1 is ReLU, expected nn.Sigmoid or nn.Tanh"):
        layer_hessians(relu, x, y)
    conv = nn.Sequential(nn.Conv1d(1, 1, 2)).to(DT)
    with pytest.raises(ValueError, match="module 0 is Conv1d, expected nn.Linear"):
        layer_hessians(conv, x, y)
    with pytest.raises(ValueError, match="supports nn.Sequential MLPs, got Linear"):
        layer_hessians(nn.Linear(3, 2).to(DT), x, y)
    ends_in_act = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).to(DT)
    with pytest.raises(ValueError, match="end with an nn.Linear producing the logits"):
        layer_hessians(ends_in_act, x, y)
    model = nn.Sequential(nn.Linear(3, 2)).to(DT)
    with pytest.raises(ValueError, match=r"inputs must have shape \(m, 3\)"):
        layer_hessians(model, torch.randn(4, 5, dtype=DT), y)
    with pytest.raises(ValueError, match=r"class-index targets must have shape \(4,\)"):
        layer_hessians(model, x, y[:3])
