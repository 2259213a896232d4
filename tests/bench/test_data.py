"""Loaders of secondorder.bench.data on tiny files written here in the real formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import dump_svmlight_file

from secondorder.bench import data
from secondorder.bench.problems import get_problem, split_indices
from secondorder.errors import DataFormatError

RNG = np.random.default_rng(1234)


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, dims=None) -> Path:
    """Write ``array`` (uint8) as a gzip IDX file; ``magic``/``dims`` override the header."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 2051 if array.ndim == 3 else 2049
    dims = array.shape if dims is None else dims
    header = struct.pack(f">i{len(dims)}i", magic, *dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
    return path


def numbered_images(n: int, side: int = 28) -> np.ndarray:
    """``n`` distinct random images; pixel (0, 0) and (0, 1) encode the index."""
    images = RNG.integers(0, 256, size=(n, side, side), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256
    return images


def image_ids(split_inputs: torch.Tensor) -> list[int]:
    pixels = torch.round(split_inputs[:, 0, 0, :2] * 255).long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def write_mnist(folder: Path, n_test: int, n_train: int | None = None) -> tuple:
    folder.mkdir(parents=True, exist_ok=True)
    test_images = numbered_images(n_test)
    test_labels = np.arange(n_test, dtype=np.uint8) % 10
    write_idx(folder / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_labels)
    if n_train is None:
        return test_images, test_labels
    train_images = numbered_images(n_train)
    train_labels = (np.arange(n_train, dtype=np.uint8) * 7) % 10
    write_idx(folder / "train-images-idx3-ubyte.gz", train_images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", train_labels)
    return test_images, test_labels, train_images, train_labels


# ------------------------------------------------------------------------------ IDX


def test_idx_roundtrip_exact_pixels_and_labels(tmp_path):
    images = RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)  # rows != cols
    labels = np.array([0, 9, 3, 3, 7], dtype=np.uint8)
    got_images = data.load_idx_images(write_idx(tmp_path / "i.gz", images))
    got_labels = data.load_idx_labels(write_idx(tmp_path / "l.gz", labels))
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 4, 3)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_images_to_float_is_pixels_over_255():
    pixels = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    got = data.images_to_float(pixels)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([[0, 1, 128, 255]], np.float32) / np.float32(255))
    assert got.min() == 0.0 and got.max() == 1.0


def test_truncated_gzip_raises_naming_file(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", numbered_images(20))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte\.gz.*truncated"):
        data.load_idx_images(path)


def test_not_gzip_raises_naming_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(struct.pack(">ii", 2049, 1) + b"\x03")  # valid IDX, but not gzipped
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte\.gz.*gzip"):
        data.load_idx_labels(path)


def test_wrong_magic_raises_naming_file_and_format(tmp_path):
    labels = write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(4))
    with pytest.raises(
        DataFormatError, match=r"t10k-labels-idx1-ubyte\.gz: wrong magic number 2049.*2051"
    ):
        data.load_idx_images(labels)


def test_header_payload_size_mismatch_raises(tmp_path):
    path = write_idx(tmp_path / "imgs.gz", numbered_images(4, side=5), dims=(5, 5, 5))
    with pytest.raises(DataFormatError, match=r"imgs\.gz: size mismatch.*125 bytes.*100"):
        data.load_idx_images(path)


def test_short_header_raises(tmp_path):
    path = tmp_path / "short.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08")
    with pytest.raises(
        DataFormatError, match=r"short\.gz: 3 bytes, shorter than the 16-byte header"
    ):
        data.load_idx_images(path)


def test_missing_file_raises_naming_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"nothere-idx1-ubyte\.gz: file not found.*IDX label"):
        data.load_idx_labels(tmp_path / "nothere-idx1-ubyte.gz")


def test_read_idx_rejects_unknown_magic(tmp_path):
    with pytest.raises(ValueError, match="Invalid IDX magic: 2052"):
        data.read_idx(tmp_path / "x.gz", 2052)


