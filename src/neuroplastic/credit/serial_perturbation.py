"""Serial perturbation ("twiddling"): one weight at a time.

Marblestone, Wayne & Kording (2016), sec. 2, contrast it with parallel weight and node
perturbation: perturb a single weight, see whether the cost improves, keep the change if it
does. Werfel, Xie & Seung (2005) analyse the finite-difference form: one weight's derivative
per perturbed pass; counted in forward passes, serial and parallel perturbation learn at about
the same rate.

On any ``nn.Module``, over the same covered layers as :class:`WeightPerturbation`. Each draw
visits one covered weight or bias ``w_i``, chosen uniformly from the rule's generator (random
coordinate descent). With ``C`` the mean loss:

- ``mode="gradient"`` (Werfel et al.'s serial perturbation)::

      forward:  g_i = (C(w + sigma e_i) - C(w)) / sigma
      central:  g_i = (C(w + sigma e_i) - C(w - sigma e_i)) / (2 sigma)

  and ``.grad += g_i e_i``, summed over the ``samples`` weights of one :meth:`backward`. The
  sum's expectation is ``(samples / P) g`` for ``P`` covered parameters: each draw is exact
  on its weight, with no noise from the others.
- ``mode="greedy"`` (twiddling, keep the change if it helps): try ``w_i + sigma``, then
  ``w_i - sigma``; the first that lowers ``C`` below ``C(w)`` is the change ``d_i`` (else 0), and
  ``.grad += -d_i e_i``, so that SGD with lr 1 applies exactly the kept changes. Both signs are
  evaluated (two perturbed passes per weight).

It is :class:`WeightPerturbation` with the noise replaced by ``sigma e_i``: the same batched
perturbed passes, buffers, closure API and counters (``forward_passes``, ``draws``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from neuroplastic.credit.layers import LayerSelection
from neuroplastic.credit.weight_perturbation import (
    Closure,
    Difference,
    WeightPerturbation,
    buffer_copies,
)

MODES = ("gradient", "greedy")


class SerialPerturbation(WeightPerturbation):
    """Serial perturbation, one weight per draw (see the module docstring).

    Args: as :class:`WeightPerturbation` (``samples``: weights visited per :meth:`backward`;
    ``generator``: which weights), plus ``mode`` (``"gradient"`` or ``"greedy"``)."""

    name = "serial-perturbation"
    learns_quickly = False
    """One weight per draw: a few steps move a few weights."""

    def __init__(
        self, model: nn.Module, *, layers: LayerSelection = None,
        generator: torch.Generator | None = None, sigma: float = 1e-3, samples: int = 1,
        difference: Difference = "forward", vectorize: bool = True,
        mode: Literal["gradient", "greedy"] = "gradient",
    ):  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(model, layers=layers, generator=generator, sigma=sigma, samples=samples,
                         difference=difference, vectorize=vectorize)  # fmt: skip
        self.mode = mode

    average_draws = False

    def draw_noise(self, draws: int) -> list[Tensor]:
        """``sigma e_i`` for ``draws`` weights ``i`` drawn uniformly (with replacement) from the
        rule's generator, one tensor ``(draws, *param.shape)`` per parameter."""
        params = self.params
        sizes = [p.numel() for p in params]
        chosen = torch.randint(sum(sizes), (draws,), generator=self.generator,
                               device=self.generator.device).tolist()  # fmt: skip
        noise = [torch.zeros(draws, *p.shape, dtype=p.dtype, device=p.device) for p in params]
        for d, index in enumerate(chosen):
            for tensor, size in zip(noise, sizes, strict=True):
                if index < size:
                    tensor[d].view(-1)[index] = self.sigma
                    break
                index -= size
        return noise

    def _estimate_sum(self, closure: Closure, draws: int) -> tuple[list[Tensor], Tensor, list]:
        if self.mode == "gradient":
            return super()._estimate_sum(closure, draws)
        buffers = buffer_copies(self.model)
        clean, others = self._clean_pass(closure, true_gradients=True)
        total = [torch.zeros_like(p) for p in self.params]
        chunk = self._chunk()
        for start in range(0, draws, chunk):
            noise = self.draw_noise(min(chunk, draws - start))
            plus = self._perturbed_losses(closure, noise, buffers, len(clean))
            minus = self._perturbed_losses(closure, [-xi for xi in noise], buffers, len(clean))
            self.draws += len(plus)
            before = clean.mean()
            sign = torch.where(plus < before, 1.0, torch.where(minus < before, -1.0, 0.0))
            for acc, xi in zip(total, noise, strict=True):
                acc.add_(torch.tensordot(-sign.to(xi), xi, dims=1))  # .grad = minus the change
        return total, clean.mean(), others

    def _chunk(self) -> int:
        return max(1, min(super()._chunk(), 4096))
