"""Compiled CPU loops for recurrent spiking networks (Numba, the ``fast`` extra): the time loop of
``neurons.lif_step`` over a whole segment with the recurrent weights inside it, and the linear
recursions e-prop's segmented path runs over time. Each is tested equal to the PyTorch code it
replaces (``tests/test_kernels.py``).

Why compiled: at the evidence-accumulation size (batch 64, 100 neurons) one time step is about
30 small tensor operations whose dispatch costs far more than their arithmetic, and spikes are
sparse (a few percent of neurons per step), so the recurrent input is cheaper as a sum over the
neurons that spiked than as a dense product. Batch rows are independent: they run in parallel.

The functions take and return NumPy arrays (float32 or float64, C-contiguous); ``credit.eprop``
converts. Equations as in ``neurons.lif``:

    a^t = rho a^{t-1} + z^{t-1}
    v^t = alpha v^{t-1} + I^t + W_rec z^{t-1} - z^{t-1} v_th
    x^t = (v^t - v_th - beta a^t) / v_th;  z^t = [x^t > 0] and not refractory
    psi^t = (gamma max(0, 1 - |x^t|)) / v_th, 0 when refractory
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange


def follow_torch_threads() -> None:
    """Run the kernels on as many threads as PyTorch's intra-op setting (which the executors
    lower for parallel workers), so that the two never oversubscribe the cores."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


@njit(cache=True)
def _recurrent_input(z_b, w_rec_t, recurrent):  # pragma: no cover - compiled
    """``recurrent = W_rec z``, event-driven: only the neurons that spiked send."""
    recurrent[:] = 0.0
    n = recurrent.shape[0]
    for i in range(n):
        if z_b[i] != 0.0:
            w_i = w_rec_t[i]
            for j in range(n):
                recurrent[j] += w_i[j]


@njit(cache=True)
def _neurons_step(
    current_t, recurrent, v_b, z_b, a_b, refractory_b, spikes_t, psi_t, beta,
    alpha, v_th, n_refractory, rho, gamma,
):  # pragma: no cover - compiled; fmt: skip
    """One step of one batch row's neurons (the equations of the module docstring)."""
    zero, one = alpha * 0, alpha * 0 + 1
    n = v_b.shape[0]
    for j in range(n):
        previous = z_b[j]
        a_new = rho * a_b[j] + previous
        v_new = alpha * v_b[j] + (current_t[j] + recurrent[j]) - previous * v_th
        distance = (v_new - (v_th + beta[j] * a_new)) / v_th
        ready = refractory_b[j] <= zero
        spike = one if (distance > zero and ready) else zero
        psi_t[j] = (gamma * max(zero, one - abs(distance))) / v_th if ready else zero
        spikes_t[j] = spike
        v_b[j], a_b[j] = v_new, a_new
        refractory_b[j] = n_refractory if spike > zero else max(refractory_b[j] - one, zero)
    for j in range(n):
        z_b[j] = spikes_t[j]


@njit(parallel=True, cache=True, fastmath=False)
def lif_segment(
    current, w_rec_t, v, z, a, refractory, alpha, v_th, n_refractory, beta, rho, dampening
):  # pragma: no cover - compiled; tested through its results
    """Advance the network over ``k`` steps. ``current`` ``(k, batch, n)`` the input currents
    ``W_in x^t``; ``w_rec_t`` ``(n, n)`` the recurrent weights transposed (row ``i``: what a spike
    of neuron ``i`` adds); ``v, z, a, refractory`` ``(batch, n)`` the state, updated in place.
    Returns spikes and pseudo-derivatives ``(k, batch, n)``."""
    k, batch, n = current.shape
    dtype = current.dtype.type
    spikes = np.empty_like(current)
    psi = np.empty_like(current)
    alpha, v_th, n_refractory = dtype(alpha), dtype(v_th), dtype(n_refractory)
    rho, gamma = dtype(rho), dtype(dampening)
    for b in prange(batch):
        recurrent = np.empty(n, dtype=current.dtype)
        for t in range(k):
            _recurrent_input(z[b], w_rec_t, recurrent)
            _neurons_step(
                current[t, b], recurrent, v[b], z[b], a[b], refractory[b], spikes[t, b],
                psi[t, b], beta, alpha, v_th, n_refractory, rho, gamma,
            )  # fmt: skip
    return spikes, psi


