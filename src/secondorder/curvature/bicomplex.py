"""Bicomplex numbers for the second-order complex step ([Shen] eq. 6-7, 11).

A bicomplex number is ``z = z1 + z2 i2`` with ``z1, z2`` complex (unit ``i1``) and
``i1^2 = i2^2 = -1``, ``i1 i2 = i2 i1`` ([Shen]: ``C^2 = {z1 + z2 i_2 | z1, z2 in C^1}``).
Evaluating a real function at ``w + h (i1 + i2) v`` puts ``h^2 v^T H v`` in the ``i1 i2``
component (``Im(z2)``) without any subtraction ([Shen] eq. 11).

:class:`Bicomplex` is a ``torch.Tensor`` subclass (its data is ``z1``, so shapes, dtypes
and :func:`torch.func.functional_call` work) whose ``__torch_function__`` evaluates:

- sums, reshapes, reductions, pooling averages, gathers: componentwise;
- products (``mul``, ``matmul``, ``linear``, ``conv*``): bilinearity,
  ``(a + b i2)(c + d i2) = (ac - bd) + (ad + bc) i2``; division through the exact
  reciprocal ``1 / (a + b i2) = (a - b i2) / (a^2 + b^2)``; integer powers by repeated
  multiplication. These are exact, so eq. 11 is exact for polynomials at any ``h``;
- ``exp``, ``expm1``, ``sin``, ``cos``, ``sinh``, ``cosh``: exact (``exp(a + b i2) =
  e^a (cos b + i2 sin b)``); ``log``, ``log1p``, ``sqrt``, ``tanh``, non-integer powers: to
  first order in ``b`` (``f(a) + f'(a) b i2``), whose error is ``O(h^2)`` relative in every
  component used, the order of eq. 11's own truncation;
- everything in :data:`~secondorder.curvature.complex_step.RULES` (ReLU, softmax,
  cross-entropy, batch norm, max-pooling, ...) through the same rule functions as the
  complex step, with branches decided by ``Re(z1)``.

Any other op raises :class:`~secondorder.errors.ComplexStepUnsupportedError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from secondorder.curvature import complex_step as cs
from secondorder.curvature.complex_step.first_order import gelu_derivs
from secondorder.curvature.functional import LossFunction, check_scalar_loss

__all__ = ["Bicomplex", "bicomplex_vhv"]


def _map(obj: Any, part: str) -> Any:
    if isinstance(obj, Bicomplex):
        return obj.z1 if part == "z1" else obj.z2
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_map(o, part) for o in obj)
    if isinstance(obj, list):
        return [_map(o, part) for o in obj]
    if isinstance(obj, dict):
        return {k: _map(v, part) for k, v in obj.items()}
    return obj


def _zip(a: Any, b: Any) -> Any:
    if isinstance(a, Tensor):
        return Bicomplex(a, b)
    if isinstance(a, (tuple, list)):
        items = [_zip(x, y) for x, y in zip(a, b, strict=True)]
        return type(a)(items)
    return a


def _is_constant(x: Any) -> bool:
    """A tensor or number that is not bicomplex and not boolean (those stay as they are)."""
    if isinstance(x, Bicomplex):
        return False
    if isinstance(x, Tensor):
        return x.is_floating_point() or x.is_complex()
    return isinstance(x, (int, float, complex)) and not isinstance(x, bool)


def _zero_of(x: Any) -> Any:
    return torch.zeros_like(x) if isinstance(x, Tensor) else 0


def _call(func: Callable, args: tuple, kwargs: dict) -> Any:
    return cs.complex_call(func, args, kwargs)


# --------------------------------------------------------------------------- handlers


def _unary_linear(func: Callable, args: tuple, kwargs: dict) -> Any:
    """An op linear in its one bicomplex argument: apply it to ``z1`` and to ``z2``."""
    kw2 = kwargs
    if cs.op_name(func) == "pad":  # affine: the fill value belongs to z1 only
        if len(args) > 3:
            args2 = (*args[:3], 0.0, *args[4:])
        else:
            args2 = args
        if kwargs.get("value"):
            kw2 = dict(kwargs, value=0.0)
        out1 = _call(func, _map(args, "z1"), _map(kwargs, "z1"))
        return _zip(out1, _call(func, _map(args2, "z2"), _map(kw2, "z2")))
    out1 = _call(func, _map(args, "z1"), _map(kwargs, "z1"))
    return _zip(out1, _call(func, _map(args, "z2"), _map(kwargs, "z2")))


def _lift2(obj: Any, top: bool) -> Any:
    """Second component of a jointly linear op's arguments: constants become zeros."""
    if isinstance(obj, Bicomplex):
        return obj.z2
    if top and _is_constant(obj):
        return _zero_of(obj)
    if isinstance(obj, list):
        return [_lift2(o, True) if isinstance(o, Tensor) else o for o in obj]
    if isinstance(obj, tuple) and obj and all(isinstance(o, Tensor) for o in obj):
        return tuple(_lift2(o, True) for o in obj)
    return obj


