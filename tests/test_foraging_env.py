"""The foraging world (``envs.foraging``): gymnasium's checker, the sheet's geometry (density,
2-pixel shapes, no two particles touching, the torus), eating and rewards, the window."""

import numpy as np
import pytest
import torch

from neuroplastic.envs.foraging import (
    EMPTY,
    HORIZONTAL,
    MOVES,
    NEGATIVE_DIAGONAL,
    SECOND_PIXEL,
    TASKS,
    VERTICAL,
    ForagingEnv,
    ForagingWorlds,
)  # fmt: skip


def touching(world: ForagingWorlds, w: int) -> bool:
    """Whether any two particles of world ``w`` lie within one cell of each other (8-neighbour,
    on the torus)."""
    cells = world.particles[w]  # (P, 2, 2)
    for i in range(len(cells)):
        for j in range(i + 1, len(cells)):
            delta = np.abs(cells[i][:, None, :] - cells[j][None, :, :])
            delta = np.minimum(delta, world.size - delta)
            if (delta.max(-1) <= 1).any():
                return True
    return False


def test_gymnasiums_checker_passes():
    from gymnasium.utils.env_checker import check_env

    check_env(ForagingEnv(max_steps=50), skip_render_check=False)


def test_the_world_has_the_sheets_geometry():
    world = ForagingWorlds(3, "unsupervised", seed=1)
    for w in range(3):
        occupied = (world.shapes[w] != EMPTY).mean()
        assert occupied == pytest.approx(0.10, abs=0.002)
        assert not touching(world, w)
        for cells, kind in zip(world.particles[w], world.kinds[w], strict=True):
            offset = (cells[1] - cells[0] + 1) % world.size - 1  # the torus folded back
            assert tuple(offset) == SECOND_PIXEL[int(kind)]
            assert (world.shapes[w, cells[:, 0], cells[:, 1]] == kind).all()
    assert set(np.unique(world.kinds)) == set(SECOND_PIXEL)
    task1 = ForagingWorlds(2, "task1", seed=1)
    assert set(np.unique(task1.kinds)) == {HORIZONTAL, NEGATIVE_DIAGONAL}


def test_the_window_is_the_torus_around_the_agent():
    world = ForagingWorlds(2, "unsupervised", seed=2)
    world.agent[:] = [[0, 49], [10, 20]]
    window = world.observe()
    for w, (row, col) in enumerate(world.agent):
        expected = np.roll(world.shapes[w], (3 - row, 3 - col), (0, 1))[:7, :7] != EMPTY
        assert torch.equal(window[w], torch.from_numpy(expected.astype(np.float32)))


def test_eating_rewards_by_task_and_a_new_particle_appears_elsewhere():
    world = ForagingWorlds(2, "task1", seed=3)
    expected_rewards = []
    for w, kind in enumerate((HORIZONTAL, NEGATIVE_DIAGONAL)):
        index = int(np.flatnonzero(world.kinds[w] == kind)[0])
        target = world.particles[w, index, 1]
        world.agent[w] = (target - MOVES[4]) % world.size  # one step left of the second pixel
        expected_rewards.append(TASKS["task1"].value(kind))
    _, rewards, eaten = world.step(torch.tensor([4, 4]))
    assert eaten.tolist() == [HORIZONTAL, NEGATIVE_DIAGONAL]
    assert rewards.tolist() == pytest.approx([1.0, -0.001])
    for w in range(2):
        assert (world.shapes[w] != EMPTY).sum() == 2 * world.n_particles  # respawned
        assert not touching(world, w)
    _, rewards, eaten = world.step(torch.tensor([0, 0]))  # onto empty squares (no neighbours)
    assert eaten.tolist() == [EMPTY, EMPTY] and rewards.tolist() == pytest.approx([-1e-4] * 2)


def test_moves_wrap_around_the_torus_and_bad_input_is_refused():
    world = ForagingWorlds(1, "task2", seed=4)
    world.agent[0] = [0, 0]
    world.step([0])  # up and left
    assert world.agent[0].tolist() == [49, 49]
    with pytest.raises(ValueError, match="moves must lie in 0..7"):
        world.step([8])
    with pytest.raises(ValueError, match="unknown foraging task 'task3'"):
        ForagingWorlds(1, "task3")
    env = ForagingEnv(task="task2")
    observation, info = env.reset(seed=0, options={"task": "task1"})
    assert env.world.task.name == "task1" and observation.shape == (7, 7)
    assert set(np.unique(env.world.kinds)) <= {HORIZONTAL, NEGATIVE_DIAGONAL}
    assert VERTICAL not in env.world.kinds


def test_a_seed_fixes_the_world():
    a, b = ForagingWorlds(2, seed=5), ForagingWorlds(2, seed=5)
    assert np.array_equal(a.shapes, b.shapes) and np.array_equal(a.agent, b.agent)
    moves = torch.randint(0, 8, (30, 2), generator=torch.Generator().manual_seed(0))
    for m in moves:
        a.step(m)
        b.step(m)
    assert np.array_equal(a.shapes, b.shapes) and np.array_equal(a.agent, b.agent)


def test_an_episode_renders_to_a_png_and_a_gif(tmp_path):
    from PIL import Image

    from neuroplastic.envs.render import save_gif, save_png

    env = ForagingEnv(render_mode="rgb_array")
    env.reset(seed=0)
    frames = [env.render()]
    for action in [4, 4, 6, 6, 7]:
        env.step(action)
        frames.append(env.render())
    assert frames[0].shape == (50, 50, 3) and frames[0].dtype == np.uint8
    agent = env.world.agent[0]
    assert tuple(frames[-1][agent[0], agent[1]]) == (255, 255, 255)
    png = save_png(frames[-1], tmp_path / "world.png", scale=4)
    assert Image.open(png).size == (200, 200)
    gif = save_gif(frames, tmp_path / "episode.gif", scale=2)
    assert Image.open(gif).n_frames == 6
