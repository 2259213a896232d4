"""The two closure conventions an optimizer's ``step(closure)`` accepts.

* **secondorder's**: the closure returns the loss and does not call ``backward()``; the
  optimizer differentiates it (with ``create_graph`` when it needs curvature).
* **torch.optim's**: ``optimizer.zero_grad(); loss = f(); loss.backward(); return loss``
  (``torch.optim.LBFGS``'s documented closure, and the closure PyTorch Lightning passes
  under automatic optimization, which returns a detached loss).

:func:`call_closure` tells them apart by what the closure did to the parameters' ``.grad``.
A ``.grad`` tensor that was not there before (``zero_grad()`` sets it to ``None``,
``backward()`` creates it), or one written in place and not all zeros
(``zero_grad(set_to_none=False)`` then ``backward()``, or backward accumulating without
``zero_grad``), means the closure ran backward. A closure that only zeroes ``.grad`` in
place is still secondorder's convention (one host sync decides, on that rare path only).
The check reads each parameter's ``.grad`` identity and version counter, which is much
cheaper than registering and removing a post-accumulate-grad hook on every parameter at
every call.

Optimizers that need only the gradient then read it from ``.grad``
(:func:`grads_from_attribute`) instead of differentiating a freed graph; optimizers that
need Hessian products raise :func:`graph_needed_error`, which shows the two-line change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["BackwardWatch", "call_closure", "graph_needed_error", "grads_from_attribute"]


def call_closure(closure: Callable[[], Any], params: Sequence[Tensor]) -> tuple[Any, bool]:
    """Call ``closure`` with grad enabled and say whether it ran backward into ``params``.

    Args:
        closure: a closure of either convention (module doc).
        params: the optimizer's trainable leaf tensors.

    Returns:
        ``(output, ran_backward)``: what the closure returned, and whether it wrote a
        gradient into the ``.grad`` of at least one parameter (module doc).
    """
    before = [(g, g._version) if (g := p.grad) is not None else None for p in params]
    if torch.is_grad_enabled():  # already on (evaluate): no context object to build
        out = closure()
    else:
        with torch.enable_grad():
            out = closure()
    written = []
    for p, old in zip(params, before, strict=True):
        g = p.grad
        if g is None:
            continue
        if old is None or g is not old[0]:
            return out, True  # a new .grad tensor: only backward creates one
        if g._version != old[1]:
            written.append(g)
    # written in place: backward, or only zero_grad(set_to_none=False)
    ran_backward = bool(written) and bool(torch.stack([g.ne(0).any() for g in written]).any())
    return out, ran_backward


class BackwardWatch:
    """A closure that calls ``closure`` through :func:`call_closure` and remembers the answer.

    Optimizers rebind their closure to one (``closure = BackwardWatch(closure, params)``)
    and read :attr:`ran_backward` after calling it.

    Args:
        closure: a closure of either convention.
        params: the optimizer's trainable leaf tensors.
        graph_needed_by: the optimizer's name when it needs the loss's graph: a closure that
            ran backward then raises :func:`graph_needed_error`.

    Attributes:
        ran_backward: whether the last call ran backward into ``params``.
    """

    def __init__(
        self,
        closure: Callable[[], Any],
        params: Sequence[Tensor],
        *,
        graph_needed_by: str | None = None,
    ):
        self.closure, self.params, self.graph_needed_by = closure, params, graph_needed_by
        self.ran_backward = False

    def __call__(self) -> Any:
        """Call the closure.

        Raises:
            ValueError: if it ran backward and ``graph_needed_by`` is set.
        """
        out, self.ran_backward = call_closure(self.closure, self.params)
        if self.ran_backward and self.graph_needed_by is not None:
            raise graph_needed_error(self.graph_needed_by)
        return out


def grads_from_attribute(params: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Detached copies of ``p.grad`` (zeros where ``None``), as ``torch.optim`` reads them.

    Copies, because the next torch.optim-style closure may zero ``.grad`` in place
    (``zero_grad(set_to_none=False)``) while the optimizer still holds this gradient.
    """
    return tuple(
        torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params
    )


def graph_needed_error(optimizer: str) -> ValueError:
    """The error for a torch.optim-style closure given to an optimizer that needs curvature.

    Args:
        optimizer: the optimizer's class name, for the message.

    Returns:
        A ``ValueError`` whose message shows the change to make.
    """
    return ValueError(
        f"{optimizer} needs the loss's graph for Hessian-vector products, but the closure "
        "called backward() (the torch.optim convention), which frees it. Make two changes "
        "to the closure: delete the `optimizer.zero_grad()` and `loss.backward()` lines and "
        "keep `return loss`, e.g.\n"
        "    def closure():\n"
        "        return loss_fn(model(inputs), targets)\n"
        f"{optimizer} differentiates the returned loss itself."
    )
