"""Parallel weight perturbation: the gradient from the change of the cost under random weight noise.

Marblestone, Wayne & Kording (2016), "Toward an integration of deep learning and neuroscience",
Front. Comput. Neurosci. 10:94, section 2 (how the brain could assign credit: "parallel weight
perturbation"); Werfel, Xie & Seung (2005), "Learning curves for stochastic gradient descent in
linear feedforward networks", Neural Computation 17(12) (the learning rate of weight
perturbation falls with the number of weights). Perturb every weight and bias at once by Gaussian
noise ``xi ~ N(0, sigma^2 I)``, measure the change of the mean loss ``C`` of the batch, and take::

    forward:  g_hat = (C(W + xi) - C(W)) xi / sigma^2
    central:  g_hat = (C(W + xi) - C(W - xi)) xi / (2 sigma^2)

averaged over ``samples`` independent draws. To first order ``C(W + xi) - C(W) = g . xi`` and
``E[(g . xi) xi] = sigma^2 g``, so ``g_hat`` is an unbiased estimate of the gradient ``g`` up to
``O(sigma^2)``. When ``C`` is quadratic in the weights (a one-layer linear network with the
square cost) both forms are *exactly* unbiased for every sigma: the central difference is then
exactly ``2 g . xi``, and the forward difference's extra term ``xi^T H xi / 2`` times ``xi`` has
zero mean (odd Gaussian moments). The variance is the price: for small sigma each coordinate has
``Var g_hat_i = |g|^2 + g_i^2`` per draw, so ``E|g_hat - g|^2 = (P + 1) |g|^2`` for ``P``
perturbed parameters: it grows with the number of synapses.

Counting. ``forward_passes`` counts evaluations of the network on the batch: each estimate costs
one clean pass (which gives the returned loss and, for forward differences, ``C(W)``) plus one
perturbed pass per draw (two for central differences), i.e. ``1 + samples`` or
``1 + 2 samples`` per :meth:`~WeightPerturbation.backward`.

Randomness. The noise comes only from the rule's ``generator`` (``None``: a fresh
``torch.Generator()`` seeded 0), never from torch's global generator. It is drawn draw by draw,
and within a draw layer by layer, weight then bias, so a given seed gives the same estimate
whatever the chunking of the batched computation.

Implementation. :meth:`~WeightPerturbation.estimates` evaluates a chunk of perturbed copies of the
network as one batched forward pass (a leading draw dimension on every weight, one ``matmul``
per layer); :func:`weight_perturbation_reference` is the plain loop over draws through
``torch.func.functional_call`` that a test proves it equal to.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from neuroplastic.credit.base import CreditRule, loss_per_example
from neuroplastic.models.mlp import MLP

DIFFERENCES = ("forward", "central")
Difference = Literal["forward", "central"]
CHUNK_ELEMENTS = 1 << 24
"""Largest number of perturbed parameter values (draws x parameters) held at once."""


class Estimates(NamedTuple):
    """Per-draw gradient estimates of a perturbation rule and the clean pass's mean loss."""

    grads: list[Tensor]
    """One tensor ``(draws, *param.shape)`` per parameter, in the order of ``rule.params``
    (weight then bias of each layer); each slice is the single-draw estimate."""
    loss: Tensor
    """Mean loss of the batch under the unperturbed network (detached scalar)."""


