"""Compiled phase of the segregated-dendrite network (Numba, the ``fast`` extra): the time loop of
``models.segregated_dendrites.simulate_phase_reference`` for one example of one replica at a time,
event-driven. Tested equal to the reference (``tests/test_numba_dendrites.py``).

Why compiled: a phase of a 784-500-10 network through PyTorch is about 1,700 small tensor
operations per training example whose dispatch costs far more than their arithmetic (issue 17).
Here each (replica, example) pair runs its own loop over time steps, and (replica, example) pairs
run in parallel. Per step and layer ``l`` (the module docstring of ``models.segregated_dendrites``,
equations of the paper's Model section, K taps of ``kappa`` oldest first)::

    D_l(t)   = sum_{i spiked at t} s_i(t) W_l[i, :]              event-driven: only the ~21 input
                                                                  spikes of a step (MNIST) are read
    V_b(t)   = b_l + sum_{k<K} kappa[k] D_l(t - K + 1 + k)        = W_l^T PSP_below(t) + b_l, as
                                                                  the weights are linear: rows
                                                                  of the products D_l, the
                                                                  history's K first
    C(t)     = decay C(t-1) + gain_b V_b(t) [+ gain_a V_a(t)] [+ teaching]
    rate     = phi_max sigmoid(C(t));   s(t) = Poisson(rate) from the step's uniform

The input's spikes do not depend on the network, so a phase's are drawn before its step loop
and their products ``D_0`` summed input by input (a weight row is read once a phase); a target
phase starts from the forward phase's last K rows of products (the weights have not changed in
between) instead of applying the weights to the history again.

with ``(decay, gain)`` from ``DendriticParams.soma_step`` (``_constants``: Euler or exponential
integration). The apical potential ``V_a(t) = Y^T PSP_out(t - 1)`` is computed step by step only
when it feeds the soma (``g_a != 0``); otherwise it only enters the plateau averages, and the
mean over the window is taken of the output spike train first (one product at the end).
The window means of the filtered trains, ``mean_t PSP(t)``, are weighted sums of the spike counts
(:func:`window_weights`), accumulated spike by spike.

Poisson counts invert the CDF at the uniform as ``poisson_from_uniform`` does, with the same
float operations in the same order, so the same uniforms give the same spikes: exactly for the
input (its rates are given), and for the layers unless a uniform falls within rounding of a
threshold (their potentials are summed in another order than PyTorch's).

The uniforms come either pre-drawn (``PhaseNoise``, :func:`phase`) or from the counter-based
stream of :mod:`neuroplastic.kernels.counter_random`, hashed inside the loop step by step: only
for the inputs with a non-zero rate, and without any array of uniforms. With the stream a whole
online training example is one call (:func:`learn`): the forward phase, the target phase and
the plateau update of ``credit.plateau`` (``dW_l = P_l E_l (x) PSP_below``, rows whose mean PSP
is zero skipped), so nothing returns to Python between the phases; :func:`learn_chunk` runs
many examples in one call.

Every function is compiled with ``error_model="numpy"``: a float division by zero gives inf or
nan, as in NumPy, instead of raising. Python's check for it is a branch in every division, and
it kept LLVM from vectorising the loops of the rates' sigmoid; no divisor here can be zero.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from neuroplastic.kernels import counter_random
from neuroplastic.kernels.counter_random import GOLDEN

MAX_COUNT = 16
"""``poisson_from_uniform``'s ``max_count``."""

# The counter-based stream one value at a time: the very function NumPy runs vectorised.
_mix = njit(cache=True, inline="always")(counter_random.mix)


@njit(cache=True, inline="always", error_model="numpy")
def _combine(key, part):  # pragma: no cover - compiled
    """``counter_random.combine`` of two uint64 words."""
    return _mix(key ^ _mix(part + GOLDEN))


@functools.lru_cache(maxsize=64)
def window_weights(
    steps: int, window: int, kernel: tuple[float, ...], delay: int, dtype: np.dtype
) -> np.ndarray:
    """``w`` (K + steps,) with ``sum_p w[p] s[p]`` = the mean over the last ``window`` steps of
    ``PSP(t - delay) = sum_k kappa[k] s(t - delay - K + 1 + k)``, where ``s`` holds the K
    history rows (oldest first), then the phase's steps. Built in float64, then cast."""
    k = len(kernel)
    weights = np.zeros(k + steps)
    for t in range(max(0, steps - window), steps):
        for i, value in enumerate(kernel):
            # step t - delay - K + 1 + i sits at row K + that in the history-then-phase rows
            weights[t - delay + 1 + i] += value / window
    return weights.astype(dtype)


@intrinsic
def _float64_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """The float64 whose IEEE-754 bits are the int64 ``bits`` (a bitcast)."""

    def codegen(context, builder, signature, arguments):
        return builder.bitcast(arguments[0], ir.DoubleType())

    return types.float64(types.int64), codegen


LOG2_E = 1.4426950408889634
LN2_HIGH = 6.93147180369123816490e-01
"""ln 2 to 32 bits (fdlibm's ``ln2HI``): ``n LN2_HIGH`` is exact for the ``n`` used here."""
LN2_LOW = 1.90821492927058770002e-10
EXP_TERMS = 14
"""Taylor terms of ``e^r`` on ``|r| <= ln(2)/2``: the 14th is below 5e-18 relative."""
_EXP_COEFFICIENTS = tuple(1.0 / math.factorial(k) for k in range(EXP_TERMS - 1, -1, -1))
"""``1/k!`` from ``k = EXP_TERMS - 1`` down to 0, the order Horner's rule takes them."""
EXP_LOW, EXP_HIGH = -708.3, 709.0
"""Where :func:`exp64` clamps its argument: its results stay normal and finite."""


@njit(cache=True, inline="always", error_model="numpy")
def exp64(x):  # pragma: no cover - compiled
    """``e^x`` of a float64 in plain arithmetic, so that LLVM vectorises loops of it (Numba's
    ``np.exp`` calls the C library one value at a time; this build of LLVM has no vector math
    library). Cody and Waite's reduction ``x = n ln 2 + r``, ``|r| <= ln(2)/2``, with ln 2 in
    two parts; ``e^r`` by Horner's rule on its Taylor series; ``2^n`` built from its bits.
    Within 2 ulp of the correctly rounded value (tested against NumPy); ``x`` is clamped to
    [EXP_LOW, EXP_HIGH], so that results are normal and finite (2e-308 to 8e307)."""
    x = min(max(x, EXP_LOW), EXP_HIGH)
    n = np.floor(x * LOG2_E + 0.5)
    r = (x - n * LN2_HIGH) - n * LN2_LOW
    p = 0.0
    for coefficient in _EXP_COEFFICIENTS:  # no division: it would not pipeline
        p = p * r + coefficient
    return p * _float64_from_bits((np.int64(n) + 1023) << 52)


