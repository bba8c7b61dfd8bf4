"""The plateau-potential rule of Guerguiev, Lillicrap & Richards (2017) for segregated dendrites.

The network and its phases are in :mod:`neuroplastic.models.segregated_dendrites`. After a forward
phase (f) and a target phase (t), with averages over each phase's integration window (bars), the
rule is local to each neuron::

    output layer (target: mean target-phase rate, loss L1 ~ ||phi1_t - phi1_f||^2)
        E_out   = -(rate_t - phi_max sigmoid(C_f)) k_d phi_max sigmoid'(C_f)
    hidden layer (target: phi0_f + alpha_t - alpha_f, loss L0 ~ ||alpha_t - alpha_f||^2)
        alpha   = sigmoid(mean apical potential)                     plateau potential
        E_l     = -(alpha_t - alpha_f) k_b phi_max sigmoid'(C_f)
    every layer
        dW_l    = P_l E_l (x) PSP_below_f,   db_l = P_l E_l           P_hidden = 20/phi_max,
        W_l    <- W_l - eta_l dW_l                                    P_output = 20/phi_max^2

:func:`plateau_gradients` writes ``dW`` and ``db`` into ``.grad`` (minus the desired step, the
library's convention), so ``torch.optim.SGD`` with one parameter group per layer and ``lr = eta_l``
takes exactly the paper's step; :func:`plateau_step` is the same update fused and in place,
and :func:`learn_example` one whole online step (two phases and the update; on the
counter-based random stream and the CPU, one compiled call); :func:`learn_examples` runs many in
turn (on that stream and the CPU, all in one compiled call).
:func:`backprop_signals` gives what backprop would send to each hidden layer through the same
averages (``W^T`` in place of ``Y``, as the authors' diagnostic does), for the angle between the
two.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neuroplastic.kernels.counter_random import FORWARD, TARGET, CounterStream
from neuroplastic.kernels.dendrite_example import learn_example_compiled, learn_examples_compiled
from neuroplastic.models.segregated_dendrites import (
    CounterPhase,
    ExampleSignals,
    NetworkState,
    PhaseAverages,
    PhaseNoise,
    SegregatedDendriteNet,
    simulate_phase,
)


def _sigmoid_slope(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def output_error(
    net: SegregatedDendriteNet, forward: PhaseAverages, target: PhaseAverages
) -> torch.Tensor:
    """E_out, (R, B, n_out)."""
    p = net.params
    c_f = forward.soma[-1]
    return (
        -(target.rate[-1] - p.phi_max * torch.sigmoid(c_f))
        * p.k_d
        * p.phi_max
        * _sigmoid_slope(c_f)
    )


def hidden_errors(
    net: SegregatedDendriteNet, forward: PhaseAverages, target: PhaseAverages
) -> list[torch.Tensor]:
    """E_l for every hidden layer, (R, B, n_l): the plateau difference, scaled by the slope."""
    p = net.params
    return [
        -(torch.sigmoid(a_t) - torch.sigmoid(a_f)) * p.k_b * p.phi_max * _sigmoid_slope(c_f)
        for a_f, a_t, c_f in zip(
            forward.apical, target.apical, forward.soma[: net.n_hidden], strict=True
        )
    ]


def backprop_signals(
    net: SegregatedDendriteNet, forward: PhaseAverages, target: PhaseAverages
) -> list[torch.Tensor]:
    """The hidden errors backprop would compute through the same averages:
    E_l = (W_{l+1}^T E_{l+1}) k_b phi_max sigmoid'(C_f)."""
    p = net.params
    signal = output_error(net, forward, target)
    signals = []
    for layer in range(net.n_hidden - 1, -1, -1):
        signal = (
            (signal @ net.weights[layer + 1].transpose(1, 2))
            * p.k_b
            * p.phi_max
            * _sigmoid_slope(forward.soma[layer])
        )
        signals.append(signal)
    return signals[::-1]


