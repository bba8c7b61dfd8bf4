"""Synaptic intelligence (Zenke, Poole & Ganguli 2017, ICML): each parameter's contribution to
the decrease of the loss along its training trajectory.

During a task, after each optimiser step with gradient ``g`` (the one the step used) and change
``delta``::

    omega_i <- omega_i - g_i delta_i

At the task's end, with ``Delta_i`` the parameter's total change over the task and ``xi`` a
damping term::

    Omega_i <- Omega_i + omega_i / (Delta_i^2 + xi),   omega_i <- 0

and later tasks are trained with the penalty ``c sum_i Omega_i (theta_i - theta*_i)^2``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SynapticIntelligence:
    """SI on ``model``'s trainable parameters: call ``before_step()`` after ``backward()`` and
    before ``optimizer.step()``, ``after_step()`` after it, ``after_task()`` at a task's end, and
    add ``penalty()`` to the loss."""

    def __init__(self, model: nn.Module, strength: float, damping: float = 0.1):
        if strength < 0 or damping <= 0:
            raise ValueError(f"need strength >= 0 and damping > 0, got {strength}, {damping}")
        self.strength, self.damping = strength, damping
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self.omega = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.importance = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.anchor = {n: p.detach().clone() for n, p in self.params.items()}
        self._before: dict[str, tuple[Tensor, Tensor]] = {}

    def before_step(self) -> None:
        self._before = {
            n: (p.detach().clone(), p.grad.detach().clone() if p.grad is not None else None)
            for n, p in self.params.items()
        }

    def after_step(self) -> None:
        if not self._before:
            raise RuntimeError("call before_step() before the optimiser's step")
        for name, p in self.params.items():
            value, grad = self._before[name]
            if grad is not None:
                self.omega[name] -= grad * (p.detach() - value)
        self._before = {}

    def after_task(self) -> None:
        for name, p in self.params.items():
            change = p.detach() - self.start[name]
            self.importance[name] += self.omega[name] / (change**2 + self.damping)
            self.omega[name].zero_()
            self.start[name] = p.detach().clone()
            self.anchor[name] = p.detach().clone()

    def penalty(self) -> Tensor:
        total = next(iter(self.params.values())).new_zeros(())
        for name, p in self.params.items():
            total = total + (self.importance[name] * (p - self.anchor[name]) ** 2).sum()
        return self.strength * total
