"""Stochastic trust-region method with adaptive (ellipsoidal) norms, [AdaptiveNorms] Algorithm 1.

Each step builds the local model ([AdaptiveNorms] eq. 7)::

    m_t(s) = L(w_t) + g_t^T s + s^T B_t s / 2   subject to   ||s||_{A_t} <= Delta_t

with ``g_t`` and ``B_t`` (Hessian or generalized Gauss-Newton) on a (sub-sampled) batch and
``A_t`` the spherical, RMSProp or Adagrad norm of :mod:`secondorder.optim.norms`. The
subproblem is solved by Steihaug-Toint CG in the ``A_t``-norm with the Cauchy point as a
floor ([AdaptiveNorms] Assumption 2; [Conn2000] Thm. 6.3.1): if Steihaug's model decrease
is below the Cauchy point's, the Cauchy point is taken. The ratio of actual to predicted
decrease ``rho_t`` (Alg. 1 line 7) is measured on the closure's batch with one more loss
evaluation at ``w_t + s_t``; the step is kept iff ``rho_t >= eta`` and the radius is
multiplied by ``gamma`` on success and divided by it otherwise (Alg. 1 line 8).

The functional core (:func:`solve_subproblem`, :func:`cauchy_point`,
:func:`update_radius`) is independent of the optimizer shell :class:`TrustRegion`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from secondorder import tensorlist as tl
from secondorder.curvature.lanczos import lanczos
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import Closure
from secondorder.optim.curvature_source import CurvatureClosure, local_model
from secondorder.optim.krylov import sqrt_gradient_forcing, steihaug_cg
from secondorder.optim.model_step import AdaptiveNormOptimizer, try_step
from secondorder.optim.norms import AdaptiveNorm, DiagonalNorm, FullMatrixNorm, SphericalNorm
from secondorder.tensorlist import TensorList

MatVec = Callable[[TensorList], Sequence[Tensor]]

__all__ = [
    "SubproblemResult",
    "TrustRegion",
    "cauchy_point",
    "eigen_point",
    "model_decrease",
    "solve_subproblem",
    "update_radius",
    "update_radius_model_fit",
]


@dataclass
class SubproblemResult:
    """Approximate solution of the trust-region subproblem.

    Attributes:
        step: the step ``s``.
        predicted_decrease: ``m(0) - m(s) = -(g^T s + s^T B s / 2)``, a float computed on
            the host.
        iterations: operator products taken by Steihaug's CG.
        status: the CG status (:data:`secondorder.optim.krylov.STATUSES`).
        used_cauchy: the Cauchy point beat Steihaug's step (decided on the host).
    """

    step: TensorList
    predicted_decrease: float
    iterations: int
    status: str
    used_cauchy: bool


def model_decrease(grad: Sequence[Tensor], step: Sequence[Tensor], bstep: Sequence[Tensor]):
    """``m(0) - m(s) = -(g^T s + s^T B s / 2)`` given ``B s`` (0-dim tensor)."""
    return -(tl.dot(grad, step) + 0.5 * tl.dot(step, bstep))


def cauchy_point(matvec: MatVec, grad: Sequence[Tensor], radius: float | Tensor,
                 norm: AdaptiveNorm, *, curvature: Tensor | None = None
                 ) -> tuple[TensorList, Tensor]:
    """The Cauchy point in the ``M``-norm and its model decrease.

    Minimizes the model along the ``M``-steepest-descent direction ``d = -M^{-1} g`` within
    ``||s||_M <= radius`` ([Conn2000] Sec. 6.3; [NocedalWright2006] eq. 4.12 for
    ``M = I``): with ``nu^2 = g^T M^{-1} g = ||d||_M^2`` and ``kappa = d^T B d``, the step is
    ``alpha d`` with ``alpha = min(nu^2 / kappa, radius / nu)`` if ``kappa > 0``, else
    ``radius / nu``. Costs one product, none when ``curvature`` is given. A zero gradient
    gives the zero step.

    Args:
        matvec: ``v -> B v``.
        grad: ``g``.
        radius: the trust-region radius.
        norm: the norm defining ``M``.
        curvature: ``kappa = d^T B d`` if already known (Steihaug's first product is
            along ``d``: :attr:`~secondorder.optim.krylov.CGResult.initial_curvature`).

    Returns:
        ``(step, predicted_decrease)``.
    """
    minv_g = norm.solve(grad)
    d = tl.neg(minv_g)
    nu2 = tl.dot(grad, minv_g)
    kappa = tl.dot(d, tuple(matvec(d))) if curvature is None else curvature
    nu = torch.sqrt(nu2)
    positive = nu2 > 0
    alpha_b = radius / torch.where(positive, nu, torch.ones_like(nu))
    alpha = torch.where(kappa > 0, torch.minimum(nu2 / kappa, alpha_b), alpha_b)
    alpha = torch.where(positive, alpha, torch.zeros_like(alpha))
    decrease = alpha * nu2 - 0.5 * alpha * alpha * kappa
    return tl.scale(d, alpha), decrease


def _cauchy_step_length(nu2: float, kappa: float, radius: float) -> tuple[float, float]:
    """:func:`cauchy_point`'s ``alpha`` and model decrease from ``nu^2``, ``kappa`` and the
    radius, on the host (the same float64 operations in the same order; ``radius / nu`` as
    torch computes a number over a tensor, ``radius * (1 / nu)``)."""
    if not nu2 > 0:
        return 0.0, 0.0
    alpha = radius * (1.0 / math.sqrt(nu2))
    if kappa > 0:
        alpha = min(nu2 / kappa, alpha)
    return alpha, alpha * nu2 - 0.5 * alpha * alpha * kappa


def eigen_point(matvec: MatVec, grad: Sequence[Tensor], radius: float | Tensor,
                norm: AdaptiveNorm, num_steps: int) -> tuple[TensorList, Tensor]:
    """The eigenpoint in the ``M``-norm and its model decrease ([AdaptiveNorms] Assumption 2,
    eq. 28; [Conn2000] Sec. 6.6).

    ``num_steps`` Lanczos steps on ``C = M^{-1/2} B M^{-1/2}`` (the region is a ball in
    ``u = M^{1/2} s``) from ``M^{-1/2} g`` (a fixed pseudo-random start when ``g = 0``) give
    the leftmost Ritz pair ``(theta, u)``, ``||u|| = 1``. If ``theta < 0`` the eigenpoint is
    ``s = -sign(g^T M^{-1/2} u) radius M^{-1/2} u`` on the boundary, with decrease
    ``|g^T s| - radius^2 theta / 2 > 0``; otherwise the zero step (no negative curvature
    seen). Costs ``num_steps`` products.

    Args:
        matvec: ``v -> B v``.
        grad: ``g`` (may be zero: Alg. 1 line 4's ``g := 0``).
        radius: the trust-region radius.
        norm: the norm defining ``M``.
        num_steps: Lanczos steps (>= 1).

    Returns:
        ``(step, predicted_decrease)``.
    """
    grad = tuple(grad)
    start = norm.inv_sqrt(grad)
    if not bool(tl.norm(start) > 0):
        gen = torch.Generator().manual_seed(0)
        start = tuple(torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device)
                      for g in grad)

    def transformed(u: TensorList) -> TensorList:
        return norm.inv_sqrt(tuple(matvec(norm.inv_sqrt(u))))

    res = lanczos(transformed, start, num_steps)
    theta, vecs = res.ritz()
    u = norm.inv_sqrt(res.combine(vecs[:, 0]))
    slope = tl.dot(grad, u)
    sign = torch.where(slope > 0, -1.0, 1.0).to(slope.dtype)
    negative = theta[0] < 0
    alpha = torch.where(negative, sign * radius, torch.zeros_like(slope))
    decrease = -(alpha * slope) - 0.5 * alpha * alpha * theta[0].to(slope.dtype)
    return tl.scale(u, alpha), decrease


def solve_subproblem(
    matvec: MatVec,
    grad: Sequence[Tensor],
    radius: float,
    norm: AdaptiveNorm,
    *,
    rtol: float | str = 1e-4,
    max_iter: int | None = None,
    cauchy_floor: bool = True,
    eigen_steps: int = 0,
) -> SubproblemResult:
    """Approximately solve ``min g^T s + s^T B s / 2`` s.t. ``||s||_M <= radius``.

    Diagonal norms go straight to :func:`~secondorder.optim.krylov.steihaug_cg` with
    ``metric=diag(M)``; a full-matrix norm is handled by the change of variables
    ``s = M^{-1/2} u``, which turns the region into a Euclidean ball ([Conn2000]
    Sec. 7.7): Steihaug's CG runs on ``M^{-1/2} B M^{-1/2}`` and ``M^{-1/2} g``.

    The products are Steihaug's and no more. The predicted decrease comes from CG's
    residual ``r = -(g + B s)`` (in the variables CG ran in):
    ``m(0) - m(s) = (s^T r - g^T s) / 2``. With ``cauchy_floor`` the Cauchy point
    (:func:`cauchy_point`) replaces the CG step when it decreases the model more ([AdaptiveNorms]
    Assumption 2); Steihaug's first iterate is the Cauchy point and its model values
    decrease ([Steihaug1983]; [Conn2000] Thm. 7.5.1), so this only guards against
    rounding, and the Cauchy point's curvature is Steihaug's first product
    (:attr:`~secondorder.optim.krylov.CGResult.initial_curvature`). The comparison is made
    on the host in float64 (:func:`cauchy_point`'s operations on ``nu^2 = g^T M^{-1} g``,
    which Steihaug read, and on the curvature, read with the two inner products of the
    decrease in one transfer), so the floor costs no tensor operation unless the Cauchy
    point wins.

    Args:
        matvec: ``v -> B v``.
        grad: ``g``.
        radius: the trust-region radius (positive).
        norm: the trust-region norm.
        rtol: Steihaug's relative residual tolerance, or ``"sqrt_gradient"`` for the
            forcing term ``min(0.5, sqrt(||g||_{M^{-1}}))``
            (:func:`~secondorder.optim.krylov.sqrt_gradient_forcing`).
        max_iter: most CG products (default: the dimension).
        cauchy_floor: compare with the Cauchy point.
        eigen_steps: with ``> 0``, also compare with the eigenpoint (:func:`eigen_point`,
            that many Lanczos products): the rest of Assumption 2.

    Returns:
        A :class:`SubproblemResult`.

    Raises:
        ValueError: for an ``rtol`` that is neither ``>= 0`` nor ``"sqrt_gradient"``.
    """
    grad = tuple(grad)
    if isinstance(rtol, str):
        if rtol != "sqrt_gradient":
            raise hyper.invalid("rtol", rtol, "'sqrt_gradient' or a float >= 0")
        rtol = sqrt_gradient_forcing  # of ||g||_{M^-1}, which Steihaug reads anyway
    if norm.is_diagonal:
        res = steihaug_cg(matvec, grad, radius, metric=norm.metric(), rtol=rtol,
                          max_iter=max_iter)
        step, cg_grad, cg_step = res.solution, grad, res.solution
    else:
        def transformed(u: TensorList) -> TensorList:
            return norm.inv_sqrt(tuple(matvec(norm.inv_sqrt(u))))

        cg_grad = norm.inv_sqrt(grad)
        res = steihaug_cg(transformed, cg_grad, radius, rtol=rtol, max_iter=max_iter)
        cg_step = res.solution
        step = norm.inv_sqrt(cg_step)
    # m(0) - m(s) = (s^T r - g^T s) / 2 in the variables CG ran in, read with the Cauchy
    # floor's curvature in one transfer
    products = [tl.dot(cg_step, res.residual), tl.dot(cg_grad, cg_step)]
    floor_here = cauchy_floor and res.initial_curvature is not None
    if floor_here:
        products.append(res.initial_curvature)
    values = tl.read_floats(products)
    decrease = 0.5 * (values[0] - values[1])
    used = False
    if floor_here:
        # cauchy_point's arithmetic on the host, from Steihaug's first product (its
        # direction is the Cauchy direction) and nu^2 = g^T M^{-1} g, which the solve read
        # (check_every=1: always)
        alpha, cdecrease = _cauchy_step_length(res.initial_residual_sqnorm, values[2],
                                               float(radius))
        used = cdecrease > decrease
        if used:
            step, decrease = tl.scale(norm.solve(grad), -alpha), cdecrease
    elif cauchy_floor:  # no CG iteration (a zero gradient, or rtol >= 1): one product here
        cstep, cdecrease_t = cauchy_point(matvec, grad, radius, norm)
        cdecrease = float(cdecrease_t)
        used = cdecrease > decrease
        if used:
            step, decrease = cstep, cdecrease
    if eigen_steps > 0:
        estep, edecrease_t = eigen_point(matvec, grad, radius, norm, eigen_steps)
        edecrease = float(edecrease_t)
        if edecrease > decrease:
            step, decrease = estep, edecrease
    return SubproblemResult(step, decrease, res.iterations, res.status, used)


def update_radius(radius: float, success: bool, *, gamma: float, max_radius: float,
                  expand: bool = True) -> float:
    """[AdaptiveNorms] Alg. 1 line 8: ``gamma * radius`` on success (capped), ``radius / gamma``
    otherwise. With ``expand=False`` a successful step keeps the radius (the "successful but
    not very successful" case of [Conn2000] Alg. 6.1.1)."""
    if not success:
        return radius / gamma
    return min(gamma * radius, max_radius) if expand else radius


SHRINK_BELOW = 0.25  # [NocedalWright2006] Alg. 4.1: rho < 1/4 shrinks the radius


def update_radius_model_fit(radius: float, rho: float, accepted: bool, on_boundary: bool, *,
                            gamma: float, eta_expand: float, max_radius: float) -> float:
    """The radius rule of [NocedalWright2006] Alg. 4.1 with factors ``gamma`` and ``1/gamma^2``.

    * a rejected step, or ``rho < 1/4`` (the model overpredicted the decrease by 4x or more):
      ``radius / gamma^2`` (Alg. 4.1 with ``gamma = 2``: a quarter);
    * ``rho >= eta_expand`` and the step on the boundary (``||s||_M = radius``; Steihaug's
      ``"boundary"`` or ``"negative_curvature"`` exit): ``min(gamma * radius, max_radius)``
      -- an interior step says nothing about a larger region;
    * otherwise the radius is kept.

    A NaN ``rho`` (undefined ratio) shrinks.
    """
    if not accepted or not rho >= SHRINK_BELOW:
        return radius / (gamma * gamma)
    if rho >= eta_expand and on_boundary:
        return min(gamma * radius, max_radius)
    return radius


class TrustRegion(AdaptiveNormOptimizer):
    """Stochastic (ellipsoidal) trust-region Newton method, [AdaptiveNorms] Algorithm 1.

    ``step(closure)`` takes the gradient and curvature on the closure's batch (or the
    Hessian on ``hessian_closure``'s batch, as [AdaptiveNorms] sub-samples ``B_t``), updates the
    norm ``A_t`` with the gradient (Alg. 1 line 5), solves the subproblem (eq. 7) with
    :func:`solve_subproblem`, evaluates the closure once more at ``w + s`` and accepts the
    step iff ``rho >= eta``. A rejected step leaves the parameters bit-identical (they are
    restored from a copy). The radius, the norm's accumulator and the last ``rho`` live in
    ``state["global"]``.

    Curvature ``"gauss_newton"``: pass ``ggn_closure`` to ``step``, returning the GGN
    operator at the current parameters (see :mod:`secondorder.optim.curvature_source`).

    Args:
        params: parameters or param groups. The radius and the norm are global, so every
            hyperparameter must be the same in all groups (``ValueError`` naming the key
            otherwise, when a group is added and at each step).
        radius: initial radius ``Delta_0 > 0`` in the norm ``||.||_M`` (Euclidean units when
            the norm is normalized, the default).
        norm, curvature, beta, epsilon, power, normalize: the norm and the curvature, as
            documented once in :class:`~secondorder.optim.model_step.AdaptiveNormOptimizer`.
        eta: acceptance threshold in (0, 1) ([AdaptiveNorms] Alg. 1; default as [Kohler2017]).
        gamma: radius factor > 1.
        max_radius: cap on the radius (>= ``radius``).
        max_cg_iter: most products per Steihaug solve (>= 1).
        cg_rtol: Steihaug's relative residual tolerance: ``"sqrt_gradient"`` (the forcing
            term ``min(0.5, sqrt(||g||_{M^{-1}}))`` of [NocedalWright2006] Alg. 7.1, loose
            far from a minimizer and superlinear near one) or a constant ``>= 0``.
        tolerance_grad: Alg. 1 line 4, ``g_t := 0`` if ``||g_t|| <= tolerance_grad`` (no step).
        cauchy_floor: take the Cauchy point when it beats Steihaug's step.
        eigen_steps: ``0`` (default) or the Lanczos products of an eigenpoint floor
            (:func:`eigen_point`; [AdaptiveNorms] Assumption 2's second half). With it, a
            gradient at or below ``tolerance_grad`` is set to 0 and the subproblem is still
            solved (Alg. 1 line 4), so a saddle point can be left along negative curvature;
            without it such a step is skipped (the zero-gradient model has no decrease to
            offer Steihaug's CG). docs/studies/adaptive_norms.md measures its effect.
        eta_expand: default 0.75, the rule of [NocedalWright2006] Alg. 4.1
            (:func:`update_radius_model_fit`): the radius grows only when ``rho >=
            eta_expand`` and the step reached the boundary, shrinks by ``gamma^2`` when the
            step is rejected or ``rho < 1/4``, and is kept otherwise ([Conn2000] Alg. 6.1.1
            allows all three). ``None`` is [AdaptiveNorms] Alg. 1 as printed (the radius
            doubles after every accepted step), which rejects about half of all steps in an
            accept/reject alternation and, on the digits MLP, CNN and autoencoder, needed
            about twice the backprops to 99% training accuracy in every norm
            (docs/studies/adaptive_norms.md); on full-batch problems 0.75 also takes about
            half the rejected steps (``benchmarks/full_batch_solvers.py``).
        full_batch: the closure computes the same function at every call (full-batch
            training): the trial point is evaluated with its gradient and Hessian graph, and
            when the step is accepted the next step starts from that evaluation instead of
            evaluating the closure again (one forward pass less per accepted step, one
            backward pass more per rejected one; the graph is kept between the two steps).
            It is used only while the parameters have not been written since (their
            in-place versions; a write through ``p.data`` bumps no version, so change
            parameters between steps with in-place ops under ``torch.no_grad()``), with
            ``curvature="hessian"`` and no ``hessian_closure``. The iterates are those of
            ``full_batch=False`` (to the bit, except for models with scaled-dot-product
            attention, whose trial is then evaluated with the math kernel).
        max_iter: iterations per ``step`` call (default 1; see "iterations per step" in
            :mod:`secondorder.optim.base`); ``step(closure, callback=...)`` can end them early.

    Raises:
        ValueError: if a hyperparameter is out of range, a name is unknown, or a value
            differs between param groups.

    Example:
        >>> w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> opt = TrustRegion([w], radius=10.0, norm="spherical")
        >>> for _ in range(3):
        ...     _ = opt.step(lambda: ((w - 1) ** 2).sum())
        >>> w.detach()
        tensor([1., 1.], dtype=torch.float64)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        radius: float = 1.0,
        norm: str | AdaptiveNorm = "rmsprop",
        curvature: str = "hessian",
        eta: float = 0.1,
        gamma: float = 2.0,
        beta: float = 0.9,
        epsilon: float = 1e-8,
        power: float = 0.5,
        max_radius: float = 1e4,
        max_cg_iter: int = 250,
        cg_rtol: float | str = "sqrt_gradient",
        tolerance_grad: float = 0.0,
        cauchy_floor: bool = True,
        normalize: bool = True,
        eta_expand: float | None = 0.75,
        eigen_steps: int = 0,
        full_batch: bool = False,
        max_iter: int = 1,
    ):
        defaults = dict(
            radius=radius, norm=norm, curvature=curvature, eta=eta, gamma=gamma,
            beta=beta, epsilon=epsilon, power=power, normalize=normalize,
            max_radius=max_radius,
            max_cg_iter=max_cg_iter, cg_rtol=cg_rtol, tolerance_grad=tolerance_grad,
            cauchy_floor=cauchy_floor, eta_expand=eta_expand, eigen_steps=eigen_steps,
            full_batch=full_batch, max_iter=max_iter,
        )
        super().__init__(params, defaults)
        if type(self._norm) not in (SphericalNorm, DiagonalNorm, FullMatrixNorm):
            # a user's norm may change its state dict's containers in place: the step
            # transaction then copies the state as it does for any optimizer
            self.state_containers_replaced = False

    #: steps replace their state containers (the norm's state dict, the radius...), never
    #: change them in place: the step transaction copies one dict (withdrawn per instance
    #: for a norm that is not one of this package's)
    state_containers_replaced = True

    HYPERPARAMETERS = {
        **AdaptiveNormOptimizer.HYPERPARAMETERS,
        "radius": hyper.positive,
        "eta": hyper.in_range(0, 1),
        "cg_rtol": hyper.Rule(
            lambda r: r == "sqrt_gradient" if isinstance(r, str) else r >= 0,
            "'sqrt_gradient' or a float >= 0",
        ),
        "eigen_steps": hyper.integer(0),
        "full_batch": hyper.boolean,
        "max_iter": hyper.integer(1),
    }

    @classmethod
    def check_relations(cls, hp: Mapping[str, Any]) -> None:
        """``eta <= eta_expand < 1`` (or ``None``) and ``max_radius >= radius``."""
        eta, eta_expand, radius = hp["eta"], hp["eta_expand"], hp["radius"]
        hyper.require(eta_expand is None or eta <= eta_expand < 1.0, "eta_expand", eta_expand,
                      f"None or in [eta, 1) = [{eta}, 1)")
        hyper.require(hp["max_radius"] >= radius, "max_radius", hp["max_radius"],
                      f">= radius ({radius})")

    def step(self, closure: Closure, *, hessian_closure: Closure | None = None,
             ggn_closure: CurvatureClosure | None = None,
             callback: Callable[[], bool | None] | None = None) -> Tensor:
        """Up to ``max_iter`` iterations of [AdaptiveNorms] Algorithm 1 (the closures, the
        return value and the errors: :class:`~secondorder.optim.model_step.AdaptiveNormOptimizer`).

        Args:
            callback: called with no arguments after each iteration (accepted or not);
                returning ``True`` ends the step there (:mod:`secondorder.optim.base`,
                "iterations per step").
        """
        hp = self.shared_hyperparameters()
        return self.run_iterations(
            lambda: self._iteration(closure, hp, hessian_closure, ggn_closure),
            hp.get("max_iter", self.defaults.get("max_iter", 1)), callback)

    def _iteration(self, closure: Closure, hp: dict[str, Any], hessian_closure: Closure | None,
                   ggn_closure: CurvatureClosure | None) -> tuple[Tensor, bool]:
        """One iteration of Algorithm 1: the loss at its start, and whether there was a step
        (``False`` when the gradient is at or below ``tolerance_grad``)."""
        gstate = self.state["global"]
        radius = float(gstate.get("radius", hp["radius"]))
        norm = self.norm

        eigen_steps = hp.get("eigen_steps", 0)
        full_batch = hp.get("full_batch", False)
        start = self.take_kept_evaluation()
        with local_model(self, closure, hp["curvature"], hessian_closure=hessian_closure,
                         ggn_closure=ggn_closure, start=start) as model:
            grads = self.subproblem_gradient(model, norm, tolerance_grad=hp["tolerance_grad"],
                                             zero_small_gradient=eigen_steps > 0)
            if grads is None:
                gstate.update(radius=radius, rho=float("nan"), accepted=False, cg_iterations=0)
                return model.loss, False
            sub = solve_subproblem(model.operator.matvec, grads, radius, norm,
                                   rtol=hp["cg_rtol"], max_iter=hp["max_cg_iter"],
                                   cauchy_floor=hp["cauchy_floor"], eigen_steps=eigen_steps)
        keep = full_batch and hp["curvature"] == "hessian" and hessian_closure is None
        trial = try_step(self, closure, model.loss, sub.step, sub.predicted_decrease, hp["eta"],
                         keep_graph=keep)
        if trial.evaluation is not None:
            self.keep_evaluation(trial.evaluation)
        eta_expand = hp.get("eta_expand")
        if eta_expand is None:
            new_radius = update_radius(radius, trial.accepted, gamma=hp["gamma"],
                                       max_radius=hp["max_radius"])
        else:
            on_boundary = sub.status in ("boundary", "negative_curvature")
            new_radius = update_radius_model_fit(
                radius, trial.rho, trial.accepted, on_boundary, gamma=hp["gamma"],
                eta_expand=eta_expand, max_radius=hp["max_radius"],
            )  # fmt: skip
        gstate.update(
            radius=new_radius,
            rho=trial.rho, accepted=trial.accepted, cg_iterations=sub.iterations,
            cg_status=sub.status,
        )  # fmt: skip
        return model.loss, True
