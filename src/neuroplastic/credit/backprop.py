"""Backpropagation, the reference every other rule is measured against.

The exact gradient of the mean loss, by torch autograd (Rumelhart, Hinton & Williams 1986).
"""

from __future__ import annotations

import torch
from torch import Tensor

from neuroplastic.credit.base import CreditRule, loss_per_example
from neuroplastic.models.mlp import MLP


class Backprop(CreditRule):
    """``.grad += dL/dW`` for every weight and bias, L the mean loss over the batch."""

    name = "backprop"

    def __init__(self, model: MLP, *, generator: torch.Generator | None = None):
        super().__init__(model)  # the keyword keeps constructors uniform: backprop draws nothing

    def backward(self, x: Tensor, y: Tensor, loss: str = "cross_entropy") -> Tensor:
        mean_loss = loss_per_example(self.model(x), y, loss).mean()
        mean_loss.backward()
        return mean_loss.detach()
