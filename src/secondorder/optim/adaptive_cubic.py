"""Adaptive cubic regularization (ARC) with adaptive norms.

[Cartis2011], "ARC part I", Alg. 2.1) minimize at each step the cubic model::

    m(s) = g^T s + s^T B s / 2 + sigma / 3 * ||s||_M^3

and adapt ``sigma`` by the ratio ``rho`` of actual to predicted decrease. [AdaptiveNorms] (Sec. 4,
footnote 5) notes that its ellipsoidal norms transfer directly from trust regions to cubic
regularization; ``M`` is any norm of :mod:`secondorder.optim.norms`.

The subproblem is solved in a Krylov subspace ([Cartis2011] Sec. 6.2): with
``s = M^{-1/2} u`` the model becomes Euclidean in ``u``; Lanczos on ``M^{-1/2} B M^{-1/2}``
started at ``M^{-1/2} g`` (:func:`secondorder.curvature.lanczos.lanczos`) gives an
orthonormal basis ``Q`` and the tridiagonal ``T = Q^T (M^{-1/2} B M^{-1/2}) Q``, and since
``M^{-1/2} g = ||M^{-1/2} g|| q_1`` the model restricted to ``u = Q y`` is::

    ||M^{-1/2} g|| y_1 + y^T T y / 2 + sigma / 3 * ||y||^3

which :func:`solve_cubic_tridiagonal` minimizes exactly through the secular equation
``(T + lambda I) y = -||M^{-1/2} g|| e_1``, ``lambda = sigma ||y||``,
``lambda >= max(0, -lambda_min(T))`` ([Cartis2011] Thm. 3.1; [NocedalWright2006]
Sec. 4.3 for the trust-region analogue), including the hard case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

from secondorder.curvature.lanczos import lanczos
from secondorder.optim import hyperparameters as hyper
from secondorder.optim.base import Closure
from secondorder.optim.curvature_source import CurvatureClosure, local_model
from secondorder.optim.model_step import AdaptiveNormOptimizer, try_step
from secondorder.optim.norms import AdaptiveNorm
from secondorder.tensorlist import TensorList

MatVec = Callable[[TensorList], Sequence[Tensor]]

__all__ = [
    "AdaptiveCubic",
    "CubicStep",
    "solve_cubic_subproblem",
    "solve_cubic_tridiagonal",
    "update_sigma",
]


def solve_cubic_tridiagonal(
    T: Tensor, gnorm: float | Tensor, sigma: float
) -> tuple[Tensor, Tensor]:
    """Global minimizer of ``gnorm * y_1 + y^T T y / 2 + sigma / 3 ||y||^3``.

    ``T`` is symmetric (tridiagonal from Lanczos, but any small symmetric matrix works).
    With ``T = S diag(theta) S^T`` and ``c = gnorm * S^T e_1``, the minimizer is
    ``y(lambda) = -S diag(1 / (theta + lambda)) c`` where ``lambda`` is the root of
    ``||y(lambda)|| = lambda / sigma`` in ``(max(0, -theta_min), inf)`` (Cartis, Gould &
    Toint 2011 Thm. 3.1; found by Brent's method, the left side decreases and the right side
    increases). In the hard case (``c`` has no component on the eigenvectors of
    ``theta_min < 0`` and ``||y(-theta_min)|| < -theta_min / sigma``) the eigenvector of
    ``theta_min`` is added to reach ``||y|| = lambda / sigma``. Solved on the host in
    float64 (``T`` is small; one transfer per call).

    Args:
        T: ``(m, m)`` symmetric matrix.
        gnorm: the coefficient of ``y_1`` (the norm of the gradient in the subspace).
        sigma: the regularization weight (positive).

    Returns:
        ``(y, decrease)``: the minimizer (on ``T``'s device and dtype) and ``-m(y) >= 0``.

    Raises:
        ValueError: if ``sigma`` is not positive or ``T`` is not square.

    Example:
        >>> T = torch.tensor([[1.0]], dtype=torch.float64)
        >>> y, dec = solve_cubic_tridiagonal(T, 2.0, 1.0)  # y + y^2/2 + |y|^3/3 -> y = -1
        >>> y
        tensor([-1.], dtype=torch.float64)
    """
    if not sigma > 0:
        raise ValueError(f"Invalid sigma value: {sigma}; it must be positive")
    if T.dim() != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"T must be a square matrix, got shape {tuple(T.shape)}")
    tn = T.detach().to("cpu", torch.float64).numpy()
    g0 = float(gnorm)
    theta, S = np.linalg.eigh(0.5 * (tn + tn.T))
    c = g0 * S[0, :]
    lo = max(0.0, -theta[0])

    def ynorm(lam: float) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.sqrt(np.sum(np.square(c / (theta + lam)))))

    def phi(lam: float) -> float:
        return ynorm(lam) - lam / sigma

    eps = np.finfo(np.float64).eps
    a = lo + 4 * eps * max(lo, abs(theta[-1]), 1e-300) if theta[0] <= 0 else 0.0
    fa = phi(a)
    if not fa > 0 and theta[0] <= 0:
        # Hard case: lambda = a, fill the norm with the eigenvector(s) of theta_min.
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(np.abs(c) > 0, -c / (theta + a), 0.0)
        tau = math.sqrt(max(0.0, (a / sigma) ** 2 - float(np.sum(z * z))))
        z[0] += -tau if c[0] > 0 else tau
        lam = a
    elif g0 == 0.0:
        z, lam = np.zeros_like(c), 0.0
    else:
        hi = max(1.0, 2.0 * a)
        while phi(hi) > 0:
            hi *= 2.0
        lam = brentq(phi, a, hi, xtol=1e-300, rtol=4 * eps, maxiter=500)
        z = -c / (theta + lam)
    y = S @ z
    m = g0 * y[0] + 0.5 * float(y @ tn @ y) + sigma / 3.0 * float(np.linalg.norm(y)) ** 3
    out = torch.as_tensor(y, dtype=T.dtype, device=T.device)
    return out, torch.as_tensor(-m, dtype=T.dtype, device=T.device)


@dataclass
class CubicStep:
    """Approximate minimizer of the cubic model.

    Attributes:
        step: ``s``.
        predicted_decrease: ``m(0) - m(s)`` (0-dim tensor), from the Krylov model.
        krylov_dim: Lanczos vectors used.
    """

    step: TensorList
    predicted_decrease: Tensor
    krylov_dim: int


def solve_cubic_subproblem(matvec: MatVec, grad: Sequence[Tensor], sigma: float,
                           norm: AdaptiveNorm, *, krylov_dim: int = 20) -> CubicStep:
    """Minimize ``g^T s + s^T B s / 2 + sigma/3 ||s||_M^3`` over a Lanczos subspace.

    See the module docstring. Costs ``min(krylov_dim, d)`` products; the predicted
    decrease is read from the small problem (exact in exact arithmetic, the basis is
    reorthogonalized), so no extra product is needed.

    Args:
        matvec: ``v -> B v``.
        grad: ``g`` (nonzero).
        sigma: regularization weight (positive).
        norm: the norm ``M``.
        krylov_dim: most Lanczos vectors.

    Returns:
        A :class:`CubicStep`.
    """
    def transformed(u: TensorList) -> TensorList:
        return norm.inv_sqrt(tuple(matvec(norm.inv_sqrt(u))))

    lan = lanczos(transformed, norm.inv_sqrt(grad), krylov_dim)
    y, decrease = solve_cubic_tridiagonal(lan.tridiagonal(), lan.v0_norm, sigma)
    step = norm.inv_sqrt(lan.combine(y.to(lan.alphas.dtype)))
    return CubicStep(step, decrease, lan.num_steps)


def update_sigma(sigma: float, rho: float, *, eta1: float, eta2: float, gamma: float,
                 sigma_min: float) -> float:
    """[Cartis2011] Alg. 2.1 step 4: very successful (``rho >= eta2``) divides
    ``sigma`` by ``gamma`` (not below ``sigma_min``), successful keeps it, unsuccessful
    (``rho < eta1``, also a NaN ``rho``) multiplies it by ``gamma``."""
    if rho >= eta2:
        return max(sigma / gamma, sigma_min)
    if rho >= eta1:
        return sigma
    return sigma * gamma


class AdaptiveCubic(AdaptiveNormOptimizer):
    """Adaptive cubic regularization ([Cartis2011] with adaptive norms.

    ``step(closure)`` takes the gradient and curvature on the closure's batch (or the
    Hessian on ``hessian_closure``'s batch, or the GGN from ``ggn_closure``; see
    :mod:`secondorder.optim.curvature_source`), updates the norm with the gradient,
    minimizes the cubic model in a Lanczos subspace (:func:`solve_cubic_subproblem`),
    evaluates the closure at ``w + s`` and keeps the step iff ``rho >= eta1``; ``sigma`` is
    updated by :func:`update_sigma`. A rejected step leaves the parameters bit-identical.
    ``sigma`` and the norm's accumulator live in ``state["global"]``.

    Args:
        params: parameters or param groups. ``sigma`` and the norm are global, so every
            hyperparameter must be the same in all groups (``ValueError`` naming the key
            otherwise, when a group is added and at each step).
        sigma: initial regularization weight (positive).
        norm, curvature, beta, epsilon, power, normalize: the norm and the curvature, as
            documented once in :class:`~secondorder.optim.model_step.AdaptiveNormOptimizer`.
        eta1: success threshold, ``0 < eta1 <= eta2 < 1``.
        eta2: very-success threshold.
        gamma: ``sigma`` factor > 1.
        sigma_min: lower bound on ``sigma`` (positive).
        max_cg_iter: Lanczos vectors per step (>= 1); the Lanczos form of CG, one product each.
        tolerance_grad: no step when ``||g|| <= tolerance_grad``.

    Raises:
        ValueError: if a hyperparameter is out of range, a name is unknown, or a value
            differs between param groups.

    Example:
        >>> w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> opt = AdaptiveCubic([w], sigma=1e-3, norm="spherical")
        >>> for _ in range(3):
        ...     _ = opt.step(lambda: ((w - 1) ** 2).sum())
        >>> bool((w - 1).abs().max() < 1e-5)
        True
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        sigma: float = 1.0,
        norm: str | AdaptiveNorm = "rmsprop",
        curvature: str = "hessian",
        eta1: float = 0.1,
        eta2: float = 0.9,
        gamma: float = 2.0,
        beta: float = 0.9,
        epsilon: float = 1e-8,
        power: float = 0.5,
        sigma_min: float = 1e-10,
        max_cg_iter: int = 20,
        tolerance_grad: float = 0.0,
        normalize: bool = True,
    ):
        defaults = dict(
            sigma=sigma, norm=norm, curvature=curvature, eta1=eta1, eta2=eta2,
            gamma=gamma, beta=beta, epsilon=epsilon, power=power, normalize=normalize,
            sigma_min=sigma_min,
            max_cg_iter=max_cg_iter, tolerance_grad=tolerance_grad,
        )
        super().__init__(params, defaults)

    HYPERPARAMETERS = {
        **AdaptiveNormOptimizer.HYPERPARAMETERS,
        "sigma": hyper.positive,
        "eta1": hyper.in_range(0, 1),
        "sigma_min": hyper.positive,
    }

    @classmethod
    def check_relations(cls, hp: Mapping[str, Any]) -> None:
        """``eta1 <= eta2 < 1``."""
        eta1, eta2 = hp["eta1"], hp["eta2"]
        hyper.require(eta1 <= eta2 < 1.0, "eta2", eta2, f"in [eta1, 1) = [{eta1}, 1)")

    def step(self, closure: Closure, *, hessian_closure: Closure | None = None,
             ggn_closure: CurvatureClosure | None = None) -> Tensor:
        """One ARC iteration (the closures, the return value and the errors:
        :class:`~secondorder.optim.model_step.AdaptiveNormOptimizer`)."""
        hp = self.shared_hyperparameters()
        gstate = self.state["global"]
        sigma = float(gstate.get("sigma", hp["sigma"]))
        norm = self.norm

        with local_model(self, closure, hp["curvature"], hessian_closure=hessian_closure,
                         ggn_closure=ggn_closure) as model:
            grads = self.subproblem_gradient(model, norm, tolerance_grad=hp["tolerance_grad"])
            if grads is None:
                gstate.update(sigma=sigma, rho=float("nan"), accepted=False, krylov_dim=0)
                return model.loss
            sub = solve_cubic_subproblem(model.operator.matvec, grads, sigma, norm,
                                         krylov_dim=hp["max_cg_iter"])
        trial = try_step(self, closure, model.loss, sub.step, sub.predicted_decrease, hp["eta1"])
        rho = trial.rho_or_fail
        gstate.update(
            sigma=update_sigma(sigma, rho, eta1=hp["eta1"], eta2=hp["eta2"],
                               gamma=hp["gamma"], sigma_min=hp["sigma_min"]),
            rho=rho, accepted=trial.accepted, krylov_dim=sub.krylov_dim,
        )
        return model.loss
