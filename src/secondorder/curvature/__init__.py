"""How curvature is obtained: products, operators, diagonals, spectra."""

from secondorder.curvature.attention import double_differentiable_attention
from secondorder.curvature.bicomplex import Bicomplex
from secondorder.curvature.checks import TaylorTestResult, gradient_test, hvp_test
from secondorder.curvature.complex_step import (
    complex_step_directional,
    complex_step_hvp,
    default_step,
)
from secondorder.curvature.dataset import DatasetHessianOperator, batch_mean
from secondorder.curvature.dense import hessian
from secondorder.curvature.diagonal import hessian_diagonal, spatially_averaged
from secondorder.curvature.diagonal_mass import (
    diagonal_mass,
    ols_diagonal_mass,
    wigner_diagonal_mass,
)
from secondorder.curvature.functional import LossFunction, functional_loss
from secondorder.curvature.ggn import GGNOperator, ggnvp
from secondorder.curvature.hvp import BACKENDS, gradient, hvp
from secondorder.curvature.lanczos import LanczosResult, lanczos
from secondorder.curvature.layer_hessians import layer_hessians
from secondorder.curvature.operators import CurvatureOperator, HessianOperator
from secondorder.curvature.spectrum import (
    EigenResult,
    SpectralDensity,
    TraceEstimate,
    eigenvalues,
    extreme_eigenpairs,
    spectral_density,
    trace,
)
from secondorder.curvature.vhv import vhv

__all__ = [
    "BACKENDS",
    "Bicomplex",
    "CurvatureOperator",
    "DatasetHessianOperator",
    "EigenResult",
    "GGNOperator",
    "HessianOperator",
    "LanczosResult",
    "LossFunction",
    "SpectralDensity",
    "TaylorTestResult",
    "TraceEstimate",
    "batch_mean",
    "complex_step_directional",
    "complex_step_hvp",
    "default_step",
    "diagonal_mass",
    "double_differentiable_attention",
    "eigenvalues",
    "extreme_eigenpairs",
    "functional_loss",
    "ggnvp",
    "gradient",
    "gradient_test",
    "hessian",
    "hessian_diagonal",
    "hvp",
    "hvp_test",
    "lanczos",
    "layer_hessians",
    "ols_diagonal_mass",
    "spatially_averaged",
    "spectral_density",
    "trace",
    "vhv",
    "wigner_diagonal_mass",
]
