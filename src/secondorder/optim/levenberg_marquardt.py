"""Levenberg-Marquardt damped Newton-CG ([Shen]'s LM baseline).

[Shen] ("Challenges in stochastic optimization"; [More1978] describes the LM remedy for
an indefinite or singular Hessian: add a diagonal damping ``lambda I`` and solve

    ``(H + lambda I) dw = -g``

by truncated CG (:func:`~secondorder.optim.krylov.truncated_cg`, which stops at
negative curvature of the damped operator). ``lambda`` adapts with the reduction ratio of
the undamped quadratic model ``m(dw) = g^T dw + dw^T H dw / 2`` ([More1978]; the
Levenberg-Marquardt rule of [Martens2010] Sec. 4.1):

    ``rho = (f(w + dw) - f(w)) / m(dw)``;
    ``rho < 1/4``: ``lambda <- lambda * increase``; ``rho > 3/4``: ``lambda <- lambda * decrease``.

The step is taken only if it lowers the loss (``rho > 0``); otherwise the parameters are
left unchanged and ``lambda`` grows, which shortens the next step toward ``-g / lambda``.
One step costs one gradient graph, the CG products plus one product for ``dw^T H dw``,
and one extra loss evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import Closure, SecondOrderOptimizer
from secondorder.optim.curvature_source import local_model
from secondorder.optim.krylov import CGResult, truncated_cg
from secondorder.optim.model_step import try_step

__all__ = ["LevenbergMarquardt", "LMDirection", "lm_direction", "update_damping"]


@dataclass
class LMDirection:
    """Result of :func:`lm_direction`.

    Attributes:
        direction: ``dw``.
        model_decrease: ``m(dw) = g^T dw + dw^T H dw / 2`` with the undamped ``H`` (0-dim).
        cg: the :class:`~secondorder.optim.krylov.CGResult` of the damped solve.
    """

    direction: tuple[Tensor, ...]
    model_decrease: Tensor
    cg: CGResult


def lm_direction(
    operator: Any,
    grad: Sequence[Tensor],
    damping: float,
    *,
    rtol: float = 1e-5,
    max_iter: int | None = None,
) -> LMDirection:
    """Truncated CG on ``(H + damping I) dw = -g`` and the undamped model value.

    Args:
        operator: ``H``, anything with ``matvec(v) -> H v`` on tuples of tensors.
        grad: ``g``.
        damping: ``lambda >= 0``.
        rtol: CG's relative residual tolerance.
        max_iter: most CG iterations.

    Returns:
        An :class:`LMDirection`.

    Example:
        >>> import torch
        >>> class Diag:
        ...     def matvec(self, v):
        ...         return (torch.tensor([1.0, 3.0], dtype=torch.float64) * v[0],)
        >>> lm_direction(Diag(), (torch.tensor([2.0, 4.0], dtype=torch.float64),), 1.0).direction
        (tensor([-1., -1.], dtype=torch.float64),)
    """
    g = tuple(t.detach() for t in grad)

    def damped(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tl.add(tuple(operator.matvec(v)), v, damping)

    res = truncated_cg(damped, tl.neg(g), rtol=rtol, max_iter=max_iter)
    d = tuple(res.solution)
    hd = tuple(operator.matvec(d))
    model = tl.dot(g, d) + 0.5 * tl.dot(d, hd)
    return LMDirection(d, model, res)


def update_damping(
    damping: float, rho: float, *, increase: float = 1.5, decrease: float = 2.0 / 3.0,
    min_damping: float = 1e-8,
) -> float:
    """Levenberg-Marquardt rule ([Martens2010] Sec. 4.1) on the reduction ratio ``rho``.

    Example:
        >>> update_damping(1.0, 0.9), update_damping(1.0, 0.1), update_damping(1.0, 0.5)
        (0.6666666666666666, 1.5, 1.0)
    """
    if not rho >= 0.25:  # also NaN
        return damping * increase
    if rho > 0.75:
        return max(damping * decrease, min_damping)
    return damping


class LevenbergMarquardt(hyper.Hyperparameters, SecondOrderOptimizer):
    """LM-damped Newton-CG (module docstring).

    The damping lives in ``optimizer.state["global"]["damping"]``; the last step's ``rho``,
    ``accepted`` and CG status are stored beside it.

    Args:
        params: parameters or parameter groups. The damping is global, so every
            hyperparameter must be the same in all groups (``ValueError`` naming the key
            otherwise, when a group is added and at each step).
        damping: initial ``lambda``, ``> 0``.
        increase: factor on ``lambda`` when ``rho < 1/4``, ``> 1``.
        decrease: factor on ``lambda`` when ``rho > 3/4``, in ``(0, 1)``.
        min_damping: floor of ``lambda``, ``>= 0``.
        max_cg_iter: most CG iterations per step (``>= 1``).
        cg_rtol: CG's relative residual tolerance, ``>= 0``.

    Raises:
        ValueError: for a hyperparameter out of range (``decrease`` outside ``(0, 1)``,
            ``increase <= 1``...) or one that differs between param groups; the message
            names it.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        damping: float = 1.0,
        increase: float = 1.5,
        decrease: float = 2.0 / 3.0,
        min_damping: float = 1e-8,
        max_cg_iter: int = 50,
        cg_rtol: float = 1e-5,
    ):
        defaults = dict(damping=damping, increase=increase, decrease=decrease,
                        min_damping=min_damping, max_cg_iter=max_cg_iter,
                        cg_rtol=cg_rtol)  # fmt: skip
        super().__init__(params, defaults)

    NEEDS_CURVATURE = True
    HYPERPARAMETERS = {
        "damping": hyper.positive,
        "increase": hyper.greater_than(1),
        "decrease": hyper.in_range(0, 1),
        "min_damping": hyper.nonnegative,
        "max_cg_iter": hyper.integer(1),
        "cg_rtol": hyper.nonnegative,
    }

    #: steps replace their state tensors, never write into them (the step transaction
    #: of :mod:`secondorder.optim.base` then copies none of them)
    state_mutated_in_place = frozenset[str]()

    def step(self, closure: Closure) -> Tensor:  # type: ignore[override]
        """One damped Newton-CG step; accepted only if it lowers the loss.

        The closure and the return value: see
        :class:`~secondorder.optim.base.SecondOrderOptimizer`.
        """
        hp = self.shared_hyperparameters()
        G = self.state.setdefault("global", {"damping": float(hp["damping"])})
        with local_model(self, closure, "hessian") as model:
            res = lm_direction(model.operator, model.grads, G["damping"], rtol=hp["cg_rtol"],
                               max_iter=hp["max_cg_iter"])
        trial = try_step(self, closure, model.loss, res.direction, -res.model_decrease, 0.0)
        G["damping"] = update_damping(
            G["damping"], trial.rho_or_fail, increase=hp["increase"], decrease=hp["decrease"],
            min_damping=hp["min_damping"],
        )  # fmt: skip
        G.update(rho=trial.rho_or_fail, accepted=trial.accepted, cg_status=res.cg.status)
        return model.loss
