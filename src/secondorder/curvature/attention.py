"""An attention kernel that curvature can differentiate twice.

:func:`torch.nn.functional.scaled_dot_product_attention` (used by
:class:`torch.nn.MultiheadAttention` with ``need_weights=False`` and by every
:class:`torch.nn.TransformerEncoderLayer`/``DecoderLayer``) dispatches to a fused kernel
when one applies: flash attention on CPU and CUDA, memory-efficient attention and cuDNN on
CUDA. Their backward passes are opaque kernels without a derivative of their own and
without a forward-mode rule, so a Hessian-vector product (Pearlmutter's double backward,
forward-over-reverse) through them fails: ``derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented``. The
*math* kernel computes the same attention from ordinary differentiable ops
(``softmax(Q K^T / sqrt(d) + mask) V``), which autograd differentiates to any order.

:func:`double_differentiable_attention` selects the math kernel for the code it wraps.
The library wraps every evaluation whose graph it differentiates twice: the loss and
output functions of :func:`~secondorder.curvature.functional_loss` and
:meth:`~secondorder.curvature.GGNOperator.from_model`, the construction of
:class:`~secondorder.curvature.HessianOperator` and
:class:`~secondorder.curvature.GGNOperator`, the forward-mode HVP, the dense Hessian, and
the optimizers' closure evaluations that keep a graph for Hessian-vector products. The
kernel is chosen when the forward pass runs, so wrapping the backward alone would not do.
Plain gradients (first-order optimizers, finite differences) keep the fused kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["double_differentiable_attention"]


def _flag_functions() -> tuple[tuple[Callable[[], bool], Callable[[bool], None], bool], ...]:
    """``(get, set, enabled under the math kernel)`` for each SDPA backend flag that
    ``sdpa_kernel`` of this torch build sets (the names it iterates over,
    ``torch.nn.attention._backend_names``), or ``()`` when any of them cannot be read
    here: then :func:`sdpa_kernel` itself is used, so a backend added by a later torch
    is never left enabled."""
    import torch.nn.attention as attention

    backends = getattr(attention, "_backend_names", None)
    if not isinstance(backends, dict) or "math" not in backends:
        return ()
    out = []
    for name in backends:
        get = getattr(torch._C, f"_get_{name}_sdp_enabled", None)
        set_ = getattr(torch._C, f"_set_sdp_use_{name}", None)
        if get is None or set_ is None:
            return ()
        out.append((get, set_, name == "math"))
    return tuple(out)


_FLAGS = _flag_functions()


class _MathAttention:
    """``sdpa_kernel(SDPBackend.MATH)`` without its per-call Python overhead (a few
    microseconds per evaluation, a visible share of a step on a small problem): the same
    process-wide flags, set on entry and restored on exit, through function references
    looked up once."""

    __slots__ = ("_previous",)

    def __enter__(self) -> None:
        self._previous = [get() for get, _, _ in _FLAGS]
        for _, set_, on in _FLAGS:
            set_(on)

    def __exit__(self, *exc: Any) -> None:
        for (_, set_, _), was in zip(_FLAGS, self._previous, strict=True):
            set_(was)


def double_differentiable_attention(enabled: bool = True) -> AbstractContextManager[None]:
    """Run scaled-dot-product attention with the math kernel inside the ``with`` block.

    ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``, with less overhead per call; on
    exit the kernels selected before are restored. Like ``sdpa_kernel`` it sets
    process-wide flags, so another thread's attention in the meantime also uses the math
    kernel (slower, same values).

    Args:
        enabled: when False the block runs unchanged (for call sites that build a
            twice-differentiable graph only sometimes).

    Example:
        >>> import torch
        >>> q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
        >>> f = lambda q: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum()
        >>> with double_differentiable_attention():
        ...     (g,) = torch.autograd.grad(f(q), q, create_graph=True)
        ...     (hv,) = torch.autograd.grad(g, q, grad_outputs=torch.ones_like(q))
        >>> hv.shape
        torch.Size([1, 2, 3, 4])
    """
    if not enabled:
        return contextlib.nullcontext()
    if not _FLAGS:
        return sdpa_kernel(SDPBackend.MATH)
    return _MathAttention()
