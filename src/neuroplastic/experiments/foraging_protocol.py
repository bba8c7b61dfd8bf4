"""The phases of the foraging experiment (docs/experiments/golden2022-foraging.md), as functions
of an explicit :class:`Foragers` state: replicas of the agent (``models.forager``), one world
each (``envs.foraging``), and the plasticity attached as the paper describes.

- :func:`unsupervised_phase`: all four shapes, input-to-hidden STDP applied after every cycle
  (weights kept in ``[0, input_max]`` and on each hidden neuron's 9 synapses), no reward.
- :func:`task_phase`: one task's world, hidden-to-output reward-modulated STDP with the cycle's
  reward (``plasticity.RewardSTDP``), then heterosynaptic normalisation of each output's inputs
  to its target total.
- :func:`sleep_phase`: sleep cycles (``Forager.sleep_cycle``) at each hidden neuron's waking
  rate, the same rule with the constant sleep reward, the same normalisation.
- :func:`test_phase`: no plasticity; counts of rewarded and punished particles eaten.
  Discriminability = rewarded / (rewarded + punished).

The agents keep moving between phases (the world is swapped, the agent is not reset). Synaptic
scaling of the targets is not applied yet: the paper gives neither its target rate nor its step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from neuroplastic.envs.foraging import TASKS, ForagingWorlds
from neuroplastic.models.forager import Forager, choose_moves
from neuroplastic.plasticity import STDP, RewardSTDP, RewardSTDPParameters, normalise_inputs

SLEEP_REWARD = 0.5
"""The constant reward factor of the paper's sleep."""


@dataclass
class Foragers:
    """Replicated agents, their worlds and what the phases carry from one to the next."""

    agent: Forager
    worlds: ForagingWorlds
    generator: torch.Generator
    input_max: float = 2.0
    last_moves: Tensor = field(init=False)
    hungry: Tensor = field(init=False)
    targets: Tensor = field(init=False)
    waking_spikes: Tensor = field(init=False)
    waking_cycles: int = 0

    def __post_init__(self) -> None:
        replicas = self.agent.replicas
        self.last_moves = torch.zeros(replicas, dtype=torch.long)
        self.hungry = torch.zeros(replicas)
        self.targets = self.agent.w_out.sum(-1).clone()  # each output's total input
        self.waking_spikes = torch.zeros(replicas, self.agent.n_hidden)

    def move(self, counts: Tensor) -> tuple[Tensor, Tensor]:
        """Choose and make the moves; returns the rewards and the shapes eaten."""
        moves = choose_moves(counts, self.last_moves, self.hungry, self.agent.params,
                             self.generator)  # fmt: skip
        _, rewards, eaten = self.worlds.step(moves)
        self.hungry = torch.where(eaten > 0, 0.0, self.hungry + 1)
        self.last_moves = moves
        return rewards, eaten

    def waking_rates(self) -> Tensor:
        """Each hidden neuron's mean spikes per step over the waking cycles so far."""
        return self.waking_spikes / max(1, self.waking_cycles * self.agent.params.cycle)


def output_rule(foragers: Foragers) -> RewardSTDP:
    """The hidden-to-output rule, on a copy of the agents' weights, with the agent's cycle
    length (and the paper's offset of one cycle). Keep one for the whole schedule: its output
    balancing refers to the weights it was made with."""
    cycle = foragers.agent.params.cycle
    params = RewardSTDPParameters(cycle=cycle, offset=float(cycle))
    return RewardSTDP(torch.nn.Parameter(foragers.agent.w_out.clone()), params)


def _switch(foragers: Foragers, task: str) -> None:
    if foragers.worlds.task.name != task:
        foragers.worlds.reset(task=task)


def unsupervised_phase(foragers: Foragers, cycles: int) -> None:
    _switch(foragers, "unsupervised")
    agent = foragers.agent
    weight = torch.nn.Parameter(agent.w_in.clone())
    rule = STDP(weight)
    for _ in range(cycles):
        record = agent.run_cycle(foragers.worlds.observe(), foragers.generator, input_rule=rule)
        rule.write()
        with torch.no_grad():
            weight -= weight.grad
            weight.clamp_(0.0, foragers.input_max).mul_(agent.in_mask)
            weight.grad = None
        agent.w_in = weight.detach().clone()
        rule.reset()
        foragers.move(record.counts)


def _apply(foragers: Foragers, weight: torch.nn.Parameter) -> None:
    """Take the rule's step, keep weights positive, normalise each output's inputs."""
    with torch.no_grad():
        weight -= weight.grad
        weight.clamp_(min=1e-9)
        weight.copy_(normalise_inputs(weight, foragers.targets))
        weight.grad = None
    foragers.agent.w_out = weight.detach().clone()


def task_phase(foragers: Foragers, task: str, cycles: int, rule: RewardSTDP) -> None:
    """``cycles`` of training on ``task`` with ``rule`` (its weight is ``agent.w_out``)."""
    _switch(foragers, task)
    for _ in range(cycles):
        record = foragers.agent.run_cycle(foragers.worlds.observe(), foragers.generator,
                                          output_rule=rule)  # fmt: skip
        rewards, _ = foragers.move(record.counts)
        rule.reward(rewards)
        _apply(foragers, rule.weight)
        foragers.waking_spikes += record.hidden_spikes
        foragers.waking_cycles += 1


def sleep_phase(foragers: Foragers, cycles: int, rule: RewardSTDP) -> None:
    """``cycles`` of sleep at the waking rates measured so far."""
    rates = foragers.waking_rates()
    for _ in range(cycles):
        foragers.agent.sleep_cycle(rates, foragers.generator, output_rule=rule)
        rule.reward(torch.full((foragers.agent.replicas,), SLEEP_REWARD))
        _apply(foragers, rule.weight)


def test_phase(foragers: Foragers, task: str, cycles: int) -> tuple[Tensor, Tensor]:
    """``cycles`` without plasticity on ``task``: (rewarded, punished) particles eaten per
    replica."""
    _switch(foragers, task)
    spec = TASKS[task]
    rewarded = torch.zeros(foragers.agent.replicas)
    punished = torch.zeros(foragers.agent.replicas)
    for _ in range(cycles):
        record = foragers.agent.run_cycle(foragers.worlds.observe(), foragers.generator)
        _, eaten = foragers.move(record.counts)
        rewarded += torch.isin(eaten, torch.tensor(spec.rewarded)).float()
        punished += torch.isin(eaten, torch.tensor(spec.punished)).float()
    return rewarded, punished


def discriminability(rewarded: Tensor, punished: Tensor) -> Tensor:
    """rewarded / (rewarded + punished) per replica; NaN where nothing was eaten."""
    total = rewarded + punished
    return torch.where(total > 0, rewarded / total.clamp(min=1), torch.nan)
