"""Tiny data files in the original formats, written by the tests (never /work/shared)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

RNG = np.random.default_rng(7)


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzip IDX file (magic 2051 for images (n, 28, 28), 2049 for labels (n,))."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 2051 if array.ndim == 3 else 2049
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes())


def _images(n: int, labels: np.ndarray) -> np.ndarray:
    """Noise plus a bright class-dependent stripe, so the classes are learnable."""
    images = RNG.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c:2 * c + 3, :] = 250
    return images


def write_idx_set(folder: Path, n_test: int, n_train: int | None) -> Path:
    """MNIST-format files (``t10k-*`` and, with ``n_train``, ``train-*``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = [("t10k", n_test)] + ([("train", n_train)] if n_train else [])
    for prefix, n in splits:
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", _images(n, labels))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def write_cifar10(folder: Path, per_batch: int) -> Path:
    """``cifar-10-batches-py``: ``data_batch_1..5`` and ``test_batch`` python pickles."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in np.arange(per_batch) % 10]
        data = RNG.integers(0, 60, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):
            data[i, c % 3, 3 * c:3 * c + 3, :] = 250
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data.reshape(per_batch, -1),
                         b"labels": labels}, f, protocol=2)
    return folder


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    """A data folder holding a tiny Fashion-MNIST (60 training, 40 test images)."""
    write_idx_set(tmp_path / "fashion-mnist", n_test=40, n_train=60)
    return tmp_path


@pytest.fixture
def mnist_t10k_dir(tmp_path: Path) -> Path:
    """A tiny ``mnist-t10k`` folder (test files only), passed as ``--data-dir`` itself."""
    return write_idx_set(tmp_path / "mnist-t10k", n_test=100, n_train=None)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A data folder holding a tiny CIFAR-10 (5 x 20 training, 20 test images)."""
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=20)
    return tmp_path
