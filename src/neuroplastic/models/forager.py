"""The foraging agent of Golden et al. (2022) (the sleep-replay sheet, part A;
docs/experiments/golden2022-foraging.md): a 49-784-8 spiking network that looks at the 7 x 7
window of ``envs.foraging`` and picks one of 8 moves per movement cycle. Replicas (independent
networks) are a batch dimension.

What follows the paper:
- 9 random input synapses per hidden neuron (from the 48 squares around the agent's own: the
  centre square never holds a particle), and all-to-all hidden-to-output synapses.
- Each excitatory hidden-to-output synapse is paired with an inhibitory one of minus the mean of
  that hidden neuron's excitatory outputs (``plasticity.balanced_inhibition``).
- A movement cycle of ``cycle`` steps. At its first step each input neuron whose square holds a
  particle fires once. The move is the output with the most spikes in the first ``decision``
  steps, ties broken at random, and without output spikes the previous move is repeated
  (:func:`choose_moves`).
- Exploration: a random move with probability ``exploration`` plus ``exploration_step`` for
  every cycle since the last meal.

What is ours: LIF neurons (``neurons.lif_step``, reset by subtraction) stand in for the paper's
map-based ones, as the issue allows, with exponentially decaying synaptic currents (``tau_syn``)
so that a single input volley spreads over several milliseconds as the map model's conductances
do. The time constants, threshold and weight scales are this module's choices
(:class:`ForagerParameters`); the paper does not give the map model's synaptic scales.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from neuroplastic.neurons.lif import LIFParameters, LIFState, initial_state
from neuroplastic.plasticity.homeostasis import balanced_inhibition

QUIET_CHECK_EVERY = 8
"""``simulate_cycle`` checks whether the network has fallen quiet every this many steps (a check
costs a synchronising reduction; stopping a few silent steps late changes nothing)."""


@dataclass(frozen=True)
class ForagerParameters:
    view: int = 7
    """Side of the input window (49 inputs)."""
    hidden_side: int = 28
    """Side of the hidden sheet (784 neurons)."""
    n_moves: int = 8
    """Outputs: the 3 x 3 grid without its centre."""
    inputs_per_hidden: int = 9
    """Random input synapses per hidden neuron."""
    cycle: int = 600
    """Steps per movement cycle (300 ms at 0.5 ms)."""
    decision: int = 300
    """Steps at the cycle's start whose output spikes choose the move."""
    tau_m: float = 20.0
    """Membrane time constant in steps (10 ms). Ours: the paper's neurons are map-based."""
    tau_syn: float = 10.0
    """Synaptic current decay in steps (5 ms). Ours."""
    v_th: float = 1.0
    """Firing threshold (LIF units)."""
    input_weight: float = 0.085
    """Mean initial input-to-hidden weight (uniform on [0, 2x)). Ours: one lit input alone peaks
    at about 5.4 w under the threshold's 1 (w below ``input_max``), so a hidden neuron needs two
    or more lit inputs: it detects a conjunction of pixels, which is what tells the shapes
    apart."""
    input_max: float = 0.17
    """Upper bound of the input-to-hidden weights under unsupervised STDP. Ours (see above)."""
    output_weight: float = 0.3
    """Initial hidden-to-output weight, the same for every synapse (the paper: all equal; the
    value is ours, chosen so that release noise makes an output fire in most early cycles)."""
    release_noise: float = 0.12
    """Each synaptic event onto an output is scaled by a draw from U[1 - r, 1 + r] (the paper's
    R): with all weights equal and inhibition balanced, it is what first makes outputs fire."""
    output_max: float = math.inf
    """Upper bound of each hidden-to-output weight under plasticity (none by default; the
    authors' code bounds its weights at 50 times their initial value)."""
    exploration: float = 0.01
    """Probability of a random move."""
    exploration_step: float = 0.01
    """Added to it for every movement cycle since the last meal."""


class CycleRecord(NamedTuple):
    counts: Tensor
    """``(replicas, n_moves)``: output spikes in the decision window."""
    hidden_spikes: Tensor
    """``(replicas, n_hidden)``: hidden spikes over the whole cycle."""


class CycleTrains(NamedTuple):
    """A cycle simulated as a whole (:meth:`Forager.simulate_cycle`): its record and the spike
    trains of its active part, the ``T`` steps until the network fell quiet (nothing happens in
    the rest of the cycle)."""

    counts: Tensor
    hidden_spikes: Tensor
    inputs: Tensor
    """``(T, replicas, 49)``: the input volley at step 0, then nothing."""
    hidden: Tensor
    """``(T, replicas, n_hidden)``."""
    output: Tensor
    """``(T, replicas, n_moves)``."""


