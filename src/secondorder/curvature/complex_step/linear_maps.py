"""Linear maps: ``linear``, ``embedding``, convolutions (four real ones, or three to first order),
pooling (averages as real-linear maps, max-pooling at the real part's argmax)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from secondorder.curvature.complex_step.arguments import complex_target, promote, real_part
from secondorder.curvature.complex_step.first_order import first_order_applies
from secondorder.curvature.complex_step.scope import unsupported

__all__ = ["CONV_RULES", "LINEAR_RULES", "RULES", "split_linear"]


def _gather_spatial(input: Any, idx: Tensor, nd: int) -> Any:
    """Pick ``input`` at pooling indices ``idx`` (flat over the last ``nd`` dims)."""
    flat = input.flatten(-nd)
    return flat.gather(-1, idx.flatten(-nd)).reshape(idx.shape)


def _max_pool(nd: int) -> Callable:
    real_pool = getattr(F, f"max_pool{nd}d")

    def rule(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
             dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
        _, idx = real_pool(real_part(input), kernel_size, stride, padding, dilation,
                           ceil_mode=ceil_mode, return_indices=True)
        out = _gather_spatial(input, idx, nd)
        return (out, idx) if return_indices else out

    return rule


def _max_pool_with_indices(nd: int) -> Callable:
    rule = _max_pool(nd)

    def with_indices(input: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["return_indices"] = True
        return rule(input, *args, **kwargs)

    return with_indices


def _adaptive_max_pool(nd: int) -> Callable:
    real_pool = getattr(F, f"adaptive_max_pool{nd}d")

    def rule(input: Any, output_size: Any, return_indices: bool = False) -> Any:
        _, idx = real_pool(real_part(input), output_size, return_indices=True)
        out = _gather_spatial(input, idx, nd)
        return (out, idx) if return_indices else out

    return rule


def split_linear(func: Callable) -> Callable:
    """A real-linear op without a complex kernel: ``L(x) = L(Re x) + i L(Im x)``.

    For a linear map with real coefficients this is the holomorphic extension, and
    autograd through ``real``/``imag``/``complex`` returns its (conjugate) adjoint.
    """

    def rule(input: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(input, Tensor) or not input.is_complex():
            return func(input, *args, **kwargs)
        return torch.complex(func(input.real, *args, **kwargs), func(input.imag, *args, **kwargs))

    return rule


def as_tuple(value: Any, nd: int) -> tuple:
    if isinstance(value, (tuple, list)):
        return tuple(value) if len(value) == nd else tuple(value) * nd
    return (value,) * nd


def _interleaved_avg_pool(nd: int) -> Callable:
    """``avg_pool{nd}d`` of a complex tensor as one real ``avg_pool{nd+1}d``.

    ``view_as_real`` appends the (re, im) pair as a last dimension of size 2; a window of
    size 1 and stride 1 over it pools both parts at once and returns them already
    interleaved, so no strided ``Re``/``Im`` copies and no ``torch.complex`` are needed.
    The same real-linear map as :func:`split_linear`.
    """
    real_pool = getattr(F, f"avg_pool{nd}d")
    wide_pool = getattr(F, f"avg_pool{nd + 1}d")

    def rule(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
             ceil_mode: bool = False, count_include_pad: bool = True,
             *args: Any, **kwargs: Any) -> Any:
        if type(input) is not Tensor or not input.is_complex():
            return split_linear(real_pool)(input, kernel_size, stride, padding, ceil_mode,
                                            count_include_pad, *args, **kwargs)
        kernel = as_tuple(kernel_size, nd) + (1,)
        step = kernel if stride is None or stride == [] or stride == () else (
            as_tuple(stride, nd) + (1,))
        out = wide_pool(torch.view_as_real(input), kernel, step, as_tuple(padding, nd) + (0,),
                        ceil_mode, count_include_pad, *args, **kwargs)
        return torch.view_as_complex(out)

    return rule


def _interleaved_adaptive_avg_pool(nd: int) -> Callable:
    """``adaptive_avg_pool{nd}d`` of a complex tensor as one real ``{nd+1}d`` pool (see
    :func:`_interleaved_avg_pool`)."""
    real_pool = getattr(F, f"adaptive_avg_pool{nd}d")
    wide_pool = getattr(F, f"adaptive_avg_pool{nd + 1}d")

    def rule(input: Any, output_size: Any) -> Any:
        if type(input) is not Tensor or not input.is_complex():
            return split_linear(real_pool)(input, output_size)
        size = tuple(
            input.shape[input.dim() - nd + k] if s is None else s
            for k, s in enumerate(as_tuple(output_size, nd))
        )
        return torch.view_as_complex(wide_pool(torch.view_as_real(input), size + (2,)))

    return rule


def _parts(x: Any) -> tuple[Any, Any]:
    if isinstance(x, Tensor) and x.is_complex():
        return x.real, x.imag
    return x, None


class _FirstOrderConv(torch.autograd.Function):
    """Convolution of complex ``x = xr + i xi`` and ``w = wr + i wi`` dropping ``xi * wi``.

    Under the first-order criterion (:func:`first_order_step`) ``xi``, ``wi`` are ``O(h)``
    and ``conv(xi, wi)`` is ``O(h^2)`` relative to ``Re``: three real convolutions instead
    of four. The backward is the holomorphic one, ``G conj(w)`` and ``G conj(x)`` with the
    ``O(h^2)`` ``Im(G) wi`` / ``Im(G) xi`` terms dropped from the real parts: three
    ``convolution_backward`` calls (each giving the input and the weight gradient) instead
    of four. Autograd of the truncated forward would miss the ``O(h)`` terms
    ``-Re(G) wi`` and ``-Re(G) xi``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, func: Callable, stride: list[int],  # type: ignore[override]
                padding: list[int], dilation: list[int], groups: int) -> Tensor:
        xr, xi = x.real.contiguous(), x.imag.contiguous()
        wr, wi = w.real.contiguous(), w.imag.contiguous()
        ctx.save_for_backward(xr, xi, wr, wi)
        ctx.conv = (stride, padding, dilation, groups)
        re = func(xr, wr, None, stride, padding, dilation, groups)
        im = func(xr, wi, None, stride, padding, dilation, groups)
        im = im + func(xi, wr, None, stride, padding, dilation, groups)
        return torch.complex(re, im)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:  # type: ignore[override]
        xr, xi, wr, wi = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        gr, gi = grad.real.contiguous(), grad.imag.contiguous()
        zeros = [0] * len(stride)

        def back(g: Tensor, x: Tensor, w: Tensor) -> tuple:
            return torch.ops.aten.convolution_backward(
                g, x, w, None, stride, padding, dilation, False, zeros, groups, mask
            )

        gx1, gw1, _ = back(gr, xr, wr)  # Re G wr, Re G xr
        gx2, gw2, _ = back(gi, xr, wr)  # Im G wr, Im G xr
        gx3, gw3, _ = back(gr, xi, wi)  # Re G wi, Re G xi
        grad_x = torch.complex(gx1, gx2 - gx3) if mask[0] else None
        grad_w = torch.complex(gw1, gw2 - gw3) if mask[1] else None
        return grad_x, grad_w, None, None, None, None, None


