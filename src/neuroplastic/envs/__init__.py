"""Environments for agents that learn from reward: gymnasium's API for one world, a batched form
for many agent replicas (``foraging``: the world of Golden et al. 2022)."""

from neuroplastic.envs.foraging import TASKS, ForagingEnv, ForagingTask, ForagingWorlds

__all__ = ["TASKS", "ForagingEnv", "ForagingTask", "ForagingWorlds"]