def _joint_linear(func: Callable, args: tuple, kwargs: dict) -> Any:
    """An affine op of all its tensor arguments (add, sub, cat, where, masked_fill)."""
    args1 = _map(args, "z1")
    args2 = tuple(_lift2(a, True) for a in args)
    kw1 = _map(kwargs, "z1")
    kw2 = {k: (v.z2 if isinstance(v, Bicomplex) else (_zero_of(v) if isinstance(v, Tensor)
                                                       and _is_constant(v) else v))
           for k, v in kwargs.items()}
    return _zip(_call(func, args1, kw1), _call(func, args2, kw2))


def _bilinear_parts(f: Callable[[Any, Any], Any], x: Any, y: Any) -> Bicomplex:
    if isinstance(x, Bicomplex) and isinstance(y, Bicomplex):
        return Bicomplex(
            f(x.z1, y.z1) - f(x.z2, y.z2),
            f(x.z1, y.z2) + f(x.z2, y.z1),
        )
    if isinstance(x, Bicomplex):
        return Bicomplex(f(x.z1, y), f(x.z2, y))
    return Bicomplex(f(x, y.z1), f(x, y.z2))


def _bilinear(func: Callable, args: tuple, kwargs: dict) -> Any:
    """A product: bilinear in its first two arguments."""
    x, y, rest = args[0], args[1], args[2:]
    return _bilinear_parts(lambda a, b: _call(func, (a, b, *rest), kwargs), x, y)


def _with_bias(func: Callable, args: tuple, kwargs: dict) -> Any:
    """``linear``/``conv*``: bilinear in (input, weight), then the bias is added."""
    kwargs = dict(kwargs)
    bias = args[2] if len(args) > 2 else kwargs.pop("bias", None)
    rest = args[3:]
    out = _bilinear_parts(
        lambda a, b: _call(func, (a, b, None, *rest), kwargs), args[0], args[1]
    )
    if bias is None:
        return out
    if cs.op_name(func) == "linear":
        return out + bias
    nd = args[1].dim() - 2
    lead = [-1] if out.dim() == nd + 1 else [1, -1]
    return out + bias.reshape(lead + [1] * nd)


def _reciprocal(x: Bicomplex) -> Bicomplex:
    den = x.z1 * x.z1 + x.z2 * x.z2
    return Bicomplex(x.z1 / den, -x.z2 / den)


def _div(func: Callable, args: tuple, kwargs: dict) -> Any:
    if kwargs.get("rounding_mode") is not None:
        raise cs.unsupported(cs.op_name(func), "division with a rounding_mode")
    x, y = args[0], args[1]
    if cs.op_name(func) in ("__rtruediv__", "__rdiv__"):
        x, y = y, x
    if isinstance(y, Bicomplex):
        return x * _reciprocal(y)
    return Bicomplex(x.z1 / y, x.z2 / y)


def _reciprocal_handler(func: Callable, args: tuple, kwargs: dict) -> Any:
    return _reciprocal(args[0])


def _int_power(x: Bicomplex, n: int) -> Any:
    if n < 0:
        return _reciprocal(_int_power(x, -n))
    result: Any = None
    base = x
    while n:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    if result is None:
        return Bicomplex(torch.ones_like(x.z1), torch.zeros_like(x.z2))
    return result


