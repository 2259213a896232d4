"""Readers for the benchmark's local data files. Nothing here ever downloads.

Every reader checks what it reads and raises :class:`~secondorder.errors.DataFormatError`
naming the file and the expected format when a file is missing, truncated, has the wrong
magic number or header, or disagrees with its partner file (image and label counts).

Pixel data is returned exactly as stored (uint8, 0..255); :func:`images_to_float` scales
it to float32 in [0, 1] (``value / 255``), which is what the problems use.

Layout of ``data_dir`` (the folder passed as ``get_problem(..., data_dir=...)``). Each set
is looked up in the sub-folders listed, in order; ``data_dir`` itself is also accepted
when its own name is one of them (so ``data_dir=".../mnist-t10k"`` works):

- MNIST, in ``mnist/``, ``mnist-t10k/`` or ``MNIST/raw/``:
  ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``; optionally
  ``train-images-idx3-ubyte.gz`` and ``train-labels-idx1-ubyte.gz``.
- Fashion-MNIST, in ``fashion-mnist/``, ``fashion_mnist/`` or ``FashionMNIST/raw/``: the
  same four IDX names as MNIST.
- KMNIST, in ``kmnist/`` or ``KMNIST/raw/``: the four IDX names, or
  ``kmnist-test-imgs.npz`` and ``kmnist-test-labels.npz`` (optionally
  ``kmnist-train-imgs.npz`` and ``kmnist-train-labels.npz``), each holding one uint8 array
  ``arr_0``.
- CIFAR-10, in ``cifar-10-batches-py/``: ``test_batch``; optionally all five of
  ``data_batch_1`` .. ``data_batch_5`` (python pickles).
- LIBSVM (problem ``libsvm_logistic``), in ``libsvm/``: ``train.svm`` and optionally
  ``test.svm`` (svmlight text); or pass the path of a single svmlight file as ``data_dir``.

IDX (LeCun et al.): big-endian header, magic 2051 (images: then count, rows, cols) or
2049 (labels: then count), then uint8 values; the ``.gz`` files are gzip-compressed.
CIFAR-10 pickles are dicts with ``data`` (uint8, ``(n, 3072)``, channel-major 32 x 32)
and ``labels`` (``n`` ints); they are read with a restricted unpickler that only rebuilds
NumPy arrays, so a crafted file cannot run code.

A set with only its test files (like the 10,000-image MNIST test set) is split
deterministically into train/validation/test by :mod:`secondorder.bench.problems`.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from secondorder.errors import DataFormatError

__all__ = [
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "IDX_NAMES",
    "KMNIST_NPZ_NAMES",
    "CIFAR10_TRAIN_BATCHES",
    "CIFAR10_TEST_BATCH",
    "SET_FOLDERS",
    "ImageSet",
    "read_idx",
    "load_idx_images",
    "load_idx_labels",
    "load_npz_array",
    "load_cifar10_batch",
    "load_svmlight",
    "find_set_dir",
    "load_image_set",
    "images_to_float",
    "files_fingerprint",
    "check_labels",
]

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
IDX_IMAGES_FORMAT = (
    "a gzip-compressed IDX image file (big-endian int32 magic 2051, count, rows, cols, "
    "then count*rows*cols uint8 pixels)"
)
IDX_LABELS_FORMAT = (
    "a gzip-compressed IDX label file (big-endian int32 magic 2049, count, then count uint8 labels)"
)
NPZ_FORMAT = "a NumPy .npz archive holding one uint8 array 'arr_0' (KMNIST distribution)"
CIFAR_FORMAT = (
    "a CIFAR-10 python pickle batch: a dict with 'data' (uint8 array (n, 3072)) and "
    "'labels' (n ints in 0..9)"
)
SVMLIGHT_FORMAT = "a LIBSVM/svmlight text file ('<label> <index>:<value> ...' per line)"

#: IDX file names per split, shared by MNIST, Fashion-MNIST and KMNIST.
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: KMNIST's NumPy distribution.
KMNIST_NPZ_NAMES = {
    "train": ("kmnist-train-imgs.npz", "kmnist-train-labels.npz"),
    "test": ("kmnist-test-imgs.npz", "kmnist-test-labels.npz"),
}
#: Classes of every image set here (digits, Fashion-MNIST, KMNIST, CIFAR-10): labels 0..9.
IMAGE_CLASSES = 10
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"

#: Sub-folders of ``data_dir`` searched for each set, in order.
SET_FOLDERS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "mnist-t10k", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    "kmnist": ("kmnist", "KMNIST/raw"),
    "cifar10": ("cifar-10-batches-py",),
    "libsvm": ("libsvm",),
}


# --------------------------------------------------------------------------------------
# Single files
# --------------------------------------------------------------------------------------


def _missing(path: Path, expected: str) -> DataFormatError:
    return DataFormatError(f"{path}: file not found; expected {expected} (nothing is downloaded)")


def _read_bytes(path: Path, expected: str) -> bytes:
    """The file's bytes, gunzipped when its name ends in ``.gz``."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, expected)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataFormatError(
            f"{path}: cannot decompress ({err}); expected {expected}; the file may be truncated"
        ) from err


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes whose magic number must be ``magic``.

    Args:
        path: the file (gzip-compressed if its name ends in ``.gz``).
        magic: 2051 for images (3 dimensions) or 2049 for labels (1 dimension).

    Returns:
        A uint8 array with the dimensions from the header.

    Raises:
        ValueError: if ``magic`` is neither 2051 nor 2049.
        DataFormatError: if the file is missing, not gzip, truncated, has another magic
            number, or its payload size differs from the header's dimensions.
    """
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise ValueError(f"Invalid IDX magic: {magic}; expected 2051 or 2049")
    path = Path(path)
    expected = IDX_IMAGES_FORMAT if magic == IDX_IMAGES_MAGIC else IDX_LABELS_FORMAT
    ndim = magic & 0xFF
    raw = _read_bytes(path, expected)
    header = 4 * (1 + ndim)
    if len(raw) >= 4:
        found = struct.unpack(">i", raw[:4])[0]
        if found != magic:
            raise DataFormatError(f"{path}: wrong magic number {found}; expected {expected}")
    if len(raw) < header:
        raise DataFormatError(
            f"{path}: {len(raw)} bytes, shorter than the {header}-byte header; expected {expected}"
        )
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    if any(d < 0 for d in dims):
        raise DataFormatError(f"{path}: negative dimension in header {dims}; expected {expected}")
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        raise DataFormatError(
            f"{path}: size mismatch: header {dims} needs {size} bytes of data, file has "
            f"{len(raw) - header}; expected {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_idx_images(path: str | Path) -> np.ndarray:
    """Images of an IDX3 file as uint8 ``(n, rows, cols)`` (see :func:`read_idx`)."""
    return read_idx(path, IDX_IMAGES_MAGIC)


def load_idx_labels(path: str | Path) -> np.ndarray:
    """Labels of an IDX1 file as uint8 ``(n,)`` (see :func:`read_idx`)."""
    return read_idx(path, IDX_LABELS_MAGIC)


def load_npz_array(path: str | Path, ndim: int) -> np.ndarray:
    """The uint8 array ``arr_0`` of a KMNIST-style ``.npz`` with ``ndim`` dimensions.

    Raises:
        DataFormatError: if the file is missing, not a valid archive (e.g. truncated), has
            no ``arr_0``, or the array is not uint8 with ``ndim`` dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path, NPZ_FORMAT)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "arr_0" not in archive.files:
                raise DataFormatError(
                    f"{path}: no array 'arr_0' (found {archive.files}); expected {NPZ_FORMAT}"
                )
            array = archive["arr_0"]
    except DataFormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataFormatError(f"{path}: cannot read ({err}); expected {NPZ_FORMAT}") from err
    if array.dtype != np.uint8 or array.ndim != ndim:
        raise DataFormatError(
            f"{path}: array of dtype {array.dtype} and shape {array.shape}; expected "
            f"{ndim} dimensions of uint8, {NPZ_FORMAT}"
        )
    return array


