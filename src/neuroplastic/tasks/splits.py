"""Held-out validation data carved from a training set.

Every method of a comparison is tuned on the same validation images, drawn from the training split
and never from the test set; the split is fixed by its own seed so it does not change with the
training seed.
"""

from __future__ import annotations

import torch


def validation_split(
    n_examples: int, n_validation: int, split_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, validation)`` of a random split, sorted, on the CPU.

    ``n_validation = 0`` gives every index to training and an empty validation set.
    """
    if not 0 <= n_validation < n_examples:
        raise ValueError(
            f"n_validation must be in [0, {n_examples}), got {n_validation}: "
            "the validation set is carved from the training examples"
        )
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(n_examples, generator=generator)
    validation = order[:n_validation].sort().values
    train = order[n_validation:].sort().values
    return train, validation
