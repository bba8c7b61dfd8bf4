"""The one seeding module: both derivations are pure, pinned functions."""

import numpy as np
import torch

from neuroplastic.seeding import derive_seed, generator, sequence_generator, sequence_seed


def test_derive_seed_is_pinned_and_63_bit():
    assert derive_seed("train", 3, 300) == derive_seed("train", 3, 300)
    assert derive_seed("train", 3, 300) != derive_seed("train", 3, 301)
    assert 0 <= derive_seed("x") < 2**63
    expected = torch.Generator().manual_seed(derive_seed("a", 1)).initial_seed()
    assert generator("a", 1).initial_seed() == expected


def test_sequence_seed_is_numpys_seed_sequence():
    """The derivation perturbation-scaling and kanter2020-perceptron recorded their numbers with:
    changing it changes their results."""
    for entropy, key in [(0, ()), (7, (1, 2)), (-3, (0,)), (2**70 + 5, (2, 1, 4))]:
        sequence = np.random.SeedSequence(entropy % 2**64, spawn_key=key)
        expected = int(sequence.generate_state(1, dtype=np.uint64)[0])
        assert sequence_seed(entropy, *key) == expected
        assert sequence_generator(entropy, *key).initial_seed() == expected
    assert (
        sequence_seed(2020, 0, 1, 3) != sequence_seed(2020, 0, 1, 4) != sequence_seed(2021, 0, 1, 4)
    )
    assert sequence_seed(5) == 12631478326263854183  # pinned
