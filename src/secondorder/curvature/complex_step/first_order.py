"""Elementwise functions to first order in the imaginary part, exact below a step.

See :func:`~secondorder.curvature.complex_step.steps.first_order_step` for when dropping
the ``O(h^2)`` terms is exact to rounding.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["FIRST_ORDER", "FirstOrder", "first_order_applies", "gelu_derivs",
           "sigmoid_derivs", "tanh_derivs"]


class _FirstOrderState(threading.local):
    def __init__(self) -> None:
        self.active = False


FIRST_ORDER = _FirstOrderState()


class FirstOrder(torch.autograd.Function):
    """``f(a + i b) = f(a) + i b f'(a)`` in real arithmetic, with the holomorphic backward.

    The backward multiplies the incoming (conjugate Wirtinger) gradient ``G`` by
    ``conj(f'(z)) = f'(a) - i b f''(a)`` up to ``O(b^2)``: ``Re = Re(G) f'(a)`` (the
    ``Im(G) b f''(a)`` term is ``O(h^2)`` relative) and
    ``Im = Im(G) f'(a) - Re(G) b f''(a)``. Autograd of the truncated forward alone would
    miss ``-Re(G) b f''(a)``, an ``O(h)`` term that carries the Hessian.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, derivs: Callable) -> Tensor:  # type: ignore[override]
        b = z.imag
        f, d1, d2 = derivs(z.real)
        ctx.save_for_backward(b, d1, d2)
        return torch.complex(f, b * d1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        b, d1, d2 = ctx.saved_tensors
        gr, gi = grad.real, grad.imag
        return torch.complex(gr * d1, gi * d1 - gr * (b * d2)), None


def first_order_applies(input: Any) -> bool:
    """Whether a rule may use :class:`FirstOrder` on ``input``: a plain complex tensor
    under a :class:`ComplexStepMode` whose step is at most :func:`first_order_step`."""
    return FIRST_ORDER.active and type(input) is Tensor and input.is_complex()


def sigmoid_derivs(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(a)
    d1 = s * (1.0 - s)
    return s, d1, d1 * (1.0 - 2.0 * s)


def tanh_derivs(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.tanh(a)
    d1 = 1.0 - t * t
    return t, d1, -2.0 * t * d1


def gelu_derivs(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact GELU ``a Phi(a)`` and its first two derivatives, ``Phi + a phi`` and
    ``phi (2 - a^2)`` (``Phi``, ``phi``: the standard normal CDF and density)."""
    cdf = 0.5 * (1.0 + torch.erf(a * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * a * a) * (1.0 / math.sqrt(2.0 * math.pi))
    return a * cdf, cdf + a * pdf, pdf * (2.0 - a * a)