@njit(parallel=True, cache=True, fastmath=False)
def lif_segment_with_traces(
    current, w_rec_t, v, z, a, refractory, alpha, v_th, n_refractory, beta, rho, dampening,
    x, eps_in, eps_rec,
):  # pragma: no cover - compiled; fmt: skip
    """:func:`lif_segment` that also writes e-prop's presynaptic traces in the same loop (one pass
    over the segment instead of two): ``eps_v^t = alpha eps_v^{t-1} + (x^t, z^{t-1})`` from
    ``x`` ``(batch, k, n_in)`` and the traces ``eps_in``, ``eps_rec`` before the segment
    (updated in place to the segment's last). Returns spikes, pseudo-derivatives and
    ``eps_v`` ``(k, batch, n_in + n)``."""
    k, batch, n = current.shape
    n_in = x.shape[2]
    dtype = current.dtype.type
    spikes = np.empty_like(current)
    psi = np.empty_like(current)
    traces = np.empty((k, batch, n_in + n), dtype=current.dtype)
    alpha, v_th, n_refractory = dtype(alpha), dtype(v_th), dtype(n_refractory)
    rho, gamma = dtype(rho), dtype(dampening)
    decay = alpha
    for b in prange(batch):
        recurrent = np.empty(n, dtype=current.dtype)
        trace_in, trace_rec = eps_in[b], eps_rec[b]
        for t in range(k):
            z_b = z[b]  # the spikes of t - 1: the recurrent trace's input at t
            for i in range(n_in):
                trace_in[i] = decay * trace_in[i] + x[b, t, i]
                traces[t, b, i] = trace_in[i]
            for i in range(n):
                trace_rec[i] = decay * trace_rec[i] + z_b[i]
                traces[t, b, n_in + i] = trace_rec[i]
            _recurrent_input(z_b, w_rec_t, recurrent)
            _neurons_step(
                current[t, b], recurrent, v[b], z_b, a[b], refractory[b], spikes[t, b],
                psi[t, b], beta, alpha, v_th, n_refractory, rho, gamma,
            )  # fmt: skip
    return spikes, psi, traces


@njit(parallel=True, cache=True)
def leaky_sum(signal, decay, initial):  # pragma: no cover - compiled
    """``out^t = decay out^{t-1} + signal^t`` over the first axis, from ``initial``:
    ``signal`` ``(k, batch, m)``, ``initial`` ``(batch, m)``."""
    k, batch, m = signal.shape
    out = np.empty_like(signal)
    d = signal.dtype.type(decay)
    for b in prange(batch):
        acc = initial[b].copy()
        for t in range(k):
            for j in range(m):  # contiguous in memory
                acc[j] = d * acc[j] + signal[t, b, j]
                out[t, b, j] = acc[j]
    return out


@njit(parallel=True, cache=True)
def reverse_leaky_sum_shifted(signal, factor):  # pragma: no cover - compiled
    """Backwards over the first axis, ``acc = signal[r] + factor[r] * acc`` from 0 after the last
    step, one step late: ``(out, first)`` with ``out[r]`` the value of ``acc`` from ``r + 1`` on
    (0 at the last step) and ``first`` the whole sum ``(batch, m)``; ``signal``, ``factor``
    ``(k, batch, m)``."""
    k, batch, m = signal.shape
    out = np.empty_like(signal)
    first = np.empty((batch, m), dtype=signal.dtype)
    for b in prange(batch):
        acc = np.zeros(m, dtype=signal.dtype)
        for r in range(k - 1, -1, -1):
            for j in range(m):
                out[r, b, j] = acc[j]
                acc[j] = signal[r, b, j] + factor[r, b, j] * acc[j]
        first[b] = acc
    return out, first


@njit(parallel=True, cache=True)
def reverse_constant_leaky_sum(signal, factor):  # pragma: no cover - compiled
    """Backwards over the first axis: ``acc = signal[r] + factor * acc`` from the last step
    (``acc`` 0 after it), ``out[r] = acc``; ``signal`` ``(k, batch, m)``, ``factor`` a number."""
    k, batch, m = signal.shape
    out = np.empty_like(signal)
    f = signal.dtype.type(factor)
    for b in prange(batch):
        acc = np.zeros(m, dtype=signal.dtype)
        for r in range(k - 1, -1, -1):
            for j in range(m):
                acc[j] = signal[r, b, j] + f * acc[j]
                out[r, b, j] = acc[j]
    return out


@njit(parallel=True, cache=True)
def task_coefficients(error_filtered, feedback, offset, psi, beta, rho):  # pragma: no cover
    """e-prop's factor of ``eps_v^r`` for the task gradient over a segment, in one backward
    sweep (``credit.eprop.segment_step``'s ``coefficients`` for ``W = Lf + offset``), without
    the segment-long intermediates: ``Lf^r = Ef^r B^T`` (``error_filtered`` ``(k, batch,
    n_out)``, ``feedback`` B ``(n, n_out)``), ``w^r = (Lf^r + offset) psi^r``, and for the ALIF
    neurons (the last ``len(beta)``) ``coef = w - G psi`` with ``G`` the backward recursion
    ``G^{r-1} = beta w^r + (rho - beta psi^r) G^r`` from ``G^{t1-1} = 0``. Returns
    ``(coef (k, batch, n), G^{t0-1} (batch, n_ad))``."""
    k, batch, n = psi.shape
    n_out = feedback.shape[1]
    n_ad = beta.shape[0]
    first = n - n_ad
    coef = np.empty_like(psi)
    before = np.empty((batch, n_ad), dtype=psi.dtype)
    r_ = psi.dtype.type(rho)
    for b in prange(batch):
        g = np.zeros(n_ad, dtype=psi.dtype)
        for t in range(k - 1, -1, -1):
            for j in range(n):
                signal = offset[j]
                for o in range(n_out):
                    signal += error_filtered[t, b, o] * feedback[j, o]
                w = signal * psi[t, b, j]
                if j >= first:
                    i = j - first
                    coef[t, b, j] = w - g[i] * psi[t, b, j]
                    g[i] = w * beta[i] + (r_ - beta[i] * psi[t, b, j]) * g[i]
                else:
                    coef[t, b, j] = w
        before[b] = g
    return coef, before
