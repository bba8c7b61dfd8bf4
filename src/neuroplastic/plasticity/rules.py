"""Plasticity step functions behind the project's rule contract: a rule watches a weight, is fed
the activity step by step, and writes minus the accumulated change into the weight's ``.grad``
(so ``torch.optim.SGD(lr=1)`` applies exactly the rule's change, and any other optimiser may
rescale it)."""

from __future__ import annotations

import torch
from torch import nn

from neuroplastic.plasticity.stdp import FORAGING, STDPParameters, initial_state, stdp_step


class STDP:
    """Windowed all-pairs STDP (``plasticity.stdp``) on ``weight`` ``(n_post, n_pre)``.
    ``step(pre, post)`` takes one time step's spikes ``(batch, n_pre)``, ``(batch, n_post)``
    (or unbatched) and accumulates the change, summed over the batch; ``write()`` adds minus the
    accumulated change to ``weight.grad`` and clears it; ``reset()`` forgets the spike history
    (a new trial)."""

    def __init__(self, weight: nn.Parameter, params: STDPParameters = FORAGING):
        if weight.dim() != 2:
            raise ValueError(f"STDP needs a (n_post, n_pre) weight, got {tuple(weight.shape)}")
        self.weight, self.params = weight, params
        self.state = None
        self.change = torch.zeros_like(weight)

    def reset(self) -> None:
        self.state = None

    def step(self, pre: torch.Tensor, post: torch.Tensor) -> None:
        n_post, n_pre = self.weight.shape
        if pre.shape[-1] != n_pre or post.shape[-1] != n_post:
            raise ValueError(
                f"spikes must end in n_pre={n_pre} and n_post={n_post}, got {tuple(pre.shape)} "
                f"and {tuple(post.shape)}"
            )
        if self.state is None:
            self.state = initial_state(
                pre.shape[:-1], n_pre, n_post, self.params,
                dtype=self.weight.dtype, device=self.weight.device,
            )  # fmt: skip
        change, self.state = stdp_step(pre.to(self.weight), post.to(self.weight), self.state,
                                       self.params)  # fmt: skip
        self.change += change.reshape(-1, n_post, n_pre).sum(0)

    @torch.no_grad()
    def write(self) -> None:
        grad = -self.change
        self.weight.grad = grad.clone() if self.weight.grad is None else self.weight.grad + grad
        self.change.zero_()
