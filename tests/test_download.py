"""Downloads from mirrors, against a real HTTP server on 127.0.0.1: never the internet.

The server serves a temporary directory: ``/good/`` holds correct files, ``/corrupt/`` the same
names with wrong content, ``/missing/`` nothing (404), and ``/cut/...`` announces a full
Content-Length but closes the connection half-way.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from neuroplastic.errors import DataError
from neuroplastic.tasks import download
from neuroplastic.tasks.download import (
    DEFAULT_MNIST_MIRRORS,
    MIRRORS_ENV_VAR,
    download_verified,
    resolve_mirrors,
)
from neuroplastic.tasks.idx import idx_bytes
from neuroplastic.tasks.mnist import MNIST_FILES, load_mnist_arrays

FILENAME = "sample-idx2-ubyte.gz"
SAMPLE = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)
SAMPLE_RAW = idx_bytes(SAMPLE, compress=False)
SAMPLE_SHA256 = hashlib.sha256(SAMPLE_RAW).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, plus ``/cut/<path>``: a response that stops half-way through."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming convention
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        content = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[: len(content) // 2])
        self.close_connection = True
        return None

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port); yield the base URL."""
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "served"
    (root / "good").mkdir(parents=True)
    (root / "corrupt").mkdir()
    (root / "missing").mkdir()
    (root / "good" / FILENAME).write_bytes(idx_bytes(SAMPLE, compress=True))
    (root / "corrupt" / FILENAME).write_bytes(idx_bytes(SAMPLE[::-1], compress=True))
    with serve_directory(root) as base_url:
        yield base_url


@pytest.fixture
def dest_dir(tmp_path: Path) -> Path:
    return tmp_path / "dest"


def unused_port_url() -> str:
    """A URL on which nothing listens, so connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def names_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_good_file_is_downloaded_and_verified(server: str, dest_dir: Path) -> None:
    path = download_verified(FILENAME, dest_dir, SAMPLE_SHA256, mirrors=[f"{server}/good/"])
    assert path == dest_dir / FILENAME
    assert path.read_bytes() == idx_bytes(SAMPLE, compress=True)
    assert names_in(dest_dir) == [FILENAME]


def test_corrupt_mirror_is_rejected_and_the_next_used(server: str, dest_dir: Path) -> None:
    mirrors = [f"{server}/corrupt/", f"{server}/good"]  # with and without the trailing slash
    path = download_verified(FILENAME, dest_dir, SAMPLE_SHA256, mirrors=mirrors)
    assert path.read_bytes() == idx_bytes(SAMPLE, compress=True)
    assert names_in(dest_dir) == [FILENAME]


def test_missing_mirror_404_is_skipped(server: str, dest_dir: Path) -> None:
    mirrors = [f"{server}/missing/", f"{server}/good/"]
    download_verified(FILENAME, dest_dir, SAMPLE_SHA256, mirrors=mirrors)
    assert names_in(dest_dir) == [FILENAME]


def test_interrupted_transfer_is_rejected(server: str, dest_dir: Path) -> None:
    mirrors = [f"{server}/cut/good/", f"{server}/good/"]
    download_verified(FILENAME, dest_dir, SAMPLE_SHA256, mirrors=mirrors)
    assert names_in(dest_dir) == [FILENAME]


def test_all_mirrors_bad_lists_each_and_leaves_nothing(server: str, dest_dir: Path) -> None:
    refused = unused_port_url()
    mirrors = [f"{server}/corrupt/", f"{server}/missing/", f"{server}/cut/good/", refused]
    with pytest.raises(DataError) as error:
        download_verified(FILENAME, dest_dir, SAMPLE_SHA256, mirrors=mirrors, timeout=5)
    message = error.value.message
    assert FILENAME in message
    for mirror in mirrors:
        assert mirror + FILENAME in message
    assert "checksum mismatch" in message and "404" in message
    assert "connection closed after" in message and "cannot connect" in message
    assert "mnist-mini" in error.value.hint and "NEUROPLASTIC_DATA" in error.value.hint
    assert names_in(dest_dir) == [], "no file and no temporary file is left behind"


def test_existing_bad_file_is_replaced_only_by_a_verified_one(server, dest_dir) -> None:
    dest_dir.mkdir()
    (dest_dir / FILENAME).write_bytes(b"stale")
    with pytest.raises(DataError):
        download_verified(FILENAME, dest_dir, SAMPLE_SHA256, mirrors=[f"{server}/corrupt/"])
    download_verified(FILENAME, dest_dir, SAMPLE_SHA256, mirrors=[f"{server}/good/"])
    assert (dest_dir / FILENAME).read_bytes() == idx_bytes(SAMPLE, compress=True)
    assert names_in(dest_dir) == [FILENAME]


def test_progress_bar_when_asked(server: str, dest_dir: Path, monkeypatch) -> None:
    shown = io.StringIO()
    terminal = Console(file=shown, force_terminal=True, width=100)
    monkeypatch.setattr(download, "_progress_console", lambda: terminal)
    mirrors = [f"{server}/good/"]
    download_verified(FILENAME, dest_dir, SAMPLE_SHA256, mirrors=mirrors, show_progress=True)
    assert "downloading" in shown.getvalue()
    assert names_in(dest_dir) == [FILENAME]


def test_quiet_when_stderr_is_not_a_terminal(server, dest_dir, monkeypatch) -> None:
    def fail() -> None:
        raise AssertionError("a progress bar was drawn although stderr is not a terminal")

    monkeypatch.setattr(download, "_make_progress_bar", fail)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    download_verified(FILENAME, dest_dir, SAMPLE_SHA256, mirrors=[f"{server}/good/"])
    assert names_in(dest_dir) == [FILENAME]


def test_mirrors_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MIRRORS_ENV_VAR, raising=False)
    assert resolve_mirrors() == DEFAULT_MNIST_MIRRORS
    assert any("ossci-datasets" in url for url in DEFAULT_MNIST_MIRRORS)
    monkeypatch.setenv(MIRRORS_ENV_VAR, " http://a/mnist/ ,http://b/,")
    assert resolve_mirrors() == ("http://a/mnist/", "http://b/")
    assert resolve_mirrors(["http://c/"]) == ("http://c/",)


def test_load_mnist_arrays_downloads_the_missing_files(tmp_path: Path) -> None:
    data_dir = os.environ.get("NEUROPLASTIC_DATA")
    if not data_dir:
        pytest.skip("NEUROPLASTIC_DATA is not set; this test serves $NEUROPLASTIC_DATA/mnist/")
    target = tmp_path / "empty"
    with serve_directory(Path(data_dir) / "mnist") as mirror:
        arrays = load_mnist_arrays(target, MNIST_FILES, download=True, mirrors=[mirror])
    assert names_in(target) == sorted(f"{stem}.gz" for stem in MNIST_FILES)
    assert arrays["train_images"].shape == (60000, 28, 28)
    assert arrays["train_labels"][:5].tolist() == [5, 0, 4, 1, 9]
    assert arrays["test_labels"][:5].tolist() == [7, 2, 1, 0, 4]
