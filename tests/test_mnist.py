"""MNIST and mnist-mini loading: verified content, and a clear DataError for every bad file.

The full-MNIST tests read ``$NEUROPLASTIC_DATA/mnist/`` and are skipped when the variable is
unset; the mnist-mini tests use the copy bundled in the package and always run.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import platformdirs
import pytest
import torch

from neuroplastic.errors import DataError
from neuroplastic.tasks import datasets
from neuroplastic.tasks.datasets import (
    DATASETS,
    Dataset,
    load_dataset,
    resolve_data_dir,
)
from neuroplastic.tasks.mnist import (
    MNIST_FILES,
    MNIST_MINI_FILES,
    find_mnist_file,
    load_mnist_arrays,
)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
MINI_PER_CLASS = 600


def full_mnist_dir() -> Path:
    """``$NEUROPLASTIC_DATA/mnist``, or skip the calling test when the variable is unset."""
    data_dir = os.environ.get("NEUROPLASTIC_DATA")
    if not data_dir:
        pytest.skip("NEUROPLASTIC_DATA is not set; full-MNIST tests read $NEUROPLASTIC_DATA/mnist/")
    return Path(data_dir) / "mnist"


@pytest.fixture(scope="module")
def full_mnist() -> Dataset:
    full_mnist_dir()
    return load_dataset("mnist", data_dir=os.environ["NEUROPLASTIC_DATA"], download=False)


@pytest.fixture(scope="module")
def mini() -> Dataset:
    return load_dataset("mnist-mini")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to open a network connection fail the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def mnist_copy(tmp_path: Path) -> Path:
    """A writable copy of the four full-MNIST .gz files in a temporary directory."""
    source = full_mnist_dir()
    copy = tmp_path / "mnist"
    copy.mkdir()
    for stem in MNIST_FILES:
        shutil.copyfile(source / f"{stem}.gz", copy / f"{stem}.gz")
    return copy


def assert_dataset_layout(data: Dataset, n_train: int) -> None:
    assert data.train_x.shape == (n_train, 784) and data.train_x.dtype == torch.float32
    assert data.train_y.shape == (n_train,) and data.train_y.dtype == torch.int64
    assert data.test_x.shape == (10000, 784) and data.test_x.dtype == torch.float32
    assert data.test_y.shape == (10000,) and data.test_y.dtype == torch.int64
    for images in (data.train_x, data.test_x):
        assert images.min() == 0.0 and images.max() == 1.0
    for labels in (data.train_y, data.test_y):
        assert labels.min() == 0 and labels.max() == 9
    assert data.train_x.device.type == "cpu"


# --- full MNIST --------------------------------------------------------------------------------


def test_full_mnist_has_the_published_layout_and_order(full_mnist: Dataset) -> None:
    assert_dataset_layout(full_mnist, n_train=60000)
    assert full_mnist.train_y[:5].tolist() == [5, 0, 4, 1, 9]
    assert full_mnist.test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert full_mnist.name == "mnist"
    assert full_mnist.source == str(full_mnist_dir())
    assert abs(full_mnist.train_x.mean().item() - 0.13066) < 1e-4


def test_uncompressed_files_load_as_well(tmp_path: Path) -> None:
    source = full_mnist_dir()
    for stem in MNIST_FILES:
        (tmp_path / stem).write_bytes(gzip.decompress((source / f"{stem}.gz").read_bytes()))
    arrays = load_mnist_arrays(tmp_path, MNIST_FILES, download=False)
    assert arrays["train_images"].shape == (60000, 28, 28)
    assert arrays["train_images"].dtype == np.uint8
    assert arrays["test_labels"][:5].tolist() == [7, 2, 1, 0, 4]


def truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "truncated"


def flip_byte_in_gzip(path: Path) -> str:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))
    return "corrupt or truncated gzip"


def flip_byte_in_content(path: Path) -> str:
    """Flip a byte of the uncompressed payload and store the result validly gzipped."""
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[-1] ^= 0x01
    path.write_bytes(gzip.compress(bytes(content), compresslevel=1, mtime=0))
    return "checksum mismatch: expected sha256"


def break_magic(path: Path) -> str:
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[0] = 0x08
    path.write_bytes(gzip.compress(bytes(content), compresslevel=1, mtime=0))
    return "bad magic"


def remove(path: Path) -> str:
    path.unlink()
    return "not found"


@pytest.mark.parametrize("stem", [TRAIN_IMAGES, TEST_LABELS])
@pytest.mark.parametrize(
    "damage", [truncate, flip_byte_in_gzip, flip_byte_in_content, break_magic, remove]
)
def test_damaged_file_raises_naming_it(mnist_copy: Path, no_network, stem, damage) -> None:
    expected_message = damage(mnist_copy / f"{stem}.gz")
    with pytest.raises(DataError, match=expected_message) as error:
        load_mnist_arrays(mnist_copy, MNIST_FILES, download=False)
    assert stem in error.value.message
    assert error.value.hint


def test_file_of_the_wrong_shape_is_rejected(mnist_copy: Path) -> None:
    shutil.copyfile(mnist_copy / f"{TEST_LABELS}.gz", mnist_copy / f"{TRAIN_LABELS}.gz")
    with pytest.raises(DataError, match=r"shape \(10000,\), expected \(60000,\)") as error:
        load_mnist_arrays(mnist_copy, MNIST_FILES, download=False)
    assert TRAIN_LABELS in error.value.message


def test_missing_directory_names_every_file_and_where_to_put_them(
    tmp_path: Path, no_network
) -> None:
    with pytest.raises(DataError) as error:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert str(tmp_path / "mnist") in error.value.message
    for stem in MNIST_FILES:
        assert stem in error.value.message
    assert "mnist-mini" in error.value.hint and "NEUROPLASTIC_DATA" in error.value.hint


def test_find_mnist_file_accepts_raw_or_gz(tmp_path: Path) -> None:
    assert find_mnist_file(tmp_path, TRAIN_LABELS) is None
    (tmp_path / f"{TRAIN_LABELS}.gz").write_bytes(b"")
    assert find_mnist_file(tmp_path, TRAIN_LABELS) == tmp_path / f"{TRAIN_LABELS}.gz"
    (tmp_path / TRAIN_LABELS).write_bytes(b"")
    assert find_mnist_file(tmp_path, TRAIN_LABELS) == tmp_path / TRAIN_LABELS


# --- mnist-mini ----------------------------------------------------------------------------------


def test_mnist_mini_is_balanced_and_has_the_full_test_set(mini: Dataset) -> None:
    assert_dataset_layout(mini, n_train=10 * MINI_PER_CLASS)
    assert torch.bincount(mini.train_y, minlength=10).tolist() == [MINI_PER_CLASS] * 10
    assert mini.name == "mnist-mini"
    assert Path(mini.source).is_dir()


def test_mnist_mini_is_the_selection_rule_applied_to_mnist(mini, full_mnist) -> None:
    labels = full_mnist.train_y.numpy()
    first_of_each_class = [np.flatnonzero(labels == c)[:MINI_PER_CLASS] for c in range(10)]
    keep = torch.from_numpy(np.sort(np.concatenate(first_of_each_class)))
    assert torch.equal(mini.train_x, full_mnist.train_x[keep])
    assert torch.equal(mini.train_y, full_mnist.train_y[keep])
    assert torch.equal(mini.test_x, full_mnist.test_x)
    assert torch.equal(mini.test_y, full_mnist.test_y)


def test_mnist_mini_ignores_data_dir(tmp_path: Path, no_network) -> None:
    data = load_dataset("mnist-mini", data_dir=tmp_path / "absent", download=False)
    assert len(data.train_y) == 10 * MINI_PER_CLASS


def test_damaged_bundled_mnist_mini_says_reinstall(tmp_path, monkeypatch, no_network) -> None:
    for path in datasets.BUNDLED_MNIST_MINI_DIR.glob("*.gz"):
        shutil.copyfile(path, tmp_path / path.name)
    flip_byte_in_content(tmp_path / f"{TRAIN_LABELS}.gz")
    monkeypatch.setattr(datasets, "BUNDLED_MNIST_MINI_DIR", tmp_path)
    with pytest.raises(DataError, match="bundled mnist-mini") as error:
        load_dataset("mnist-mini")
    assert TRAIN_LABELS in error.value.message
    assert "reinstall" in error.value.hint


def test_mini_checksums_share_the_full_test_set() -> None:
    for stem in ("t10k-images-idx3-ubyte", TEST_LABELS):
        assert MNIST_MINI_FILES[stem] == MNIST_FILES[stem]


# --- names and directories ------------------------------------------------------------------------


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar10'") as error:
        load_dataset("cifar10")
    for name in DATASETS:
        assert name in error.value.message


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEUROPLASTIC_DATA", raising=False)
    assert resolve_data_dir() == Path(platformdirs.user_cache_dir("neuroplastic"))
    monkeypatch.setenv("NEUROPLASTIC_DATA", str(tmp_path / "from-env"))
    assert resolve_data_dir() == tmp_path / "from-env"
    assert resolve_data_dir(tmp_path / "argument") == tmp_path / "argument"
    assert resolve_data_dir(str(tmp_path / "as-string")) == tmp_path / "as-string"
