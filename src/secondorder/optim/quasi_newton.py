"""Pieces shared by the line-search optimizers: the L-BFGS memory and the line objective.

:class:`LBFGSMemory` is the quasi-Newton memory as a strategy object (pytorch-minimize's
``bfgs.py`` shape): :meth:`LBFGSMemory.solve` applies the inverse-Hessian approximation by the
two-loop recursion ([Filippova] Alg. 1; [NocedalWright2006] Alg. 7.4) and :meth:`LBFGSMemory.update`
adds a curvature pair, doing the curvature-condition skip or Powell damping once, here. The
memory keeps its tensors in a plain dict (the optimizer's ``state["global"]``) as tuples that
are replaced, never mutated, so ``state_dict()`` round-trips and two optimizers loaded from
one state never share a list that one of them appends to.

:class:`LineObjective` is the ``phi(t)`` of the line-search contract
(:mod:`secondorder.optim.line_search`): it moves an optimizer's parameters to ``x0 + t d``
and evaluates its closure there. :func:`start_evaluation` and :func:`finite_start` give the
loss and gradient a step starts from (reusing the previous step's, rolling back past a
NaN/Inf point).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl

__all__ = [
    "CURVATURE_RULES",
    "LBFGSMemory",
    "LineObjective",
    "finite_start",
    "is_finite",
    "max_abs",
    "start_evaluation",
    "two_loop",
    "versions",
]

CURVATURE_RULES = ("skip", "powell")


def two_loop(
    grad: Sequence[Tensor],
    s_hist: Sequence[Sequence[Tensor]],
    y_hist: Sequence[Sequence[Tensor]],
    rho_hist: Sequence[Tensor],
    gamma: Tensor | float,
) -> tuple[Tensor, ...]:
    """``H grad`` by the L-BFGS two-loop recursion ([Filippova] Alg. 1, [NocedalWright2006] Alg.
       7.4).

    Args:
        grad: the vector to multiply (a tuple of tensors).
        s_hist: steps ``s_i``, oldest first.
        y_hist: gradient differences ``y_i``, oldest first.
        rho_hist: ``1 / (s_i^T y_i)`` as 0-dim tensors.
        gamma: the initial scaling ``H_0 = gamma I``, usually ``s^T y / y^T y`` of the newest
            pair.

    Returns:
        ``H grad`` where ``H`` is the L-BFGS inverse-Hessian approximation (no host sync).
    """
    q = tl.clone(grad)  # updated in place below: one allocation per call, not 2 per pair
    alphas = []
    for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
        a = rho * tl.dot(s, q)
        _add_scaled_(q, y, -a)
        alphas.append(a)
    r = q
    for x in r:  # H_0 q in place: no third vector (per tensor: torch._foreach_mul_ by a
        x.mul_(gamma)  # Python float rounds differently from _foreach_mul in bf16/fp16)
    for s, y, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
        b = rho * tl.dot(y, r)
        _add_scaled_(r, s, a - b)
    return r


def _add_scaled_(a: Sequence[Tensor], b: Sequence[Tensor], c: Tensor) -> None:
    """``a += c b`` in place for a 0-dim tensor ``c``: one fused kernel per tensor."""
    if len(a) == 1:
        a[0].addcmul_(b[0], c)
    else:
        torch._foreach_addcmul_(list(a), list(b), [c] * len(a))


class LBFGSMemory:
    """The last ``history_size`` curvature pairs, stored in ``store`` (a dict).

    Args:
        store: where the pairs live (``optimizer.state["global"]``); keys ``lbfgs_s``,
            ``lbfgs_y``, ``lbfgs_rho`` (tuples, oldest first) and ``lbfgs_gamma``.
        history_size: pairs kept.
        curvature_eps: a pair is acceptable when ``s^T y > curvature_eps * |s| |y|``.
        curvature_rule: ``"skip"`` drops an unacceptable pair; ``"powell"`` damps it
            ([NocedalWright2006] Proc. 18.2 with ``B = I / gamma``): ``y <- theta y + (1 - theta)
            B s`` so that ``s^T y = 0.2 s^T B s``.
    """

    def __init__(
        self,
        store: dict[str, Any],
        history_size: int,
        curvature_eps: float = 1e-8,
        curvature_rule: str = "skip",
    ):
        self.store = store
        self.history_size = history_size
        self.curvature_eps = curvature_eps
        self.curvature_rule = curvature_rule
        store.setdefault("lbfgs_s", ())
        store.setdefault("lbfgs_y", ())
        store.setdefault("lbfgs_rho", ())
        store.setdefault("lbfgs_gamma", None)

    def __len__(self) -> int:
        return len(self.store["lbfgs_s"])

    def reset(self) -> None:
        """Forget all pairs (the next direction is steepest descent)."""
        self.store.update(lbfgs_s=(), lbfgs_y=(), lbfgs_rho=(), lbfgs_gamma=None)

    def solve(self, grad: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """``H grad`` (``grad`` itself when the memory is empty)."""
        st = self.store
        if not st["lbfgs_s"]:
            return tuple(grad)
        return two_loop(grad, st["lbfgs_s"], st["lbfgs_y"], st["lbfgs_rho"], st["lbfgs_gamma"])

    def descent_direction(self, grad: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """``-H grad``, new tensors (the two-loop result negated in place: no extra copy)."""
        st = self.store
        if not st["lbfgs_s"]:
            return tl.neg(grad)
        r = two_loop(grad, st["lbfgs_s"], st["lbfgs_y"], st["lbfgs_rho"], st["lbfgs_gamma"])
        torch._foreach_neg_(list(r))
        return r

    def update(self, s: Sequence[Tensor], y: Sequence[Tensor]) -> bool:
        """Add the pair ``(s, y)`` after the curvature check (one host sync).

        Returns:
            Whether a pair (possibly damped) was stored.
        """
        s, y = tuple(s), tuple(y)
        sy = tl.dot(s, y)
        ss = tl.dot(s, s)
        yy = tl.dot(y, y)
        ok = bool(torch.isfinite(sy) & torch.isfinite(yy))
        if not ok or float(ss) == 0.0:
            return False
        if float(sy) <= self.curvature_eps * float((ss * yy).sqrt()):
            if self.curvature_rule != "powell":
                return False
            gamma = self.store["lbfgs_gamma"]
            inv_gamma = 1.0 if gamma is None else 1.0 / gamma
            sbs = ss * inv_gamma
            theta = 0.8 * sbs / (sbs - sy)
            y = tl.add(tl.scale(y, theta), s, (1 - theta) * inv_gamma)
            sy = tl.dot(s, y)
            yy = tl.dot(y, y)
        st = self.store
        m = self.history_size
        st["lbfgs_s"] = (*st["lbfgs_s"], s)[-m:]
        st["lbfgs_y"] = (*st["lbfgs_y"], y)[-m:]
        st["lbfgs_rho"] = (*st["lbfgs_rho"], 1.0 / sy)[-m:]
        st["lbfgs_gamma"] = sy / yy
        return True


class LineObjective:
    """``phi(t)``: set the parameters to ``x0 + t d`` and evaluate the closure there.

    Args:
        optimizer: a :class:`~secondorder.optim.base.SecondOrderOptimizer`.
        closure: the closure of the current step.
        x0: the starting point (detached copies of the parameters).
        direction: the search direction ``d``.

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
    ):
        self.opt = optimizer
        self.closure = closure
        self.x0 = tuple(x0)
        self.direction = tuple(direction)
        self.evaluations = 0
        self.last_t: float | None = None

    def move(self, t: float) -> None:
        """Put the parameters at ``x0 + t d`` (no evaluation)."""
        t = float(t)
        if self.last_t != t:  # x0 + t d written in place: no temporary parameter-sized copy
            self.opt.set_params(self.x0)
            self.opt.add_to_params(self.direction, t)
            self.last_t = t

    def __call__(
        self, t: float, need_grad: bool = True
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        self.move(t)
        self.evaluations += 1
        ev = self.opt.evaluate(self.closure, grad=need_grad)
        return ev.loss, ev.grads


def versions(params: Sequence[Tensor]) -> tuple[int, ...]:
    """In-place version counters of ``params`` (they change whenever a tensor is written)."""
    return tuple(p._version for p in params)


def start_evaluation(
    optimizer: Any, closure: Callable[[], Tensor], store: dict[str, Any], reuse: bool
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Loss and gradient at the current point: the cached pair or a fresh evaluation.

    With ``reuse`` (full-batch mode) the ``store["cache"] = (loss, grad, versions)`` left by
    the previous step is used when the parameters have not been written since; otherwise the
    closure is evaluated. The cache is consumed either way.
    """
    cache = store.pop("cache", None)
    if reuse and cache is not None and cache[2] == versions(optimizer.params()):
        return cache[0], cache[1]
    ev = optimizer.evaluate(closure)
    return ev.loss, ev.grads


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
    loss, grad = start_evaluation(optimizer, closure, store, reuse)
    if is_finite(loss, grad):
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
        ok = ok & tl.all_finite(grad)
    return bool(ok)


def max_abs(v: Sequence[Tensor]) -> float:
    """``max_i |v_i|`` as a float (one host sync)."""
    return float(torch.stack([x.abs().max() for x in v]).max()) if len(v) else 0.0
