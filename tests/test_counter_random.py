"""The counter-based random stream (``kernels.counter_random``): the NumPy and the compiled
implementations give the same bits, the values are uniform and independent-looking, and every
part of the key changes the stream."""

import itertools

import numpy as np
import pytest

from neuroplastic.kernels import counter_random as cr

MASK = 2**64 - 1


def mix_int(z: int) -> int:
    """SplitMix64's output function on Python integers: an independent check of the wrapping
    uint64 arithmetic."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_mix_is_splitmix64():
    """SplitMix64 seeded with 0 outputs mix(k G), k = 1, 2, 3: its published first values."""
    words = np.arange(1, 4, dtype=np.uint64) * cr.GOLDEN
    assert [int(v) for v in cr.mix(words)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F,
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**64, size=1000, dtype=np.uint64)
    assert [int(v) for v in cr.mix(words)] == [mix_int(int(v)) for v in words]


def test_uniforms_are_the_documented_function_of_the_key():
    key = cr.stream_key(7, 2)
    expected = mix_int(int(cr.ROOT) ^ mix_int((7 + int(cr.GOLDEN)) & MASK))
    expected = mix_int(expected ^ mix_int((2 + int(cr.GOLDEN)) & MASK))
    assert key == expected
    u = cr.uniforms(key, 5, cr.TARGET, 1, steps=4, units=3)
    node = key
    for part in (5, cr.TARGET, 1, 3):  # example, phase, population, step 3
        node = mix_int(node ^ mix_int((part + int(cr.GOLDEN)) & MASK))
    word = mix_int(node ^ mix_int((2 + int(cr.GOLDEN)) & MASK))  # unit 2
    assert u[3, 2] == (word >> 11) * 2.0**-53
    u32 = cr.uniforms(key, 5, cr.TARGET, 1, steps=4, units=3, dtype=np.float32)
    assert u32.dtype == np.float32 and u32[3, 2] == np.float32((word >> 40) * 2.0**-24)
    # float32 uniforms are the float64 ones truncated to their top 24 bits
    assert np.array_equal(u32, (np.floor(u * 2**24) / 2**24).astype(np.float32))
    with pytest.raises(ValueError, match="float64 or float32"):
        cr.uniforms(key, 0, 0, 0, 2, 2, dtype=np.float16)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_compiled_draws_equal_the_vectorised_ones_bit_for_bit(dtype):
    numba = pytest.importorskip("numba")
    from neuroplastic.kernels.numba_dendrites import _codes, _combine, _mix

    @numba.njit
    def draw(key, example, phase, layer, steps, units, codes, shift, scale, out):
        node = _combine(_combine(_combine(key, np.uint64(example)), np.uint64(phase)),
                        np.uint64(layer))  # fmt: skip
        for t in range(steps):
            row = _combine(node, np.uint64(t))
            for j in range(units):
                out[t, j] = out.dtype.type(_mix(row ^ codes[j]) >> shift) * scale

    bits = cr.mantissa_bits(dtype)
    for seed, replica, example, phase, layer in [(0, 0, 0, 0, 0), (3, 1, 12345, 1, 2),
                                                 (-1, 7, 2**40, 2, 1)]:  # fmt: skip
        key = cr.stream_key(seed, replica)
        out = np.empty((37, 801), dtype=dtype)
        draw(np.uint64(key), example, phase, layer, 37, 801, _codes(801), np.uint64(64 - bits),
             dtype(2.0**-bits), out)  # fmt: skip
        expected = cr.uniforms(key, example, phase, layer, 37, 801, dtype)
        assert np.array_equal(out, expected)


def ks_statistic(u: np.ndarray) -> float:
    """sqrt(n) times the Kolmogorov-Smirnov distance of ``u`` from U(0, 1)."""
    x = np.sort(u.ravel().astype(np.float64))
    n = len(x)
    above = np.arange(1, n + 1) / n - x
    below = x - np.arange(n) / n
    return float(np.sqrt(n) * max(above.max(), below.max()))


def pair_chi_square(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Pearson's chi-square of the pairs (a, b) on a bins x bins grid, in standard deviations
    from its mean under independence (bins^2 - 1 degrees of freedom)."""
    counts = np.histogram2d(a.ravel(), b.ravel(), bins=bins, range=[[0, 1], [0, 1]])[0]
    expected = a.size / bins**2
    chi = ((counts - expected) ** 2 / expected).sum()
    df = bins**2 - 1
    return float((chi - df) / np.sqrt(2 * df))


