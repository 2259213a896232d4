"""Complex-step directional derivatives through real networks (seed 002 eq. 5, 10).

Seed 002 eq. 10 gives a Hessian-vector product from one complex gradient,

    ``H v = Im(g(w + i h v)) / h``,

with ``g`` the gradient of the loss's holomorphic extension ``f*``. No difference is taken,
so there is no subtractive cancellation and ``h`` can be tiny (``1e-20``): the truncation
error ``O(h^2)`` vanishes and the result is exact to rounding (seed 002 Fig. 1). The
first-order form (eq. 5) gives ``g^T v = Im f(w + i h v) / h``.

The catch is ``f*``: a network evaluated on complex parameters must compute the
*holomorphic* extension of the real function. Many ops are not complex-analytic (ReLU,
``max``, ``abs``, comparisons) or have no complex kernel (pooling, batch norm, the fused
losses). While :class:`ComplexStepMode` is active, every torch function that meets a
complex tensor goes through one of three tables:

- :data:`ANALYTIC_OPS` and :data:`STRUCTURAL_OPS`: run as is, after promoting the real
  floating tensors among the arguments (inputs, targets, buffers) to the complex dtype;
- :data:`RULES`: complex-step-safe replacements. Every branch is decided by the real
  part, which is what the real function computes: ``relu(z) = z * (Re z > 0)``,
  max-pooling gathers at the real part's argmax, ``logsumexp`` shifts by the real
  part's max, batch norm uses the analytic variance ``mean((x - mu)^2)`` (no conjugate);
  dropout is the identity (evaluation semantics) and batch norm does not update its
  running statistics;
- anything else raises :class:`~secondorder.errors.ComplexStepUnsupportedError` naming
  the op and, when the loss has a ``.model`` (:func:`~secondorder.curvature.functional_loss`
  sets it), the module it was called in.

Speed (exact to rounding, never approximate): when the step is at most
:func:`first_order_step` (the defaults always are), sigmoid and tanh compute
``f(a) + i b f'(a)`` in real arithmetic with a holomorphic backward (:class:`_FirstOrder`)
instead of complex ``exp``/division; a real input meets a complex weight in one real GEMM
(``linear``); average pooling runs as one real pool over the interleaved (re, im) pairs.

Gradients of the complex evaluation come from :func:`torch.autograd.grad`. PyTorch
returns the conjugate Wirtinger gradient: for a real ``L = Re f*(z)`` it gives
``dL/dx + i dL/dy = conj(f*'(z))``, so ``Im(g) = -Im(autograd)``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from secondorder import tensorlist as tl
from secondorder.curvature.functional import LossFunction, check_params, check_scalar_loss
from secondorder.errors import ComplexStepUnsupportedError, NonFiniteLossError

__all__ = [
    "ANALYTIC_OPS",
    "RULES",
    "STRUCTURAL_OPS",
    "CONV_RULES",
    "ComplexStepMode",
    "LINEAR_RULES",
    "base_name",
    "check_finite_loss",
    "check_point",
    "check_step",
    "complex_call",
    "complex_dtype",
    "complex_step_directional",
    "complex_step_hvp",
    "default_step",
    "first_order_step",
    "module_scope",
    "op_name",
    "real_part",
    "unsupported",
]

_COMPLEX_OF = {torch.float64: torch.complex128, torch.float32: torch.complex64}
_REAL_OF = {torch.complex128: torch.float64, torch.complex64: torch.float32}


# --------------------------------------------------------------------------- steps, dtypes


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype that carries ``dtype`` parameters (float64 -> complex128, ...).

    Raises:
        ValueError: for a dtype other than float32/float64 (half precision has no usable
            complex arithmetic in PyTorch).
    """
    if dtype in _COMPLEX_OF:
        return _COMPLEX_OF[dtype]
    if dtype in _REAL_OF:
        return dtype
    raise ValueError(
        f"complex step needs float32 or float64 parameters, got {dtype}; "
        "cast the parameters (and the model) to float32 or float64"
    )


