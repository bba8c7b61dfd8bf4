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

:func:`stdp_block` is the same rule over a block of ``T`` steps at once, for when the spike
trains of a whole movement cycle are known before the weights change (they are in the foraging
agent, which learns between cycles). With ``K`` the ``(L, L)`` window kernel (``K[t, s] =
a^(t-s)`` for ``1 <= t - s <= window``) over the block and the ``window`` steps before it, and
per-step weights ``w`` (e.g. a reward rule's eligibility ages), the weighted sum of ``dW^t`` is::

    sum_t w_t dW^t = K_plus (K^T (w * Z_post))^T Z_pre + K_minus (w * K Z_post)^T Z_pre

which is evaluated with the kernel on the side with fewer neurons, and only at the steps where
the other side spikes. It equals :func:`stdp_step` stepped through the block (tested).
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


def _window_kernel(length: int, params: STDPParameters, dtype, device) -> Tensor:
    """``K[t, s] = a^(t - s)`` for ``1 <= t - s <= window``, zero elsewhere: ``K @ Z`` is the
    windowed trace of the spike trains ``Z`` (time first)."""
    delay = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)
    inside = (delay >= 1) & (delay <= params.window)
    decay = torch.exp(-delay.to(dtype) / params.tau)
    return torch.where(inside, decay, torch.zeros((), dtype=dtype, device=device))


def _recent(history: Tensor, step: int, window: int) -> Tensor:
    """The ring's last ``window`` spike vectors in time order (steps ``step - window`` to
    ``step - 1``; those before step 0 are the ring's initial zeros)."""
    slots = window + 1
    order = [(step - window + k) % slots for k in range(window)]
    return history[order]


SPARSE_BELOW = 0.05
"""Spike density under which :func:`stdp_block` sums over the spikes one by one (a scatter)
rather than multiplying dense matrices."""


def _pair_with_spikes(coefficient: Tensor, spikes: Tensor) -> Tensor:
    """``sum_t coefficient[a, t, ..., j] spikes[t, ..., i]`` -> ``(A, ..., i, j)``: each spike
    of the sparse side picks up the other side's coefficients at its step."""
    batch = spikes.shape[1:-1]
    length, n_spiking, n_other = spikes.shape[0], spikes.shape[-1], coefficient.shape[-1]
    flat = spikes.reshape(length, -1, n_spiking)
    coefficient = coefficient.reshape(coefficient.shape[0], length, -1, n_other)
    if flat.count_nonzero() >= SPARSE_BELOW * flat.numel():
        active = flat.flatten(1).any(1)  # only steps with spikes contribute
        out = torch.einsum("atbj,tbi->abij", coefficient[:, active], flat[active])
        return out.reshape(coefficient.shape[0], *batch, n_spiking, n_other)
    step, member, neuron = flat.nonzero(as_tuple=True)
    values = coefficient[:, step, member] * flat[step, member, neuron][None, :, None]
    out = coefficient.new_zeros(coefficient.shape[0], flat.shape[1], n_spiking, n_other)
    slots = torch.arange(coefficient.shape[0], device=out.device)[:, None]
    out.index_put_((slots, member[None], neuron[None]), values, accumulate=True)
    return out.reshape(coefficient.shape[0], *batch, n_spiking, n_other)


def _last_trace(decay_back: Tensor, chunks: list[Tensor], window: int) -> Tensor:
    """``sum_s decay_back[s] z^s`` over the chunks laid end to end (only the last ``window + 1``
    steps can count: the last step itself, at weight 0, and the ``window`` before it)."""
    total, offset = 0, 0
    for chunk in chunks:
        start = max(0, chunk.shape[0] - window - 1)
        weights = decay_back[offset + start : offset + chunk.shape[0]]
        total = total + torch.einsum("s,s...->...", weights, chunk[start:])
        offset += chunk.shape[0]
    return total


def stdp_block(
    pre: Tensor, post: Tensor, state: STDPState, params: STDPParameters = FORAGING,
    weights: Tensor | None = None,
) -> tuple[Tensor, STDPState]:  # fmt: skip
    """``T`` steps at once: spikes ``pre`` ``(T, ..., n_pre)`` and ``post`` ``(T, ..., n_post)``
    -> ``(sum_t w_t dW^t, state)`` with ``weights`` ``(A, T)`` (``A`` weighted sums, shape
    ``(A, ..., n_post, n_pre)``) or ``None`` (plain sum, ``(..., n_post, n_pre)``). Pairs with
    spikes before the block come from the state's histories, so consecutive blocks and
    :func:`stdp_step` calls mix freely. The state is left as after ``T`` calls of
    :func:`stdp_step` (histories written in place)."""
    steps, window = pre.shape[0], params.window
    if steps == 0:
        raise ValueError("stdp_block needs at least one step")
    plain = weights is None
    if plain:
        weights = torch.ones(1, steps, dtype=pre.dtype, device=pre.device)
    if weights.shape != (weights.shape[0], steps):
        raise ValueError(f"weights must be (A, {steps}), got {tuple(weights.shape)}")
    # Each side as chunks in time: the window before the block (from the ring, only if it
    # holds spikes), then the block. The side with fewer neurons is concatenated and carries
    # the kernel; the other is only ever paired spike by spike, never copied.
    if state.pre_history.any() or state.post_history.any():
        prefix = window
        pre_chunks = [_recent(state.pre_history, state.step, window), pre]
        post_chunks = [_recent(state.post_history, state.step, window), post]
    else:  # nothing to pair with before the block (e.g. after a quiet rest)
        prefix, pre_chunks, post_chunks = 0, [pre], [post]
    length = prefix + steps
    kernel = _window_kernel(length, params, pre.dtype, pre.device)
    w = torch.cat([weights.new_zeros(weights.shape[0], prefix), weights], 1)  # (A, L)
    w = w.reshape(w.shape[0], length, *([1] * (pre.dim() - 1)))  # broadcast over batch, neurons
    kernel_on_post = post.shape[-1] <= pre.shape[-1]
    small = torch.cat(post_chunks if kernel_on_post else pre_chunks)
    trace = torch.einsum("ts,s...->t...", kernel, small)
    carried = torch.einsum("st,as...->at...", kernel, w * small)
    if kernel_on_post:  # coefficient of each pre spike: the post side's pairs at its step
        coefficient = params.potentiation * carried + params.depression * w * trace
    else:  # coefficient of each post spike
        coefficient = params.potentiation * w * trace + params.depression * carried
    change, offset = 0, 0
    for chunk in pre_chunks if kernel_on_post else post_chunks:
        paired = _pair_with_spikes(coefficient[:, offset : offset + chunk.shape[0]], chunk)
        change = change + (paired.transpose(-1, -2) if kernel_on_post else paired)
        offset += chunk.shape[0]
    # Leave the state as stdp_step would: traces of the last step, the ring holding the block's
    # last window + 1 steps.
    decay_back = kernel[length - 1]  # a^(last - s) inside the window before the last step
    pre_trace, post_trace = (_last_trace(decay_back, chunks, window)
                             for chunks in (pre_chunks, post_chunks))  # fmt: skip
    slots = window + 1
    end = state.step + steps
    kept = min(steps, slots)
    ring = [(end - kept + k) % slots for k in range(kept)]
    state.pre_history[ring] = pre[steps - kept :]
    state.post_history[ring] = post[steps - kept :]
    new_state = STDPState(pre_trace, post_trace, state.pre_history, state.post_history, end)
    return (change[0] if plain else change), new_state


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
