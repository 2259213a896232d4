"""Optimizers (``torch.optim`` compatible) and their shared line searches and Krylov solvers."""

from secondorder.optim.base import Closure, CostCounter, Evaluation, SecondOrderOptimizer

__all__ = ["Closure", "CostCounter", "Evaluation", "SecondOrderOptimizer"]