def _pow(func: Callable, args: tuple, kwargs: dict) -> Any:
    x, p = args[0], args[1] if len(args) > 1 else kwargs["exponent"]
    if cs.op_name(func) == "__rpow__":  # p ** x with a constant base p
        return torch.exp(x * math.log(p))
    if not isinstance(x, Bicomplex):  # constant ** bicomplex
        return torch.exp(p * torch.log(x))
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        if float(p).is_integer() and abs(p) <= 64:
            return _int_power(x, int(p))
        a = x.z1 ** p
        return Bicomplex(a, p * (x.z1 ** (p - 1)) * x.z2)
    return torch.exp(p * torch.log(x))


def _square(func: Callable, args: tuple, kwargs: dict) -> Any:
    return args[0] * args[0]


def _exact(kind: str) -> Callable:
    def handler(func: Callable, args: tuple, kwargs: dict) -> Any:
        a, b = args[0].z1, args[0].z2
        if kind == "exp":
            e = torch.exp(a)
            return Bicomplex(e * torch.cos(b), e * torch.sin(b))
        if kind == "expm1":
            e = torch.exp(a)
            s = torch.sin(b * 0.5)
            return Bicomplex(torch.expm1(a) * torch.cos(b) - 2.0 * s * s, e * torch.sin(b))
        if kind == "sin":
            return Bicomplex(torch.sin(a) * torch.cosh(b), torch.cos(a) * torch.sinh(b))
        if kind == "cos":
            return Bicomplex(torch.cos(a) * torch.cosh(b), -torch.sin(a) * torch.sinh(b))
        if kind == "sinh":
            return Bicomplex(torch.sinh(a) * torch.cos(b), torch.cosh(a) * torch.sin(b))
        return Bicomplex(torch.cosh(a) * torch.cos(b), torch.sinh(a) * torch.sin(b))  # cosh

    return handler


def _first_order(value: Callable, derivative: Callable) -> Callable:
    """``f(a + b i2) = f(a) + f'(a) b i2 + O(b^2)``: see the module docstring."""

    def handler(func: Callable, args: tuple, kwargs: dict) -> Any:
        a, b = args[0].z1, args[0].z2
        fa = value(a)
        return Bicomplex(fa, derivative(a, fa) * b)

    return handler


def _gelu(func: Callable, args: tuple, kwargs: dict) -> Any:
    """Exact GELU (``erf`` has no complex kernel) by its second-order jet.

    With ``z1 = a + b i1``, ``z2 = c + d i1`` (``b, c = O(h)``, ``d = O(h^2)``),
    ``f(z) = f(a) + b f'(a) i1 + c f'(a) i2 + (d f'(a) + b c f''(a)) i1 i2`` up to terms
    ``O(h^2)`` relative to each component, the order of eq. 11's own truncation. The tanh
    form is a composition of analytic ops and uses the complex-step rule.
    """
    approximate = args[1] if len(args) > 1 else kwargs.get("approximate", "none")
    if approximate == "tanh":
        return cs.RULES["gelu"](*args, **kwargs)
    z = args[0]
    a, b, c, d = z.z1.real, z.z1.imag, z.z2.real, z.z2.imag
    f, d1, d2 = gelu_derivs(a)
    return Bicomplex(torch.complex(f, b * d1), torch.complex(c * d1, d * d1 + b * c * d2))


_ADD_PRODUCT = {
    "addmm": torch.mm, "baddbmm": torch.bmm, "addmv": torch.mv,
    "addbmm": lambda a, b: torch.bmm(a, b).sum(0),
}


def _add_product(func: Callable, args: tuple, kwargs: dict) -> Any:
    """``beta * input + alpha * (m1 @ m2)`` (``addmm``, ``baddbmm``, ``addmv``, ``addbmm``)
    from the bilinear product and the affine sum."""
    name = cs.base_name(cs.op_name(func))
    kwargs = dict(kwargs)
    beta, alpha = kwargs.pop("beta", 1), kwargs.pop("alpha", 1)
    if kwargs or len(args) != 3:
        raise cs.unsupported(name, "only (input, m1, m2, beta=, alpha=) is supported")
    return args[0] * beta + _ADD_PRODUCT[name](args[1], args[2]) * alpha


def _rsqrt(func: Callable, args: tuple, kwargs: dict) -> Any:
    return _reciprocal(torch.sqrt(args[0]))


def _meta(func: Callable, args: tuple, kwargs: dict) -> Any:
    return func(*_map(args, "z1"), **_map(kwargs, "z1"))


