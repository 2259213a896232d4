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
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secondorder.bench import data
from secondorder.bench import models as zoo
from secondorder.errors import DataFormatError

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
]


# --------------------------------------------------------------------------------------
# Data containers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One split of a data set: inputs and targets with matching first dimension.

    Raises:
        ValueError: if the first dimensions differ or ``inputs`` is not floating point.
    """

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise ValueError(
                f"Invalid Split: {self.inputs.shape[0]} inputs but {self.targets.shape[0]} targets"
            )
        if not self.inputs.is_floating_point():
            raise ValueError(
                f"Invalid Split: inputs must be floating point, got {self.inputs.dtype}"
            )

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """The same split with both tensors on ``device``."""
        return Split(self.inputs.to(device), self.targets.to(device))


@dataclass
class Problem:
    """A benchmark problem (the bench contract's fixed interface).

    Attributes:
        name: registry name, e.g. ``"digits_mlp"``.
        description: one line citing the seed or protocol the problem comes from.
        train, validation, test: the data splits.
        make_model: ``seed -> freshly initialized float32 model`` (deterministic in seed).
        loss: ``(outputs, targets) -> per-sample losses`` (1-D, ``reduction="none"``),
            including any regularization.
        accuracy: ``(outputs, targets) -> 0-dim fraction correct``; ``None`` if the problem
            is not a classification.
        batch_size: default mini-batch size.
        full_batch: whether the problem is meant to be optimized on the whole training set.
        regularization: always 0: regularization is inside ``loss``/the model.
        epochs: default epoch budget for ``secondorder bench``.
        tags: labels such as ``"embedded"``, ``"classification"``, ``"convex"``, ``"seed003"``.
        data_files: the files the data was read from (empty for embedded problems); their
            :func:`~secondorder.bench.data.files_fingerprint` is part of each run's key.
    """

    name: str
    description: str
    train: Split
    validation: Split
    test: Split
    make_model: Callable[[int], nn.Module]
    loss: Callable[[Tensor, Tensor], Tensor]
    accuracy: Callable[[Tensor, Tensor], Tensor] | None
    batch_size: int
    full_batch: bool = False
    regularization: float = 0.0
    epochs: int = 10
    tags: tuple[str, ...] = ()
    data_files: tuple[Path, ...] = ()


# --------------------------------------------------------------------------------------
# Losses and metrics (module-level callables, so problems pickle)
# --------------------------------------------------------------------------------------


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample softmax cross-entropy of logits ``(n, K)`` (seed 003 eq. 21)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def binary_logistic(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample logistic loss of logits ``(n,)`` and labels in {0, 1} (seed 003 eq. 15)."""
    return F.binary_cross_entropy_with_logits(
        outputs.reshape(-1), targets.to(outputs.dtype), reduction="none"
    )


def squared_hinge(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample squared hinge ``max(0, 1 - s f)^2``, ``s = 2 y - 1`` (seed 002 "Hinge-2")."""
    signs = 2.0 * targets.to(outputs.dtype) - 1.0
    return torch.clamp(1.0 - signs * outputs.reshape(-1), min=0.0) ** 2


def reconstruction_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean squared reconstruction error over the flattened features."""
    diff = outputs.reshape(outputs.shape[0], -1) - targets.reshape(targets.shape[0], -1)
    return (diff * diff).mean(dim=1)


def objective_value(outputs: Tensor, targets: Tensor) -> Tensor:
    """Loss of a deterministic problem: the model already returns the objective per sample."""
    return outputs.reshape(-1)


def multiclass_accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Fraction of samples whose largest logit is the target class (seed 003 eq. 30)."""
    return (outputs.argmax(dim=1) == targets).float().mean()


def binary_accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Fraction of samples with ``(logit > 0) == label``."""
    return ((outputs.reshape(-1) > 0).long() == targets).float().mean()


class Penalized:
    """Adapt a loss or metric to the output of :class:`~secondorder.bench.models.L2Penalized`.

    As a loss (``add_penalty=True``) it returns ``base(outputs) + penalty`` per sample; as
    a metric it evaluates ``base`` on the outputs without the penalty column.
    """

    def __init__(self, base: Callable[[Tensor, Tensor], Tensor], *, add_penalty: bool) -> None:
        self.base = base
        self.add_penalty = add_penalty

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        out, penalty = zoo.split_penalty(outputs)
        value = self.base(out, targets)
        return value + penalty if self.add_penalty else value

    def __repr__(self) -> str:
        kind = "loss" if self.add_penalty else "metric"
        return f"Penalized({self.base.__name__}, {kind})"


# --------------------------------------------------------------------------------------
# Splitting and standardization
# --------------------------------------------------------------------------------------


def split_indices(
    n: int, sizes: Sequence[int], *, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """Deterministic disjoint index sets of the given sizes covering ``range(n)``.

    With ``labels`` the split is stratified: each class's samples are shuffled and spread
    evenly over ``[0, 1)``, then all samples are ordered by that position (a random
    tie-break) and cut into consecutive blocks, so every block holds each class in
    proportion (up to one sample per class) and the block sizes are exact.

    Args:
        n: number of samples.
        sizes: block sizes; must sum to ``n``.
        seed: seed of the NumPy PCG64 generator.
        labels: optional class labels of length ``n``.

    Returns:
        One sorted int64 index array per block.

    Raises:
        ValueError: if the sizes are negative or do not sum to ``n``, or ``labels`` has the
            wrong length.
    """
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes) or sum(sizes) != n:
        raise ValueError(f"Invalid split sizes {sizes}: they must be >= 0 and sum to n={n}")
    rng = np.random.Generator(np.random.PCG64(seed))
    if labels is None:
        order = rng.permutation(n)
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"Invalid labels: shape {labels.shape}, expected ({n},)")
        position = np.empty(n)
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            members = members[rng.permutation(members.size)]
            position[members] = (np.arange(members.size) + rng.random()) / members.size
        order = np.lexsort((rng.random(n), position))
    bounds = np.cumsum([0, *sizes])
    return tuple(
        np.sort(order[a:b]).astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    )


def split_sizes(n: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Block sizes for ``fractions`` of ``n`` samples: the last block takes the remainder."""
    head = [int(math.floor(f * n + 0.5)) for f in fractions[:-1]]
    return (*head, n - sum(head))


def standardize(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Standardize feature columns with the mean and standard deviation of ``train``.

    Columns with zero training variance are only centered. Returns float32 arrays in the
    order given.
    """
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return tuple(((a - mean) / std).astype(np.float32) for a in (train, *others))


def _splits(
    inputs: np.ndarray, targets: np.ndarray, index_sets: Sequence[np.ndarray]
) -> tuple[Split, Split, Split]:
    return tuple(  # type: ignore[return-value]
        Split(torch.from_numpy(np.ascontiguousarray(inputs[i])), torch.from_numpy(targets[i]))
        for i in index_sets
    )


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

ProblemFactory = Callable[[Path | None, int], Problem]
_REGISTRY: dict[str, ProblemFactory] = {}


def register(name: str, factory: ProblemFactory) -> None:
    """Register ``factory(data_dir, seed) -> Problem`` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    if name in _REGISTRY:
        raise ValueError(f"problem {name!r} is already registered")
    _REGISTRY[name] = factory


def list_problems() -> list[str]:
    """Registered problem names: the embedded suite first, then the file-based ones."""
    rest = sorted(n for n in _REGISTRY if n not in EMBEDDED)
    return [n for n in EMBEDDED if n in _REGISTRY] + rest


def get_problem(name: str, *, data_dir: str | Path | None = None, seed: int = 0) -> Problem:
    """Build the problem ``name``.

    Args:
        name: a name from :func:`list_problems`.
        data_dir: root folder of the local data files (file-based problems only; see
            :mod:`secondorder.bench.data` for the layout). Embedded problems ignore it.
        seed: seed of the split permutation (and of the generated 2-D data set); model
            initialization is seeded separately by ``Problem.make_model(seed)``.

    Raises:
        ValueError: if ``name`` is unknown or ``seed`` is not a non-negative int.
        DataFormatError: if a file-based problem's files are missing or malformed.
    """
    if name not in _REGISTRY:
        from secondorder.bench.plugins import find_problem  # declared or an entry point

        find_problem(name)
    if name not in _REGISTRY:
        raise ValueError(f"Unknown problem {name!r}; available: {', '.join(list_problems())}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r}; expected a non-negative int")
    root = None if data_dir is None else Path(data_dir)
    return _REGISTRY[name](root, seed)


def _embedded(name: str) -> Callable[[Callable[[int], Problem]], Callable[[int], Problem]]:
    def wrap(build: Callable[[int], Problem]) -> Callable[[int], Problem]:
        register(name, lambda _data_dir, seed: build(seed))
        return build

    return wrap


# --------------------------------------------------------------------------------------
# Embedded problems: scikit-learn digits (8 x 8, 1,797 samples)
# --------------------------------------------------------------------------------------

DIGITS_SIZES = (1257, 270, 270)  # 70 / 15 / 15 %, stratified


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8) in [0, 1]
    return images, data.target.astype(np.int64)


def _digits_splits(seed: int) -> tuple[Split, Split, Split]:
    images, labels = _digits_arrays()
    return _splits(
        images, labels, split_indices(len(labels), DIGITS_SIZES, seed=seed, labels=labels)
    )


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    return functools.partial(zoo.seeded, factory)


@_embedded("digits_softmax")
def _digits_softmax(seed: int) -> Problem:
    train, val, test = _digits_splits(seed)
    return Problem(
        name="digits_softmax",
        description="sklearn digits, softmax regression + L2 1e-3 (seed 002 multi-class LR)",
        train=train,
        validation=val,
        test=test,
        make_model=_seeded(lambda: zoo.L2Penalized(zoo.SoftmaxRegression(64, 10), 1e-3)),
        loss=Penalized(cross_entropy, add_penalty=True),
        accuracy=Penalized(multiclass_accuracy, add_penalty=False),
        batch_size=128,
        epochs=5,
        tags=("embedded", "classification", "convex", "seed002"),
    )


@_embedded("digits_mlp")
def _digits_mlp(seed: int) -> Problem:
    train, val, test = _digits_splits(seed)
    return Problem(
        name="digits_mlp",
        description="sklearn digits, MLP 64-32-10 with sigmoid (seed 003 eqs. 19-22)",
        train=train,
        validation=val,
        test=test,
        make_model=_seeded(lambda: zoo.MLP((64, 32, 10), "sigmoid")),
        loss=cross_entropy,
        accuracy=multiclass_accuracy,
        batch_size=128,
        epochs=5,
        tags=("embedded", "classification", "nonconvex", "seed003"),
    )


@_embedded("digits_cnn")
def _digits_cnn(seed: int) -> Problem:
    train, val, test = _digits_splits(seed)
    return Problem(
        name="digits_cnn",
        description="sklearn digits, small tanh CNN 2 conv + 1 linear (seed 000-style CNN)",
        train=train,
        validation=val,
        test=test,
        make_model=_seeded(zoo.DigitsCNN),
        loss=cross_entropy,
        accuracy=multiclass_accuracy,
        batch_size=128,
        epochs=3,
        tags=("embedded", "classification", "nonconvex", "cnn", "seed000"),
    )


@_embedded("digits_autoencoder")
def _digits_autoencoder(seed: int) -> Problem:
    images, labels = _digits_arrays()
    flat = images.reshape(len(images), -1)
    index_sets = split_indices(len(labels), DIGITS_SIZES, seed=seed, labels=labels)
    train, val, test = _splits(images, flat, index_sets)
    return Problem(
        name="digits_autoencoder",
        description="sklearn digits, sigmoid autoencoder 64-32-8-32-64, MSE (seed 002 autoencoder)",
        train=train,
        validation=val,
        test=test,
        make_model=_seeded(lambda: zoo.Autoencoder((64, 32, 8))),
        loss=reconstruction_mse,
        accuracy=None,
        batch_size=128,
        epochs=5,
        tags=("embedded", "reconstruction", "nonconvex", "seed002"),
    )


# --------------------------------------------------------------------------------------
# Embedded problems: breast cancer (569 x 30), standardized with train statistics
# --------------------------------------------------------------------------------------

CANCER_SIZES = (341, 114, 114)  # 60 / 20 / 20 %, stratified
CANCER_L2 = 1e-2


@functools.cache
def _cancer_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data.astype(np.float64), data.target.astype(np.int64)


def _cancer_splits(seed: int) -> tuple[Split, Split, Split]:
    features, labels = _cancer_arrays()
    idx = split_indices(len(labels), CANCER_SIZES, seed=seed, labels=labels)
    parts = standardize(*(features[i] for i in idx))
    return tuple(  # type: ignore[return-value]
        Split(torch.from_numpy(x), torch.from_numpy(labels[i]))
        for x, i in zip(parts, idx, strict=True)
    )


def _cancer_problem(
    name: str, seed: int, base: Callable[[Tensor, Tensor], Tensor], what: str
) -> Problem:
    train, val, test = _cancer_splits(seed)
    return Problem(
        name=name,
        description=f"sklearn breast cancer (standardized), {what} + L2 {CANCER_L2:g} (seed 002)",
        train=train,
        validation=val,
        test=test,
        make_model=_seeded(lambda: zoo.L2Penalized(zoo.LogisticRegression(30), CANCER_L2)),
        loss=Penalized(base, add_penalty=True),
        accuracy=Penalized(binary_accuracy, add_penalty=False),
        batch_size=len(train),
        full_batch=True,
        epochs=50,
        tags=("embedded", "classification", "convex", "seed002"),
    )


@_embedded("cancer_logistic")
def _cancer_logistic(seed: int) -> Problem:
    return _cancer_problem("cancer_logistic", seed, binary_logistic, "logistic regression")


@_embedded("cancer_svm")
def _cancer_svm(seed: int) -> Problem:
    return _cancer_problem("cancer_svm", seed, squared_hinge, "linear SVM, squared hinge")


# --------------------------------------------------------------------------------------
# Embedded problem: seed 003's two-class 2-D logistic regression data
# --------------------------------------------------------------------------------------

LOGISTIC2D_SIZES = (800, 100, 100)
LOGISTIC2D_MEANS = ((-0.7, -0.7), (0.7, 0.7))


def logistic2d_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed 003 sec. 3.1's hand-made set: 1,000 labelled points in the plane.

    The seed does not say how its points were made; we draw 500 points per class from
    unit-variance Gaussians centred at (-0.7, -0.7) and (0.7, 0.7) (NumPy PCG64 with
    ``seed``), so the Bayes accuracy is Phi(0.99) = 0.84, the overlap that seed 003's
    Tables 1-2 report (test accuracy 0.83). Returns float32 points (1000, 2), int64 labels.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    half = sum(LOGISTIC2D_SIZES) // 2
    points = np.concatenate([rng.normal(size=(half, 2)) + np.asarray(m) for m in LOGISTIC2D_MEANS])
    labels = np.repeat(np.arange(2, dtype=np.int64), half)
    return points.astype(np.float32), labels


@_embedded("logistic2d")
def _logistic2d(seed: int) -> Problem:
    points, labels = logistic2d_arrays(seed)
    idx = split_indices(len(labels), LOGISTIC2D_SIZES, seed=seed, labels=labels)
    train, val, test = _splits(points, labels, idx)
    return Problem(
        name="logistic2d",
        description="seed 003 sec. 3.1 2-D two-class logistic regression, 800/100/100 points",
        train=train,
        validation=val,
        test=test,
        make_model=_seeded(lambda: zoo.LogisticRegression(2)),
        loss=binary_logistic,
        accuracy=binary_accuracy,
        batch_size=100,
        epochs=5,
        tags=("embedded", "classification", "convex", "seed003"),
    )


# --------------------------------------------------------------------------------------
# Embedded problems: analytic objectives
# --------------------------------------------------------------------------------------


def _dummy_splits() -> tuple[Split, Split, Split]:
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


@_embedded("rosenbrock")
def _rosenbrock(seed: int) -> Problem:
    train, val, test = _dummy_splits()
    return Problem(
        name="rosenbrock",
        description="Rosenbrock (1-x)^2 + 100 (y-x^2)^2 from (-1.2, 1) (seed 003 eq. 6)",
        train=train,
        validation=val,
        test=test,
        make_model=_rosenbrock_model,
        loss=objective_value,
        accuracy=None,
        batch_size=1,
        full_batch=True,
        epochs=200,
        tags=("embedded", "deterministic", "nonconvex", "seed003"),
    )


QUADRATIC_EIGENVALUES = (1e-2, 1e2)  # condition number 1e4 (seed 001 Fig. 1, center)
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
    """Start drawn uniformly from [-5, 5]^2 by ``seed`` (seed 001 Fig. 1 uses random starts)."""

    def build() -> nn.Module:
        start = torch.rand(2, dtype=torch.float64) * 10.0 - 5.0
        return zoo.Quadratic(quadratic_hessian(rotated), torch.tensor(QUADRATIC_MINIMIZER), start)

    return zoo.seeded(build, seed)


def _quadratic_problem(rotated: bool) -> Problem:
    name = "quadratic_rotated" if rotated else "quadratic_axis"
    shape = "rotated 30 deg" if rotated else "axis-aligned"
    train, val, test = _dummy_splits()
    return Problem(
        name=name,
        description=f"2-D quadratic, {shape}, kappa 1e4, minimizer (1, 1) (seed 001 Fig. 1)",
        train=train,
        validation=val,
        test=test,
        make_model=functools.partial(_quadratic_model, rotated),
        loss=objective_value,
        accuracy=None,
        batch_size=1,
        full_batch=True,
        epochs=200,
        tags=("embedded", "deterministic", "convex", "seed001"),
    )


register("quadratic_axis", lambda _d, _s: _quadratic_problem(False))
register("quadratic_rotated", lambda _d, _s: _quadratic_problem(True))

EMBEDDED: tuple[str, ...] = (
    "digits_softmax",
    "digits_mlp",
    "digits_cnn",
    "digits_autoencoder",
    "cancer_logistic",
    "cancer_svm",
    "logistic2d",
    "rosenbrock",
    "quadratic_axis",
    "quadratic_rotated",
)


# --------------------------------------------------------------------------------------
# File-based problems (MNIST, Fashion-MNIST, KMNIST, CIFAR-10, LIBSVM)
# --------------------------------------------------------------------------------------

VALIDATION_FRACTION = 0.1  # of the training file, when the set has one
TEST_ONLY_FRACTIONS = (0.7, 0.1, 0.2)  # train / validation / test of a test-only set


def image_splits(image_set: data.ImageSet, seed: int) -> tuple[Split, Split, Split]:
    """Float splits of an image set: pixels scaled to [0, 1], labels int64.

    With training files, the training file is split (stratified) into train and
    validation (10 %) and the test file is the test split; a test-only set is split 70 /
    10 / 20 % (stratified). CIFAR-10 is further standardized per channel with the train
    split's mean and standard deviation.
    """
    if image_set.has_train:
        images, labels = image_set.train_images, image_set.train_labels
        n = len(labels)
        train_idx, val_idx = split_indices(
            n,
            split_sizes(n, (1 - VALIDATION_FRACTION, VALIDATION_FRACTION)),
            seed=seed,
            labels=labels,
        )
        parts = [
            (images[train_idx], labels[train_idx]),
            (images[val_idx], labels[val_idx]),
            (image_set.test_images, image_set.test_labels),
        ]
    else:
        images, labels = image_set.test_images, image_set.test_labels
        n = len(labels)
        idx = split_indices(n, split_sizes(n, TEST_ONLY_FRACTIONS), seed=seed, labels=labels)
        parts = [(images[i], labels[i]) for i in idx]
    floats = [data.images_to_float(x) for x, _ in parts]
    if floats[0].shape[1] == 3:  # colour: per-channel standardization with train statistics
        mean = floats[0].mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
        std = floats[0].std(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        mean, std = mean.astype(np.float32), std.astype(np.float32)  # no float64 copies
        floats = [(x - mean) / std for x in floats]
    return tuple(  # type: ignore[return-value]
        Split(torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(y)))
        for x, (_, y) in zip(floats, parts, strict=True)
    )


@dataclass(frozen=True)
class _FileSpec:
    """How to build one file-based problem."""

    data_set: str
    model: Callable[[], nn.Module]
    description: str
    batch_size: int
    epochs: int
    tags: tuple[str, ...]
    l2: float = 0.0
    reconstruction: bool = False


def _image_problem(name: str, spec: _FileSpec, data_dir: Path | None, seed: int) -> Problem:
    image_set = data.load_image_set(data_dir, spec.data_set)
    train, val, test = image_splits(image_set, seed)
    if spec.reconstruction:
        train, val, test = (
            Split(s.inputs, s.inputs.reshape(len(s), -1)) for s in (train, val, test)
        )
        loss, accuracy = reconstruction_mse, None
    elif spec.l2 > 0:
        loss = Penalized(cross_entropy, add_penalty=True)
        accuracy = Penalized(multiclass_accuracy, add_penalty=False)
    else:
        loss, accuracy = cross_entropy, multiclass_accuracy
    factory = spec.model
    if spec.l2 > 0:
        factory = functools.partial(_penalize, spec.model, spec.l2)
    return Problem(
        name=name,
        # Which files were used, for the report (a test-only set is split 70 / 10 / 20 %).
        description=spec.description + ("" if image_set.has_train else
                                        "; test file only (no training file), split "
                                        "70 / 10 / 20 %"),
        train=train,
        validation=val,
        test=test,
        make_model=_seeded(factory),
        loss=loss,
        accuracy=accuracy,
        batch_size=spec.batch_size,
        epochs=spec.epochs,
        tags=("file", *spec.tags),
        data_files=image_set.files,
    )


def _penalize(factory: Callable[[], nn.Module], weight: float) -> nn.Module:
    return zoo.L2Penalized(factory(), weight)


SEED003_L2 = 0.01  # seed 003 Figs. 6-7: "regularization parameter lambda = 0.01"
_MLP1 = functools.partial(zoo.MLP, (784, 300, 10), "sigmoid")
_MLP2 = functools.partial(zoo.MLP, (784, 300, 100, 10), "sigmoid")

FILE_PROBLEMS: dict[str, _FileSpec] = {
    "mnist_mlp1": _FileSpec(
        "mnist",
        _MLP1,
        "MNIST, sigmoid MLP 784-300-10 + L2 0.01 (seed 003 sec. 4.2, 1 layer)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=SEED003_L2,
    ),
    "mnist_mlp2": _FileSpec(
        "mnist",
        _MLP2,
        "MNIST, sigmoid MLP 784-300-100-10 + L2 0.01 (seed 003 sec. 4.2, 2 layers)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=SEED003_L2,
    ),
    "mnist_lenet5": _FileSpec(
        "mnist",
        functools.partial(zoo.LeNet5, "sigmoid"),
        "MNIST, LeNet-5 with sigmoid (seed 002)",
        128,
        10,
        ("classification", "nonconvex", "cnn", "seed002"),
    ),
    "mnist_autoencoder": _FileSpec(
        "mnist",
        functools.partial(zoo.Autoencoder, (784, 1000, 500, 250, 30)),
        "MNIST, deep autoencoder 784-1000-500-250-30, MSE (seed 002)",
        128,
        10,
        ("reconstruction", "nonconvex", "seed002"),
        reconstruction=True,
    ),
    "fmnist_mlp1": _FileSpec(
        "fashion-mnist",
        _MLP1,
        "Fashion-MNIST, sigmoid MLP 784-300-10 + L2 0.01 (seed 003 Fig. 6)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=SEED003_L2,
    ),
    "fmnist_mlp2": _FileSpec(
        "fashion-mnist",
        _MLP2,
        "Fashion-MNIST, sigmoid MLP 784-300-100-10 + L2 0.01 (seed 003 Fig. 7)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=SEED003_L2,
    ),
    "fmnist_2c2d": _FileSpec(
        "fashion-mnist",
        zoo.DeepOBS2c2d,
        "Fashion-MNIST, DeepOBS 2c2d (Schneider et al. 2019)",
        128,
        100,
        ("classification", "nonconvex", "cnn", "deepobs"),
    ),
    "kmnist_mlp1": _FileSpec(
        "kmnist",
        _MLP1,
        "KMNIST, sigmoid MLP 784-300-10 + L2 0.01 (seed 003 protocol)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=SEED003_L2,
    ),
    "cifar10_cnn": _FileSpec(
        "cifar10",
        zoo.Cifar10CNN,
        "CIFAR-10, CNN with 2 conv + 2 linear layers (seed 000)",
        128,
        40,
        ("classification", "nonconvex", "cnn", "seed000"),
    ),
    "cifar10_vgg11": _FileSpec(
        "cifar10",
        functools.partial(zoo.VGG11, True, "elu"),
        "CIFAR-10, VGG-11 with batch norm and ELU (seed 002)",
        128,
        10,
        ("classification", "nonconvex", "cnn", "seed002"),
    ),
    "cifar10_3c3d": _FileSpec(
        "cifar10",
        zoo.DeepOBS3c3d,
        "CIFAR-10, DeepOBS 3c3d + L2 0.002 (Schneider et al. 2019)",
        128,
        100,
        ("classification", "nonconvex", "cnn", "deepobs"),
        l2=0.002,
    ),
}

for _name, _spec in FILE_PROBLEMS.items():
    register(_name, functools.partial(_image_problem, _name, _spec))


LIBSVM_L2 = 1e-3
LIBSVM_FRACTIONS = (0.8, 0.1, 0.1)


def _libsvm_files(data_dir: Path | None) -> tuple[Path, Path | None]:
    if data_dir is not None and data_dir.is_file():
        return data_dir, None
    folder = data.find_set_dir(data_dir, "libsvm")
    test = folder / "test.svm"
    return folder / "train.svm", (test if test.exists() else None)


def _libsvm_logistic(data_dir: Path | None, seed: int) -> Problem:
    """Logistic regression on a LIBSVM file (seed 002 Fig. 3, "LR" tests).

    Labels are mapped to ``0..K-1`` in sorted order of their values; two classes give
    binary logistic regression (one logit), more give softmax regression. Features are
    used as stored (LIBSVM sets come pre-scaled). Without ``test.svm`` the file is split
    80 / 10 / 10 % (stratified); with it, ``train.svm`` is split 90 / 10 % into train and
    validation.
    """
    train_file, test_file = _libsvm_files(data_dir)
    features, raw = data.load_svmlight(train_file)
    if test_file is not None:
        test_features, test_raw = data.load_svmlight(test_file, n_features=features.shape[1])
    classes = np.unique(raw if test_file is None else np.concatenate([raw, test_raw]))
    if classes.size < 2:
        raise DataFormatError(
            f"{train_file}: a single class {classes}; expected at least two labels"
        )
    labels = np.searchsorted(classes, raw).astype(np.int64)
    n = len(labels)
    if test_file is None:
        idx = split_indices(n, split_sizes(n, LIBSVM_FRACTIONS), seed=seed, labels=labels)
        train, val, test = _splits(features, labels, idx)
    else:
        tr, va = split_indices(
            n,
            split_sizes(n, (1 - VALIDATION_FRACTION, VALIDATION_FRACTION)),
            seed=seed,
            labels=labels,
        )
        train = Split(torch.from_numpy(features[tr]), torch.from_numpy(labels[tr]))
        val = Split(torch.from_numpy(features[va]), torch.from_numpy(labels[va]))
        test_labels = np.searchsorted(classes, test_raw).astype(np.int64)
        test = Split(torch.from_numpy(test_features), torch.from_numpy(test_labels))
    d = features.shape[1]
    if classes.size == 2:
        base_model: Callable[[], nn.Module] = functools.partial(zoo.LogisticRegression, d)
        loss, metric = binary_logistic, binary_accuracy
    else:
        base_model = functools.partial(zoo.SoftmaxRegression, d, int(classes.size))
        loss, metric = cross_entropy, multiclass_accuracy
    return Problem(
        name="libsvm_logistic",
        description=f"LIBSVM {train_file.name}: {classes.size}-class logistic regression + "
        f"L2 {LIBSVM_L2:g} (seed 002 Fig. 3)",
        train=train,
        validation=val,
        test=test,
        make_model=_seeded(functools.partial(_penalize, base_model, LIBSVM_L2)),
        loss=Penalized(loss, add_penalty=True),
        accuracy=Penalized(metric, add_penalty=False),
        batch_size=min(1024, len(train)),
        full_batch=len(train) <= 1024,
        epochs=20,
        tags=("file", "classification", "convex", "seed002"),
        data_files=(train_file,) if test_file is None else (train_file, test_file),
    )


register("libsvm_logistic", _libsvm_logistic)