def _numpy_global(*candidates: tuple[str, str]) -> object:
    import importlib

    for module, name in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {candidates} exists in this NumPy")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals NumPy arrays need."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if name == "_reconstruct":
            return _numpy_global(("numpy._core.multiarray", name), ("numpy.core.multiarray", name))
        if name == "_frombuffer":
            return _numpy_global(("numpy._core.numeric", name), ("numpy.core.numeric", name))
        return super().find_class(module, name)


def load_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch as ``(uint8 images (n, 3, 32, 32), int64 labels (n,))``.

    Raises:
        DataFormatError: if the file is missing, not a pickle of the expected dict, holds
            other globals than NumPy arrays, or ``data``/``labels`` have wrong shapes,
            counts or values.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path, CIFAR_FORMAT)
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        ImportError,
        struct.error,
    ) as err:
        raise DataFormatError(f"{path}: cannot unpickle ({err}); expected {CIFAR_FORMAT}") from err
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: holds a {type(batch).__name__}; expected {CIFAR_FORMAT}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataFormatError(f"{path}: keys {sorted(batch)}; expected {CIFAR_FORMAT}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(
            f"{path}: 'data' has dtype {data.dtype} and shape {data.shape}; expected {CIFAR_FORMAT}"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataFormatError(
            f"{path}: count mismatch: {data.shape[0]} images but {labels.size} labels; "
            f"expected {CIFAR_FORMAT}"
        )
    if labels.size and (
        not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9
    ):
        raise DataFormatError(f"{path}: labels outside 0..9; expected {CIFAR_FORMAT}")
    return data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64)


