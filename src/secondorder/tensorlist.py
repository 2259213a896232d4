"""Vector arithmetic on lists of tensors.

Curvature products, line searches and Krylov solvers all work on "vectors" that are
tuples of tensors shaped like a model's parameters. These helpers are the one place that
arithmetic lives. Every reduction returns a 0-dim tensor on the tensors' device: callers
never have to call ``.item()`` (a host sync) inside a hot loop.

Built on the ``torch._foreach_*`` kernels, which fuse the per-tensor loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

TensorList = tuple[Tensor, ...]

__all__ = [
    "TensorList",
    "add",
    "axpy",
    "clone",
    "dot",
    "flatten",
    "lincomb",
    "mul",
    "neg",
    "norm",
    "scale",
    "sub",
    "unflatten",
    "zeros_like",
    "check_like",
    "all_finite",
    "read_floats",
]


def _t(xs: Sequence[Tensor]) -> list[Tensor]:
    return list(xs)


def check_like(vec: Sequence[Tensor], like: Sequence[Tensor], name: str = "vec") -> None:
    """Raise ``ValueError`` unless ``vec`` has one tensor per entry of ``like``, same shapes.

    Args:
        vec: the vector to check.
        like: the reference (usually the parameters).
        name: how the error message calls ``vec``.

    Raises:
        ValueError: if the number of tensors or any shape differs.
    """
    if isinstance(vec, Tensor):
        raise ValueError(
            f"{name} must be a sequence of tensors shaped like the parameters, got a single "
            f"tensor of shape {tuple(vec.shape)}"
        )
    if len(vec) != len(like):
        raise ValueError(f"{name} has {len(vec)} tensors but there are {len(like)} parameters")
    for i, (v, p) in enumerate(zip(vec, like, strict=True)):
        if v.shape != p.shape:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(v.shape)} but parameter {i} has shape "
                f"{tuple(p.shape)}"
            )


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product ``sum_i <a_i, b_i>`` as a 0-dim tensor (real part for complex)."""
    n = len(a)
    if n == 1 and len(b) == 1:  # one kernel, no stack (the common one-tensor case first)
        x, y = a[0], b[0]
        if not x.is_complex():
            if x.dim() == 1 and y.dim() == 1:
                return torch.dot(x, y)
            return torch.dot(x.reshape(-1), y.reshape(-1))
    if n == 0:
        return torch.zeros(())
    return torch.stack(
        [torch.vdot(_flat(x), _flat(y)) for x, y in zip(a, b, strict=True)]
    ).sum()


def _flat(x: Tensor) -> Tensor:
    """``x.reshape(-1)``; ``x`` itself when already 1-D (no new view: a step on a model of a
    few parameters spends a visible share of its time creating views)."""
    return x if x.dim() == 1 else x.reshape(-1)


def norm(a: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of the concatenated vector, a 0-dim tensor."""
    if len(a) == 0:
        return torch.zeros(())
    if len(a) == 1:  # one kernel instead of three: the norm of [||a_0||] is ||a_0|| (the
        # same bits on the CPU; a GPU may reduce in another order, so the last bit may differ)
        return torch.linalg.vector_norm(a[0])
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(_t(a))))


def add(a: Sequence[Tensor], b: Sequence[Tensor], alpha: float | Tensor = 1.0) -> TensorList:
    """``a + alpha * b`` (new tensors)."""
    if isinstance(alpha, Tensor):
        return tuple(torch._foreach_add(_t(a), torch._foreach_mul(_t(b), alpha)))
    return tuple(torch._foreach_add(_t(a), _t(b), alpha=alpha))


def axpy(alpha: float | Tensor, x: Sequence[Tensor], y: Sequence[Tensor]) -> TensorList:
    """``y + alpha * x`` (new tensors); ``alpha`` may be a 0-dim tensor."""
    return add(y, x, alpha)


def sub(a: Sequence[Tensor], b: Sequence[Tensor]) -> TensorList:
    """``a - b`` (new tensors)."""
    return tuple(torch._foreach_sub(_t(a), _t(b)))


def scale(a: Sequence[Tensor], s: float | Tensor) -> TensorList:
    """``s * a`` (new tensors); ``s`` may be a 0-dim tensor."""
    return tuple(torch._foreach_mul(_t(a), s))


def mul(a: Sequence[Tensor], b: Sequence[Tensor]) -> TensorList:
    """Elementwise product (new tensors)."""
    return tuple(torch._foreach_mul(_t(a), _t(b)))


def neg(a: Sequence[Tensor]) -> TensorList:
    """``-a`` (new tensors)."""
    return tuple(torch._foreach_neg(_t(a)))


def lincomb(coeffs: Sequence[float | Tensor], vecs: Sequence[Sequence[Tensor]]) -> TensorList:
    """``sum_k coeffs[k] * vecs[k]`` (new tensors)."""
    out = scale(vecs[0], coeffs[0])
    for c, v in zip(coeffs[1:], vecs[1:], strict=True):
        out = add(out, v, c)
    return out


def clone(a: Sequence[Tensor]) -> TensorList:
    """Detached copies."""
    return tuple(x.detach().clone() for x in a)


def zeros_like(a: Sequence[Tensor]) -> TensorList:
    """Zeros shaped like ``a``."""
    return tuple(torch.zeros_like(x) for x in a)


def flatten(a: Sequence[Tensor]) -> Tensor:
    """Concatenate into one 1-D tensor."""
    if len(a) == 0:
        return torch.zeros(0)
    return torch.cat([x.reshape(-1) for x in a])


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> TensorList:
    """Split a 1-D tensor into tensors shaped like ``like``.

    Raises:
        ValueError: if ``vec`` does not have exactly as many entries as ``like``.
    """
    total = sum(p.numel() for p in like)
    if vec.dim() != 1 or vec.numel() != total:
        raise ValueError(
            f"expected a 1-D tensor with {total} entries, got shape {tuple(vec.shape)}"
        )
    out, i = [], 0
    for p in like:
        n = p.numel()
        out.append(vec[i : i + n].view_as(p))
        i += n
    return tuple(out)


def all_finite(a: Sequence[Tensor]) -> Tensor:
    """0-dim bool tensor: every entry of every tensor is finite."""
    if len(a) == 0:
        return torch.ones((), dtype=torch.bool)
    if len(a) == 1:
        return torch.isfinite(a[0]).all()
    return torch.stack([torch.isfinite(x).all() for x in a]).all()


def read_floats(values: Sequence[Tensor]) -> list[float]:
    """The values of one-element floating-point tensors (on one device) as Python floats,
    in one host read.

    They are stacked in their common dtype (an upcast between floating dtypes, which is
    exact), so each float is what ``float()`` of that tensor alone gives. (An integer mixed
    with a narrow float would be rounded by the promotion: callers pass floats.) The
    conversions that would be no-ops (a reshape of a 0-dim tensor, a cast to its own dtype)
    are skipped: on a model of a few parameters each still costs a dispatch, and optimizers
    read such values every step.
    """
    vals = [v if v.dim() == 0 else v.reshape(()) for v in values]
    dt = vals[0].dtype
    for v in vals:  # (a loop, not any(...): no generator frame per value)
        if v.dtype is not dt:
            for w in vals[1:]:
                dt = torch.promote_types(dt, w.dtype)
            vals = [w.to(dt) for w in vals]
            break
    return torch.stack(vals).tolist()
