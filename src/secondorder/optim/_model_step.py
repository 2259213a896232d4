"""The step shell the model-based optimizers share: start check, subproblem, trial, ratio.

Trust region ([AdaptiveNorms] Alg. 1), ARC ([Cartis2011] Alg. 2.1) and
Levenberg-Marquardt ([More1978] all

1. evaluate loss, gradient and curvature at ``w`` and stop on a NaN/Inf start
   (:func:`check_finite_start`; Hessian-free uses it too);
2. minimize a local model (trust region and ARC in an adaptive norm:
   :func:`solve_in_norm`);
3. evaluate the loss at ``w + s`` and keep the step by the ratio of actual to predicted
   decrease ``rho = (f(w) - f(w + s)) / (m(0) - m(s))`` (:func:`try_step`), restoring the
   parameters bit for bit otherwise.

The ratio is computed in float64 on the host (one transfer for the three numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.errors import NonFiniteLossError
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import Closure, SecondOrderOptimizer
from secondorder.optim.curvature_source import CURVATURES, CurvatureClosure, local_model
from secondorder.optim.norms import AdaptiveNorm, make_norm, norm_of_group
from secondorder.tensorlist import TensorList

__all__ = ["AdaptiveNormOptimizer", "Trial", "check_finite_start", "solve_in_norm", "try_step"]

R = TypeVar("R")
MatVec = Callable[[TensorList], Sequence[Tensor]]


def check_finite_start(loss: Tensor, grads: Sequence[Tensor]) -> tuple[float, float]:
    """The loss and the gradient norm at the current point as floats (one host sync).

    Raises:
        NonFiniteLossError: if either is NaN or infinite.
    """
    check = torch.stack([loss.reshape(()).to(torch.float64), tl.norm(grads).to(torch.float64)])
    loss_f, gnorm_f = check.tolist()
    if not (math.isfinite(loss_f) and math.isfinite(gnorm_f)):
        raise NonFiniteLossError(
            f"loss {loss_f} or gradient norm {gnorm_f} at the current point is not finite"
        )
    return loss_f, gnorm_f


def solve_in_norm(
    optimizer: SecondOrderOptimizer,
    closure: Closure,
    norm: AdaptiveNorm,
    solve: Callable[[MatVec, TensorList], R],
    *,
    curvature: str,
    grad_tol: float,
    hessian_closure: Closure | None = None,
    ggn_closure: CurvatureClosure | None = None,
    zero_small_gradient: bool = False,
) -> tuple[Tensor, R | None]:
    """Steps 1-2 of a trust-region or ARC iteration in the adaptive norm ``norm``.

    Builds the local model (:func:`~secondorder.optim.curvature_source.local_model`),
    checks the start (:func:`check_finite_start`), updates the norm with the gradient (seed
    001 Alg. 1 line 5; its accumulator is stored in ``optimizer.state["global"]["norm"]``)
    and calls ``solve(matvec, grads)``; the curvature graph is freed before returning.

    Returns:
        ``(loss, result)``; ``result`` is ``None`` when ``||g|| <= grad_tol`` (no step, the
        norm is not updated), unless ``zero_small_gradient``: then ``solve`` gets ``g := 0``
        ([AdaptiveNorms] Alg. 1 line 4; the norm is not updated).

    Raises:
        ValueError: if the closures do not fit the curvature.
        NonFiniteLossError: if the loss or gradient at the current point is not finite.
    """
    with local_model(optimizer, closure, curvature, hessian_closure=hessian_closure,
                     ggn_closure=ggn_closure) as model:
        _, gnorm = check_finite_start(model.loss, model.grads)
        if gnorm <= grad_tol:
            if not zero_small_gradient:
                return model.loss, None
            zeros = tuple(torch.zeros_like(g) for g in model.grads)
            return model.loss, solve(model.operator.matvec, zeros)
        norm.update(model.grads)
        optimizer.state["global"]["norm"] = norm.state_dict()
        return model.loss, solve(model.operator.matvec, model.grads)


@dataclass
class Trial:
    """Outcome of :func:`try_step`.

    Attributes:
        predicted: the predicted decrease ``m(0) - m(s)``.
        rho: ``(f(w) - f(w + s)) / predicted`` as computed (NaN or infinite when undefined).
        accepted: whether the parameters were left at ``w + s``.
    """

    predicted: float
    rho: float
    accepted: bool

    @property
    def rho_or_fail(self) -> float:
        """``rho``, or ``-inf`` when it does not measure a model (``predicted <= 0``, or a
        NaN/Inf trial loss): the value for a damping or ``sigma`` rule to read as failure."""
        return self.rho if math.isfinite(self.rho) and self.predicted > 0 else -math.inf


def try_step(
    optimizer: SecondOrderOptimizer,
    closure: Closure,
    loss: Tensor,
    step: Sequence[Tensor],
    predicted_decrease: Tensor,
    eta: float,
) -> Trial:
    """Move to ``w + s``, evaluate the closure there and keep the step or restore ``w``.

    The step is accepted iff the predicted decrease is positive, the trial loss is finite
    and lower than ``loss``, and ``rho >= eta`` ([AdaptiveNorms] Alg. 1 line 7; Cartis et al.
    2011 Alg. 2.1 step 3; with ``eta = 0`` the Levenberg-Marquardt "only if it lowers the
    loss"). A rejected step leaves the parameters bit-identical (restored from a copy).

    Args:
        optimizer: its parameters are at ``w``.
        closure: the loss closure (no backward).
        loss: ``f(w)``.
        step: ``s``.
        predicted_decrease: ``m(0) - m(s)`` (0-dim tensor).
        eta: acceptance threshold on ``rho``.

    Returns:
        A :class:`Trial`.
    """
    old = optimizer.params_at_start()
    optimizer.add_to_params(step)
    new_loss = optimizer.evaluate(closure, grad=False).loss
    f0, f1, predicted = (
        t.reshape(()).to(torch.float64) for t in (loss, new_loss, predicted_decrease)
    )
    rho = (f0 - f1) / predicted
    predicted_f, rho_f, new_f, f0_f = torch.stack([predicted, rho, f1, f0]).tolist()
    accepted = predicted_f > 0 and math.isfinite(new_f) and new_f < f0_f and rho_f >= eta
    if not accepted:
        optimizer.set_params(old)
    return Trial(predicted_f, rho_f, accepted)


class AdaptiveNormOptimizer(hyper.Hyperparameters, SecondOrderOptimizer):
    """Base of the trust-region and ARC optimizers: one global adaptive norm.

    The norm is built by :func:`~secondorder.optim.norms.make_norm` from ``defaults``
    (``norm``, ``beta``, ``epsilon``, ``power``, ``normalize``; ``defaults["norm"]`` may
    be an :class:`AdaptiveNorm` instance, stored as its name), or from the first group's
    values when the groups override them (:func:`~secondorder.optim.norms.norm_of_group`).
    Its accumulator lives in ``state["global"]["norm"]``. :attr:`HYPERPARAMETERS` checks
    the keys the subclasses share (``curvature``, ``gamma``, ``max_cg_iter``,
    ``tolerance_grad``); a subclass extends it with its own.

    Args:
        params: parameters or param groups (every hyperparameter equal in all groups).
        defaults: the hyperparameters.

    Raises:
        ValueError: for an invalid norm name or value, or groups that disagree.
    """

    NEEDS_CURVATURE = True
    SUPPORTS_GAUSS_NEWTON = True
    HYPERPARAMETERS = {
        "curvature": hyper.one_of(CURVATURES),
        "gamma": hyper.greater_than(1),
        "max_cg_iter": hyper.integer(1),
        "tolerance_grad": hyper.nonnegative,
    }

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self._norm = make_norm(defaults["norm"], beta=defaults["beta"],
                               epsilon=defaults["epsilon"], power=defaults["power"],
                               normalize=defaults["normalize"])
        defaults = {**defaults, "norm": self._norm.name}
        super().__init__(params, defaults)
        self._norm = norm_of_group(self._norm, self.param_groups[0], defaults)

    @property
    def norm(self) -> AdaptiveNorm:
        """The norm (its accumulator is synchronized with the state)."""
        self._norm.load_state_dict(self.state["global"].get("norm", {}))
        return self._norm
