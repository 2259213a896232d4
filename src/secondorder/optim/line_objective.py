"""The line objective ``phi(t)`` and what the line-search optimizers share around it.

L-BFGS, nonlinear CG, Newton-CG, Barzilai-Borwein and LSCG each move the parameters along
one direction ``d`` and evaluate their closure there. This module holds that shared part:

* :class:`LineObjective` is the ``phi(t)`` of the line-search contract
  (:mod:`secondorder.optim.line_search`): it moves an optimizer's parameters to
  ``x0 + t d`` and evaluates its closure there.
* :func:`search` runs the named search of :mod:`secondorder.optim.line_search`
  (``"strong_wolfe"``, ``"armijo"``, ``"nonmonotone"``) or takes a fixed step along
  ``phi.direction`` and leaves the parameters at the accepted point.
* :func:`start_evaluation` and :func:`finite_start` give the loss and gradient a step starts
  from (reusing the previous step's, rolling back past a NaN/Inf point); :func:`versions`
  keys the reuse cache.
* :func:`is_finite` and :func:`max_abs` are the one-sync checks of the stopping tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.optim import line_search as ls

__all__ = [
    "LineObjective",
    "finite_start",
    "is_finite",
    "max_abs",
    "search",
    "start_evaluation",
    "versions",
]


class LineObjective:
    """``phi(t)``: set the parameters to ``x0 + t d`` and evaluate the closure there.

    Args:
        optimizer: a :class:`~secondorder.optim.base.SecondOrderOptimizer`.
        closure: the closure of the current step.
        x0: the starting point (detached copies of the parameters).
        direction: the search direction ``d``.
        keep_graph: evaluate every trial with its gradient and Hessian graph
            (``create_graph=True``) and keep the last one, for the next step to start from
            (full-batch mode: :meth:`take_kept`); the one before is freed.

    Attributes:
        evaluations: calls so far.
        last_t: the ``t`` the parameters are at now.
    """

    def __init__(
        self,
        optimizer: Any,
        closure: Callable[[], Tensor],
        x0: Sequence[Tensor],
        direction: Sequence[Tensor],
        *,
        keep_graph: bool = False,
    ):
        self.opt = optimizer
        self.closure = closure
        self.x0 = tuple(x0)
        self.direction = tuple(direction)
        self.evaluations = 0
        self.last_t: float | None = None
        self.keep_graph = keep_graph
        self._kept: tuple[Any, float | None] | None = None

    def move(self, t: float) -> None:
        """Put the parameters at ``x0 + t d`` (no evaluation)."""
        t = float(t)
        if self.last_t != t:  # x0 + t d written in place: no temporary parameter-sized copy
            self.opt.set_params_along(self.x0, self.direction, t)
            self.last_t = t

    def __call__(
        self, t: float, need_grad: bool = True
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        self.move(t)
        self.evaluations += 1
        if self.keep_graph:
            self._free_kept()
            ev = self.opt.evaluate(self.closure, create_graph=True)
            self._kept = (ev, self.last_t)
            return ev.loss, ev.grads if need_grad else None
        ev = self.opt.evaluate(self.closure, grad=need_grad)
        return ev.loss, ev.grads

    def take_kept(self) -> Any | None:
        """With ``keep_graph``: the last trial's evaluation (loss, gradient, Hessian) when the
        parameters are still at its ``t``, else ``None``; consumed either way (a graph not
        returned is freed)."""
        kept, self._kept = self._kept, None
        if kept is not None and kept[1] == self.last_t:
            return kept[0]
        if kept is not None and kept[0].hessian is not None:
            kept[0].hessian.free()
        return None

    def _free_kept(self) -> None:
        if self._kept is not None and self._kept[0].hessian is not None:
            self._kept[0].hessian.free()
        self._kept = None


def versions(params: Sequence[Tensor]) -> tuple[int, ...]:
    """In-place version counters of ``params`` (they change whenever a tensor is written)."""
    return tuple([p._version for p in params])


def start_evaluation(
    optimizer: Any, closure: Callable[[], Tensor], store: dict[str, Any], reuse: bool
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Loss and gradient at the current point: the cached pair or a fresh evaluation.

    With ``reuse`` (full-batch mode) the ``store["cache"] = (loss, grad, versions)`` left by
    the previous step is used when the parameters have not been written since; otherwise the
    closure is evaluated. The cache is consumed either way.
    """
    return _start_evaluation(optimizer, closure, store, reuse)[:2]


def _start_evaluation(
    optimizer: Any, closure: Callable[[], Tensor], store: dict[str, Any], reuse: bool
) -> tuple[Tensor, tuple[Tensor, ...], bool]:
    """:func:`start_evaluation` and whether the pair came from the cache.

    Every optimizer stores a cache only of a loss and gradient it found finite (the
    checked landing point of a line search, or the finite start it did not move from),
    so a cached pair is known finite without another check.
    """
    cache = store.pop("cache", None)
    if reuse and cache is not None and cache[2] == versions(optimizer.params()):
        return cache[0], cache[1], True
    ev = optimizer.evaluate(closure)
    return ev.loss, ev.grads, False


