"""The foraging world of Golden, Delanois, Sanda & Bazhenov (2022), after Skorheim et al. (2014):
an agent on a toroidal grid eats particles of four shapes, some rewarded and some punished, and
sees only a window around itself (the sleep-replay sheet, part A).

World: a ``size`` x ``size`` torus (50), particles covering ``density`` of the cells (10 %). A
particle is 2 pixels long: horizontal, vertical, positive diagonal (``/``) or negative diagonal
(``\\``). No two particles touch, diagonals included. An eaten particle reappears at a random free
place. The agent sees the ``view`` x ``view`` window centred on itself (7 x 7; a pixel is 1 where
any particle lies, so a shape is told by its orientation). It takes one of 8 moves, the 3 x 3
neighbourhood without its centre, in the order of the output layer's 3 x 3 grid read row by row.
Stepping onto either pixel of a particle eats it.

Tasks (``TASKS``): which shapes the world holds, and which of them are rewarded or punished.
Task 1: horizontal rewarded, negative diagonal punished. Task 2: vertical rewarded, positive
diagonal punished. The unsupervised period: all four shapes, no reward. Rewards as in the paper:
+1 for a rewarded particle, -0.001 for a punished one, -0.0001 for a move onto an empty square.

Two forms share one implementation: :class:`ForagingWorlds` steps many independent worlds (one
per agent replica) as one tensor program, and :class:`ForagingEnv` is one world behind
gymnasium's API (``reset(seed=, options={"task": ...})``, ``step`` -> ``(observation, reward,
terminated, truncated, info)``), for anyone's agent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EMPTY, HORIZONTAL, VERTICAL, POSITIVE_DIAGONAL, NEGATIVE_DIAGONAL = range(5)
SHAPE_NAMES = ("empty", "horizontal", "vertical", "positive diagonal", "negative diagonal")
SECOND_PIXEL = {  # (row, column) offset of a particle's second pixel from its first
    HORIZONTAL: (0, 1),
    VERTICAL: (1, 0),
    POSITIVE_DIAGONAL: (-1, 1),  # "/": up and to the right
    NEGATIVE_DIAGONAL: (1, 1),  # "\": down and to the right
}
MOVES = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
"""(row, column) steps, the 3 x 3 output grid read row by row without its centre."""


@dataclass(frozen=True)
class ForagingTask:
    """Which shapes the world holds and what eating each one is worth."""

    name: str
    shapes: tuple[int, ...]
    rewarded: tuple[int, ...] = ()
    punished: tuple[int, ...] = ()
    reward: float = 1.0
    punishment: float = -0.001
    empty: float = -0.0001

    def value(self, shape: int) -> float:
        if shape in self.rewarded:
            return self.reward
        if shape in self.punished:
            return self.punishment
        return self.empty if shape == EMPTY else 0.0


TASKS = {
    "task1": ForagingTask("task1", (HORIZONTAL, NEGATIVE_DIAGONAL), (HORIZONTAL,),
                          (NEGATIVE_DIAGONAL,)),  # fmt: skip
    "task2": ForagingTask("task2", (VERTICAL, POSITIVE_DIAGONAL), (VERTICAL,),
                          (POSITIVE_DIAGONAL,)),  # fmt: skip
    "unsupervised": ForagingTask("unsupervised", tuple(SECOND_PIXEL), empty=0.0),
}


def _task(task: str | ForagingTask) -> ForagingTask:
    if isinstance(task, ForagingTask):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown foraging task {task!r}; known: {sorted(TASKS)}")
    return TASKS[task]


class ForagingWorlds:
    """``n_worlds`` independent worlds stepped together. State, all ``(n_worlds, ...)``:
    ``shapes`` the shape on each cell (0 empty), ``owner`` which particle covers each cell (-1
    none), ``particles`` the two cells of each particle ``(n, P, 2, 2)`` and ``kinds`` their
    shapes, ``agent`` the agent's cell. Placement uses ``generator`` only, so a seed fixes
    everything."""

    def __init__(
        self,
        n_worlds: int,
        task: str | ForagingTask = "task1",
        size: int = 50,
        density: float = 0.10,
        view: int = 7,
        seed: int = 0,
    ):
        if size < 8 or view % 2 == 0 or view >= size:
            raise ValueError(f"need size >= 8 and an odd view < size, got {size}, {view}")
        if not 0 < density <= 0.2:
            raise ValueError(
                f"density must lie in (0, 0.2] (particles may not touch), got {density}"
            )
        self.n_worlds, self.size, self.density, self.view = n_worlds, size, density, view
        self.n_particles = max(1, round(density * size * size / 2))
        self.reset(seed, task)

    def reset(
        self, seed: int | None = None, task: str | ForagingTask | None = None
    ) -> torch.Tensor:
        """New particles (of ``task``'s shapes) and agents at random free cells; returns the
        observations ``(n_worlds, view, view)``."""
        if seed is not None:
            self.generator = np.random.default_rng(seed)
        if task is not None:
            self.task = _task(task)
        n, s = self.n_worlds, self.size
        self.shapes = np.zeros((n, s, s), np.int8)
        self.owner = np.full((n, s, s), -1, np.int32)
        self.particles = np.zeros((n, self.n_particles, 2, 2), np.int64)
        self.kinds = np.zeros((n, self.n_particles), np.int8)
        for world in range(n):
            for index in range(self.n_particles):
                self._place(world, index)
        self.agent = np.zeros((n, 2), np.int64)
        for world in range(n):
            free = np.argwhere(self.shapes[world] == EMPTY)
            self.agent[world] = free[self.generator.integers(len(free))]
        return self.observe()

    def _place(self, world: int, index: int) -> None:
        """Put particle ``index`` of ``world`` at a random place where it touches no other."""
        shapes = self.task.shapes
        for _ in range(10_000):
            kind = shapes[self.generator.integers(len(shapes))]
            first = self.generator.integers(self.size, size=2)
            cells = np.stack([first, first + SECOND_PIXEL[kind]]) % self.size
            if self._clear(world, cells):
                break
        else:  # pragma: no cover - only at densities the constructor refuses
            raise RuntimeError("no free place for a particle: lower the density")
        self.particles[world, index], self.kinds[world, index] = cells, kind
        self.shapes[world, cells[:, 0], cells[:, 1]] = kind
        self.owner[world, cells[:, 0], cells[:, 1]] = index

    def _clear(self, world: int, cells: np.ndarray) -> bool:
        """No particle on or next to (8-neighbourhood, on the torus) any of ``cells``, and not
        the agent's cell."""
        offsets = np.arange(-1, 2)
        for row, col in cells:
            rows, cols = (row + offsets) % self.size, (col + offsets) % self.size
            if (self.shapes[world][np.ix_(rows, cols)] != EMPTY).any():
                return False
        if hasattr(self, "agent"):
            if any((cells == self.agent[world]).all(1)):
                return False
        return True

    def observe(self) -> torch.Tensor:
        """The window around each agent, 1 where a particle lies: ``(n_worlds, view, view)``."""
        half = self.view // 2
        offsets = np.arange(-half, half + 1)
        rows = (self.agent[:, 0, None] + offsets) % self.size  # (n, view)
        cols = (self.agent[:, 1, None] + offsets) % self.size
        worlds = np.arange(self.n_worlds)[:, None, None]
        window = self.shapes[worlds, rows[:, :, None], cols[:, None, :]]
        return torch.from_numpy((window != EMPTY).astype(np.float32))

    def step(self, moves) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Move every agent (``moves`` ``(n_worlds,)`` in 0..7, see ``MOVES``); eat what is
        there. Returns ``(observations, rewards (n_worlds,), eaten shapes (n_worlds,), 0 none)``."""
        moves = np.asarray(torch.as_tensor(moves).cpu(), np.int64).reshape(self.n_worlds)
        if ((moves < 0) | (moves >= len(MOVES))).any():
            raise ValueError(f"moves must lie in 0..{len(MOVES) - 1}, got {moves}")
        self.agent = (self.agent + np.asarray(MOVES)[moves]) % self.size
        worlds = np.arange(self.n_worlds)
        eaten = self.shapes[worlds, self.agent[:, 0], self.agent[:, 1]].astype(np.int64)
        rewards = np.array([self.task.value(int(shape)) for shape in eaten], np.float32)
        for world in np.flatnonzero(eaten):
            index = self.owner[world, self.agent[world, 0], self.agent[world, 1]]
            cells = self.particles[world, index]
            self.shapes[world, cells[:, 0], cells[:, 1]] = EMPTY
            self.owner[world, cells[:, 0], cells[:, 1]] = -1
            self._place(world, index)
        return self.observe(), torch.from_numpy(rewards), torch.from_numpy(eaten)

    def image(self, world: int = 0, path: np.ndarray | None = None) -> np.ndarray:
        """An RGB picture ``(size, size, 3)`` uint8 of one world: particles coloured by shape
        (rewarded green, punished red, others grey, in the current task), the agent's ``path``
        (cells, oldest first) fading blue, the agent white."""
        picture = np.full((self.size, self.size, 3), 24, np.uint8)
        for kind in SECOND_PIXEL:
            colour = (120, 120, 120)
            if kind in self.task.rewarded:
                colour = (60, 200, 80)
            elif kind in self.task.punished:
                colour = (220, 60, 60)
            picture[self.shapes[world] == kind] = colour
        if path is not None and len(path):
            for age, (row, col) in enumerate(path):
                shade = int(60 + 140 * (age + 1) / len(path))
                picture[row, col] = (40, 80, shade)
        picture[self.agent[world, 0], self.agent[world, 1]] = (255, 255, 255)
        return picture


def _gymnasium():
    try:
        import gymnasium
    except ImportError as error:  # pragma: no cover - a core dependency
        raise ImportError("ForagingEnv needs gymnasium: pip install gymnasium") from error
    return gymnasium


class ForagingEnv(_gymnasium().Env):
    """One foraging world behind gymnasium's API. Observation: the ``view`` x ``view`` window
    (int8, 1 where a particle lies); action: one of the 8 moves; reward as in :class:`ForagingTask`;
    never terminated, truncated after ``max_steps`` moves. ``reset(options={"task": "task2"})``
    switches the task. ``info``: the shape eaten (``"eaten"``, a name) and the agent's cell.
    ``render_mode="rgb_array"``: :meth:`ForagingWorlds.image` with the recent path."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        task: str = "task1",
        size: int = 50,
        density: float = 0.10,
        view: int = 7,
        max_steps: int = 1000,
        render_mode: str | None = None,
    ):
        gymnasium = _gymnasium()
        self.world = ForagingWorlds(1, task, size, density, view, seed=0)
        self.max_steps, self.render_mode = max_steps, render_mode
        self.observation_space = gymnasium.spaces.Box(0, 1, (view, view), np.int8)
        self.action_space = gymnasium.spaces.Discrete(len(MOVES))
        self.path: list[tuple[int, int]] = []
        self.steps = 0

    def _observation(self, window: torch.Tensor) -> np.ndarray:
        return window[0].numpy().astype(np.int8)

    def _info(self, eaten: int) -> dict:
        return {"eaten": SHAPE_NAMES[eaten], "agent": tuple(int(v) for v in self.world.agent[0])}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        task = (options or {}).get("task")
        world_seed = int(self.np_random.integers(2**31)) if seed is None else seed
        window = self.world.reset(world_seed, task)
        self.path, self.steps = [self._info(0)["agent"]], 0
        return self._observation(window), self._info(0)

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be one of 0..{len(MOVES) - 1}, got {action!r}")
        window, reward, eaten = self.world.step([int(action)])
        self.steps += 1
        info = self._info(int(eaten[0]))
        self.path = [*self.path[-99:], info["agent"]]
        truncated = self.steps >= self.max_steps
        return self._observation(window), float(reward[0]), False, truncated, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self.world.image(0, np.asarray(self.path))
        return None