@intrinsic
def _float32_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """The float32 whose IEEE-754 bits are the int32 ``bits`` (a bitcast)."""

    def codegen(context, builder, signature, arguments):
        return builder.bitcast(arguments[0], ir.FloatType())

    return types.float32(types.int32), codegen


_LOG2_E_32 = np.float32(LOG2_E)
_LN2_HIGH_32 = np.float32(0.693145751953125)
"""ln 2 to 16 bits: ``n _LN2_HIGH_32`` is exact in float32 for the ``n`` used here."""
_LN2_LOW_32 = np.float32(math.log(2.0) - 0.693145751953125)
_EXP32_COEFFICIENTS = tuple(np.float32(1.0 / math.factorial(k)) for k in range(7, -1, -1))
"""``1/k!`` for ``k = 7 .. 0``: on ``|r| <= ln(2)/2`` the first term left out is below 6e-9
relative, a tenth of a float32 ulp."""
EXP32_LOW, EXP32_HIGH = np.float32(-87.3), np.float32(88.0)
"""Where :func:`exp32` clamps its argument: ``2^n`` stays a normal float32."""
_HALF_32 = np.float32(0.5)


@njit(cache=True, inline="always", error_model="numpy")
def exp32(x):  # pragma: no cover - compiled
    """:func:`exp64` in float32 arithmetic (8 Taylor terms, ``2^n`` from float32 bits), so that
    a float32 kernel's loops of it run at twice the vector width and half the terms. Within
    1.2 ulp of the exact value (tested against NumPy in float64); it rounds otherwise than
    PyTorch's float32 exponential in about 1 value in 10, by one ulp."""
    x = min(max(x, EXP32_LOW), EXP32_HIGH)
    n = np.floor(x * _LOG2_E_32 + _HALF_32)
    r = (x - n * _LN2_HIGH_32) - n * _LN2_LOW_32
    p = np.float32(0.0)
    for coefficient in _EXP32_COEFFICIENTS:
        p = p * r + coefficient
    return p * _float32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


def exp_of(x):
    """``e^x`` in the precision of ``x`` (compiled: :func:`exp32` or :func:`exp64`)."""
    return np.exp(x)


@overload(exp_of, inline="always")
def _exp_of(x):  # pragma: no cover - compiled
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: exp64(x)


@njit(cache=True, inline="always", error_model="numpy")
def _poisson(rate, scaled, one, half):  # pragma: no cover - compiled
    """The number of the cumulative sums ``S_k = sum_{j<=k} rate^j / j!`` (k < MAX_COUNT) below
    ``scaled = uniform exp(rate)``: ``poisson_from_uniform``'s count, the partial sums built the
    way its gathered path builds them (cumulative products of ``rate / k``, then a cumulative
    sum added to ``S_2``)."""
    if not scaled > one:
        return 0
    low = one + rate
    if not scaled > low:
        return 1
    half_square = rate * rate * half
    s_2 = low + half_square
    if not scaled > s_2:
        return 2
    count = 3
    order = one + one + one
    product = one
    total = one - one
    for _ in range(3, MAX_COUNT):
        product = product * (rate / order)
        total = total + half_square * product
        if not scaled > s_2 + total:
            break
        count += 1
        order = order + one
    return count


