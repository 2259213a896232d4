"""Op names and the error for an op without a rule, naming the module it ran in."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from secondorder.errors import ComplexStepUnsupportedError

__all__ = ["base_name", "module_scope", "op_name", "unsupported"]


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
