"""Elastic weight consolidation (Kirkpatrick et al. 2017, PNAS 114:3521), with its online form
(Schwarz et al. 2018; as in van de Ven et al. 2022).

After task ``k`` the diagonal Fisher information of the model's predictive distribution at the
trained parameters ``theta*_k`` is estimated on that task's data::

    F_i = E_x [ sum_c p(c | x) (d log p(c | x) / d theta_i)^2 ]          (the true Fisher)

and later tasks are trained with the penalty::

    (lambda / 2) sum_k sum_i F_{k,i} (theta_i - theta*_{k,i})^2           (EWC)
    (lambda / 2) sum_i F~_i (theta_i - theta*_i)^2,  F~ <- gamma F~ + F_k  (online EWC)

The expectation over classes is exact (every class weighted by its probability), per example.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class EWC:
    """EWC on ``model``'s trainable parameters. ``after_task(inputs)`` estimates the Fisher on a
    task's inputs (batches of ``(examples, ...)``, the model returning logits); ``penalty()``
    is added to the loss of later tasks. ``online=True`` keeps one decayed Fisher (``gamma``)
    anchored at the last task's parameters instead of one term per task."""

    def __init__(self, model: nn.Module, strength: float, online: bool = False,
                 gamma: float = 1.0):  # fmt: skip
        if strength < 0 or not 0 <= gamma <= 1:
            raise ValueError(f"need strength >= 0 and gamma in [0, 1], got {strength}, {gamma}")
        self.model, self.strength, self.online, self.gamma = model, strength, online, gamma
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.terms: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []

    def fisher(self, inputs: Iterable[Tensor]) -> dict[str, Tensor]:
        """The diagonal Fisher, averaged over the examples of ``inputs``."""
        total = {n: torch.zeros_like(p) for n, p in self.params.items()}
        count = 0
        was_training = self.model.training
        self.model.eval()
        for batch in inputs:
            for x in batch:  # per example: squared gradients do not average over a batch
                log_p = torch.log_softmax(self.model(x[None]), -1)[0]
                probabilities = log_p.exp().detach()
                for c in range(len(log_p)):
                    grads = torch.autograd.grad(log_p[c], list(self.params.values()),
                                                retain_graph=c < len(log_p) - 1)  # fmt: skip
                    for (name, _), g in zip(self.params.items(), grads, strict=True):
                        total[name] += probabilities[c] * g.detach() ** 2
                count += 1
        self.model.train(was_training)
        if count == 0:
            raise ValueError("EWC needs at least one example to estimate the Fisher information")
        return {n: f / count for n, f in total.items()}

    def after_task(self, inputs: Iterable[Tensor]) -> None:
        fisher = self.fisher(inputs)
        anchor = {n: p.detach().clone() for n, p in self.params.items()}
        if self.online and self.terms:
            previous, _ = self.terms[0]
            fisher = {n: self.gamma * previous[n] + fisher[n] for n in fisher}
            self.terms = []
        self.terms.append((fisher, anchor))

    def penalty(self) -> Tensor:
        total = next(iter(self.params.values())).new_zeros(())
        for fisher, anchor in self.terms:
            for name, p in self.params.items():
                total = total + (fisher[name] * (p - anchor[name]) ** 2).sum()
        return 0.5 * self.strength * total
