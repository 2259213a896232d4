"""Small networks shared by the complex-step and v^T H v tests (float32; callers cast)."""

from __future__ import annotations

import torch
from torch import nn


def tanh_mlp():
    """MLP 5-7-3 with tanh and softmax cross-entropy: ``(model, criterion, x, y)``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    return model, nn.CrossEntropyLoss(), torch.randn(10, 5), torch.randint(0, 3, (10,))


def small_cnn():
    """Conv, ReLU, max- and average-pooling, linear, cross-entropy: ``(model, criterion, x, y)``."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    )  # fmt: skip
    return model, nn.CrossEntropyLoss(), torch.randn(6, 2, 8, 8), torch.randint(0, 3, (6,))


class TransformerClassifier(nn.Module):
    """``nn.TransformerEncoder`` (GELU, batch_first, no dropout) then a mean-pooled head.

    Its self-attention runs through ``scaled_dot_product_attention``, whose default CPU
    kernel (flash attention) has no double backward and no forward-mode rule.
    """

    def __init__(self, d_model: int = 16, heads: int = 4, layers: int = 2, classes: int = 3):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, activation="gelu",
            batch_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


class AttentionClassifier(nn.Module):
    """``nn.MultiheadAttention`` used directly (fused SDPA path: ``need_weights=False``)."""

    def __init__(self, d_model: int = 8, heads: int = 2, classes: int = 3, causal: bool = False):
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.head = nn.Linear(d_model, classes)
        self.causal = causal

    def forward(self, x):
        mask = None
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype)
        out, _ = self.attention(x, x, x, need_weights=False, attn_mask=mask,
                                is_causal=self.causal)
        return self.head(out.mean(1))


def transformer_classifier(d_model: int = 16, seq: int = 5, batch: int = 6):
    """A small :class:`TransformerClassifier` problem: ``(model, criterion, x, y)``."""
    torch.manual_seed(2)
    model = TransformerClassifier(d_model)
    x, y = torch.randn(batch, seq, d_model), torch.randint(0, 3, (batch,))
    return model, nn.CrossEntropyLoss(), x, y
