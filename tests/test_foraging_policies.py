"""The scripted reference policies (``envs.foraging_policies``): what each sees, exact
consequences of each rule without exploration, and the ordering their knowledge implies."""

import numpy as np
import pytest

from neuroplastic.envs.foraging import MOVES, TASKS, ForagingWorlds
from neuroplastic.envs.foraging_policies import (
    POLICIES,
    approach_policy,
    evaluate,
    greedy_policy,
    neighbours,
)

NO_EXPLORATION = {"exploration": 0.0, "exploration_step": 0.0}


def test_neighbours_are_the_ring_of_the_window():
    worlds = ForagingWorlds(6, "task1", seed=3)
    for _ in range(20):
        ring = neighbours(worlds)
        window = worlds.observe().numpy()
        for k, (dr, dc) in enumerate(MOVES):
            np.testing.assert_array_equal(ring[:, k] > 0, window[:, 3 + dr, 3 + dc] > 0)
        worlds.step(np.random.default_rng(0).integers(0, 8, 6))


def test_approach_and_greedy_step_onto_an_adjacent_rewarded_particle():
    worlds = ForagingWorlds(32, "task1", seed=5)
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(100):
        shapes = neighbours(worlds)
        rewarded = np.isin(shapes, TASKS["task1"].rewarded)
        last = rng.integers(0, 8, 32)
        for policy in (approach_policy, greedy_policy):
            moves = policy(worlds, last, rng)
            has = rewarded.any(1)
            assert rewarded[has, moves[has]].all()
        seen += int(rewarded.any(1).sum())
        worlds.step(rng.integers(0, 8, 32))
    assert seen > 50  # the check above ran on many adjacent particles


def test_greedy_without_exploration_never_eats_a_punished_particle():
    score = evaluate("greedy", worlds=16, cycles=200, seed=2, **NO_EXPLORATION)
    assert score.discriminability == 1.0
    assert score.meals_per_cycle > 0.05


def test_approach_without_exploration_goes_straight_when_nothing_is_adjacent():
    worlds = ForagingWorlds(8, "task2", seed=1)
    rng = np.random.default_rng(1)
    last = np.arange(8)
    moves = approach_policy(worlds, last, rng)
    nothing = ~np.isin(neighbours(worlds), TASKS["task2"].rewarded).any(1)
    np.testing.assert_array_equal(moves[nothing], last[nothing])


def test_knowledge_orders_the_policies():
    scores = {name: evaluate(name, worlds=32, cycles=300, seed=4) for name in POLICIES}
    for blind in ("random", "straight", "any"):
        assert abs(scores[blind].discriminability - 0.5) < 0.06
    assert scores["approach"].discriminability > 0.65
    assert scores["greedy"].discriminability > scores["approach"].discriminability + 0.1
    assert scores["any"].meals_per_cycle > scores["straight"].meals_per_cycle


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy 'smart'"):
        evaluate("smart")
