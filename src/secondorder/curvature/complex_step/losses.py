"""Loss rules: cross-entropy, NLL, MSE, L1, binary cross-entropy (the fused kernels
have no complex version), built from the elementwise and reduction rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from secondorder.curvature.complex_step.arguments import (
    argument,
    legacy_reduction,
    real_part,
    reduce_loss,
)
from secondorder.curvature.complex_step.elementwise import absolute, clamp, softplus_core
from secondorder.curvature.complex_step.reductions import log_softmax
from secondorder.curvature.complex_step.scope import unsupported

__all__ = ["RULES"]


def _nll(logp: Any, target: Tensor, weight: Tensor | None, ignore_index: int,
         reduction: str) -> Any:
    cdim = 1 if logp.dim() >= 2 else 0
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    picked = logp.gather(cdim, t.unsqueeze(cdim)).squeeze(cdim)
    w = valid.to(real_part(logp).dtype)
    if weight is not None:
        w = w * real_part(weight)[t]
    loss = -picked * w
    if reduction == "mean":
        return loss.sum() / w.sum()
    return reduce_loss(loss, reduction, "nll_loss")


def _nll_loss(input: Any, target: Tensor, *args: Any, **kwargs: Any) -> Any:
    weight = argument(args, kwargs, 0, "weight")
    ignore_index = argument(args, kwargs, 2, "ignore_index", -100)
    reduction = legacy_reduction(kwargs, args, 1, 3, 4)
    return _nll(input, target, weight, ignore_index, reduction)


def _cross_entropy(input: Any, target: Tensor, *args: Any, **kwargs: Any) -> Any:
    weight = argument(args, kwargs, 0, "weight")
    ignore_index = argument(args, kwargs, 2, "ignore_index", -100)
    reduction = legacy_reduction(kwargs, args, 1, 3, 4)
    smoothing = argument(args, kwargs, 5, "label_smoothing", 0.0)
    cdim = 1 if input.dim() >= 2 else 0
    logp = log_softmax(input, cdim)
    n_classes = input.shape[cdim]
    if target.is_floating_point() or target.is_complex():
        if smoothing > 0:
            target = target * (1.0 - smoothing) + smoothing / n_classes
        terms = logp * target
        if weight is not None:
            shape = [1] * input.dim()
            shape[cdim] = n_classes
            terms = terms * real_part(weight).reshape(shape)
        loss = -terms.sum(cdim)
        if reduction == "mean":
            return loss.sum() / (input.numel() // n_classes)
        return reduce_loss(loss, reduction, "cross_entropy")
    nll = _nll(logp, target, weight, ignore_index, reduction)
    if smoothing == 0:
        return nll
    if weight is not None:
        raise unsupported("cross_entropy", "label_smoothing together with weight")
    valid = (target != ignore_index).to(real_part(logp).dtype)
    smooth = -logp.mean(cdim) * valid
    if reduction == "mean":
        smooth = smooth.sum() / valid.sum()
    else:
        smooth = reduce_loss(smooth, reduction, "cross_entropy")
    return nll * (1.0 - smoothing) + smooth * smoothing


def _mse_loss(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    reduction = legacy_reduction(kwargs, args, 0, 1, 2)
    d = input - target
    return reduce_loss(d * d, reduction, "mse_loss")


def _l1_loss(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    reduction = legacy_reduction(kwargs, args, 0, 1, 2)
    return reduce_loss(absolute(input - target), reduction, "l1_loss")


def _bce_with_logits(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    weight = argument(args, kwargs, 0, "weight")
    reduction = legacy_reduction(kwargs, args, 1, 2, 3)
    pos_weight = argument(args, kwargs, 4, "pos_weight")
    sp = softplus_core(-input)  # -log sigmoid(x)
    if pos_weight is not None:
        sp = sp * ((pos_weight - 1.0) * target + 1.0)
    loss = (1.0 - target) * input + sp
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction, "binary_cross_entropy_with_logits")


def _bce(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    weight = argument(args, kwargs, 0, "weight")
    reduction = legacy_reduction(kwargs, args, 1, 2, 3)
    log_p = clamp(torch.log(input), min=-100.0)
    log_q = clamp(torch.log(1.0 - input), min=-100.0)
    loss = -(target * log_p + (1.0 - target) * log_q)
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction, "binary_cross_entropy")


#: Loss rules, keyed by op name.
RULES: dict[str, Callable] = {
    "cross_entropy": _cross_entropy,
    "nll_loss": _nll_loss,
    "mse_loss": _mse_loss,
    "l1_loss": _l1_loss,
    "binary_cross_entropy_with_logits": _bce_with_logits,
    "binary_cross_entropy": _bce,
}
