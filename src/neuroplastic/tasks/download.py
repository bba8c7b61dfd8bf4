"""Download a data file from a list of mirrors and keep it only if its checksum is right.

Public dataset hosts come and go (yann.lecun.com has been flaky for years), so every file is
tried on each mirror in turn. A download is written to a temporary file beside its destination,
checked against the SHA-256 of its *uncompressed* content (so a mirror may serve the file gzipped
or not, and any deterministic re-compression is accepted), and only then renamed into place.
An interrupted or corrupt download therefore never leaves a file that a later run would trust.

Only the standard library's urllib is used, so downloading adds no dependency.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from neuroplastic import __version__
from neuroplastic.errors import DataError
from neuroplastic.tasks.idx import GZIP_MAGIC, create_temporary_beside

#: Base URLs tried in order; the files are ``<base><filename>``. These are the public MNIST
#: mirrors torchvision uses: the PyTorch CI S3 bucket first (reliable), then the original site.
DEFAULT_MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRRORS_ENV_VAR = "NEUROPLASTIC_MNIST_MIRRORS"

_CHUNK_BYTES = 1 << 16
_USER_AGENT = f"neuroplastic/{__version__} (+urllib)"

ProgressCallback = Callable[[int], None]


def resolve_mirrors(mirrors: Sequence[str] | None = None) -> tuple[str, ...]:
    """The mirrors to try: the argument, else ``$NEUROPLASTIC_MNIST_MIRRORS``, else the defaults.

    The environment variable is a comma-separated list of base URLs, so a site with its own
    cache (or a test with a local server) can redirect every download without code changes.
    """
    if mirrors is not None:
        return tuple(mirrors)
    from_env = tuple(
        url.strip() for url in os.environ.get(MIRRORS_ENV_VAR, "").split(",") if url.strip()
    )
    return from_env or DEFAULT_MNIST_MIRRORS


def mirror_url(base: str, filename: str) -> str:
    """Join a mirror's base URL and a file name, whether or not the base ends in a slash."""
    return f"{base.rstrip('/')}/{filename}"


def download_verified(
    filename: str,
    dest_dir: str | Path,
    sha256_uncompressed: str,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    show_progress: bool | None = None,
) -> Path:
    """Download ``filename`` into ``dest_dir`` from the first mirror that serves a good copy.

    A copy is good when the SHA-256 of its uncompressed content (gunzipped if it is gzip)
    equals ``sha256_uncompressed``. Returns the path of the verified file,
    ``dest_dir/filename``. Raises :class:`DataError` listing every mirror and why it failed
    when none serves a good copy; in every outcome no partial or temporary file is left behind.

    ``mirrors`` defaults as in :func:`resolve_mirrors`. ``timeout`` (seconds) bounds each
    network operation. ``show_progress`` defaults to "only when stderr is a terminal", so
    logs and CI output stay clean.
    """
    dest_dir = _ensure_directory(Path(dest_dir))
    destination = dest_dir / filename
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    failures: list[tuple[str, str]] = []
    for base in resolve_mirrors(mirrors):
        url = mirror_url(base, filename)
        failure = _try_mirror(url, destination, sha256_uncompressed, timeout, show_progress)
        if failure is None:
            return destination
        failures.append((url, failure))
    raise _all_mirrors_failed(filename, dest_dir, failures)


def _ensure_directory(directory: Path) -> Path:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the data directory {directory} ({error.strerror or error})",
            "choose a writable directory with NEUROPLASTIC_DATA or --data-dir",
        ) from None
    return directory


def _try_mirror(
    url: str, destination: Path, sha256_uncompressed: str, timeout: float, show_progress: bool
) -> str | None:
    """Fetch ``url`` and install it at ``destination`` if verified; else return why not."""
    temporary, sink = create_temporary_beside(destination)
    try:
        with sink:
            _fetch(url, sink, timeout, show_progress)
        actual = uncompressed_sha256(temporary)
        if actual != sha256_uncompressed:
            return f"checksum mismatch: expected sha256 {sha256_uncompressed}, got {actual}"
        os.replace(temporary, destination)
        return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code} {error.reason}"
    except urllib.error.URLError as error:
        return f"cannot connect ({error.reason})"
    except TimeoutError:
        return f"timed out after {timeout:g} s"
    except (OSError, http.client.HTTPException, ValueError, EOFError, zlib.error) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        temporary.unlink(missing_ok=True)


