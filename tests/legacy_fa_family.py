"""The FA family as neuroplastic computed it before the rules attached to any model (an explicit
backward pass over the MLP, no autograd), kept as a frozen reference: the hook-based rules must
give the same updates on the MLP, so that credit-mnist measures the same algorithms as before.

Feedback matrices in the old layout: FA ``B_{l+1}`` of shape ``W_{l+1}^T`` for every layer above
the first; DFA ``D_l`` ``(n_l, n_out)`` for every hidden layer; sign symmetry ``V_{l+1}`` of shape
``W_{l+1}^T``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neuroplastic.credit.base import output_error
from neuroplastic.models.mlp import MLP


def _slope(activation: nn.Module, a: Tensor, h: Tensor) -> Tensor:
    if isinstance(activation, nn.ReLU):
        return (a > 0).to(a.dtype)
    if isinstance(activation, nn.Tanh):
        return 1 - h * h
    return h * (1 - h)  # sigmoid


@torch.no_grad()
def legacy_update(model: MLP, x: Tensor, y: Tensor, loss: str, rule: str,
                  feedback: list[Tensor]) -> list[Tensor]:  # fmt: skip
    """``[dW_0, db_0, dW_1, db_1, ...]`` of ``rule`` in ("fa", "dfa", "sign") on ``(x, y)``."""
    inputs, slopes, h = [], [], x
    for index, layer in enumerate(model.layers):
        inputs.append(h)
        a = layer(h)
        if index < len(model.layers) - 1:
            h = model.activation(a)
            slopes.append(_slope(model.activation, a, h))
    e = output_error(a, y, loss)
    deltas = []
    if rule == "dfa":
        deltas = [(e @ d.T) * s for d, s in zip(feedback, slopes, strict=True)]
    else:
        delta = e
        for i in range(len(slopes) - 1, -1, -1):
            delta = (delta @ feedback[i].T) * slopes[i]
            deltas.append(delta)
        deltas.reverse()
    deltas.append(e)
    out = []
    for delta, h_below in zip(deltas, inputs, strict=True):
        out += [delta.T @ h_below, delta.sum(dim=0)]
    return out
