"""Read and write IDX files, the container format of the original MNIST release.

An IDX file is a big-endian header (two zero bytes, a one-byte element-type code, a one-byte
number of dimensions, then one uint32 size per dimension) followed by the elements in row-major
order. Files may be gzip-compressed; compression is recognised by the gzip magic bytes rather
than by the file name, because renamed and hand-decompressed copies are common.

Every promise the header makes is checked, and any broken one raises :class:`DataError` naming
the file: a silently misread dataset would corrupt every result trained on it.
"""

from __future__ import annotations

import gzip
import os
import secrets
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from neuroplastic.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
GZIP_LEVEL = 9

#: Element types by IDX type code. Multi-byte types are big-endian on disk.
DTYPE_BY_CODE: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND_AND_SIZE = {
    (dtype.kind, dtype.itemsize): code for code, dtype in DTYPE_BY_CODE.items()
}
_PREAMBLE_BYTES = 4  # two zero bytes, the type code, the number of dimensions
_SIZE_BYTES = 4  # each dimension is a big-endian uint32
_MAX_DIM_SIZE = 2**32 - 1
_MAX_NDIM = 255

_REFETCH_HINT = "delete the file and download or copy it again"


def read_idx(path: str | Path, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a native-endian numpy array.

    ``expected_shape``, when given, is checked against the header so that a file of the wrong
    kind (labels where images were expected, a subset where the full set was expected) fails
    here with a clear message instead of deep inside training.
    """
    return read_idx_bytes(read_file_bytes(path), str(path), expected_shape)


def read_idx_bytes(
    data: bytes, name: str, expected_shape: Sequence[int] | None = None
) -> np.ndarray:
    """Parse the bytes of an IDX file (gzip or raw); ``name`` is used in error messages."""
    return parse_idx(decompress_if_gzip(data, name), name, expected_shape)


def read_file_bytes(path: str | Path) -> bytes:
    """Read a whole file, turning OS errors into a DataError that names the file."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{path}: file not found", "check the path, or download or copy the file there"
        ) from None
    except OSError as error:
        raise DataError(
            f"{path}: cannot be read ({error.strerror or error})",
            "check that it is a readable file, not a directory",
        ) from None


def is_gzip(data: bytes) -> bool:
    """True when ``data`` starts with the gzip magic bytes.

    An IDX file starts with two zero bytes, so the two formats can never be confused.
    """
    return data[:2] == GZIP_MAGIC


def decompress_if_gzip(data: bytes, name: str) -> bytes:
    """Return the uncompressed content of ``data``, decompressing only if it is gzip."""
    if not is_gzip(data):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{name}: corrupt or truncated gzip stream ({error})", _REFETCH_HINT
        ) from None


