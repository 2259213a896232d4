"""[Shen]'s problems (Fig. 3 and the supplementary ablations) and the data each runs on.

Builders take ``(data_dir, quick, **options)`` like those of
:mod:`~secondorder.bench.studies.problems` and are added to its :data:`BUILDERS` when this
module is imported (by :mod:`~secondorder.bench.studies.shen`). Data, first available wins
(nothing is downloaded):

- logistic regression (multi-class, as the paper's LIBSVM sets): a LIBSVM file under
  ``data_dir`` (``libsvm_logistic``), else the MNIST test set (softmax regression 784-10),
  else scikit-learn's breast cancer (binary);
- squared-hinge SVM ("Hinge-2"): the MNIST test set (one-vs-rest over the 10 classes),
  else breast cancer (binary);
- deep autoencoder 784-1000-500-250-30 and mirror: MNIST, else 8 x 8 digits with
  64-32-8 and mirror (the sizes of ``digits_autoencoder``);
- LeNet-5 (sigmoid, or ``activation`` none / relu / sigmoid / sin, no batch norm): MNIST,
  else the digits zero-padded to 28 x 28;
- VGG-11 with batch norm and ELU at ``1 / width_divisor`` of the channels (reduced width
  for CPU runs, named as such): CIFAR-10 when present, else MNIST or the digits, zero-padded
  to 32 x 32.

``batch_size`` sets the mini-batch (``"full"``: the whole training split, one step per
epoch); ``quick`` keeps :data:`~secondorder.bench.studies.problems.QUICK_TRAIN` training
samples.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secondorder.bench import models as zoo
from secondorder.bench import problems as P
from secondorder.bench.studies.problems import (
    BUILDERS,
    StudyProblem,
    _limit,
    _shrink,
    _sizes,
    _tag,
    has_set,
)

__all__ = ["ACTIVATIONS", "PadTo", "ReducedVGG11", "Sin", "ovr_squared_hinge", "SHEN_BUILDERS"]

#: [Shen] supplementary Fig. 5: activations compared with batch norm disabled.
ACTIVATIONS = ("none", "relu", "sigmoid", "sin")


class Sin(nn.Module):
    """``sin(x)``, the periodic activation of [Shen] supplementary Fig. 5."""

    def forward(self, inputs: Tensor) -> Tensor:
        return torch.sin(inputs)


class PadTo(nn.Module):
    """Zero-pad square images to ``size`` x ``size`` (centred)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, inputs: Tensor) -> Tensor:
        s = inputs.shape[-1]
        a = (self.size - s) // 2
        b = self.size - s - a
        return F.pad(inputs, (a, b, a, b))


