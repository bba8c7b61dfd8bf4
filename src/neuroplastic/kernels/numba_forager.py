"""A movement cycle of the foraging agent (``models.forager``) with the hidden-to-output
eligibility of its reward-modulated STDP (``plasticity.reward_stdp``), compiled with Numba: the
same arithmetic as ``Forager.simulate_cycle`` followed by ``RewardSTDP.block``, replica by
replica and spike by spike instead of as dense tensors.

- Hidden layer: each neuron's input current is ``x s^t`` after the volley (``x`` its weighted
  lit inputs, ``s`` the synaptic decay), stepped in float32 as the reference steps it, until it
  can no longer reach the threshold.
- Outputs: each hidden spike reaches every output the next step with weight ``W (1 + r u1) +
  I (1 + r u2)`` (``I`` the balanced inhibition, ``u`` uniform on [-1, 1), release noise); the
  outputs are stepped until quiet. Counts in the decision window choose the move.
- Eligibility: every hidden/output spike pair within the STDP window adds its pair change,
  weighted by the reward events' ages at the later spike's step, to the pending slots (as
  ``eligibility_block``). Pairs never span cycles: the kernel checks that the cycle's activity
  ends more than a window before the cycle does, which is what lets the reference's quiet rest
  reset its STDP state.

The release noise comes from Numba's generator seeded per call, so with noise the kernel equals
the reference in distribution; without it, exactly up to float32 summation order (tested).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np


@numba.njit(cache=True)
def _seed(seed):
    np.random.seed(seed)


@numba.njit(cache=True)
def training_cycles(
    w_in, volley, w_out, inhibition, alpha, decay, v_th, decision, noise, potentiation,
    depression, tau, window, ages, pending, slots, counts, fired, hidden_counts,
):  # fmt: skip
    """One cycle for each replica ``r``: ``w_in`` (R, H, I), ``volley`` (R, I), ``w_out``
    (R, O, H), ``inhibition`` (R, H); ``ages`` (A, L) the reward events' weights by step
    (``A`` events, ``L`` steps at most), added into ``pending[slots[a], r]`` (O, H);
    ``counts`` (R, O) receives the decision-window spike counts, ``fired`` (R, O) the cycle's
    output spikes and ``hidden_counts`` (R, H) the hidden ones. With no reward events
    (``A == 0``) no pair is formed (a test cycle). Returns the last step with a spike (-1 if
    none), for the caller's check that no pair spans cycles."""
    replicas, n_hidden, n_in = w_in.shape
    n_out = w_out.shape[1]
    length = ages.shape[1]
    f_alpha, f_decay, f_th = np.float32(alpha), np.float32(decay), np.float32(v_th)
    last_spike = -1
    hidden_time = np.empty(4 * n_hidden + 64, np.int64)
    hidden_who = np.empty(4 * n_hidden + 64, np.int64)
    out_time = np.empty(length * n_out, np.int64)
    out_who = np.empty(length * n_out, np.int64)
    # each pair's change by delay, weighted by each reward event's age at the later spike
    pair_change = np.zeros(2 * window + 1)
    for delay in range(1, window + 1):
        pair_change[window + delay] = potentiation * math.exp(-delay / tau)
        pair_change[window - delay] = depression * math.exp(-delay / tau)
    reach = f_decay / (np.float32(1.0) - f_decay)
    for r in range(replicas):
        # hidden layer: spikes (time, neuron) in time order per neuron
        n_spikes = 0
        for h in range(n_hidden):
            x = np.float32(0.0)
            for i in range(n_in):
                if volley[r, i] != 0:
                    x += w_in[r, h, i] * volley[r, i]
            current, v, z = x, np.float32(0.0), np.float32(0.0)
            for t in range(length):
                if t:
                    current = f_decay * current
                v = f_alpha * v + current - z * f_th
                z = np.float32(1.0) if v > f_th else np.float32(0.0)
                if z:
                    if n_spikes == hidden_time.shape[0]:
                        hidden_time = np.concatenate((hidden_time, np.empty_like(hidden_time)))
                        hidden_who = np.concatenate((hidden_who, np.empty_like(hidden_who)))
                    hidden_time[n_spikes], hidden_who[n_spikes] = t, h
                    n_spikes += 1
                    hidden_counts[r, h] += 1.0
                elif abs(v) + abs(current) * reach < f_th:
                    break
        # the outputs' drive, step by step (hidden spikes at t reach them at t + 1)
        drive = np.zeros((length + 1, n_out), np.float32)
        for k in range(n_spikes):
            t, h = hidden_time[k], hidden_who[k]
            if t + 1 > length:
                continue
            for j in range(n_out):
                excite, inhibit = w_out[r, j, h], inhibition[r, h]
                if noise:
                    excite = excite * (np.float32(1.0) + np.float32(noise)
                                       * np.float32(2.0 * np.random.random() - 1.0))
                    inhibit = inhibit * (np.float32(1.0) + np.float32(noise)
                                         * np.float32(2.0 * np.random.random() - 1.0))
                drive[t + 1, j] += excite + inhibit
        # outputs
        n_out_spikes = 0
        hidden_end = -1
        for k in range(n_spikes):
            hidden_end = max(hidden_end, hidden_time[k])
        for j in range(n_out):
            current, v, z = np.float32(0.0), np.float32(0.0), np.float32(0.0)
            for t in range(length):
                current = f_decay * current + drive[t, j]
                v = f_alpha * v + current - z * f_th
                z = np.float32(1.0) if v > f_th else np.float32(0.0)
                if z:
                    out_time[n_out_spikes], out_who[n_out_spikes] = t, j
                    n_out_spikes += 1
                    fired[r, j] += 1.0
                    if t < decision:
                        counts[r, j] += 1.0
                elif t > hidden_end + 1 and abs(v) + abs(current) * reach < f_th:
                    break
        # eligibility: every pair within the window, at the later spike's step
        for a in range(n_out_spikes):
            t_post, j = out_time[a], out_who[a]
            last_spike = max(last_spike, t_post)
            if ages.shape[0] == 0:
                continue
            for k in range(n_spikes):
                t_pre, h = hidden_time[k], hidden_who[k]
                delay = t_post - t_pre
                if delay == 0 or abs(delay) > window:
                    continue
                change = pair_change[window + delay]
                later = t_post if delay > 0 else t_pre
                for e in range(ages.shape[0]):
                    pending[slots[e], r, j, h] += np.float32(ages[e, later] * change)
        last_spike = max(last_spike, hidden_end)
    return last_spike


