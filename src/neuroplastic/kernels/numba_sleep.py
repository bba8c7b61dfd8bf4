"""Compiled sleep phase of sleep replay consolidation (Numba, the ``fast`` extra): the time loop of
``plasticity.sleep_replay.sleep_step`` over a stretch of input spikes, event-driven, weights
changed in place. Tested equal to the PyTorch step (``tests/test_sleep_replay.py``).

Why compiled: a sleep step on a 784-1200-1200-10 network is about 20 tensor operations whose
dispatch costs far more than their arithmetic. Spikes are sparse (about 25 of 784 input pixels,
a handful of hidden neurons per step), so each layer's input is a sum over the presynaptic
neurons that spiked, and only the rows of the neurons that fired are rewritten; the authors'
sleep of 125,000 steps over five tasks then takes seconds instead of minutes.

Equations as in ``plasticity.sleep_replay``: ``v <- decay v + alpha_l W_l z``, a spike and a
reset to 0 where ``v >= beta_l``, and for each neuron ``j`` that spiked
``W_ji += inc f(W_ji)`` where ``z_i = 1``, ``W_ji -= dec f(W_ji)`` where ``z_i = 0``, with
``f(w) = 2 (1 - sigmoid(w / 0.001))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit
from numba.typed import List


@njit(cache=True)
def _sleep_segment(
    weights_t, potentials, counts, alphas, thresholds, decay, increment, decrement,
    indptr, indices,
):  # pragma: no cover - compiled; fmt: skip
    n_layers = len(weights_t)
    widest = 1
    for layer in range(n_layers):
        widest = max(widest, weights_t[layer].shape[0], weights_t[layer].shape[1])
    pre = np.empty(widest, dtype=np.int64)
    fired = np.empty(widest, dtype=np.int64)
    is_pre = np.zeros(widest, dtype=np.bool_)
    drive = np.empty(widest, dtype=weights_t[0].dtype)
    for t in range(indptr.shape[0] - 1):
        n_pre = indptr[t + 1] - indptr[t]
        for k in range(n_pre):
            pre[k] = indices[indptr[t] + k]
        for layer in range(n_layers):
            w_t = weights_t[layer]  # (in, out): a presynaptic neuron's outgoing weights
            v = potentials[layer]
            alpha, beta = alphas[layer], thresholds[layer]
            n_in, n_out = w_t.shape
            drive[:n_out] = 0
            for k in range(n_pre):
                row = w_t[pre[k]]
                for j in range(n_out):
                    drive[j] += row[j]
            n_fired = 0
            for j in range(n_out):
                value = decay * v[j] + alpha * drive[j]
                if value >= beta:
                    v[j] = 0
                    fired[n_fired] = j
                    n_fired += 1
                else:
                    v[j] = value
            if n_fired:
                for k in range(n_pre):
                    is_pre[pre[k]] = True
                for i in range(n_in):
                    change = increment if is_pre[i] else -decrement
                    row = w_t[i]
                    for m in range(n_fired):
                        w = row[fired[m]]
                        row[fired[m]] = w + change * 2.0 * (1.0 - 1.0 / (1.0 + np.exp(-w / 0.001)))
                for k in range(n_pre):
                    is_pre[pre[k]] = False
                for m in range(n_fired):
                    counts[layer][fired[m]] += 1
            for m in range(n_fired):
                pre[m] = fired[m]
            n_pre = n_fired


def sleep_segment(
    weights_t: Sequence[np.ndarray], potentials: Sequence[np.ndarray],
    counts: Sequence[np.ndarray], alphas: Sequence[float], thresholds: Sequence[float],
    decay: float, increment: float, decrement: float, input_spikes: np.ndarray,
) -> None:  # fmt: skip
    """Run ``input_spikes`` ``(steps, in)`` (0/1) through the layers, changing the *transposed*
    weights ``weights_t`` ``(in, out)`` (each presynaptic neuron's outgoing weights contiguous,
    so that a spike's drive is one contiguous row), ``potentials`` ``(out,)`` and the spike
    ``counts`` ``(out,)`` in place. All arrays of one float dtype and C-contiguous."""
    dtype = weights_t[0].dtype
    indptr = np.zeros(len(input_spikes) + 1, dtype=np.int64)
    steps, columns = np.nonzero(input_spikes)
    np.cumsum(np.bincount(steps, minlength=len(input_spikes)), out=indptr[1:])
    _sleep_segment(
        List(weights_t), List(potentials), List(counts),
        np.asarray(alphas, dtype=dtype), np.asarray(thresholds, dtype=dtype),
        dtype.type(decay), dtype.type(increment), dtype.type(decrement),
        indptr, columns.astype(np.int64),
    )  # fmt: skip
