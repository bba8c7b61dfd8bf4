"""The phases of the foraging experiment (docs/experiments/golden2022-foraging.md), as functions
of an explicit :class:`Foragers` state: replicas of the agent (``models.forager``), one world
each (``envs.foraging``), and the plasticity attached as the paper describes.

- :func:`unsupervised_phase`: all four shapes, input-to-hidden STDP applied after every cycle
  (weights kept in ``[0, params.input_max]`` and on each hidden neuron's 9 synapses), no reward;
  optionally each neuron's input total held, and moved by homeostasis (:class:`HiddenHomeostasis`).
- :func:`task_phase`: one task's world, hidden-to-output reward-modulated STDP with the cycle's
  reward (``plasticity.RewardSTDP``), then synaptic scaling of each output's target total
  (:class:`Scaling`) and heterosynaptic normalisation of its inputs to that target.
- :func:`sleep_phase`: sleep cycles at each hidden neuron's waking rate, the same rule with the
  constant sleep reward, the same normalisation. A :class:`Sleep` holds what a sleep phase is
  (its length, reward, noise source), so other experiments can reuse it.
- :func:`lone_particle_counts`: what the network has learnt, probed without a world: its output
  spikes for one particle of a given shape on each square next to the agent.
- :func:`test_phase`: no plasticity, in fresh worlds (several per network: the network is
  frozen, so its worlds can run side by side); counts of rewarded and punished particles eaten.
  Discriminability = rewarded / (rewarded + punished).

A network may forage in several worlds at once during training (``copies``): its replicas in
the batch are identical copies, each in its own world, and the synapses take the sum of the
copies' changes, so each simulated cycle gives ``copies`` cycles of experience (data
parallelism, as many agents sharing one brain). With one copy this is the paper's single agent.

Cycles are simulated layer by layer (``Forager.simulate_cycle``), the rules fed the whole
cycle's trains at once (``rule.block``): equal to stepping them (tested in the model's and the
rules' tests).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neuroplastic.envs.foraging import MOVES, SECOND_PIXEL, TASKS, ForagingWorlds
from neuroplastic.models.forager import Forager, choose_moves
from neuroplastic.plasticity import (
    STDP,
    RewardSTDP,
    RewardSTDPParameters,
    normalise_inputs,
    scale_gains,
    scale_targets,
)
from neuroplastic.plasticity.stdp import FORAGING

SLEEP_REWARD = 0.5
"""The constant reward factor of the paper's sleep."""


SCALING_MODES = ("target", "gain")


