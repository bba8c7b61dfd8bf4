"""Reward-based e-prop (Bellec et al. 2020, Methods, "reward-based e-prop"): actor-critic learning
in a recurrent spiking network, with eligibility traces and a learning signal built from the
policy and the value readouts, scaled by the temporal-difference error.

The network's readouts are the policy's logits (the first ``n_actions``) and a value estimate (the
last). At each step the agent draws an action ``a^t`` from ``pi^t = softmax(logits^t)``. With the
per-step quantity ``l^t = -log pi^t(a^t) - c_V V^t`` (its readout derivative
``(pi^t - onehot(a^t), -c_V)``), the learning signal and the traces are e-prop's
(:mod:`neuroplastic.credit.eprop`)::

    L_j^t   = sum_k B_jk dl^t/dy_k^t = sum_k B^pi_jk (pi_k^t - 1[a^t = k]) - c_V B^V_j
    F_ji^t  = gamma F_ji^{t-1} + L_j^t ebar_ji^t        (the credit of past choices, discounted)
    delta^t = r^t + gamma V^{t+1} - V^t                 (TD error; V after the last step is 0)
    grad    = sum_t delta^t F^t  (averaged over the batch),  so that  -grad  is the step

The readouts use the same recursion with their exact derivatives (``dl/dy zbar`` and ``dl/dy``).
Without recurrence and with symmetric feedback, ``grad`` equals the gradient, by autograd, of the
actor-critic surrogate ``sum_t' l^t' sum_{t>=t'} gamma^(t-t') delta^t`` with ``delta`` held fixed
(tested). ``delta^t`` needs ``V^{t+1}``, so the update of step ``t`` is made at step ``t + 1``: the
rule is online, one step behind.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuroplastic.credit.eprop import Traces, initial_traces, trace_step
from neuroplastic.grads import add_to_grad
from neuroplastic.models.rsnn import RecurrentLIF
from neuroplastic.neurons.lif import LIFState


class Episode(NamedTuple):
    """Everything reward-based e-prop carries from one step to the next."""

    state: LIFState
    y: Tensor
    traces: Traces
    credit: dict[str, Tensor]
    """``F`` per parameter, per example: ``(batch, *parameter shape)``."""
    value: Tensor | None
    """``V^t`` of the last step (None before the first)."""
    reward: Tensor | None
    """``r^t`` of the last step (None until :meth:`RewardEProp.reward`)."""
    grads: dict[str, Tensor]
    """``sum_t delta^t F^t`` so far, averaged over the batch."""
    td_errors: list[Tensor]


class RewardEProp:
    """Actor-critic e-prop for a :class:`RecurrentLIF` whose ``n_out`` readouts are ``n_actions``
    policy logits and one value.

    Args:
        model: the network (``n_out == n_actions + 1``).
        n_actions: actions of the policy.
        feedback: ``symmetric`` (``B = W_out^T``) or ``random`` (a fixed Gaussian matrix scaled by
            1/sqrt(n_out), from ``generator``).
        gamma: discount factor.
        value_weight: ``c_V``, the critic's weight in the learning signal.

    One episode, for a batch of environments::

        episode = rule.start(batch)
        for t in range(steps):
            episode, logits, value = rule.forward(episode, x_t)
            action = torch.distributions.Categorical(logits=logits).sample()
            episode = rule.act(episode, action)
            episode = rule.reward(episode, reward_t)
        loss = rule.backward(episode)         # writes .grad; then any optimiser steps
    """

    def __init__(
        self,
        model: RecurrentLIF,
        n_actions: int,
        feedback: str = "symmetric",
        generator: torch.Generator | None = None,
        *,
        gamma: float = 0.99,
        value_weight: float = 0.5,
    ):
        if model.n_out != n_actions + 1:
            raise ValueError(
                f"the network needs n_out = n_actions + 1 = {n_actions + 1} readouts (the policy's "
                f"logits, then the value), it has {model.n_out}"
            )
        if feedback not in ("symmetric", "random"):
            raise ValueError(f"feedback must be symmetric or random, got {feedback!r}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        self.model, self.n_actions, self.feedback = model, n_actions, feedback
        self.gamma, self.value_weight = gamma, value_weight
        self.random_feedback = None
        if feedback == "random":
            draw = torch.randn(model.n_rec, model.n_out, generator=generator)
            self.random_feedback = (draw / math.sqrt(model.n_out)).to(model.w_out)

    def feedback_matrix(self) -> Tensor:
        """``B`` ``(n_rec, n_actions + 1)``: the policy's columns, then the value's."""
        if self.random_feedback is not None:
            return self.random_feedback
        return self.model.w_out.detach().T

    @torch.no_grad()
    def start(self, batch: int) -> Episode:
        model = self.model
        dtype, device = model.w_in.dtype, model.w_in.device
        zeros = {n: torch.zeros(batch, *p.shape, dtype=dtype, device=device)
                 for n, p in model.named_parameters()}  # fmt: skip
        return Episode(
            model.initial_state(batch),
            torch.zeros(batch, model.n_out, dtype=dtype, device=device),
            initial_traces(model, batch, dtype, device),
            zeros, None, None,
            {n: torch.zeros_like(p) for n, p in model.named_parameters()}, [],
        )  # fmt: skip

    @torch.no_grad()
    def forward(self, episode: Episode, x: Tensor) -> tuple[Episode, Tensor, Tensor]:
        """One network step on inputs ``x`` ``(batch, n_in)``: ``(episode, logits, value)``.
        Settles the previous step's TD error now that ``V^t`` is known."""
        before = episode.state
        _, state, y = self.model.step(x, before, episode.y)
        traces, _, _ = trace_step(episode.traces, self.model, x, before, state)
        value = y[:, self.n_actions]
        episode = episode._replace(state=state, y=y, traces=traces)
        if episode.value is not None:
            episode = self._settle(episode, self.gamma * value)
        return episode._replace(value=value), y[:, : self.n_actions], value

    @torch.no_grad()
    def act(self, episode: Episode, action: Tensor) -> Episode:
        """Record the action ``(batch,)`` taken at this step: its credit joins ``F``."""
        y, traces = episode.y, episode.traces
        pi = torch.softmax(y[:, : self.n_actions], 1)
        onehot = torch.nn.functional.one_hot(action, self.n_actions).to(pi)
        value_part = torch.full_like(pi[:, :1], -self.value_weight)
        error = torch.cat([pi - onehot, value_part], 1)  # dl/dy: (batch, n_out)
        signal = error @ self.feedback_matrix().T  # (batch, n_rec)
        new = {
            "w_in": signal[:, :, None] * traces.ebar_in,
            "w_rec": signal[:, :, None] * traces.ebar_rec * self.model.no_self,
            "w_out": error[:, :, None] * traces.zbar[:, None, :],
            "b_out": error * traces.onebar,
        }
        credit = {n: self.gamma * episode.credit[n] + new[n] for n in new}
        return episode._replace(credit=credit)

    def reward(self, episode: Episode, reward: Tensor) -> Episode:
        """The reward ``(batch,)`` that followed this step's action."""
        return episode._replace(reward=reward.to(episode.y))

    @torch.no_grad()
    def finish(self, episode: Episode) -> Episode:
        """Settle the last step (the value after the episode is 0)."""
        return self._settle(episode, torch.zeros_like(episode.value))

    def backward(self, episode: Episode) -> Tensor:
        """:meth:`finish` the episode and add its gradients to the parameters' ``.grad``; return
        the mean squared TD error (the critic's loss, for monitoring)."""
        episode = self.finish(episode)
        for name, param in self.model.named_parameters():
            add_to_grad(param, episode.grads[name])
        return torch.stack(episode.td_errors).pow(2).mean()

    def _settle(self, episode: Episode, discounted_next_value: Tensor) -> Episode:
        if episode.reward is None:
            raise ValueError("call reward() after act() at every step, before the next forward()")
        delta = episode.reward + discounted_next_value - episode.value  # (batch,)
        batch = delta.shape[0]
        grads = {
            n: episode.grads[n] + torch.einsum("b,b...->...", delta, f) / batch
            for n, f in episode.credit.items()
        }
        return episode._replace(grads=grads, reward=None, td_errors=[*episode.td_errors, delta])
