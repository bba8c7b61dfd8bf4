"""Many small MLPs trained as one: parameters with a leading replica dimension R.

A 784-30-10 network cannot keep a CPU's vector units busy; R of them (seeds, tuning trials) can.
Replica r of a :class:`ReplicaMLP` built from seeds ``[s_0, ..., s_{R-1}]`` starts with exactly the
weights of ``MLP(sizes, activation, torch.Generator().manual_seed(s_r))``, and since every replica
only touches its own slice, a sum of per-replica losses gives each replica its own gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neuroplastic.models.mlp import ACTIVATIONS, MLP


class ReplicaMLP(nn.Module):
    """R independent MLPs ``sizes[0] -> ... -> sizes[-1]`` stored as stacked tensors.

    ``weights[i]`` has shape ``(R, sizes[i], sizes[i+1])`` (input-major, so ``x @ W``) and
    ``biases[i]`` shape ``(R, 1, sizes[i+1])``.
    """

    def __init__(self, sizes: Sequence[int], activation: str, seeds: Sequence[int]):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if len(seeds) == 0:
            raise ValueError("at least one seed (replica) is needed")
        self.sizes = tuple(sizes)
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]()
        singles = [MLP(sizes, activation, torch.Generator().manual_seed(s)) for s in seeds]
        n_layers = len(sizes) - 1
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([m.layers[i].weight.detach().T for m in singles]).contiguous())
            for i in range(n_layers)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([m.layers[i].bias.detach()[None] for m in singles]))
            for i in range(n_layers)
        )

    @property
    def replicas(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(R, B, in)`` (each replica its own inputs) or ``(B, in)`` (shared inputs).

        Returns logits of shape ``(R, B, out)``.
        """
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(bias, x, weight) if x.dim() == 3 else torch.matmul(x, weight) + bias
            if i < len(self.weights) - 1:
                x = self.activation(x)
        return x

    def replica(self, r: int) -> MLP:
        """Replica ``r`` as an ordinary :class:`MLP` (a copy), e.g. to use it on its own."""
        single = MLP(self.sizes, self.activation_name)
        with torch.no_grad():
            for layer, weight, bias in zip(single.layers, self.weights, self.biases, strict=True):
                layer.weight.copy_(weight[r].T)
                layer.bias.copy_(bias[r, 0])
        return single
