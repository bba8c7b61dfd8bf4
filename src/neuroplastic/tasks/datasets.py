"""The datasets experiments train on, as whole tensors on the requested device.

MNIST is small enough (60,000 x 784 float32 = 188 MB) to live in one tensor, and indexing a
tensor with a random permutation is far faster than a DataLoader, so there is no DataLoader here.

Two datasets are known:

* ``mnist``: the full original MNIST, read from ``<data_dir>/mnist/`` and downloaded there if
  missing (see :func:`resolve_data_dir`).
* ``mnist-mini``: a 6,000-image class-balanced training subset plus the full 10,000-image test
  set, bundled inside the package, so tests and quick runs work offline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs
import torch

from neuroplastic.errors import DataError
from neuroplastic.tasks.mnist import MNIST_FILES, MNIST_MINI_FILES, load_mnist_arrays

DATASETS = ("mnist", "mnist-mini")
DATA_ENV_VAR = "NEUROPLASTIC_DATA"
MNIST_SUBDIR = "mnist"
BUNDLED_MNIST_MINI_DIR = Path(__file__).parent / "data" / "mnist-mini"
PIXEL_MAX = 255.0


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held as whole tensors.

    ``train_x``: (N_train, 784) float32 pixels scaled to [0, 1], rows are 28x28 images flattened
    row-major; ``train_y``: (N_train,) int64 classes 0..9; ``test_x``: (10000, 784) float32;
    ``test_y``: (10000,) int64. All four are on the device requested from :func:`load_dataset`.
    ``source`` is the directory the files were read from, recorded with results so a run can
    say which copy of the data it used.
    """

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    source: str


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$NEUROPLASTIC_DATA``, else the user cache.

    The user cache is ``platformdirs.user_cache_dir("neuroplastic")`` (e.g.
    ``~/.cache/neuroplastic`` on Linux): downloaded data can always be fetched again, so it
    belongs in a cache, not among a user's documents.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_ENV_VAR, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    return Path(platformdirs.user_cache_dir("neuroplastic"))


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) as tensors on ``device``.

    ``mnist`` reads ``<data_dir>/mnist/`` (``data_dir`` as in :func:`resolve_data_dir`),
    downloading missing files there from ``mirrors`` when ``download`` is true. ``mnist-mini``
    reads the copy bundled in the package and ignores ``data_dir``, ``download`` and
    ``mirrors``. Every file is verified against its SHA-256; any problem raises
    :class:`DataError`.
    """
    if name == "mnist":
        directory = resolve_data_dir(data_dir) / MNIST_SUBDIR
        arrays = load_mnist_arrays(directory, MNIST_FILES, download=download, mirrors=mirrors)
    elif name == "mnist-mini":
        directory = BUNDLED_MNIST_MINI_DIR
        arrays = _load_bundled_mnist_mini()
    else:
        raise DataError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}",
            "pick one of the valid names ('mnist-mini' is bundled and needs no download)",
        )
    return _to_dataset(name, arrays, str(directory), torch.device(device))


def _load_bundled_mnist_mini() -> dict[str, np.ndarray]:
    """The bundled subset; a problem here means a damaged installation, not bad user data."""
    try:
        return load_mnist_arrays(BUNDLED_MNIST_MINI_DIR, MNIST_MINI_FILES, download=False)
    except DataError as error:
        raise DataError(
            f"the bundled mnist-mini data is damaged: {error.message}",
            "reinstall neuroplastic (pip install --force-reinstall neuroplastic), or use the "
            "full dataset 'mnist'",
        ) from None


def _to_dataset(
    name: str, arrays: dict[str, np.ndarray], source: str, device: torch.device
) -> Dataset:
    return Dataset(
        name=name,
        train_x=_images_to_tensor(arrays["train_images"], device),
        train_y=_labels_to_tensor(arrays["train_labels"], device),
        test_x=_images_to_tensor(arrays["test_images"], device),
        test_y=_labels_to_tensor(arrays["test_labels"], device),
        source=source,
    )


def _images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 784) float32 in [0, 1]; converted on the device, because
    moving uint8 moves a quarter of the bytes."""
    flat = torch.from_numpy(images.reshape(len(images), -1))
    return flat.to(device).to(torch.float32).div_(PIXEL_MAX)


def _labels_to_tensor(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N,) uint8 -> (N,) int64, the dtype cross-entropy and indexing expect."""
    return torch.from_numpy(labels).to(device=device, dtype=torch.int64)
