"""How curvature is obtained: products, operators, diagonals, spectra."""

from secondorder.curvature.functional import LossFunction, functional_loss
from secondorder.curvature.hvp import BACKENDS, gradient, hvp
from secondorder.curvature.operators import CurvatureOperator, HessianOperator

__all__ = [
    "BACKENDS",
    "CurvatureOperator",
    "HessianOperator",
    "LossFunction",
    "functional_loss",
    "gradient",
    "hvp",
]
