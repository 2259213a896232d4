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
from collections.abc import Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["double_differentiable_attention"]


@contextlib.contextmanager
def double_differentiable_attention(enabled: bool = True) -> Iterator[None]:
    """Run scaled-dot-product attention with the math kernel inside the ``with`` block.

    A thin wrapper of ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``; on exit the
    kernels selected before are restored. Like ``sdpa_kernel`` it sets process-wide flags,
    so another thread's attention in the meantime also uses the math kernel (slower, same
    values).

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
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield
