"""``torch.autograd.grad`` for plain tensors, without its Python-level argument handling.

``torch.autograd.grad`` normalizes its arguments, checks every ``grad_outputs`` tensor's
shape against its output in Python (symbolic-shape helpers included), builds the implicit
``ones`` for a scalar output and then calls the autograd engine. On a model of a few
parameters that handling is a visible share of a gradient or a Hessian-vector product
(about 20 Python calls each, several per optimizer step). :func:`engine_grad` makes the
same engine call (torch's own ``_engine_run_backward``, which keeps the compiler context and
the debug logging hooks) with the same arguments, so the result is the same tensor bit for
bit; the engine itself still checks the shapes, dtypes and devices of ``grad_outputs``
against the outputs. Anything outside the plain case -- a tensor subclass or a
``__torch_function__`` mode (``torch._C._has_torch_function``), an implicit gradient of an
output that does not require grad or has more than one element, or a torch without the
engine entry point -- goes through ``torch.autograd.grad`` itself, with its checks and
error messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["engine_grad"]

try:  # torch's wrapper around the C++ engine call (private: fall back when absent)
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - depends on the torch version
    _engine_run_backward = None


def _engine_call_agrees() -> bool:
    """Whether the engine entry point takes torch 2.x's arguments and returns what
    ``torch.autograd.grad`` returns (a gradient and a Hessian-vector product of a small
    cubic, checked once at import; a torch that changed the private call falls back)."""
    if _engine_run_backward is None:
        return False
    try:
        with torch.inference_mode(False), torch.enable_grad():  # even under no_grad
            x = torch.tensor([0.5, -2.0], dtype=torch.float64, requires_grad=True)
            v = torch.tensor([1.0, 3.0], dtype=torch.float64)
            (g,) = _engine_run_backward(((x**3).sum(),), (torch.ones((), dtype=x.dtype),),
                                        True, True, (x,), False, accumulate_grad=False)
            (hv,) = _engine_run_backward(((g * v).sum(),), (torch.ones((), dtype=x.dtype),),
                                         False, False, (x,), False, accumulate_grad=False)
            return (x.grad is None and torch.equal(g.detach(), 3 * x.detach() ** 2)
                    and torch.equal(hv, 6 * x.detach() * v))
    except Exception:  # noqa: BLE001 -- any failure means: use torch.autograd.grad
        return False


if not _engine_call_agrees():  # pragma: no cover - depends on the torch version
    _engine_run_backward = None

_PRESERVE = torch.preserve_format


def engine_grad(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor] | None = None,
    *,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph, create_graph,
    allow_unused=allow_unused)`` (module docstring): the same engine call, and for plain
    tensors without torch's Python-level argument handling.

    Args:
        outputs: a sequence of tensors (not one tensor).
        inputs: a sequence of tensors.
        grad_outputs: one tensor per output, or ``None`` for scalar outputs (ones).
        retain_graph: keep the graph (defaults to ``create_graph``, as torch's).
        create_graph: build the graph of the derivative.
        allow_unused: return ``None`` for an input the outputs do not depend on.

    Returns:
        One gradient (or ``None``) per input.
    """
    outputs, inputs = tuple(outputs), tuple(inputs)
    if retain_graph is None:
        retain_graph = create_graph
    plain = (
        _engine_run_backward is not None
        and inputs
        and not torch._C._has_torch_function(outputs + inputs)
    )
    if plain:
        if grad_outputs is None:
            if all(o.requires_grad and o.numel() == 1 for o in outputs):
                grad_outputs = tuple(torch.ones_like(o, memory_format=_PRESERVE)
                                     for o in outputs)
            else:
                plain = False
        else:
            grad_outputs = tuple(grad_outputs)
            # torch.autograd.grad refuses a grad_output of another shape; the engine would
            # sum a broadcastable one, so such a call takes torch's path and its error
            plain = (len(grad_outputs) == len(outputs)
                     and not torch._C._has_torch_function(grad_outputs)
                     and all(g.shape == o.shape
                             for g, o in zip(grad_outputs, outputs, strict=False)))
    if not plain:
        return torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=retain_graph,
                                   create_graph=create_graph, allow_unused=allow_unused)
    return _engine_run_backward(outputs, grad_outputs, retain_graph, create_graph, inputs,
                                allow_unused, accumulate_grad=False)
