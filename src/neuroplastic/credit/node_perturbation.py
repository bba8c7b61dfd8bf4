"""Node perturbation: each neuron correlates its own noise with the scalar change of the cost.

Marblestone, Wayne & Kording (2016), "Toward an integration of deep learning and neuroscience",
Front. Comput. Neurosci. 10:94, section 2 ("node perturbation": perturb the neurons' activities
rather than the synapses; each neuron then needs only the global change of the cost); Werfel, Xie
& Seung (2005), "Learning curves for stochastic gradient descent in linear feedforward networks",
Neural Computation 17(12) (node perturbation learns faster than weight perturbation because its
noise grows with the number of neurons, not of synapses).

Every pre-activation ``a_l = W_l h_{l-1} + b_l`` of every layer (hidden and output) of every
example ``b`` of the batch receives its own noise ``xi_{l,b} ~ N(0, sigma^2 I)``, independent
across examples, units and layers; the perturbed activity flows on through the network. With
``C_b`` the loss of example ``b`` and ``C = (1/B) sum_b C_b`` the mean loss::

    forward:  dC_b = C_b(xi) - C_b(0)
    central:  dC_b = (C_b(xi) - C_b(-xi)) / 2
    dW_l = (1 / (B sigma^2)) sum_b dC_b xi_{l,b} h_{l-1,b}^T
    db_l = (1 / (B sigma^2)) sum_b dC_b xi_{l,b}

with ``h_{l-1,b}`` the layer's input in the clean (unperturbed) pass. ``dC_b xi_{l,b} / sigma^2``
estimates ``delta_{l,b} = dC_b/da_{l,b}`` (the backprop error of that layer) because
``E[(delta_b . xi_b) xi_{l,b}] = sigma^2 delta_{l,b}``, so ``dW_l`` estimates ``dC/dW_l`` up to
``O(sigma^2)``. In a *linear* network of any depth with the square cost, each ``C_b`` is
quadratic in the node perturbations (the output is affine in them), and the estimate is exactly
unbiased for every sigma, with either difference. Per example the estimate of the error vector
has covariance ``|delta_b|^2 I + delta_b delta_b^T`` over all ``N`` perturbed units, so its
variance grows with the number of neurons ``N``, not with the number of synapses as weight
perturbation's does.

Using the clean ``h_{l-1}`` (available from the clean pass that the forward difference needs
anyway) rather than the perturbed presynaptic activity keeps the estimator's leading term exact;
in a linear network the two choices have the same mean.

Counting and randomness as for :class:`~neuroplastic.credit.weight_perturbation.WeightPerturbation`:
``forward_passes`` grows by ``1 + samples`` (forward) or ``1 + 2 samples`` (central) per
:meth:`~NodePerturbation.backward`; noise comes only from the rule's generator (``None``: a
fresh ``torch.Generator()`` seeded 0), drawn draw by draw, layer by layer, as ``(B, n_l)``
blocks. The batched path stacks a chunk of draws along a leading dimension (the clean first-layer
drive ``W_1 x + b_1`` is computed once and reused, since the noise enters after it);
:func:`node_perturbation_reference` is the plain loop over draws and examples that a test proves
it equal to.
"""

from __future__ import annotations

import torch
from torch import Tensor

from neuroplastic.credit.base import loss_per_example
from neuroplastic.credit.weight_perturbation import (
    CHUNK_ELEMENTS,
    Difference,
    Estimates,
    PerturbationRule,
)
from neuroplastic.models.mlp import MLP