def load_svmlight(path: str | Path, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A LIBSVM/svmlight file as dense ``(float32 features (n, d), float64 labels (n,))``.

    Args:
        path: the text file.
        n_features: number of feature columns (default: the largest index in the file);
            pass the training file's count when reading its test file.

    Raises:
        DataFormatError: if the file is missing, empty or not valid svmlight text.
    """
    from sklearn.datasets import load_svmlight_file

    path = Path(path)
    if not path.is_file():
        raise _missing(path, SVMLIGHT_FORMAT)
    try:
        features, labels = load_svmlight_file(str(path), n_features=n_features)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: cannot parse ({err}); expected {SVMLIGHT_FORMAT}") from err
    if features.shape[0] == 0:
        raise DataFormatError(f"{path}: no samples; expected {SVMLIGHT_FORMAT}")
    return np.asarray(features.toarray(), dtype=np.float32), np.asarray(labels, dtype=np.float64)


# --------------------------------------------------------------------------------------
# Whole image sets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    """An image classification set as stored: uint8 images ``(n, C, H, W)``, int64 labels.

    ``train_images``/``train_labels`` are ``None`` for a set that has only test files.
    ``folder`` is where the files were found, ``files`` the files read.
    """

    folder: Path
    test_images: np.ndarray
    test_labels: np.ndarray
    train_images: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    files: tuple[Path, ...] = ()

    @property
    def has_train(self) -> bool:
        return self.train_images is not None


def _required_files(set_name: str) -> str:
    if set_name == "cifar10":
        return f"{CIFAR10_TEST_BATCH} (optional {', '.join(CIFAR10_TRAIN_BATCHES)})"
    if set_name == "libsvm":
        return "train.svm (optional test.svm)"
    names = " and ".join(IDX_NAMES["test"]) + " (optional " + " and ".join(IDX_NAMES["train"]) + ")"
    if set_name == "kmnist":
        names += ", or " + " and ".join(KMNIST_NPZ_NAMES["test"]) + " (optional train .npz)"
    return names


def _marker_files(set_name: str) -> tuple[str, ...]:
    if set_name == "cifar10":
        return (CIFAR10_TEST_BATCH,)
    if set_name == "libsvm":
        return ("train.svm",)
    if set_name == "kmnist":
        return (IDX_NAMES["test"][0], KMNIST_NPZ_NAMES["test"][0])
    return (IDX_NAMES["test"][0],)


def find_set_dir(data_dir: str | Path | None, set_name: str) -> Path:
    """The folder holding ``set_name``'s files under ``data_dir`` (see the module table).

    Raises:
        ValueError: if ``set_name`` is not one of :data:`SET_FOLDERS`.
        DataFormatError: if ``data_dir`` is ``None`` or no searched folder has the set's
            test file; the message lists the folders searched and the files expected.
    """
    if set_name not in SET_FOLDERS:
        raise ValueError(f"Unknown data set {set_name!r}; expected one of {sorted(SET_FOLDERS)}")
    folders = SET_FOLDERS[set_name]
    if data_dir is None:
        raise DataFormatError(
            f"{set_name}: no data_dir given; pass data_dir=<folder> containing one of "
            f"{', '.join(folders)} with {_required_files(set_name)}"
        )
    root = Path(data_dir)
    candidates = [root / f for f in folders]
    if any(root.name == Path(f).name for f in folders):
        candidates.insert(0, root)
    for folder in candidates:
        if any((folder / m).is_file() for m in _marker_files(set_name)):
            return folder
    searched = ", ".join(str(c) for c in candidates)
    raise DataFormatError(
        f"{set_name}: file not found: {candidates[-1] / _marker_files(set_name)[0]}; expected "
        f"{_required_files(set_name)} in one of: {searched} (nothing is downloaded)"
    )


def check_labels(labels: np.ndarray, path: Path, n_classes: int) -> None:
    """Raise :class:`DataFormatError` naming ``path``, the first bad label and its index
    unless every label is an integer in ``0..n_classes-1``."""
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(
            f"{path}: label {int(labels[i])} at index {i} is outside 0..{n_classes - 1} "
            f"({bad.size} such labels); expected {n_classes}-class labels"
        )


def files_fingerprint(paths: tuple[Path, ...] | list[Path]) -> str | None:
    """SHA-256 (first 16 hex digits) of the names and contents of ``paths``, in order:
    the identity of a problem's data in the run key (``None`` for no files)."""
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _pair(images: np.ndarray, labels: np.ndarray, image_file: Path, label_file: Path) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{image_file} / {label_file}: count mismatch: {images.shape[0]} images but "
            f"{labels.shape[0]} labels; expected equal counts"
        )