@njit(cache=True, error_model="numpy")
def _example(
    r, b, weights, biases, feedback, input_history, somas, histories, input_rates, input_exp,
    input_uniform, layer_uniforms, labels, kernel, psp_weights, delayed_weights, constants,
    window, target, coupled, keep, new_input_history, input_psp, new_somas, new_histories,
    soma_means, rate_means, psp_means, apical_means, input_spikes, layer_spikes, steps, counter,
    phase_key, codes, shift, scale, drives, carry_steps, average_rates,
):  # pragma: no cover - compiled; fmt: skip
    """One phase of replica ``r``, example ``b`` (see :func:`phase` for the arguments), of
    ``steps`` steps. With ``counter`` the uniforms are not read from ``input_uniform`` and
    ``layer_uniforms`` but drawn step by step from the counter-based stream of ``phase_key``
    (``kernels.counter_random``: ``codes[j] = mix(j + G)``, the hash's top bits ``>> shift``
    times ``scale``).

    ``drives`` (n_layers, K + T, widest), T >= ``steps``: scratch whose row ``K + t`` of layer
    ``l`` receives the weights applied to the spikes of step ``t`` of the layer below (rows
    ``0 .. K-1``: the history's). ``carry_steps`` > 0: it holds the previous phase, of that many
    steps, run with the same weights (the forward phase before its target phase), whose last
    K rows are this phase's history rows as they are; 0: they are built from the histories.
    ``average_rates``: whether to average the rates over the window (a test needs only the
    somatic potentials: the rates are then computed only for the units that may spike)."""
    dtype = kernel.dtype.type
    one, half = dtype(1.0), dtype(0.5)
    zero = one - one
    # the order of ``_constants``, then the apical drive's gain and the quiet uniform
    hidden_decay, hidden_gain = constants[0], constants[1]
    out_decay, out_gain = constants[2], constants[3]
    target_decay, target_gain = constants[4], constants[5]
    e_drive, i_drive = constants[6], constants[7]
    phi_max, apical_gain, quiet = constants[8], constants[9], constants[10]
    n_layers = len(weights)
    n_hidden = n_layers - 1
    k_taps = kernel.shape[0]
    n_in = input_rates.shape[2]
    n_out = weights[n_layers - 1].shape[2]

    sizes = np.empty(n_layers, dtype=np.int64)
    for layer in range(n_layers):
        sizes[layer] = weights[layer].shape[2]
    widest = sizes.max()
    # Per-layer scratch padded to the widest layer; inner loops run over 1-D views so that their
    # indices are plain loop counters (no negative-index wraparound: they vectorise).
    potential = np.empty((n_layers, widest), dtype=kernel.dtype)
    soma_sum = np.zeros((n_layers, widest), dtype=kernel.dtype)
    rate_sum = np.zeros((n_layers, widest), dtype=kernel.dtype)
    apical_sum = np.zeros((n_layers, widest), dtype=kernel.dtype)
    basal = np.empty(widest, dtype=kernel.dtype)
    apical = np.empty(widest, dtype=kernel.dtype)
    candidates = np.empty(widest, dtype=np.int64)
    candidate_rates = np.empty(widest, dtype=kernel.dtype)
    candidate_scaled = np.empty(widest, dtype=kernel.dtype)
    rates = np.empty(widest, dtype=kernel.dtype)
    output_ring = np.zeros((k_taps, n_out), dtype=kernel.dtype)  # output counts, step t at t % K
    output_psp = np.empty(n_out, dtype=kernel.dtype)
    output_mean = np.zeros(n_out, dtype=kernel.dtype)  # window mean of PSP_out(t - 1)
    for layer in range(n_layers):
        c_layer, before = potential[layer], somas[layer][r, b]
        for j in range(sizes[layer]):
            c_layer[j] = before[j]
    label = labels[r, b]
    rates_in, exp_in = input_rates[r, b], input_exp[r, b]

    # History rows h = 0..K-1 are steps h - K: their products with the weights fill rows h of
    # ``drives``, they enter the window means through the first K weights, and stay in the new
    # history if the phase is shorter than K.
    active = np.empty(n_in, dtype=np.int64)
    n_active = 0
    for i in range(n_in):
        if rates_in[i] != zero:
            active[n_active] = i
            n_active += 1
    # the active inputs' hash codes and exponentials side by side, so that a step's uniforms
    # and Poisson thresholds are one loop without gathers (vectorised); then only the ~1 in 7
    # that spike are gathered
    active_codes = np.empty(n_active, dtype=np.uint64)
    active_exp = np.empty(n_active, dtype=kernel.dtype)
    scaled_in = np.empty(n_active, dtype=kernel.dtype)
    spiking = np.empty(max(n_in, widest), dtype=np.int64)
    for a in range(n_active):
        active_codes[a] = codes[active[a]] if counter else np.uint64(0)
        active_exp[a] = exp_in[active[a]]
    w_in = weights[0][r]
    n_first = sizes[0]
    # Counter-based uniforms: only the active inputs get one; a layer's go into
    # ``step_layer``, which stands where the pre-drawn row of ``layer_uniforms`` would.
    step_layer = np.empty(widest, dtype=kernel.dtype)
    input_key = _combine(phase_key, np.uint64(0))
    layer_keys = np.empty(n_layers, dtype=np.uint64)
    for layer in range(n_layers):
        layer_keys[layer] = _combine(phase_key, np.uint64(layer + 1))
    if carry_steps > 0:
        for layer in range(n_layers):
            for h in range(k_taps):
                source, destination = drives[layer, carry_steps + h], drives[layer, h]
                for j in range(sizes[layer]):
                    destination[j] = source[j]
    else:
        for layer in range(n_layers):
            for h in range(k_taps):
                history_row = drives[layer, h]
                for j in range(sizes[layer]):
                    history_row[j] = zero
        # the units that spiked in a history row (about 1 in 40 inputs) gathered without
        # branches, as in the step loop below: a branch per unit mispredicts too often
        for h in range(k_taps):
            drive = drives[0, h]
            counts = input_history[r, b, h]
            n_spiking = 0
            for i in range(n_in):
                spiking[n_spiking] = i
                n_spiking += counts[i] != zero
            for index in range(n_spiking):
                i = spiking[index]
                count, row = counts[i], w_in[i]
                for j in range(n_first):
                    drive[j] += count * row[j]
        for layer in range(n_hidden):
            w_next = weights[layer + 1][r]
            for h in range(k_taps):
                drive = drives[layer + 1, h]
                counts = histories[layer][r, b, h]
                n_spiking = 0
                for j in range(sizes[layer]):
                    spiking[n_spiking] = j
                    n_spiking += counts[j] != zero
                for index in range(n_spiking):
                    j = spiking[index]
                    count, row = counts[j], w_next[j]
                    for m in range(sizes[layer + 1]):
                        drive[m] += count * row[m]
    # the history's counts in the window means, and in the new history if the phase is shorter
    # than K (adding a zero count's product leaves a sum as it is)
    psp_in = input_psp[r, b]
    for h in range(k_taps):
        counts = input_history[r, b, h]
        weight = psp_weights[h]
        for i in range(n_in):
            psp_in[i] += counts[i] * weight
        if h >= steps:
            for i in range(n_in):
                new_input_history[r, b, h - steps, i] = counts[i]
    for layer in range(n_layers):
        n = sizes[layer]
        for h in range(k_taps):
            counts = histories[layer][r, b, h]
            if layer < n_hidden:
                psp_layer, weight = psp_means[layer][r, b], psp_weights[h]
                for j in range(n):
                    psp_layer[j] += counts[j] * weight
            else:
                late = delayed_weights[h]
                for j in range(n):
                    output_ring[h, j] = counts[j]
                    output_mean[j] += counts[j] * late
            if h >= steps:
                for j in range(n):
                    new_histories[layer][r, b, h - steps, j] = counts[j]

    # The input's spikes do not depend on the network: the whole phase's are drawn first, step
    # by step, then applied input by input, so that a row of the first weights is read once a
    # phase instead of once a spike (the rows of the active inputs outgrow the L2 cache).
    # Each step's row still sums its inputs' products in the order of the inputs.
    for t in range(steps):
        step_row = drives[0, k_taps + t]
        for j in range(n_first):
            step_row[j] = zero
    event_input = np.empty(steps * n_active, dtype=np.int32)
    event_step = np.empty(steps * n_active, dtype=np.int32)
    event_value = np.empty(steps * n_active, dtype=kernel.dtype)
    per_input = np.zeros(n_active + 1, dtype=np.int64)
    n_events = 0
    for t in range(steps):
        # u exp(rate) > 1 is the first threshold of ``_poisson``: no spike below it
        if counter:
            row_key = _combine(input_key, np.uint64(t))
            for a in range(n_active):
                uniform = dtype(_mix(row_key ^ active_codes[a]) >> shift) * scale
                scaled_in[a] = uniform * active_exp[a]
        else:
            uniform_in = input_uniform[r, b, t]
            for a in range(n_active):
                scaled_in[a] = uniform_in[active[a]] * active_exp[a]
        n_spiking = 0
        for a in range(n_active):
            spiking[n_spiking] = a
            n_spiking += scaled_in[a] > one
        for index in range(n_spiking):
            a = spiking[index]
            event_input[n_events] = a
            event_step[n_events] = t
            event_value[n_events] = dtype(_poisson(rates_in[active[a]], scaled_in[a], one, half))
            per_input[a + 1] += 1
            n_events += 1
    # the events grouped by input, in order of time within each (a counting sort)
    for a in range(n_active):
        per_input[a + 1] += per_input[a]
    order = np.empty(n_events, dtype=np.int64)
    filled = per_input[:n_active].copy()
    for event in range(n_events):
        a = event_input[event]
        order[filled[a]] = event
        filled[a] += 1
    for a in range(n_active):
        i = active[a]
        row = w_in[i]
        for position in range(per_input[a], per_input[a + 1]):
            event = order[position]
            t, value = event_step[event], event_value[event]
            drive = drives[0, k_taps + t]
            for j in range(n_first):
                drive[j] += value * row[j]
            psp_in[i] += value * psp_weights[k_taps + t]
            if keep:
                input_spikes[r, b, t, i] = value
            if t >= steps - k_taps:
                new_input_history[r, b, t - steps + k_taps, i] = value

    for t in range(steps):
        slot = t % k_taps
        in_window = t >= steps - window
        # every unit's rate, for the window's mean; elsewhere only the candidates' are needed
        rates_ready = in_window and average_rates
        keep_row = t >= steps - k_taps
        row_index = t - steps + k_taps
        row_weight = psp_weights[k_taps + t]
        if coupled:
            # PSP_out(t - 1): the output counts of steps t - K .. t - 1, slots (t + k) % K
            for j in range(n_out):
                output_psp[j] = zero
            for k in range(k_taps):
                tap = kernel[k]
                counts = output_ring[(t + k) % k_taps]
                for j in range(n_out):
                    output_psp[j] += tap * counts[j]
        for layer in range(n_layers):
            n = sizes[layer]
            c_layer = potential[layer]
            bias = biases[layer][r]
            for j in range(n):
                basal[j] = zero
            for k in range(k_taps):
                tap = kernel[k]
                past = drives[layer, t + 1 + k]
                for j in range(n):
                    basal[j] += tap * past[j]
            if layer < n_hidden:
                if coupled:
                    y = feedback[layer][r]
                    for j in range(n):
                        apical[j] = zero
                    for m in range(n_out):
                        value = output_psp[m]
                        y_row = y[m]
                        for j in range(n):
                            apical[j] += value * y_row[j]
                    for j in range(n):
                        c_layer[j] = (
                            hidden_decay * c_layer[j]
                            + hidden_gain * (basal[j] + bias[j])
                            + apical_gain * apical[j]
                        )
                    if in_window:
                        apical_layer = apical_sum[layer]
                        for j in range(n):
                            apical_layer[j] += apical[j]
                else:
                    for j in range(n):
                        c_layer[j] = hidden_decay * c_layer[j] + hidden_gain * (basal[j] + bias[j])
            elif target:
                for j in range(n):
                    teaching = e_drive if j == label else i_drive
                    c_layer[j] = (
                        target_decay * c_layer[j] + target_gain * (basal[j] + bias[j]) + teaching
                    )
            else:
                for j in range(n):
                    c_layer[j] = out_decay * c_layer[j] + out_gain * (basal[j] + bias[j])
            n_next = sizes[layer + 1] if layer < n_hidden else 0
            drive = drives[layer + 1 if layer < n_hidden else layer, k_taps + t]
            for m in range(n_next):
                drive[m] = zero
            if counter:
                row_key = _combine(layer_keys[layer], np.uint64(t))
                for j in range(n):
                    step_layer[j] = dtype(_mix(row_key ^ codes[j]) >> shift) * scale
                uniforms = step_layer
            else:
                uniforms = layer_uniforms[layer][r, b, t]
            if in_window:
                soma_layer = soma_sum[layer]
                for j in range(n):
                    soma_layer[j] += c_layer[j]
            if rates_ready:
                rate_layer = rate_sum[layer]
                for j in range(n):
                    rate = phi_max * (one / (one + exp_of(-c_layer[j])))
                    rates[j] = rate  # the spikes below need it too: one exponential, not two
                    rate_layer[j] += rate
            # u exp(rate) <= u exp(phi_max) < 1 below ``quiet``: no spike whatever the rate.
            # Four uniforms in five are below it; the rest are gathered without branches, and
            # their rates and Poisson thresholds computed in loops without branches (vectorised)
            n_candidates = 0
            for j in range(n):
                candidates[n_candidates] = j
                n_candidates += uniforms[j] >= quiet
            if rates_ready:
                for index in range(n_candidates):
                    candidate_rates[index] = rates[candidates[index]]
            else:
                for index in range(n_candidates):
                    candidate_rates[index] = c_layer[candidates[index]]
                for index in range(n_candidates):
                    c = candidate_rates[index]
                    candidate_rates[index] = phi_max * (one / (one + exp_of(-c)))
            for index in range(n_candidates):
                candidate_scaled[index] = uniforms[candidates[index]]
            for index in range(n_candidates):
                rate = candidate_rates[index]
                candidate_scaled[index] = candidate_scaled[index] * exp_of(rate)
            if layer == n_hidden:
                for j in range(n):
                    output_ring[slot, j] = zero
            # what a spike touches, looked up once per layer and step
            w_next = weights[layer + 1][r] if layer < n_hidden else w_in
            psp_row = psp_means[layer][r, b] if layer < n_hidden else output_mean
            delayed_weight = delayed_weights[k_taps + t]
            # the candidates that spike (u exp(rate) > 1), gathered without branches: whether
            # a candidate spikes is a coin toss that a branch would mispredict half the time
            n_spiking = 0
            for index in range(n_candidates):
                spiking[n_spiking] = index
                n_spiking += candidate_scaled[index] > one
            for spike in range(n_spiking):
                index = spiking[spike]
                j = candidates[index]
                value = dtype(_poisson(candidate_rates[index], candidate_scaled[index], one, half))
                if layer < n_hidden:
                    row = w_next[j]
                    for m in range(n_next):
                        drive[m] += value * row[m]
                    psp_row[j] += value * row_weight
                else:
                    output_ring[slot, j] = value
                    output_mean[j] += value * delayed_weight
                if keep:
                    layer_spikes[layer][r, b, t, j] = value
                if keep_row:
                    new_histories[layer][r, b, row_index, j] = value

    span = dtype(window)
    for layer in range(n_layers):
        for j in range(sizes[layer]):
            new_somas[layer][r, b, j] = potential[layer, j]
            soma_means[layer][r, b, j] = soma_sum[layer, j] / span
            rate_means[layer][r, b, j] = rate_sum[layer, j] / span
    for layer in range(n_hidden):
        out = apical_means[layer][r, b]
        if coupled:
            for j in range(sizes[layer]):
                out[j] = apical_sum[layer, j] / span
        else:
            y = feedback[layer][r]
            for m in range(n_out):
                value = output_mean[m]
                y_row = y[m]
                for j in range(sizes[layer]):
                    out[j] += value * y_row[j]


