"""Surrogate gradients: a spike's forward pass is a step, its backward pass a pseudo-derivative.

Each factory names the paper whose pseudo-derivative it implements and returns a function
``spike(x) -> z`` of the *normalised* membrane distance ``x = (v - A) / v_th`` (A the threshold,
v_th its baseline). Forward: ``z = H(x)``, 1 where ``x > 0``. Backward: ``dz/dx = g(x)``, so that by
the chain rule ``dz/dv = g(x) / v_th``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

SpikeFunction = Callable[[Tensor], Tensor]


def bellec2020_pseudo_derivative(dampening: float = 0.3) -> SpikeFunction:
    """Bellec et al. 2020 (e-prop), Methods: ``psi = (gamma / v_th) max(0, 1 - |(v - A) / v_th|)``
    with the dampening factor ``gamma`` (0.3 in the paper), i.e. ``g(x) = gamma max(0, 1 - |x|)``.
    """
    if not dampening > 0:
        raise ValueError(f"the dampening factor must be positive, got {dampening}")

    class Bellec2020Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: Tensor) -> Tensor:
            ctx.save_for_backward(x)
            return (x > 0).to(x.dtype)

        @staticmethod
        def backward(ctx, grad_output: Tensor) -> Tensor:
            (x,) = ctx.saved_tensors
            return grad_output * pseudo_derivative(x, dampening)

    return Bellec2020Spike.apply


def pseudo_derivative(x: Tensor, dampening: float = 0.3) -> Tensor:
    """``gamma max(0, 1 - |x|)``: the pseudo-derivative of Bellec et al. 2020 at normalised
    distance ``x``; divide by ``v_th`` for ``dz/dv`` (what e-prop's traces use as ``psi``)."""
    return dampening * torch.clamp(1.0 - x.abs(), min=0.0)
