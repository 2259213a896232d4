"""The step shell the model-based optimizers share: start check, subproblem, trial, ratio.

Trust region ([AdaptiveNorms] Alg. 1), ARC ([Cartis2011] Alg. 2.1) and
Levenberg-Marquardt ([More1978]) read top to bottom::

    with local_model(self, closure, curvature) as model:      # loss, gradient, B at w
        grads = self.subproblem_gradient(model, norm, ...)     # start check, norm update
        sub = solve_subproblem(model.operator.matvec, grads, ...)
    trial = try_step(self, closure, model.loss, sub.step, sub.predicted_decrease, eta)

1. evaluate loss, gradient and curvature at ``w``
   (:func:`~secondorder.optim.curvature_source.local_model`) and stop on a NaN/Inf start
   (:func:`check_finite_start`; Hessian-free uses it too);
2. in an adaptive norm (trust region, ARC: :class:`AdaptiveNormOptimizer`), update the norm
   with the gradient (:meth:`AdaptiveNormOptimizer.subproblem_gradient`), then minimize the
   local model; the ``with`` block frees the curvature graph;
3. evaluate the loss at ``w + s`` and keep the step by the ratio of actual to predicted
   decrease ``rho = (f(w) - f(w + s)) / (m(0) - m(s))`` (:func:`try_step`), restoring the
   parameters bit for bit otherwise.

The ratio is computed in float64 on the host (one transfer for the three numbers it
needs, then Python arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.errors import NonFiniteLossError
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import Closure, Evaluation, SecondOrderOptimizer
from secondorder.optim.curvature_source import CURVATURES, LocalModel
from secondorder.optim.host_scalars import ieee_divide
from secondorder.optim.norms import AdaptiveNorm, make_norm, norm_of_group

__all__ = ["AdaptiveNormOptimizer", "Trial", "check_finite_start", "try_step"]


def check_finite_start(loss: Tensor, grads: Sequence[Tensor]) -> tuple[float, float]:
    """The loss and the gradient norm at the current point as floats (one host sync).

    Raises:
        NonFiniteLossError: if either is NaN or infinite.
    """
    loss_f, gnorm_f = tl.read_floats([loss, tl.norm(grads)])
    if not (math.isfinite(loss_f) and math.isfinite(gnorm_f)):
        raise NonFiniteLossError(
            f"loss {loss_f} or gradient norm {gnorm_f} at the current point is not finite"
        )
    return loss_f, gnorm_f


@dataclass
class Trial:
    """Outcome of :func:`try_step`.

    Attributes:
        predicted: the predicted decrease ``m(0) - m(s)``.
        rho: ``(f(w) - f(w + s)) / predicted`` as computed (NaN or infinite when undefined).
        accepted: whether the parameters were left at ``w + s``.
        evaluation: with ``keep_graph``, the accepted trial's evaluation (loss, gradient
            and Hessian at ``w + s``); ``None`` otherwise.
    """

    predicted: float
    rho: float
    accepted: bool
    evaluation: Evaluation | None = None

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
    predicted_decrease: float | Tensor,
    eta: float,
    keep_graph: bool = False,
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
        predicted_decrease: ``m(0) - m(s)`` (a float, or a 0-dim tensor read with the losses).
        eta: acceptance threshold on ``rho``.
        keep_graph: evaluate the trial point with its gradient and Hessian
            (``create_graph=True``) and return that evaluation when the step is accepted, for
            the next step to start from (full-batch mode); a rejected trial's graph is freed.

    Returns:
        A :class:`Trial`.
    """
    old = optimizer.params_at_start()
    optimizer.add_to_params(step)
    ev = optimizer.evaluate(closure, grad=keep_graph, create_graph=keep_graph)
    if isinstance(predicted_decrease, Tensor):
        f0_f, new_f, predicted_f = tl.read_floats([loss, ev.loss, predicted_decrease])
    else:
        (f0_f, new_f), predicted_f = tl.read_floats([loss, ev.loss]), predicted_decrease
    rho_f = ieee_divide(f0_f - new_f, predicted_f)
    accepted = predicted_f > 0 and math.isfinite(new_f) and new_f < f0_f and rho_f >= eta
    if not accepted:
        optimizer.set_params(old)
        if ev.hessian is not None:
            ev.hessian.free()
        return Trial(predicted_f, rho_f, False)
    return Trial(predicted_f, rho_f, True, ev if keep_graph else None)