def test_image_label_count_mismatch_raises_naming_both(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", numbered_images(5))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(4))
    with pytest.raises(
        DataFormatError,
        match=r"t10k-images-idx3-ubyte\.gz / .*t10k-labels-idx1-ubyte\.gz: count mismatch: "
        r"5 images but 4 labels",
    ):
        data.load_image_set(tmp_path, "mnist")


def test_missing_label_file_raises_naming_it(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", numbered_images(5))
    with pytest.raises(DataFormatError, match=r"t10k-labels-idx1-ubyte\.gz: file not found"):
        data.load_image_set(tmp_path, "mnist")


def test_half_present_training_files_raise(tmp_path):
    write_mnist(tmp_path / "mnist", 10)
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", numbered_images(10))
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte\.gz: file not found"):
        data.load_image_set(tmp_path, "mnist")


def test_missing_set_names_expected_files_and_folders(tmp_path):
    with pytest.raises(
        DataFormatError, match=r"t10k-images-idx3-ubyte\.gz.*fashion-mnist.*FashionMNIST/raw"
    ):
        data.load_image_set(tmp_path, "fashion-mnist")
    with pytest.raises(DataFormatError, match=r"no data_dir given.*t10k-images-idx3-ubyte\.gz"):
        get_problem("mnist_mlp1")


def test_sets_do_not_borrow_each_others_files(tmp_path):
    write_mnist(tmp_path / "mnist", 10)
    assert data.find_set_dir(tmp_path, "mnist") == tmp_path / "mnist"
    with pytest.raises(DataFormatError, match="fashion-mnist"):
        data.find_set_dir(tmp_path, "fashion-mnist")
    with pytest.raises(DataFormatError, match="fashion-mnist"):
        data.find_set_dir(tmp_path / "mnist", "fashion-mnist")


def test_data_dir_may_be_the_set_folder_itself(tmp_path):
    write_mnist(tmp_path / "mnist-t10k", 10)
    assert data.find_set_dir(tmp_path / "mnist-t10k", "mnist") == tmp_path / "mnist-t10k"
    write_mnist(tmp_path / "MNIST" / "raw", 10)
    assert data.find_set_dir(tmp_path / "MNIST" / "raw", "mnist") == tmp_path / "MNIST" / "raw"


def test_mnist_set_with_train_and_test_files_exact(tmp_path):
    test_images, test_labels, train_images, train_labels = write_mnist(tmp_path / "mnist", 12, 20)
    got = data.load_image_set(tmp_path, "mnist")
    assert got.has_train and got.test_images.shape == (12, 1, 28, 28)
    np.testing.assert_array_equal(got.test_images[:, 0], test_images)
    np.testing.assert_array_equal(got.train_images[:, 0], train_images)
    np.testing.assert_array_equal(got.test_labels, test_labels.astype(np.int64))
    np.testing.assert_array_equal(got.train_labels, train_labels.astype(np.int64))
    assert got.test_labels.dtype == np.int64


# ----------------------------------------------------------------- deterministic splits


def test_test_only_set_splits_deterministically_disjoint_and_covering(tmp_path):
    images, labels = write_mnist(tmp_path / "mnist", 100)
    problem = get_problem("mnist_mlp1", data_dir=tmp_path, seed=3)
    splits = (problem.train, problem.validation, problem.test)
    assert [len(s) for s in splits] == [70, 10, 20]
    ids = [image_ids(s.inputs) for s in splits]
    flat = sum(ids, [])
    assert sorted(flat) == list(range(100))  # disjoint and covering
    for s, i in zip(splits, ids, strict=True):
        # each sample is exactly the written image / 255 with its written label
        np.testing.assert_array_equal(s.inputs[:, 0].numpy(), images[i].astype(np.float32) / 255)
        np.testing.assert_array_equal(s.targets.numpy(), labels[i])
        assert s.inputs.dtype == torch.float32 and s.targets.dtype == torch.int64
    # stratified: 10 samples per class -> 7 / 1 / 2 per class
    assert np.bincount(problem.train.targets.numpy(), minlength=10).tolist() == [7] * 10
    assert np.bincount(problem.test.targets.numpy(), minlength=10).tolist() == [2] * 10
    again = get_problem("mnist_mlp1", data_dir=tmp_path, seed=3)
    assert image_ids(again.train.inputs) == ids[0]
    other = get_problem("mnist_mlp1", data_dir=tmp_path, seed=4)
    assert image_ids(other.train.inputs) != ids[0]


def test_train_file_split_into_train_validation_test_file_kept(tmp_path):
    test_images, _, train_images, _ = write_mnist(tmp_path / "mnist", 12, 40)
    problem = get_problem("mnist_lenet5", data_dir=tmp_path)
    assert [len(problem.train), len(problem.validation), len(problem.test)] == [36, 4, 12]
    assert sorted(image_ids(problem.train.inputs) + image_ids(problem.validation.inputs)) == list(
        range(40)
    )
    np.testing.assert_array_equal(
        problem.test.inputs[:, 0].numpy(), test_images.astype(np.float32) / 255
    )


# ------------------------------------------------------------------------------ KMNIST


def test_kmnist_npz_exact_and_split(tmp_path):
    folder = tmp_path / "kmnist"
    folder.mkdir()
    images = numbered_images(30)
    labels = (np.arange(30) % 10).astype(np.uint8)
    np.savez(folder / "kmnist-test-imgs.npz", images)
    np.savez(folder / "kmnist-test-labels.npz", labels)
    got = data.load_image_set(tmp_path, "kmnist")
    assert not got.has_train
    np.testing.assert_array_equal(got.test_images[:, 0], images)
    np.testing.assert_array_equal(got.test_labels, labels)
    problem = get_problem("kmnist_mlp1", data_dir=tmp_path)
    assert sorted(
        sum((image_ids(s.inputs) for s in (problem.train, problem.validation, problem.test)), [])
    ) == list(range(30))


def test_kmnist_corrupt_npz_raises_naming_file(tmp_path):
    folder = tmp_path / "kmnist"
    folder.mkdir()
    np.savez(folder / "kmnist-test-imgs.npz", numbered_images(30))
    raw = (folder / "kmnist-test-imgs.npz").read_bytes()
    (folder / "kmnist-test-imgs.npz").write_bytes(raw[: len(raw) // 3])
    np.savez(folder / "kmnist-test-labels.npz", np.zeros(30, np.uint8))
    with pytest.raises(DataFormatError, match=r"kmnist-test-imgs\.npz: cannot read"):
        data.load_image_set(tmp_path, "kmnist")


def test_kmnist_wrong_dtype_or_key_raises(tmp_path):
    np.savez(tmp_path / "a.npz", np.zeros((2, 28, 28), np.float64))
    with pytest.raises(DataFormatError, match=r"a\.npz: array of dtype float64.*uint8"):
        data.load_npz_array(tmp_path / "a.npz", 3)
    np.savez(tmp_path / "b.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataFormatError, match=r"b\.npz: no array 'arr_0'"):
        data.load_npz_array(tmp_path / "b.npz", 3)


# ---------------------------------------------------------------------------- CIFAR-10


def write_cifar_batch(path: Path, n: int, offset: int = 0) -> tuple[np.ndarray, list[int]]:
    flat = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    flat[:, 0] = (np.arange(n) + offset) % 256  # red pixel (0, 0) numbers the image
    labels = [int(v) for v in (np.arange(n) + offset) % 10]
    with path.open("wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": flat, b"labels": labels}, f, protocol=2)
    return flat, labels


def test_cifar_batch_exact_channel_major(tmp_path):
    flat, labels = write_cifar_batch(tmp_path / "test_batch", 6)
    images, got_labels = data.load_cifar10_batch(tmp_path / "test_batch")
    assert images.shape == (6, 3, 32, 32) and images.dtype == np.uint8
    assert got_labels.tolist() == labels and got_labels.dtype == np.int64
    # channel c, row r, column k lives at c * 1024 + r * 32 + k of the stored row
    assert images[2, 1, 3, 5] == flat[2, 1024 + 3 * 32 + 5]
    assert images[4, 2, 31, 0] == flat[4, 2048 + 31 * 32]
    np.testing.assert_array_equal(images.reshape(6, -1), flat)


def test_cifar_set_with_train_batches_and_standardization(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    test_flat, _ = write_cifar_batch(folder / "test_batch", 5)
    batches = [write_cifar_batch(folder / f"data_batch_{i}", 4, 4 * (i - 1)) for i in range(1, 6)]
    train_flat = np.concatenate([b[0] for b in batches])
    train_labels = np.concatenate([b[1] for b in batches])
    got = data.load_image_set(tmp_path, "cifar10")
    np.testing.assert_array_equal(got.train_images.reshape(20, -1), train_flat)
    problem = get_problem("cifar10_cnn", data_dir=tmp_path)
    assert [len(problem.train), len(problem.validation), len(problem.test)] == [18, 2, 5]
    x = problem.train.inputs.double()
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, atol=1e-5)
    # validation and test are standardized with the TRAIN split's per-channel statistics
    train_idx, _ = split_indices(20, (18, 2), seed=0, labels=train_labels)
    pixels = train_flat[train_idx].reshape(18, 3, 1024).astype(np.float64) / 255
    mean = pixels.mean(axis=(0, 2))[None, :, None]
    std = pixels.std(axis=(0, 2))[None, :, None]
    expected = (test_flat.reshape(5, 3, 1024) / 255 - mean) / std
    np.testing.assert_allclose(problem.test.inputs.reshape(5, 3, 1024).numpy(), expected, atol=1e-5)
    assert abs(problem.test.inputs.double().mean().item()) > 1e-3  # not re-centred on itself


def test_cifar_partial_train_batches_raise_naming_missing(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_cifar_batch(folder / "test_batch", 5)
    for i in (1, 2, 3):
        write_cifar_batch(folder / f"data_batch_{i}", 2)
    with pytest.raises(DataFormatError, match=r"data_batch_4: file not found"):
        data.load_image_set(tmp_path, "cifar10")


def test_cifar_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataFormatError, match=r"test_batch: cannot unpickle.*refusing"):
        data.load_cifar10_batch(tmp_path / "test_batch")
    assert not marker.exists()


def test_cifar_bad_batches_raise(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]}))
    with pytest.raises(DataFormatError, match=r"test_batch: count mismatch: 3 images but 2 labels"):
        data.load_cifar10_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [1, 2, 3]}))
    with pytest.raises(DataFormatError, match=r"test_batch: 'data' has dtype uint8 and shape"):
        data.load_cifar10_batch(path)
    raw = pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2, 3]})
    path.write_bytes(raw[:100])
    with pytest.raises(DataFormatError, match=r"test_batch: cannot unpickle"):
        data.load_cifar10_batch(path)


