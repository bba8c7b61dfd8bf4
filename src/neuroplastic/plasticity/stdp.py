"""Pair-based spike-timing-dependent plasticity with a finite window, all pairs counted, as in the
foraging networks of Skorheim et al. (2014), Sanda et al. (2017) and Golden et al. (2022) (the
sleep-replay sheet, part A).

Every pair of a presynaptic spike at ``t_pre`` and a postsynaptic spike at ``t_post`` with
``0 < |t_post - t_pre| <= window`` steps changes the weight by::

    K_plus  exp(-(t_post - t_pre) / tau)    pre before post (potentiation, K_plus > 0)
    K_minus exp(-(t_pre - t_post) / tau)    post before pre (depression, K_minus < 0)

Spikes in the same step form no pair. The foraging papers use K = +-0.04, tau = 40 ms and a
60 ms window; at their 0.5 ms step that is tau = 80 and window = 120 steps (the defaults).

Computed forwards with windowed traces: ``x^t = sum_{k=1..window} a^k s^{t-k}`` (``a =
exp(-1/tau)``), advanced exactly by ``x^t = a (x^{t-1} + s^{t-1}) - a^{window+1} s^{t-1-window}``,
so a step costs two outer products whatever the window. At step ``t`` a postsynaptic spike pairs
with the presynaptic trace, and a presynaptic spike with the postsynaptic one::

    dW^t = K_plus z_post^t (x_pre^t)^T + K_minus (x_post^t) z_pre^t^T     (n_post, n_pre)

Leading batch dimensions (examples, replicas) are kept: ``dW`` is per batch element.
``tests/test_stdp.py`` checks this against every spike pair counted by hand.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class STDPParameters(NamedTuple):
    potentiation: float = 0.04
    """``K_plus``: the change for a pre-before-post pair at zero delay."""
    depression: float = -0.04
    """``K_minus``: the change for a post-before-pre pair at zero delay (negative)."""
    tau: float = 80.0
    """Decay time constant of a pair's effect, in steps (40 ms at 0.5 ms per step)."""
    window: int = 120
    """Longest delay, in steps, at which two spikes still form a pair (60 ms)."""


FORAGING = STDPParameters()
"""The foraging papers' values (the defaults)."""


class STDPState(NamedTuple):
    pre_trace: Tensor
    """``(..., n_pre)``: windowed presynaptic trace ``x_pre^t`` (spikes before this step)."""
    post_trace: Tensor
    """``(..., n_post)``: windowed postsynaptic trace."""
    pre_history: Tensor
    """``(window + 1, ..., n_pre)``: the last ``window + 1`` presynaptic spike vectors, a ring
    indexed by the step count (updated in place)."""
    post_history: Tensor
    """``(window + 1, ..., n_post)``: the same for the postsynaptic spikes."""
    step: int
    """Steps taken so far."""


def initial_state(
    batch: tuple[int, ...], n_pre: int, n_post: int, params: STDPParameters = FORAGING,
    *, dtype: torch.dtype = torch.float32, device=None,
) -> STDPState:  # fmt: skip
    """No spikes yet: traces and histories zero. ``batch``: the leading dimensions."""
    batch = tuple(batch)

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=dtype, device=device)

    slots = params.window + 1
    return STDPState(
        zeros(*batch, n_pre), zeros(*batch, n_post),
        zeros(slots, *batch, n_pre), zeros(slots, *batch, n_post), 0,
    )  # fmt: skip


def _advance(trace: Tensor, history: Tensor, step: int, decay: float, window: int) -> Tensor:
    """``x^t`` from ``x^{t-1}``: add the spikes of ``t-1``, drop those of ``t-1-window``."""
    slots = window + 1
    if step == 0:
        return trace
    last = history[(step - 1) % slots]
    trace = decay * (trace + last)
    if step - 1 - window >= 0:  # its slot is the one step t will overwrite
        trace = trace - decay ** (window + 1) * history[(step - 1 - window) % slots]
    return trace


def stdp_step(
    pre: Tensor, post: Tensor, state: STDPState, params: STDPParameters = FORAGING
) -> tuple[Tensor, STDPState]:
    """One step: the spikes ``pre`` ``(..., n_pre)`` and ``post`` ``(..., n_post)`` of this step
    -> ``(dW (..., n_post, n_pre), state)``. The histories are written in place."""
    decay = math.exp(-1.0 / params.tau)
    step = state.step
    pre_trace = _advance(state.pre_trace, state.pre_history, step, decay, params.window)
    post_trace = _advance(state.post_trace, state.post_history, step, decay, params.window)
    change = params.potentiation * post[..., :, None] * pre_trace[..., None, :]
    change = change + params.depression * post_trace[..., :, None] * pre[..., None, :]
    slot = step % (params.window + 1)
    state.pre_history[slot] = pre
    state.post_history[slot] = post
    return change, STDPState(pre_trace, post_trace, state.pre_history, state.post_history, step + 1)


def skip_silent(state: STDPState, steps: int, params: STDPParameters = FORAGING) -> STDPState:
    """``steps`` steps without a spike on either side, at the cost of the traces alone: no pair
    forms (``dW`` would be zero), the traces decay and old spikes leave the window. Equal to
    ``steps`` calls of :func:`stdp_step` with zero spikes."""
    if steps <= 0:
        return state
    pre_trace, post_trace, step = state.pre_trace, state.post_trace, state.step
    slots = params.window + 1
    if steps > slots:  # everything has left the window
        state.pre_history.zero_()
        state.post_history.zero_()
        return STDPState(torch.zeros_like(pre_trace), torch.zeros_like(post_trace),
                         state.pre_history, state.post_history, step + steps)  # fmt: skip
    decay = math.exp(-1.0 / params.tau)
    for _ in range(steps):
        pre_trace = _advance(pre_trace, state.pre_history, step, decay, params.window)
        post_trace = _advance(post_trace, state.post_history, step, decay, params.window)
        state.pre_history[step % slots] = 0
        state.post_history[step % slots] = 0
        step += 1
    return STDPState(pre_trace, post_trace, state.pre_history, state.post_history, step)
