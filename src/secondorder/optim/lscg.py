"""Least-squares CG Newton steps on ``H^T H`` (seed 002's LSCG baseline).

Seed 002 ("Challenges in stochastic optimization"; Toh & Kojima 2002) contrasts its
Newton-Krylov method with least-squares CG, which solves the normal equations of the
Newton system,

    ``H^T H dw = -H^T g``  (``H`` symmetric: ``H^2 dw = -H g``),

a positive semi-definite system whatever the sign of ``H``'s eigenvalues, so CG never
meets negative curvature. Each CG iteration costs two Hessian-vector products (``H (H
v)``) and the right-hand side one more; all are taken on one gradient graph
(:class:`~secondorder.curvature.operators.HessianOperator`). The solution is ``-H^+ g``,
which ignores the curvature's sign (the seed's criticism): along a negative eigenvalue it
points uphill. The optimizer therefore checks ``g . dw < 0`` and otherwise falls back to
steepest descent ``-g``, then takes an Armijo backtracking step (Nocedal & Wright Alg.
3.1, :func:`~secondorder.optim.line_search.backtracking`) starting at ``lr``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.operators import CurvatureOperator
from secondorder.optim.base import Closure, SecondOrderOptimizer
from secondorder.optim.krylov import CGResult, truncated_cg
from secondorder.optim.line_search import backtracking

__all__ = ["LSCG", "LSCGDirection", "lscg_direction"]


@dataclass
class LSCGDirection:
    """Result of :func:`lscg_direction`.

    Attributes:
        direction: ``dw`` (tuple shaped like the gradient).
        cg: the :class:`~secondorder.optim.krylov.CGResult` of the normal-equation solve.
    """

    direction: tuple[Tensor, ...]
    cg: CGResult


def lscg_direction(
    operator: CurvatureOperator | Any,
    grad: Sequence[Tensor],
    *,
    rtol: float = 1e-5,
    max_iter: int | None = None,
) -> LSCGDirection:
    """Least-squares Newton direction: CG on ``H^T H dw = -H^T g`` (module docstring).

    Args:
        operator: ``H``, anything with ``matvec(v) -> H v`` on tuples of tensors.
        grad: ``g``.
        rtol: CG's relative residual tolerance on the normal equations.
        max_iter: most CG iterations (each two products).

    Returns:
        An :class:`LSCGDirection`.

    Example:
        >>> import torch
        >>> class Diag:
        ...     def matvec(self, v):
        ...         return (torch.tensor([2.0, -1.0], dtype=torch.float64) * v[0],)
        >>> d = lscg_direction(Diag(), (torch.tensor([2.0, 1.0], dtype=torch.float64),)).direction
        >>> d[0].round(decimals=8)  # -H^{-1} g, uphill along the negative eigenvalue
        tensor([-1.,  1.], dtype=torch.float64)
    """
    g = tuple(t.detach() for t in grad)
    b = tl.neg(tuple(operator.matvec(g)))

    def normal(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(operator.matvec(tuple(operator.matvec(v))))

    res = truncated_cg(normal, b, rtol=rtol, max_iter=max_iter)
    return LSCGDirection(tuple(res.solution), res)


class LSCG(SecondOrderOptimizer):
    """Least-squares CG Newton method with Armijo backtracking (module docstring).

    The outcome of the last step is in ``optimizer.state["global"]``: ``cg_status``,
    ``cg_iterations``, ``fallback`` (steepest descent was used) and ``step_size``.

    Args:
        params: parameters or parameter groups (hyperparameters are global).
        lr: first trial step of the backtracking search, ``> 0`` (1.0: the Newton step).
        max_cg: most CG iterations per step (``>= 1``; each costs two HVPs).
        rtol: CG's relative residual tolerance, ``>= 0``.
        c1: Armijo constant in ``(0, 1)``.
        max_evals: most loss evaluations of the line search (``>= 1``).

    Raises:
        ValueError: for a hyperparameter out of range (the message names it).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        max_cg: int = 50,
        rtol: float = 1e-5,
        c1: float = 1e-4,
        max_evals: int = 30,
    ):
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate: {lr}; it must be positive")
        if isinstance(max_cg, bool) or not isinstance(max_cg, int) or max_cg < 1:
            raise ValueError(f"Invalid max_cg: {max_cg}; it must be an integer >= 1")
        if not rtol >= 0.0:
            raise ValueError(f"Invalid rtol: {rtol}; it must be >= 0")
        if not 0.0 < c1 < 1.0:
            raise ValueError(f"Invalid c1: {c1}; it must be in (0, 1)")
        if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
            raise ValueError(f"Invalid max_evals: {max_evals}; it must be an integer >= 1")
        defaults = dict(lr=lr, max_cg=max_cg, rtol=rtol, c1=c1, max_evals=max_evals)
        super().__init__(params, defaults)
        self.hp = defaults

    def step(self, closure: Closure) -> Tensor:  # type: ignore[override]
        """One least-squares Newton step with backtracking.

        Args:
            closure: re-evaluates the model and returns the loss (no backward).

        Returns:
            The loss before the step (detached).
        """
        hp = self.hp
        G = self.state.setdefault("global", {})
        ev = self.evaluate(closure, create_graph=True)
        try:
            res = lscg_direction(ev.hessian, ev.grads, rtol=hp["rtol"], max_iter=hp["max_cg"])
        finally:
            ev.hessian.free()
        d = res.direction
        slope = float(tl.dot(d, ev.grads))
        fallback = not slope < 0
        if fallback:
            d = tl.neg(ev.grads)
            slope = float(tl.dot(d, ev.grads))
        G.update(cg_status=res.cg.status, cg_iterations=res.cg.iterations, fallback=fallback)
        if not slope < 0:  # zero gradient: nothing to do
            G["step_size"] = 0.0
            return ev.loss
        w0 = tl.clone(self.params())

        def phi(t: float, need_grad: bool = False):
            self.set_params(tl.add(w0, d, t))
            return self.evaluate(closure, grad=False).loss, None

        ls = backtracking(
            phi, ev.loss, slope, step=hp["lr"], c1=hp["c1"], max_evals=hp["max_evals"]
        )
        self.set_params(tl.add(w0, d, ls.step) if ls.step > 0 else w0)
        G["step_size"] = ls.step
        return ev.loss
