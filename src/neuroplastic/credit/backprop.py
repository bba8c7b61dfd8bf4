"""Backpropagation, the reference every other rule is measured against.

The exact gradient, by torch autograd (Rumelhart, Hinton & Williams 1986). Attaching it changes
nothing: it covers no layer and registers no hook, so ``loss.backward()`` is plain autograd. It is
a rule so that experiments and the conformance suite treat it like the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from neuroplastic.credit.base import CreditRule


class Backprop(CreditRule):
    """``.grad += dL/dtheta`` for every parameter: plain autograd."""

    name = "backprop"
    supported_layers = ()

    def __init__(self, model: nn.Module, *, generator: torch.Generator | None = None):
        super().__init__(model)  # the keyword keeps constructors uniform: backprop draws nothing

    @contextlib.contextmanager
    def as_backprop(self) -> Iterator[Backprop]:
        """Its own identity, trivially (for :func:`neuroplastic.testing.check_rule`)."""
        yield self