class NodePerturbation(PerturbationRule):
    """Node perturbation of every layer's pre-activations (Marblestone et al. 2016 sec. 2).

    For each of ``samples`` draws::

        xi_{l,b} ~ N(0, sigma^2 I)                   # every layer l, example b, unit
        a~_l = W_l h~_{l-1} + b_l + xi_l,  h~_l = f(a~_l)  (h~_0 = x; no f on the output)
        dC_b = C_b(xi) - C_b(0)               (forward)
        dC_b = (C_b(xi) - C_b(-xi)) / 2       (central)
        dW_l = sum_b dC_b xi_{l,b} h_{l-1,b}^T / (B sigma^2)
        db_l = sum_b dC_b xi_{l,b} / (B sigma^2)

    and ``.grad += mean over draws``. ``generator=None`` means ``torch.Generator().manual_seed(0)``.
    """

    name = "node-perturbation"

    def draw_noise(self, draws: int, batch_size: int) -> list[Tensor]:
        """``draws`` perturbations, one tensor ``(draws, batch_size, n_l)`` per layer, drawn draw by
        draw, layer by layer, from the rule's generator."""
        layers = self.model.layers
        per_draw = [
            [self._randn((batch_size, layer.out_features), layer.weight) for layer in layers]
            for _ in range(draws)
        ]
        return [torch.stack([d[i] for d in per_draw]) for i in range(len(layers))]

    def _chunk(self, batch_size: int, per_draw_estimates: bool) -> int:
        units = sum(layer.out_features for layer in self.model.layers)
        widest = max(layer.in_features for layer in self.model.layers)
        per_draw = batch_size * (units + widest) * self.passes_per_draw()
        if per_draw_estimates:
            per_draw += sum(p.numel() for p in self.params)
        return max(1, CHUNK_ELEMENTS // per_draw)

    @torch.no_grad()
    def _clean_pass(self, x: Tensor, y: Tensor, loss: str) -> tuple[list[Tensor], Tensor, Tensor]:
        """Inputs ``h_{l-1}`` of every layer ``(B, n_in_l)``, the first layer's drive
        ``W_1 x + b_1`` and the per-example losses ``(B,)`` of the unperturbed network."""
        layers = self.model.layers
        inputs = [x]
        drive = layers[0](x)  # (B, n_1)
        a = drive
        for layer in layers[1:]:
            inputs.append(self.model.activation(a))  # (B, n_in_l)
            a = layer(inputs[-1])  # (B, n_l)
        self.forward_passes += 1
        return inputs, drive, loss_per_example(a, y, loss)

    def _perturbed_losses(self, drive: Tensor, y: Tensor, loss: str, noise: list[Tensor]) -> Tensor:
        """Per-example losses ``(k, B)`` of ``k`` perturbed passes, one batched computation."""
        draws, batch = noise[0].shape[:2]
        last = len(self.model.layers) - 1
        a = drive + noise[0]  # (k, B, n_1)
        for index in range(1, last + 1):
            h = self.model.activation(a)  # (k, B, n_{l-1})
            a = self.model.layers[index](h) + noise[index]  # (k, B, n_l)
        per_example = loss_per_example(a.reshape(-1, a.shape[-1]), y.repeat(draws), loss)
        self.forward_passes += draws
        return per_example.view(draws, batch)

    def _coefficients(
        self, drive: Tensor, y: Tensor, loss: str, noise: list[Tensor], clean: Tensor
    ) -> Tensor:
        """``dC_b / (B sigma^2)`` per draw and example ``(k, B)``."""
        plus = self._perturbed_losses(drive, y, loss, noise)
        if self.difference == "forward":
            change = plus - clean
        else:
            minus = self._perturbed_losses(drive, y, loss, [-xi for xi in noise])
            change = (plus - minus) / 2
        self.draws += change.shape[0]
        return change / (change.shape[1] * self.sigma**2)

    @torch.no_grad()
    def estimates(
        self,
        x: Tensor,
        y: Tensor,
        loss: str = "cross_entropy",
        *,
        draws: int | None = None,
        noise: list[Tensor] | None = None,
    ) -> Estimates:
        """Single-draw estimates ``(draws, *shape)`` per parameter, without touching ``.grad``.

        ``noise`` (as :meth:`draw_noise` returns it, already scaled by sigma) replaces the
        generator's draws; otherwise ``draws`` (default ``samples``) are drawn.
        """
        inputs, drive, clean = self._clean_pass(x, y, loss)
        if noise is not None:
            chunks = [noise]
        else:
            draws = self._check_draws(self.samples if draws is None else draws)
            chunk = self._chunk(len(y), per_draw_estimates=True)
            chunks = (
                self.draw_noise(min(chunk, draws - start), len(y))
                for start in range(0, draws, chunk)
            )
        parts = []
        for part in chunks:
            coefficient = self._coefficients(drive, y, loss, part, clean)  # (k, B)
            grads = []
            for xi, h in zip(part, inputs, strict=True):
                error = coefficient[..., None] * xi  # (k, B, n_l): estimated delta_l / B
                grads.append(error.transpose(1, 2) @ h)  # (k, n_l, n_in)
                grads.append(error.sum(dim=1))  # (k, n_l)
            parts.append(grads)
        grads = [torch.cat(pieces) for pieces in zip(*parts, strict=True)]
        return Estimates(grads, clean.mean())

    def _estimate_sum(
        self, x: Tensor, y: Tensor, loss: str, draws: int
    ) -> tuple[list[Tensor], Tensor]:
        inputs, drive, clean = self._clean_pass(x, y, loss)
        chunk = self._chunk(len(y), per_draw_estimates=False)
        errors = [
            torch.zeros(len(y), layer.out_features, dtype=drive.dtype, device=drive.device)
            for layer in self.model.layers
        ]
        for start in range(0, draws, chunk):
            noise = self.draw_noise(min(chunk, draws - start), len(y))
            coefficient = self._coefficients(drive, y, loss, noise, clean)  # (k, B)
            for acc, xi in zip(errors, noise, strict=True):
                acc.add_((coefficient[..., None] * xi).sum(dim=0))  # (B, n_l)
        total = []
        for error, h in zip(errors, inputs, strict=True):
            total.append(error.T @ h)  # (n_l, n_in)
            total.append(error.sum(dim=0))  # (n_l,)
        return total, clean.mean()


@torch.no_grad()
def node_perturbation_reference(
    model: MLP,
    x: Tensor,
    y: Tensor,
    loss: str,
    noise: list[Tensor],
    sigma: float,
    difference: Difference = "forward",
) -> list[Tensor]:
    """The plain loop: per draw, run the network layer by layer adding ``+-xi_l`` to each
    pre-activation, then per example add ``dC_b xi_{l,b} h_{l-1,b}^T / (B sigma^2)``. ``noise`` as
    :meth:`NodePerturbation.draw_noise` returns it. Returns per-draw estimates
    ``(draws, *shape)`` per parameter (weight, bias, layer by layer)."""
    layers = model.layers
    batch = len(y)

    def run(perturbation: list[Tensor] | None) -> tuple[list[Tensor], Tensor]:
        inputs, h = [], x
        for index, layer in enumerate(layers):
            inputs.append(h)
            a = layer(h) if perturbation is None else layer(h) + perturbation[index]
            h = a if index == len(layers) - 1 else model.activation(a)
        return inputs, loss_per_example(h, y, loss)

    inputs, clean = run(None)
    estimates: list[list[Tensor]] = [[] for _ in range(2 * len(layers))]
    for draw in range(noise[0].shape[0]):
        xi = [n[draw] for n in noise]
        if difference == "forward":
            change = run(xi)[1] - clean
        else:
            change = (run(xi)[1] - run([-n for n in xi])[1]) / 2
        for index, layer in enumerate(layers):
            d_weight = torch.zeros_like(layer.weight)
            d_bias = torch.zeros_like(layer.bias)
            for b in range(batch):
                factor = change[b] / (batch * sigma**2)
                d_weight += factor * torch.outer(xi[index][b], inputs[index][b])
                d_bias += factor * xi[index][b]
            estimates[2 * index].append(d_weight)
            estimates[2 * index + 1].append(d_bias)
    return [torch.stack(out) for out in estimates]
