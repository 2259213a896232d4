"""The embedded problems: the default suite, which needs no files.

scikit-learn's bundled digits (8 x 8, 1,797 samples) and breast-cancer (569 x 30) sets, a
generated 2-D two-class set and analytic objectives (Rosenbrock, 2-D quadratics). Each
problem is one row of :data:`EMBEDDED_PROBLEMS`, in the same table form as the file-based
problems' :data:`~secondorder.bench.problems.files.FILE_PROBLEMS`: where the data comes
from, the model, the loss and metric, an optional L2 weight, the batch size and the epoch
budget. :data:`EMBEDDED` lists the names in suite order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from secondorder.bench import models as zoo
from secondorder.bench.problems.core import (
    Problem,
    Split,
    penalized_model,
    register_embedded,
    seeded_factory,
    split_indices,
    splits_from_arrays,
    standardize,
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
    "EMBEDDED",
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
]

Splits = tuple[Split, Split, Split]


# --------------------------------------------------------------------------------------
# scikit-learn digits (8 x 8, 1,797 samples)
# --------------------------------------------------------------------------------------

DIGITS_SIZES = (1257, 270, 270)  # 70 / 15 / 15 %, stratified


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8) in [0, 1]
    return images, data.target.astype(np.int64)


def _digits_splits(seed: int) -> Splits:
    """Images ``(n, 1, 8, 8)`` in [0, 1] and int64 class labels."""
    images, labels = _digits_arrays()
    return splits_from_arrays(
        images, labels, split_indices(len(labels), DIGITS_SIZES, seed=seed, labels=labels)
    )


def _digits_reconstruction_splits(seed: int) -> Splits:
    """The same images, with the flattened images as targets."""
    images, labels = _digits_arrays()
    flat = images.reshape(len(images), -1)
    index_sets = split_indices(len(labels), DIGITS_SIZES, seed=seed, labels=labels)
    return splits_from_arrays(images, flat, index_sets)


# --------------------------------------------------------------------------------------
# Breast cancer (569 x 30), standardized with train statistics
# --------------------------------------------------------------------------------------

CANCER_SIZES = (341, 114, 114)  # 60 / 20 / 20 %, stratified
CANCER_L2 = 1e-2


@functools.cache
def _cancer_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data.astype(np.float64), data.target.astype(np.int64)


def _cancer_splits(seed: int) -> Splits:
    """Features standardized with the train split's statistics, int64 labels in {0, 1}."""
    features, labels = _cancer_arrays()
    idx = split_indices(len(labels), CANCER_SIZES, seed=seed, labels=labels)
    parts = standardize(*(features[i] for i in idx))
    return tuple(  # type: ignore[return-value]
        Split(torch.from_numpy(x), torch.from_numpy(labels[i]))
        for x, i in zip(parts, idx, strict=True)
    )


# --------------------------------------------------------------------------------------
# [Veitch]'s two-class 2-D logistic regression data
# --------------------------------------------------------------------------------------

LOGISTIC2D_SIZES = (800, 100, 100)
LOGISTIC2D_MEANS = ((-0.7, -0.7), (0.7, 0.7))


def logistic2d_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[Veitch] sec. 3.1's hand-made set: 1,000 labelled points in the plane.

    The seed does not say how its points were made; we draw 500 points per class from
    unit-variance Gaussians centred at (-0.7, -0.7) and (0.7, 0.7) (NumPy PCG64 with
    ``seed``), so the Bayes accuracy is Phi(0.99) = 0.84, the overlap that [Veitch]'s
    Tables 1-2 report (test accuracy 0.83). Returns float32 points (1000, 2), int64 labels.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    half = sum(LOGISTIC2D_SIZES) // 2
    points = np.concatenate([rng.normal(size=(half, 2)) + np.asarray(m) for m in LOGISTIC2D_MEANS])
    labels = np.repeat(np.arange(2, dtype=np.int64), half)
    return points.astype(np.float32), labels


def _logistic2d_splits(seed: int) -> Splits:
    points, labels = logistic2d_arrays(seed)
    idx = split_indices(len(labels), LOGISTIC2D_SIZES, seed=seed, labels=labels)
    return splits_from_arrays(points, labels, idx)