def uniformity(u: np.ndarray) -> tuple[float, float, float]:
    """KS of all values; chi-square of neighbours in a row (units) and in a column (steps)."""
    return ks_statistic(u), pair_chi_square(u[:, :-1], u[:, 1:]), pair_chi_square(u[:-1], u[1:])


def passes(statistics) -> bool:
    # KS: 1.95 is the 0.1 % point; chi-square: 5 standard deviations
    ks, rows, columns = statistics
    return ks < 1.95 and abs(rows) < 5 and abs(columns) < 5


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_values_are_uniform_and_neighbours_independent(dtype):
    """A fixed sample (deterministic: the stream is a function), 200 x 1000 per population,
    for a few keys; a plain counter (a Weyl sequence: uniform, but neighbours on lines) and an
    unmixed one fail the same checks."""
    for seed, example, phase, layer in [(0, 0, 0, 0), (1, 999, 1, 2), (2**63, 3, 2, 1)]:
        u = cr.uniforms(cr.stream_key(seed), example, phase, layer, 200, 1000, dtype)
        assert u.min() >= 0 and u.max() < 1
        assert passes(uniformity(u)), uniformity(u)
    counter = np.arange(200 * 1000, dtype=np.uint64).reshape(200, 1000)
    weyl = cr.to_uniform(counter * cr.GOLDEN)
    assert ks_statistic(weyl) < 1.95 and not passes(uniformity(weyl))
    unmixed = cr.to_uniform(counter << np.uint64(40))
    assert not passes(uniformity(unmixed))


def test_every_part_of_the_key_changes_the_stream():
    """Streams that differ in one part of the key (seed, replica, example, phase, population)
    share no values and are uncorrelated; keys of a grid of seeds and replicas are distinct."""
    base = dict(seed=3, replica=1, example=10, phase=0, layer=1)
    variants = [base] + [{**base, name: base[name] + 1} for name in base]

    def stream(seed, replica, example, phase, layer):
        return cr.uniforms(cr.stream_key(seed, replica), example, phase, layer, 50, 200)

    values = [stream(**v) for v in variants]
    for a, b in itertools.combinations(values, 2):
        assert not np.any(a == b)
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < 5 / np.sqrt(a.size)
    keys = {cr.stream_key(s, r) for s in range(50) for r in range(20)}
    assert len(keys) == 1000
    # the seed is taken modulo 2^64
    assert cr.stream_key(-1) == cr.stream_key(2**64 - 1)


def test_counter_stream_keys():
    stream = cr.CounterStream.of([4, 5], [0, 3], example=9)
    assert stream.keys == (cr.stream_key(4, 0), cr.stream_key(5, 3)) and stream.example == 9
    assert stream.words().dtype == np.uint64
    with pytest.raises(ValueError, match="replica number per seed"):
        cr.CounterStream.of([1, 2], [0])


def test_the_torch_hash_equals_the_numpy_hash_bit_for_bit():
    """``combine_tensor``/``to_uniform_tensor`` (int64 tensors holding uint64 bits, so that the
    draws happen on the network's device) against the NumPy words, over keys and parts across
    the whole 64-bit range, the top bit set included."""
    import torch

    generator = np.random.default_rng(3)
    keys = generator.integers(0, 2**64, 4000, dtype=np.uint64, endpoint=False)
    parts = np.concatenate([
        generator.integers(0, 2**64, 3996, dtype=np.uint64, endpoint=False),
        np.asarray([0, 1, 2**63, 2**64 - 1], dtype=np.uint64),
    ])  # fmt: skip
    words = cr.combine(keys, parts)
    tensor = cr.combine_tensor(cr.words_tensor(keys), cr.words_tensor(parts))
    assert tensor.dtype == torch.int64
    assert np.array_equal(words.view(np.int64), tensor.numpy())
    assert (words >= 2**63).any()  # words with the sign bit set were covered
    for np_dtype, dtype in [(np.float64, torch.float64), (np.float32, torch.float32)]:
        assert np.array_equal(cr.to_uniform(words, np_dtype), cr.to_uniform_tensor(tensor, dtype))
    assert np.array_equal(cr.words_tensor([-1, 5]).numpy(), np.asarray([-1, 5]))
    with pytest.raises(ValueError, match="float64 or float32"):
        cr.to_uniform_tensor(tensor, torch.float16)
