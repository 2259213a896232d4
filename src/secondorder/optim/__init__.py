"""Optimizers (``torch.optim`` compatible) and their shared line searches and Krylov solvers.

Every optimizer derives from :class:`SecondOrderOptimizer`: ``step(closure)`` takes a
closure that returns the loss without calling ``backward()`` (see
:mod:`secondorder.optim.base`).

Writing your own (docs/writing_optimizers.md) needs only names exported here: the base
:class:`SecondOrderOptimizer` with the :class:`Hyperparameters` mixin and the rules of
:mod:`secondorder.optim.hyperparameters`; :class:`SharedHyperparameters` for a method that
moves along one search direction with per-group ``lr``; :class:`AdaptiveNormOptimizer` for
a model-based step in an :class:`AdaptiveNorm`; :func:`local_model` for the loss, gradient
and curvature operator of a step; the line searches and Krylov solvers.
"""

from secondorder.optim import hyperparameters
from secondorder.optim.adahessian import AdaHessian, adahessian_update
from secondorder.optim.adaptive_cubic import AdaptiveCubic
from secondorder.optim.barzilai_borwein import BarzilaiBorwein
from secondorder.optim.base import Closure, CostCounter, Evaluation, SecondOrderOptimizer
from secondorder.optim.curvature_source import CURVATURES, LocalModel, local_model
from secondorder.optim.direction_groups import SharedHyperparameters
from secondorder.optim.hessian_free import HessianFree
from secondorder.optim.hyperparameters import Hyperparameters
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
from secondorder.optim.model_step import AdaptiveNormOptimizer
from secondorder.optim.newton_cg import NewtonCG
from secondorder.optim.newton_krylov import NewtonKrylov
from secondorder.optim.nonlinear_cg import NonlinearCG
from secondorder.optim.norms import (
    NORMS,
    AdaptiveNorm,
    DiagonalNorm,
    FullMatrixNorm,
    SphericalNorm,
    make_norm,
)
from secondorder.optim.quasi_newton import LBFGSMemory, two_loop
from secondorder.optim.sampled_objective import SampledObjective
from secondorder.optim.trust_region import TrustRegion

__all__ = [
    "CURVATURES",
    "LBFGS",
    "LSCG",
    "NORMS",
    "AdaHessian",
    "AdaptiveCubic",
    "AdaptiveNorm",
    "AdaptiveNormOptimizer",
    "BarzilaiBorwein",
    "CGResult",
    "Closure",
    "CostCounter",
    "DiagonalNorm",
    "Evaluation",
    "FullMatrixNorm",
    "HessianFree",
    "Hyperparameters",
    "LBFGSMemory",
    "LevenbergMarquardt",
    "LineSearchResult",
    "LocalModel",
    "NewtonCG",
    "NewtonKrylov",
    "NonlinearCG",
    "SampledObjective",
    "SecondOrderOptimizer",
    "SharedHyperparameters",
    "SphericalNorm",
    "TrustRegion",
    "adahessian_update",
    "backtracking",
    "hyperparameters",
    "local_model",
    "make_norm",
    "nonmonotone_backtracking",
    "steihaug_cg",
    "strong_wolfe",
    "truncated_cg",
    "two_loop",
]