# ----------------------------------------------------------------------------- LIBSVM


def test_svmlight_exact_values(tmp_path):
    path = tmp_path / "train.svm"
    path.write_text("1 1:0.5 3:2\n-1 2:1.5\n1 3:-4.25\n")
    features, labels = data.load_svmlight(path)
    np.testing.assert_array_equal(
        features, np.array([[0.5, 0, 2], [0, 1.5, 0], [0, 0, -4.25]], np.float32)
    )
    assert features.dtype == np.float32
    np.testing.assert_array_equal(labels, [1, -1, 1])


def test_svmlight_bad_and_missing_files_raise(tmp_path):
    path = tmp_path / "bad.svm"
    path.write_text("1 1:0.5 zz\n")
    with pytest.raises(DataFormatError, match=r"bad\.svm: cannot parse.*svmlight"):
        data.load_svmlight(path)
    with pytest.raises(DataFormatError, match=r"gone\.svm: file not found"):
        data.load_svmlight(tmp_path / "gone.svm")


def test_libsvm_problem_from_folder_and_single_file(tmp_path):
    x = RNG.normal(size=(60, 4))
    y = np.where(x[:, 0] > 0, 1.0, -1.0)
    folder = tmp_path / "libsvm"
    folder.mkdir()
    dump_svmlight_file(x, y, str(folder / "train.svm"))
    problem = get_problem("libsvm_logistic", data_dir=tmp_path)
    assert [len(problem.train), len(problem.validation), len(problem.test)] == [48, 6, 6]
    assert set(problem.train.targets.tolist()) == {0, 1}  # -1 -> 0, +1 -> 1
    model = problem.make_model(0)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        loss = problem.loss(model(problem.train.inputs), problem.train.targets)
    np.testing.assert_allclose(loss.numpy(), np.log(2.0), rtol=1e-6)
    single = get_problem("libsvm_logistic", data_dir=folder / "train.svm")
    assert torch.equal(single.train.inputs, problem.train.inputs)
    dump_svmlight_file(x[:10], y[:10], str(folder / "test.svm"))
    with_test = get_problem("libsvm_logistic", data_dir=tmp_path)
    assert [len(with_test.train), len(with_test.validation), len(with_test.test)] == [54, 6, 10]
    np.testing.assert_allclose(with_test.test.inputs.numpy(), x[:10].astype(np.float32))
    np.testing.assert_array_equal(with_test.test.targets.numpy(), (y[:10] > 0).astype(np.int64))


