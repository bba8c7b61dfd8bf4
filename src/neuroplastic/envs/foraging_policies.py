"""Scripted reference policies for the foraging world (``envs.foraging``): what a given amount
of knowledge about the world is worth in discriminability, so that a learnt agent's number can
be read against them.

Each policy maps the worlds' state to one move per world. All of them see only what an agent
could see: the squares next to it (they read the shapes there, which the agent must tell apart
from its 7 x 7 window), and its previous move.

- ``random``: a uniformly random move.
- ``straight``: the previous move again (what the paper's agent does when no output spikes).
- ``any``: step onto an adjacent particle of any shape if there is one (ties at random), else
  go straight: attraction that does not tell the shapes apart.
- ``approach``: step onto an adjacent rewarded particle if there is one, else go straight:
  attraction to the rewarded shape only, no avoidance of the punished one.
- ``greedy``: ``approach``, and otherwise never step onto a punished particle (keep going if
  that is safe, else a random safe move).

:func:`evaluate` runs a policy with the agent's exploration rule (``models.forager``: a random
move with probability ``exploration + exploration_step * cycles since the last meal``) and
returns its discriminability, rewarded / (rewarded + punished), and its meals per cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from neuroplastic.envs.foraging import MOVES, TASKS, ForagingWorlds

Policy = Callable[[ForagingWorlds, np.ndarray, np.random.Generator], np.ndarray]
"""``policy(worlds, last_moves, rng) -> moves`` ``(n_worlds,)`` in 0..7."""


def neighbours(worlds: ForagingWorlds) -> np.ndarray:
    """``(n_worlds, 8)``: the shape on each square next to each agent, in ``MOVES`` order."""
    index = np.arange(worlds.n_worlds)
    steps = np.asarray(MOVES)
    rows = (worlds.agent[:, None, 0] + steps[None, :, 0]) % worlds.size
    cols = (worlds.agent[:, None, 1] + steps[None, :, 1]) % worlds.size
    return worlds.shapes[index[:, None], rows, cols].astype(np.int64)


def _pick(allowed: np.ndarray, fallback: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per world, a uniformly random move among ``allowed`` ``(n, 8)`` bool, or ``fallback``
    where none is allowed."""
    scores = np.where(allowed, rng.random(allowed.shape), -1.0)
    return np.where(allowed.any(1), scores.argmax(1), fallback)


def random_policy(worlds, last_moves, rng):
    return rng.integers(0, len(MOVES), worlds.n_worlds)


def straight_policy(worlds, last_moves, rng):
    return np.asarray(last_moves)


def any_particle_policy(worlds, last_moves, rng):
    return _pick(neighbours(worlds) > 0, np.asarray(last_moves), rng)


def approach_policy(worlds, last_moves, rng):
    rewarded = np.isin(neighbours(worlds), worlds.task.rewarded)
    return _pick(rewarded, np.asarray(last_moves), rng)


def greedy_policy(worlds, last_moves, rng):
    shapes = neighbours(worlds)
    safe = ~np.isin(shapes, worlds.task.punished)
    last = np.asarray(last_moves)
    keep_going = safe[np.arange(worlds.n_worlds), last]
    otherwise = np.where(keep_going, last, _pick(safe, last, rng))
    return _pick(np.isin(shapes, worlds.task.rewarded), otherwise, rng)


POLICIES: dict[str, Policy] = {
    "random": random_policy,
    "straight": straight_policy,
    "any": any_particle_policy,
    "approach": approach_policy,
    "greedy": greedy_policy,
}


class PolicyScore(NamedTuple):
    discriminability: float
    """rewarded / (rewarded + punished) over all worlds and cycles (NaN if nothing was eaten)."""
    meals_per_cycle: float
    """Particles eaten per world and cycle."""


def evaluate(
    policy: str | Policy, task: str = "task1", worlds: int = 64, cycles: int = 400,
    seed: int = 0, exploration: float = 0.01, exploration_step: float = 0.01,
) -> PolicyScore:  # fmt: skip
    """``policy`` (a name of ``POLICIES`` or a callable) for ``cycles`` moves in ``worlds``
    fresh worlds of ``task``, with the agent's exploration rule."""
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {sorted(POLICIES)}")
        policy = POLICIES[policy]
    spec = TASKS[task]
    state = ForagingWorlds(worlds, task, seed=seed)
    rng = np.random.default_rng(seed)
    last_moves = rng.integers(0, len(MOVES), worlds)
    hungry = np.zeros(worlds)
    rewarded = punished = 0
    for _ in range(cycles):
        moves = policy(state, last_moves, rng)
        explore = rng.random(worlds) < exploration + exploration_step * hungry
        moves = np.where(explore, rng.integers(0, len(MOVES), worlds), moves)
        _, _, eaten = state.step(torch.from_numpy(moves))
        eaten = eaten.numpy()
        rewarded += int(np.isin(eaten, spec.rewarded).sum())
        punished += int(np.isin(eaten, spec.punished).sum())
        hungry = np.where(eaten > 0, 0.0, hungry + 1)
        last_moves = moves
    meals = rewarded + punished
    return PolicyScore(rewarded / meals if meals else float("nan"), meals / (worlds * cycles))
