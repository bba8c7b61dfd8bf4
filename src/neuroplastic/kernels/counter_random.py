"""Counter-based uniforms: every uniform a pure function of its key, with no generator state.

A stream drawn from a stateful generator depends on everything drawn from it before, so the spikes
of one example depend on how the examples and replicas were batched (issue 17). Here the uniform
of a neuron at a time step is a hash of where it sits::

    mix(z)        = SplitMix64's output function on 64-bit words (Steele, Lea & Flood 2014, "Fast
                    splittable pseudorandom number generators", OOPSLA; the shifts and multipliers
                    of Stafford's "variant 13"): a bijection with full avalanche
    combine(k, p) = mix(k XOR mix(p + G))                G = 2^64 / golden ratio, odd
    key           = combine(combine(ROOT, seed), replica)                     (stream_key)
    h             = combine(...combine(key, example), phase), layer), step), neuron)
    uniform       = (h >> (64 - m)) 2^-m                 m = 53 (float64) or 24 (float32)

``combine(k, .)`` is injective for a fixed ``k`` (both ``mix`` and the XOR are bijections), so
different parts under one key never share a value; keys of different parents collide only by
chance (2^-64). Both float conversions keep the top bits of ``h``: a float32 uniform is the
float64 one truncated to 24 bits, and values are multiples of ``2^-m`` in [0, 1), exactly.

This module computes them vectorised with NumPy and, on any device, with PyTorch (``*_tensor``:
int64 tensors holding the uint64 bits, so that a phase's uniforms for every replica are drawn
where the network runs, in one pass); ``kernels.numba_dendrites`` draws the same values one at a
time inside its compiled loop, from the same constants (all three tested bit for bit in
``tests/test_counter_random.py``). ``layer`` numbers the spiking populations from the input: 0 the
input, 1 the first layer above it, and so on.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
"""2^64 divided by the golden ratio: SplitMix64's increment (odd, so ``p + G`` is a bijection)."""
ROOT = np.uint64(0x6E6575726F706C61)
"""The root key (ASCII 'neuropla'): a stream of seed 0 does not start from the word 0."""
SHIFT_1, SHIFT_2, SHIFT_3 = np.uint64(30), np.uint64(27), np.uint64(31)
MULTIPLY_1 = np.uint64(0xBF58476D1CE4E5B9)
MULTIPLY_2 = np.uint64(0x94D049BB133111EB)

FORWARD, TARGET, TEST = 0, 1, 2
"""The ``phase`` part of a key: a training example's forward and target phases, a test phase."""


_BITS = {np.dtype(np.float64): 53, np.dtype(np.float32): 24}


def mantissa_bits(dtype) -> int:
    """Bits of a uniform of ``dtype`` (float64: 53, float32: 24): the top bits of the hash."""
    bits = _BITS.get(dtype if isinstance(dtype, np.dtype) else np.dtype(dtype))
    if bits is None:
        raise ValueError(f"counter-based uniforms are float64 or float32, not {dtype}")
    return bits


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function of uint64 words, elementwise (wrapping arithmetic)."""
    z = (z ^ (z >> SHIFT_1)) * MULTIPLY_1
    z = (z ^ (z >> SHIFT_2)) * MULTIPLY_2
    return z ^ (z >> SHIFT_3)


def _words(values) -> np.ndarray:
    """Integers as uint64 words; Python ints of any sign reduced modulo 2^64."""
    if isinstance(values, np.ndarray) and values.dtype == np.uint64:
        return values
    if isinstance(values, np.ndarray):
        return values.astype(np.int64).view(np.uint64)
    return np.asarray([int(v) % 2**64 for v in np.ravel(values)], dtype=np.uint64).reshape(
        np.shape(values)
    )


def combine(key, part) -> np.ndarray:
    """``mix(key XOR mix(part + G))``: the key of ``part`` under ``key``, broadcast (uint64)."""
    with np.errstate(over="ignore"):
        return mix(_words(key) ^ mix(_words(part) + GOLDEN))


def stream_key(seed: int, replica: int = 0) -> int:
    """The key of one network's stream: the caller's ``seed`` and ``replica`` (a number that
    names the network, not its position in a batch, so that its stream does not depend on which
    other networks share the batch)."""
    return int(combine(combine(ROOT, np.asarray([seed % 2**64], np.uint64)), [replica])[0])


def to_uniform(words: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Hashes to uniforms in [0, 1): their top ``m`` bits times ``2^-m`` (exact in ``dtype``)."""
    bits = mantissa_bits(dtype)
    scale = np.asarray(2.0**-bits, dtype=dtype)
    return (words >> np.uint64(64 - bits)).astype(dtype) * scale