def finite_start(
    optimizer: Any,
    closure: Callable[[], Tensor],
    store: dict[str, Any],
    reuse: bool,
    reset: Callable[[], None],
) -> tuple[Tensor, Tensor, tuple[Tensor, ...] | None]:
    """The point a step starts from, rolled back past the method's own unchecked step.

    :func:`start_evaluation` gives the loss and gradient at the current parameters. When
    they are not finite and the previous step was a fixed step that did not evaluate where
    it landed (it left ``store["x_good"]``, the point it started from), that step is
    rejected: the parameters go back to ``x_good``, ``reset()`` forgets what the method
    learned (memory, previous direction, step scale) and the closure is evaluated there,
    the new start of the step (:meth:`~secondorder.optim.base.SecondOrderOptimizer.restart_step`).
    Any other non-finite start is the closure's fault: the step raises
    :class:`~secondorder.errors.NonFiniteLossError` and is undone (the shared rule of
    :mod:`secondorder.optim.base`). ``x_good`` is consumed either way.

    Returns:
        ``(first_loss, loss, grad)``: the loss first computed (what ``step`` returns) and
        the finite loss and gradient to start from; ``grad`` is ``None`` when there is no
        finite point to start from, and the step should return ``first_loss`` without
        moving (the transaction then raises).
    """
    x_good = store.pop("x_good", None)
    loss, grad, cached = _start_evaluation(optimizer, closure, store, reuse)
    if cached or is_finite(loss, grad):  # a cached pair was checked when it was stored
        return loss, loss, grad
    if x_good is None:
        return loss, loss, None
    optimizer.set_params(x_good)
    optimizer.restart_step()
    reset()
    ev = optimizer.evaluate(closure)
    if not is_finite(ev.loss, ev.grads):
        return loss, ev.loss, None
    return loss, ev.loss, ev.grads


def is_finite(loss: Tensor, grad: Sequence[Tensor] | None) -> bool:
    """Whether the loss and the gradient are finite (one host sync)."""
    ok = torch.isfinite(loss)
    if grad is not None:
        ok = ok & (torch.isfinite(grad[0]).all() if len(grad) == 1 else tl.all_finite(grad))
    return bool(ok)


def max_abs(v: Sequence[Tensor]) -> float:
    """``max_i |v_i|`` as a float (one host sync)."""
    if len(v) == 1:  # one tensor: no stack
        return float(v[0].abs().max())
    return float(torch.stack([x.abs().max() for x in v]).max()) if len(v) else 0.0


def search(
    phi: LineObjective,
    method: str | None,
    loss: Tensor,
    grad: Sequence[Tensor],
    slope: Tensor,
    *,
    step: float,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_evals: int = 25,
    need_grad: bool = False,
    reference_loss: float | Tensor | None = None,
    start_values: tuple[float, float] | None = None,
) -> tuple[float, Tensor | None, tuple[Tensor, ...] | None]:
    """Search along ``phi.direction`` and leave the parameters at the accepted step.

    Args:
        phi: the line objective (its direction ``D`` is the one searched).
        method: ``"strong_wolfe"`` (:func:`~secondorder.optim.line_search.strong_wolfe`),
            ``"armijo"`` (:func:`~secondorder.optim.line_search.backtracking`),
            ``"nonmonotone"`` (:func:`~secondorder.optim.line_search.nonmonotone_backtracking`
            against ``reference_loss``) or ``None`` (the fixed step ``step``).
        loss: ``phi(0)``.
        grad: the gradient at ``phi(0)``.
        slope: ``grad . D`` (negative).
        step: the first trial, or the fixed step.
        c1: sufficient-decrease constant.
        c2: curvature constant (``"strong_wolfe"``).
        tolerance_change: bracket tolerance (``"strong_wolfe"``).
        max_evals: the search's evaluation budget.
        need_grad: evaluate the gradient at each backtracking trial.
        reference_loss: the largest recent loss (``"nonmonotone"``).
        start_values: ``(loss, slope)`` as floats when the caller has read them (the
            float64 values of these tensors): ``"strong_wolfe"`` and ``"armijo"`` then read
            nothing before their first trial.

    Returns:
        ``(t, loss, grad)`` at the accepted step; ``loss`` and ``grad`` are ``None`` where
        the search did not evaluate them (always with a fixed step).
    """
    if method == "strong_wolfe":
        res = ls.strong_wolfe(
            phi, phi.direction, loss, grad, step=step, c1=c1, c2=c2,
            tolerance_change=tolerance_change, max_evals=max_evals, start_values=start_values,
        )  # fmt: skip
    elif method == "armijo":
        res = ls.backtracking(
            phi, loss, slope, step=step, c1=c1, max_evals=max_evals, need_grad=need_grad,
            start_values=start_values,
        )  # fmt: skip
    elif method == "nonmonotone":
        res = ls.nonmonotone_backtracking(
            phi, reference_loss, slope, loss0=loss, step=step, c1=c1, max_evals=max_evals,
            need_grad=need_grad,
        )  # fmt: skip
    else:
        phi.move(step)
        return step, None, None
    t = float(res.step)
    phi.move(t)
    return t, res.loss, res.grad