@njit(parallel=True, cache=True, error_model="numpy")
def _phase(
    weights, biases, feedback, input_history, somas, histories, input_rates, input_exp,
    input_uniform, layer_uniforms, labels, kernel, psp_weights, delayed_weights, constants,
    window, target, coupled, keep, new_input_history, input_psp, new_somas, new_histories,
    soma_means, rate_means, psp_means, apical_means, input_spikes, layer_spikes, steps,
    counter, keys, example, phase_index, codes, shift, scale, average_rates,
):  # pragma: no cover - compiled; fmt: skip
    replicas, examples = input_rates.shape[0], input_rates.shape[1]
    widest = 0
    for weight in weights:
        widest = max(widest, weight.shape[2])
    for index in prange(replicas * examples):
        r, b = index // examples, index % examples
        drives = np.empty((len(weights), kernel.shape[0] + steps, widest), dtype=kernel.dtype)
        phase_key = np.uint64(0)
        if counter:  # example b of the batch is example ``example + b`` of the stream
            phase_key = _combine(_combine(keys[r], np.uint64(example + b)), np.uint64(phase_index))
        _example(
            r, b, weights, biases, feedback, input_history, somas, histories, input_rates,
            input_exp, input_uniform, layer_uniforms, labels, kernel, psp_weights,
            delayed_weights, constants, window, target, coupled, keep, new_input_history,
            input_psp, new_somas, new_histories, soma_means, rate_means, psp_means,
            apical_means, input_spikes, layer_spikes, steps, counter, phase_key, codes, shift,
            scale, drives, 0, average_rates,
        )  # fmt: skip


