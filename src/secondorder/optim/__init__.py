"""Optimizers (``torch.optim`` compatible) and their shared line searches and Krylov solvers.

Every optimizer derives from :class:`SecondOrderOptimizer`: ``step(closure)`` takes a
closure that returns the loss without calling ``backward()`` (see
:mod:`secondorder.optim.base`).
"""

from secondorder.optim.adahessian import AdaHessian, adahessian_update
from secondorder.optim.adaptive_cubic import AdaptiveCubic
from secondorder.optim.barzilai_borwein import BarzilaiBorwein
from secondorder.optim.base import Closure, CostCounter, Evaluation, SecondOrderOptimizer
from secondorder.optim.hessian_free import HessianFree
from secondorder.optim.krylov import CGResult, steihaug_cg, truncated_cg
from secondorder.optim.lbfgs import LBFGS
from secondorder.optim.levenberg_marquardt import LevenbergMarquardt
from secondorder.optim.line_search import (
    LineSearchResult,
    backtracking,
    nonmonotone_backtracking,
    strong_wolfe,
)
from secondorder.optim.lscg import LSCG
from secondorder.optim.newton_cg import NewtonCG
from secondorder.optim.newton_krylov import NewtonKrylov
from secondorder.optim.nonlinear_cg import NonlinearCG
from secondorder.optim.norms import DiagonalNorm, FullMatrixNorm, SphericalNorm
from secondorder.optim.quasi_newton import LBFGSMemory, two_loop
from secondorder.optim.sampled_objective import SampledObjective
from secondorder.optim.trust_region import TrustRegion

__all__ = [
    "LBFGS",
    "LSCG",
    "AdaHessian",
    "AdaptiveCubic",
    "BarzilaiBorwein",
    "CGResult",
    "Closure",
    "CostCounter",
    "DiagonalNorm",
    "Evaluation",
    "FullMatrixNorm",
    "HessianFree",
    "LBFGSMemory",
    "LevenbergMarquardt",
    "LineSearchResult",
    "NewtonCG",
    "NewtonKrylov",
    "NonlinearCG",
    "SampledObjective",
    "SecondOrderOptimizer",
    "SphericalNorm",
    "TrustRegion",
    "adahessian_update",
    "backtracking",
    "nonmonotone_backtracking",
    "steihaug_cg",
    "strong_wolfe",
    "truncated_cg",
    "two_loop",
]
