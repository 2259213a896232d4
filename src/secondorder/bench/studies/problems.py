"""The studies' problems and the data each one runs on: the paper's set or a named stand-in.

A builder (:data:`BUILDERS`) takes ``(data_dir, quick, **options)`` and returns a
:class:`StudyProblem`: a :class:`~secondorder.bench.problems.Problem`, a short data tag
that becomes part of the problem's name in the database (so runs on different data never
share a key) and a sentence for the table captions saying which data it is.

Data choice, first available wins (nothing is downloaded):

- [Veitch] MLPs: Fashion-MNIST (``data_dir`` holds its IDX files), else the MNIST test set
  (``data_dir`` holds ``t10k-*``; split 70/10/20), else scikit-learn's 8 x 8 digits.
- [Filippova] CNN: CIFAR-10 (python batches under ``data_dir``), else the MNIST test set,
  else digits; the 2-conv + 2-linear network is sized to the input (:class:`TwoConvTwoLinear`).
- [Veitch] logistic regression runs on the embedded ``logistic2d`` set (the paper's hand-made
  800/100 points are not published), Rosenbrock on ``a = 1, b = 50`` (Figs. 1-2).

``quick`` (and a ``max_train`` option) keep a deterministic random subset of the training
split (validation and test: at most half as many), said in the tag and the caption.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from secondorder.bench import models as zoo
from secondorder.bench import problems as P
from secondorder.bench.data import find_set_dir
from secondorder.errors import DataFormatError

__all__ = ["BUILDERS", "QUICK_TRAIN", "StudyProblem", "TwoConvTwoLinear", "has_set"]

#: Training samples kept by ``--quick`` on file and digits data.
QUICK_TRAIN = 400
ROSENBROCK_B = 50.0  # [Veitch] Figs. 1-2: a = 1, b = 50


@dataclass(frozen=True)
class StudyProblem:
    """A built problem with its data tag and caption sentence (module docstring)."""

    problem: P.Problem
    tag: str
    data: str
    original: bool


def has_set(data_dir: str | Path | None, set_name: str) -> bool:
    """Whether ``data_dir`` holds ``set_name`` (:func:`secondorder.bench.data.find_set_dir`)."""
    if data_dir is None:
        return False
    try:
        find_set_dir(data_dir, set_name)
    except DataFormatError:
        return False
    return True


def _subset(split: P.Split, n: int, seed: int = 0) -> P.Split:
    if len(split) <= n:
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    idx = idx.sort().values
    return P.Split(split.inputs[idx], split.targets[idx])


def _shrink(problem: P.Problem, max_train: int | None) -> P.Problem:
    if max_train is None or len(problem.train) <= max_train:
        return problem
    small = max(max_train // 2, 1)
    return dataclasses.replace(
        problem, train=_subset(problem.train, max_train), validation=_subset(
            problem.validation, small, 1), test=_subset(problem.test, small, 2))


def _sizes(problem: P.Problem) -> str:
    return (f"{len(problem.train)}/{len(problem.validation)}/{len(problem.test)} "
            "train/validation/test samples")


def _limit(quick: bool, max_train: int | None) -> int | None:
    return QUICK_TRAIN if quick and max_train is None else max_train


def _tag(base: str, full: P.Problem, problem: P.Problem) -> str:
    """``base``, with ``-n<train size>`` when ``problem`` is a subset of ``full``."""
    return base if len(problem.train) == len(full.train) else f"{base}-n{len(problem.train)}"


# ------------------------------------------------------------------------- [Veitch]
def _rosenbrock_model(seed: int) -> nn.Module:
    return zoo.seeded(lambda: zoo.Rosenbrock(P.ROSENBROCK_START, a=1.0, b=ROSENBROCK_B), seed)


def rosenbrock(data_dir=None, quick: bool = False) -> StudyProblem:
    """Rosenbrock ``(1 - x)^2 + 50 (y - x^2)^2`` from (-1.2, 1) ([Veitch] eq. 6, Figs. 1-2)."""
    base = P.get_problem("rosenbrock")
    problem = dataclasses.replace(
        base, name="rosenbrock_b50", make_model=_rosenbrock_model,
        description="Rosenbrock a = 1, b = 50 from (-1.2, 1) ([Veitch] Figs. 1-2)")
    return StudyProblem(problem, "analytic", "the Rosenbrock function with a = 1, b = 50, "
                        "started at (-1.2, 1) (the paper does not give its start)", True)


def logistic2d(data_dir=None, quick: bool = False) -> StudyProblem:
    """The generated 2-D two-class set (stand-in for [Veitch] Sec. 3.1's hand-made points)."""
    problem = P.get_problem("logistic2d")
    return StudyProblem(problem, "logistic2d", "a generated stand-in for the paper's "
                        "unpublished hand-made 2-D set (two unit Gaussians at +-(0.7, 0.7), "
                        f"{_sizes(problem)})", False)


def _digits_mlp_model(hidden: tuple[int, ...]) -> nn.Module:
    return zoo.L2Penalized(zoo.MLP((64, *hidden, 10), "sigmoid"), P.VEITCH_L2)


def mlp(data_dir=None, quick: bool = False, hidden_layers: int = 1,
        max_train: int | None = None) -> StudyProblem:
    """Sigmoid MLP 784-300-10 or 784-300-100-10 + L2 0.01 ([Veitch] Sec. 4.2)."""
    if hidden_layers not in (1, 2):
        raise ValueError(f"Invalid hidden_layers: {hidden_layers}; [Veitch] uses 1 or 2")
    limit = _limit(quick, max_train)
    if has_set(data_dir, "fashion-mnist"):
        problem = P.get_problem(f"fmnist_mlp{hidden_layers}", data_dir=data_dir)
        base, data, original = "fashion-mnist", "Fashion-MNIST (the paper's data)", True
    elif has_set(data_dir, "mnist"):
        problem = P.get_problem(f"mnist_mlp{hidden_layers}", data_dir=data_dir)
        base, original = "mnist", False
        data = "the MNIST test set standing in for Fashion-MNIST (not on this machine)"
    else:
        hidden = (300,) if hidden_layers == 1 else (300, 100)
        digits = P.get_problem("digits_softmax")
        problem = dataclasses.replace(
            digits, name=f"digits_mlp{hidden_layers}",
            make_model=functools.partial(zoo.seeded, functools.partial(_digits_mlp_model,
                                                                       hidden)),
            description=f"digits, sigmoid MLP 64-{'-'.join(map(str, hidden))}-10 + L2 0.01")
        base, original = "digits", False
        data = ("scikit-learn's 8 x 8 digits standing in for Fashion-MNIST (neither it nor "
                "MNIST is on this machine; inputs 64, not 784)")
    small = _shrink(problem, limit)
    return StudyProblem(small, _tag(base, problem, small), f"{data}, {_sizes(small)}",
                        original)


# ------------------------------------------------------------------------- [Filippova]
class TwoConvTwoLinear(nn.Sequential):
    """[Filippova]'s CNN, two convolutions and two linear layers, sized to the input.

    conv C-6 5x5 -> ReLU -> maxpool 2 -> conv 6-16 5x5 -> ReLU -> maxpool 2 -> linear 120
    -> ReLU -> linear 10 (:class:`~secondorder.bench.models.Cifar10CNN` on 3 x 32 x 32;
    ``padding=2`` keeps 8 x 8 digits large enough for both convolutions).
    """

    def __init__(self, in_channels: int = 3, size: int = 32, padding: int = 0) -> None:
        s = (size + 2 * padding - 4) // 2
        s = (s + 2 * padding - 4) // 2
        if s < 1:
            raise ValueError(f"Invalid input size {size} with padding {padding}: too small")
        super().__init__(
            nn.Conv2d(in_channels, 6, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * s * s, 120), nn.ReLU(), nn.Linear(120, 10))


def cnn(data_dir=None, quick: bool = False, max_train: int | None = None) -> StudyProblem:
    """The 2-conv + 2-linear CNN on CIFAR-10 or a stand-in ([Filippova] Sec. 3)."""
    limit = _limit(quick, max_train)
    if has_set(data_dir, "cifar10"):
        problem = P.get_problem("cifar10_cnn", data_dir=data_dir)
        base, data, original = "cifar10", "CIFAR-10 (the paper's data)", True
    else:
        if has_set(data_dir, "mnist"):
            source = P.get_problem("mnist_lenet5", data_dir=data_dir)
            factory = functools.partial(TwoConvTwoLinear, 1, 28, 0)
            base = "mnist"
            data = "the MNIST test set standing in for CIFAR-10 (not on this machine)"
        else:
            source = P.get_problem("digits_cnn")
            factory = functools.partial(TwoConvTwoLinear, 1, 8, 2)
            base = "digits"
            data = ("scikit-learn's 8 x 8 digits standing in for CIFAR-10 (neither it nor "
                    "MNIST is on this machine; convolutions padded by 2)")
        problem = dataclasses.replace(
            source, name=f"{base}_2c2l", make_model=functools.partial(zoo.seeded, factory),
            loss=P.cross_entropy, accuracy=P.multiclass_accuracy,
            description=f"{base}, [Filippova] CNN with 2 conv + 2 linear layers")
        original = False
    small = _shrink(problem, limit)
    return StudyProblem(small, _tag(base, problem, small), f"{data}, {_sizes(small)}",
                        original)


# ------------------------------------------------------------------------- [AdaptiveNorms]
def _an_problem(kind: str, data_dir, quick: bool, max_train: int | None) -> StudyProblem:
    """[AdaptiveNorms] Sec. 5's three architectures on MNIST (``data_dir``) or digits."""
    limit = _limit(quick, max_train)
    mnist = has_set(data_dir, "mnist")
    base = "mnist" if mnist else "digits"
    if kind == "mlp":
        source = P.get_problem("mnist_mlp1" if mnist else "digits_mlp", data_dir=data_dir)
        sizes = (784, 64, 10) if mnist else (64, 32, 10)
        factory = functools.partial(zoo.MLP, sizes, "tanh")
        what = f"tanh MLP {'-'.join(map(str, sizes))}"
        extra = {"loss": P.cross_entropy, "accuracy": P.multiclass_accuracy}
    elif kind == "cnn":
        source = P.get_problem("mnist_lenet5" if mnist else "digits_cnn", data_dir=data_dir)
        factory = (functools.partial(TwoConvTwoLinear, 1, 28, 0) if mnist
                   else zoo.DigitsCNN)
        what = "2 conv + 2 linear ReLU CNN" if mnist else "tanh CNN 2 conv + 1 linear"
        extra = {"loss": P.cross_entropy, "accuracy": P.multiclass_accuracy}
    else:
        source = P.get_problem("mnist_autoencoder" if mnist else "digits_autoencoder",
                               data_dir=data_dir)
        sizes = (784, 128, 32) if mnist else (64, 32, 8)
        factory = functools.partial(zoo.Autoencoder, sizes)
        what = f"sigmoid autoencoder {'-'.join(map(str, sizes))}-mirrored, MSE"
        extra = {}
    problem = dataclasses.replace(
        source, name=f"{base}_an_{kind}", make_model=functools.partial(zoo.seeded, factory),
        batch_size=128, description=f"{base}, {what} ([AdaptiveNorms] Sec. 5 stand-in)",
        **extra)
    data = ("the MNIST test set standing in for MNIST/Fashion-MNIST/CIFAR-10" if mnist else
            "scikit-learn's 8 x 8 digits standing in for MNIST/Fashion-MNIST/CIFAR-10 "
            "(MNIST is not in --data-dir)")
    small = _shrink(problem, limit)
    return StudyProblem(small, _tag(base, problem, small), f"{data}, {what}, {_sizes(small)}",
                        False)


def an_mlp(data_dir=None, quick: bool = False, max_train: int | None = None) -> StudyProblem:
    """[AdaptiveNorms] MLP: tanh 64-32-10 on digits (the issue's case), 784-64-10 on MNIST."""
    return _an_problem("mlp", data_dir, quick, max_train)


def an_cnn(data_dir=None, quick: bool = False, max_train: int | None = None) -> StudyProblem:
    """[AdaptiveNorms] CNN: the benchmark's digits CNN, or 2 conv + 2 linear on MNIST."""
    return _an_problem("cnn", data_dir, quick, max_train)


def an_autoencoder(data_dir=None, quick: bool = False,
                   max_train: int | None = None) -> StudyProblem:
    """[AdaptiveNorms] autoencoder: sigmoid 64-32-8 (digits) or 784-128-32 (MNIST), MSE."""
    return _an_problem("autoencoder", data_dir, quick, max_train)


#: Builders by name: ``builder(data_dir, quick, **options) -> StudyProblem``.
BUILDERS: dict[str, Callable[..., StudyProblem]] = {
    "rosenbrock_b50": rosenbrock,
    "logistic2d": logistic2d,
    "mlp": mlp,
    "cnn": cnn,
    "an_mlp": an_mlp,
    "an_cnn": an_cnn,
    "an_autoencoder": an_autoencoder,
}