def phase(
    weights, biases, feedback, input_history, somas, histories, input_rates, input_uniform,
    layer_uniforms, labels, kernel, constants, window, coupled, keep, out, input_exp=None,
    counter=None, average_rates=True,
) -> None:  # fmt: skip
    """One phase for every replica and example, written into the arrays of ``out``.

    Arrays are NumPy, one float dtype (float32 or float64), C-contiguous, with the layouts of
    ``simulate_phase``: ``weights[l]`` (R, n_below, n_l), ``biases[l]`` (R, n_l),
    ``feedback[l]`` (R, n_out, n_l) per hidden layer, ``input_history`` (R, B, K, n_in),
    ``somas[l]`` (R, B, n_l), ``histories[l]`` (R, B, K, n_l), ``input_rates`` (R, B, n_in),
    ``input_uniform`` (R, B, T, n_in), ``layer_uniforms[l]`` (R, B, T, n_l); ``labels`` (R, B)
    int64 (the target phase) or None; ``kernel`` (K,) the taps, oldest first; ``constants``
    the model's ``_constants`` (decays and drive gains, phi_max, the apical gain); ``window``
    the steps averaged; ``coupled``: whether the apical potential drives the soma (``g_a != 0``);
    ``keep``: whether to record spikes; ``input_exp``: ``exp(input_rates)`` as the reference
    computes it (PyTorch's exponential may round differently from NumPy's).

    ``counter``: None, or ``(keys, example, phase, steps)`` to draw the uniforms inside the loop
    from the counter-based stream instead (``kernels.counter_random``: replica ``r``, example
    ``b`` at ``keys[r] -> example + b -> phase``; ``keys`` (R,) uint64); the uniform arguments
    are then ignored (None). ``average_rates``: False leaves ``rate_means`` at zero, and computes
    a rate only where a uniform could make a spike (what a test needs).

    ``out``: zero-filled arrays ``new_input_history``, ``input_psp`` (R, B, n_in),
    ``new_somas``, ``new_histories``, ``soma_means``, ``rate_means``, ``psp_means`` (per hidden
    layer, its output train's mean PSP), ``apical_means``, and with ``keep`` ``input_spikes``
    (R, B, T, n_in) and ``layer_spikes``, in that order (a dict or sequence).
    """
    dtype = kernel.dtype
    n_layers = len(weights)
    if counter is None:
        steps = input_uniform.shape[2]
        keys, example, phase_index = np.zeros(1, dtype=np.uint64), 0, 0
        codes, shift, scale = keys, np.uint64(0), dtype.type(0.0)
    else:
        keys, example, phase_index, steps = counter
        bits = counter_random.mantissa_bits(dtype)
        widest = max(input_rates.shape[2], *(w.shape[2] for w in weights))
        codes, shift, scale = _codes(widest), np.uint64(64 - bits), dtype.type(2.0**-bits)
        input_uniform = np.zeros((1, 1, 1, 1), dtype=dtype)
        layer_uniforms = (input_uniform,) * n_layers
    psp_weights, delayed_weights = _phase_window(steps, window, kernel.tobytes(), dtype)
    constants = _phase_constants(tuple(constants), dtype)
    (
        new_input_history, input_psp, new_somas, new_histories, soma_means, rate_means,
        psp_means, apical_means, input_spikes, layer_spikes,
    ) = out  # fmt: skip
    # Numba indexes homogeneous tuples at run time; a tuple needs at least one member to be
    # typed, so the per-hidden-layer ones get a placeholder in a network without hidden layers.
    pad3 = np.zeros((1, 1, 1), dtype=dtype)
    if n_layers == 1:
        feedback, psp_means, apical_means = (pad3,), (pad3,), (pad3,)
    if not keep:
        input_spikes = np.zeros((1, 1, 1, 1), dtype=dtype)
        layer_spikes = (input_spikes,) * n_layers
    target = labels is not None
    if labels is None:
        labels = np.zeros(input_rates.shape[:2], dtype=np.int64)
    _phase(
        tuple(weights), tuple(biases), tuple(feedback), input_history, tuple(somas),
        tuple(histories), input_rates, np.exp(input_rates) if input_exp is None else input_exp,
        input_uniform,
        tuple(layer_uniforms), labels, kernel, psp_weights, delayed_weights, constants,
        window, target, coupled, keep, new_input_history, input_psp, tuple(new_somas),
        tuple(new_histories), tuple(soma_means), tuple(rate_means), tuple(psp_means),
        tuple(apical_means), input_spikes, tuple(layer_spikes), steps, counter is not None,
        np.asarray(keys, dtype=np.uint64), example, phase_index, codes, shift, scale,
        average_rates,
    )  # fmt: skip


@functools.lru_cache(maxsize=64)
def _phase_constants(constants: tuple[float, ...], dtype: np.dtype) -> np.ndarray:
    """``_constants`` and the quiet uniform, as the kernel's dtype (built once per setting)."""
    phi_max = float(constants[8])
    # Uniforms below this cannot give a spike whatever the rate (<= phi_max): u exp(phi_max) is
    # kept a safe margin below 1 so that an exp rounded differently from PyTorch's cannot matter.
    quiet = (1.0 - 1e-4) * np.exp(-phi_max)
    return np.asarray([*constants, quiet], dtype=dtype)


@njit(cache=True, inline="always", error_model="numpy")
def _sigmoid(x, one):  # pragma: no cover - compiled
    return one / (one + np.exp(-x))