class ReducedVGG11(nn.Sequential):
    """VGG-11 (config A: 64, M, 128, M, 256 x 2, M, 512 x 2, M, 512 x 2, M, then FC 512, 512,
    10) with batch norm before each ELU, every width divided by ``width_divisor``
    ([Shen] Sec. 5, "VGG-11"; reduced for CPU runs). Inputs are zero-padded to 32 x 32."""

    def __init__(self, width_divisor: int = 8, in_channels: int = 1, num_classes: int = 10,
                 activation: str = "elu") -> None:
        if width_divisor < 1:
            raise ValueError(f"Invalid width_divisor: {width_divisor}; it must be >= 1")
        layers: list[nn.Module] = [PadTo(32)]
        channels = in_channels
        for item in zoo.VGG11_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            width = max(int(item) // width_divisor, 1)
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                       zoo.make_activation(activation)]
            channels = width
        fc = max(512 // width_divisor, 1)
        layers += [nn.Flatten(), nn.Linear(channels, fc), zoo.make_activation(activation),
                   nn.Linear(fc, fc), zoo.make_activation(activation), nn.Linear(fc, num_classes)]
        super().__init__(*layers)


def ovr_squared_hinge(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample one-vs-rest squared hinge, ``sum_k max(0, 1 - s_k f_k)^2`` with
    ``s_k = +1`` for the true class and ``-1`` otherwise ([Shen] Fig. 3 "Hinge-2" SVM)."""
    signs = 2.0 * F.one_hot(targets, outputs.shape[1]).to(outputs.dtype) - 1.0
    return (torch.clamp(1.0 - signs * outputs, min=0.0) ** 2).sum(dim=1)


def _lenet(activation: str, padded: bool) -> nn.Module:
    act = {"none": "identity", "sin": "identity"}.get(activation, activation)
    net = zoo.LeNet5(act)
    if activation == "sin":
        for i, m in enumerate(net):
            if isinstance(m, nn.Identity):
                net[i] = Sin()
    return nn.Sequential(PadTo(28), net) if padded else net


def _batched(problem: P.Problem, batch_size: int | str) -> P.Problem:
    if batch_size == "full":
        return dataclasses.replace(problem, batch_size=len(problem.train), full_batch=True)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size!r}; an integer >= 1 or 'full'")
    return dataclasses.replace(problem, batch_size=batch_size, full_batch=False)


def _finish(problem: P.Problem, full: P.Problem, base: str, data: str, original: bool,
            batch_size: int | str, limit: int | None, suffix: str) -> StudyProblem:
    small = _batched(_shrink(problem, limit), batch_size)
    bs = "full batch" if batch_size == "full" else f"batch {batch_size}"
    return StudyProblem(small, f"{_tag(base, full, small)}-{suffix}",
                        f"{data}, {_sizes(small)}, {bs}", original)


def _mnist_or_digits(data_dir, lenet_name: str):
    if has_set(data_dir, "mnist"):
        return P.get_problem(lenet_name, data_dir=data_dir), "mnist", False
    return P.get_problem("digits_cnn"), "digits", True


def _mnist_linear(data_dir, name: str, loss, description: str):
    """A linear 784-10 model on the MNIST test set under ``--data-dir`` with ``loss``."""
    src = P.get_problem("mnist_lenet5", data_dir=data_dir)
    return dataclasses.replace(
        src, name=name, loss=loss, accuracy=P.multiclass_accuracy,
        make_model=functools.partial(zoo.seeded, functools.partial(
            zoo.SoftmaxRegression, 784, 10)),
        description=description)


def logistic(data_dir=None, quick: bool = False, batch_size: int | str = "full",
             max_train: int | None = None) -> StudyProblem:
    """Logistic regression ([Shen] Fig. 3 "LR"; module docstring for the data)."""
    limit = _limit(quick, max_train)
    if has_set(data_dir, "libsvm"):
        problem = P.get_problem("libsvm_logistic", data_dir=data_dir)
        base, data, original = "libsvm", f"{problem.description} (the paper's kind of data)", True
    elif has_set(data_dir, "mnist"):
        problem = _mnist_linear(data_dir, "mnist_softmax", P.cross_entropy,
                                "MNIST test set, softmax regression 784-10")
        base, original = "mnist", False
        data = ("the MNIST test set standing in for the paper's LIBSVM sets (softmax "
                "regression 784-10)")
    else:
        problem = P.get_problem("cancer_logistic")
        base, original = "cancer", False
        data = ("scikit-learn's breast cancer standing in for the paper's LIBSVM sets "
                "(binary logistic regression + L2 0.01)")
    return _finish(problem, problem, base, data, original, batch_size, limit, "lr")


def svm(data_dir=None, quick: bool = False, batch_size: int | str = "full",
        max_train: int | None = None) -> StudyProblem:
    """Squared-hinge linear SVM ([Shen] Fig. 3 "SVM", Hinge-2 loss)."""
    limit = _limit(quick, max_train)
    if has_set(data_dir, "mnist"):
        problem = _mnist_linear(data_dir, "mnist_svm", ovr_squared_hinge,
                                "MNIST test set, one-vs-rest squared-hinge linear SVM 784-10")
        base, original = "mnist", False
        data = ("the MNIST test set standing in for the paper's LIBSVM sets (one-vs-rest "
                "squared hinge, 784-10)")
    else:
        problem = P.get_problem("cancer_svm")
        base, original = "cancer", False
        data = ("scikit-learn's breast cancer standing in for the paper's LIBSVM sets "
                "(binary squared hinge + L2 0.01)")
    return _finish(problem, problem, base, data, original, batch_size, limit, "svm")


def autoencoder(data_dir=None, quick: bool = False, batch_size: int | str = 128,
                max_train: int | None = None) -> StudyProblem:
    """The deep autoencoder ([Shen] Fig. 3: 784-1000-500-250-30 and mirror, on MNIST)."""
    limit = _limit(quick, max_train)
    if has_set(data_dir, "mnist"):
        problem = P.get_problem("mnist_autoencoder", data_dir=data_dir)
        base, data = "mnist", ("the MNIST test set (the paper trains on the MNIST training "
                               "set), 784-1000-500-250-30 and mirror")
    else:
        problem = P.get_problem("digits_autoencoder")
        base, data = "digits", ("scikit-learn's 8 x 8 digits standing in for MNIST (not on "
                                "this machine): autoencoder 64-32-8 and mirror, not "
                                "784-1000-500-250-30")
    return _finish(problem, problem, base, data, False, batch_size, limit, "ae")


def lenet(data_dir=None, quick: bool = False, batch_size: int | str = 128,
          activation: str = "sigmoid", max_train: int | None = None) -> StudyProblem:
    """LeNet-5 ([Shen] Fig. 3 with sigmoid; supplementary Fig. 5 with ``activation``)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"Invalid activation: {activation!r}; choose one of {ACTIVATIONS}")
    limit = _limit(quick, max_train)
    src, base, padded = _mnist_or_digits(data_dir, "mnist_lenet5")
    problem = dataclasses.replace(
        src, name=f"{base}_lenet5_{activation}", loss=P.cross_entropy,
        accuracy=P.multiclass_accuracy,
        make_model=functools.partial(zoo.seeded, functools.partial(_lenet, activation, padded)),
        description=f"{base}, LeNet-5 with {activation} activations, no batch norm")
    data = ("the MNIST test set (the paper: the MNIST training set)" if base == "mnist" else
            "scikit-learn's 8 x 8 digits zero-padded to 28 x 28, standing in for MNIST")
    return _finish(problem, problem, base, f"{data}; LeNet-5, {activation}", False,
                   batch_size, limit, f"lenet-{activation}")


def vgg(data_dir=None, quick: bool = False, batch_size: int | str = 128,
        width_divisor: int = 8, max_train: int | None = None) -> StudyProblem:
    """VGG-11 with batch norm and ELU at reduced width ([Shen] Fig. 3 "VGG-11")."""
    limit = _limit(quick, max_train)
    if has_set(data_dir, "cifar10"):
        src, base, channels = P.get_problem("cifar10_vgg11", data_dir=data_dir), "cifar10", 3
        data, original = "CIFAR-10 (the paper's data)", True
    else:
        src, base, _ = _mnist_or_digits(data_dir, "mnist_lenet5")
        channels, original = 1, False
        data = ("the MNIST test set standing in for CIFAR-10 (zero-padded to 32 x 32)"
                if base == "mnist" else "scikit-learn's 8 x 8 digits standing in for "
                "CIFAR-10 (zero-padded to 32 x 32)")
    problem = dataclasses.replace(
        src, name=f"{base}_vgg11_w{width_divisor}", loss=P.cross_entropy,
        accuracy=P.multiclass_accuracy,
        make_model=functools.partial(zoo.seeded, functools.partial(
            ReducedVGG11, width_divisor, channels)),
        description=f"{base}, VGG-11 BN + ELU at 1/{width_divisor} width")
    return _finish(problem, problem, base,
                   f"{data}; VGG-11 with batch norm and ELU at 1/{width_divisor} of its "
                   "widths (reduced for CPU)", original, batch_size, limit,
                   f"vgg11w{width_divisor}")


#: The builders this module adds to :data:`~secondorder.bench.studies.problems.BUILDERS`.
SHEN_BUILDERS = {
    "shen_logistic": logistic,
    "shen_svm": svm,
    "shen_autoencoder": autoencoder,
    "shen_lenet": lenet,
    "shen_vgg": vgg,
}
BUILDERS.update(SHEN_BUILDERS)
