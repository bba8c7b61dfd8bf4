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

A sleep cycle (``Forager.simulate_sleep`` followed by ``RewardSTDP.block``) is compiled too
(:func:`sleep_cycles`, :func:`run_sleep_cycle`). Its hidden neurons fire all cycle long, so its
pairs do span cycles: the kernel reads the last ``window + 1`` steps of both sides from the rule's
STDP state (the ring ``stdp_block`` keeps), pairs them with the cycle's spikes (a pair counts in
the cycle of its later spike, as in the reference), and writes the cycle's last steps back, with
the traces the reference would leave. The hidden spikes are drawn in the kernel by
:func:`sleep_spikes`: per neuron a binomial count over the cycle's steps, placed on that many
distinct steps uniformly, which is the reference's Bernoulli-per-step process.
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
def _release(excite, inhibit, noise):
    """One hidden spike's drive onto one output: excitation plus balanced inhibition, each
    scaled by its own release noise ``1 + noise u``, ``u`` uniform on [-1, 1)."""
    if noise:
        excite = excite * (np.float32(1.0) + np.float32(noise)
                           * np.float32(2.0 * np.random.random() - 1.0))
        inhibit = inhibit * (np.float32(1.0) + np.float32(noise)
                             * np.float32(2.0 * np.random.random() - 1.0))
    return excite + inhibit


@numba.njit(cache=True)
def _apply_gain(drive, gain):
    """Each output's summed drive (steps, O) times its gain, as the reference scales it."""
    for j in range(drive.shape[1]):
        if gain[j] != 1:
            for t in range(drive.shape[0]):
                drive[t, j] *= gain[j]


@numba.njit(cache=True)
def _pair_changes(potentiation, depression, tau, window):
    """A spike pair's change by delay ``post - pre`` (index ``window + delay``), zero at 0."""
    pair_change = np.zeros(2 * window + 1)
    for delay in range(1, window + 1):
        pair_change[window + delay] = potentiation * math.exp(-delay / tau)
        pair_change[window - delay] = depression * math.exp(-delay / tau)
    return pair_change


