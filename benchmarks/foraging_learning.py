"""What the foraging agents learn of task 1, and how fast: a diagnosis of the task-1 stage of
``golden2022-foraging`` on validation networks (seeds from 1000 up, never the reported 0-9).

    python benchmarks/foraging_learning.py                                   # the default config
    python benchmarks/foraging_learning.py --set scaling_step=0.01 target_spikes=8 \\
        plasticity_gain=10 --cycles 5000 --worlds 8
    python benchmarks/foraging_learning.py --backend numba ...   # the compiled cycle
    python benchmarks/foraging_learning.py --hidden shapes ...   # hidden neurons that name a shape

It runs the experiment's unsupervised period and then task-1 training with any of the
experiment's config values (``--set``; ``--worlds`` sets ``training_worlds``), and every
``--every`` training cycles prints, averaged over the networks:

- ``test``: discriminability and meals per world and cycle in fresh worlds, no plasticity, the
  agent's exploration rule (the experiment's test, 300 cycles in 8 worlds per network);
- ``lone +/-``: the share of the 8 squares next to the agent on which a lone rewarded (+) or
  punished (-) particle makes the network take that square's move (chance 1/8);
- ``adjacent +/-``: in the test worlds, how often the network's own choice (no exploration)
  steps onto an adjacent rewarded (+) or punished (-) particle when one is there, and onto an
  empty square (``0``), chance 1/8;
- ``w max``: the largest hidden-to-output weight (it starts at ``output_weight``);
- ``gains``: the outputs' lowest and highest input gain (``scaling_mode=gain``; else 1).

After the unsupervised period it prints how selective the hidden neurons are: how many pairs
of lit inputs make a hidden neuron fire, and the share of those pairs that are adjacent squares
(only one particle can light two adjacent squares, so only those pairs name a shape); and how
well a linear probe on the hidden layer's activity tells the rewarded from the punished shape on
each square next to the agent (what a perfect learning rule could read out of the layer).

The scripted reference policies (``envs.foraging_policies``) in the same tests are printed
first: what stepping onto adjacent rewarded particles alone is worth. Not a timed benchmark;
each line is a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from neuroplastic.config import apply_overrides, diff_from_default
from neuroplastic.envs.foraging import MOVES, TASKS, ForagingWorlds
from neuroplastic.envs.foraging_policies import evaluate, neighbours
from neuroplastic.experiments import golden2022_foraging as golden
from neuroplastic.experiments.foraging_protocol import (
    BACKENDS,
    Foragers,
    discriminability,
    task_phase,
    test_phase,
    unsupervised_phase,
)
from neuroplastic.models.forager import Forager

TEST_CYCLES, TEST_WORLDS, TEST_SEED = 300, 8, 7
SHAPE_OFFSETS = ((0, 1), (1, 0), (-1, 1), (1, 1))
"""The second pixel of each shape from its first: horizontal, vertical, /, \\ (envs.foraging)."""


def shape_detectors(foragers: Foragers) -> None:
    """Replace every hidden neuron's input synapses by one detector of one shape at one place:
    the two inputs a particle of that shape lights there, each at ``input_max`` (one lit input
    alone stays under the threshold, the two together fire the neuron). The 156 placements that
    miss the centre are dealt out in turn over the 784 neurons. A diagnostic: what the
    hidden-to-output rule learns from hidden neurons that each name a shape."""
    agent, view = foragers.agent, foragers.networks.params.view
    centre = (view * view) // 2
    placements = []
    for dr, dc in SHAPE_OFFSETS:
        for r in range(view):
            for c in range(view):
                first, r2, c2 = r * view + c, r + dr, c + dc
                if 0 <= r2 < view and 0 <= c2 < view and centre not in (first, r2 * view + c2):
                    placements.append((first, r2 * view + c2))
    mask = torch.zeros_like(agent.in_mask[0])
    for neuron in range(mask.shape[0]):
        mask[neuron, list(placements[neuron % len(placements)])] = 1.0
    agent.in_mask = mask.expand_as(agent.in_mask).clone()
    agent.w_in = agent.in_mask * foragers.networks.params.input_max


def hidden_pair_selectivity(foragers: Foragers) -> tuple[float, float]:
    """(pairs of lit inputs that make a hidden neuron fire, per neuron; the share of them that
    are adjacent squares), averaged over the networks. Exact for the forager's LIF: one input
    volley at step 0 gives a current ``x s^t`` and a potential peaking at ``x P`` with
    ``P = max_t sum_u a^(t-u) s^u``, so a pair fires the neuron when its two weights sum
    above ``v_th / P``."""
    networks = foragers.networks
    alpha, decay = float(networks.neuron.alpha), networks.synapse
    peak, potential = 0.0, 0.0
    for t in range(networks.params.cycle):
        potential = alpha * potential + decay**t
        peak = max(peak, potential)
    threshold = networks.params.v_th / peak
    view = networks.params.view
    rows, cols = np.divmod(np.arange(view * view), view)
    adjacent = np.maximum(abs(rows[:, None] - rows[None]), abs(cols[:, None] - cols[None])) == 1
    firing = adjacent_firing = 0
    for weights, mask in zip(networks.w_in.numpy(), networks.in_mask.numpy(), strict=True):
        for w, inputs in zip(weights, mask.astype(bool), strict=True):
            idx = np.flatnonzero(inputs)
            sums = w[idx][:, None] + w[idx][None, :]
            fires = np.triu(sums > threshold, 1)
            firing += int(fires.sum())
            adjacent_firing += int((fires & adjacent[np.ix_(idx, idx)]).sum())
    neurons = networks.w_in.shape[0] * networks.w_in.shape[1]
    return firing / neurons, adjacent_firing / max(firing, 1)


def linear_readout(
    foragers: Foragers, cycles: int = 300, worlds: int = 32, seed: int = 5, ridge: float = 1.0
) -> tuple[float, float]:
    """Whether the hidden layer holds what the task needs: per network and adjacent square, a
    linear probe (ridge regression on which hidden neurons fired, plus a bias) trained on the
    first two thirds of ``cycles`` of random walks in task-1 worlds to tell the rewarded from
    the punished shape on that square, scored on the last third. Returns the (lowest, mean)
    test accuracy over networks and squares; 0.5 is chance."""
    networks = foragers.networks
    walkers = networks.repeat(worlds)
    world = ForagingWorlds(walkers.replicas, "task1", seed=seed)
    generator = torch.Generator().manual_seed(seed)
    features, around = [], []
    for _ in range(cycles):
        record = walkers.simulate_cycle(world.observe(), generator)
        features.append((record.hidden_spikes > 0).double())
        around.append(torch.from_numpy(neighbours(world)))
        world.step(torch.randint(0, len(MOVES), (walkers.replicas,), generator=generator))
    x = torch.stack(features).reshape(cycles, networks.replicas, worlds, -1)
    shapes = torch.stack(around).reshape(cycles, networks.replicas, worlds, len(MOVES))
    split = 2 * cycles // 3
    rewarded = TASKS["task1"].rewarded[0]
    accuracies = []
    for net in range(networks.replicas):
        for move in range(len(MOVES)):
            sets = []
            for part in (slice(0, split), slice(split, cycles)):
                here = shapes[part, net, :, move].reshape(-1)
                rows = x[part, net].reshape(-1, x.shape[-1])[here > 0]
                rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1)
                sets.append((rows, (here[here > 0] == rewarded).double() * 2 - 1))
            (train_x, train_y), (test_x, test_y) = sets
            gram = train_x.T @ train_x + ridge * torch.eye(train_x.shape[1], dtype=train_x.dtype)
            weights = torch.linalg.solve(gram, train_x.T @ train_y)
            accuracies.append(float(((test_x @ weights).sign() == test_y).double().mean()))
    return min(accuracies), sum(accuracies) / len(accuracies)


def adjacent_choices(foragers: Foragers, cycles: int = 100, seed: int = 11) -> dict[str, float]:
    """How often the networks' own choice (the output with most spikes, ties at random; cycles
    without output spikes are left out) steps onto an adjacent square holding a rewarded
    particle, a punished one, or nothing; the agents then move by that choice."""
    networks = foragers.networks.repeat(TEST_WORLDS)
    worlds = ForagingWorlds(networks.replicas, "task1", seed=seed)
    generator = torch.Generator().manual_seed(seed)
    spec = TASKS["task1"]
    taken = {"+": [0, 0], "-": [0, 0], "0": [0, 0]}
    index = np.arange(networks.replicas)
    for _ in range(cycles):
        counts = networks.simulate_cycle(worlds.observe(), generator).counts
        best = counts.max(1, keepdim=True).values
        noise = torch.rand(counts.shape, generator=generator)
        choice = torch.where(counts == best, noise, -1.0).argmax(1).numpy()
        fired = best[:, 0].numpy() > 0
        around = neighbours(worlds)
        present_by_label = {"+": np.isin(around, spec.rewarded),
                            "-": np.isin(around, spec.punished), "0": around == 0}  # fmt: skip
        for label, present in present_by_label.items():
            taken[label][0] += int(present[index, choice][fired].sum())
            taken[label][1] += int(present[fired].sum())
        random_moves = torch.randint(0, len(MOVES), (networks.replicas,), generator=generator)
        worlds.step(np.where(fired, choice, random_moves.numpy()))
    return {label: hits / max(total, 1) for label, (hits, total) in taken.items()}


def gain_range(foragers: Foragers) -> str:
    """The outputs' input gains, lowest to highest (1 without gain homeostasis)."""
    gain = foragers.agent.output_gain
    if gain is None:
        return "1"
    return f"{float(gain.min()):.3g}-{float(gain.max()):.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="golden2022-foraging config values")  # fmt: skip
    parser.add_argument("--base", default="default", choices=("default", "first"),
                        help="the config --set starts from: today's defaults, or the first "
                             "configuration (runs 185-194)")  # fmt: skip
    parser.add_argument("--networks", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000, help="validation seeds start here")
    parser.add_argument("--cycles", type=int, default=None, help="task-1 training cycles")
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--worlds", type=int, default=None, help="training worlds per network")
    parser.add_argument("--hidden", default="learnt", choices=("learnt", "shapes"),
                        help="shapes: the input synapses replaced by shape detectors")  # fmt: skip
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="numba: the compiled cycle (the fast extra)")  # fmt: skip
    args = parser.parse_args()
    if args.seed < 1000:
        parser.error("validation networks use seeds from 1000 up; 0-9 are the reported ones")
    torch.set_num_threads(1)
    base = golden.first_configuration() if args.base == "first" else golden.Config()
    config = apply_overrides(base, args.set)
    if args.worlds:
        config = dataclasses.replace(config, training_worlds=args.worlds)
    cycles = args.cycles or config.task_cycles

    for policy in ("random", "any", "approach", "greedy"):
        score = evaluate(policy, "task1", TEST_WORLDS * args.networks, TEST_CYCLES, TEST_SEED)
        print(f"policy {policy:9s} test {score.discriminability:.3f}, "
              f"{score.meals_per_cycle:.3f} meals/cycle")  # fmt: skip

    copies = config.training_worlds
    agent = Forager(args.networks, golden.forager_parameters(config), seed=args.seed)
    worlds = ForagingWorlds(args.networks * copies, "unsupervised", seed=args.seed)
    foragers = Foragers(agent.repeat(copies), worlds, torch.Generator().manual_seed(args.seed),
                        copies)  # fmt: skip
    unsupervised_phase(foragers, config.unsupervised_cycles,
                       input_total=config.input_total or None,
                       homeostasis=golden.hidden_homeostasis(config))  # fmt: skip
    if args.hidden == "shapes":
        shape_detectors(foragers)
    pairs, adjacent_share = hidden_pair_selectivity(foragers)
    print(f"hidden neurons: {pairs:.1f} of their 36 input pairs make them fire; "
          f"{adjacent_share:.1%} of those are adjacent squares")  # fmt: skip
    lowest, mean = linear_readout(foragers)
    print(f"hidden layer, linear probe: rewarded vs punished shape on an adjacent square, "
          f"test accuracy {mean:.3f} (lowest square {lowest:.3f}; chance 0.5)")  # fmt: skip
    rule = golden.hidden_to_output_rule(foragers, config)
    scaling = golden.output_scaling(config)
    print(f"config (differences from the default): {diff_from_default(config)}")
    print("cycles  seconds  test disc  meals  lone +  lone -  adjacent + / - / 0   w max  gains")
    start, done = time.perf_counter(), 0
    while done < cycles:
        block = min(args.every, cycles - done)
        task_phase(foragers, "task1", block, rule, scaling, backend=args.backend)
        done += block
        rewarded, punished = test_phase(foragers, "task1", TEST_CYCLES, TEST_WORLDS, TEST_SEED,
                                        backend=args.backend)  # fmt: skip
        disc = float(discriminability(rewarded, punished).nanmean())
        meals = float((rewarded + punished).mean()) / (TEST_CYCLES * TEST_WORLDS)
        lone = [float(golden.lone_particle_taken(foragers, shape).mean())
                for shape in (TASKS["task1"].rewarded[0], TASKS["task1"].punished[0])]  # fmt: skip
        adjacent = adjacent_choices(foragers)
        print(f"{done:6d}  {time.perf_counter() - start:7.0f}  {disc:9.3f}  {meals:.3f}  "
              f"{lone[0]:6.2f}  {lone[1]:6.2f}  {adjacent['+']:.2f} / {adjacent['-']:.2f} / "
              f"{adjacent['0']:.2f}      {float(foragers.agent.w_out.max()):5.2f}  "
              f"{gain_range(foragers)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
