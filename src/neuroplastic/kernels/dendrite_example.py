"""A whole online training example of the segregated-dendrite network in one compiled call:
the PyTorch side of :func:`neuroplastic.kernels.numba_dendrites.learn`.

``credit.plateau.learn_example`` calls :func:`learn_example_compiled` when its random stream is a
:class:`~neuroplastic.kernels.counter_random.CounterStream` and its backend Numba (or ``auto`` on
the CPU with Numba installed). Tensors go in; the weights and biases are updated in place through
NumPy views of them; the two phases' end states and window averages come back as tensors.

Those results are views of one zeroed buffer per example (:class:`PhaseBuffers`, one per phase):
a phase of a 784-500-10 network takes about 0.25 ms compiled, so the two dozen allocations of
separate arrays would be a noticeable share. Where each view sits in the buffer depends only on
the network's sizes, the number of replicas and the kernel's taps, and is computed once
(:func:`_layout`).

Numba is imported only when an example is run, so this module (and ``credit.plateau``) imports
without the ``fast`` extra.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from neuroplastic.kernels import as_array, resolve_backend
from neuroplastic.kernels.counter_random import CounterStream
from neuroplastic.models.segregated_dendrites import (
    ExampleSignals,
    NetworkState,
    PhaseAverages,
    SegregatedDendriteNet,
    _constants,
    _kernel_taps,
)


class PhaseBuffers(NamedTuple):
    """What the compiled example writes for one phase (B = 1 example per replica), in the order
    ``numba_dendrites.learn`` takes it. The fields hold arrays (views of the example's buffer),
    or, in :func:`_layout`, where those views sit."""

    input_history: np.ndarray
    """(R, 1, K, n_in) input spike counts of the phase's last K steps."""
    input_psp: np.ndarray
    """(R, 1, n_in) window mean of the input's PSP."""
    somas: tuple[np.ndarray, ...]
    """Per layer (R, 1, n): the somatic potential at the phase's end."""
    histories: tuple[np.ndarray, ...]
    """Per layer (R, 1, K, n): spike counts of the phase's last K steps."""
    soma_means: tuple[np.ndarray, ...]
    """Per layer (R, 1, n)."""
    rate_means: tuple[np.ndarray, ...]
    """Per layer (R, 1, n)."""
    psp_means: tuple[np.ndarray, ...]
    """Per hidden layer (R, 1, n): the window mean of its output train's PSP."""
    apical_means: tuple[np.ndarray, ...]
    """Per hidden layer (R, 1, n)."""

    def state(self) -> NetworkState:
        """The end state as tensors sharing the buffer."""
        return NetworkState(
            torch.from_numpy(self.input_history),
            tuple(torch.from_numpy(x) for x in self.somas),
            tuple(torch.from_numpy(x) for x in self.histories),
        )

    def averages(self) -> PhaseAverages:
        """The window averages as tensors sharing the buffer."""
        return PhaseAverages(
            tuple(torch.from_numpy(x) for x in self.soma_means),
            tuple(torch.from_numpy(x) for x in self.rate_means),
            tuple(torch.from_numpy(x) for x in (self.input_psp, *self.psp_means)),
            tuple(torch.from_numpy(x) for x in self.apical_means),
        )


_SINGLE = frozenset({"input_history", "input_psp"})
"""The fields of :class:`PhaseBuffers` that hold one array; the others hold one per layer."""


class _Slot(NamedTuple):
    """Where one view sits in the example's buffer."""

    start: int
    stop: int
    shape: tuple[int, ...]


@functools.lru_cache(maxsize=16)
def _layout(
    sizes: tuple[int, ...], replicas: int, taps: int
) -> tuple[int, tuple[PhaseBuffers, PhaseBuffers]]:
    """The length of an example's buffer and, for the forward and the target phase, the
    :class:`_Slot` of every array of its :class:`PhaseBuffers`, one after the other."""
    n_in, layers = sizes[0], sizes[1:]
    hidden = layers[:-1]
    shapes = PhaseBuffers(
        input_history=(replicas, 1, taps, n_in),
        input_psp=(replicas, 1, n_in),
        somas=tuple((replicas, 1, n) for n in layers),
        histories=tuple((replicas, 1, taps, n) for n in layers),
        soma_means=tuple((replicas, 1, n) for n in layers),
        rate_means=tuple((replicas, 1, n) for n in layers),
        psp_means=tuple((replicas, 1, n) for n in hidden),
        apical_means=tuple((replicas, 1, n) for n in hidden),
    )
    end = 0

    def place(shape: tuple[int, ...]) -> _Slot:
        nonlocal end
        start, end = end, end + math.prod(shape)
        return _Slot(start, end, shape)

    def phase() -> PhaseBuffers:
        return PhaseBuffers(*(
            place(value) if name in _SINGLE else tuple(place(s) for s in value)
            for name, value in zip(PhaseBuffers._fields, shapes, strict=True)
        ))  # fmt: skip

    forward = phase()
    target = phase()
    return end, (forward, target)


def _views(buffer: np.ndarray, slots: PhaseBuffers) -> PhaseBuffers:
    """The arrays of one phase: views of ``buffer`` where ``slots`` says."""

    def view(slot: _Slot) -> np.ndarray:
        return buffer[slot.start : slot.stop].reshape(slot.shape)

    return PhaseBuffers(*(
        view(value) if name in _SINGLE else tuple(view(s) for s in value)
        for name, value in zip(PhaseBuffers._fields, slots, strict=True)
    ))  # fmt: skip


def _runs_compiled(net: SegregatedDendriteNet, input_rates: torch.Tensor, backend: str) -> bool:
    """Whether ``backend`` runs the whole example compiled: Numba on the CPU, one example per
    replica, float32 or float64 (the parameters are checked by :func:`learn_example_compiled`)."""
    if backend not in ("auto", "torch", "numba"):
        raise ValueError(f"backend must be auto, torch or numba, got {backend!r}")
    if backend == "auto" and input_rates.device.type != "cpu":
        return False
    if resolve_backend(backend, input_rates.device) != "numba" or input_rates.shape[1] != 1:
        return False
    return input_rates.dtype in (torch.float32, torch.float64)


def _takes_compiled(
    net: SegregatedDendriteNet,
    input_rates: torch.Tensor,
    stream: CounterStream,
    learning_rates: Sequence[float],
    backend: str,
) -> bool:
    """Whether the compiled call runs (:func:`_runs_compiled`, and every parameter a contiguous
    tensor of the input's dtype); raises where the learning rates or the stream's keys do not
    match the network."""
    if not _runs_compiled(net, input_rates, backend):
        return False
    dtype = input_rates.dtype
    parameters = (*net.weights, *net.biases, *net.feedback)
    if not all(x.dtype == dtype and x.is_contiguous() for x in parameters):
        return False
    if len(learning_rates) != len(net.weights):
        raise ValueError(
            f"need one learning rate per layer ({len(net.weights)}), got {len(learning_rates)}"
        )
    if len(stream.keys) != net.replicas:
        raise ValueError(f"need one key per replica ({net.replicas}), got {len(stream.keys)}")
    return True


def learn_example_compiled(
    net: SegregatedDendriteNet,
    state: NetworkState,
    input_rates: torch.Tensor,
    labels: torch.Tensor,
    stream: CounterStream,
    phase_steps: tuple[int, int],
    learning_rates: Sequence[float],
    backend: str,
) -> tuple[NetworkState, PhaseAverages, PhaseAverages] | None:
    """``credit.plateau.learn_example`` on the counter-based ``stream`` in one call of the
    compiled kernel: the state to carry into the next example and the forward and target
    phases' averages, the weights and biases updated in place (and the symmetric feedback
    synced). None, having changed nothing, where ``backend`` does not run the example compiled
    (see ``learn_example``) or the parameters are not all contiguous tensors of the input's
    dtype: the caller then takes the phase by phase path, to the same result up to rounding."""
    if not _takes_compiled(net, input_rates, stream, learning_rates, backend):
        return None
    weights, biases, feedback = list(net.weights), list(net.biases), net.feedback
    dtype = input_rates.dtype
    from neuroplastic.kernels.numba_dendrites import learn
    from neuroplastic.kernels.numba_rsnn import follow_torch_threads

    p = net.params
    length, (forward_slots, target_slots) = _layout(net.sizes, net.replicas, p.kernel_length)
    buffer = np.zeros(length, dtype=np.float32 if dtype == torch.float32 else np.float64)
    forward, target = _views(buffer, forward_slots), _views(buffer, target_slots)
    scales = [p.p_hidden] * net.n_hidden + [p.p_output]
    steps = [-eta * s for eta, s in zip(learning_rates, scales, strict=True)]  # alpha_l
    follow_torch_threads()
    learn(
        [w.detach().numpy() for w in weights], [b.detach().numpy() for b in biases],
        [y.numpy() for y in feedback],
        (as_array(state.input_history), [as_array(c) for c in state.soma],
         [as_array(h) for h in state.spike_history]),
        as_array(input_rates), as_array(labels.to(torch.int64)), _kernel_taps(p, dtype),
        _constants(p), (p.k_d, p.k_b, p.phi_max, *steps), p.integration_steps, p.g_a != 0.0,
        stream.words(), stream.example, phase_steps, forward, target,
        input_exp=as_array(torch.exp(input_rates)),
    )  # fmt: skip
    net.sync_feedback()
    return target.state(), forward.averages(), target.averages()


def learn_examples_compiled(
    net: SegregatedDendriteNet,
    state: NetworkState,
    input_rates: torch.Tensor,
    labels: torch.Tensor,
    stream: CounterStream,
    phase_steps: Sequence[tuple[int, int]],
    learning_rates: Sequence[float],
    backend: str,
) -> tuple[NetworkState, ExampleSignals] | None:
    """``credit.plateau.learn_examples`` in one compiled call for the C examples of
    ``input_rates`` (R, C, n_in): the state after the last and the :class:`ExampleSignals`, the
    weights updated in place. None, having changed nothing, where :func:`learn_example_compiled`
    would be None for one of them."""
    if not _takes_compiled(net, input_rates[:, :1], stream, learning_rates, backend):
        return None
    weights, biases, feedback = list(net.weights), list(net.biases), net.feedback
    dtype = input_rates.dtype
    if len(phase_steps) != input_rates.shape[1]:
        raise ValueError(
            f"need one pair of phase lengths per example ({input_rates.shape[1]}), "
            f"got {len(phase_steps)}"
        )
    from neuroplastic.kernels.numba_dendrites import learn_chunk
    from neuroplastic.kernels.numba_rsnn import follow_torch_threads

    p = net.params
    replicas, examples = input_rates.shape[:2]
    new_state = NetworkState(*(
        x.detach().clone().contiguous() if isinstance(x, torch.Tensor)
        else tuple(t.detach().clone().contiguous() for t in x)
        for x in state
    ))  # fmt: skip
    hidden = net.sizes[1:-1]
    signals = ExampleSignals(
        torch.zeros(replicas, examples, net.sizes[-1], dtype=dtype),
        tuple(torch.zeros(replicas, examples, n, dtype=dtype) for n in hidden),
        tuple(torch.zeros(replicas, examples, n, dtype=dtype) for n in hidden),
    )
    scales = [p.p_hidden] * net.n_hidden + [p.p_output]
    steps = [-eta * s for eta, s in zip(learning_rates, scales, strict=True)]  # alpha_l
    rates = input_rates.detach().contiguous()
    follow_torch_threads()
    learn_chunk(
        [w.detach().numpy() for w in weights], [b.detach().numpy() for b in biases],
        [y.numpy() for y in feedback],
        (new_state.input_history.numpy(), [c.numpy() for c in new_state.soma],
         [h.numpy() for h in new_state.spike_history]),
        rates.numpy(), as_array(labels.to(torch.int64)), _kernel_taps(p, dtype), _constants(p),
        (p.k_d, p.k_b, p.phi_max, *steps), p.integration_steps, p.g_a != 0.0, stream.words(),
        stream.example, np.asarray(phase_steps, dtype=np.int64).reshape(-1, 2),
        signals.output_soma.numpy(), [x.numpy() for x in signals.plateau_errors],
        [x.numpy() for x in signals.backprop_errors], chunk_exp=torch.exp(rates).numpy(),
    )  # fmt: skip
    net.sync_feedback()
    return new_state, signals