@numba.njit(cache=True)
def training_cycles(
    w_in, volley, w_out, inhibition, gain, alpha, decay, v_th, decision, noise, potentiation,
    depression, tau, window, ages, pending, slots, counts, fired, hidden_counts,
):  # fmt: skip
    """One cycle for each replica ``r``: ``w_in`` (R, H, I), ``volley`` (R, I), ``w_out``
    (R, O, H), ``inhibition`` (R, H), ``gain`` (R, O) each output's input gain; ``ages``
    (A, L) the reward events' weights by step (``A`` events, ``L`` steps at most), added
    into ``pending[slots[a], r]`` (O, H);
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
    pair_change = _pair_changes(potentiation, depression, tau, window)
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
                drive[t + 1, j] += _release(w_out[r, j, h], inhibition[r, h], noise)
        _apply_gain(drive, gain[r])
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


@numba.njit(cache=True)
def sleep_spikes(rates, steps):
    """Poisson (Bernoulli per step) hidden spikes for one sleep cycle of each replica: ``rates``
    ``(R, H)`` spikes per step -> ``(starts (R + 1,), times, neurons)``, replica ``r``'s spikes
    at ``starts[r]:starts[r + 1]``. Each neuron's count is binomial over ``steps``; its spikes
    fall on that many distinct steps, each placement uniform (a step already taken is drawn
    again)."""
    replicas, n_hidden = rates.shape
    counts = np.empty((replicas, n_hidden), np.int64)
    for r in range(replicas):
        for h in range(n_hidden):
            rate = min(max(rates[r, h], 0.0), 1.0)
            counts[r, h] = np.random.binomial(steps, rate)
    starts = np.zeros(replicas + 1, np.int64)
    for r in range(replicas):
        starts[r + 1] = starts[r] + counts[r].sum()
    times = np.empty(starts[-1], np.int64)
    neurons = np.empty(starts[-1], np.int64)
    taken = np.zeros(steps, np.bool_)
    k = 0
    for r in range(replicas):
        for h in range(n_hidden):
            first = k
            for _ in range(counts[r, h]):
                t = np.random.randint(0, steps)
                while taken[t]:
                    t = np.random.randint(0, steps)
                taken[t] = True
                times[k], neurons[k] = t, h
                k += 1
            for i in range(first, k):
                taken[times[i]] = False
    return starts, times, neurons


@numba.njit(cache=True)
def sleep_cycles(
    starts, times, neurons, w_out, inhibition, gain, alpha, decay, v_th, noise, potentiation,
    depression, tau, window, ages, pending, slots, pre_tail, post_tail, fired,
):  # fmt: skip
    """One sleep cycle of ``L`` steps (``ages`` (A, L)) for each replica ``r``: hidden spikes
    ``times``/``neurons`` at ``starts[r]:starts[r + 1]``; the outputs driven by them as when
    awake (release noise ``noise``, input gains ``gain`` (R, O)), counted into ``fired``
    (R, O); every hidden/output pair within ``window`` whose later spike falls in this cycle
    added, weighted by the reward events' ages at that step, into ``pending[slots[a], r]``.
    ``pre_tail`` (S, R, H) and ``post_tail`` (S, R, O), ``S = window + 1``, hold the steps
    ``-S .. -1`` before the cycle and are overwritten with its last ``S`` steps."""
    replicas, n_out, n_hidden = w_out.shape
    length = ages.shape[1]
    span = window + 1
    f_alpha, f_decay, f_th = np.float32(alpha), np.float32(decay), np.float32(v_th)
    pair_change = _pair_changes(potentiation, depression, tau, window)
    # steps -window .. length - 1, shifted by window; hidden spikes bucketed by step
    total = length + window
    for r in range(replicas):
        bucket_count = np.zeros(total + 1, np.int64)
        for k in range(starts[r], starts[r + 1]):
            bucket_count[times[k] + window + 1] += 1
        for t in range(window):
            for h in range(n_hidden):
                if pre_tail[t + 1, r, h] != 0:
                    bucket_count[t + 1] += 1
        bucket_start = np.cumsum(bucket_count)
        fill = bucket_start[:-1].copy()
        who = np.empty(bucket_start[-1], np.int64)
        for t in range(window):
            for h in range(n_hidden):
                if pre_tail[t + 1, r, h] != 0:
                    who[fill[t]] = h
                    fill[t] += 1
        drive = np.zeros((length + 1, n_out), np.float32)
        for k in range(starts[r], starts[r + 1]):
            t, h = times[k], neurons[k]
            who[fill[t + window]] = h
            fill[t + window] += 1
            for j in range(n_out):
                drive[t + 1, j] += _release(w_out[r, j, h], inhibition[r, h], noise)
        _apply_gain(drive, gain[r])
        # outputs from rest, all cycle long; spikes as (step, output), the tail's first
        out_time = np.empty(window * n_out + length * n_out, np.int64)
        out_who = np.empty(window * n_out + length * n_out, np.int64)
        n_out_spikes = 0
        for t in range(window):
            for j in range(n_out):
                if post_tail[t + 1, r, j] != 0:
                    out_time[n_out_spikes], out_who[n_out_spikes] = t - window, j
                    n_out_spikes += 1
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
        # pairs whose later spike is in this cycle
        for a in range(n_out_spikes):
            t_post, j = out_time[a], out_who[a]
            first = max(t_post - window, -window)
            last = min(t_post + window, length - 1)
            for t_pre in range(first, last + 1):
                delay = t_post - t_pre
                later = t_post if delay > 0 else t_pre
                if delay == 0 or later < 0:
                    continue
                change = pair_change[window + delay]
                for k in range(bucket_start[t_pre + window], bucket_start[t_pre + window + 1]):
                    h = who[k]
                    for e in range(ages.shape[0]):
                        pending[slots[e], r, j, h] += np.float32(ages[e, later] * change)
        # the cycle's last steps become the tails
        for t in range(span):
            for h in range(n_hidden):
                pre_tail[t, r, h] = 0.0
            for j in range(n_out):
                post_tail[t, r, j] = 0.0
        for k in range(starts[r], starts[r + 1]):
            if times[k] >= length - span:
                pre_tail[times[k] - (length - span), r, neurons[k]] = 1.0
        for a in range(n_out_spikes):
            if out_time[a] >= length - span:
                post_tail[out_time[a] - (length - span), r, out_who[a]] = 1.0


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
    gain = _gains(agent)
    if params.release_noise:  # drawn only when used, so that without noise the caller's
        _seed(int(torch.randint(0, 2**62, (1,), generator=generator)))  # stream is untouched
    stdp = rule.params.stdp if rule is not None else None
    if rule is not None:
        state = rule.state
        if state.stdp.step % params.cycle:
            raise ValueError("the Numba forager cycle starts at a cycle boundary")
        if carries_pairs(rule):
            raise ValueError(
                "the last cycle's spikes would pair with this one's (after sleep); run this "
                "cycle on the torch path (foraging_protocol does so by itself)"
            )
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
        as_array(agent.w_in), volley, as_array(agent.w_out), inhibition, gain, agent.neuron.alpha,
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
        old = rule.state.stdp  # its ring is empty (checked above) and stays so: a quiet end
        zeros = (torch.zeros_like(old.pre_trace), torch.zeros_like(old.post_trace))
        stdp_state = STDPState(*zeros, old.pre_history, old.post_history,
                               old.step + params.cycle)  # fmt: skip
        rule.state = rule.state._replace(stdp=stdp_state)
    return torch.from_numpy(counts), torch.from_numpy(fired), torch.from_numpy(hidden_counts)


def _gains(agent) -> np.ndarray:
    """``(R, O)`` float32: the agent's output gains, ones when it has none."""
    replicas, n_moves, _ = agent.w_out.shape
    if agent.output_gain is None:
        return np.ones((replicas, n_moves), np.float32)
    return np.ascontiguousarray(agent.output_gain.detach().cpu().numpy(), dtype=np.float32)