def uniforms(
    key: int, example: int, phase: int, layer: int, steps: int, units: int, dtype=np.float64
) -> np.ndarray:
    """(steps, units) uniforms of one population (``layer``) over a phase: step ``t``, unit ``j``
    at ``combine(key -> example -> phase -> layer -> t, j)``."""
    node = combine(combine(combine(np.asarray([key], np.uint64), [example]), [phase]), [layer])
    rows = combine(node, np.arange(steps, dtype=np.uint64))  # (steps,)
    return to_uniform(combine(rows[:, None], np.arange(units, dtype=np.uint64)[None, :]), dtype)


class CounterStream(NamedTuple):
    """Where a batch of networks is in their counter-based streams: one key per network
    (:func:`stream_key`) and the index of the training example (each network's own count of
    examples seen, the same for all networks of a batch trained in step)."""

    keys: tuple[int, ...]
    example: int

    @classmethod
    def of(cls, seeds, replicas=None, example: int = 0) -> CounterStream:
        """Keys ``stream_key(seeds[r], replicas[r])`` (``replicas`` default 0 for all)."""
        seeds = list(seeds)
        replicas = [0] * len(seeds) if replicas is None else list(replicas)
        if len(replicas) != len(seeds):
            raise ValueError(f"need one replica number per seed, got {len(replicas)} for "
                             f"{len(seeds)}")  # fmt: skip
        return cls(tuple(stream_key(s, r) for s, r in zip(seeds, replicas, strict=True)), example)

    def words(self) -> np.ndarray:
        """The keys as a (R,) uint64 array, as the compiled kernels take them."""
        return np.asarray(self.keys, dtype=np.uint64)


# ------------------------------------------------------------- the same hash on torch tensors


def _signed(word: np.uint64) -> int:
    """A uint64 word as the int64 with the same bits (torch's integer arithmetic is signed)."""
    value = int(word)
    return value - 2**64 if value >= 2**63 else value


_GOLDEN_SIGNED = _signed(GOLDEN)
_MULTIPLY_1_SIGNED = _signed(MULTIPLY_1)
_MULTIPLY_2_SIGNED = _signed(MULTIPLY_2)


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """The logical right shift of int64 words holding uint64 bits (``>>`` on a signed tensor
    copies the sign bit in; the mask clears what it copied)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix_tensor(z: torch.Tensor) -> torch.Tensor:
    """:func:`mix` on an int64 tensor holding uint64 words, on its own device (products wrap
    modulo 2^64 in two's complement, as the unsigned ones do)."""
    z = (z ^ _shift_right(z, int(SHIFT_1))) * _MULTIPLY_1_SIGNED
    z = (z ^ _shift_right(z, int(SHIFT_2))) * _MULTIPLY_2_SIGNED
    return z ^ _shift_right(z, int(SHIFT_3))


def combine_tensor(key: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """:func:`combine` on int64 tensors (broadcast): ``mix(key XOR mix(part + G))``."""
    return mix_tensor(key ^ mix_tensor(part + _GOLDEN_SIGNED))


def words_tensor(values, device=None) -> torch.Tensor:
    """Integers (any sign, reduced modulo 2^64) as an int64 tensor of their uint64 bits."""
    return torch.as_tensor(_words(values).view(np.int64), device=device)


def to_uniform_tensor(words: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """:func:`to_uniform` on an int64 tensor of hashes: the same values, bit for bit."""
    bits = mantissa_bits(np.float32 if dtype == torch.float32 else np.float64)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"counter-based uniforms are float64 or float32, not {dtype}")
    return _shift_right(words, 64 - bits).to(dtype) * 2.0**-bits


def combine_word(key: torch.Tensor, part: int) -> torch.Tensor:
    """:func:`combine_tensor` with a constant ``part``: its ``mix(part + G)`` is computed here, so
    nothing is copied to the device (a CUDA graph can capture the hash)."""
    with np.errstate(over="ignore"):
        mixed = mix(_words([part]) + GOLDEN)[0]
    return mix_tensor(key ^ _signed(mixed))


def population_uniforms_tensor(
    keys: torch.Tensor,
    examples: torch.Tensor,
    phase: int,
    layer: int,
    steps: int,
    units: torch.Tensor,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """:func:`uniforms` for many networks and examples at once, on the tensors' device:
    ``keys`` (R,) and ``examples`` (R, B) or (B,) int64 words, ``units`` the unit indices (U,);
    returns (R, B, steps, U), unit ``units[j]`` of example ``examples[r, b]`` under ``keys[r]``."""
    node = combine_word(combine_tensor(keys[:, None], examples), phase)  # (R, B)
    time = torch.arange(steps, device=keys.device)
    rows = combine_tensor(combine_word(node, layer)[..., None], time)  # (R, B, T)
    return to_uniform_tensor(combine_tensor(rows[..., None], units), dtype)
