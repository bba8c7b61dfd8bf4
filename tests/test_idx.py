"""IDX reading and writing: round trips, and a DataError naming the file for every damage."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from neuroplastic.errors import DataError
from neuroplastic.tasks.idx import (
    DTYPE_BY_CODE,
    idx_bytes,
    read_idx,
    read_idx_bytes,
    write_idx,
)

NAME = "some-dir/data-idx3-ubyte.gz"
NATIVE_DTYPES = [dtype.newbyteorder("=") for dtype in DTYPE_BY_CODE.values()]
GZIP_HEADER_BYTES = 10
GZIP_TRAILER_BYTES = 8  # CRC-32 and uncompressed size

idx_arrays = st.sampled_from(NATIVE_DTYPES).flatmap(
    lambda dtype: arrays(dtype, array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
)


def assert_names_file(error: pytest.ExceptionInfo[DataError], name: str = NAME) -> None:
    assert name in str(error.value)


@settings(max_examples=60, deadline=None)
@given(array=idx_arrays, compress=st.booleans())
def test_write_then_read_round_trips(array: np.ndarray, compress: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "array.idx"
        write_idx(path, array, compress)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
        back = read_idx(path, expected_shape=array.shape)
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    assert back.tobytes() == array.tobytes()  # bitwise, so NaNs and -0.0 count too


@settings(max_examples=60, deadline=None)
@given(array=idx_arrays, compress=st.booleans(), data=st.data())
def test_any_truncation_raises_naming_the_file(array, compress, data) -> None:
    encoded = idx_bytes(array, compress)
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    with pytest.raises(DataError) as error:
        read_idx_bytes(encoded[:cut], NAME)
    assert_names_file(error)


@settings(max_examples=60, deadline=None)
@given(array=idx_arrays, compress=st.booleans(), extra=st.binary(min_size=1, max_size=64))
def test_over_long_payload_raises_with_sizes(array, compress, extra) -> None:
    raw = idx_bytes(array, compress=False) + extra
    encoded = gzip.compress(raw, mtime=0) if compress else raw
    with pytest.raises(DataError, match="over-long") as error:
        read_idx_bytes(encoded, NAME)
    assert_names_file(error)
    assert f"i.e. {array.nbytes} bytes" in str(error.value)
    assert f"there are {array.nbytes + len(extra)}" in str(error.value)


@settings(max_examples=60, deadline=None)
@given(
    array=idx_arrays,
    compress=st.booleans(),
    position=st.integers(0, 1),
    value=st.integers(1, 255),
)
def test_nonzero_leading_bytes_are_a_bad_magic(array, compress, position, value) -> None:
    raw = bytearray(idx_bytes(array, compress=False))
    raw[position] = value
    encoded = gzip.compress(bytes(raw), mtime=0) if compress else bytes(raw)
    with pytest.raises(DataError, match="bad magic") as error:
        read_idx_bytes(encoded, NAME)
    assert_names_file(error)


@settings(max_examples=60, deadline=None)
@given(
    array=idx_arrays,
    compress=st.booleans(),
    code=st.integers(0, 255).filter(lambda code: code not in DTYPE_BY_CODE),
)
def test_unknown_type_code_is_a_bad_magic(array, compress, code) -> None:
    raw = bytearray(idx_bytes(array, compress=False))
    raw[2] = code
    encoded = gzip.compress(bytes(raw), mtime=0) if compress else bytes(raw)
    with pytest.raises(DataError, match="unknown element type code") as error:
        read_idx_bytes(encoded, NAME)
    assert_names_file(error)


def gzip_checked_positions(size: int) -> list[int]:
    """Byte positions of a gzip member whose change must be detected.

    Left out: the flags, mtime, extra-flags and OS bytes of the header (mostly ignored by
    readers) and the last deflate byte, whose padding bits after the end-of-block code are.
    """
    deflate_end = size - GZIP_TRAILER_BYTES
    return [0, 1, 2, *range(GZIP_HEADER_BYTES, deflate_end - 1), *range(deflate_end, size)]


@settings(max_examples=100, deadline=None)
@given(array=idx_arrays, data=st.data(), flip=st.integers(1, 255))
def test_corrupt_gzip_raises_naming_the_file(array, data, flip) -> None:
    encoded = bytearray(idx_bytes(array, compress=True))
    position = data.draw(st.sampled_from(gzip_checked_positions(len(encoded))), label="position")
    encoded[position] ^= flip
    with pytest.raises(DataError) as error:
        read_idx_bytes(bytes(encoded), NAME)
    assert_names_file(error)


@settings(max_examples=30, deadline=None)
@given(garbage=st.binary(min_size=0, max_size=200))
def test_gzip_magic_followed_by_garbage_is_a_corrupt_stream(garbage: bytes) -> None:
    with pytest.raises(DataError) as error:
        read_idx_bytes(b"\x1f\x8b" + garbage, NAME)
    assert_names_file(error)


def test_gzip_is_detected_by_content_not_by_name(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    raw_named_gz = tmp_path / "raw.gz"
    gzip_named_raw = tmp_path / "compressed-idx2"
    raw_named_gz.write_bytes(idx_bytes(array, compress=False))
    gzip_named_raw.write_bytes(idx_bytes(array, compress=True))
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)
    np.testing.assert_array_equal(read_idx(gzip_named_raw), array)


def test_compressed_output_is_deterministic(tmp_path: Path) -> None:
    array = np.arange(1000, dtype=np.uint8).reshape(10, 100)
    first, second = tmp_path / "a.gz", tmp_path / "b.gz"
    write_idx(first, array, compress=True)
    write_idx(second, array, compress=True)
    encoded = first.read_bytes()
    assert encoded == second.read_bytes()
    assert encoded[3] == 0, "no FNAME (or other) flag: the file name is not stored"
    assert encoded[4:8] == b"\0\0\0\0", "mtime is 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz", "b.gz"], "no temporary left"


def test_header_is_big_endian_as_in_mnist() -> None:
    encoded = idx_bytes(np.zeros((60000, 28, 28), dtype=np.uint8)[:2], compress=False)
    assert encoded[:16] == bytes.fromhex("00000803000000020000001c0000001c")
    assert idx_bytes(np.array([1], dtype=np.int32), False)[4:] == bytes.fromhex("0000000100000001")


def test_shape_mismatch_raises_naming_the_file() -> None:
    encoded = idx_bytes(np.zeros((3, 2), dtype=np.uint8), compress=True)
    with pytest.raises(DataError, match=r"shape \(3, 2\), expected \(2, 3\)") as error:
        read_idx_bytes(encoded, NAME, expected_shape=(2, 3))
    assert_names_file(error)


@pytest.mark.parametrize("content", [b"", b"\0\0", b"\0\0\x08\x02\0\0\0\x1c"])
def test_too_short_for_a_header(content: bytes) -> None:
    with pytest.raises(DataError, match="too short") as error:
        read_idx_bytes(content, NAME)
    assert_names_file(error)


def test_truncated_payload_states_expected_and_actual_bytes() -> None:
    encoded = idx_bytes(np.zeros((4, 5), dtype=np.float32), compress=False)
    with pytest.raises(DataError, match="truncated") as error:
        read_idx_bytes(encoded[:-3], NAME)
    assert "80 bytes" in str(error.value) and "there are 77" in str(error.value)


def test_missing_file_and_directory_raise_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope-idx1-ubyte"
    with pytest.raises(DataError, match="not found") as error:
        read_idx(missing)
    assert_names_file(error, str(missing))
    with pytest.raises(DataError, match="cannot be read") as error:
        read_idx(tmp_path)
    assert_names_file(error, str(tmp_path))


def test_unsupported_dtype_cannot_be_written() -> None:
    with pytest.raises(DataError, match="cannot write dtype"):
        idx_bytes(np.zeros(3, dtype=np.uint16), compress=False)
