"""Per-sample losses and metrics of the benchmark problems.

Every loss is ``(outputs, targets) -> one loss per sample`` (``reduction="none"``; the
objective is their mean) and every metric ``(outputs, targets) -> 0-dim fraction``. They are
module-level callables, so problems pickle. :class:`Penalized` adapts either to the output
of an :class:`~secondorder.bench.models.L2Penalized` model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from secondorder.bench import models as zoo

__all__ = [
    "cross_entropy",
    "binary_logistic",
    "squared_hinge",
    "reconstruction_mse",
    "objective_value",
    "multiclass_accuracy",
    "binary_accuracy",
    "Penalized",
]



def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample softmax cross-entropy of logits ``(n, K)`` ([Veitch] eq. 21)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def binary_logistic(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample logistic loss of logits ``(n,)`` and labels in {0, 1} ([Veitch] eq. 15)."""
    return F.binary_cross_entropy_with_logits(
        outputs.reshape(-1), targets.to(outputs.dtype), reduction="none"
    )


def squared_hinge(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample squared hinge ``max(0, 1 - s f)^2``, ``s = 2 y - 1`` ([Shen] "Hinge-2")."""
    signs = 2.0 * targets.to(outputs.dtype) - 1.0
    return torch.clamp(1.0 - signs * outputs.reshape(-1), min=0.0) ** 2


def reconstruction_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean squared reconstruction error over the flattened features."""
    diff = outputs.reshape(outputs.shape[0], -1) - targets.reshape(targets.shape[0], -1)
    return (diff * diff).mean(dim=1)


def objective_value(outputs: Tensor, targets: Tensor) -> Tensor:
    """Loss of a deterministic problem: the model already returns the objective per sample."""
    return outputs.reshape(-1)


def multiclass_accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Fraction of samples whose largest logit is the target class ([Veitch] eq. 30)."""
    return (outputs.argmax(dim=1) == targets).float().mean()


def binary_accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Fraction of samples with ``(logit > 0) == label``."""
    return ((outputs.reshape(-1) > 0).long() == targets).float().mean()


class Penalized:
    """Adapt a loss or metric to the output of :class:`~secondorder.bench.models.L2Penalized`.

    As a loss (``add_penalty=True``) it returns ``base(outputs) + penalty`` per sample; as
    a metric it evaluates ``base`` on the outputs without the penalty column.
    """

    def __init__(self, base: Callable[[Tensor, Tensor], Tensor], *, add_penalty: bool) -> None:
        self.base = base
        self.add_penalty = add_penalty

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        out, penalty = zoo.split_penalty(outputs)
        value = self.base(out, targets)
        return value + penalty if self.add_penalty else value

    def __repr__(self) -> str:
        kind = "loss" if self.add_penalty else "metric"
        return f"Penalized({self.base.__name__}, {kind})"

