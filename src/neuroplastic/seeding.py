"""Seeds derived from names or numbers, stable across processes and machines: the one place
where experiments get their sub-seeds.

Python's ``hash`` of a string changes from one process to the next; experiments need the training
set of "seed 3, 300 examples" to be the same everywhere. Two derivations, both pure functions:

* :func:`derive_seed` / :func:`generator`: any ``repr``-able parts through SHA-256
  (``derive_seed("train", 3, 300)``).
* :func:`sequence_seed` / :func:`sequence_generator`: an integer entropy and an integer key through
  NumPy's ``SeedSequence`` (``spawn_key``), the streams NumPy guarantees independent. Used by
  experiments whose recorded numbers were produced with it (perturbation-scaling,
  kanter2020-perceptron); changing either derivation changes those numbers.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed determined by ``parts`` (their ``repr``): ``derive_seed("train", 3, 300)``."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def sequence_seed(entropy: int, *key: int) -> int:
    """A 64-bit seed for ``(entropy, key)``: the first word of
    ``np.random.SeedSequence(entropy % 2**64, spawn_key=key)``, so distinct keys give
    independent, non-overlapping streams."""
    sequence = np.random.SeedSequence(entropy % 2**64, spawn_key=key)
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


def sequence_generator(entropy: int, *key: int) -> torch.Generator:
    """A CPU generator seeded by :func:`sequence_seed`."""
    return torch.Generator().manual_seed(sequence_seed(entropy, *key))