@functools.lru_cache(maxsize=8)
def reward_ages(params) -> np.ndarray:
    """``(cycles_kept, cycle)``: the weight of a trace made at step ``t`` of a cycle in the
    reward event ``e`` cycles later, ``1 / ((e + 1) cycle - 1 - t + c)``, as
    ``reward_stdp.eligibility_block`` weighs it (the same for every cycle)."""
    t = np.arange(params.cycle, dtype=np.float64)
    ahead = np.arange(params.cycles_kept, dtype=np.float64)[:, None]
    return 1.0 / ((ahead + 1) * params.cycle - 1 - t[None, :] + params.offset)


def run_cycle(agent, window, generator, rule=None):
    """One movement cycle of the replicas of ``agent`` (a ``Forager``) on their views
    ``window`` (R, view, view): ``(counts, fired, hidden_counts)`` as tensors, the decision
    window's output spikes, all output spikes and the hidden spikes. With ``rule`` (a
    ``RewardSTDP`` on ``agent.w_out``) the cycle's eligibility joins its pending reward events
    and its STDP state moves on by a cycle, as ``rule.block`` then ``rule.skip`` would leave
    it."""
    import torch

    from neuroplastic.kernels import as_array
    from neuroplastic.plasticity.reward_stdp import RewardSTDPState
    from neuroplastic.plasticity.stdp import STDPState

    params = agent.params
    if agent.w_in.dtype != torch.float32 or agent.w_in.device.type != "cpu":
        raise ValueError("the Numba forager cycle needs float32 weights on the CPU")
    replicas, n_moves, n_hidden = agent.w_out.shape
    volley = as_array(window.reshape(replicas, -1).to(torch.float32))
    counts = np.zeros((replicas, n_moves), np.float32)
    fired = np.zeros((replicas, n_moves), np.float32)
    hidden_counts = np.zeros((replicas, n_hidden), np.float32)
    inhibition = as_array(-agent.w_out.mean(1))
    if params.release_noise:  # drawn only when used, so that without noise the caller's
        _seed(int(torch.randint(0, 2**62, (1,), generator=generator)))  # stream is untouched
    stdp = rule.params.stdp if rule is not None else None
    if rule is not None:
        state = rule.state
        if state.stdp.step % params.cycle:
            raise ValueError("the Numba forager cycle starts at a cycle boundary")
        cycle = state.stdp.step // params.cycle
        kept = rule.params.cycles_kept
        slots = np.array([(cycle + e) % kept for e in range(kept)], np.int64)
        ages = reward_ages(rule.params)
        pending = state.pending.numpy()  # shares memory: updated in place
    else:
        slots = np.zeros(0, np.int64)
        ages = np.zeros((0, params.cycle))
        pending = np.zeros((0, replicas, n_moves, n_hidden), np.float32)
    window_steps = stdp.window if stdp is not None else 0
    last = training_cycles(
        as_array(agent.w_in), volley, as_array(agent.w_out), inhibition, agent.neuron.alpha,
        agent.synapse, params.v_th, params.decision, params.release_noise,
        stdp.potentiation if stdp else 0.0, stdp.depression if stdp else 0.0,
        stdp.tau if stdp else 1.0, window_steps, ages, pending, slots, counts, fired,
        hidden_counts,
    )  # fmt: skip
    if rule is not None:
        if last + window_steps + 1 >= params.cycle:
            raise ValueError(
                f"spikes at step {last} of a {params.cycle}-step cycle pair across cycles; "
                "use the torch path (backend='torch') for such long activity"
            )
        old = rule.state.stdp
        old.pre_history.zero_()
        old.post_history.zero_()
        zeros = (torch.zeros_like(old.pre_trace), torch.zeros_like(old.post_trace))
        stdp_state = STDPState(*zeros, old.pre_history, old.post_history,
                               old.step + params.cycle)  # fmt: skip
        rule.state = RewardSTDPState(stdp_state, rule.state.pending)
    return torch.from_numpy(counts), torch.from_numpy(fired), torch.from_numpy(hidden_counts)