def parse_idx(raw: bytes, name: str, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """Parse uncompressed IDX bytes; see :func:`read_idx`."""
    dtype, shape, header_bytes = _parse_header(raw, name)
    _check_payload_size(raw, name, dtype, shape, header_bytes)
    if expected_shape is not None and shape != tuple(expected_shape):
        raise DataError(
            f"{name}: has shape {shape}, expected {tuple(expected_shape)}",
            "this is not the expected file (wrong split, labels vs images, or a subset): "
            "replace it with the right one",
        )
    count = _element_count(shape)
    elements = np.frombuffer(raw, dtype=dtype, count=count, offset=header_bytes)
    return elements.reshape(shape).astype(dtype.newbyteorder("="))


def _parse_header(raw: bytes, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (on-disk dtype, shape, header length), or raise for a short or foreign file."""
    if len(raw) < _PREAMBLE_BYTES:
        raise _too_short(name, len(raw), _PREAMBLE_BYTES)
    zero_a, zero_b, type_code, ndim = raw[:_PREAMBLE_BYTES]
    if zero_a != 0 or zero_b != 0:
        raise DataError(
            f"{name}: not an IDX file: bad magic number {raw[:_PREAMBLE_BYTES].hex()} "
            "(an IDX file starts with two zero bytes)",
            _REFETCH_HINT,
        )
    if type_code not in DTYPE_BY_CODE:
        known = ", ".join(f"0x{code:02X} {dt.name}" for code, dt in DTYPE_BY_CODE.items())
        raise DataError(
            f"{name}: not an IDX file: bad magic number {raw[:_PREAMBLE_BYTES].hex()} "
            f"(unknown element type code 0x{type_code:02X}; known: {known})",
            _REFETCH_HINT,
        )
    header_bytes = _PREAMBLE_BYTES + _SIZE_BYTES * ndim
    if len(raw) < header_bytes:
        raise _too_short(name, len(raw), header_bytes)
    shape = struct.unpack(f">{ndim}I", raw[_PREAMBLE_BYTES:header_bytes])
    return DTYPE_BY_CODE[type_code], tuple(shape), header_bytes


def _too_short(name: str, actual: int, needed: int) -> DataError:
    return DataError(
        f"{name}: too short for an IDX header: {actual} bytes, the header needs {needed}",
        f"the file is truncated or empty: {_REFETCH_HINT}",
    )


def _check_payload_size(
    raw: bytes, name: str, dtype: np.dtype, shape: tuple[int, ...], header_bytes: int
) -> None:
    """Require exactly the payload the header promises: no less (truncated), no more."""
    expected = _element_count(shape) * dtype.itemsize
    actual = len(raw) - header_bytes
    if actual == expected:
        return
    problem = "truncated" if actual < expected else "over-long"
    raise DataError(
        f"{name}: {problem} payload: the header promises shape {shape} of {dtype.name}, "
        f"i.e. {expected} bytes after the {header_bytes}-byte header, but there are {actual}",
        _REFETCH_HINT,
    )


def _element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def idx_bytes(array: np.ndarray, compress: bool) -> bytes:
    """Encode ``array`` as IDX bytes, gzip-compressed deterministically if ``compress``."""
    array = np.asarray(array)
    code = _type_code_for(array.dtype)
    _check_writable_shape(array.shape)
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = array.astype(DTYPE_BY_CODE[code]).tobytes(order="C")
    raw = header + payload
    return deterministic_gzip(raw) if compress else raw


def write_idx(path: str | Path, array: np.ndarray, compress: bool) -> None:
    """Write ``array`` as an IDX file, atomically (a reader never sees a half-written file).

    With ``compress`` the gzip wrapper is deterministic (mtime 0, no file name, level 9), so the
    same array always gives the same bytes (with the same zlib), which keeps checked-in data
    files reproducible.
    """
    write_bytes_atomically(Path(path), idx_bytes(array, compress))


def deterministic_gzip(data: bytes) -> bytes:
    """Gzip ``data`` with mtime 0, no stored file name and level 9."""
    # zlib's own gzip wrapper writes mtime 0 and no file name.
    return zlib.compress(data, level=GZIP_LEVEL, wbits=31)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    temporary, handle = create_temporary_beside(path)
    try:
        with handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def create_temporary_beside(path: Path) -> tuple[Path, BinaryIO]:
    """Create a new hidden ``.<name>.<random>.part`` file in ``path``'s directory.

    Beside the target, so that ``os.replace`` is an atomic rename on the same file system;
    created with ``open(..., "xb")`` rather than ``tempfile.mkstemp`` so that the final file
    gets the usual umask permissions instead of mkstemp's owner-only 0600.
    """
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
        try:
            return temporary, temporary.open("xb")
        except FileExistsError:
            continue


def _type_code_for(dtype: np.dtype) -> int:
    code = _CODE_BY_KIND_AND_SIZE.get((dtype.kind, dtype.itemsize))
    if code is None:
        known = ", ".join(dt.name for dt in DTYPE_BY_CODE.values())
        raise DataError(f"cannot write dtype {dtype} as IDX", f"cast the array to one of: {known}")
    return code


def _check_writable_shape(shape: tuple[int, ...]) -> None:
    if len(shape) > _MAX_NDIM or any(size > _MAX_DIM_SIZE for size in shape):
        raise DataError(
            f"cannot write shape {shape} as IDX",
            f"IDX allows at most {_MAX_NDIM} dimensions of at most {_MAX_DIM_SIZE} each",
        )