class AdaptiveNormOptimizer(hyper.Hyperparameters, SecondOrderOptimizer):
    """Base of the trust-region and ARC optimizers: one global adaptive norm.

    The norm is built by :func:`~secondorder.optim.norms.make_norm` from ``defaults``
    (``norm``, ``beta``, ``epsilon``, ``power``, ``normalize``; ``defaults["norm"]`` may
    be an :class:`AdaptiveNorm` instance, stored as its name), or from the first group's
    values when the groups override them (:func:`~secondorder.optim.norms.norm_of_group`).
    Its accumulator lives in ``state["global"]["norm"]``. :attr:`HYPERPARAMETERS` checks
    the keys the subclasses share (``curvature``, ``gamma``, ``max_cg_iter``,
    ``tolerance_grad``); a subclass extends it with its own.

    The hyperparameters of the norm and the curvature, the same in trust region and ARC and
    documented here once:

    - ``norm``: ``"spherical"``, ``"rmsprop"`` ([AdaptiveNorms] eq. 3), ``"adagrad"``
      (eq. 2), ``"full_rmsprop"``, ``"full_adagrad"`` (dense ``d x d``, small models), or an
      :class:`~secondorder.optim.norms.AdaptiveNorm` instance;
    - ``curvature``: ``"hessian"`` or ``"gauss_newton"``;
    - ``beta``: RMSProp decay in (0, 1);
    - ``epsilon``: ``eps > 0`` of [AdaptiveNorms] eqs. 2-3;
    - ``power``: the norm matrix is ``M = A_t^power`` (0.5: [AdaptiveNorms] Corollary 1);
    - ``normalize``: scale ``M`` to mean diagonal 1, so that the radius (trust region) or
      ``sigma`` (ARC) is in Euclidean units (see :mod:`secondorder.optim.norms`; ignored
      for a norm instance).

    A subclass's ``step(closure, *, hessian_closure=None, ggn_closure=None)`` returns the
    loss at the start of the step (on the closure's batch) and reads top to bottom (module
    docstring). Its arguments, documented here once:

    - ``closure`` returns the loss on the current batch (no backward);
    - ``hessian_closure``, optional, returns the loss on a separate batch for the Hessian
      (``curvature="hessian"``);
    - ``ggn_closure`` returns the GGN operator (``curvature="gauss_newton"``; see
      :mod:`secondorder.optim.curvature_source`).

    It raises ``ValueError`` if the closures do not fit the curvature or a hyperparameter
    differs between param groups, and :class:`~secondorder.errors.NonFiniteLossError` if the
    loss or gradient at the current point is not finite.

    Args:
        params: parameters or param groups (every hyperparameter equal in all groups).
        defaults: the hyperparameters.

    Raises:
        ValueError: for an invalid norm name or value, or groups that disagree.
    """

    #: steps replace their state tensors (the norm's accumulator, the radius or ``sigma``),
    #: never write into them: the step transaction of :mod:`secondorder.optim.base` copies
    #: none of them
    state_mutated_in_place = frozenset[str]()
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

    def subproblem_gradient(
        self,
        model: LocalModel,
        norm: AdaptiveNorm,
        *,
        tolerance_grad: float,
        zero_small_gradient: bool = False,
    ) -> tuple[Tensor, ...] | None:
        """The gradient the subproblem is solved with, after updating ``norm`` with it.

        Checks the start (:func:`check_finite_start`), then updates the norm with the model's
        gradient ([AdaptiveNorms] Alg. 1 line 5) and stores its accumulator in
        ``state["global"]["norm"]``.

        Args:
            model: the local model at the current parameters.
            norm: :attr:`norm`, read once at the start of the step.
            tolerance_grad: at or below this gradient norm no step is taken.
            zero_small_gradient: below ``tolerance_grad``, return ``g := 0`` instead of
                ``None`` ([AdaptiveNorms] Alg. 1 line 4), so the subproblem is still solved.

        Returns:
            ``model.grads``; or, when ``||g|| <= tolerance_grad`` (the norm is then not
            updated), zeros shaped like it with ``zero_small_gradient`` and ``None``
            without.

        Raises:
            NonFiniteLossError: if the loss or gradient at the current point is not finite.
        """
        _, gnorm = check_finite_start(model.loss, model.grads)
        if gnorm <= tolerance_grad:
            if not zero_small_gradient:
                return None
            return tuple(torch.zeros_like(g) for g in model.grads)
        norm.update(model.grads)
        self.state["global"]["norm"] = norm.state_dict()
        return model.grads
