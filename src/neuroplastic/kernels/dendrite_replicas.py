"""Many segregated-dendrite networks trained online as one fixed-shape step: the replica path for
GPUs (issue 17).

An online example of R replicas (seeds, or settings such as learning rates) is a forward phase,
a target phase and the plateau update (``credit.plateau.learn_example``). Here it is written
with tensors whose shapes depend neither on the data nor on the phases' lengths:

* every input is simulated and its weights applied as one dense product per replica (the CPU
  paths apply them spike by spike: about 1 input in 60 spikes in a step on MNIST);
* the uniforms of all replicas are hashed in one pass from the counter-based stream, the keys
  and the example's index held as device tensors (``models.segregated_dendrites.
  counter_uniforms``): the same values as every other path draws;
* each phase is simulated for a fixed number of steps (``padded_steps``) and ends at each
  replica's own length (masks and gathers in ``_phase_core``: a step depends only on earlier
  ones, so the padding changes nothing before the end);
* the Poisson counts beyond 2 and the plateau update are dense, and the learning rates an
  (R, L) tensor.

So on a GPU :class:`ReplicaTrainer` captures the whole example once per padded shape as a CUDA
graph and replays it for every example: one launch where the eager step makes several hundred.
On the CPU the same step runs eagerly; the tests compare it there with the per-example paths
(``credit.plateau.learn_examples``). With ``g_a != 0`` the apical compartment couples the layers
step by step, which this step does not do: it raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from neuroplastic.credit.plateau import backprop_signals, hidden_errors, plateau_step
from neuroplastic.kernels import counter_random as crandom
from neuroplastic.kernels.counter_random import FORWARD, TARGET, CounterStream
from neuroplastic.models.segregated_dendrites import (
    ExampleSignals,
    NetworkState,
    PhaseAverages,
    SegregatedDendriteNet,
    _constants,
    _phase_core,
    counter_uniforms,
    teaching_conductances,
)


@torch.no_grad()
def learn_example_padded(
    net: SegregatedDendriteNet,
    state: NetworkState,
    input_rates: torch.Tensor,
    labels: torch.Tensor,
    keys: torch.Tensor,
    example: torch.Tensor,
    lengths: torch.Tensor,
    padded_steps: tuple[int, int],
    learning_rates: torch.Tensor,
) -> tuple[NetworkState, PhaseAverages, PhaseAverages]:
    """One online example of every replica, in operations of fixed shapes.

    ``input_rates`` (R, 1, n_in) and ``labels`` (R, 1) as in ``learn_example``; ``keys`` (R,) and
    ``example`` (R, 1) the counter stream's words (``counter_random.words_tensor``);
    ``lengths`` (R, 2) each replica's forward and target phase lengths, each at most the
    matching ``padded_steps`` (the steps simulated; not checked here, which would wait for the
    device); ``learning_rates`` (R, L). Returns what ``learn_example`` returns: the same values
    on the same stream, up to rounding."""
    p = net.params
    if p.g_a != 0.0:
        raise ValueError(
            f"the fixed-shape step needs g_a = 0 (got {p.g_a}): use credit.plateau.learn_example"
        )
    kernel = tuple(p.kernel(torch.float64).tolist())
    teaching = teaching_conductances(labels, net.sizes[-1], input_rates.dtype)
    phases = []
    for phase, steps in zip((FORWARD, TARGET), padded_steps, strict=True):
        noise = counter_uniforms(net.sizes, keys, example, phase, steps, input_rates.dtype)
        out = _phase_core(
            tuple(net.weights), tuple(net.biases), tuple(net.feedback), state.input_history,
            state.soma, state.spike_history, input_rates[:, :, None], noise.input, noise.layers,
            None, teaching if phase == TARGET else None, kernel, _constants(p),
            p.integration_steps, ends=lengths[:, phase : phase + 1],
        )  # fmt: skip
        history, input_psp, somas, histories, soma_means, rate_means, psp_means, apical = out[:8]
        state = NetworkState(history, somas, histories)
        phases.append(PhaseAverages(soma_means, rate_means, (input_psp, *psp_means), apical))
    forward, target = phases
    plateau_step(net, forward, target, learning_rates)
    net.sync_feedback()
    return state, forward, target


class ReplicaTrainer:
    """Online training of ``net``'s R replicas through :func:`learn_example_padded`, a run of
    examples at a time (the interface of ``credit.plateau.learn_examples``).

    ``learning_rates``: one per layer, or (R, L) for each replica its own. ``pad``: phases are
    simulated for their batch's longest, rounded up to a multiple of ``pad`` steps, so that few
    shapes occur (the Wald-distributed phase lengths are unbounded). ``graphs``: capture each
    shape's step as a CUDA graph and replay it (default: on a CUDA device); otherwise the step
    runs eagerly.

    Capturing runs the step a few times first (CUDA graphs need a warm-up); the network's
    parameters and feedback are restored after it, so the capture does not train."""

    def __init__(
        self,
        net: SegregatedDendriteNet,
        learning_rates: Sequence[float] | torch.Tensor,
        pad: int = 16,
        graphs: bool | None = None,
    ):
        device = net.weights[0].device
        rates = torch.as_tensor(learning_rates, dtype=torch.float64)
        if rates.dim() == 1:
            rates = rates.expand(net.replicas, -1)
        if tuple(rates.shape) != (net.replicas, len(net.weights)):
            raise ValueError(
                f"need one learning rate per layer ({len(net.weights)}), or per replica and "
                f"layer ({net.replicas}, {len(net.weights)}); got {tuple(rates.shape)}"
            )
        if pad < 1:
            raise ValueError(f"pad must be at least 1 step, got {pad}")
        if net.params.g_a != 0.0:
            raise ValueError(
                f"the fixed-shape step needs g_a = 0 (got {net.params.g_a}): "
                "use credit.plateau.learn_examples"
            )
        self.net = net
        self.learning_rates = rates.to(device=device, dtype=net.weights[0].dtype).contiguous()
        self.pad = pad
        self.graphs = device.type == "cuda" if graphs is None else graphs
        if self.graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need the network on a CUDA device, not {device}")
        self._captured: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, tuple]] = {}
        self._inputs: dict[str, torch.Tensor] | None = None

    def padded(self, lengths: torch.Tensor) -> tuple[int, int]:
        """The steps simulated for phases of ``lengths`` (..., 2): each phase's longest, rounded
        up to a multiple of ``pad``."""
        longest = lengths.reshape(-1, 2).amax(dim=0).tolist()
        return tuple(self.pad * math.ceil(n / self.pad) for n in longest)

    def learn_examples(
        self,
        state: NetworkState,
        input_rates: torch.Tensor,
        labels: torch.Tensor,
        stream: CounterStream,
        phase_steps: Sequence[tuple[int, int]] | torch.Tensor,
    ) -> tuple[NetworkState, ExampleSignals]:
        """C examples in turn, as ``credit.plateau.learn_examples`` (``input_rates`` (R, C, n_in),
        ``labels`` (R, C); example ``e`` takes ``stream.example + e``), with the same results up
        to rounding. ``phase_steps``: C pairs for every replica, or an (R, C, 2) tensor, each
        replica its own lengths."""
        net = self.net
        device = net.weights[0].device
        replicas, examples = input_rates.shape[:2]
        lengths = torch.as_tensor(phase_steps, dtype=torch.int64)
        if lengths.dim() == 2:
            lengths = lengths.expand(replicas, -1, -1)
        if labels.shape[:2] != (replicas, examples) or tuple(lengths.shape) != (
            replicas, examples, 2,
        ):  # fmt: skip
            raise ValueError(
                f"need labels (R, C) and phase lengths (C, 2) or (R, C, 2) for input rates "
                f"{tuple(input_rates.shape)}, got labels {tuple(labels.shape)} and lengths "
                f"{tuple(lengths.shape)}"
            )
        if len(stream.keys) != replicas:
            raise ValueError(f"need one key per replica ({replicas}), got {len(stream.keys)}")
        if int(lengths.min()) < net.params.integration_steps:
            raise ValueError(
                f"every phase needs at least the {net.params.integration_steps} steps it "
                f"averages, got {int(lengths.min())}"
            )
        keys = crandom.words_tensor(stream.words(), device)
        padded = [self.padded(lengths[:, e]) for e in range(examples)]  # on the host
        lengths = lengths.to(device)
        labels = labels.to(device=device, dtype=torch.int64)
        signals = []
        for e in range(examples):
            example = torch.full((replicas, 1), stream.example + e, device=device)
            step = (
                input_rates[:, e : e + 1], labels[:, e : e + 1], keys, example, lengths[:, e],
            )  # fmt: skip
            if self.graphs:
                state, outputs = self._replay(state, step, padded[e])
            else:
                state, outputs = self._step(state, *step, padded[e])
            signals.append(outputs)
        output, plateaus, exacts = zip(*signals, strict=True)
        per_layer = range(net.n_hidden)
        return state, ExampleSignals(
            torch.cat(output, dim=1),
            tuple(torch.cat([x[layer] for x in plateaus], dim=1) for layer in per_layer),
            tuple(torch.cat([x[layer] for x in exacts], dim=1) for layer in per_layer),
        )

    @torch.no_grad()
    def _step(self, state, input_rates, labels, keys, example, lengths, padded):
        """One example and what ``ExampleSignals`` records of it."""
        net = self.net
        state, forward, target = learn_example_padded(
            net, state, input_rates, labels, keys, example, lengths, padded, self.learning_rates
        )
        outputs = (
            forward.soma[-1],
            tuple(hidden_errors(net, forward, target)),
            tuple(backprop_signals(net, forward, target)),
        )
        return state, outputs

    # ---------------------------------------------------------------- CUDA graphs

    def _replay(self, state, step, padded):
        """Copy the example and the state into the graph's inputs, replay the graph of its
        shape (captured on first use), and return copies of what it wrote."""
        names = ("input_rates", "labels", "keys", "example", "lengths")
        if self._inputs is None:
            flat = {name: value.clone() for name, value in zip(names, step, strict=True)}
            self._inputs = flat | {"state": _clone_state(state)}
        for name, value in zip(names, step, strict=True):
            self._inputs[name].copy_(value)
        _copy_state(self._inputs["state"], state)
        if padded not in self._captured:
            self._captured[padded] = self._capture(padded)
        graph, (new_state, outputs) = self._captured[padded]
        graph.replay()
        return _clone_state(new_state), _clone_outputs(outputs)

    def _capture(self, padded):
        """The step of one padded shape as a CUDA graph, reading ``self._inputs``. The warm-up
        runs train the network; its parameters, feedback and the input state are restored."""
        net, inputs = self.net, self._inputs
        saved = [t.detach().clone() for t in (*net.parameters(), *net.buffers())]
        saved_state = _clone_state(inputs["state"])

        def run():
            return self._step(
                inputs["state"], inputs["input_rates"], inputs["labels"], inputs["keys"],
                inputs["example"], inputs["lengths"], padded,
            )  # fmt: skip

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
                _copy_state(inputs["state"], saved_state)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = run()
        with torch.no_grad():
            for tensor, value in zip((*net.parameters(), *net.buffers()), saved, strict=True):
                tensor.copy_(value)
        _copy_state(inputs["state"], saved_state)
        return graph, outputs


def _clone_state(state: NetworkState) -> NetworkState:
    return NetworkState(
        state.input_history.clone(),
        tuple(x.clone() for x in state.soma),
        tuple(x.clone() for x in state.spike_history),
    )


def _copy_state(into: NetworkState, source: NetworkState) -> None:
    into.input_history.copy_(source.input_history)
    for a, b in zip((*into.soma, *into.spike_history), (*source.soma, *source.spike_history),
                    strict=True):  # fmt: skip
        a.copy_(b)


def _clone_outputs(outputs):
    output, plateaus, exacts = outputs
    return output.clone(), tuple(x.clone() for x in plateaus), tuple(x.clone() for x in exacts)
