"""Benchmark problems: data splits, a seeded model, a per-sample loss and metrics.

A :class:`Problem` bundles everything the runner needs (see the bench contract):
train/validation/test :class:`Split` s, ``make_model(seed)``, a per-sample ``loss``, an
optional ``accuracy``, and a default batch size and epoch budget. :func:`get_problem`
builds one by name; :func:`list_problems` lists the names; :data:`EMBEDDED` is the default
suite, which needs no files (scikit-learn's bundled digits and breast-cancer sets, a
generated 2-D set and analytic objectives).

Conventions:

- Inputs are float32, first dimension = samples. Images are scaled to [0, 1] (uint8 / 255;
  digits: value / 16); tabular features are standardized with the *training* split's mean
  and standard deviation. Classification targets are int64 class indices; reconstruction
  targets are the flattened float32 inputs.
- Splits are deterministic functions of ``seed`` (a fixed NumPy PCG64 permutation),
  stratified by class for classification, disjoint, and cover every sample.
- ``loss(outputs, targets)`` returns one loss per sample (``reduction="none"``); the
  objective is their mean. Regularization lives in the model: an
  :class:`~secondorder.bench.models.L2Penalized` model appends ``lambda/2 ||W||^2`` as a last
  output column, which the loss adds to each sample's loss (so the mean is the regularized
  objective) and the accuracy ignores.
- Deterministic problems (Rosenbrock, quadratics) have one dummy sample: inputs
  ``zeros(1, 1)``, targets ``zeros(1)``; the model holds the variable and returns the
  objective value per sample, and ``loss`` returns its outputs unchanged.

File-based problems (MNIST, Fashion-MNIST, KMNIST, CIFAR-10, LIBSVM) read local files
under ``data_dir``; the expected layout is documented in :mod:`secondorder.bench.data`.
Nothing is ever downloaded: a missing or malformed file raises
:class:`~secondorder.errors.DataFormatError` naming the file and its expected format.

Modules: :mod:`~secondorder.bench.problems.core` (splits, the :class:`Problem` record, the
registry), :mod:`~secondorder.bench.problems.losses` (per-sample losses and metrics),
:mod:`~secondorder.bench.problems.embedded` (the default suite) and
:mod:`~secondorder.bench.problems.files` (the file-based problems). Everything is
re-exported here: ``from secondorder.bench.problems import get_problem``.
"""

from __future__ import annotations

from secondorder.bench.problems.core import (
    Problem,
    ProblemFactory,
    Split,
    get_problem,
    list_problems,
    penalized_model,
    register,
    register_embedded,
    seeded_factory,
    split_indices,
    split_sizes,
    splits_from_arrays,
    standardize,
)
from secondorder.bench.problems.embedded import (
    CANCER_L2,
    CANCER_SIZES,
    DIGITS_SIZES,
    EMBEDDED,
    EMBEDDED_PROBLEMS,
    LOGISTIC2D_MEANS,
    LOGISTIC2D_SIZES,
    QUADRATIC_EIGENVALUES,
    QUADRATIC_MINIMIZER,
    QUADRATIC_ROTATION,
    ROSENBROCK_START,
    logistic2d_arrays,
    quadratic_hessian,
)
from secondorder.bench.problems.files import (
    FILE_PROBLEMS,
    LIBSVM_FRACTIONS,
    LIBSVM_L2,
    TEST_ONLY_FRACTIONS,
    VALIDATION_FRACTION,
    VEITCH_L2,
    image_splits,
)
from secondorder.bench.problems.losses import (
    Penalized,
    binary_accuracy,
    binary_logistic,
    cross_entropy,
    multiclass_accuracy,
    objective_value,
    reconstruction_mse,
    squared_hinge,
)

__all__ = [
    "Split",
    "Problem",
    "EMBEDDED",
    "list_problems",
    "get_problem",
    "register",
    "split_indices",
    "standardize",
    "cross_entropy",
    "binary_logistic",
    "squared_hinge",
    "reconstruction_mse",
    "objective_value",
    "multiclass_accuracy",
    "binary_accuracy",
    "Penalized",
    "ProblemFactory",
    "register_embedded",
    "split_sizes",
    "splits_from_arrays",
    "seeded_factory",
    "penalized_model",
    "EMBEDDED_PROBLEMS",
    "DIGITS_SIZES",
    "CANCER_SIZES",
    "CANCER_L2",
    "LOGISTIC2D_SIZES",
    "LOGISTIC2D_MEANS",
    "logistic2d_arrays",
    "ROSENBROCK_START",
    "QUADRATIC_EIGENVALUES",
    "QUADRATIC_ROTATION",
    "QUADRATIC_MINIMIZER",
    "quadratic_hessian",
    "FILE_PROBLEMS",
    "VALIDATION_FRACTION",
    "TEST_ONLY_FRACTIONS",
    "image_splits",
    "VEITCH_L2",
    "LIBSVM_L2",
    "LIBSVM_FRACTIONS",
]