def _load_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = (folder / n for n in IDX_NAMES[split])
    images = load_idx_images(image_file)
    labels = load_idx_labels(label_file)
    _pair(images, labels, image_file, label_file)
    check_labels(labels, label_file, IMAGE_CLASSES)
    return images[:, None, :, :], labels.astype(np.int64)


def _load_npz_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = (folder / n for n in KMNIST_NPZ_NAMES[split])
    images = load_npz_array(image_file, 3)
    labels = load_npz_array(label_file, 1)
    _pair(images, labels, image_file, label_file)
    check_labels(labels, label_file, IMAGE_CLASSES)
    return images[:, None, :, :], labels.astype(np.int64)


def load_image_set(data_dir: str | Path | None, set_name: str) -> ImageSet:
    """Load ``"mnist"``, ``"fashion-mnist"``, ``"kmnist"`` or ``"cifar10"`` from ``data_dir``.

    The test files are required; the training files are optional but must be complete
    (both IDX/npz files, or all five CIFAR-10 batches) when any is present.

    Raises:
        ValueError: if ``set_name`` is not an image set.
        DataFormatError: if a file is missing, malformed, or images and labels disagree.
    """
    if set_name not in ("mnist", "fashion-mnist", "kmnist", "cifar10"):
        raise ValueError(
            f"Unknown image set {set_name!r}; expected mnist, fashion-mnist, kmnist or cifar10"
        )
    folder = find_set_dir(data_dir, set_name)
    if set_name == "cifar10":
        test_images, test_labels = load_cifar10_batch(folder / CIFAR10_TEST_BATCH)
        present = [n for n in CIFAR10_TRAIN_BATCHES if (folder / n).exists()]
        if not present:
            return ImageSet(folder, test_images, test_labels,
                            files=(folder / CIFAR10_TEST_BATCH,))
        missing = [n for n in CIFAR10_TRAIN_BATCHES if n not in present]
        if missing:
            raise _missing(folder / missing[0], CIFAR_FORMAT + " (all five training batches)")
        parts = [load_cifar10_batch(folder / n) for n in CIFAR10_TRAIN_BATCHES]
        return ImageSet(
            folder,
            test_images,
            test_labels,
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            files=tuple(folder / n for n in (CIFAR10_TEST_BATCH, *CIFAR10_TRAIN_BATCHES)),
        )
    names, loader = IDX_NAMES, _load_idx_split
    if set_name == "kmnist" and not (folder / IDX_NAMES["test"][0]).is_file():
        names, loader = KMNIST_NPZ_NAMES, _load_npz_split
    test_images, test_labels = loader(folder, "test")
    if not any((folder / n).exists() for n in names["train"]):
        return ImageSet(folder, test_images, test_labels,
                        files=tuple(folder / n for n in names["test"]))
    train_images, train_labels = loader(folder, "train")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataFormatError(
            f"{folder / names['train'][0]}: images of shape {train_images.shape[2:]} but the "
            f"test images are {test_images.shape[2:]}; expected equal image sizes"
        )
    return ImageSet(folder, test_images, test_labels, train_images, train_labels,
                    files=tuple(folder / n for n in (*names["test"], *names["train"])))


def images_to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1]: ``images / 255``."""
    return images.astype(np.float32) / np.float32(255.0)
