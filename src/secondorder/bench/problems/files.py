"""The file-based problems: MNIST, Fashion-MNIST, KMNIST, CIFAR-10 and LIBSVM.

They read local files under ``data_dir``; the expected layout is documented in
:mod:`secondorder.bench.data`. Nothing is ever downloaded: a missing or malformed file
raises :class:`~secondorder.errors.DataFormatError` naming the file and its expected
format. The image problems are the rows of :data:`FILE_PROBLEMS`; ``libsvm_logistic``
adapts its model to the classes found in the file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from secondorder.bench import data
from secondorder.bench import models as zoo
from secondorder.bench.problems.core import (
    Problem,
    Split,
    penalized_model,
    register,
    seeded_factory,
    split_indices,
    split_sizes,
    splits_from_arrays,
)
from secondorder.bench.problems.losses import (
    Penalized,
    binary_accuracy,
    binary_logistic,
    cross_entropy,
    multiclass_accuracy,
    reconstruction_mse,
)
from secondorder.errors import DataFormatError

__all__ = [
    "VALIDATION_FRACTION",
    "TEST_ONLY_FRACTIONS",
    "image_splits",
    "VEITCH_L2",
    "FILE_PROBLEMS",
    "LIBSVM_L2",
    "LIBSVM_FRACTIONS",
]

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
        factory = functools.partial(penalized_model, spec.model, spec.l2)
    return Problem(
        name=name,
        # Which files were used, for the report (a test-only set is split 70 / 10 / 20 %).
        description=spec.description + ("" if image_set.has_train else
                                        "; test file only (no training file), split "
                                        "70 / 10 / 20 %"),
        train=train,
        validation=val,
        test=test,
        make_model=seeded_factory(factory),
        loss=loss,
        accuracy=accuracy,
        batch_size=spec.batch_size,
        epochs=spec.epochs,
        tags=("file", *spec.tags),
        data_files=image_set.files,
    )


VEITCH_L2 = 0.01  # [Veitch] Figs. 6-7: "regularization parameter lambda = 0.01"
_MLP1 = functools.partial(zoo.MLP, (784, 300, 10), "sigmoid")
_MLP2 = functools.partial(zoo.MLP, (784, 300, 100, 10), "sigmoid")

FILE_PROBLEMS: dict[str, _FileSpec] = {
    "mnist_mlp1": _FileSpec(
        "mnist",
        _MLP1,
        "MNIST, sigmoid MLP 784-300-10 + L2 0.01 ([Veitch] sec. 4.2, 1 layer)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=VEITCH_L2,
    ),
    "mnist_mlp2": _FileSpec(
        "mnist",
        _MLP2,
        "MNIST, sigmoid MLP 784-300-100-10 + L2 0.01 ([Veitch] sec. 4.2, 2 layers)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=VEITCH_L2,
    ),
    "mnist_lenet5": _FileSpec(
        "mnist",
        functools.partial(zoo.LeNet5, "sigmoid"),
        "MNIST, LeNet-5 with sigmoid ([Shen])",
        128,
        10,
        ("classification", "nonconvex", "cnn", "seed002"),
    ),
    "mnist_autoencoder": _FileSpec(
        "mnist",
        functools.partial(zoo.Autoencoder, (784, 1000, 500, 250, 30)),
        "MNIST, deep autoencoder 784-1000-500-250-30, MSE ([Shen])",
        128,
        10,
        ("reconstruction", "nonconvex", "seed002"),
        reconstruction=True,
    ),
    "fmnist_mlp1": _FileSpec(
        "fashion-mnist",
        _MLP1,
        "Fashion-MNIST, sigmoid MLP 784-300-10 + L2 0.01 ([Veitch] Fig. 6)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=VEITCH_L2,
    ),
    "fmnist_mlp2": _FileSpec(
        "fashion-mnist",
        _MLP2,
        "Fashion-MNIST, sigmoid MLP 784-300-100-10 + L2 0.01 ([Veitch] Fig. 7)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=VEITCH_L2,
    ),
    "fmnist_2c2d": _FileSpec(
        "fashion-mnist",
        zoo.DeepOBS2c2d,
        "Fashion-MNIST, DeepOBS 2c2d ([Schneider2019]",
        128,
        100,
        ("classification", "nonconvex", "cnn", "deepobs"),
    ),
    "kmnist_mlp1": _FileSpec(
        "kmnist",
        _MLP1,
        "KMNIST, sigmoid MLP 784-300-10 + L2 0.01 ([Veitch] protocol)",
        1000,
        20,
        ("classification", "nonconvex", "seed003"),
        l2=VEITCH_L2,
    ),
    "cifar10_cnn": _FileSpec(
        "cifar10",
        zoo.Cifar10CNN,
        "CIFAR-10, CNN with 2 conv + 2 linear layers ([Filippova])",
        128,
        40,
        ("classification", "nonconvex", "cnn", "seed000"),
    ),
    "cifar10_vgg11": _FileSpec(
        "cifar10",
        functools.partial(zoo.VGG11, True, "elu"),
        "CIFAR-10, VGG-11 with batch norm and ELU ([Shen])",
        128,
        10,
        ("classification", "nonconvex", "cnn", "seed002"),
    ),
    "cifar10_3c3d": _FileSpec(
        "cifar10",
        zoo.DeepOBS3c3d,
        "CIFAR-10, DeepOBS 3c3d + L2 0.002 ([Schneider2019]",
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
    """Logistic regression on a LIBSVM file ([Shen] Fig. 3, "LR" tests).

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
        train, val, test = splits_from_arrays(features, labels, idx)
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
        f"L2 {LIBSVM_L2:g} ([Shen] Fig. 3)",
        train=train,
        validation=val,
        test=test,
        make_model=seeded_factory(functools.partial(penalized_model, base_model, LIBSVM_L2)),
        loss=Penalized(loss, add_penalty=True),
        accuracy=Penalized(metric, add_penalty=False),
        batch_size=min(1024, len(train)),
        full_batch=len(train) <= 1024,
        epochs=20,
        tags=("file", "classification", "convex", "seed002"),
        data_files=(train_file,) if test_file is None else (train_file, test_file),
    )


register("libsvm_logistic", _libsvm_logistic)
