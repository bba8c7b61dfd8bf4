"""Sign symmetry: the feedback shares the forward weights' signs, not their magnitudes.

Liao, Leibo & Poggio (2016), "How important is weight symmetry in backpropagation?", AAAI
(sign-concordant feedback: uniform, batch-wise random and fixed random magnitudes, uSF / BRSF /
FRSF; biotorch calls them "usf", "brsf", "frsf").
"""

from __future__ import annotations

import torch
from torch import Tensor

from neuroplastic.credit.feedback_alignment import _ErrorSignalRule, draw_uniform, init_bound
from neuroplastic.models.mlp import MLP

VARIANTS = ("usf", "frsf", "brsf")


class SignSymmetry(_ErrorSignalRule):
    r"""Backprop's backward pass with ``V_{l+1} = M_{l+1} ⊙ sign(W_{l+1})^T`` in place of
    ``W_{l+1}^T``, the signs read from the *current* forward weights at every call.

    Algorithm (batch of row vectors; notation as in
    :mod:`neuroplastic.credit.feedback_alignment`)::

        forward:   h_{-1} = x;  a_l = h_{l-1} W_l^T + b_l;  h_l = f(a_l)  (l < L-1);  z = a_{L-1}
        error:     e = dL/dz                              # delta_{L-1}, the true output error
        feedback:  V_{l+1} = M_{l+1} ⊙ sign(W_{l+1})^T    # recomputed from the weights each call
                   (if scaled: V_{l+1} <- V_{l+1} ||W_{l+1}||_F / ||V_{l+1}||_F)
        backward:  delta_l = (delta_{l+1} V_{l+1}^T) * f'(a_l)     for l = L-2, ..., 0
        update:    W_l.grad += delta_l^T h_{l-1};  b_l.grad += sum_batch delta_l

    The magnitudes ``M`` by variant:

    * ``"usf"`` (default; Liao et al.'s uniform sign-concordant feedback): ``M = 1``, so
      ``V = sign(W)^T``, entries in {-1, 0, +1}. Deterministic. Identity: when every weight above
      the first layer is in {-1, 0, +1} (``W = sign(W)``), this is exactly backprop.
    * ``"frsf"`` (fixed random magnitudes): ``|M| ~ U(0, 1/sqrt(n_l))`` drawn once at
      construction, the magnitude law of the forward init ``W_{l+1}``; ``n_l`` its fan-in.
    * ``"brsf"`` (batch-wise random magnitudes): the same law, redrawn from ``generator`` at
      every ``backward`` call, on the CPU (a stochastic rule).

    ``scaled`` (default ``False``, as in the paper, which relied on batch normalisation to keep
    the magnitudes in check) is this library's addition: each ``V`` is rescaled to the Frobenius
    norm of its forward matrix, so the error signals keep backprop's magnitude in deep networks.
    With ``"usf"`` and ``scaled=True``, the identity with backprop holds whenever each weight
    matrix above the first has entries of one magnitude, ``W_{l+1} = c_{l+1} sign(W_{l+1})``.

    Attributes:
        feedback: read-only, derived from the current weights: the list of ``L - 1`` matrices
            ``V_{i+1}``, ``feedback[i]`` of shape ``layers[i + 1].weight.T.shape`` as in
            :class:`FeedbackAlignment`. For ``"brsf"`` it holds the magnitudes of the last
            ``backward`` call (before the first call: a draw made at construction).
        generator: the generator given at construction; only ``"frsf"`` (once) and ``"brsf"``
            (every call) draw from it, ``"usf"`` never does. ``None``: torch's global generator.

    Args:
        model: the :class:`~neuroplastic.models.mlp.MLP` to train.
        generator: see the attribute; accepted by every variant for a uniform constructor.
        variant: ``"usf"``, ``"frsf"`` or ``"brsf"``.
        scaled: rescale each feedback matrix to its forward matrix's Frobenius norm.
    """

    name = "sign-symmetry"

    def __init__(
        self,
        model: MLP,
        *,
        generator: torch.Generator | None = None,
        variant: str = "usf",
        scaled: bool = False,
    ):
        super().__init__(model)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.scaled = scaled
        self.generator = generator
        self._magnitudes: list[Tensor] | None = None
        if variant != "usf":
            self._magnitudes = self._draw_magnitudes()

    def _draw_magnitudes(self) -> list[Tensor]:
        """``|M_{i+1}| ~ U(0, 1/sqrt(n_i))``, one per layer above the first, on the CPU."""
        return [
            draw_uniform(
                (layer.in_features, layer.out_features),
                init_bound(layer.in_features),
                self.generator,
            ).abs()
            for layer in list(self.model.layers)[1:]
        ]

    @property
    def feedback(self) -> list[Tensor]:
        matrices = []
        for index, layer in enumerate(list(self.model.layers)[1:]):
            forward_t = layer.weight.detach().T  # W_{i+1}^T: (n_i, n_{i+1})
            v = forward_t.sign()
            if self._magnitudes is not None:
                v = self._magnitudes[index].to(v) * v
            if self.scaled:
                norm = v.norm()
                v = v * (forward_t.norm() / norm) if norm > 0 else v
            matrices.append(v)
        return matrices

    def hidden_deltas(self, e: Tensor, slopes: list[Tensor]) -> list[Tensor]:
        if self.variant == "brsf":
            self._magnitudes = self._draw_magnitudes()
        feedback = self.feedback
        deltas: list[Tensor] = []
        delta = e  # (B, n_{L-1})
        for i in range(len(slopes) - 1, -1, -1):  # i: the paper's l, top hidden layer first
            delta = (delta @ feedback[i].T) * slopes[i]  # (B, n_{i+1}) @ (n_{i+1}, n_i)
            deltas.append(delta)
        return deltas[::-1]

    def feedback_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``"layer{l}.feedback"``: (``W_{l+1}^T``, ``V_{l+1}``) for every hidden layer ``l``."""
        layers = list(self.model.layers)
        return {
            f"layer{i}.feedback": (layers[i + 1].weight.detach().T, matrix)
            for i, matrix in enumerate(self.feedback)
        }
