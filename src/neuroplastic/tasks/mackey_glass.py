"""The Mackey-Glass delay differential equation (Mackey & Glass 1977), the classic benchmark of
reservoir computing (Jaeger & Haas 2004: tau 17, chaotic)::

    dx/dt = beta x(t - tau) / (1 + x(t - tau)^n) - gamma x(t)

with beta 0.2, gamma 0.1, n 10. Integrated by fourth-order Runge-Kutta with step ``dt`` (the
delayed value at a half step is the mean of its two neighbours in the history), from a constant
history ``x0``, and sampled every ``sample_every`` time units after a ``transient``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mackey_glass(
    samples: int, tau: float = 17.0, beta: float = 0.2, gamma: float = 0.1, n: float = 10.0,
    dt: float = 0.1, sample_every: float = 1.0, x0: float = 1.2, transient: float = 1000.0,
) -> Tensor:  # fmt: skip
    """``samples`` values of the series, float64."""
    delay = round(tau / dt)
    every = round(sample_every / dt)
    if delay < 1 or abs(delay * dt - tau) > 1e-9 or abs(every * dt - sample_every) > 1e-9:
        raise ValueError("tau and sample_every must be positive multiples of dt")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")

    def slope(x: float, delayed: float) -> float:
        return beta * delayed / (1.0 + delayed**n) - gamma * x

    skip = round(transient / dt)
    steps = skip + samples * every
    history = [x0] * (delay + 1)  # x(t - tau), ..., x(t)
    out = []
    for step in range(steps):
        x, late, next_late = history[-1], history[-delay - 1], history[-delay]
        middle = 0.5 * (late + next_late)
        k1 = slope(x, late)
        k2 = slope(x + 0.5 * dt * k1, middle)
        k3 = slope(x + 0.5 * dt * k2, middle)
        k4 = slope(x + dt * k3, next_late)
        history.append(x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))
        history.pop(0)
        if step >= skip and (step - skip + 1) % every == 0:
            out.append(history[-1])
    return torch.tensor(out, dtype=torch.float64)
