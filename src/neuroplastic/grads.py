"""The ``.grad`` contract shared by credit rules and plasticity rules: a rule adds its proposed
step, as minus a direction, to ``param.grad`` exactly as ``loss.backward()`` accumulates, so any
``torch.optim`` optimiser takes the step and several sources of gradient add up."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def add_to_grad(param: Tensor, update: Tensor) -> None:
    """``param.grad += update`` (detached), creating ``.grad`` when it is None, as autograd does."""
    if param.grad is None:
        param.grad = update.detach().clone()
    else:
        param.grad.add_(update.detach())


@torch.no_grad()
def write_change(param: Tensor, change: Tensor) -> None:
    """Add minus an accumulated weight ``change`` to ``param.grad`` (so SGD with lr 1 applies
    the change) and clear ``change`` for the next accumulation."""
    add_to_grad(param, -change)
    change.zero_()