def test_libsvm_multiclass_uses_softmax(tmp_path):
    x = RNG.normal(size=(30, 3))
    y = np.arange(30) % 3 + 1.0
    (tmp_path / "libsvm").mkdir()
    dump_svmlight_file(x, y, str(tmp_path / "libsvm" / "train.svm"))
    problem = get_problem("libsvm_logistic", data_dir=tmp_path)
    out = problem.make_model(0)(problem.train.inputs)
    assert out.shape == (len(problem.train), 4)  # 3 logits + penalty column
    assert sorted(set(problem.train.targets.tolist())) == [0, 1, 2]


# ----------------------------------------------------------- every file-based problem

FILE_PROBLEM_SHAPES = {
    "mnist_mlp1": ("mnist", (4, 11)),  # 10 logits + L2 penalty column
    "mnist_mlp2": ("mnist", (4, 11)),
    "mnist_lenet5": ("mnist", (4, 10)),
    "mnist_autoencoder": ("mnist", (4, 784)),
    "fmnist_mlp1": ("fashion-mnist", (4, 11)),
    "fmnist_mlp2": ("fashion-mnist", (4, 11)),
    "fmnist_2c2d": ("fashion-mnist", (4, 10)),
    "kmnist_mlp1": ("kmnist", (4, 11)),
    "cifar10_cnn": ("cifar-10-batches-py", (4, 10)),
    "cifar10_vgg11": ("cifar-10-batches-py", (4, 10)),
    "cifar10_3c3d": ("cifar-10-batches-py", (4, 11)),
}