def default_step(dtype: torch.dtype, order: int = 1) -> float:
    """Default complex step ``h`` for parameters of ``dtype``.

    The truncation error is ``O(h^2)`` relative and there is no cancellation, so ``h`` is
    limited only by underflow: the perturbation (``h`` for eq. 10, ``h^2`` for the
    bicomplex eq. 11) times small weights and activations must stay a normal number.

    Args:
        dtype: float64/complex128 or float32/complex64.
        order: 1 for eq. 5/10 (one imaginary unit), 2 for the bicomplex eq. 11.

    Returns:
        ``1e-20`` in float64 (both orders); in float32 ``1e-10`` (order 1) and ``1e-8``
        (order 2), measured in ``tests/curvature/test_complex_step.py``.

    Raises:
        ValueError: bad dtype or order.
    """
    if order not in (1, 2):
        raise ValueError(f"Invalid complex-step order: {order}; use 1 or 2")
    cdtype = complex_dtype(dtype)
    if cdtype == torch.complex128:
        return 1e-20
    return 1e-10 if order == 1 else 1e-8


def check_step(h: float | None, dtype: torch.dtype, order: int = 1) -> float:
    """``h`` as a float, or :func:`default_step` when ``None``.

    Raises:
        ValueError: if ``h`` is not positive and finite.
    """
    if h is None:
        return default_step(dtype, order)
    h = float(h)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"Invalid complex step: h={h}; it must be positive and finite")
    return h


# --------------------------------------------------------------------------- op names, errors


def op_name(func: Callable) -> str:
    """A torch function's plain name: ``"add"`` for ``torch.add``/``Tensor.add``,
    ``"shape"`` for the ``Tensor.shape`` getter, ``"max_pool2d"`` for ``F.max_pool2d``."""
    name = getattr(func, "__name__", None) or repr(func)
    if name in ("__get__", "__set__"):
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    return name


def base_name(name: str) -> str:
    """``"add_"`` -> ``"add"`` (in-place variant); dunders are kept."""
    if name.endswith("_") and not name.endswith("__"):
        return name[:-1]
    return name


class _ModuleStack(threading.local):
    def __init__(self) -> None:
        self.stack: list[tuple[str, nn.Module]] = []


_MODULES = _ModuleStack()


