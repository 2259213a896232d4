"""How curvature is obtained: products, operators, diagonals, spectra."""

from secondorder.curvature.functional import LossFunction, functional_loss
from secondorder.curvature.hvp import BACKENDS, gradient, hvp
from secondorder.curvature.lanczos import LanczosResult, lanczos
from secondorder.curvature.operators import CurvatureOperator, HessianOperator

__all__ = [
    "BACKENDS",
    "CurvatureOperator",
    "HessianOperator",
    "LanczosResult",
    "LossFunction",
    "functional_loss",
    "gradient",
    "hvp",
    "lanczos",
]
