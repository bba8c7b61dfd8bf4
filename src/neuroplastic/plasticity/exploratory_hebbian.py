"""Reward-modulated Hebbian learning of a readout: the exploratory Hebbian (EH) rule of Hoerzer,
Legenstein & Maass (2014), "Emergence of complex computational structures from chaotic neural
networks through reward-modulated Hebbian learning", Cereb. Cortex 24:677.

The readout explores: its output carries noise, ``z = W r + xi``. A scalar reward per step,
``P = -|z - f|^2``, is compared with its own running average; where the reward beat its average
the output's deviation from its own running average is taken as the right direction::

    z_bar <- (1 - a) z_bar + a z          P_bar <- (1 - a) P_bar + a P
    M = 1 if P > P_bar else 0
    dW = eta M (z - z_bar) r^T

with the averages updated after the change (the change compares with the averages of the
steps before). No error vector reaches the synapses, only the scalar ``M``: unlike FORCE's
RLS, the rule is local and reward-driven.

:func:`exploratory_hebbian_step` is the pure step; :class:`ExploratoryHebbian` keeps the averages
and writes minus the accumulated change into the readout's ``.grad``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from neuroplastic.grads import write_change


class EHState(NamedTuple):
    output_average: Tensor
    """``z_bar`` ``(..., outputs)``."""
    reward_average: Tensor
    """``P_bar`` ``(...)``."""


def exploratory_hebbian_step(
    rates: Tensor, output: Tensor, target: Tensor, state: EHState, lr: float, smoothing: float
) -> tuple[Tensor, EHState]:  # fmt: skip
    """``(dW, new state)`` for rates ``r`` ``(..., n)``, noisy output ``z`` and target ``f``
    ``(..., outputs)``."""
    reward = -((output - target) ** 2).sum(-1)
    modulation = (reward > state.reward_average).to(rates.dtype)
    change = lr * modulation[..., None, None] * (
        (output - state.output_average)[..., :, None] * rates[..., None, :]
    )
    a = smoothing
    new_state = EHState((1 - a) * state.output_average + a * output,
                        (1 - a) * state.reward_average + a * reward)  # fmt: skip
    return change, new_state


class ExploratoryHebbian:
    """The EH rule on a readout ``weight`` ``([replicas,] outputs, n)``. ``step(rates, output,
    target)`` with the *noisy* output the network emitted; ``write()`` adds minus the change to
    ``weight.grad``. ``lr`` may be changed between steps (the paper lets it decay)."""

    def __init__(self, weight: nn.Parameter, lr: float = 5e-4, smoothing: float = 0.2):
        if not lr > 0 or not 0 < smoothing <= 1:
            raise ValueError(f"need lr > 0 and smoothing in (0, 1], got {lr}, {smoothing}")
        self.weight, self.lr, self.smoothing = weight, lr, smoothing
        self.state: EHState | None = None
        self.change = torch.zeros_like(weight)

    @torch.no_grad()
    def step(self, rates: Tensor, output: Tensor, target: Tensor) -> None:
        if self.state is None:
            self.state = EHState(output.clone(), -((output - target) ** 2).sum(-1))
        change, self.state = exploratory_hebbian_step(rates, output, target, self.state, self.lr,
                                                      self.smoothing)  # fmt: skip
        self.change += change

    @torch.no_grad()
    def write(self) -> None:
        write_change(self.weight, self.change)
