"""Least-squares CG Newton steps on ``H^T H`` ([Shen]'s LSCG baseline).

[Shen] ("Challenges in stochastic optimization"; [TohKojima2002] contrasts its
Newton-Krylov method with least-squares CG, which solves the normal equations of the
Newton system,

    ``H^T H dw = -H^T g``  (``H`` symmetric: ``H^2 dw = -H g``),

a positive semi-definite system whatever the sign of ``H``'s eigenvalues, so CG never
meets negative curvature. Each CG iteration costs two Hessian-vector products (``H (H
v)``) and the right-hand side one more; all are taken on one gradient graph
(:class:`~secondorder.curvature.operators.HessianOperator`). The solution is ``-H^+ g``,
which ignores the curvature's sign (the seed's criticism): along a negative eigenvalue it
points uphill. The optimizer therefore checks ``g . dw < 0`` and otherwise falls back to
steepest descent ``-g``, then takes an Armijo backtracking step ([NocedalWright2006] Alg.
3.1, :func:`~secondorder.optim.line_search.backtracking`) starting at ``lr``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.operators import CurvatureOperator
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import Closure, SecondOrderOptimizer
from secondorder.optim.curvature_source import local_model
from secondorder.optim.direction_groups import GroupScale, LearningRateGroups
from secondorder.optim.krylov import CGResult, truncated_cg
from secondorder.optim.line_objective import LineObjective
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


class LSCG(LearningRateGroups, SecondOrderOptimizer):
    """Least-squares CG Newton method with Armijo backtracking (module docstring).

    The outcome of the last step is in ``optimizer.state["global"]``: ``cg_status``,
    ``cg_iterations``, ``fallback`` (steepest descent was used) and ``step_size``.

    Param groups may differ in ``lr`` only, by the rule of the line-search optimizers
    (:mod:`secondorder.optim.direction_groups`): the backtracking search runs along
    ``D = diag(lr_g / lr_max) d`` from the first trial ``t = lr_max``, so group ``g``
    moves by ``t (lr_g / lr_max) d_g``; with equal ``lr`` this is the single-group method
    bit for bit. A group with ``lr = 0`` is frozen: left out of the problem (no gradient,
    no Hessian products), so the others take the LSCG step of the problem with its
    parameters fixed. ``lr`` is read at every step (schedulers act on it).

    Args:
        params: parameters or parameter groups; every hyperparameter but ``lr`` must be
            the same in all groups (``ValueError`` naming the key otherwise).
        lr: first trial step of the backtracking search, ``> 0`` (1.0: the Newton step);
            a group's ``lr`` may be 0.
        max_cg_iter: most CG iterations per step (``>= 1``; each costs two HVPs).
        cg_rtol: CG's relative residual tolerance, ``>= 0``.
        c1: Armijo constant in ``(0, 1)``.
        max_ls_evals: most loss evaluations of the line search (``>= 1``).

    Raises:
        ValueError: for a hyperparameter out of range, or one other than ``lr`` that differs
            between param groups (the message names it).
    """

    NEEDS_CURVATURE = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        max_cg_iter: int = 50,
        cg_rtol: float = 1e-5,
        c1: float = 1e-4,
        max_ls_evals: int = 30,
    ):
        defaults = dict(lr=lr, max_cg_iter=max_cg_iter, cg_rtol=cg_rtol, c1=c1,
                        max_ls_evals=max_ls_evals)
        super().__init__(params, defaults)

    HYPERPARAMETERS = {
        "lr": hyper.finite_nonnegative,
        "max_cg_iter": hyper.integer(1),
        "cg_rtol": hyper.nonnegative,
        "c1": hyper.in_range(0, 1),
        "max_ls_evals": hyper.integer(1),
    }

    #: steps replace their state tensors, never write into them (the step transaction
    #: of :mod:`secondorder.optim.base` then copies none of them)
    state_mutated_in_place = frozenset[str]()

    def step(self, closure: Closure) -> Tensor:  # type: ignore[override]
        """One least-squares Newton step with backtracking.

        The closure and the return value: see
        :class:`~secondorder.optim.base.SecondOrderOptimizer`.

        Raises:
            ValueError: if a hyperparameter other than ``lr`` differs between groups.
        """
        hp = self.shared_hyperparameters()
        G = self.state.setdefault("global", {})
        scale = GroupScale.of(self)
        if scale.lr == 0:  # every group frozen
            G["step_size"] = 0.0
            return self.evaluate(closure, grad=False).loss
        with local_model(self, closure, "hessian") as model:
            res = lscg_direction(model.operator, model.grads, rtol=hp["cg_rtol"],
                                 max_iter=hp["max_cg_iter"])
        g = model.grads
        d = scale.apply(res.direction)  # the direction searched: diag(lr_g / lr_max) dw
        slope = float(tl.dot(d, g))
        fallback = not slope < 0
        if fallback:
            d = scale.apply(tl.neg(g))
            slope = float(tl.dot(d, g))
        G.update(cg_status=res.cg.status, cg_iterations=res.cg.iterations, fallback=fallback)
        if not slope < 0:  # zero gradient: nothing to do
            G["step_size"] = 0.0
            return model.loss
        w0 = self.params_at_start()
        phi = LineObjective(self, closure, w0, d)
        ls = backtracking(
            phi, model.loss, slope, step=scale.lr, c1=hp["c1"], max_evals=hp["max_ls_evals"]
        )
        if ls.step > 0:
            phi.move(ls.step)
        else:
            self.set_params(w0)
        G["step_size"] = ls.step
        return model.loss
