"""The complex-step mode: every torch function that meets a complex tensor goes through
a rule, runs natively if analytic or structural, or raises (package docstring)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from secondorder.curvature.complex_step import (
    attention,
    elementwise,
    linear_maps,
    losses,
    reductions,
    structural,
)
from secondorder.curvature.complex_step.arguments import complex_target, promote
from secondorder.curvature.complex_step.first_order import FIRST_ORDER
from secondorder.curvature.complex_step.scope import base_name, module_scope, op_name, unsupported
from secondorder.curvature.complex_step.structural import (
    ANALYTIC_OPS,
    COMPOSITE_OPS,
    STRUCTURAL_OPS,
)

__all__ = ["ComplexStepMode", "RULES", "complex_call"]

#: Complex-step-safe replacements, keyed by :func:`op_name` (in-place names map to these).
RULES: dict[str, Callable] = {
    **elementwise.RULES,
    **reductions.RULES,
    **losses.RULES,
    **linear_maps.RULES,
    **structural.RULES,
    **attention.RULES,
}


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
    cdtype = complex_target(args, kwargs)
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
        return func(*promote(args, cdtype), **promote(kwargs, cdtype))
    raise unsupported(name)


class ComplexStepMode(TorchFunctionMode):
    """While active, torch functions follow complex-step-safe rules (module docstring).

    Args:
        model: optional module whose submodules are tracked to name the module in which an
            unsupported op was called.
        first_order: let elementwise rules (sigmoid, tanh) compute ``f(a) + i b f'(a)`` in
            real arithmetic (:class:`FirstOrder`). Exact to rounding only when the step is
            at most :func:`first_order_step`; :func:`complex_step_hvp` and
            :func:`complex_step_directional` decide that from ``h``.

    Example:
        >>> import torch
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
        self._outer_first_order = FIRST_ORDER.active
        FIRST_ORDER.active = self.first_order
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            FIRST_ORDER.active = self._outer_first_order
            if self._scope is not None:
                self._scope.close()
                self._scope = None

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        if op_name(func) in COMPOSITE_OPS:
            # Run the body with this mode on the stack, skipping only its own dispatch.
            TorchFunctionMode.__enter__(self)
            try:
                return torch.overrides.redispatch_function(func, types, args, kwargs or {})
            finally:
                TorchFunctionMode.__exit__(self, None, None, None)
        return complex_call(func, args, kwargs)
