"""Elementwise rules: activations, clamps, comparisons, with branches by the real part.

Each rule takes the torch function's own arguments and uses only analytic torch ops (add,
mul, div, exp, log, log1p, expm1, sqrt, where on a real mask), so the same rule also runs on
bicomplex numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from secondorder.curvature.complex_step.arguments import real_part
from secondorder.curvature.complex_step.first_order import (
    FirstOrder,
    first_order_applies,
    gelu_derivs,
    sigmoid_derivs,
    tanh_derivs,
)
from secondorder.curvature.complex_step.scope import unsupported

__all__ = ["RULES", "absolute", "clamp", "maximum", "minimum", "softplus_core"]


def _relu(input: Any, *args: Any, **kwargs: Any) -> Any:
    return torch.where(real_part(input) > 0, input, 0.0)


def _leaky_relu(input: Any, negative_slope: float = 0.01, inplace: bool = False) -> Any:
    return torch.where(real_part(input) > 0, input, input * negative_slope)


def _elu(input: Any, alpha: float = 1.0, inplace: bool = False) -> Any:
    pos = real_part(input) > 0
    safe = torch.where(pos, 0.0, input)  # keeps exp of the unused branch finite
    return torch.where(pos, input, torch.expm1(safe) * alpha)


def _celu(input: Any, alpha: float = 1.0, inplace: bool = False) -> Any:
    return _elu(input / alpha, 1.0) * alpha


def _selu(input: Any, inplace: bool = False) -> Any:
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    return _elu(input, alpha) * scale


def softplus_core(x: Any) -> Any:
    """``log(1 + exp(x))`` = ``max(x, 0) + log1p(exp(-|x|))``, branches by ``Re x``."""
    pos = real_part(x) > 0
    return torch.where(pos, x, 0.0) + torch.log1p(torch.exp(-torch.where(pos, x, -x)))


def _softplus(input: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    x = input * beta
    out = softplus_core(x) / beta
    return torch.where(real_part(x) > threshold, input, out)


def _sigmoid(input: Any, *args: Any, **kwargs: Any) -> Any:
    if first_order_applies(input):
        return FirstOrder.apply(input, sigmoid_derivs)
    pos = real_part(input) >= 0
    e = torch.exp(-torch.where(pos, input, -input))  # exp(-|x|), never overflows
    return torch.where(pos, 1.0 / (1.0 + e), e / (1.0 + e))


def _tanh(input: Any) -> Any:
    if first_order_applies(input):
        return FirstOrder.apply(input, tanh_derivs)
    return torch.tanh(input)


def _logsigmoid(input: Any) -> Any:
    return -softplus_core(-input)


def _silu(input: Any, inplace: bool = False) -> Any:
    return input * _sigmoid(input)


def _gelu(input: Any, approximate: str = "none") -> Any:
    """GELU. The exact form ``x Phi(x)`` needs ``erf``, which has no complex kernel: it runs
    to first order (:class:`~.first_order.FirstOrder`, exact to rounding at the default
    steps); the tanh form is a composition of analytic ops."""
    if approximate != "tanh":
        if first_order_applies(input):
            return FirstOrder.apply(input, gelu_derivs)
        raise unsupported("gelu", "exact GELU needs erf, which has no complex kernel, and "
                                  "runs only at steps h <= first_order_step(dtype) (the "
                                  "defaults); use a smaller h or nn.GELU(approximate='tanh')")
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * input * (1.0 + torch.tanh(c * (input + 0.044715 * input * input * input)))


def _mish(input: Any, inplace: bool = False) -> Any:
    return input * torch.tanh(softplus_core(input))


def clamp(input: Any, min: Any = None, max: Any = None) -> Any:
    r = real_part(input)
    out = input
    if min is not None:
        out = torch.where(r < real_part(min), min, out)
    if max is not None:
        out = torch.where(r > real_part(max), max, out)
    return out


def _clamp_min(input: Any, min: Any) -> Any:
    return clamp(input, min=min)


def _clamp_max(input: Any, max: Any) -> Any:
    return clamp(input, max=max)


def _hardtanh(
    input: Any, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> Any:
    return clamp(input, min_val, max_val)


def _relu6(input: Any, inplace: bool = False) -> Any:
    return clamp(input, 0.0, 6.0)


def absolute(input: Any) -> Any:
    return torch.where(real_part(input) >= 0, input, -input)


def _sign(input: Any) -> Any:
    return torch.sign(real_part(input))


def _compare(name: str) -> Callable:
    real_op = getattr(torch, name)

    def rule(input: Any, other: Any, *args: Any, **kwargs: Any) -> Any:
        return real_op(real_part(input), real_part(other))

    return rule


def _logical(name: str) -> Callable:
    """``logical_not/and/or/xor``: boolean results of the real parts (the real function's
    values), never of the imaginary parts."""
    real_op = getattr(torch, name)

    def rule(*args: Any, **kwargs: Any) -> Any:
        return real_op(*(real_part(a) for a in args), **kwargs)

    return rule


def _arg_extreme(name: str) -> Callable:
    real_op = getattr(torch, name)

    def rule(input: Any, *args: Any, **kwargs: Any) -> Any:
        return real_op(real_part(input), *args, **kwargs)

    return rule


def maximum(input: Any, other: Any) -> Any:
    return torch.where(real_part(input) >= real_part(other), input, other)


def minimum(input: Any, other: Any) -> Any:
    return torch.where(real_part(input) <= real_part(other), input, other)


#: Elementwise rules, keyed by op name.
RULES: dict[str, Callable] = {
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "celu": _celu,
    "selu": _selu,
    "softplus": _softplus,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "logsigmoid": _logsigmoid,
    "silu": _silu,
    "gelu": _gelu,
    "mish": _mish,
    "hardtanh": _hardtanh,
    "relu6": _relu6,
    "clamp": clamp,
    "clip": clamp,
    "clamp_min": _clamp_min,
    "clamp_max": _clamp_max,
    "abs": absolute,
    "absolute": absolute,
    "sign": _sign,
    "maximum": maximum,
    "minimum": minimum,
    "fmax": maximum,
    "fmin": minimum,
    "argmax": _arg_extreme("argmax"),
    "argmin": _arg_extreme("argmin"),
}
for _cmp in ("gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal",
             "less_equal", "not_equal"):
    RULES[_cmp] = _compare(_cmp)
for _name in ("logical_not", "logical_and", "logical_or", "logical_xor"):
    RULES[_name] = _logical(_name)
for _dunder, _cmp in (("__gt__", "gt"), ("__lt__", "lt"), ("__ge__", "ge"), ("__le__", "le"),
                      ("__eq__", "eq"), ("__ne__", "ne")):
    RULES[_dunder] = _compare(_cmp)
