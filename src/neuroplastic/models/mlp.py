"""Fully connected networks, initialised from an explicit random generator.

Initialisation draws from a ``torch.Generator`` passed in, never from torch's global random state,
so two networks built in one process (two seeds, two rules) never disturb each other's streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """``sizes[0] -> sizes[1] -> ... -> sizes[-1]``, an activation after every hidden layer.

    The output layer is linear (logits). ``layers`` holds the ``nn.Linear`` modules in order, which
    credit-assignment rules use to reach each layer's weights.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if len(sizes) < 2 or any(s <= 0 for s in sizes):
            raise ValueError(f"sizes must be at least two positive widths, got {list(sizes)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.sizes = tuple(sizes)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation = ACTIVATIONS[activation]()
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default ``nn.Linear`` distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
        drawn on the CPU from ``generator`` so the same seed gives the same net on every device."""
        for layer in self.layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            for param in (layer.weight, layer.bias):
                values = torch.empty(param.shape).uniform_(-bound, bound, generator=generator)
                param.copy_(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)