@njit(cache=True, error_model="numpy")
def _plateau(
    r, weights, biases, forward_soma, target_rate, forward_apical, target_apical, input_psp,
    psp_means, rule,
):  # pragma: no cover - compiled; fmt: skip
    """``credit.plateau.plateau_step`` for replica ``r`` (one example): the errors

        E_out = -(rate_t - phi_max sigmoid(C_f)) k_d phi_max sigmoid'(C_f)
        E_l   = -(sigmoid(A_t) - sigmoid(A_f)) k_b phi_max sigmoid'(C_f)

    and ``W_l += alpha_l PSP_below (x) E_l``, ``b_l += alpha_l E_l`` with
    ``alpha_l = -eta_l P_l`` (``rule``: k_d, k_b, phi_max, then alpha_l per layer). Rows whose
    mean PSP is 0 are skipped: their change is exactly 0. The products are taken in PyTorch's
    order (``-(difference) k phi_max``, then the slope), so float64 agrees to rounding."""
    one = rule.dtype.type(1.0)
    zero = one - one
    k_d, k_b, phi_max = rule[0], rule[1], rule[2]
    n_layers = len(weights)
    n_hidden = n_layers - 1
    widest = 0
    for layer in range(n_layers):
        widest = max(widest, weights[layer].shape[2])
    error = np.empty(widest, dtype=rule.dtype)
    for layer in range(n_layers):
        n = weights[layer].shape[2]
        c_f = forward_soma[layer][r, 0]
        if layer < n_hidden:
            a_f, a_t = forward_apical[layer][r, 0], target_apical[layer][r, 0]
            for j in range(n):
                s = _sigmoid(c_f[j], one)
                plateau = _sigmoid(a_t[j], one) - _sigmoid(a_f[j], one)
                error[j] = -plateau * k_b * phi_max * (s * (one - s))
        else:
            rate_t = target_rate[layer][r, 0]
            for j in range(n):
                s = _sigmoid(c_f[j], one)
                error[j] = -(rate_t[j] - phi_max * s) * k_d * phi_max * (s * (one - s))
        alpha = rule[3 + layer]
        below = input_psp[r, 0] if layer == 0 else psp_means[layer - 1][r, 0]
        w = weights[layer][r]
        for i in range(below.shape[0]):
            value = below[i]
            if value == zero:
                continue
            row = w[i]
            for j in range(n):
                row[j] += alpha * (value * error[j])
        bias = biases[layer][r]
        for j in range(n):
            bias[j] += alpha * error[j]


@njit(cache=True, error_model="numpy")
def _learn(
    r, weights, biases, feedback, input_history, somas, histories, input_rates, input_exp,
    labels, kernel, forward_psp, forward_delayed, target_psp, target_delayed, constants, rule,
    window, coupled, keys, example, forward_steps, target_steps, codes, shift, scale,
    middle_history, middle_somas, middle_histories, f_psp, f_soma, f_rate, f_psp_means,
    f_apical, new_input_history, new_somas, new_histories, t_psp, t_soma, t_rate, t_psp_means,
    t_apical, spikes, layer_spikes,
):  # pragma: no cover - compiled; fmt: skip
    """One online example of replica ``r``: the forward phase (state -> ``middle_*``), the
    target phase (``middle_*`` -> ``new_*``), both drawing from the counter-based stream, then
    the plateau update of the weights in place. ``f_*`` and ``t_*``: the input PSP, soma, rate, PSP
    and apical means of the forward and the target phase."""
    example_key = _combine(keys[r], np.uint64(example))
    widest = 0
    for weight in weights:
        widest = max(widest, weight.shape[2])
    rows = kernel.shape[0] + max(forward_steps, target_steps)
    drives = np.empty((len(weights), rows, widest), dtype=kernel.dtype)
    _example(
        r, 0, weights, biases, feedback, input_history, somas, histories, input_rates, input_exp,
        spikes, layer_spikes, labels, kernel, forward_psp, forward_delayed, constants, window,
        False, coupled, False, middle_history, f_psp, middle_somas, middle_histories, f_soma,
        f_rate, f_psp_means, f_apical, spikes, layer_spikes, forward_steps, True,
        _combine(example_key, np.uint64(0)), codes, shift, scale, drives, 0, True,
    )  # fmt: skip
    _example(
        r, 0, weights, biases, feedback, middle_history, middle_somas, middle_histories,
        input_rates, input_exp, spikes, layer_spikes, labels, kernel, target_psp,
        target_delayed, constants, window, True, coupled, False, new_input_history, t_psp,
        new_somas, new_histories, t_soma, t_rate, t_psp_means, t_apical, spikes, layer_spikes,
        target_steps, True, _combine(example_key, np.uint64(1)), codes, shift, scale, drives,
        forward_steps, True,
    )  # fmt: skip
    _plateau(r, weights, biases, f_soma, t_rate, f_apical, t_apical, f_psp, f_psp_means, rule)


@njit(parallel=True, cache=True, error_model="numpy")
def _learn_batch(
    weights, biases, feedback, input_history, somas, histories, input_rates, input_exp,
    labels, kernel, forward_psp, forward_delayed, target_psp, target_delayed, constants, rule,
    window, coupled, keys, example, forward_steps, target_steps, codes, shift, scale,
    middle_history, middle_somas, middle_histories, f_psp, f_soma, f_rate, f_psp_means,
    f_apical, new_input_history, new_somas, new_histories, t_psp, t_soma, t_rate, t_psp_means,
    t_apical, spikes, layer_spikes,
):  # pragma: no cover - compiled; fmt: skip
    for r in prange(input_rates.shape[0]):
        _learn(
            r, weights, biases, feedback, input_history, somas, histories, input_rates,
            input_exp, labels, kernel, forward_psp, forward_delayed, target_psp, target_delayed,
            constants, rule, window, coupled, keys, example, forward_steps, target_steps, codes,
            shift, scale, middle_history, middle_somas, middle_histories, f_psp, f_soma, f_rate,
            f_psp_means, f_apical, new_input_history, new_somas, new_histories, t_psp, t_soma,
            t_rate, t_psp_means, t_apical, spikes, layer_spikes,
        )  # fmt: skip


@functools.lru_cache(maxsize=16)
def _codes(units: int) -> np.ndarray:
    """``mix(j + G)`` for ``j < units``: the per-unit half of ``combine(row key, j)``."""
    return counter_random.mix(np.arange(units, dtype=np.uint64) + GOLDEN)


@functools.lru_cache(maxsize=256)
def _phase_window(steps: int, window: int, kernel: bytes, dtype: np.dtype):
    """:func:`window_weights` of a phase of ``steps`` steps, undelayed and one step late, for
    the taps ``kernel`` (their bytes: a key that is cheap to hash)."""
    taps = tuple(float(v) for v in np.frombuffer(kernel, dtype=dtype))
    return (
        window_weights(steps, window, taps, 0, dtype),
        window_weights(steps, window, taps, 1, dtype),
    )


