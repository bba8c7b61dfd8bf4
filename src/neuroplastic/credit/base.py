"""What every credit-assignment rule does: propose an update for each weight, into ``param.grad``.

A rule is bound to a network (an :class:`~neuroplastic.models.mlp.MLP`: ``layers`` of
``nn.Linear`` and one hidden ``activation``) and owns whatever the rule needs besides the forward
weights (fixed random feedback matrices, noise generators). ``rule.backward(x, y)`` runs the forward
pass, computes the rule's update direction for every weight and bias, and *adds* it to ``.grad``
as torch autograd does (so ``optimizer.zero_grad()`` comes first, as usual), with the convention
that ``.grad`` holds minus the desired step direction: the gradient when the rule is exact. Any
``torch.optim.Optimizer`` then takes the step::

    rule = FeedbackAlignment(model, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for x, y in batches:
        optimizer.zero_grad()
        loss = rule.backward(x, y)
        optimizer.step()

Rules never leave an autograd graph behind: ``backward`` returns the detached mean loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from neuroplastic.models.mlp import MLP

LOSSES = ("cross_entropy", "square")


def loss_per_example(logits: Tensor, targets: Tensor, loss: str) -> Tensor:
    """Per-example loss ``(B,)``: cross-entropy on softmax, or ``0.5 ||z - onehot||^2`` on the
    linear outputs (the square cost)."""
    if loss == "cross_entropy":
        return F.cross_entropy(logits, targets, reduction="none")
    if loss == "square":
        onehot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
        return 0.5 * (logits - onehot).pow(2).sum(dim=-1)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def output_error(logits: Tensor, targets: Tensor, loss: str) -> Tensor:
    """dL/dz of the *mean* loss over the batch, ``(B, n_out)``: the error every rule starts from."""
    onehot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    if loss == "cross_entropy":
        return (logits.softmax(dim=-1) - onehot) / len(targets)
    if loss == "square":
        return (logits - onehot) / len(targets)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


class CreditRule(ABC):
    """Base class: a rule bound to an MLP, writing its update into the parameters' ``.grad``."""

    name: str = "rule"

    def __init__(self, model: MLP):
        if not isinstance(model, MLP):
            raise TypeError(f"{type(self).__name__} needs a neuroplastic MLP, got {type(model)}")
        self.model = model

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The network's output (logits) as this rule's network computes it at test time: the
        feed-forward pass, except for rules whose network settles (equilibrium propagation)."""
        return self.model(x)

    @abstractmethod
    def backward(self, x: Tensor, y: Tensor, loss: str = "cross_entropy") -> Tensor:
        """Forward pass on ``x`` ``(B, n_in)``, labels ``y`` ``(B,)``; accumulate the rule's update
        into ``.grad`` of every weight and bias; return the mean loss (detached)."""

    @staticmethod
    def _accumulate(param: torch.nn.Parameter, update: Tensor) -> None:
        if param.grad is None:
            param.grad = update.detach().clone()
        else:
            param.grad.add_(update.detach())