@torch.no_grad()
def plateau_gradients(
    net: SegregatedDendriteNet, forward: PhaseAverages, target: PhaseAverages
) -> None:
    """Write the plateau rule's dW and db into ``.grad`` of every weight and bias (summed over the
    example dimension B; B is 1 in online training)."""
    p = net.params
    errors = [*hidden_errors(net, forward, target), output_error(net, forward, target)]
    scales = [p.p_hidden] * net.n_hidden + [p.p_output]
    for layer, (error, scale) in enumerate(zip(errors, scales, strict=True)):
        weight, bias = net.weights[layer], net.biases[layer]
        # (R, B, n_below)^T (R, B, n) -> (R, n_below, n)
        weight.grad = scale * forward.input_psp[layer].transpose(1, 2) @ error
        bias.grad = scale * error.sum(dim=1)


@torch.no_grad()
def plateau_step(
    net: SegregatedDendriteNet,
    forward: PhaseAverages,
    target: PhaseAverages,
    learning_rates: Sequence[float] | torch.Tensor,
) -> None:
    """The fast path of :func:`plateau_gradients` followed by ``SGD(lr = eta_l)``: the same update
    applied in place, without the ``.grad`` tensors, and for the first layer only to the rows of
    inputs whose mean PSP is non-zero (the others' dW is exactly zero). Tested equal.

    ``learning_rates``: one per layer, or an (R, L) tensor giving each replica its own (settings
    as replicas); the update is then dense, with no shape that depends on the data (as a CUDA
    graph needs)."""
    p = net.params
    per_replica = isinstance(learning_rates, torch.Tensor)
    expected = (net.replicas, len(net.weights)) if per_replica else (len(net.weights),)
    shape = tuple(learning_rates.shape) if per_replica else (len(learning_rates),)
    if shape != expected:
        raise ValueError(
            f"need one learning rate per layer{' and replica' if per_replica else ''} "
            f"{expected}, got {shape}"
        )
    errors = [*hidden_errors(net, forward, target), output_error(net, forward, target)]
    scales = [p.p_hidden] * net.n_hidden + [p.p_output]
    for layer, (error, scale) in enumerate(zip(errors, scales, strict=True)):
        weight, bias = net.weights[layer], net.biases[layer]
        psp = forward.input_psp[layer]  # (R, B, n_below)
        if per_replica:
            step = -scale * learning_rates[:, layer].to(weight.dtype)  # (R,)
            weight.add_(step[:, None, None] * (psp.transpose(1, 2) @ error))
            bias.add_(step[:, None] * error.sum(dim=1))
            continue
        eta = learning_rates[layer]
        if layer == 0:
            rows = (psp != 0).flatten(0, 1).any(dim=0).nonzero().squeeze(1)
            delta = psp[..., rows].transpose(1, 2) @ error  # (R, n_rows, n)
            weight.index_add_(1, rows, delta, alpha=-eta * scale)
        else:
            weight.baddbmm_(psp.transpose(1, 2), error, alpha=-eta * scale)
        bias.add_(error.sum(dim=1), alpha=-eta * scale)


