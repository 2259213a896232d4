"""secondorder: second-order optimization for PyTorch.

- :mod:`secondorder.curvature`: Hessian-vector products (autograd, forward-mode,
  complex-step, finite differences), curvature operators, diagonals, spectra.
- :mod:`secondorder.optim`: drop-in ``torch.optim`` optimizers that use curvature, with
  shared line searches and Krylov solvers.
- :mod:`secondorder.bench`: problems, runner, results database and reports behind the
  ``secondorder`` command.
"""

from secondorder import curvature, optim

__version__ = "0.1.0"

__all__ = ["curvature", "optim", "__version__"]
