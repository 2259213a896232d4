"""Structural ops: data movement and metadata (analytic trivially), ``detach`` (a
constant: the real part), dropout (the identity), dtype casts (to the complex dtype)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from secondorder.curvature.complex_step.arguments import real_part
from secondorder.curvature.complex_step.scope import unsupported
from secondorder.curvature.complex_step.steps import COMPLEX_OF, complex_dtype

__all__ = ["ANALYTIC_OPS", "COMPOSITE_OPS", "RULES", "STRUCTURAL_OPS"]


def _identity(input: Any, *args: Any, **kwargs: Any) -> Any:
    return input


def _detach(input: Any) -> Any:
    """``detach`` stops derivatives: the detached value is a constant, ``Re x``.

    Keeping the imaginary part (a plain ``detach`` of the complex tensor) would carry the
    direction through the value while autograd drops it from the graph, so ``x * x.detach()``
    would differentiate like ``x * x`` in the first-order part and like a constant in the
    backward. The real part is the value the real function detaches (to ``O(h^2)``).
    """
    return real_part(input)


def _is_floating_point(input: Any) -> bool:
    """A complex-step tensor stands for a real floating one: masks that torch converts to
    the activations' (complex) dtype must still pass its "bool or floating" checks. Asked
    of the underlying tensor: on a :class:`~secondorder.curvature.bicomplex.Bicomplex` the
    query would dispatch back to this rule without end."""
    with torch._C.DisableTorchFunctionSubclass():
        return bool(input.is_floating_point() or input.is_complex())


def _left_aligned(input: Any, mask: Tensor) -> Any:
    """``torch._nested_tensor_from_mask_left_aligned``: a query on the mask (``input`` only
    gives the shape); ``TransformerEncoder`` asks it before choosing its fast path."""
    return torch._nested_tensor_from_mask_left_aligned(real_part(input), real_part(mask))


def _detach_in_place(input: Any) -> Any:
    raise unsupported("detach_", "in-place detach of a complex-step tensor cannot drop its "
                                 "imaginary part; use x = x.detach()")


def _cast(name: str) -> Callable:
    def rule(input: Any, *args: Any, **kwargs: Any) -> Any:
        if name == "float":
            return input.to(torch.complex64)
        if name == "double":
            return input.to(torch.complex128)
        if name == "type_as":
            return input.to(complex_dtype(args[0].dtype))
        args = tuple(COMPLEX_OF.get(a, a) if isinstance(a, torch.dtype) else a for a in args)
        if isinstance(kwargs.get("dtype"), torch.dtype):
            kwargs = dict(kwargs, dtype=COMPLEX_OF.get(kwargs["dtype"], kwargs["dtype"]))
        if args and isinstance(args[0], Tensor):  # x.to(other)
            args = (args[0].dtype if args[0].is_complex() else complex_dtype(args[0].dtype),
                    *args[1:])
        return getattr(torch.Tensor, name)(input, *args, **kwargs)

    return rule


#: Complex-analytic ops that run natively on complex tensors (after promotion).
ANALYTIC_OPS: frozenset[str] = frozenset(
    """add sub subtract rsub mul multiply div divide true_divide neg negative positive pow
    square sqrt rsqrt reciprocal exp exp2 log log2 log10 log1p expm1 sin cos tan sinh cosh
    tanh matmul mm bmm mv dot inner outer ger einsum linear sum mean nansum prod cumsum cumprod
    trace addmm addmv addbmm baddbmm addcmul addcdiv lerp tensordot kron pad
    __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__
    __truediv__ __rtruediv__ __itruediv__ __div__ __rdiv__ __matmul__ __rmatmul__
    __neg__ __pos__ __pow__ __rpow__ __ipow__""".split()
)

#: Data-movement and metadata ops: analytic trivially (linear with 0/1 coefficients).
STRUCTURAL_OPS: frozenset[str] = frozenset(
    """reshape view view_as reshape_as flatten unflatten ravel permute transpose swapaxes
    swapdims movedim moveaxis t T mT contiguous squeeze unsqueeze expand expand_as
    broadcast_to repeat repeat_interleave tile cat concat concatenate stack hstack vstack
    split split_with_sizes tensor_split chunk unbind narrow select index_select gather take
    take_along_dim __getitem__ __setitem__ clone roll flip fliplr flipud rot90
    masked_fill scatter scatter_add index_add index_put diagonal diag diag_embed tril triu
    unfold where zeros_like ones_like empty_like full_like new_zeros new_ones new_empty
    new_full new_tensor size dim ndimension numel nelement __len__ is_complex
    is_floating_point is_contiguous requires_grad_ retain_grad stride storage_offset
    element_size get_device isfinite isnan isinf shape dtype device ndim requires_grad
    is_leaf grad_fn grad layout data is_cuda is_sparse is_meta is_quantized itemsize nbytes
    is_nested is_cpu is_xpu is_mps is_mkldnn is_inference is_sparse_csr is_signed
    is_conj is_neg
    _version output_nr _base names copy fill zero __repr__ __format__ __hash__
    __iter__ __reversed__ __array_priority__ __dlpack_device__ __deepcopy__
    __reduce_ex__ __setstate__ __torch_function__ __len__ has_names""".split()
)


#: Python compositions of torch ops that dispatch as one function (``handle_torch_function``
#: at their top): their bodies run with the complex-step semantics of each op inside.
COMPOSITE_OPS: frozenset[str] = frozenset({"multi_head_attention_forward"})

#: Structural rules, keyed by op name.
RULES: dict[str, Callable] = {
    "detach": _detach,
    "data": _detach,  # ``x.data`` stops derivatives like ``x.detach()``
    "detach_": _detach_in_place,
    "is_floating_point": _is_floating_point,
    "_nested_tensor_from_mask_left_aligned": _left_aligned,
    "dropout": _identity,
    "dropout1d": _identity,
    "dropout2d": _identity,
    "dropout3d": _identity,
    "alpha_dropout": _identity,
    "feature_alpha_dropout": _identity,
    "to": _cast("to"),
    "type": _cast("type"),
    "float": _cast("float"),
    "double": _cast("double"),
    "type_as": _cast("type_as"),
}
