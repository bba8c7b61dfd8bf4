"""Sign symmetry: the feedback shares the forward weights' signs, not their magnitudes.

Liao, Leibo & Poggio (2016), "How important is weight symmetry in backpropagation?", AAAI
(sign-concordant feedback: uniform, batch-wise random and fixed random magnitudes, uSF / BRSF /
FRSF; biotorch calls them "usf", "brsf", "frsf"). Moskovitz, Litwin-Kumar & Abbott (2018),
"Feedback alignment in deep convolutional networks" (sign symmetry on deep convolutional nets).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from neuroplastic.credit.base import FeedbackMatrices, LayerLocalRule
from neuroplastic.credit.feedback_alignment import check_scale
from neuroplastic.credit.layers import (
    LayerCall,
    LayerSelection,
    draw_uniform,
    fan_in,
    feedback_error,
    init_bound,
)

VARIANTS = ("usf", "frsf", "brsf")


class SignSymmetry(LayerLocalRule):
    r"""Feedback alignment with ``V = scale * M ⊙ sign(W)`` in place of ``B``: the signs are read
    from the weight each forward pass used.

    Algorithm (per covered layer, in autograd's backward; ``g = dL/do`` at its output)::

        W.grad += g^T x;  b.grad += sum g                 # local, as backprop
        V = scale * M ⊙ sign(W)                           # W: the weight of this forward pass
            (if scaled: V <- V ||W||_F / ||V||_F)
        error into x = g V                                # backprop: g W (conv: transposed conv)

    The magnitudes ``M`` by variant:

    * ``"usf"`` (default; Liao et al.'s uniform sign-concordant feedback): ``M = 1``, entries of
      ``V`` in {-scale, 0, +scale}. Deterministic. With ``scale = 1`` it is backprop whenever
      every covered weight is in {-1, 0, +1}.
    * ``"frsf"`` (fixed random magnitudes): ``M = |U(-1/sqrt(fan_in), 1/sqrt(fan_in))|`` drawn
      once at construction, the magnitude law of the forward init. With ``magnitudes[name] =
      |W|`` it is backprop.
    * ``"brsf"`` (batch-wise random magnitudes): the same law, redrawn at every forward pass for
      every layer whose input will receive an error (not for a first layer fed by data), on the
      CPU (a stochastic rule).

    ``scaled`` (default ``False``, as in the paper, which relied on batch normalisation to keep
    the magnitudes in check) is ours: each ``V`` is rescaled to its weight's Frobenius norm, so
    the errors keep backprop's magnitude in deep networks; ``usf`` with ``scaled=True`` is
    backprop whenever each weight has entries of one magnitude, ``W = c sign(W)``.

    Attributes:
        feedback: read-only ``{layer name: V}``, computed from the current weights (for
            ``"brsf"``: with the magnitudes of the last forward pass).
        magnitudes: for ``"frsf"`` and ``"brsf"``, :class:`FeedbackMatrices` of ``M`` by layer
            name, replaceable (same shape); ``None`` for ``"usf"``.

    Args:
        model, layers: as :class:`~neuroplastic.credit.feedback_alignment.FeedbackAlignment`.
        generator: draws the magnitudes (``"frsf"`` once, ``"brsf"`` every pass); ``"usf"`` never
            draws. ``None``: torch's global generator.
        variant: ``"usf"``, ``"frsf"`` or ``"brsf"``.
        scale: multiplies every ``V`` (under SGD a learning rate for the layers below).
        scaled: rescale each ``V`` to its weight's Frobenius norm (after ``scale``: the two
            together make ``scale`` the ratio of norms).
    """

    name = "sign-symmetry"

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: LayerSelection = None,
        generator: torch.Generator | None = None,
        variant: str = "usf",
        scale: float = 1.0,
        scaled: bool = False,
    ):
        super().__init__(model, layers=layers)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.scale = check_scale(scale)
        self.scaled = scaled
        self.generator = generator
        self.magnitudes: FeedbackMatrices | None = None
        self._weight_magnitudes = False  # as_backprop(): M = |W| / scale, read every pass
        if variant != "usf":
            self.magnitudes = FeedbackMatrices(
                "magnitudes", {name: tuple(m.weight.shape) for name, m in self.layers.items()}
            )
            for name in self.layers:
                self.magnitudes[name] = self._draw(name)

    def _draw(self, name: str) -> Tensor:
        module = self.layers[name]
        return draw_uniform(module.weight.shape, init_bound(fan_in(module)), self.generator).abs()

    def on_layer_call(self, call: LayerCall, x: Tensor) -> None:
        if not x.requires_grad:
            return  # no error goes to this input (the data): V is never used, so not built
        if self._weight_magnitudes:
            magnitudes = call.weight.abs() / self.scale
            call.feedback = self.sign_feedback(call.name, call.weight, magnitudes)
            return
        if self.variant == "brsf":
            self.magnitudes[call.name] = self._draw(call.name)
        call.feedback = self.sign_feedback(call.name, call.weight)

    def sign_feedback(self, name: str, weight: Tensor, magnitudes: Tensor | None = None) -> Tensor:
        """``V`` for layer ``name`` with forward weight ``weight`` (and ``magnitudes`` in place of
        the layer's ``M``, if given)."""
        v = weight.sign()
        if magnitudes is None and self.magnitudes is not None:
            magnitudes = self.magnitudes.on(name, weight)
        if magnitudes is not None:
            v = magnitudes.to(v) * v
        if self.scale != 1.0:
            v = self.scale * v
        if self.scaled:
            norm = v.norm()
            v = v * (weight.norm() / norm) if norm > 0 else v
        return v

    def input_error(self, call: LayerCall, x: Tensor, g: Tensor) -> Tensor:
        return feedback_error(call, x, g, call.feedback)

    @contextlib.contextmanager
    def as_backprop(self) -> Iterator[SignSymmetry]:
        """Within the block every variant takes its magnitudes from the weight of each forward
        pass, ``M = |W| / scale`` (nothing is drawn), so ``V = W`` (``scaled`` then rescales by
        ``||W|| / ||V|| = 1``): the update is backprop's gradient. The rule's own magnitudes and
        generator are untouched. For ``"frsf"`` the same identity by hand is ``magnitudes[name]
        = layer.weight.detach().abs()`` (reassigned after every step, as ``|W|`` is a copy)."""
        previous, self._weight_magnitudes = self._weight_magnitudes, True
        try:
            yield self
        finally:
            self._weight_magnitudes = previous

    @property
    def feedback(self) -> dict[str, Tensor]:
        return {
            name: self.sign_feedback(name, module.weight.detach())
            for name, module in self.layers.items()
        }

    def feedback_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{name: (W, V)}`` for every covered layer."""
        feedback = self.feedback
        return {name: (m.weight.detach(), feedback[name]) for name, m in self.layers.items()}
