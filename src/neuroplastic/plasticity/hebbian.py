"""Hebbian rules that find principal components: local learning that minimises reconstruction
error without any multi-layer credit assignment (the local-rules sheet; Marblestone, Wayne &
Kording 2016, sec. 2.1).

A layer of linear neurons ``y = W x`` (``W``: ``(k, n)``, ``k`` outputs, inputs ``x`` of zero
mean) sees one input, or a batch whose changes are averaged. With learning rate ``eta``:

- **Normalised Hebb** (:func:`hebb_change`): ``W <- normalise_rows(W + eta y x^T)``. Each row
  follows the power iteration on the input covariance ``C`` and converges to its top eigenvector
  (every row to the same one: there is no competition between outputs).
- **Oja** (:func:`oja_change`; Oja 1982, and the subspace rule of Oja 1989)::

      dW = eta (y x^T - y y^T W)

  The decay term keeps each row at unit length without an explicit normalisation. One output
  converges to the top eigenvector; ``k`` outputs to an orthonormal basis of the top-``k``
  principal subspace, in no particular order.
- **Sanger**, the generalised Hebbian algorithm (:func:`sanger_change`; Sanger 1989)::

      dW = eta (y x^T - LT(y y^T) W)

  ``LT`` keeps the lower triangle, the diagonal included. Output ``i`` is decorrelated only from
  outputs ``1 .. i-1``, so the rows converge to the eigenvectors themselves, in order of
  decreasing eigenvalue.
- **Similarity matching** (:func:`similarity_matching_change`; Pehlevan, Sengupta & Chklovskii
  2018, Neural Comput. 30:84, the offline-to-online derivation). Feed-forward Hebbian weights
  ``W`` ``(k, n)`` and lateral anti-Hebbian weights ``M`` ``(k, k)``; the output is the fixed
  point of the recurrent dynamics, ``y = M^{-1} W x``::

      dW = eta (y x^T - W),        dM = (eta / tau) (y y^T - M)

  The filter ``F = M^{-1} W`` converges to an orthonormal basis of the principal subspace.

Each ``*_change`` is a pure function returning the change of the weights (normalised Hebb: the
change that its normalisation produces). :class:`HebbianRule` wraps them in the project's
contract: ``observe(x)`` accumulates the change, ``write()`` adds minus it to ``.grad``, so that
``torch.optim.SGD(lr=1)`` applies exactly the rule.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neuroplastic.grads import write_change

RULES = ("hebb", "oja", "sanger")


def _batched(x: Tensor) -> Tensor:
    return x[None] if x.dim() == 1 else x


def hebb_change(weight: Tensor, x: Tensor, lr: float) -> Tensor:
    """``normalise_rows(W + lr y x^T) - W`` with ``y = W x``, averaged over a batch ``x``."""
    x = _batched(x)
    y = x @ weight.T
    grown = weight + lr * (y.T @ x) / len(x)
    return grown / grown.norm(dim=1, keepdim=True) - weight


def oja_change(weight: Tensor, x: Tensor, lr: float) -> Tensor:
    """``lr (y x^T - y y^T W)``, averaged over a batch ``x`` (Oja's subspace rule)."""
    x = _batched(x)
    y = x @ weight.T
    return lr * (y.T @ x - (y.T @ y) @ weight) / len(x)


def sanger_change(weight: Tensor, x: Tensor, lr: float) -> Tensor:
    """``lr (y x^T - LT(y y^T) W)``, averaged over a batch ``x`` (the generalised Hebbian
    algorithm)."""
    x = _batched(x)
    y = x @ weight.T
    return lr * (y.T @ x - torch.tril(y.T @ y) @ weight) / len(x)


def similarity_matching_output(feedforward: Tensor, lateral: Tensor, x: Tensor) -> Tensor:
    """The network's settled output ``y = M^{-1} W x`` for a batch ``x`` ``(batch, n)``."""
    return torch.linalg.solve(lateral, _batched(x) @ feedforward.T, left=False)


def similarity_matching_change(
    feedforward: Tensor, lateral: Tensor, x: Tensor, lr: float, tau: float = 0.5
) -> tuple[Tensor, Tensor]:
    """``(dW, dM) = (lr (y x^T - W), (lr / tau) (y y^T - M))`` with ``y = M^{-1} W x``, averaged
    over a batch ``x``. ``M`` stays symmetric."""
    x = _batched(x)
    y = similarity_matching_output(feedforward, lateral, x)
    d_feedforward = lr * (y.T @ x / len(x) - feedforward)
    d_lateral = (lr / tau) * (y.T @ y / len(x) - lateral)
    return d_feedforward, d_lateral


def subspace_cosines(rows: Tensor, reference: Tensor) -> Tensor:
    """Cosines of the principal angles between the spans of ``rows`` ``(k, n)`` and
    ``reference`` ``(k, n)``, largest first: all 1 when the two span the same subspace."""
    a = torch.linalg.qr(rows.T).Q
    b = torch.linalg.qr(reference.T).Q
    return torch.linalg.svdvals(a.T @ b).clamp(max=1.0)


def principal_filters(rule: HebbianRule | SimilarityMatching) -> Tensor:
    """The rows that should span the principal subspace: ``W`` for the Hebbian rules,
    ``M^{-1} W`` for similarity matching."""
    if isinstance(rule, SimilarityMatching):
        return torch.linalg.solve(rule.lateral.detach(), rule.feedforward.detach())
    return rule.weight.detach()


class HebbianRule:
    """``rule`` (``hebb``, ``oja`` or ``sanger``) on a linear layer's ``weight`` ``(k, n)``.
    ``observe(x)`` takes an input ``(n,)`` or a batch ``(batch, n)`` (zero mean: centre your
    data) and accumulates the change at learning rate ``lr``; ``write()`` adds minus it to
    ``weight.grad`` and clears it. With ``torch.optim.SGD([weight], lr=1)`` each
    observe-write-step is one step of the rule; ``observe`` several times before a write to
    accumulate against fixed weights."""

    def __init__(self, weight: nn.Parameter, rule: str = "oja", lr: float = 0.01):
        if rule not in RULES:
            raise ValueError(f"unknown Hebbian rule {rule!r}; choose one of {', '.join(RULES)}")
        if weight.dim() != 2:
            raise ValueError(f"a Hebbian rule needs a (k, n) weight, got {tuple(weight.shape)}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.weight, self.rule, self.lr = weight, rule, lr
        self.change = torch.zeros_like(weight)
        self._change = {"hebb": hebb_change, "oja": oja_change, "sanger": sanger_change}[rule]

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        if x.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"inputs must end in n={self.weight.shape[1]}, got {tuple(x.shape)}")
        self.change += self._change(self.weight.detach(), x.to(self.weight), self.lr)

    @torch.no_grad()
    def write(self) -> None:
        write_change(self.weight, self.change)


class SimilarityMatching:
    """Similarity matching on ``feedforward`` ``(k, n)`` and ``lateral`` ``(k, k)`` weights (the
    lateral start at the identity if you pass ``None``): ``observe(x)`` accumulates both changes,
    ``write()`` adds minus each to its ``.grad``. ``output(x)`` is the settled output."""

    def __init__(self, feedforward: nn.Parameter, lateral: nn.Parameter | None = None,
                 lr: float = 0.01, tau: float = 0.5):  # fmt: skip
        k = feedforward.shape[0]
        if lateral is None:
            lateral = nn.Parameter(torch.eye(k, dtype=feedforward.dtype,
                                             device=feedforward.device))  # fmt: skip
        if lateral.shape != (k, k):
            raise ValueError(f"lateral weights must be ({k}, {k}), got {tuple(lateral.shape)}")
        if not lr > 0 or not tau > 0:
            raise ValueError(f"lr and tau must be positive, got {lr}, {tau}")
        self.feedforward, self.lateral, self.lr, self.tau = feedforward, lateral, lr, tau
        self.changes = [torch.zeros_like(feedforward), torch.zeros_like(lateral)]

    def parameters(self) -> list[nn.Parameter]:
        return [self.feedforward, self.lateral]

    @torch.no_grad()
    def output(self, x: Tensor) -> Tensor:
        return similarity_matching_output(self.feedforward, self.lateral, x.to(self.feedforward))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        changes = similarity_matching_change(self.feedforward.detach(), self.lateral.detach(),
                                             x.to(self.feedforward), self.lr, self.tau)  # fmt: skip
        for total, change in zip(self.changes, changes, strict=True):
            total += change

    @torch.no_grad()
    def write(self) -> None:
        for parameter, change in zip(self.parameters(), self.changes, strict=True):
            write_change(parameter, change)
