"""Attention: ``scaled_dot_product_attention`` from analytic products and the softmax rule.

PyTorch's fused attention kernels have no complex version (and their backward is not
differentiable twice). The rule is the math kernel,

    ``softmax(Q K^T * scale + bias) V``,

with ``bias`` the causal, boolean or float mask: finite float entries are added, and
``-inf`` where attention is not allowed is put in with ``where`` (so that masked scores
carry no imaginary part and no ``inf * 0``).
The softmax is :func:`~.reductions.softmax`: shifted by the real part's row max, the
branch the real function takes. Dropout is the identity, as for ``nn.Dropout``
(evaluation semantics). The same rule runs on bicomplex numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from secondorder.curvature.complex_step.reductions import softmax

__all__ = ["RULES"]


def _scaled_dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Any:
    """``F.scaled_dot_product_attention`` as the math kernel (module docstring)."""
    n_query, n_key = query.shape[-2], key.shape[-2]
    if enable_gqa and key.dim() >= 3 and query.shape[-3] != key.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    allowed = None
    if is_causal:
        allowed = torch.ones(n_query, n_key, dtype=torch.bool, device=scores.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            # A float mask is a constant. torch converts masks to the activations' dtype,
            # complex here, and complex arithmetic on -inf gives NaN parts (inf * 0 in
            # (1 + 0i)(-inf + 0i)): keep its real part, add the finite entries and block
            # the -inf ones with ``where``.
            bias = attn_mask.real if attn_mask.is_complex() else attn_mask
            blocked = torch.isneginf(bias)
            scores = scores + torch.where(blocked, 0.0, bias)
            attn_mask = ~blocked
        allowed = attn_mask if allowed is None else allowed & attn_mask
    if allowed is not None:
        scores = torch.where(allowed, scores, float("-inf"))
    return torch.matmul(softmax(scores, -1), value)


#: Attention rules, keyed by op name.
RULES: dict[str, Callable] = {"scaled_dot_product_attention": _scaled_dot_product_attention}