_META = frozenset(
    """shape dtype device ndim requires_grad is_leaf grad_fn grad layout is_cuda is_sparse
    is_meta is_quantized itemsize nbytes _version output_nr _base names size dim ndimension
    numel nelement __len__ is_complex is_contiguous stride storage_offset
    element_size get_device has_names __hash__ __format__ is_nested is_cpu is_xpu is_mps
    is_mkldnn is_inference is_sparse_csr is_signed is_conj is_neg""".split()
)
_UNARY_LINEAR = frozenset(
    """reshape view view_as reshape_as flatten unflatten ravel permute transpose swapaxes
    swapdims movedim moveaxis t T mT contiguous squeeze unsqueeze expand expand_as
    broadcast_to repeat repeat_interleave tile split split_with_sizes tensor_split chunk
    unbind narrow select index_select gather take take_along_dim __getitem__ clone
    roll flip fliplr flipud rot90 diagonal diag diag_embed tril triu unfold sum mean
    nansum cumsum trace neg negative __neg__ positive __pos__ pad to type float double
    type_as""".split()
) | frozenset(cs.LINEAR_RULES)
_JOINT_LINEAR = frozenset(
    """add sub subtract rsub __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ cat concat
    concatenate stack hstack vstack where masked_fill""".split()
)
_BILINEAR = frozenset(
    """mul multiply __mul__ __rmul__ __imul__ matmul __matmul__ __rmatmul__ mm bmm mv dot
    inner outer ger""".split()
)

_HANDLERS: dict[str, Callable] = {}
for _name in _META:
    _HANDLERS[_name] = _meta
for _name in _UNARY_LINEAR:
    _HANDLERS[_name] = _unary_linear
for _name in _JOINT_LINEAR:
    _HANDLERS[_name] = _joint_linear
for _name in _BILINEAR:
    _HANDLERS[_name] = _bilinear
for _name in ["linear", *cs.CONV_RULES]:
    _HANDLERS[_name] = _with_bias
for _name in ("div", "divide", "true_divide", "__truediv__", "__rtruediv__", "__itruediv__",
              "__div__", "__rdiv__"):
    _HANDLERS[_name] = _div
for _name in ("pow", "__pow__", "__rpow__", "__ipow__", "float_power"):
    _HANDLERS[_name] = _pow
_HANDLERS["square"] = _square
_HANDLERS["reciprocal"] = _reciprocal_handler
_HANDLERS["rsqrt"] = _rsqrt
_HANDLERS["gelu"] = _gelu
for _name in _ADD_PRODUCT:
    _HANDLERS[_name] = _add_product
for _name in ("exp", "expm1", "sin", "cos", "sinh", "cosh"):
    _HANDLERS[_name] = _exact(_name)
_HANDLERS["log"] = _first_order(torch.log, lambda a, fa: 1.0 / a)
_HANDLERS["log1p"] = _first_order(torch.log1p, lambda a, fa: 1.0 / (1.0 + a))
_HANDLERS["sqrt"] = _first_order(torch.sqrt, lambda a, fa: 0.5 / fa)
_HANDLERS["tanh"] = _first_order(torch.tanh, lambda a, fa: 1.0 - fa * fa)


class Bicomplex(Tensor):
    """A tensor of bicomplex numbers ``z1 + z2 i2`` (``z1``, ``z2`` complex tensors).

    Args:
        z1: the ``1, i1`` part, a complex tensor.
        z2: the ``i2, i1 i2`` part, a complex tensor of the same shape and dtype.

    Example:
        >>> x = Bicomplex(torch.tensor([2.0 + 0.5j]), torch.tensor([0.5 + 0j]))
        >>> (x * x * x).z2.imag  # (2 + h(i1 + i2))^3, h = 0.5: i1 i2 part = f''(2) h^2
        tensor([3.])
    """

    z1: Tensor
    z2: Tensor

    @staticmethod
    def __new__(cls, z1: Tensor, z2: Tensor) -> Bicomplex:
        if z1.shape != z2.shape:
            raise ValueError(
                f"bicomplex parts differ in shape: {tuple(z1.shape)} vs {tuple(z2.shape)}"
            )
        obj = Tensor._make_subclass(cls, z1.detach(), False)
        obj.z1 = z1
        obj.z2 = z2
        return obj

    def __init__(self, z1: Tensor, z2: Tensor) -> None:
        pass

    def _branch_real(self) -> Tensor:
        """The real component, detached: it decides branches (ReLU, max, ...) and is the
        value of ``detach``."""
        return self.z1.real.detach()

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return f"Bicomplex(z1={self.z1!r}, z2={self.z2!r})"

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = cs.op_name(func)
        base = cs.base_name(name)
        if name in cs.COMPOSITE_OPS:  # its body dispatches each op on Bicomplex again
            return torch.overrides.redispatch_function(func, types, args, kwargs)
        handler = _HANDLERS.get(name) or _HANDLERS.get(base)
        if handler is not None:
            return handler(func, args, kwargs)
        rule = cs.RULES.get(name) or cs.RULES.get(base)
        if rule is not None:
            return rule(*args, **kwargs)
        raise cs.unsupported(name, "no bicomplex rule")


