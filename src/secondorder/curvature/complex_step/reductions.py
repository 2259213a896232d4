"""Reductions and normalizations: max/min at the real part's arg-extreme, softmax and
``logsumexp`` shifted by the real part's max, batch/layer/group norm with the analytic
variance ``mean((x - mu)^2)`` (no conjugate)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from secondorder.curvature.complex_step.arguments import real_part
from secondorder.curvature.complex_step.elementwise import maximum, minimum

__all__ = ["RULES", "log_softmax", "softmax"]


def _select(input: Any, dim: Any, keepdim: bool, largest: bool) -> tuple[Any, Tensor]:
    """Values of ``input`` at the real part's arg-max/min over ``dim`` (int or tuple)."""
    r = real_part(input)
    pick = torch.argmax if largest else torch.argmin
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        idx = pick(r.reshape(-1))
        vals = input.reshape(-1).gather(0, idx.reshape(1)).reshape(())
        return vals, idx
    if isinstance(dim, int):
        idx = pick(r, dim, keepdim=True)
        vals = input.gather(dim, idx)
        if not keepdim:
            vals, idx = vals.squeeze(dim), idx.squeeze(dim)
        return vals, idx
    dims = sorted(d % r.dim() for d in dim)
    rest = [d for d in range(r.dim()) if d not in dims]
    perm = rest + dims
    flat_shape = [r.shape[d] for d in rest] + [-1]
    idx = pick(r.permute(perm).reshape(flat_shape), -1, keepdim=True)
    vals = input.permute(perm).reshape(flat_shape).gather(-1, idx).squeeze(-1)
    if keepdim:
        for d in dims:
            vals = vals.unsqueeze(d)
    return vals, idx


def _max_min(largest: bool, namedtuple: Callable) -> Callable:
    def rule(input: Any, dim: Any = None, keepdim: bool = False, **kwargs: Any) -> Any:
        if isinstance(dim, (Tensor, float, complex)) and not isinstance(dim, bool):
            return maximum(input, dim) if largest else minimum(input, dim)
        if "other" in kwargs:
            other = kwargs["other"]
            return maximum(input, other) if largest else minimum(input, other)
        keepdim = kwargs.get("keepdim", keepdim)
        if dim is None:
            return _select(input, None, False, largest)[0]
        vals, idx = _select(input, dim, keepdim, largest)
        return namedtuple((vals, idx))

    return rule


def _amax_amin(largest: bool) -> Callable:
    def rule(input: Any, dim: Any = (), keepdim: bool = False) -> Any:
        return _select(input, dim, keepdim, largest)[0]

    return rule


def _shift(input: Any, dim: int) -> Tensor:
    """The real part's max over ``dim`` (keepdim), detached; ``0`` where it is not finite."""
    m = real_part(input).amax(dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _legacy_dim(input: Any, dim: Any) -> int:
    if dim is None:
        return 0 if input.dim() in (0, 1, 3) else 1
    return dim


def softmax(input: Any, dim: Any = None, *args: Any, **kwargs: Any) -> Any:
    dim = _legacy_dim(input, dim)
    e = torch.exp(input - _shift(input, dim))
    return e / e.sum(dim, keepdim=True)


def log_softmax(input: Any, dim: Any = None, *args: Any, **kwargs: Any) -> Any:
    dim = _legacy_dim(input, dim)
    s = input - _shift(input, dim)
    return s - torch.log(torch.exp(s).sum(dim, keepdim=True))


def _logsumexp(input: Any, dim: Any, keepdim: bool = False) -> Any:
    dims = [dim] if isinstance(dim, int) else list(dim)
    m = real_part(input).amax(dims, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    out = torch.log(torch.exp(input - m).sum(dims, keepdim=True)) + m
    if not keepdim:
        for d in sorted((d % input.dim() for d in dims), reverse=True):
            out = out.squeeze(d)
    return out


def _normalize(d: Any, var: Any, eps: float) -> Any:
    return d / torch.sqrt(var + eps)


def _batch_norm(input: Any, running_mean: Any, running_var: Any, weight: Any = None,
                bias: Any = None, training: bool = False, momentum: float = 0.1,
                eps: float = 1e-5, *args: Any) -> Any:
    dims = [0] + list(range(2, input.dim()))
    shape = [1, input.shape[1]] + [1] * (input.dim() - 2)
    if training or running_mean is None:
        d = input - input.mean(dims, keepdim=True)
        var = (d * d).mean(dims, keepdim=True)  # analytic variance: no conjugate
    else:
        d = input - running_mean.reshape(shape)
        var = running_var.reshape(shape)
    out = _normalize(d, var, eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def _layer_norm(input: Any, normalized_shape: Sequence[int], weight: Any = None,
                bias: Any = None, eps: float = 1e-5) -> Any:
    dims = list(range(input.dim() - len(normalized_shape), input.dim()))
    d = input - input.mean(dims, keepdim=True)
    out = _normalize(d, (d * d).mean(dims, keepdim=True), eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _group_norm(input: Any, num_groups: int, weight: Any = None, bias: Any = None,
                eps: float = 1e-5) -> Any:
    n, c = input.shape[0], input.shape[1]
    grouped = input.reshape(n, num_groups, -1)
    d = grouped - grouped.mean(-1, keepdim=True)
    out = _normalize(d, (d * d).mean(-1, keepdim=True), eps).reshape(input.shape)
    shape = [1, c] + [1] * (input.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


#: Reduction and normalization rules, keyed by op name.
RULES: dict[str, Callable] = {
    "max": _max_min(True, torch.return_types.max),
    "min": _max_min(False, torch.return_types.min),
    "amax": _amax_amin(True),
    "amin": _amax_amin(False),
    "softmax": softmax,
    "log_softmax": log_softmax,
    "logsumexp": _logsumexp,
    "batch_norm": _batch_norm,
    "layer_norm": _layer_norm,
    "group_norm": _group_norm,
}