def _fetch(url: str, sink: BinaryIO, timeout: float, show_progress: bool) -> None:
    """Stream ``url`` into ``sink``; fail if the server closes before its announced length."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        announced = _announced_length(response)
        with _progress_reporter(url.rsplit("/", 1)[-1], announced, show_progress) as advance:
            received = _copy_stream(response, sink, advance)
    if announced is not None and received != announced:
        raise OSError(f"connection closed after {received} of {announced} bytes")


def _announced_length(response: http.client.HTTPResponse) -> int | None:
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _copy_stream(source: BinaryIO, sink: BinaryIO, advance: ProgressCallback) -> int:
    received = 0
    while chunk := source.read(_CHUNK_BYTES):
        sink.write(chunk)
        received += len(chunk)
        advance(len(chunk))
    return received


@contextmanager
def _progress_reporter(label: str, total: int | None, visible: bool) -> Iterator[ProgressCallback]:
    """Yield an ``advance(n_bytes)`` callback that drives a rich bar, or does nothing."""
    if not visible:
        yield _ignore_progress
        return
    with _make_progress_bar() as progress:
        task = progress.add_task(label, total=total)
        yield lambda n_bytes: progress.advance(task, n_bytes)


def _ignore_progress(n_bytes: int) -> None:
    """Progress callback for quiet downloads (stderr is a log file or a pipe)."""


def _make_progress_bar() -> Progress:
    """A transient download bar on stderr, so stdout stays machine-readable."""
    return Progress(
        TextColumn("downloading {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_progress_console(),
        transient=True,
    )


def _progress_console() -> Console:
    """Where the bar is drawn: stderr (a seam that tests redirect)."""
    return Console(stderr=True)


def uncompressed_sha256(path: Path) -> str:
    """SHA-256 of a file's content, gunzipped first if it starts with the gzip magic bytes.

    Streams the file, so memory use stays small whatever the file size. Raises EOFError,
    zlib.error or OSError for a corrupt or truncated gzip stream.
    """
    digest = hashlib.sha256()
    with path.open("rb") as source:
        compressed = source.read(len(GZIP_MAGIC)) == GZIP_MAGIC
        source.seek(0)
        chunks = _gunzipped_chunks(source) if compressed else _chunks(source)
        for chunk in chunks:
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(_CHUNK_BYTES):
        yield chunk


def _gunzipped_chunks(source: BinaryIO) -> Iterator[bytes]:
    """Decompress a gzip stream of one or more members, checking each member's CRC and size."""
    with gzip.GzipFile(fileobj=source, mode="rb") as unzipped:
        yield from _chunks(unzipped)


def offline_hint(dest_dir: Path) -> str:
    """How to get the MNIST files by hand, for machines without internet access."""
    return (
        "if this machine is offline, copy the four MNIST files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; raw or .gz) "
        f"into {dest_dir}/ (that is, <data_dir>/mnist/), or point NEUROPLASTIC_DATA or "
        "--data-dir at a directory whose mnist/ subdirectory holds them, or use the bundled "
        "dataset 'mnist-mini', which needs no download; other mirrors can be set with "
        f"{MIRRORS_ENV_VAR} (comma-separated base URLs)"
    )


def _all_mirrors_failed(
    filename: str, dest_dir: Path, failures: list[tuple[str, str]]
) -> DataError:
    if not failures:
        return DataError(
            f"cannot download {filename}: the list of mirrors is empty", offline_hint(dest_dir)
        )
    lines = "\n".join(f"  - {url}: {reason}" for url, reason in failures)
    return DataError(
        f"cannot download {filename} into {dest_dir}: every mirror failed:\n{lines}",
        offline_hint(dest_dir),
    )
