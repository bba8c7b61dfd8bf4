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

    def fisher(self, inputs: Iterable[Tensor], per_example: bool = False) -> dict[str, Tensor]:
        """The diagonal Fisher, averaged over the examples of ``inputs``.

        When every trained parameter belongs to an ``nn.Linear`` called once per forward pass,
        the per-example squared gradients come from one backward pass per class for the whole
        batch: a linear layer's per-example gradient is ``delta_n a_n^T``, whose square is
        ``delta_n^2 (a_n^2)^T`` (Goodfellow 2015). ``per_example=True`` (or any other model)
        differentiates example by example instead: the reference, tested equal."""
        total = {n: torch.zeros_like(p) for n, p in self.params.items()}
        count = 0
        was_training = self.model.training
        self.model.eval()
        for batch in inputs:
            if not per_example and self._linear_fisher(batch, total):
                count += len(batch)
                continue
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

    def _linear_fisher(self, batch: Tensor, total: dict[str, Tensor]) -> bool:
        """Add ``batch``'s class-weighted squared per-example gradients to ``total`` through the
        linear-layer identity; False (nothing added) where it does not apply."""
        linears = {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}
        owned = {f"{n}.{k}" for n, m in linears.items() for k, p in m.named_parameters()
                 if p.requires_grad}  # fmt: skip
        if not linears or owned != set(self.params):
            return False
        inputs: dict[str, list[Tensor]] = {n: [] for n in linears}
        outputs: dict[str, list[Tensor]] = {n: [] for n in linears}

        def keep(name):
            def hook(module, args, output):
                inputs[name].append(args[0])
                outputs[name].append(output)

            return hook

        handles = [m.register_forward_hook(keep(n)) for n, m in linears.items()]
        try:
            log_p = torch.log_softmax(self.model(batch), -1)
        finally:
            for handle in handles:
                handle.remove()
        if any(len(v) != 1 or v[0].dim() != 2 for v in inputs.values()):
            return False  # a layer called twice, or inputs with extra dimensions
        probabilities = log_p.exp().detach()
        names = list(linears)
        for c in range(log_p.shape[-1]):
            deltas = torch.autograd.grad(log_p[:, c].sum(), [outputs[n][0] for n in names],
                                         retain_graph=c < log_p.shape[-1] - 1)  # fmt: skip
            for name, delta in zip(names, deltas, strict=True):
                weighted = probabilities[:, c, None] * delta.detach() ** 2
                if f"{name}.weight" in total:
                    total[f"{name}.weight"] += weighted.T @ inputs[name][0].detach() ** 2
                if f"{name}.bias" in total:
                    total[f"{name}.bias"] += weighted.sum(0)
        return True

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