# --------------------------------------------------------------------------------------
# Analytic objectives: one dummy sample, the model holds the variable
# --------------------------------------------------------------------------------------


def _dummy_splits(_seed: int) -> Splits:
    return tuple(Split(torch.zeros(1, 1), torch.zeros(1)) for _ in range(3))  # type: ignore[return-value]


ROSENBROCK_START = (-1.2, 1.0)


def _rosenbrock_model(seed: int) -> nn.Module:
    """Seed 0 starts at the classic (-1.2, 1); seed s > 0 adds U[-0.5, 0.5]^2 to it."""

    def build() -> nn.Module:
        start = torch.tensor(ROSENBROCK_START)
        if seed > 0:
            start = start + torch.rand(2) - 0.5
        return zoo.Rosenbrock(start.tolist(), a=1.0, b=100.0)

    return zoo.seeded(build, seed)


QUADRATIC_EIGENVALUES = (1e-2, 1e2)  # condition number 1e4 ([AdaptiveNorms] Fig. 1, center)
QUADRATIC_ROTATION = math.pi / 6
QUADRATIC_MINIMIZER = (1.0, 1.0)


def quadratic_hessian(rotated: bool) -> Tensor:
    """``diag(1e-2, 1e2)``, or ``R diag(1e-2, 1e2) R^T`` with ``R`` a 30 degree rotation."""
    h = torch.diag(torch.tensor(QUADRATIC_EIGENVALUES, dtype=torch.float64))
    if rotated:
        c, s = math.cos(QUADRATIC_ROTATION), math.sin(QUADRATIC_ROTATION)
        r = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        h = r @ h @ r.T
        h = 0.5 * (h + h.T)
    return h


def _quadratic_model(rotated: bool, seed: int) -> nn.Module:
    """Start drawn uniformly from [-5, 5]^2 by ``seed`` ([AdaptiveNorms] Fig. 1 uses random
       starts)."""

    def build() -> nn.Module:
        start = torch.rand(2, dtype=torch.float64) * 10.0 - 5.0
        return zoo.Quadratic(quadratic_hessian(rotated), torch.tensor(QUADRATIC_MINIMIZER), start)

    return zoo.seeded(build, seed)


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EmbeddedSpec:
    """How to build one embedded problem (the form of the file-based ``_FileSpec``).

    Attributes:
        data: ``seed -> (train, validation, test)`` splits.
        model: network factory, built under the model seed; ``None`` for an analytic
            objective, which gives ``objective_model`` instead.
        description: one line citing where the problem comes from.
        batch_size: default mini-batch size; ``None`` for a full-batch problem (the whole
            training split).
        epochs: default epoch budget.
        tags: labels after ``"embedded"``.
        loss: per-sample loss of the model's output (without the penalty).
        accuracy: metric, or ``None`` if the problem is not a classification.
        l2: weight of an :class:`~secondorder.bench.models.L2Penalized` penalty (0: none);
            the loss then adds it and the metric ignores it.
        objective_model: ``seed -> model`` holding the variable of an analytic objective
            (its start depends on the seed).
    """

    data: Callable[[int], Splits]
    model: Callable[[], nn.Module] | None
    description: str
    batch_size: int | None
    epochs: int
    tags: tuple[str, ...]
    loss: Callable[[Tensor, Tensor], Tensor] = cross_entropy
    accuracy: Callable[[Tensor, Tensor], Tensor] | None = multiclass_accuracy
    l2: float = 0.0
    objective_model: Callable[[int], nn.Module] | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.objective_model is None):
            raise ValueError("Invalid embedded problem: give exactly one of model and "
                             "objective_model")


def _cancer(loss: Callable[[Tensor, Tensor], Tensor], what: str) -> _EmbeddedSpec:
    return _EmbeddedSpec(
        _cancer_splits,
        functools.partial(zoo.LogisticRegression, 30),
        f"sklearn breast cancer (standardized), {what} + L2 {CANCER_L2:g} ([Shen])",
        None,
        50,
        ("classification", "convex", "seed002"),
        loss=loss,
        accuracy=binary_accuracy,
        l2=CANCER_L2,
    )