def learn(
    weights, biases, feedback, state, input_rates, labels, kernel, constants, rule, window,
    coupled, keys, example, phase_steps, forward, target, input_exp=None,
) -> None:  # fmt: skip
    """One online training example of every replica, in one compiled call: the forward phase,
    the target phase and the plateau update (weights and biases changed in place), with the
    uniforms of replica ``r`` drawn inside the loop from the counter-based stream
    ``keys[r] -> example -> phase (0 forward, 1 target) -> population -> step -> unit``
    (``kernels.counter_random``; the values the model's ``counter_noise`` puts in a
    ``PhaseNoise``).

    Layouts as in :func:`phase`, one example per replica (B = 1): ``state`` the arrays
    ``(input_history, somas, histories)``; ``labels`` (R, 1) int64; ``constants`` the model's
    ``_constants`` (a tuple); ``rule`` (k_d, k_b, phi_max, then ``-eta_l P_l`` per layer);
    ``keys`` (R,) uint64; ``phase_steps`` the two lengths. ``forward``: zero-filled
    ``(new_input_history, input_psp, new_somas, new_histories, soma_means, rate_means,
    psp_means, apical_means)`` of the forward phase (its state is where the target phase
    starts), ``target`` the same for the target phase.
    """
    dtype = kernel.dtype
    replicas, examples = input_rates.shape[:2]
    if examples != 1:
        raise ValueError(f"online learning takes one example per replica, got {examples}")
    f_steps, t_steps = (int(s) for s in phase_steps)
    taps = kernel.tobytes()
    bits = counter_random.mantissa_bits(dtype)
    n_layers = len(weights)
    pad3 = np.zeros((1, 1, 1), dtype=dtype)
    if n_layers == 1:
        feedback = (pad3,)
    spikes = np.zeros((1, 1, 1, 1), dtype=dtype)
    input_history, somas, histories = state

    def averages(out):
        _, input_psp, _, _, soma_means, rate_means, psp_means, apical_means = out
        if n_layers == 1:
            psp_means, apical_means = (pad3,), (pad3,)
        return (
            input_psp,
            tuple(soma_means),
            tuple(rate_means),
            tuple(psp_means),
            tuple(apical_means),
        )

    widest = max(input_rates.shape[2], *(w.shape[2] for w in weights))
    arguments = (
        tuple(weights), tuple(biases), tuple(feedback), input_history, tuple(somas),
        tuple(histories), input_rates, np.exp(input_rates) if input_exp is None else input_exp,
        labels, kernel, *_phase_window(f_steps, window, taps, dtype),
        *_phase_window(t_steps, window, taps, dtype), _phase_constants(tuple(constants), dtype),
        np.asarray(rule, dtype=dtype), window, coupled, keys, example, f_steps, t_steps,
        _codes(widest), np.uint64(64 - bits), dtype.type(2.0**-bits), forward[0],
        tuple(forward[2]), tuple(forward[3]), *averages(forward), target[0], tuple(target[2]),
        tuple(target[3]), *averages(target), spikes, (spikes,) * n_layers,
    )  # fmt: skip
    # one network: no parallel region to enter (its start costs more than a thread saves here)
    if replicas == 1:
        _learn(0, *arguments)
    else:
        _learn_batch(*arguments)


@njit(cache=True, error_model="numpy")
def _signals(r, e, weights, f_soma, t_rate, f_apical, t_apical, rule, plateau_out,
             backprop_out):  # pragma: no cover - compiled; fmt: skip
    """Example ``e``'s hidden errors for replica ``r``, read after the update: the plateau
    rule's ``E_l`` (``credit.plateau.hidden_errors``) into ``plateau_out[l][r, e]`` and backprop's
    through the same averages and the updated weights (``backprop_signals``,
    ``E_l = (W_{l+1} E_{l+1}) k_b phi_max sigmoid'(C_f)`` from ``E_out``) into
    ``backprop_out[l][r, e]``."""
    one = rule.dtype.type(1.0)
    zero = one - one
    k_d, k_b, phi_max = rule[0], rule[1], rule[2]
    n_layers = len(weights)
    n_hidden = n_layers - 1
    out = n_layers - 1
    n_out = weights[out].shape[2]
    widest = n_out
    for layer in range(n_hidden):
        widest = max(widest, weights[layer].shape[2])
    above = np.empty(widest, dtype=rule.dtype)
    below = np.empty(widest, dtype=rule.dtype)
    c_f, rate_t = f_soma[out][r, 0], t_rate[out][r, 0]
    for j in range(n_out):
        s = _sigmoid(c_f[j], one)
        above[j] = -(rate_t[j] - phi_max * s) * k_d * phi_max * (s * (one - s))
    n_above = n_out
    for layer in range(n_hidden - 1, -1, -1):
        n = weights[layer].shape[2]
        w = weights[layer + 1][r]  # (n, n_above)
        c_f = f_soma[layer][r, 0]
        a_f, a_t = f_apical[layer][r, 0], t_apical[layer][r, 0]
        plateau, exact = plateau_out[layer][r, e], backprop_out[layer][r, e]
        for i in range(n):
            total = zero
            row = w[i]
            for m in range(n_above):
                total += row[m] * above[m]
            s = _sigmoid(c_f[i], one)
            slope = s * (one - s)
            below[i] = total * k_b * phi_max * slope
            exact[i] = below[i]
            plateau[i] = -(_sigmoid(a_t[i], one) - _sigmoid(a_f[i], one)) * k_b * phi_max * slope
        for i in range(n):
            above[i] = below[i]
        n_above = n


@njit(cache=True, error_model="numpy")
def _zero_replica(r, arrays):  # pragma: no cover - compiled
    """Zero row ``r`` (the first index) of every array of the homogeneous tuple ``arrays``."""
    for a in arrays:
        a[r].fill(0)


@njit(cache=True, error_model="numpy")
def _copy_replica(r, source, destination):  # pragma: no cover - compiled
    """Row ``r`` of each array of ``source`` into the same array of ``destination``."""
    for index in range(len(source)):
        destination[index][r] = source[index][r]


@njit(cache=True, error_model="numpy")
def _learn_chunk(
    r, weights, biases, feedback, input_history, somas, histories, chunk_rates, chunk_exp,
    chunk_labels, kernel, psp_table, delayed_table, constants, rule, window, coupled, keys,
    first_example, lengths, codes, shift, scale, input_rates, input_exp, labels, middle_history,
    middle_somas, middle_histories, f_psp, f_soma, f_rate, f_psp_means, f_apical,
    new_input_history, new_somas, new_histories, t_psp, t_soma, t_rate, t_psp_means, t_apical,
    spikes, layer_spikes, output_soma, plateau_out, backprop_out,
):  # pragma: no cover - compiled; fmt: skip
    """``_learn`` for examples ``0 .. C-1`` of the chunk in turn (replica ``r``), example ``e``
    at ``first_example + e`` of the stream, each starting from the state the previous one left
    (``input_history``, ``somas``, ``histories``, updated in place); per example the forward
    phase's mean output somatic potential into ``output_soma[r, e]`` and the hidden errors of
    :func:`_signals`. The per-example arrays (``input_rates`` .. ``t_apical``) are scratch."""
    n_hidden = len(weights) - 1
    for e in range(chunk_rates.shape[1]):
        input_rates[r, 0] = chunk_rates[r, e]
        input_exp[r, 0] = chunk_exp[r, e]
        labels[r, 0] = chunk_labels[r, e]
        # what the phases accumulate into or write only where a spike fell (the rest is
        # assigned whole)
        _zero_replica(r, (middle_history, new_input_history))
        _zero_replica(r, middle_histories)
        _zero_replica(r, new_histories)
        _zero_replica(r, (f_psp, t_psp))
        _zero_replica(r, f_psp_means)
        _zero_replica(r, t_psp_means)
        _zero_replica(r, f_apical)
        _zero_replica(r, t_apical)
        f_steps, t_steps = lengths[e, 0], lengths[e, 1]
        _learn(
            r, weights, biases, feedback, input_history, somas, histories, input_rates,
            input_exp, labels, kernel, psp_table[f_steps], delayed_table[f_steps],
            psp_table[t_steps], delayed_table[t_steps], constants, rule, window, coupled, keys,
            first_example + e, f_steps, t_steps, codes, shift, scale, middle_history,
            middle_somas, middle_histories, f_psp, f_soma, f_rate, f_psp_means, f_apical,
            new_input_history, new_somas, new_histories, t_psp, t_soma, t_rate, t_psp_means,
            t_apical, spikes, layer_spikes,
        )  # fmt: skip
        input_history[r] = new_input_history[r]
        _copy_replica(r, new_somas, somas)
        _copy_replica(r, new_histories, histories)
        output_soma[r, e] = f_soma[len(weights) - 1][r, 0]
        if n_hidden:
            _signals(r, e, weights, f_soma, t_rate, f_apical, t_apical, rule, plateau_out,
                     backprop_out)  # fmt: skip