class _FloatingQueries(TorchFunctionMode):
    """Answers ``is_floating_point`` with ``True`` for complex tensors, as
    :class:`~secondorder.curvature.complex_step.ComplexStepMode` does: torch builds masks
    in the activations' dtype (complex here) and then insists they be bool or floating.
    Every other call runs unchanged (bicomplex arguments dispatch as usual), the bodies of
    :data:`~secondorder.curvature.complex_step.COMPOSITE_OPS` under this mode."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        name = cs.op_name(func)
        if name == "is_floating_point" and args and isinstance(args[0], Tensor):
            return cs.RULES["is_floating_point"](args[0])
        if name in cs.COMPOSITE_OPS:  # its body must run with this mode on the stack
            TorchFunctionMode.__enter__(self)
            try:
                return torch.overrides.redispatch_function(func, types, args, kwargs or {})
            finally:
                TorchFunctionMode.__exit__(self, None, None, None)
        return func(*args, **(kwargs or {}))


def bicomplex_vhv(
    loss_fn: LossFunction,
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
    h: float | None = None,
) -> Tensor:
    """Quadratic form ``v^T H v = Im^(2) f(w + h (i1 + i2) v) / h^2`` ([Shen] eq. 11).

    One bicomplex forward pass, no backward; ``Im^(2)`` is the ``i1 i2`` component.

    Args:
        loss_fn: scalar loss of a list of tensors.
        params: the point ``w`` (float32 or float64).
        vec: the direction ``v``, shaped like ``params``.
        h: step (default :func:`~secondorder.curvature.complex_step.default_step` with
            ``order=2``).

    Returns:
        A 0-dim tensor of the parameters' dtype.

    Raises:
        ValueError: bad ``params``, ``vec`` or ``h``; non-scalar loss.
        NonFiniteLossError: the loss is NaN or infinite.
        ComplexStepUnsupportedError: the loss uses an op without a bicomplex rule.

    Example:
        >>> f = lambda ps: (ps[0] ** 3).sum()
        >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> q = bicomplex_vhv(f, [w], [torch.ones(2, dtype=torch.float64)])  # sum 6 w = 18
        >>> round(float(q), 12)
        18.0
    """
    params = cs.check_point(params, vec)
    h = cs.check_step(h, params[0].dtype, order=2)
    unit, scale = cs.unit_direction(vec, params[0].dtype, h)  # v^T H v = scale^2 u^T H u
    zs = [
        Bicomplex(torch.complex(p.detach(), u * h), torch.complex(u * h, torch.zeros_like(p)))
        for p, u in zip(params, unit, strict=True)
    ]
    with torch.no_grad(), cs.module_scope(getattr(loss_fn, "model", None)), _FloatingQueries():
        loss = loss_fn(zs)
    if not isinstance(loss, Bicomplex):
        loss = check_scalar_loss(loss, check_finite=False)
        cs.check_finite_loss(loss.detach().real if loss.is_complex() else loss.detach())
        return torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    if loss.z1.numel() != 1:
        raise ValueError(
            f"the loss must be a scalar, got a tensor of shape {tuple(loss.z1.shape)}"
        )
    cs.check_finite_loss(loss.z1.real)
    return (loss.z2.imag.reshape(()) / (h * h) * scale * scale).to(params[0].dtype)