@pytest.mark.parametrize("name", sorted(FILE_PROBLEM_SHAPES))
def test_every_file_problem_builds_from_tiny_files(tmp_path, name):
    folder, out_shape = FILE_PROBLEM_SHAPES[name]
    if folder.startswith("cifar"):
        (tmp_path / folder).mkdir()
        write_cifar_batch(tmp_path / folder / "test_batch", 30)
    else:
        write_mnist(tmp_path / folder, 30)
    problem = get_problem(name, data_dir=tmp_path)
    assert [len(problem.train), len(problem.validation), len(problem.test)] == [21, 3, 6]
    assert "file" in problem.tags and problem.description
    model = problem.make_model(0).eval()
    with torch.no_grad():
        out = model(problem.train.inputs[:4])
        loss = problem.loss(out, problem.train.targets[:4])
    assert out.shape == out_shape
    assert loss.shape == (4,) and torch.isfinite(loss).all()
    if name == "mnist_autoencoder":
        assert problem.accuracy is None
        torch.testing.assert_close(problem.train.targets, problem.train.inputs.reshape(21, 784))
    else:
        assert 0.0 <= problem.accuracy(out, problem.train.targets[:4]).item() <= 1.0


# ------------------------------------------------------------------ label ranges, identity


@pytest.mark.parametrize("split", ["test", "train"])
def test_idx_labels_outside_the_classes_are_refused_naming_file_and_label(tmp_path, split):
    folder = tmp_path / "mnist"
    write_mnist(folder, 30, 40)
    name = data.IDX_NAMES[split][1]
    labels = np.arange(30 if split == "test" else 40, dtype=np.uint8) % 10
    labels[17] = 12
    write_idx(folder / name, labels)
    with pytest.raises(DataFormatError, match=rf"{name}: label 12 at index 17 is outside 0\.\.9"):
        data.load_image_set(tmp_path, "mnist")
    with pytest.raises(DataFormatError, match=rf"{name}: label 12 at index 17"):
        get_problem("mnist_mlp1", data_dir=tmp_path)


def test_npz_labels_outside_the_classes_are_refused(tmp_path):
    folder = tmp_path / "kmnist"
    folder.mkdir()
    np.savez(folder / "kmnist-test-imgs.npz", numbered_images(20))
    labels = np.arange(20, dtype=np.uint8) % 10
    labels[3] = 255
    np.savez(folder / "kmnist-test-labels.npz", labels)
    with pytest.raises(DataFormatError, match=r"kmnist-test-labels\.npz: label 255 at index 3"):
        data.load_image_set(tmp_path, "kmnist")


def test_file_problems_carry_their_files_and_the_fingerprint_follows_the_content(tmp_path):
    write_mnist(tmp_path / "mnist", 50)
    prob = get_problem("mnist_mlp1", data_dir=tmp_path)
    assert [p.name for p in prob.data_files] == list(data.IDX_NAMES["test"])
    before = data.files_fingerprint(prob.data_files)
    assert before == data.files_fingerprint(list(prob.data_files)) and len(before) == 16
    labels = np.arange(50, dtype=np.uint8) % 10
    labels[0] = 1  # one label changed
    write_idx(tmp_path / "mnist" / data.IDX_NAMES["test"][1], labels)
    assert data.files_fingerprint(prob.data_files) != before
    assert data.files_fingerprint(()) is None
    assert get_problem("digits_mlp").data_files == ()