def _quadratic(rotated: bool) -> _EmbeddedSpec:
    shape = "rotated 30 deg" if rotated else "axis-aligned"
    return _EmbeddedSpec(
        _dummy_splits,
        None,
        f"2-D quadratic, {shape}, kappa 1e4, minimizer (1, 1) ([AdaptiveNorms] Fig. 1)",
        None,
        200,
        ("deterministic", "convex", "seed001"),
        loss=objective_value,
        accuracy=None,
        objective_model=functools.partial(_quadratic_model, rotated),
    )


EMBEDDED_PROBLEMS: dict[str, _EmbeddedSpec] = {
    "digits_softmax": _EmbeddedSpec(
        _digits_splits,
        functools.partial(zoo.SoftmaxRegression, 64, 10),
        "sklearn digits, softmax regression + L2 1e-3 ([Shen] multi-class LR)",
        128,
        5,
        ("classification", "convex", "seed002"),
        l2=1e-3,
    ),
    "digits_mlp": _EmbeddedSpec(
        _digits_splits,
        functools.partial(zoo.MLP, (64, 32, 10), "sigmoid"),
        "sklearn digits, MLP 64-32-10 with sigmoid ([Veitch] eqs. 19-22)",
        128,
        5,
        ("classification", "nonconvex", "seed003"),
    ),
    "digits_cnn": _EmbeddedSpec(
        _digits_splits,
        zoo.DigitsCNN,
        "sklearn digits, small tanh CNN 2 conv + 1 linear ([Filippova]-style CNN)",
        128,
        3,
        ("classification", "nonconvex", "cnn", "seed000"),
    ),
    "digits_autoencoder": _EmbeddedSpec(
        _digits_reconstruction_splits,
        functools.partial(zoo.Autoencoder, (64, 32, 8)),
        "sklearn digits, sigmoid autoencoder 64-32-8-32-64, MSE ([Shen] autoencoder)",
        128,
        5,
        ("reconstruction", "nonconvex", "seed002"),
        loss=reconstruction_mse,
        accuracy=None,
    ),
    "cancer_logistic": _cancer(binary_logistic, "logistic regression"),
    "cancer_svm": _cancer(squared_hinge, "linear SVM, squared hinge"),
    "logistic2d": _EmbeddedSpec(
        _logistic2d_splits,
        functools.partial(zoo.LogisticRegression, 2),
        "[Veitch] sec. 3.1 2-D two-class logistic regression, 800/100/100 points",
        100,
        5,
        ("classification", "convex", "seed003"),
        loss=binary_logistic,
        accuracy=binary_accuracy,
    ),
    "rosenbrock": _EmbeddedSpec(
        _dummy_splits,
        None,
        "Rosenbrock (1-x)^2 + 100 (y-x^2)^2 from (-1.2, 1) ([Veitch] eq. 6)",
        None,
        200,
        ("deterministic", "nonconvex", "seed003"),
        loss=objective_value,
        accuracy=None,
        objective_model=_rosenbrock_model,
    ),
    "quadratic_axis": _quadratic(False),
    "quadratic_rotated": _quadratic(True),
}

EMBEDDED: tuple[str, ...] = tuple(EMBEDDED_PROBLEMS)


def _embedded_problem(name: str, spec: _EmbeddedSpec, seed: int) -> Problem:
    train, val, test = spec.data(seed)
    loss, accuracy = spec.loss, spec.accuracy
    if spec.objective_model is not None:
        make_model = spec.objective_model
    elif spec.l2 > 0:
        make_model = seeded_factory(functools.partial(penalized_model, spec.model, spec.l2))
    else:
        make_model = seeded_factory(spec.model)
    if spec.l2 > 0:
        loss = Penalized(loss, add_penalty=True)
        accuracy = None if accuracy is None else Penalized(accuracy, add_penalty=False)
    full_batch = spec.batch_size is None
    return Problem(
        name=name,
        description=spec.description,
        train=train,
        validation=val,
        test=test,
        make_model=make_model,
        loss=loss,
        accuracy=accuracy,
        batch_size=len(train) if full_batch else spec.batch_size,
        full_batch=full_batch,
        epochs=spec.epochs,
        tags=("embedded", *spec.tags),
    )


for _name, _spec in EMBEDDED_PROBLEMS.items():
    register_embedded(_name, functools.partial(_embedded_problem, _name, _spec))
