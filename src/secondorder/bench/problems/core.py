"""The problem core: data splits, the :class:`Problem` record, splitting and the registry.

:class:`Split` and :class:`Problem` are the bench contract's fixed interface;
:func:`split_indices`, :func:`split_sizes` and :func:`standardize` make the deterministic,
stratified splits every problem uses; :func:`register`, :func:`get_problem` and
:func:`list_problems` are the name registry that the embedded problems
(:mod:`~secondorder.bench.problems.embedded`) and the file-based ones
(:mod:`~secondorder.bench.problems.files`) fill. The conventions all problems follow are in
:mod:`secondorder.bench.problems`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from secondorder.bench import models as zoo

__all__ = [
    "Split",
    "Problem",
    "ProblemFactory",
    "register",
    "register_embedded",
    "list_problems",
    "get_problem",
    "split_indices",
    "split_sizes",
    "standardize",
    "splits_from_arrays",
    "seeded_factory",
    "penalized_model",
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


def splits_from_arrays(
    inputs: np.ndarray, targets: np.ndarray, index_sets: Sequence[np.ndarray]
) -> tuple[Split, Split, Split]:
    """Train, validation and test :class:`Split` s of ``inputs[i], targets[i]`` per index set."""
    return tuple(  # type: ignore[return-value]
        Split(torch.from_numpy(np.ascontiguousarray(inputs[i])), torch.from_numpy(targets[i]))
        for i in index_sets
    )


def seeded_factory(factory: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    """``seed -> factory()`` built under :func:`~secondorder.bench.models.seeded`."""
    return functools.partial(zoo.seeded, factory)


def penalized_model(factory: Callable[[], nn.Module], weight: float) -> nn.Module:
    """``factory()`` wrapped in :class:`~secondorder.bench.models.L2Penalized` with ``weight``."""
    return zoo.L2Penalized(factory(), weight)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

ProblemFactory = Callable[[Path | None, int], Problem]
ProblemFinder = Callable[[str], bool]
_REGISTRY: dict[str, ProblemFactory] = {}
_EMBEDDED_ORDER: list[str] = []  # the default suite, in registration order
_FINDERS: list[ProblemFinder] = []  # consulted by get_problem for an unregistered name


def register(name: str, factory: ProblemFactory) -> None:
    """Register ``factory(data_dir, seed) -> Problem`` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    if name in _REGISTRY:
        raise ValueError(f"problem {name!r} is already registered")
    _REGISTRY[name] = factory


def is_registered(name: str) -> bool:
    """Whether a problem is registered as ``name`` (without consulting the finders)."""
    return name in _REGISTRY


def add_problem_finder(finder: ProblemFinder) -> None:
    """Let :func:`get_problem` ask ``finder(name)`` about a name that is not registered.

    A finder registers the problem (:func:`register`) if it knows it and returns whether
    ``name`` is registered now. :mod:`secondorder.bench.plugins` adds the one for problems
    declared in the parent process or published as entry points; the registry itself knows
    nothing of them. Adding the same finder again is a no-op.
    """
    if finder not in _FINDERS:
        _FINDERS.append(finder)


def register_embedded(name: str, build: Callable[[int], Problem]) -> None:
    """Register ``build(seed) -> Problem`` under ``name`` as part of the default suite.

    Embedded problems need no files; :func:`list_problems` lists them first, in the order
    they were registered.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    register(name, lambda _data_dir, seed: build(seed))
    _EMBEDDED_ORDER.append(name)


def list_problems() -> list[str]:
    """Registered problem names: the embedded suite first, then the file-based ones."""
    rest = sorted(n for n in _REGISTRY if n not in _EMBEDDED_ORDER)
    return [*_EMBEDDED_ORDER, *rest]


def get_problem(name: str, *, data_dir: str | Path | None = None, seed: int = 0) -> Problem:
    """Build the problem ``name``.

    Args:
        name: a name from :func:`list_problems`.
        data_dir: root folder of the local data files (file-based problems only; see
            :mod:`secondorder.bench.data` for the layout). Embedded problems ignore it.
        seed: seed of the split permutation (and of the generated 2-D data set); model
            initialization is seeded separately by ``Problem.make_model(seed)``.

    An unregistered ``name`` is looked up by the finders (:func:`add_problem_finder`):
    problems declared in the parent process or published as entry points
    (:mod:`secondorder.bench.plugins`, imported with :mod:`secondorder.bench`).

    Raises:
        ValueError: if ``name`` is unknown or ``seed`` is not a non-negative int.
        DataFormatError: if a file-based problem's files are missing or malformed.
    """
    for find in _FINDERS:  # declared problems, entry points: add_problem_finder
        if name in _REGISTRY:
            break
        find(name)
    if name not in _REGISTRY:
        raise ValueError(f"Unknown problem {name!r}; available: {', '.join(list_problems())}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r}; expected a non-negative int")
    root = None if data_dir is None else Path(data_dir)
    return _REGISTRY[name](root, seed)
