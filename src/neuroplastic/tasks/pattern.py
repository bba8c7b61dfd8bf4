"""Pattern generation (Bellec et al. 2020, Fig. 2; the authors' pattern-generation tutorial): a
recurrent spiking network driven by one frozen Poisson input pattern learns to output a fixed
target curve, a sum of four sines.

One instance is drawn from a generator: ``n_inputs`` channels (100) of Poisson spikes at ``rate``
(50 Hz) for ``steps`` ms (1000), frozen, and a target ``sum_i w_i sin(2 pi k_i t / T + phi_i)`` with
``k_i`` the number of whole periods of 1000, 500, 333 and 200 ms that fit in the trial, weights
``w_i`` uniform in [0.5, 2] and phases uniform in [0, 2 pi), shifted to start at 0 and scaled to a
maximum magnitude of 1, as the authors' target function does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PatternTask:
    n_inputs: int = 100
    steps: int = 1000
    rate: float = 0.05
    """Input rate in spikes per ms (50 Hz)."""
    periods: tuple[int, ...] = (1000, 500, 333, 200)
    """Periods of the target's sines in ms."""

    def __post_init__(self) -> None:
        if self.n_inputs < 1 or self.steps < 2:
            raise ValueError(
                f"need n_inputs >= 1 and steps >= 2, got {self.n_inputs}, {self.steps}"
            )
        if any(p > self.steps for p in self.periods):
            raise ValueError(
                f"every period must fit in the trial ({self.steps} ms): {self.periods}"
            )

    def sample(
        self, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """One instance: frozen input spikes ``(1, steps, n_inputs)`` and target
        ``(1, steps, 1)``."""
        spikes = torch.rand(1, self.steps, self.n_inputs, generator=generator) < self.rate
        n = len(self.periods)
        weights = 0.5 + 1.5 * torch.rand(n, generator=generator, dtype=torch.float64)
        phases = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        target = torch.zeros(self.steps, dtype=torch.float64)
        for period, weight, phase in zip(self.periods, weights, phases, strict=True):
            cycles = self.steps // period
            target += weight * torch.sin(
                torch.linspace(0, 2 * math.pi * cycles, self.steps) + phase
            )
        target = target - target[0]
        target = target / target.abs().max().clamp(min=1e-6)
        return spikes.to(dtype), target.to(dtype)[None, :, None]


def normalised_mse(output: Tensor, target: Tensor) -> float:
    """``sum (y - y*)^2 / sum (y* - mean y*)^2``: 0 is a perfect fit, 1 is as good as the mean."""
    return ((output - target).pow(2).sum() / (target - target.mean()).pow(2).sum()).item()