@contextlib.contextmanager
def module_scope(model: nn.Module | None) -> Iterator[None]:
    """Track which submodule of ``model`` is running, for error messages.

    Registers a forward pre-hook and a forward hook on each submodule for the duration of
    the block; they push and pop ``(qualified name, module)``.
    """
    if model is None or not isinstance(model, nn.Module):
        yield
        return
    handles = []
    depth = len(_MODULES.stack)

    def make_pre(name: str) -> Callable:
        def pre(module: nn.Module, args: Any) -> None:
            _MODULES.stack.append((name, module))

        return pre

    def post(module: nn.Module, args: Any, output: Any) -> None:
        if _MODULES.stack and _MODULES.stack[-1][1] is module:
            _MODULES.stack.pop()

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(make_pre(name)))
            handles.append(module.register_forward_hook(post, always_call=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        del _MODULES.stack[depth:]


def _where() -> str:
    if not _MODULES.stack:
        return ""
    name, module = _MODULES.stack[-1]
    label = name or "<root>"
    return f" in module {label!r} ({type(module).__name__})"


def unsupported(op: str, detail: str = "") -> ComplexStepUnsupportedError:
    """Build the error for an op without a complex-step rule, naming the current module."""
    msg = (
        f"complex step: op {op!r} has no complex-step-safe rule{_where()}; it is not known "
        "to be complex-analytic, so its complex evaluation would give a wrong derivative. "
        "Replace it, or add a rule to secondorder.curvature.complex_step.RULES"
    )
    if detail:
        msg += f" ({detail})"
    return ComplexStepUnsupportedError(msg)


# --------------------------------------------------------------------------- helpers


def real_part(x: Any) -> Any:
    """The value that decides branches: ``Re x`` detached (numbers pass through).

    Bicomplex numbers (:mod:`secondorder.curvature.bicomplex`) provide ``_branch_real``.
    """
    branch = getattr(type(x), "_branch_real", None)
    if branch is not None:
        return branch(x)
    if isinstance(x, Tensor):
        with torch._C.DisableTorchFunctionSubclass():
            x = x.detach()
            return x.real if x.is_complex() else x
    if isinstance(x, complex):
        return x.real
    return x


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _complex_target(args: Any, kwargs: Any) -> torch.dtype | None:
    """The widest complex dtype among the tensors in ``args``/``kwargs``, or ``None``."""
    found = None
    for t in _tensors((args, kwargs)):
        if t.is_complex():
            if found is None or t.dtype == torch.complex128:
                found = t.dtype
    return found


def _promote(obj: Any, cdtype: torch.dtype) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(cdtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_promote(o, cdtype) for o in obj)
    if isinstance(obj, list):
        return [_promote(o, cdtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _promote(v, cdtype) for k, v in obj.items()}
    return obj


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _reduce(loss: Any, reduction: str, op: str) -> Any:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{op}: invalid reduction {reduction!r}")


def _legacy_reduction(kwargs: dict, args: tuple, size_pos: int, reduce_pos: int,
                      red_pos: int) -> str:
    size_average = _arg(args, kwargs, size_pos, "size_average")
    reduce = _arg(args, kwargs, reduce_pos, "reduce")
    reduction = _arg(args, kwargs, red_pos, "reduction", "mean")
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce, emit_warning=False)
    return reduction


# --------------------------------------------------------------------------- rules
# Each rule takes the torch function's own arguments and uses only analytic torch ops
# (add, mul, div, exp, log, log1p, expm1, sqrt, sum, mean, gather, where on a real mask,
# reshapes), so the same rule also runs on bicomplex numbers.


class _FirstOrderState(threading.local):
    def __init__(self) -> None:
        self.active = False


_FIRST_ORDER = _FirstOrderState()

#: Margin below ``sqrt(eps)`` for :func:`first_order_step`: the imaginary parts are ``h``
#: times the direction and the activations' sensitivities, allowed up to ``1e4`` here.
_FIRST_ORDER_MARGIN = 1e-4


def first_order_step(dtype: torch.dtype) -> float:
    """Largest step ``h`` at which elementwise rules may drop ``O(h^2)`` terms exactly.

    For an analytic ``f`` and ``z = a + i b`` with ``b = O(h)``,
    ``f(z) = f(a) - b^2 f''(a) / 2 + i b (f'(a) - b^2 f'''(a) / 6) + O(b^4)``. The
    neglected terms are ``O(|b|^2 |f''| / |f|)`` relative to the real part and
    ``O(|b|^2 |f'''| / |f'|)`` relative to the imaginary part, so once ``|b|^2 <= eps``
    they are below the rounding of the real dtype and complex arithmetic itself computes
    ``f(a) + i b f'(a)``. With ``h <= 1e-4 sqrt(eps)`` this holds for imaginary parts up
    to ``1e4 h`` (directions times activation sensitivities up to ``1e4``); the default
    steps (``1e-20`` in float64, ``1e-10`` in float32) are far below. Larger steps (the
    seed 002 Fig. 1 sweep) keep the true complex evaluation.

    Args:
        dtype: the real or complex dtype of the parameters.

    Returns:
        ``1e-4 * sqrt(eps)`` of the real dtype (about ``1.5e-12`` in float64 and
        ``3.5e-8`` in float32).

    Raises:
        ValueError: for a dtype other than float32/float64 (or their complex dtypes).
    """
    real = _REAL_OF[complex_dtype(dtype)]
    return _FIRST_ORDER_MARGIN * math.sqrt(torch.finfo(real).eps)


class _FirstOrder(torch.autograd.Function):
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


def _first_order(input: Any) -> bool:
    """Whether a rule may use :class:`_FirstOrder` on ``input``: a plain complex tensor
    under a :class:`ComplexStepMode` whose step is at most :func:`first_order_step`."""
    return _FIRST_ORDER.active and type(input) is Tensor and input.is_complex()


def _sigmoid_derivs(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(a)
    d1 = s * (1.0 - s)
    return s, d1, d1 * (1.0 - 2.0 * s)


def _tanh_derivs(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.tanh(a)
    d1 = 1.0 - t * t
    return t, d1, -2.0 * t * d1


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


def _softplus_core(x: Any) -> Any:
    """``log(1 + exp(x))`` = ``max(x, 0) + log1p(exp(-|x|))``, branches by ``Re x``."""
    pos = real_part(x) > 0
    return torch.where(pos, x, 0.0) + torch.log1p(torch.exp(-torch.where(pos, x, -x)))


def _softplus(input: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    x = input * beta
    out = _softplus_core(x) / beta
    return torch.where(real_part(x) > threshold, input, out)


def _sigmoid(input: Any, *args: Any, **kwargs: Any) -> Any:
    if _first_order(input):
        return _FirstOrder.apply(input, _sigmoid_derivs)
    pos = real_part(input) >= 0
    e = torch.exp(-torch.where(pos, input, -input))  # exp(-|x|), never overflows
    return torch.where(pos, 1.0 / (1.0 + e), e / (1.0 + e))


def _tanh(input: Any) -> Any:
    if _first_order(input):
        return _FirstOrder.apply(input, _tanh_derivs)
    return torch.tanh(input)


def _logsigmoid(input: Any) -> Any:
    return -_softplus_core(-input)


def _silu(input: Any, inplace: bool = False) -> Any:
    return input * _sigmoid(input)


def _gelu(input: Any, approximate: str = "none") -> Any:
    if approximate != "tanh":
        raise unsupported("gelu", "exact GELU needs erf, which has no complex kernel; "
                                  "use nn.GELU(approximate='tanh')")
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * input * (1.0 + torch.tanh(c * (input + 0.044715 * input * input * input)))


def _mish(input: Any, inplace: bool = False) -> Any:
    return input * torch.tanh(_softplus_core(input))


def _clamp(input: Any, min: Any = None, max: Any = None) -> Any:
    r = real_part(input)
    out = input
    if min is not None:
        out = torch.where(r < real_part(min), min, out)
    if max is not None:
        out = torch.where(r > real_part(max), max, out)
    return out


def _clamp_min(input: Any, min: Any) -> Any:
    return _clamp(input, min=min)


def _clamp_max(input: Any, max: Any) -> Any:
    return _clamp(input, max=max)


def _hardtanh(
    input: Any, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> Any:
    return _clamp(input, min_val, max_val)


def _relu6(input: Any, inplace: bool = False) -> Any:
    return _clamp(input, 0.0, 6.0)


def _abs(input: Any) -> Any:
    return torch.where(real_part(input) >= 0, input, -input)


def _sign(input: Any) -> Any:
    return torch.sign(real_part(input))


def _compare(name: str) -> Callable:
    real_op = getattr(torch, name)

    def rule(input: Any, other: Any, *args: Any, **kwargs: Any) -> Any:
        return real_op(real_part(input), real_part(other))

    return rule


def _arg_extreme(name: str) -> Callable:
    real_op = getattr(torch, name)

    def rule(input: Any, *args: Any, **kwargs: Any) -> Any:
        return real_op(real_part(input), *args, **kwargs)

    return rule


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
            return _maximum(input, dim) if largest else _minimum(input, dim)
        if "other" in kwargs:
            other = kwargs["other"]
            return _maximum(input, other) if largest else _minimum(input, other)
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


def _maximum(input: Any, other: Any) -> Any:
    return torch.where(real_part(input) >= real_part(other), input, other)


def _minimum(input: Any, other: Any) -> Any:
    return torch.where(real_part(input) <= real_part(other), input, other)


def _shift(input: Any, dim: int) -> Tensor:
    """The real part's max over ``dim`` (keepdim), detached; ``0`` where it is not finite."""
    m = real_part(input).amax(dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _legacy_dim(input: Any, dim: Any) -> int:
    if dim is None:
        return 0 if input.dim() in (0, 1, 3) else 1
    return dim


def _softmax(input: Any, dim: Any = None, *args: Any, **kwargs: Any) -> Any:
    dim = _legacy_dim(input, dim)
    e = torch.exp(input - _shift(input, dim))
    return e / e.sum(dim, keepdim=True)


def _log_softmax(input: Any, dim: Any = None, *args: Any, **kwargs: Any) -> Any:
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
    return _reduce(loss, reduction, "nll_loss")


def _nll_loss(input: Any, target: Tensor, *args: Any, **kwargs: Any) -> Any:
    weight = _arg(args, kwargs, 0, "weight")
    ignore_index = _arg(args, kwargs, 2, "ignore_index", -100)
    reduction = _legacy_reduction(kwargs, args, 1, 3, 4)
    return _nll(input, target, weight, ignore_index, reduction)


def _cross_entropy(input: Any, target: Tensor, *args: Any, **kwargs: Any) -> Any:
    weight = _arg(args, kwargs, 0, "weight")
    ignore_index = _arg(args, kwargs, 2, "ignore_index", -100)
    reduction = _legacy_reduction(kwargs, args, 1, 3, 4)
    smoothing = _arg(args, kwargs, 5, "label_smoothing", 0.0)
    cdim = 1 if input.dim() >= 2 else 0
    logp = _log_softmax(input, cdim)
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
        return _reduce(loss, reduction, "cross_entropy")
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
        smooth = _reduce(smooth, reduction, "cross_entropy")
    return nll * (1.0 - smoothing) + smooth * smoothing


def _mse_loss(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    reduction = _legacy_reduction(kwargs, args, 0, 1, 2)
    d = input - target
    return _reduce(d * d, reduction, "mse_loss")


def _l1_loss(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    reduction = _legacy_reduction(kwargs, args, 0, 1, 2)
    return _reduce(_abs(input - target), reduction, "l1_loss")


def _bce_with_logits(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    weight = _arg(args, kwargs, 0, "weight")
    reduction = _legacy_reduction(kwargs, args, 1, 2, 3)
    pos_weight = _arg(args, kwargs, 4, "pos_weight")
    sp = _softplus_core(-input)  # -log sigmoid(x)
    if pos_weight is not None:
        sp = sp * ((pos_weight - 1.0) * target + 1.0)
    loss = (1.0 - target) * input + sp
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def _bce(input: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
    weight = _arg(args, kwargs, 0, "weight")
    reduction = _legacy_reduction(kwargs, args, 1, 2, 3)
    log_p = _clamp(torch.log(input), min=-100.0)
    log_q = _clamp(torch.log(1.0 - input), min=-100.0)
    loss = -(target * log_p + (1.0 - target) * log_q)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy")


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


def _detach_in_place(input: Any) -> Any:
    raise unsupported("detach_", "in-place detach of a complex-step tensor cannot drop its "
                                 "imaginary part; use x = x.detach()")


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


def _split_linear(func: Callable) -> Callable:
    """A real-linear op without a complex kernel: ``L(x) = L(Re x) + i L(Im x)``.

    For a linear map with real coefficients this is the holomorphic extension, and
    autograd through ``real``/``imag``/``complex`` returns its (conjugate) adjoint.
    """

    def rule(input: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(input, Tensor) or not input.is_complex():
            return func(input, *args, **kwargs)
        return torch.complex(func(input.real, *args, **kwargs), func(input.imag, *args, **kwargs))

    return rule


def _tuple(value: Any, nd: int) -> tuple:
    if isinstance(value, (tuple, list)):
        return tuple(value) if len(value) == nd else tuple(value) * nd
    return (value,) * nd


def _interleaved_avg_pool(nd: int) -> Callable:
    """``avg_pool{nd}d`` of a complex tensor as one real ``avg_pool{nd+1}d``.

    ``view_as_real`` appends the (re, im) pair as a last dimension of size 2; a window of
    size 1 and stride 1 over it pools both parts at once and returns them already
    interleaved, so no strided ``Re``/``Im`` copies and no ``torch.complex`` are needed.
    The same real-linear map as :func:`_split_linear`.
    """
    real_pool = getattr(F, f"avg_pool{nd}d")
    wide_pool = getattr(F, f"avg_pool{nd + 1}d")

    def rule(input: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
             ceil_mode: bool = False, count_include_pad: bool = True,
             *args: Any, **kwargs: Any) -> Any:
        if type(input) is not Tensor or not input.is_complex():
            return _split_linear(real_pool)(input, kernel_size, stride, padding, ceil_mode,
                                            count_include_pad, *args, **kwargs)
        kernel = _tuple(kernel_size, nd) + (1,)
        step = kernel if stride is None or stride == [] or stride == () else (
            _tuple(stride, nd) + (1,))
        out = wide_pool(torch.view_as_real(input), kernel, step, _tuple(padding, nd) + (0,),
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
            return _split_linear(real_pool)(input, output_size)
        size = tuple(
            input.shape[input.dim() - nd + k] if s is None else s
            for k, s in enumerate(_tuple(output_size, nd))
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
        if (fast and not kwargs and _first_order(input) and _first_order(weight)
                and input.dim() == spatial + 2 and not any(isinstance(a, str) for a in args)):
            stride, padding, dilation, groups = (*args, *(1, 0, 1, 1)[len(args):])[:4]
            out = _FirstOrderConv.apply(
                input, weight, func, *[list(_tuple(a, spatial)) for a in (stride, padding,
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
        cdtype = _complex_target((input, weight), {}) or weight.dtype
        out = F.linear(_promote(input, cdtype), _promote(weight, cdtype))
    return out if bias is None else out + bias


def _cast(name: str) -> Callable:
    def rule(input: Any, *args: Any, **kwargs: Any) -> Any:
        if name == "float":
            return input.to(torch.complex64)
        if name == "double":
            return input.to(torch.complex128)
        if name == "type_as":
            return input.to(complex_dtype(args[0].dtype))
        args = tuple(_COMPLEX_OF.get(a, a) if isinstance(a, torch.dtype) else a for a in args)
        if isinstance(kwargs.get("dtype"), torch.dtype):
            kwargs = dict(kwargs, dtype=_COMPLEX_OF.get(kwargs["dtype"], kwargs["dtype"]))
        if args and isinstance(args[0], Tensor):  # x.to(other)
            args = (args[0].dtype if args[0].is_complex() else complex_dtype(args[0].dtype),
                    *args[1:])
        return getattr(torch.Tensor, name)(input, *args, **kwargs)

    return rule


#: Complex-step-safe replacements, keyed by :func:`op_name` (in-place names map to these).
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
    "clamp": _clamp,
    "clip": _clamp,
    "clamp_min": _clamp_min,
    "clamp_max": _clamp_max,
    "abs": _abs,
    "absolute": _abs,
    "sign": _sign,
    "linear": _linear,
    "max": _max_min(True, torch.return_types.max),
    "min": _max_min(False, torch.return_types.min),
    "amax": _amax_amin(True),
    "amin": _amax_amin(False),
    "maximum": _maximum,
    "minimum": _minimum,
    "fmax": _maximum,
    "fmin": _minimum,
    "argmax": _arg_extreme("argmax"),
    "argmin": _arg_extreme("argmin"),
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "logsumexp": _logsumexp,
    "cross_entropy": _cross_entropy,
    "nll_loss": _nll_loss,
    "mse_loss": _mse_loss,
    "l1_loss": _l1_loss,
    "binary_cross_entropy_with_logits": _bce_with_logits,
    "binary_cross_entropy": _bce,
    "detach": _detach,
    "detach_": _detach_in_place,
    "dropout": _identity,
    "dropout1d": _identity,
    "dropout2d": _identity,
    "dropout3d": _identity,
    "alpha_dropout": _identity,
    "feature_alpha_dropout": _identity,
    "batch_norm": _batch_norm,
    "layer_norm": _layer_norm,
    "group_norm": _group_norm,
    "to": _cast("to"),
    "type": _cast("type"),
    "float": _cast("float"),
    "double": _cast("double"),
    "type_as": _cast("type_as"),
}
for _nd in (1, 2, 3):
    RULES[f"max_pool{_nd}d"] = _max_pool(_nd)
    RULES[f"max_pool{_nd}d_with_indices"] = _max_pool_with_indices(_nd)
    RULES[f"adaptive_max_pool{_nd}d"] = _adaptive_max_pool(_nd)
    RULES[f"adaptive_max_pool{_nd}d_with_indices"] = _adaptive_max_pool(_nd)
for _cmp in ("gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal",
             "less_equal", "not_equal"):
    RULES[_cmp] = _compare(_cmp)
for _dunder, _cmp in (("__gt__", "gt"), ("__lt__", "lt"), ("__ge__", "ge"), ("__le__", "le"),
                      ("__eq__", "eq"), ("__ne__", "ne")):
    RULES[_dunder] = _compare(_cmp)

#: Real-linear ops handled by :func:`_split_linear` (no complex kernel); a bicomplex number
#: applies them to each component.
LINEAR_RULES: dict[str, Callable] = {}
for _nd in (1, 2, 3):
    for _name in (f"avg_pool{_nd}d", f"adaptive_avg_pool{_nd}d"):
        LINEAR_RULES[_name] = _split_linear(getattr(F, _name))
LINEAR_RULES["interpolate"] = _split_linear(F.interpolate)
RULES.update(LINEAR_RULES)
for _nd in (1, 2):  # one real pool over the interleaved (re, im) pairs
    RULES[f"avg_pool{_nd}d"] = _interleaved_avg_pool(_nd)
    RULES[f"adaptive_avg_pool{_nd}d"] = _interleaved_adaptive_avg_pool(_nd)
#: Convolutions: bilinear in (input, weight), see :func:`_conv`.
CONV_RULES: dict[str, Callable] = {}
for _nd in (1, 2, 3):
    for _name in (f"conv{_nd}d", f"conv_transpose{_nd}d"):
        CONV_RULES[_name] = _conv(getattr(F, _name))
RULES.update(CONV_RULES)

#: Complex-analytic ops that run natively on complex tensors (after promotion).
ANALYTIC_OPS: frozenset[str] = frozenset(
    """add sub subtract rsub mul multiply div divide true_divide neg negative positive pow
    square sqrt rsqrt reciprocal exp exp2 log log2 log10 log1p expm1 sin cos tan sinh cosh
    tanh matmul mm bmm mv dot inner outer ger einsum linear sum mean nansum prod cumsum cumprod
    trace addmm addmv addbmm baddbmm addcmul addcdiv lerp tensordot kron embedding pad
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
    _version output_nr _base names copy fill zero __repr__ __format__ __hash__
    __iter__ __reversed__ __array_priority__ __dlpack_device__ __deepcopy__
    __reduce_ex__ __setstate__ __torch_function__ __len__ has_names""".split()
)


def complex_call(func: Callable, args: tuple = (), kwargs: dict | None = None) -> Any:
    """Evaluate one torch function under complex-step semantics.

    Real-only calls run unchanged; calls that meet a complex tensor use a rule from
    :data:`RULES`, or run natively (with real floating arguments promoted) when the op is in
    :data:`ANALYTIC_OPS` or :data:`STRUCTURAL_OPS`.

    Raises:
        ComplexStepUnsupportedError: a complex tensor reaches an op with no rule that is not
            known to be analytic; the message names the op and the current module.
    """
    kwargs = kwargs or {}
    cdtype = _complex_target(args, kwargs)
    if cdtype is None:
        return func(*args, **kwargs)
    name = op_name(func)
    base = base_name(name)
    rule = RULES.get(name) or RULES.get(base)
    if rule is not None:
        return rule(*args, **kwargs)
    if name in ANALYTIC_OPS or base in ANALYTIC_OPS or name in STRUCTURAL_OPS or (
        base in STRUCTURAL_OPS
    ):
        return func(*_promote(args, cdtype), **_promote(kwargs, cdtype))
    raise unsupported(name)


class ComplexStepMode(TorchFunctionMode):
    """While active, torch functions follow complex-step-safe rules (module docstring).

    Args:
        model: optional module whose submodules are tracked to name the module in which an
            unsupported op was called.
        first_order: let elementwise rules (sigmoid, tanh) compute ``f(a) + i b f'(a)`` in
            real arithmetic (:class:`_FirstOrder`). Exact to rounding only when the step is
            at most :func:`first_order_step`; :func:`complex_step_hvp` and
            :func:`complex_step_directional` decide that from ``h``.

    Example:
        >>> z = torch.tensor([-1.0 + 1e-20j, 2.0 + 1e-20j], dtype=torch.complex128)
        >>> with ComplexStepMode():
        ...     y = torch.relu(z)
        >>> y.imag / 1e-20
        tensor([0., 1.], dtype=torch.float64)
    """

    def __init__(self, model: nn.Module | None = None, first_order: bool = False) -> None:
        super().__init__()
        self.model = model
        self.first_order = bool(first_order)
        self._outer_first_order = False
        self._scope: contextlib.ExitStack | None = None

    def __enter__(self) -> ComplexStepMode:
        self._scope = contextlib.ExitStack()
        self._scope.enter_context(module_scope(self.model))
        self._outer_first_order = _FIRST_ORDER.active
        _FIRST_ORDER.active = self.first_order
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            _FIRST_ORDER.active = self._outer_first_order
            if self._scope is not None:
                self._scope.close()
                self._scope = None

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        return complex_call(func, args, kwargs)


# --------------------------------------------------------------------------- products


def _complex_point(params: tuple[Tensor, ...], vec: Sequence[Tensor], h: float) -> tuple:
    return tuple(
        torch.complex(p.detach(), v.detach().to(p.dtype) * h)
        for p, v in zip(params, vec, strict=True)
    )


def check_finite_loss(value: Tensor) -> None:
    """Raise :class:`~secondorder.errors.NonFiniteLossError` unless ``value`` is finite.

    ``value`` is the real part of a complex (or bicomplex) evaluation: ``f(w)`` to
    ``O(h^2)``. One host sync, the same as the autograd backend's check.

    Raises:
        NonFiniteLossError: ``value`` is NaN or infinite.
    """
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteLossError(f"the loss is not finite: {value.reshape(()).item()}")


def check_point(params: Sequence[Tensor], vec: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Validate a point and a direction for the complex step; return ``params`` as a tuple.

    Raises:
        ValueError: bad ``params``, ``vec`` not shaped like them, or a dtype other than
            float32/float64.
    """
    params = check_params(params)
    tl.check_like(vec, params, "vec")
    for p in params:
        complex_dtype(p.dtype)
        if p.is_complex():
            raise ValueError(f"complex step needs real parameters, got {p.dtype}")
    return params


def complex_step_hvp(
    loss_fn: LossFunction,
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
    h: float | None = None,
) -> tuple[Tensor, ...]:
    """Hessian-vector product by the complex step, seed 002 eq. 10.

    ``H v = Im(g(w + i h v)) / h``: one complex forward pass (under
    :class:`ComplexStepMode`) and one backward pass. Exact to rounding for any ``h`` small
    enough that ``h^2`` is negligible (no subtractive cancellation, seed 002 Fig. 1).

    Args:
        loss_fn: scalar loss of a list of tensors; a ``.model`` attribute (set by
            :func:`~secondorder.curvature.functional_loss`) lets errors name the module.
        params: the point ``w`` (float32 or float64 tensors).
        vec: the direction ``v``, shaped like ``params``.
        h: complex step (default :func:`default_step`).

    Returns:
        A tuple shaped like ``params`` (their dtype).

    Raises:
        ValueError: bad ``params``/``vec``/``h``, non-float32/64 parameters, non-scalar loss.
        NonFiniteLossError: the loss is NaN or infinite.
        ComplexStepUnsupportedError: the loss uses an op without a complex-step rule.

    Example:
        >>> f = lambda ps: (ps[0] ** 3).sum()
        >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> hv = complex_step_hvp(f, [w], [torch.ones(2, dtype=torch.float64)])[0]  # 6 w
        >>> [round(x, 12) for x in hv.tolist()]
        [6.0, 12.0]
    """
    params = check_point(params, vec)
    h = check_step(h, params[0].dtype)
    zs = tuple(z.requires_grad_(True) for z in _complex_point(params, vec, h))
    first_order = h <= first_order_step(params[0].dtype)
    with torch.enable_grad():
        with ComplexStepMode(getattr(loss_fn, "model", None), first_order):
            loss = loss_fn(zs)
        loss = check_scalar_loss(loss, check_finite=False)
        check_finite_loss(loss.detach().real)
        if not loss.requires_grad:
            return tl.zeros_like(params)
        grads = torch.autograd.grad(loss.real, zs, allow_unused=True)
    # autograd gives conj(f*'(z)); Im of the holomorphic gradient is -Im of it.
    return tuple(
        torch.zeros_like(p) if g is None else (g.imag * (-1.0 / h)).to(p.dtype)
        for p, g in zip(params, grads, strict=True)
    )


def complex_step_directional(
    loss_fn: LossFunction,
    params: Sequence[Tensor],
    vec: Sequence[Tensor],
    h: float | None = None,
) -> Tensor:
    """Directional derivative ``g^T v = Im f(w + i h v) / h`` (seed 002 eq. 5 along ``v``).

    One complex forward pass, no backward.

    Args:
        loss_fn: scalar loss of a list of tensors.
        params: the point ``w``.
        vec: the direction ``v``, shaped like ``params``.
        h: complex step (default :func:`default_step`).

    Returns:
        A 0-dim tensor of the parameters' dtype.

    Raises:
        ValueError: bad ``params``/``vec``/``h`` or non-scalar loss.
        NonFiniteLossError: the loss is NaN or infinite.
        ComplexStepUnsupportedError: the loss uses an op without a complex-step rule.

    Example:
        >>> f = lambda ps: (ps[0] ** 2).sum()
        >>> w = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> complex_step_directional(f, [w], [torch.tensor([1.0, 1.0], dtype=torch.float64)])
        tensor(6., dtype=torch.float64)
    """
    params = check_point(params, vec)
    h = check_step(h, params[0].dtype)
    zs = _complex_point(params, vec, h)
    first_order = h <= first_order_step(params[0].dtype)
    with torch.no_grad(), ComplexStepMode(getattr(loss_fn, "model", None), first_order):
        loss = loss_fn(zs)
    loss = check_scalar_loss(loss, check_finite=False)
    check_finite_loss(loss.real)
    if not loss.is_complex():
        return torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    return (loss.imag / h).to(params[0].dtype)