def _conv(func: Callable) -> Callable:
    """Convolution of complex tensors as four real ones.

    PyTorch's complex convolution uses Gauss's three-multiplication trick, whose imaginary
    part ``conv(a+b, c+d) - conv(a, c) - conv(b, d)`` cancels: it wipes out a ``1e-20``
    imaginary step. Computing ``Re = xr*wr - xi*wi`` and ``Im = xr*wi + xi*wr`` keeps it,
    and a real input costs two real convolutions.
    """

    spatial = int(func.__name__[-2]) if func.__name__.startswith("conv") else 0
    fast = func.__name__ == f"conv{spatial}d"  # not the transposed convolutions

    def rule(input: Any, weight: Any, bias: Any = None, *args: Any, **kwargs: Any) -> Any:
        if (fast and not kwargs and first_order_applies(input) and first_order_applies(weight)
                and input.dim() == spatial + 2 and not any(isinstance(a, str) for a in args)):
            stride, padding, dilation, groups = (*args, *(1, 0, 1, 1)[len(args):])[:4]
            out = _FirstOrderConv.apply(
                input, weight, func, *[list(as_tuple(a, spatial)) for a in (stride, padding,
                                                                           dilation)],
                int(groups),
            )
            return out if bias is None else out + bias.reshape([1, -1] + [1] * spatial)
        xr, xi = _parts(input)
        wr, wi = _parts(weight)
        re = func(xr, wr, None, *args, **kwargs)
        if xi is not None and wi is not None:
            re = re - func(xi, wi, None, *args, **kwargs)
        im = None
        for a, b in ((xr, wi), (xi, wr)):
            if a is not None and b is not None:
                term = func(a, b, None, *args, **kwargs)
                im = term if im is None else im + term
        out = re if im is None else torch.complex(re, im)
        if bias is not None:
            nd = weight.dim() - 2
            lead = [-1] if out.dim() == nd + 1 else [1, -1]  # unbatched or batched
            out = out + bias.reshape(lead + [1] * nd)
        return out

    return rule