def _ring_order(step: int, slots: int) -> list[int]:
    """The ring slots of steps ``step - slots .. step - 1``, in time order."""
    return [(step - slots + k) % slots for k in range(slots)]


def run_sleep_cycle(agent, rates, generator, rule, hidden_trains=None):
    """One sleep cycle of the replicas of ``agent`` at hidden ``rates`` ``(R, H)`` (spikes per
    step), with ``rule`` (a ``RewardSTDP`` on ``agent.w_out``): the cycle's eligibility joins
    the pending reward events and the rule's STDP state moves on by a cycle, as
    ``rule.block`` on ``agent.simulate_sleep`` would leave it. The hidden spikes are drawn by
    :func:`sleep_spikes` unless given as ``hidden_trains`` ``(cycle, R, H)`` (for tests against
    the reference on the same spikes). Returns the output spikes per replica ``(R, O)``."""
    import torch

    from neuroplastic.kernels import as_array
    from neuroplastic.plasticity.stdp import STDPState

    params, stdp = agent.params, rule.params.stdp
    if agent.w_out.dtype != torch.float32 or agent.w_out.device.type != "cpu":
        raise ValueError("the Numba sleep cycle needs float32 weights on the CPU")
    state = rule.state
    length, window = params.cycle, stdp.window
    if state.stdp.step % length:
        raise ValueError("the Numba sleep cycle starts at a cycle boundary")
    if length <= window + 1:
        raise ValueError(f"a {length}-step cycle is shorter than the STDP window ({window})")
    replicas, n_moves, n_hidden = agent.w_out.shape
    _seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    if hidden_trains is None:
        rates = np.ascontiguousarray(rates.detach().cpu().numpy(), dtype=np.float64)
        starts, times, neurons = sleep_spikes(rates, length)
    else:
        step, replica, neuron = hidden_trains.nonzero(as_tuple=True)
        order = torch.argsort(replica, stable=True)
        times, neurons = step[order].numpy(), neuron[order].numpy()
        starts = np.zeros(replicas + 1, np.int64)
        starts[1:] = np.cumsum(torch.bincount(replica, minlength=replicas).numpy())
    slots_ring = window + 1
    ring = _ring_order(state.stdp.step, slots_ring)
    pre_tail = np.ascontiguousarray(state.stdp.pre_history[ring].numpy())
    post_tail = np.ascontiguousarray(state.stdp.post_history[ring].numpy())
    cycle = state.stdp.step // length
    kept = rule.params.cycles_kept
    slots = np.array([(cycle + e) % kept for e in range(kept)], np.int64)
    fired = np.zeros((replicas, n_moves), np.float32)
    sleep_cycles(
        starts, times, neurons, as_array(agent.w_out), as_array(-agent.w_out.mean(1)),
        _gains(agent), agent.neuron.alpha, agent.synapse, params.v_th, params.release_noise,
        stdp.potentiation, stdp.depression, stdp.tau, window, reward_ages(rule.params),
        state.pending.numpy(), slots, pre_tail, post_tail, fired,
    )  # fmt: skip
    end = state.stdp.step + length
    pre_history, post_history = state.stdp.pre_history, state.stdp.post_history
    new_ring = _ring_order(end, slots_ring)
    pre_history[new_ring] = torch.from_numpy(pre_tail)
    post_history[new_ring] = torch.from_numpy(post_tail)
    # the traces of the last step, x^(end-1) = sum_{k=1..window} a^k s^(end-1-k), as stdp_block
    # leaves them: a spike ``lag`` steps before the end weighs a^(lag - 1), for lag 2..window+1
    lags = torch.arange(slots_ring, 0, -1, dtype=torch.float64)
    decay = torch.where(lags >= 2, torch.exp(-(lags - 1) / stdp.tau), 0.0).to(torch.float32)
    traces = [torch.einsum("s,s...->...", decay, torch.from_numpy(tail))
              for tail in (pre_tail, post_tail)]  # fmt: skip
    rule.state = state._replace(stdp=STDPState(*traces, pre_history, post_history, end))
    return torch.from_numpy(fired)


def carries_pairs(rule) -> bool:
    """Whether spikes of the last ``window + 1`` steps are still in the rule's STDP ring (after a
    sleep cycle): the compiled waking cycle does not pair across cycles. Read from the traces,
    which weigh every slot but the newest by a positive ``a^k`` (they are exactly zero only
    when those slots are), and from the newest slot: a fraction of the ring's size, checked
    every cycle."""
    stdp = rule.state.stdp
    newest = (stdp.step - 1) % (rule.params.stdp.window + 1)
    return bool(stdp.pre_trace.any() or stdp.post_trace.any()
                or stdp.pre_history[newest].any() or stdp.post_history[newest].any())