def choose_moves(
    counts: Tensor, last_moves: Tensor, hungry_cycles: Tensor, params: ForagerParameters,
    generator: torch.Generator,
) -> Tensor:  # fmt: skip
    """The paper's policy for each replica: the output with the most spikes (ties at random),
    the previous move if no output spiked, and with probability ``exploration +
    exploration_step * hungry_cycles`` a uniformly random move instead. ``counts``
    ``(replicas, n_moves)``; returns ``(replicas,)`` long."""
    replicas, n_moves = counts.shape
    noise = torch.rand(replicas, n_moves, generator=generator, device=counts.device)
    best = counts.max(1, keepdim=True).values
    tied = counts == best
    chosen = torch.where(tied, noise, -1.0).argmax(1)  # a uniform draw among the tied
    chosen = torch.where(best[:, 0] > 0, chosen, last_moves)
    explore_p = params.exploration + params.exploration_step * hungry_cycles.to(noise.dtype)
    explore = torch.rand(replicas, generator=generator, device=counts.device) < explore_p
    random_moves = torch.randint(0, n_moves, (replicas,), generator=generator,
                                 device=counts.device)  # fmt: skip
    return torch.where(explore, random_moves, chosen)


class Forager:
    """``replicas`` independent agents. Weights: ``w_in`` ``(replicas, n_hidden, 49)`` (zero off
    each hidden neuron's 9 synapses, ``in_mask``), ``w_out`` ``(replicas, n_moves, n_hidden)``
    excitatory; the inhibition is derived from ``w_out`` each cycle. :meth:`run_cycle` simulates
    one movement cycle; plasticity rules see it through ``step(pre, post)`` and ``skip(steps)``.

    ``output_gain`` ``(replicas, n_moves)``, if set, multiplies each output's whole synaptic
    input, excitation and inhibition alike: the authors' code divides it by a "resistance"
    that output homeostasis moves (``foraging_protocol.Scaling``). ``None`` is a gain of 1."""

    output_gain: Tensor | None = None

    def __init__(
        self, replicas: int, params: ForagerParameters = ForagerParameters(), seed: int = 0,
        dtype: torch.dtype = torch.float32, device=None,
    ):  # fmt: skip
        self.params, self.replicas = params, replicas
        gen = torch.Generator().manual_seed(seed)
        n_in, n_hidden = params.view**2, params.hidden_side**2
        centre = n_in // 2
        candidates = torch.tensor([i for i in range(n_in) if i != centre])
        scores = torch.rand(replicas, n_hidden, len(candidates), generator=gen)
        chosen = candidates[scores.argsort(-1)[..., : params.inputs_per_hidden]]
        mask = torch.zeros(replicas, n_hidden, n_in)
        mask.scatter_(2, chosen, 1.0)
        self.in_mask = mask.to(dtype=dtype, device=device)
        weights = torch.rand(replicas, n_hidden, n_in, generator=gen) * 2 * params.input_weight
        self.w_in = weights.to(dtype=dtype, device=device) * self.in_mask
        self.w_out = torch.full((replicas, params.n_moves, n_hidden), params.output_weight,
                                dtype=dtype, device=device)  # fmt: skip
        self.neuron = LIFParameters(math.exp(-1.0 / params.tau_m), params.v_th)
        self.synapse = math.exp(-1.0 / params.tau_syn)

    def _output_drive(
        self, hidden_spikes: Tensor, inhibition: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """The outputs' synaptic input from last step's hidden spikes, excitation and balanced
        inhibition each with release noise (no draws when no hidden neuron spiked)."""
        if not hidden_spikes.any():
            return hidden_spikes.new_zeros(self.replicas, self.params.n_moves)
        weights = self._noisy(self.w_out, generator) + self._noisy(inhibition, generator)
        return self._gained(torch.einsum("roh,rh->ro", weights, hidden_spikes))

    def _gained(self, drive: Tensor) -> Tensor:
        """``drive`` ``(..., replicas, n_moves)`` times each output's gain."""
        return drive if self.output_gain is None else drive * self.output_gain.to(drive)

    def _noisy(self, weights: Tensor, generator: torch.Generator | None) -> Tensor:
        """``weights`` with each synaptic event scaled by U[1 - r, 1 + r] (release noise)."""
        r = self.params.release_noise
        if not r:
            return weights
        draw = torch.rand(weights.shape, generator=generator, dtype=weights.dtype)
        return weights * (1 + r * (2 * draw.to(weights.device) - 1))

    def repeat(self, copies: int) -> Forager:
        """A forager of ``replicas * copies`` replicas, each network ``copies`` times in a row
        (replica ``r`` becomes ``r * copies`` to ``r * copies + copies - 1``): the same frozen
        networks, to run in several worlds at once."""
        clone = copy.copy(self)
        clone.replicas = self.replicas * copies
        clone.in_mask = self.in_mask.repeat_interleave(copies, 0)
        clone.w_in = self.w_in.repeat_interleave(copies, 0)
        clone.w_out = self.w_out.repeat_interleave(copies, 0)
        if self.output_gain is not None:
            clone.output_gain = self.output_gain.repeat_interleave(copies, 0)
        return clone

    def select(self, index: int | slice) -> Forager:
        """Replica ``index`` alone, or the replicas of a slice (sharing the weights' memory)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        clone = copy.copy(self)
        clone.in_mask = self.in_mask[index]
        clone.w_in = self.w_in[index]
        clone.w_out = self.w_out[index]
        if self.output_gain is not None:
            clone.output_gain = self.output_gain[index]
        clone.replicas = clone.w_in.shape[0]
        return clone

    @property
    def n_hidden(self) -> int:
        return self.w_in.shape[1]

    def run_cycle(
        self, window: Tensor, generator: torch.Generator | None = None, input_rule=None,
        output_rule=None,
    ) -> CycleRecord:  # fmt: skip
        """One movement cycle from rest on the replicas' views ``window``
        ``(replicas, view, view)``; ``generator`` draws the release noise. ``input_rule`` and
        ``output_rule`` (plasticity rules, e.g. ``plasticity.STDP``, ``RewardSTDP``), if given,
        see every step's input/hidden and hidden/output spikes through ``step(pre, post)``.
        Once no neuron can reach threshold again the cycle's quiet rest is skipped, the rules
        told through ``skip(steps)`` (tested equal to stepping through it)."""
        p = self.params
        dtype, device = self.w_in.dtype, self.w_in.device
        volley = window.reshape(self.replicas, -1).to(dtype=dtype, device=device)
        silent = torch.zeros_like(volley)
        hidden = initial_state(self.replicas, self.n_hidden, dtype=dtype, device=device)
        output = initial_state(self.replicas, p.n_moves, dtype=dtype, device=device)
        hidden_current = torch.zeros(self.replicas, self.n_hidden, dtype=dtype, device=device)
        output_current = torch.zeros(self.replicas, p.n_moves, dtype=dtype, device=device)
        inhibition = balanced_inhibition(self.w_out)
        counts = torch.zeros(self.replicas, p.n_moves, dtype=dtype, device=device)
        hidden_total = torch.zeros(self.replicas, self.n_hidden, dtype=dtype, device=device)
        for t in range(p.cycle):
            inputs = volley if t == 0 else silent
            previous_hidden = hidden.z
            hidden_current = self.synapse * hidden_current + torch.einsum(
                "rhi,ri->rh", self.w_in, inputs
            )
            z_hidden, hidden = _step(hidden_current, hidden, self.neuron)
            output_current = self.synapse * output_current + self._output_drive(
                previous_hidden, inhibition, generator
            )
            z_output, output = _step(output_current, output, self.neuron)
            if t < p.decision:
                counts += z_output
            hidden_total += z_hidden
            for rule, pre, post in ((input_rule, inputs, z_hidden),
                                    (output_rule, z_hidden, z_output)):  # fmt: skip
                if rule is not None:
                    rule.step(pre, post)
            if t > 0 and self._quiet(hidden, hidden_current, output, output_current):
                for rule in (input_rule, output_rule):
                    if rule is not None:
                        rule.skip(p.cycle - 1 - t)
                break  # nothing left to happen this cycle: the rest would be all zeros
        return CycleRecord(counts, hidden_total)

    def sleep_cycle(
        self, rates: Tensor, generator: torch.Generator | None = None, output_rule=None
    ) -> CycleRecord:
        """One movement cycle of sleep (the paper's): no input, no movement, and each hidden
        neuron fires as a Poisson process at ``rates`` ``(replicas, n_hidden)`` spikes per step
        (its average rate while awake). The outputs run as when awake, and ``output_rule`` sees
        hidden and output spikes every step. The caller closes the cycle with the rule's
        constant sleep reward (``rule.reward(0.5)`` in the paper)."""
        p = self.params
        dtype, device = self.w_out.dtype, self.w_out.device
        rates = rates.to(dtype=dtype, device=device)
        output = initial_state(self.replicas, p.n_moves, dtype=dtype, device=device)
        output_current = torch.zeros(self.replicas, p.n_moves, dtype=dtype, device=device)
        inhibition = balanced_inhibition(self.w_out)
        counts = torch.zeros(self.replicas, p.n_moves, dtype=dtype, device=device)
        hidden_total = torch.zeros(self.replicas, self.n_hidden, dtype=dtype, device=device)
        previous_hidden = torch.zeros_like(hidden_total)
        for z_hidden in self.sleep_spikes(rates, generator):
            output_current = self.synapse * output_current + self._output_drive(
                previous_hidden, inhibition, generator
            )
            z_output, output = _step(output_current, output, self.neuron)
            counts += z_output
            hidden_total += z_hidden
            if output_rule is not None:
                output_rule.step(z_hidden, z_output)
            previous_hidden = z_hidden
        return CycleRecord(counts, hidden_total)

    def sleep_spikes(self, rates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A sleep cycle's hidden spikes ``(cycle, replicas, n_hidden)``: independent Bernoulli
        draws per step at ``rates`` (spikes per step), Poisson trains at the step's resolution.

        Drawn sparsely, as the same distribution: each neuron's spike count is binomial over the
        cycle's steps, and its spikes fall on that many distinct steps chosen uniformly (a draw
        that lands on a step already taken by the same neuron is drawn again)."""
        dtype, device = self.w_out.dtype, self.w_out.device
        steps = self.params.cycle
        rates = rates.to(torch.float64).cpu().clamp(0.0, 1.0)
        counts = torch.binomial(torch.full_like(rates, float(steps)), rates, generator=generator)
        neuron = torch.repeat_interleave(torch.arange(rates.numel()), counts.flatten().long())
        step = torch.randint(0, steps, neuron.shape, generator=generator)
        while True:
            key = neuron * steps + step
            order = torch.argsort(key, stable=True)
            repeated = torch.zeros_like(key, dtype=torch.bool)
            repeated[order[1:]] = key[order[1:]] == key[order[:-1]]
            if not repeated.any():
                break
            step[repeated] = torch.randint(0, steps, (int(repeated.sum()),), generator=generator)
        trains = torch.zeros(steps, rates.numel(), dtype=dtype)
        trains[step, neuron] = 1.0
        return trains.reshape(steps, *rates.shape).to(device)

    def simulate_cycle(self, window: Tensor, generator: torch.Generator | None = None
                       ) -> CycleTrains:  # fmt: skip
        """:meth:`run_cycle` without rules, computed layer by layer: the hidden layer until it
        falls quiet, the outputs' synaptic input from all hidden spikes at once (release noise
        drawn per spike), then the outputs. Rules take the trains afterwards (``rule.block``,
        then ``rule.skip`` for the cycle's quiet rest). Without release noise it equals
        :meth:`run_cycle` exactly (tested); with it, in distribution (the draws come in another
        order)."""
        p = self.params
        dtype, device = self.w_in.dtype, self.w_in.device
        volley = window.reshape(self.replicas, -1).to(dtype=dtype, device=device)
        hidden = initial_state(self.replicas, self.n_hidden, dtype=dtype, device=device)
        current = torch.einsum("rhi,ri->rh", self.w_in, volley)
        trains = []
        for t in range(p.cycle):
            if t:
                current = self.synapse * current
            z_hidden, hidden = _step(current, hidden, self.neuron)
            trains.append(z_hidden)
            if t % QUIET_CHECK_EVERY == QUIET_CHECK_EVERY - 1 and self._layer_quiet(hidden,
                                                                                  current):
                break
        hidden_trains = torch.stack(trains)
        counts, output_trains = self._outputs(hidden_trains, generator, len(trains) - 1,
                                              p.decision)  # fmt: skip
        steps = output_trains.shape[0]
        if steps > hidden_trains.shape[0]:
            pad = hidden_trains.new_zeros(steps - hidden_trains.shape[0], *hidden_trains.shape[1:])
            hidden_trains = torch.cat([hidden_trains, pad])
        inputs = volley.new_zeros(steps, *volley.shape)
        inputs[0] = volley
        return CycleTrains(counts, hidden_trains.sum(0), inputs, hidden_trains, output_trains)

    def simulate_sleep(self, hidden_trains: Tensor, generator: torch.Generator | None = None
                       ) -> CycleTrains:  # fmt: skip
        """:meth:`sleep_cycle` on given hidden spikes ``(cycle, replicas, n_hidden)``
        (:meth:`sleep_spikes`), computed as :meth:`simulate_cycle` computes its outputs; all
        ``cycle`` steps are returned. Equal to :meth:`sleep_cycle` without release noise."""
        counts, output_trains = self._outputs(hidden_trains, generator, None, self.params.cycle)
        inputs = hidden_trains.new_zeros(0)
        return CycleTrains(counts, hidden_trains.sum(0), inputs, hidden_trains, output_trains)

    def _outputs(self, hidden_trains: Tensor, generator: torch.Generator | None,
                 hidden_quiet_at: int | None, counted: int) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Output spikes driven by ``hidden_trains`` (each step's hidden spikes reach the outputs
        the next step): ``(counts over the first counted steps, trains)``. With
        ``hidden_quiet_at`` the loop stops once, from there on, the outputs are quiet too (checked
        every ``QUIET_CHECK_EVERY`` steps; :meth:`run_cycle` stops at the first quiet step,
        and the steps in between are silent); otherwise it runs the whole cycle."""
        p = self.params
        dtype, device = self.w_out.dtype, self.w_out.device
        drive = self._drive(hidden_trains, generator)
        output = initial_state(self.replicas, p.n_moves, dtype=dtype, device=device)
        current = torch.zeros(self.replicas, p.n_moves, dtype=dtype, device=device)
        trains = []
        for t in range(p.cycle):
            current = self.synapse * current
            if 0 < t <= drive.shape[0]:
                current = current + drive[t - 1]
            z_output, output = _step(current, output, self.neuron)
            trains.append(z_output)
            if (hidden_quiet_at is not None and t >= hidden_quiet_at
                    and t % QUIET_CHECK_EVERY == QUIET_CHECK_EVERY - 1
                    and self._layer_quiet(output, current)):  # fmt: skip
                break
        output_trains = torch.stack(trains)
        return output_trains[:counted].sum(0), output_trains

    def _drive(self, hidden_trains: Tensor, generator: torch.Generator | None) -> Tensor:
        """``(T, replicas, n_moves)``: the outputs' synaptic input from each step's hidden spikes,
        excitation plus balanced inhibition, each spike's release scaled by U[1 - r, 1 + r]."""
        inhibition = balanced_inhibition(self.w_out)
        r = self.params.release_noise
        if not r:
            return self._gained(torch.einsum("trh,roh->tro", hidden_trains,
                                             self.w_out + inhibition))  # fmt: skip
        step, replica, neuron = hidden_trains.nonzero(as_tuple=True)
        excitatory = self.w_out[replica, :, neuron]  # (spikes, n_moves)
        inhibitory = inhibition[replica, :, neuron]
        draw = torch.rand(2, *excitatory.shape, generator=generator, dtype=excitatory.dtype)
        noise = 1 + r * (2 * draw.to(excitatory.device) - 1)
        events = excitatory * noise[0] + inhibitory * noise[1]
        drive = hidden_trains.new_zeros(*hidden_trains.shape[:2], self.params.n_moves)
        return self._gained(drive.index_put_((step, replica), events, accumulate=True))

    def _layer_quiet(self, state: LIFState, current: Tensor) -> bool:
        """No spike now, and none possible later without new input (see :meth:`_quiet`)."""
        if state.z.any():
            return False
        reach = self.synapse / (1 - self.synapse)
        return not bool((state.v.abs() + current.abs() * reach >= self.params.v_th).any())

    def _quiet(self, hidden: LIFState, hidden_current: Tensor, output: LIFState,
               output_current: Tensor) -> bool:  # fmt: skip
        """Whether no neuron can spike again this cycle without new input. With no spikes the
        currents only decay, so a potential can rise by at most ``|I| s / (1 - s)`` above
        ``|v|`` (``s`` the synaptic decay); if that stays under the threshold everywhere, the
        cycle is over. Exact, not an approximation."""
        if hidden.z.any() or output.z.any():
            return False
        s = self.synapse
        reach = s / (1 - s)
        for state, current in ((hidden, hidden_current), (output, output_current)):
            if (state.v.abs() + current.abs() * reach >= self.params.v_th).any():
                return False
        return True


def _step(current: Tensor, state: LIFState, params: LIFParameters) -> tuple[Tensor, LIFState]:
    """``neurons.lif_step`` for the forager's plain LIF (no adaptation, no refractory period,
    no gradient), without the general step's bookkeeping: ``v <- alpha v + I - z v_th``, a
    spike where ``v > v_th``. Tested equal to ``lif_step``."""
    v = params.alpha * state.v + current - state.z * params.v_th
    z = (v > params.v_th).to(v.dtype)
    return z, LIFState(v, z, state.a, state.refractory)
