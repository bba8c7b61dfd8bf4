"""A LeNet-5-style convolutional network for 28x28 images (LeCun et al. 1998, Fig. 2).

Two convolution + pooling stages and three fully connected layers, as in the paper, with the
modern simplifications everyone uses (max pooling, tanh or ReLU, every feature map connected to
every input map, a plain linear output layer instead of the RBF units). A plain ``nn.Module``
with nothing neuroplastic-specific: the credit rules' tests and benchmarks use it as "a user's
own CNN".
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class LeNet5(nn.Module):
    """``(N, 1, 28, 28) -> (N, n_classes)``: conv 5x5 (6 maps, padding 2), pool 2, conv 5x5 (16
    maps), pool 2, then 400 -> 120 -> 84 -> ``n_classes``."""

    def __init__(self, n_classes: int = 10, activation: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), act(), nn.MaxPool2d(2),  # (N, 6, 14, 14)
            nn.Conv2d(6, 16, 5), act(), nn.MaxPool2d(2),  # (N, 16, 5, 5)
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(400, 120), act(), nn.Linear(120, 84), act(),
            nn.Linear(84, n_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.view(-1, 1, 28, 28)))