class PerturbationRule(CreditRule):
    """What weight and node perturbation share: hyper-parameters, generator, counters."""

    def __init__(
        self,
        model: MLP,
        *,
        generator: torch.Generator | None = None,
        sigma: float = 1e-3,
        samples: int = 1,
        difference: Difference = "forward",
    ):
        super().__init__(model)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
        if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        if difference not in DIFFERENCES:
            raise ValueError(f"difference must be one of {DIFFERENCES}, got {difference!r}")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.sigma = float(sigma)
        self.samples = samples
        self.difference = difference
        self.forward_passes = 0
        """Evaluations of the network on a batch so far (clean and perturbed passes)."""
        self.draws = 0
        """Perturbation draws so far (a central difference's +xi and -xi are one draw)."""

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """Every weight and bias of the network, layer by layer: ``[W_1, b_1, W_2, b_2, ...]``."""
        return [p for layer in self.model.layers for p in (layer.weight, layer.bias)]

    def passes_per_draw(self) -> int:
        """Perturbed evaluations per draw: 1 (forward difference) or 2 (central)."""
        return 1 if self.difference == "forward" else 2

    def _randn(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """``N(0, sigma^2)`` noise of ``shape`` from the rule's generator, on ``like``'s device."""
        noise = torch.randn(
            tuple(shape), generator=self.generator, device=self.generator.device, dtype=like.dtype
        )
        return noise.to(like.device).mul_(self.sigma)

    @torch.no_grad()
    def backward(self, x: Tensor, y: Tensor, loss: str = "cross_entropy") -> Tensor:
        """Accumulate the mean of ``samples`` single-draw estimates into ``.grad``; return the
        clean pass's mean loss."""
        total, clean_loss = self._estimate_sum(x, y, loss, self.samples)
        for param, update in zip(self.params, total, strict=True):
            self._accumulate(param, update / self.samples)
        return clean_loss

    @abstractmethod
    def _estimate_sum(
        self, x: Tensor, y: Tensor, loss: str, draws: int
    ) -> tuple[list[Tensor], Tensor]:
        """Sum over ``draws`` single-draw estimates, one tensor per parameter (without
        materialising each draw), and the clean loss."""

    @staticmethod
    def _check_draws(draws: int) -> int:
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be a positive integer, got {draws!r}")
        return draws

    @abstractmethod
    def estimates(
        self,
        x: Tensor,
        y: Tensor,
        loss: str = "cross_entropy",
        *,
        draws: int | None = None,
        noise: list[Tensor] | None = None,
    ) -> Estimates:
        """Single-draw estimates ``(draws, *shape)`` per parameter, without touching ``.grad``."""


class WeightPerturbation(PerturbationRule):
    """Parallel weight perturbation (Marblestone et al. 2016 sec. 2; Werfel et al. 2005).

    For each of ``samples`` draws (``C`` the mean loss of the batch, ``W`` all weights and
    biases)::

        xi ~ N(0, sigma^2 I)                                       # one value per parameter
        dC = C(W + xi) - C(W)                 (forward)
        dC = (C(W + xi) - C(W - xi)) / 2      (central)
        g_hat = dC * xi / sigma^2

    and ``.grad += mean over draws of g_hat``. ``E[g_hat] = g + O(sigma^2)`` (exactly ``g``
    when ``C`` is quadratic in ``W``); ``E|g_hat - g|^2 ~ (P + 1)|g|^2`` per draw for ``P``
    parameters. ``generator=None`` means ``torch.Generator().manual_seed(0)``.
    ``forward_passes`` grows by ``1 + samples`` (forward) or ``1 + 2 samples`` (central) per
    :meth:`backward`.
    """

    name = "weight-perturbation"
    learns_quickly = False
    """One draw's squared error is ``(P + 1)|g|^2``: a few SGD steps at a step size fit for backprop
    (the conformance suite's check) overshoot; the step must shrink like ``1 / P`` (tested in
    ``tests/test_perturbation.py`` and measured by the perturbation-scaling experiment)."""

    def draw_noise(self, draws: int) -> list[Tensor]:
        """``draws`` perturbations, one tensor ``(draws, *param.shape)`` per parameter, drawn
        draw by draw from the rule's generator (so the stream does not depend on chunking)."""
        params = self.params
        per_draw = [[self._randn(p.shape, p) for p in params] for _ in range(draws)]
        return [torch.stack([d[i] for d in per_draw]) for i in range(len(params))]

    def _chunk(self) -> int:
        n_params = sum(p.numel() for p in self.params)
        return max(1, CHUNK_ELEMENTS // (n_params * self.passes_per_draw()))

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
        if noise is None:
            draws = self._check_draws(self.samples if draws is None else draws)
            chunk = self._chunk()
            clean = self._clean_loss(x, y, loss)
            parts = []
            for start in range(0, draws, chunk):
                part = self.draw_noise(min(chunk, draws - start))
                parts.append(self._chunk_estimates(x, y, loss, part, clean))
            grads = [torch.cat(pieces) for pieces in zip(*parts, strict=True)]
            return Estimates(grads, clean)
        clean = self._clean_loss(x, y, loss)
        return Estimates(self._chunk_estimates(x, y, loss, noise, clean), clean)

    def _estimate_sum(
        self, x: Tensor, y: Tensor, loss: str, draws: int
    ) -> tuple[list[Tensor], Tensor]:
        clean = self._clean_loss(x, y, loss)
        total = [torch.zeros_like(p) for p in self.params]
        chunk = self._chunk()
        for start in range(0, draws, chunk):
            noise = self.draw_noise(min(chunk, draws - start))
            coefficient = self._coefficients(x, y, loss, noise, clean)  # (k,)
            for acc, xi in zip(total, noise, strict=True):
                acc.add_(torch.tensordot(coefficient, xi, dims=1))  # sum_k c_k xi_k
        return total, clean

    def _clean_loss(self, x: Tensor, y: Tensor, loss: str) -> Tensor:
        self.forward_passes += 1
        return loss_per_example(self.model(x), y, loss).mean().detach()

    def _perturbed_losses(self, x: Tensor, y: Tensor, loss: str, noise: list[Tensor]) -> Tensor:
        """Mean batch loss ``(k,)`` of ``k`` perturbed copies ``W + noise[k]``, one batched pass."""
        draws = noise[0].shape[0]
        h = x  # (B, n_in), broadcast against the draw dimension by the first matmul
        last = len(self.model.layers) - 1
        for index, layer in enumerate(self.model.layers):
            weight = layer.weight + noise[2 * index]  # (k, n_out, n_in)
            bias = layer.bias + noise[2 * index + 1]  # (k, n_out)
            a = torch.matmul(h, weight.transpose(-1, -2)) + bias[:, None, :]  # (k, B, n_out)
            h = a if index == last else self.model.activation(a)
        per_example = loss_per_example(h.reshape(-1, h.shape[-1]), y.repeat(draws), loss)
        self.forward_passes += draws
        return per_example.view(draws, -1).mean(dim=1)  # (k,)

    def _coefficients(
        self, x: Tensor, y: Tensor, loss: str, noise: list[Tensor], clean: Tensor
    ) -> Tensor:
        """``dC / sigma^2`` per draw ``(k,)``: the factor multiplying each draw's noise."""
        plus = self._perturbed_losses(x, y, loss, noise)
        if self.difference == "forward":
            change = plus - clean
        else:
            minus = self._perturbed_losses(x, y, loss, [-xi for xi in noise])
            change = (plus - minus) / 2
        self.draws += len(change)
        return change / self.sigma**2

    def _chunk_estimates(
        self, x: Tensor, y: Tensor, loss: str, noise: list[Tensor], clean: Tensor
    ) -> list[Tensor]:
        coefficient = self._coefficients(x, y, loss, noise, clean)  # (k,)
        return [coefficient.view(-1, *([1] * (xi.dim() - 1))) * xi for xi in noise]


@torch.no_grad()
def weight_perturbation_reference(
    model: MLP,
    x: Tensor,
    y: Tensor,
    loss: str,
    noise: list[Tensor],
    sigma: float,
    difference: Difference = "forward",
) -> list[Tensor]:
    """The plain loop: per draw, run ``model`` with ``W +- xi`` through ``functional_call`` and
    form ``dC xi / sigma^2``. ``noise`` as :meth:`WeightPerturbation.draw_noise` returns it.
    Returns per-draw estimates ``(draws, *shape)`` per parameter (weight, bias, layer by layer)."""
    names = [f"layers.{i}.{kind}" for i in range(len(model.layers)) for kind in ("weight", "bias")]
    params = dict(model.named_parameters())
    base = [params[name] for name in names]

    def cost(sign: float, draw: int) -> Tensor:
        perturbed = {n: p + sign * xi[draw] for n, p, xi in zip(names, base, noise, strict=True)}
        logits = torch.func.functional_call(model, perturbed, (x,))
        return loss_per_example(logits, y, loss).mean()

    clean = loss_per_example(model(x), y, loss).mean()
    estimates: list[list[Tensor]] = [[] for _ in names]
    for draw in range(noise[0].shape[0]):
        if difference == "forward":
            change = cost(1.0, draw) - clean
        else:
            change = (cost(1.0, draw) - cost(-1.0, draw)) / 2
        for out, xi in zip(estimates, noise, strict=True):
            out.append(change * xi[draw] / sigma**2)
    return [torch.stack(out) for out in estimates]
