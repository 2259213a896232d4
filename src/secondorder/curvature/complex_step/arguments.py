"""Reading and promoting the arguments of torch functions under the complex step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "argument",
    "complex_target",
    "legacy_reduction",
    "promote",
    "real_part",
    "reduce_loss",
]


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


def complex_target(args: Any, kwargs: Any) -> torch.dtype | None:
    """The widest complex dtype among the tensors in ``args``/``kwargs``, or ``None``."""
    found = None
    for t in _tensors((args, kwargs)):
        if t.is_complex():
            if found is None or t.dtype == torch.complex128:
                found = t.dtype
    return found


def promote(obj: Any, cdtype: torch.dtype) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(cdtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(promote(o, cdtype) for o in obj)
    if isinstance(obj, list):
        return [promote(o, cdtype) for o in obj]
    if isinstance(obj, dict):
        return {k: promote(v, cdtype) for k, v in obj.items()}
    return obj


def argument(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def reduce_loss(loss: Any, reduction: str, op: str) -> Any:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{op}: invalid reduction {reduction!r}")


def legacy_reduction(kwargs: dict, args: tuple, size_pos: int, reduce_pos: int,
                      red_pos: int) -> str:
    size_average = argument(args, kwargs, size_pos, "size_average")
    reduce = argument(args, kwargs, reduce_pos, "reduce")
    reduction = argument(args, kwargs, red_pos, "reduction", "mean")
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce, emit_warning=False)
    return reduction
