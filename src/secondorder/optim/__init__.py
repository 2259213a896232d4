"""Optimizers (``torch.optim`` compatible) and their shared line searches and Krylov solvers."""

from secondorder.optim.base import Closure, CostCounter, Evaluation, SecondOrderOptimizer
from secondorder.optim.krylov import CGResult, steihaug_cg, truncated_cg

__all__ = ["Closure", "CostCounter", "Evaluation", "SecondOrderOptimizer"]
__all__ += ["CGResult", "steihaug_cg", "truncated_cg"]
from secondorder.optim.adahessian import AdaHessian, adahessian_update  # noqa: E402

__all__ += ["AdaHessian", "adahessian_update"]