@njit(parallel=True, cache=True, error_model="numpy")
def _learn_chunk_batch(
    weights, biases, feedback, input_history, somas, histories, chunk_rates, chunk_exp,
    chunk_labels, kernel, psp_table, delayed_table, constants, rule, window, coupled, keys,
    first_example, lengths, codes, shift, scale, input_rates, input_exp, labels, middle_history,
    middle_somas, middle_histories, f_psp, f_soma, f_rate, f_psp_means, f_apical,
    new_input_history, new_somas, new_histories, t_psp, t_soma, t_rate, t_psp_means, t_apical,
    spikes, layer_spikes, output_soma, plateau_out, backprop_out,
):  # pragma: no cover - compiled; fmt: skip
    for r in prange(chunk_rates.shape[0]):
        _learn_chunk(
            r, weights, biases, feedback, input_history, somas, histories, chunk_rates,
            chunk_exp, chunk_labels, kernel, psp_table, delayed_table, constants, rule, window,
            coupled, keys, first_example, lengths, codes, shift, scale, input_rates, input_exp,
            labels, middle_history, middle_somas, middle_histories, f_psp, f_soma, f_rate,
            f_psp_means, f_apical, new_input_history, new_somas, new_histories, t_psp, t_soma,
            t_rate, t_psp_means, t_apical, spikes, layer_spikes, output_soma, plateau_out,
            backprop_out,
        )  # fmt: skip


def _window_tables(lengths: np.ndarray, window: int, taps: bytes, dtype: np.dtype):
    """:func:`_phase_window` of every phase length in ``lengths`` as two tables whose row
    ``steps`` holds that length's weights (zero-padded): one array for a compiled loop over
    examples of different lengths."""
    longest = int(lengths.max())
    k = len(taps) // dtype.itemsize
    psp, delayed = (np.zeros((longest + 1, k + longest), dtype=dtype) for _ in range(2))
    for steps in np.unique(lengths):
        undelayed, late = _phase_window(int(steps), window, taps, dtype)
        psp[steps, : len(undelayed)] = undelayed
        delayed[steps, : len(late)] = late
    return psp, delayed


def learn_chunk(
    weights, biases, feedback, state, chunk_rates, chunk_labels, kernel, constants, rule, window,
    coupled, keys, first_example, lengths, output_soma, plateau_out, backprop_out,
    chunk_exp=None,
) -> None:  # fmt: skip
    """:func:`learn` for C online examples in turn, in one compiled call: example ``e`` of
    replica ``r`` is ``chunk_rates[r, e]`` (R, C, n_in) with label ``chunk_labels[r, e]`` and
    phase lengths ``lengths[e]`` ((C, 2) int64), drawing from the stream at
    ``first_example + e``. ``state``: the arrays ``(input_history, somas, histories)``, carried
    from example to example and left holding the state after the last (changed in place).
    Written per example: ``output_soma`` (R, C, n_out), the forward phase's mean somatic
    potential of the output layer; per hidden layer ``plateau_out[l]`` and ``backprop_out[l]``
    (R, C, n_l), the plateau rule's error and backprop's through the same averages and the
    weights after the update (a network without hidden layers: empty sequences)."""
    dtype = kernel.dtype
    replicas, examples, n_in = chunk_rates.shape
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if lengths.shape != (examples, 2):
        raise ValueError(f"need (C, 2) phase lengths for {examples} examples, got {lengths.shape}")
    bits = counter_random.mantissa_bits(dtype)
    n_layers = len(weights)
    layers = [w.shape[2] for w in weights]
    k = kernel.shape[0]
    pad3 = np.zeros((1, 1, 1), dtype=dtype)
    if n_layers == 1:
        feedback, plateau_out, backprop_out = (pad3,), (pad3,), (pad3,)
    spikes = np.zeros((1, 1, 1, 1), dtype=dtype)
    input_history, somas, histories = state

    def per_layer(shape, which=layers):
        return tuple(np.zeros((replicas, 1, *shape(n)), dtype=dtype) for n in which) or (pad3,)

    def phase_arrays():
        return (
            np.zeros((replicas, 1, n_in), dtype=dtype),  # input PSP mean
            per_layer(lambda n: (n,)),  # soma means
            per_layer(lambda n: (n,)),  # rate means
            per_layer(lambda n: (n,), layers[:-1]),  # PSP means
            per_layer(lambda n: (n,), layers[:-1]),  # apical means
        )

    f_arrays, t_arrays = phase_arrays(), phase_arrays()
    psp_table, delayed_table = _window_tables(lengths, window, kernel.tobytes(), dtype)
    widest = max(n_in, *layers)
    _learn_chunk_batch(
        tuple(weights), tuple(biases), tuple(feedback), input_history, tuple(somas),
        tuple(histories), chunk_rates,
        np.exp(chunk_rates) if chunk_exp is None else chunk_exp,
        np.ascontiguousarray(chunk_labels, dtype=np.int64), kernel, psp_table, delayed_table,
        _phase_constants(tuple(constants), dtype), np.asarray(rule, dtype=dtype), window,
        coupled, keys, first_example, lengths, _codes(widest), np.uint64(64 - bits),
        dtype.type(2.0**-bits), np.zeros((replicas, 1, n_in), dtype=dtype),
        np.zeros((replicas, 1, n_in), dtype=dtype), np.zeros((replicas, 1), dtype=np.int64),
        np.zeros((replicas, 1, k, n_in), dtype=dtype), per_layer(lambda n: (n,)),
        per_layer(lambda n: (k, n)), *f_arrays, np.zeros((replicas, 1, k, n_in), dtype=dtype),
        per_layer(lambda n: (n,)), per_layer(lambda n: (k, n)), *t_arrays, spikes,
        (spikes,) * n_layers, output_soma, tuple(plateau_out), tuple(backprop_out),
    )  # fmt: skip
