"""Every curvature optimizer trains a Transformer classifier with its default settings.

``nn.TransformerEncoder``'s attention dispatches to PyTorch's fused kernel (flash
attention on CPU), which has no double backward: before the optimizers evaluated their
closures under :func:`secondorder.curvature.double_differentiable_attention`, each of these
raised ``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
implemented`` on its first step.
"""

import pytest
import torch
from torch import nn

from secondorder import optim
from secondorder.curvature import GGNOperator

# Loss after STEPS steps / initial loss, measured on CPU (float32, torch 2.13, 1 thread):
# AdaHessian 0.457, AdaptiveCubic 0.263, HessianFree 0.150, LevenbergMarquardt 0.199,
# LSCG 0.888, NewtonCG 0.306, NewtonKrylov 0.406, TrustRegion 0.373. The test asks for 0.75,
# and 0.95 of LSCG: its direction -H^+ g ignores the curvature's sign, and from the 3rd step
# on its backtracking finds no decrease (0.888 after 8 steps as after 4).
STEPS = 5
CURVATURE_OPTIMIZERS = {
    "AdaHessian": 0.75,
    "AdaptiveCubic": 0.75,
    "HessianFree": 0.75,
    "LevenbergMarquardt": 0.75,
    "LSCG": 0.95,
    "NewtonCG": 0.75,
    "NewtonKrylov": 0.75,
    "TrustRegion": 0.75,
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))]


class _Classifier(nn.Module):
    """2 encoder layers, d_model 16, 4 heads, GELU, batch_first; mean-pooled linear head."""

    def __init__(self, d_model: int = 16):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, 4, dim_feedforward=2 * d_model, dropout=0.0,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def _problem(device):
    torch.manual_seed(0)
    model = _Classifier().to(device)
    x = torch.randn(32, 5, 16, device=device)
    y = (x[:, :, 0].sum(1) > 0).long() + (x[:, :, 1].sum(1) > 1).long()  # learnable labels
    return model, x, y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CURVATURE_OPTIMIZERS))
def test_curvature_optimizer_trains_a_transformer_with_defaults(name, device):
    model, x, y = _problem(device)
    per_sample = nn.CrossEntropyLoss(reduction="none")  # HessianFree's default Fisher needs it

    def closure():
        return per_sample(model(x), y)

    kwargs = {}
    if name == "HessianFree":  # its default curvature is the GGN
        kwargs["ggn_closure"] = lambda: GGNOperator.from_model(model, nn.CrossEntropyLoss(), x, y)
    opt = getattr(optim, name)(model.parameters())
    with torch.no_grad():
        start = float(closure().mean())
    for _ in range(STEPS):
        opt.step(closure, **kwargs)
    with torch.no_grad():
        end = float(closure().mean())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert end < CURVATURE_OPTIMIZERS[name] * start, f"{name}: loss {start:.4f} -> {end:.4f}"
    assert opt.counters.hvps > 0  # it did use curvature through the attention
