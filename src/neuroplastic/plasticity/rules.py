"""Plasticity step functions behind the project's rule contract: a rule watches a weight, is fed
the activity step by step, and writes minus the accumulated change into the weight's ``.grad``
(so ``torch.optim.SGD(lr=1)`` applies exactly the rule's change, and any other optimiser may
rescale it)."""

from __future__ import annotations

import torch
from torch import nn

from neuroplastic.grads import add_to_grad, write_change
from neuroplastic.plasticity.reward_stdp import (
    GOLDEN2022,
    RewardSTDPParameters,
    eligibility_block,
    eligibility_step,
    reward_change,
    skip_silent_steps,
)
from neuroplastic.plasticity.reward_stdp import initial_state as reward_initial_state
from neuroplastic.plasticity.stdp import (
    FORAGING,
    STDPParameters,
    initial_state,
    skip_silent,
    stdp_block,
    stdp_step,
)


def _check_spikes(weight: nn.Parameter, pre: torch.Tensor, post: torch.Tensor) -> None:
    n_post, n_pre = weight.shape[-2:]
    if pre.shape[-1] != n_pre or post.shape[-1] != n_post:
        raise ValueError(
            f"spikes must end in n_pre={n_pre} and n_post={n_post}, got {tuple(pre.shape)} "
            f"and {tuple(post.shape)}"
        )


class STDP:
    """Windowed all-pairs STDP (``plasticity.stdp``) on ``weight`` ``(n_post, n_pre)``.
    ``step(pre, post)`` takes one time step's spikes ``(batch, n_pre)``, ``(batch, n_post)``
    (or unbatched) and accumulates the change, summed over the batch; a 3-d weight ``(replicas,
    n_post, n_pre)`` with spikes ``(replicas, n)`` keeps one change per replica. ``write()`` adds
    minus the accumulated change to ``weight.grad`` and clears it; ``reset()`` forgets the spike
    history (a new trial)."""

    def __init__(self, weight: nn.Parameter, params: STDPParameters = FORAGING):
        if weight.dim() not in (2, 3):
            raise ValueError(
                f"STDP needs a (n_post, n_pre) or (replicas, n_post, n_pre) weight, got "
                f"{tuple(weight.shape)}"
            )
        self.weight, self.params = weight, params
        self.state = None
        self.change = torch.zeros_like(weight)

    def reset(self) -> None:
        self.state = None

    def _check(self, pre: torch.Tensor, post: torch.Tensor) -> None:
        _check_spikes(self.weight, pre, post)

    def step(self, pre: torch.Tensor, post: torch.Tensor) -> None:
        self._check(pre, post)
        if self.state is None:
            self.state = initial_state(
                pre.shape[:-1], pre.shape[-1], post.shape[-1], self.params,
                dtype=self.weight.dtype, device=self.weight.device,
            )  # fmt: skip
        change, self.state = stdp_step(pre.to(self.weight), post.to(self.weight), self.state,
                                       self.params)  # fmt: skip
        self._accumulate(change)

    def _accumulate(self, change: torch.Tensor) -> None:
        if self.weight.dim() == 3:  # one network per replica
            self.change += change
        else:
            self.change += change.reshape(-1, *self.weight.shape).sum(0)

    def block(self, pre: torch.Tensor, post: torch.Tensor) -> None:
        """``T`` steps at once, spikes ``(T, ..., n)``: the same as ``T`` calls of :meth:`step`."""
        self._check(pre[0], post[0])
        if self.state is None:
            self.state = initial_state(
                pre.shape[1:-1], pre.shape[-1], post.shape[-1], self.params,
                dtype=self.weight.dtype, device=self.weight.device,
            )  # fmt: skip
        change, self.state = stdp_block(pre.to(self.weight), post.to(self.weight), self.state,
                                        self.params)  # fmt: skip
        self._accumulate(change)

    def skip(self, steps: int) -> None:
        """``steps`` steps in which neither side spikes."""
        if self.state is not None:
            self.state = skip_silent(self.state, steps, self.params)

    @torch.no_grad()
    def write(self) -> None:
        write_change(self.weight, self.change)


class RewardSTDP:
    """Reward-modulated STDP with eligibility over movement cycles (``plasticity.reward_stdp``)
    on ``weight`` ``(n_post, n_pre)``, or ``(replicas, n_post, n_pre)`` with spikes
    ``(replicas, n)``: one network per replica. ``step(pre, post)`` each time step;
    ``reward(value)`` at the end of each movement cycle writes minus the change into
    ``weight.grad`` (a plain SGD step with lr 1 then applies it). Output balancing divides by the
    presynaptic neurons' outgoing totals at construction."""

    def __init__(
        self, weight: nn.Parameter, params: RewardSTDPParameters = GOLDEN2022,
        balance_outputs: bool = True,
    ):  # fmt: skip
        if weight.dim() not in (2, 3):
            raise ValueError(
                f"RewardSTDP needs a (n_post, n_pre) or (replicas, n_post, n_pre) weight, got "
                f"{tuple(weight.shape)}"
            )
        self.weight, self.params, self.balance_outputs = weight, params, balance_outputs
        self.initial_outputs = weight.detach().sum(-2).clone()
        n_post, n_pre = weight.shape[-2:]
        self.state = reward_initial_state(
            weight.shape[:-2], n_pre, n_post, params, dtype=weight.dtype, device=weight.device
        )

    def step(self, pre: torch.Tensor, post: torch.Tensor) -> None:
        _check_spikes(self.weight, pre, post)
        self.state = eligibility_step(pre.to(self.weight), post.to(self.weight), self.state,
                                      self.params)  # fmt: skip

    def block(self, pre: torch.Tensor, post: torch.Tensor) -> None:
        """``T`` steps at once, spikes ``(T, ..., n)``: the same as ``T`` calls of :meth:`step`."""
        _check_spikes(self.weight, pre[0], post[0])
        self.state = eligibility_block(pre.to(self.weight), post.to(self.weight), self.state,
                                       self.params)  # fmt: skip

    def skip(self, steps: int) -> None:
        """``steps`` steps in which neither side spikes (a quiet end of a movement cycle)."""
        self.state = skip_silent_steps(self.state, steps, self.params)

    @torch.no_grad()
    def reward(self, value) -> torch.Tensor:
        """The reward event ending this movement cycle; returns the change it wrote."""
        change, self.state = reward_change(
            self.weight.detach(), value, self.state, self.initial_outputs, self.params,
            self.balance_outputs,
        )  # fmt: skip
        add_to_grad(self.weight, -change)
        return change
