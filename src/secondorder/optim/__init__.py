"""Optimizers (``torch.optim`` compatible) and their shared line searches and Krylov solvers."""

from secondorder.optim.base import Closure, CostCounter, Evaluation, SecondOrderOptimizer
from secondorder.optim.krylov import CGResult, steihaug_cg, truncated_cg

__all__ = ["Closure", "CostCounter", "Evaluation", "SecondOrderOptimizer"]
__all__ += ["CGResult", "steihaug_cg", "truncated_cg"]
from secondorder.optim.line_search import (  # noqa: E402
    LineSearchResult,
    backtracking,
    nonmonotone_backtracking,
    strong_wolfe,
)

__all__ += ["LineSearchResult", "backtracking", "nonmonotone_backtracking", "strong_wolfe"]
from secondorder.optim.adahessian import AdaHessian, adahessian_update  # noqa: E402

__all__ += ["AdaHessian", "adahessian_update"]
from secondorder.optim.barzilai_borwein import BarzilaiBorwein  # noqa: E402
from secondorder.optim.lbfgs import LBFGS  # noqa: E402
from secondorder.optim.newton_cg import NewtonCG  # noqa: E402
from secondorder.optim.nonlinear_cg import NonlinearCG  # noqa: E402
from secondorder.optim.quasi_newton import LBFGSMemory, two_loop  # noqa: E402
from secondorder.optim.sampled_objective import SampledObjective  # noqa: E402

__all__ += ["BarzilaiBorwein", "LBFGS", "LBFGSMemory", "NewtonCG", "NonlinearCG"]
__all__ += ["SampledObjective", "two_loop"]
from secondorder.optim.levenberg_marquardt import LevenbergMarquardt  # noqa: E402
from secondorder.optim.lscg import LSCG  # noqa: E402
from secondorder.optim.newton_krylov import NewtonKrylov  # noqa: E402

__all__ += ["LSCG", "LevenbergMarquardt", "NewtonKrylov"]
from secondorder.optim.adaptive_cubic import AdaptiveCubic  # noqa: E402
from secondorder.optim.hessian_free import HessianFree  # noqa: E402
from secondorder.optim.norms import DiagonalNorm, FullMatrixNorm, SphericalNorm  # noqa: E402
from secondorder.optim.trust_region import TrustRegion  # noqa: E402

__all__ += ["AdaptiveCubic", "DiagonalNorm", "FullMatrixNorm", "HessianFree", "SphericalNorm"]
__all__ += ["TrustRegion"]
