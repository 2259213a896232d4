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

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.operators import CurvatureOperator
from secondorder.optim._direction_search import GroupScale
from secondorder.optim._global_hyperparameters import GlobalHyperparameters
from secondorder.optim.base import Closure, SecondOrderOptimizer
from secondorder.optim.curvature_source import local_model
from secondorder.optim.krylov import CGResult, truncated_cg
from secondorder.optim.line_search import backtracking
from secondorder.optim.quasi_newton import LineObjective

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


class LSCG(GlobalHyperparameters, SecondOrderOptimizer):
    """Least-squares CG Newton method with Armijo backtracking (module docstring).

    The outcome of the last step is in ``optimizer.state["global"]``: ``cg_status``,
    ``cg_iterations``, ``fallback`` (steepest descent was used) and ``step_size``.

    Param groups may differ in ``lr`` only, by the rule of the line-search optimizers
    (:mod:`secondorder.optim._direction_search`): the backtracking search runs along
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
        max_cg: most CG iterations per step (``>= 1``; each costs two HVPs).
        rtol: CG's relative residual tolerance, ``>= 0``.
        c1: Armijo constant in ``(0, 1)``.
        max_evals: most loss evaluations of the line search (``>= 1``).

    Raises:
        ValueError: for a hyperparameter out of range, or one other than ``lr`` that differs
            between param groups (the message names it).
    """

    per_group = ("lr",)

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
        defaults = dict(lr=lr, max_cg=max_cg, rtol=rtol, c1=c1, max_evals=max_evals)
        super().__init__(params, defaults)

    @staticmethod
    def check_hyperparameters(hp: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming an out-of-range value in ``hp`` (defaults or a group)."""
        lr, max_cg, rtol, c1, max_evals = (hp[k] for k in ("lr", "max_cg", "rtol", "c1",
                                                            "max_evals"))
        if not (lr >= 0.0 and math.isfinite(lr)):
            raise ValueError(f"Invalid learning rate: {lr}; it must be finite and >= 0")
        if isinstance(max_cg, bool) or not isinstance(max_cg, int) or max_cg < 1:
            raise ValueError(f"Invalid max_cg: {max_cg}; it must be an integer >= 1")
        if not rtol >= 0.0:
            raise ValueError(f"Invalid rtol: {rtol}; it must be >= 0")
        if not 0.0 < c1 < 1.0:
            raise ValueError(f"Invalid c1: {c1}; it must be in (0, 1)")
        if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
            raise ValueError(f"Invalid max_evals: {max_evals}; it must be an integer >= 1")

    def _free_groups(self) -> list[dict[str, Any]]:
        free = [g for g in self.param_groups if float(g["lr"]) != 0]
        return free or self.param_groups  # every lr = 0: the step moves nothing

    def params(self) -> tuple[Tensor, ...]:
        """The trainable tensors of the groups whose ``lr`` is not 0."""
        return tuple(p for g in self._free_groups() for p in g["params"] if p.requires_grad)

    def group_of(self) -> tuple[dict[str, Any], ...]:
        """The param group of each tensor of :meth:`params`, in the same order."""
        return tuple(g for g in self._free_groups() for p in g["params"] if p.requires_grad)

    #: steps replace their state tensors, never write into them (the step transaction
    #: of :mod:`secondorder.optim.base` then copies none of them)
    state_mutated_in_place = frozenset[str]()

    def step(self, closure: Closure) -> Tensor:  # type: ignore[override]
        """One least-squares Newton step with backtracking.

        Args:
            closure: re-evaluates the model and returns the loss (no backward).

        Returns:
            The loss before the step (detached).

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
            res = lscg_direction(model.operator, model.grads, rtol=hp["rtol"],
                                 max_iter=hp["max_cg"])
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
            phi, model.loss, slope, step=scale.lr, c1=hp["c1"], max_evals=hp["max_evals"]
        )
        if ls.step > 0:
            phi.move(ls.step)
        else:
            self.set_params(w0)
        G["step_size"] = ls.step
        return model.loss
