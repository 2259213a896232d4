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