def learn_example(
    net: SegregatedDendriteNet,
    state: NetworkState,
    input_rates: torch.Tensor,
    labels: torch.Tensor,
    generators: torch.Generator | Sequence[torch.Generator] | CounterStream,
    phase_steps: tuple[int, int],
    learning_rates: Sequence[float],
    backend: str = "torch",
) -> tuple[NetworkState, PhaseAverages, PhaseAverages]:
    """One online step of the paper: a forward phase, a target phase, the plateau update.

    ``input_rates``: (R, 1, n_in) spikes per step (``phi_max`` times pixel intensities);
    ``labels``: (R, 1); ``phase_steps``: the two phase lengths (see ``phase_lengths``);
    ``backend``: how the phases are simulated (``simulate_phase``). Returns the state to carry
    into the next example and the two phases' averages.

    ``generators``: the random stream. Torch generators (one, or one per replica) draw each
    phase's uniforms in turn (``draw_noise``). A :class:`~neuroplastic.kernels.counter_random.
    CounterStream` (a key per replica and the example's index) makes every uniform a function
    of (key, example, phase, population, step, unit) alone (``counter_noise``). With it,
    ``backend="numba"`` (or ``auto`` on the CPU with Numba installed; float32 or float64, one
    example per replica) runs the whole example in one compiled call, drawing the uniforms
    inside the loop (:func:`neuroplastic.kernels.dendrite_example.learn_example_compiled`);
    otherwise the phases are simulated on the same uniforms (:class:`CounterPhase`), with the
    same result up to rounding. Example ``b`` of a batch of B takes ``stream.example + b``.
    """
    counter = isinstance(generators, CounterStream)
    if counter:
        compiled = learn_example_compiled(
            net, state, input_rates, labels, generators, phase_steps, learning_rates, backend
        )
        if compiled is not None:
            return compiled

    def noise(phase: int, steps: int) -> PhaseNoise | CounterPhase:
        if counter:
            return CounterPhase(generators, phase, steps)
        return net.draw_noise(steps, generators, input_rates=input_rates)

    window = net.params.integration_steps
    f_steps, t_steps = phase_steps
    forward = simulate_phase(
        net, state, input_rates, noise(FORWARD, f_steps), window, backend=backend
    )
    target = simulate_phase(
        net, forward.state, input_rates, noise(TARGET, t_steps), window, labels, backend=backend
    )
    plateau_step(net, forward.averages, target.averages, learning_rates)
    net.sync_feedback()
    return target.state, forward.averages, target.averages


def learn_examples(
    net: SegregatedDendriteNet,
    state: NetworkState,
    input_rates: torch.Tensor,
    labels: torch.Tensor,
    generators: torch.Generator | Sequence[torch.Generator] | CounterStream,
    phase_steps: Sequence[tuple[int, int]],
    learning_rates: Sequence[float],
    backend: str = "torch",
) -> tuple[NetworkState, ExampleSignals]:
    """:func:`learn_example` for C examples in turn, each from the state the previous one left:
    ``input_rates`` (R, C, n_in), ``labels`` (R, C), ``phase_steps`` C pairs. On a
    ``CounterStream`` example ``e`` takes ``stream.example + e``. Returns the state after the
    last example and, per example, the :class:`ExampleSignals` a training loop records (the
    forward phase's output potentials; the plateau and backprop errors of every hidden layer,
    read after the update).

    Where :func:`learn_example` would run one compiled call per example, this runs the C
    examples in one (``kernels.dendrite_example.learn_examples_compiled``), with nothing in
    Python between them; elsewhere it loops over :func:`learn_example`. Tested equal."""
    examples = input_rates.shape[1]
    if labels.shape[:2] != input_rates.shape[:2] or len(phase_steps) != examples:
        raise ValueError(
            f"need labels (R, C) and C phase lengths for input rates {tuple(input_rates.shape)}, "
            f"got labels {tuple(labels.shape)} and {len(phase_steps)} lengths"
        )
    counter = isinstance(generators, CounterStream)
    if counter:
        compiled = learn_examples_compiled(
            net, state, input_rates, labels, generators, phase_steps, learning_rates, backend
        )
        if compiled is not None:
            return compiled
    outputs, plateaus, exacts = [], [], []
    for e in range(examples):
        stream = generators._replace(example=generators.example + e) if counter else generators
        state, forward, target = learn_example(
            net, state, input_rates[:, e : e + 1], labels[:, e : e + 1], stream, phase_steps[e],
            learning_rates, backend,
        )  # fmt: skip
        outputs.append(forward.soma[-1])
        plateaus.append(hidden_errors(net, forward, target))
        exacts.append(backprop_signals(net, forward, target))
    per_layer = range(net.n_hidden)
    return state, ExampleSignals(
        torch.cat(outputs, dim=1),
        tuple(torch.cat([p[layer] for p in plateaus], dim=1) for layer in per_layer),
        tuple(torch.cat([x[layer] for x in exacts], dim=1) for layer in per_layer),
    )