@dataclass(frozen=True)
class Scaling:
    """Homeostasis of the outputs, once per cycle, against each output's spikes per cycle: the
    cycle's own count, or with ``rate < 1`` a running mean moved by ``rate`` per cycle (from
    ``target_spikes``). Below ``target_spikes`` the output is made more excitable by ``step``
    (relative), above it less. What moves (``mode``):

    - ``"target"``: the output's target total input weight (the paper's synaptic scaling; the
      heterosynaptic normalisation then rescales its weights to it);
    - ``"gain"``: a gain on its whole input, excitation and inhibition (``Forager.output_gain``),
      the authors' code's resistance; the weights' totals stay at their initial values. The
      code's values over its 5 x 10^6 cycles per task: target 0.5, step 1e-5, rate 1e-4."""

    target_spikes: float = 1.0
    step: float = 0.0
    mode: str = "target"
    rate: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in SCALING_MODES:
            raise ValueError(f"scaling mode must be one of {SCALING_MODES}, got {self.mode!r}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"scaling rate must lie in (0, 1], got {self.rate}")

    def update(self, foragers: Foragers, output_spikes: Tensor) -> None:
        """One cycle's homeostasis of ``foragers`` from its outputs' spikes ``(replicas,
        n_moves)`` (averaged over a network's copies, so that they stay identical)."""
        if not self.step:
            return
        fired = foragers.shared(output_spikes.to(foragers.targets.dtype)) / foragers.copies
        if self.rate == 1:
            rates = fired
        else:
            if foragers.output_rates is None:
                foragers.output_rates = torch.full_like(fired, self.target_spikes)
            rates = foragers.output_rates + self.rate * (fired - foragers.output_rates)
            foragers.output_rates = rates
        if self.mode == "target":
            foragers.targets = scale_targets(foragers.targets, rates, self.target_spikes,
                                             self.step)  # fmt: skip
        else:
            agent = foragers.agent
            gains = agent.output_gain if agent.output_gain is not None else torch.ones_like(rates)
            agent.output_gain = scale_gains(gains, rates, self.target_spikes, self.step)


@dataclass
class Foragers:
    """Replicated agents, their worlds and what the phases carry from one to the next.
    ``agent`` holds ``copies`` consecutive identical replicas per network (see the module
    docstring); ``worlds`` one world per replica."""

    agent: Forager
    worlds: ForagingWorlds
    generator: torch.Generator
    copies: int = 1
    last_moves: Tensor = field(init=False)
    hungry: Tensor = field(init=False)
    targets: Tensor = field(init=False)
    waking: dict[str, tuple[Tensor, int]] = field(init=False)
    """Per training task: (hidden spikes summed over its cycles, cycles)."""
    output_rates: Tensor | None = field(init=False, default=None)
    """Each output's running mean of spikes per cycle, when :class:`Scaling` keeps one."""

    def __post_init__(self) -> None:
        replicas = self.agent.replicas
        if replicas % self.copies or self.worlds.n_worlds != replicas:
            raise ValueError(
                f"{replicas} replicas must be whole networks of {self.copies} copies, one world "
                f"each (got {self.worlds.n_worlds} worlds)"
            )
        self.last_moves = torch.zeros(replicas, dtype=torch.long)
        self.hungry = torch.zeros(replicas)
        self.targets = self.agent.w_out.sum(-1).clone()  # each output's total input
        self.waking = {}

    def move(self, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Choose and make the moves; returns the rewards and the shapes eaten. The policy and
        the worlds run on the CPU, whatever the network's device."""
        moves = choose_moves(counts.cpu(), self.last_moves, self.hungry, self.agent.params,
                             self.generator)  # fmt: skip
        _, rewards, eaten = self.worlds.step(moves)
        self.hungry = torch.where(eaten > 0, 0.0, self.hungry + 1)
        self.last_moves = moves
        return rewards, eaten

    @property
    def networks(self) -> Forager:
        """One replica per network (the first of its copies)."""
        return self.agent.select(slice(None, None, self.copies))

    def shared(self, change: Tensor) -> Tensor:
        """Per replica, the sum of ``change`` over its network's copies (a network's synapses
        take all its copies' changes)."""
        if self.copies == 1:
            return change
        grouped = change.reshape(-1, self.copies, *change.shape[1:])
        return grouped.sum(1, keepdim=True).expand_as(grouped).reshape(change.shape)

    def record_waking(self, task: str, hidden_spikes: Tensor) -> None:
        spikes, cycles = self.waking.get(task, (torch.zeros_like(hidden_spikes), 0))
        self.waking[task] = (spikes + hidden_spikes, cycles + 1)

    def waking_rates(self) -> Tensor:
        """Each hidden neuron's spikes per step while awake: its mean rate in each task trained
        so far, averaged over those tasks (the paper's sleep noise: the mean of the task-1 and
        task-2 rates)."""
        if not self.waking:
            raise ValueError("no waking cycles yet: sleep needs the waking rates")
        cycle = self.agent.params.cycle
        rates = [spikes / (cycles * cycle) for spikes, cycles in self.waking.values()]
        return self.shared(torch.stack(rates).mean(0)) / self.copies

    def copy(self) -> Foragers:
        """An independent copy (networks, worlds, random streams): a branch point."""
        return copy.deepcopy(self)


def output_rule(foragers: Foragers, gain: float = 1.0, cycles_kept: int = 6,
                activity_normalisation: str = "off", activity_rate: float = 0.01,
                change_cap: float = math.inf, pair_tau: float = FORAGING.tau,
                ) -> RewardSTDP:  # fmt: skip
    """The hidden-to-output rule, on a copy of the agents' weights, with the agent's cycle
    length (and the paper's offset of one cycle), its pair changes ``gain`` times the paper's
    (a compressed schedule) decaying over ``pair_tau`` steps, its traces kept for
    ``cycles_kept`` movement cycles (the paper's 6), a reading of the paper's activity
    normalisation (``plasticity.reward_stdp``; per replica, so per copy of a network) and a
    cap on each synapse's relative change per reward event. Keep one for the whole schedule:
    its output balancing refers to the weights it was made with."""
    cycle = foragers.agent.params.cycle
    stdp = FORAGING._replace(potentiation=gain * FORAGING.potentiation,
                             depression=gain * FORAGING.depression, tau=pair_tau)  # fmt: skip
    params = RewardSTDPParameters(stdp=stdp, cycle=cycle, offset=float(cycle),
                                  cycles_kept=cycles_kept,
                                  activity_normalisation=activity_normalisation,
                                  activity_rate=activity_rate, change_cap=change_cap)  # fmt: skip
    return RewardSTDP(torch.nn.Parameter(foragers.agent.w_out.clone()), params)


def _switch(foragers: Foragers, task: str) -> None:
    if foragers.worlds.task.name != task:
        foragers.worlds.reset(task=task)


@dataclass(frozen=True)
class HiddenHomeostasis:
    """Homeostasis of the hidden layer in the unsupervised period, after the authors' code: each
    hidden neuron's input total (what its input weights are held at, ``input_total`` to start)
    grows by ``step`` (relative) in each cycle in which its running mean of spikes per cycle is
    below ``target_spikes``, and shrinks by as much while above. The mean moves at ``rate`` per
    cycle, from the target. The code's values, over its 10^7 unsupervised cycles: target 0.01,
    step 1e-5, rate 1e-4; the defaults here (step 0.01, rate 0.01) are larger, for a period of
    about 10^3 cycles, and were not tuned."""

    target_spikes: float
    step: float = 0.01
    rate: float = 0.01

    def __post_init__(self) -> None:
        if not self.target_spikes > 0:
            raise ValueError(f"hidden target spikes must be positive, got {self.target_spikes}")
        if not 0 < self.step < 1:
            raise ValueError(f"hidden scaling step must lie in (0, 1), got {self.step}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"hidden rate average must lie in (0, 1], got {self.rate}")


def unsupervised_phase(
    foragers: Foragers, cycles: int, tick: Callable[[], None] = lambda: None,
    input_total: float | None = None, homeostasis: HiddenHomeostasis | None = None,
) -> None:  # fmt: skip
    """``cycles`` in the world of all four shapes with input-to-hidden STDP. With
    ``input_total``, each hidden neuron's input weights are also held at that total after
    every change (heterosynaptic normalisation, as on the output synapses), so its inputs
    compete: without it, a single input volley per cycle only ever potentiates, and every
    weight runs to ``input_max``. With ``homeostasis`` (which needs ``input_total`` to start
    from), each neuron's total moves towards a target rate of firing."""
    if homeostasis is not None and input_total is None:
        raise ValueError("hidden homeostasis moves each neuron's input total: set input_total "
                         "(the total it starts from) as well")  # fmt: skip
    _switch(foragers, "unsupervised")
    agent = foragers.agent
    weight = torch.nn.Parameter(agent.w_in.clone())
    totals = None
    if input_total is not None:
        totals = torch.full((*weight.shape[:-1], 1), float(input_total))
        with torch.no_grad():
            weight.copy_(_hold_input_totals(weight, agent.in_mask, input_total,
                                            agent.params.input_max))  # fmt: skip
        agent.w_in = weight.detach().clone()
    if homeostasis is not None:
        mean_spikes = torch.full(weight.shape[:-1], homeostasis.target_spikes)
        reachable = agent.params.input_max * agent.in_mask.sum(-1, keepdim=True)
    rule = STDP(weight)
    for _ in range(cycles):
        record = agent.simulate_cycle(foragers.worlds.observe(), foragers.generator)
        rule.block(record.inputs, record.hidden)
        rule.skip(agent.params.cycle - record.hidden.shape[0])
        rule.write()
        with torch.no_grad():
            weight -= foragers.shared(weight.grad)
            weight.clamp_(0.0, agent.params.input_max).mul_(agent.in_mask)
            if homeostasis is not None:
                fired = foragers.shared(record.hidden_spikes.to(weight.dtype)) / foragers.copies
                mean_spikes += homeostasis.rate * (fired - mean_spikes)
                totals = scale_targets(totals, mean_spikes[..., None], homeostasis.target_spikes,
                                       homeostasis.step).clamp(max=reachable)  # fmt: skip
            if totals is not None:
                weight.copy_(_hold_input_totals(weight, agent.in_mask, totals,
                                                agent.params.input_max))  # fmt: skip
            weight.grad = None
        agent.w_in = weight.detach().clone()
        rule.reset()
        foragers.move(record.counts)
        tick()


def _hold_input_totals(weight: Tensor, mask: Tensor, total: float | Tensor, bound: float,
                       rounds: int = 5) -> Tensor:  # fmt: skip
    """Each hidden neuron's inputs rescaled to sum to ``total`` (a number, or one per neuron
    ``(..., n_hidden, 1)``) within ``[0, bound]``: scale, clip at the bound, and scale the
    unclipped ones again (a few rounds settle it)."""
    reachable = bound * mask.sum(-1, keepdim=True)
    if (torch.as_tensor(total) > reachable * (1 + 1e-6)).any():
        raise ValueError(
            f"input_total {total} cannot be reached with {int(mask.sum(-1).min())} inputs "
            f"of at most {bound}"
        )
    weight = weight.clamp(min=1e-6) * mask
    for _ in range(rounds):
        weight = (weight * (total / weight.sum(-1, keepdim=True))).clamp(max=bound)
    return weight


def _apply(foragers: Foragers, weight: torch.nn.Parameter) -> None:
    """Take the rule's step, keep weights positive and under the agent's ``output_max`` (in
    this order, as the authors' code does: the normalisation can take a weight past the bound),
    normalise each output's inputs."""
    with torch.no_grad():
        weight -= foragers.shared(weight.grad)
        weight.clamp_(min=1e-9, max=foragers.agent.params.output_max)
        weight.copy_(normalise_inputs(weight, foragers.targets))
        weight.grad = None
    foragers.agent.w_out = weight.detach().clone()


BACKENDS = ("torch", "numba")
"""How a cycle is computed: ``torch``, the readable reference (``Forager.simulate_cycle`` and
the rule's ``block``); ``numba``, the compiled cycles of ``kernels.numba_forager`` (the ``fast``
extra), waking and asleep, tested equal to it (release noise and sleep's spikes: in
distribution)."""


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _cycle(foragers: Foragers, rule: RewardSTDP | None, backend: str) -> tuple[Tensor, ...]:
    """One cycle of the agents on their worlds' views: ``(counts, output spikes, hidden
    spikes)`` per replica; with ``rule``, its eligibility advanced by the cycle."""
    agent, window = foragers.agent, foragers.worlds.observe()
    _check_backend(backend)
    if backend == "numba":
        from neuroplastic.kernels.numba_forager import carries_pairs, run_cycle

        # the first waking cycle after sleep pairs with sleep's last spikes: the reference
        # computes it, as the compiled waking cycle does not pair across cycles
        if rule is None or not carries_pairs(rule):
            return run_cycle(agent, window, foragers.generator, rule)
    record = agent.simulate_cycle(window, foragers.generator)
    if rule is not None:
        rule.block(record.hidden, record.output)
        rule.skip(agent.params.cycle - record.hidden.shape[0])
    return record.counts, record.output.sum(0), record.hidden_spikes


def task_phase(
    foragers: Foragers, task: str, cycles: int, rule: RewardSTDP,
    scaling: Scaling = Scaling(), tick: Callable[[], None] = lambda: None,
    backend: str = "torch",
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``cycles`` of training on ``task`` with ``rule`` (its weight is ``agent.w_out``);
    returns the (rewarded, punished) particles eaten per network while training (over its
    copies). ``backend``: see ``BACKENDS``."""
    _switch(foragers, task)
    agent = foragers.agent
    spec = TASKS[task]
    rewarded = torch.zeros(agent.replicas)
    punished = torch.zeros(agent.replicas)
    for _ in range(cycles):
        counts, output_spikes, hidden_spikes = _cycle(foragers, rule, backend)
        rewards, eaten = foragers.move(counts)
        rewarded += torch.isin(eaten, torch.tensor(spec.rewarded)).float()
        punished += torch.isin(eaten, torch.tensor(spec.punished)).float()
        rule.reward(rewards)
        scaling.update(foragers, output_spikes)
        _apply(foragers, rule.weight)
        foragers.record_waking(task, hidden_spikes)
        tick()
    per_network = (-1, foragers.copies)
    return rewarded.reshape(per_network).sum(1), punished.reshape(per_network).sum(1)


@dataclass(frozen=True)
class Sleep:
    """A sleep phase: ``cycles`` cycles without input or movement, each hidden neuron driven by
    its own Poisson train (``noise``: ``"waking"`` at its mean waking rate, the paper's;
    ``"uniform"`` at the population's mean rate, its control), the hidden-to-output rule
    applied with the constant ``reward`` at each cycle's end."""

    cycles: int = 100
    reward: float = SLEEP_REWARD
    noise: str = "waking"

    def __post_init__(self) -> None:
        if self.noise not in ("waking", "uniform"):
            raise ValueError(f"sleep noise must be 'waking' or 'uniform', got {self.noise!r}")

    def rates(self, foragers: Foragers) -> Tensor:
        rates = foragers.waking_rates()
        if self.noise == "uniform":
            rates = rates.mean(-1, keepdim=True).expand_as(rates)
        return rates


def sleep_phase(foragers: Foragers, sleep: Sleep, rule: RewardSTDP,
                tick: Callable[[], None] = lambda: None, backend: str = "torch",
                scaling: Scaling = Scaling()) -> None:  # fmt: skip
    """One sleep phase at the waking rates measured so far. ``backend``: see ``BACKENDS``
    (``numba`` draws the hidden spikes in the kernel: the same process, another stream). The
    outputs' homeostasis ``scaling`` goes on in sleep, as in the authors' code (off by
    default: runs 185-194 had none)."""
    _check_backend(backend)
    agent = foragers.agent
    rates = sleep.rates(foragers)
    reward = torch.full((agent.replicas,), sleep.reward)
    for _ in range(sleep.cycles):
        if backend == "numba":
            from neuroplastic.kernels.numba_forager import run_sleep_cycle

            fired = run_sleep_cycle(agent, rates, foragers.generator, rule)
        else:
            record = agent.simulate_sleep(agent.sleep_spikes(rates, foragers.generator),
                                          foragers.generator)  # fmt: skip
            rule.block(record.hidden, record.output)
            fired = record.output.sum(0)
        rule.reward(reward)
        scaling.update(foragers, fired)
        _apply(foragers, rule.weight)
        tick()


def test_phase(
    foragers: Foragers, task: str, cycles: int, worlds_per_network: int = 1, seed: int = 0,
    tick: Callable[[], None] = lambda: None, moves: Tensor | None = None,
    backend: str = "torch",
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``cycles`` without plasticity on ``task`` in ``worlds_per_network`` fresh worlds per
    network (placed from ``seed``); returns (rewarded, punished) particles eaten per network,
    summed over its worlds. The training worlds and random streams are left untouched.
    ``moves`` ``(cycles, networks)``, if given, receives the first world's moves per network."""
    networks = foragers.networks
    agent = networks.repeat(worlds_per_network)
    worlds = ForagingWorlds(agent.replicas, task, seed=seed)
    probe = Foragers(agent, worlds, torch.Generator().manual_seed(seed % 2**63))
    spec = TASKS[task]
    rewarded = torch.zeros(agent.replicas)
    punished = torch.zeros(agent.replicas)
    for cycle in range(cycles):
        counts, _, _ = _cycle(probe, None, backend)
        _, eaten = probe.move(counts)
        if moves is not None:
            moves[cycle] = probe.last_moves.reshape(-1, worlds_per_network)[:, 0]
        rewarded += torch.isin(eaten, torch.tensor(spec.rewarded)).float()
        punished += torch.isin(eaten, torch.tensor(spec.punished)).float()
        tick()
    per_network = (networks.replicas, worlds_per_network)
    return rewarded.reshape(per_network).sum(1), punished.reshape(per_network).sum(1)


def lone_particle_views(shape: int, view: int = 7) -> Tensor:
    """``(8, view, view)``: a window holding one particle of ``shape``, with a pixel on the
    square of each move in turn (the particle's other pixel points away from the agent's own
    square where it would land on it)."""
    centre = view // 2
    second = SECOND_PIXEL[shape]
    views = torch.zeros(len(MOVES), view, view)
    for move, (dr, dc) in enumerate(MOVES):
        row, col = centre + dr, centre + dc
        other = (row + second[0], col + second[1])
        if other == (centre, centre):
            other = (row - second[0], col - second[1])
        views[move, row, col] = views[move, other[0], other[1]] = 1.0
    return views


def lone_particle_counts(foragers: Foragers, shape: int, repeats: int = 20, seed: int = 0
                        ) -> Tensor:  # fmt: skip
    """``(networks, 8, 8)``: each network's mean output spikes in the decision window (columns:
    the moves) when its window holds one particle of ``shape`` on the square of each move
    (rows), over ``repeats`` draws of the release noise. A network that has learnt to step onto
    that shape has its largest counts on the diagonal. Nothing is learnt; no world is touched."""
    networks = foragers.networks
    views = lone_particle_views(shape, networks.params.view)
    agent = networks.repeat(len(MOVES) * repeats)
    trials = views.repeat(networks.replicas * repeats, 1, 1)
    record = agent.simulate_cycle(trials, torch.Generator().manual_seed(seed))
    counts = record.counts.reshape(networks.replicas, repeats, len(MOVES), len(MOVES))
    return counts.mean(1)


def discriminability(rewarded: Tensor, punished: Tensor) -> Tensor:
    """rewarded / (rewarded + punished) per replica; NaN where nothing was eaten."""
    total = rewarded + punished
    return torch.where(total > 0, rewarded / total.clamp(min=1), torch.nan)


def top_synapses(weight: Tensor, fraction: float = 0.1) -> Tensor:
    """A boolean mask of each network's strongest ``fraction`` of synapses (the paper's
    task-relevant synapses: the top 10 % of hidden-to-output weights after a task).
    ``weight`` ``(replicas, ...)``."""
    flat = weight.flatten(1)
    k = max(1, round(fraction * flat.shape[1]))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, flat.topk(k, dim=1).indices, True)
    return mask.reshape(weight.shape)