def _linear(input: Any, weight: Any, bias: Any = None) -> Any:
    """``F.linear``; a real input meets a complex weight as two real products.

    Promoting the input would cost a complex GEMM (four real ones) and a complex copy of
    the batch; ``x W^T = x Re(W)^T + i x Im(W)^T`` costs two, forward and backward. Both
    run as one real GEMM against ``W`` viewed as real with its (re, im) pairs as rows,
    whose output is already the interleaved complex result (no strided ``Re``/``Im``
    operands, no copy into a complex tensor; the backward is one GEMM too).
    """
    if (isinstance(input, Tensor) and not input.is_complex() and type(weight) is Tensor
            and weight.is_complex() and weight.dim() == 2):
        pairs = torch.view_as_real(weight).transpose(1, 2).reshape(-1, weight.shape[1])
        out = F.linear(input.to(pairs.dtype), pairs)
        out = torch.view_as_complex(out.unflatten(-1, (weight.shape[0], 2)))
    elif isinstance(input, Tensor) and not input.is_complex() and weight.is_complex():
        out = torch.complex(F.linear(input, weight.real), F.linear(input, weight.imag))
    else:
        cdtype = complex_target((input, weight), {}) or weight.dtype
        out = F.linear(promote(input, cdtype), promote(weight, cdtype))
    return out if bias is None else out + bias


def _embedding(input: Tensor, weight: Any, padding_idx: int | None = None,
               max_norm: float | None = None, norm_type: float = 2.0,
               scale_grad_by_freq: bool = False, sparse: bool = False) -> Any:
    """``F.embedding``: rows of ``weight`` at the token ids ``input`` (linear in ``weight``).

    PyTorch's embedding kernel has no complex autograd; ``index_select`` does. The row
    ``padding_idx`` gets no gradient in the real function, so it is looked up as a
    constant (its real part, as ``detach``). ``sparse`` only changes the gradient's layout.

    Raises:
        ComplexStepUnsupportedError: ``max_norm`` (renormalizes the weight in place) or
            ``scale_grad_by_freq`` (rescales the gradient, which is then no derivative).
    """
    if max_norm is not None:
        raise unsupported("embedding", "max_norm renormalizes the weight in place")
    if scale_grad_by_freq:
        raise unsupported("embedding", "scale_grad_by_freq rescales the gradient, so it is "
                                       "not the derivative of the loss")
    out = weight.index_select(0, input.reshape(-1)).reshape(*input.shape, weight.shape[-1])
    if padding_idx is not None:
        row = padding_idx % weight.shape[0]
        out = torch.where((input == row).unsqueeze(-1), real_part(weight)[row], out)
    return out


#: Real-linear ops handled by :func:`split_linear` (no complex kernel); a bicomplex number
#: applies them to each component.
LINEAR_RULES: dict[str, Callable] = {}
for _nd in (1, 2, 3):
    for _name in (f"avg_pool{_nd}d", f"adaptive_avg_pool{_nd}d"):
        LINEAR_RULES[_name] = split_linear(getattr(F, _name))
LINEAR_RULES["interpolate"] = split_linear(F.interpolate)

#: Convolutions: bilinear in (input, weight), see :func:`_conv`.
CONV_RULES: dict[str, Callable] = {}
for _nd in (1, 2, 3):
    for _name in (f"conv{_nd}d", f"conv_transpose{_nd}d"):
        CONV_RULES[_name] = _conv(getattr(F, _name))

#: Linear-map and pooling rules, keyed by op name.
RULES: dict[str, Callable] = {"linear": _linear, "embedding": _embedding, **LINEAR_RULES,
                              **CONV_RULES}
for _nd in (1, 2, 3):
    RULES[f"max_pool{_nd}d"] = _max_pool(_nd)
    RULES[f"max_pool{_nd}d_with_indices"] = _max_pool_with_indices(_nd)
    RULES[f"adaptive_max_pool{_nd}d"] = _adaptive_max_pool(_nd)
    RULES[f"adaptive_max_pool{_nd}d_with_indices"] = _adaptive_max_pool(_nd)
for _nd in (1, 2):  # one real pool over the interleaved (re, im) pairs
    RULES[f"avg_pool{_nd}d"] = _interleaved_avg_pool(_nd)
    RULES[f"adaptive_avg_pool{_nd}d"] = _interleaved_adaptive_avg_pool(_nd)
