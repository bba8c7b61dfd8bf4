"""Feedback alignment (FA): errors travel backwards through fixed random matrices, not W^T.

Lillicrap, Cownden, Tweed & Akerman (2016), "Random synaptic feedback weights support error
backpropagation for deep learning", Nature Communications 7:13276 (Methods, "Feedback alignment").

In the paper's column form, for a network ``h_l = f(a_l)``, ``a_l = W_l h_{l-1} + b_l``::

    backprop:  delta_l = (W_{l+1}^T delta_{l+1}) ⊙ f'(a_l)
    FA:        delta_l = (B_{l+1}   delta_{l+1}) ⊙ f'(a_l)      B fixed, random
    both:      dW_l = delta_l h_{l-1}^T,  db_l = delta_l

On any model (as implemented; batch of row vectors): a covered layer with input ``x``, weight
``W`` and incoming error ``g = dL/do`` keeps its local gradients ``dW = g^T x``, ``db = sum g`` and
sends ``g B`` to its input instead of ``g W``, with ``B`` of ``W``'s shape (the paper's ``B`` is
our ``B^T``). For a convolution the error sent back is the transposed convolution of ``g`` with
``B`` in place of ``W``. Between covered layers, autograd carries the error exactly (activation
slopes ``f'``, normalisation, pooling, residual sums), which is the paper's ``⊙ f'(a_l)`` and its
natural extension to any architecture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from neuroplastic.credit.base import FeedbackMatrices, LayerLocalRule
from neuroplastic.credit.layers import (
    LayerCall,
    LayerSelection,
    draw_uniform,
    fan_in,
    feedback_error,
    init_bound,
)


def check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return float(scale)


class FeedbackAlignment(LayerLocalRule):
    r"""Feedback alignment on every covered layer: the error goes back through a fixed random
    ``B`` of the weight's shape (Lillicrap et al. 2016, Methods).

    Algorithm (per covered layer, in autograd's backward pass; ``g = dL/do`` at its output)::

        W.grad += g^T x                  # local, as backprop (conv: the weight gradient)
        b.grad += sum g
        error into x = g B               # backprop: g W  (conv: transposed convolution with B)

    With ``B = W`` (``rule.feedback[name] = layer.weight.detach()``, a view that follows the
    weight) this is backprop, parameter for parameter (tested to 1e-12 in float64 on several
    architectures).

    Attributes:
        feedback: :class:`~neuroplastic.credit.base.FeedbackMatrices`, ``{layer name: B}``, one
            per covered layer, drawn at construction in module order and never changed by the
            rule. Replace any with a tensor of the same shape; moved to the gradient's device and
            dtype on use. The first layer's matrix is drawn too but only used when its input
            needs a gradient.

    Scaling: ``B ~ scale * U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, the law of PyTorch's default
    init of ``W`` times ``scale``. Under plain SGD the scale multiplies every error below the
    layer, so it acts as a learning rate of the layers below: tune it (``scale``) or use an
    optimiser that normalises step sizes (RMSprop, Adam).

    Args:
        model: any ``nn.Module``; not modified (hooks only).
        layers: layer types or module names to cover (default: every ``Linear``, ``Conv1d``,
            ``Conv2d``); others keep their true gradient.
        generator: draws the feedback matrices once, on the CPU in the default dtype (one seed,
            one set of matrices on every device); ``None``: torch's global generator.
        scale: multiplies every drawn ``B``.
    """

    name = "fa"

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: LayerSelection = None,
        generator: torch.Generator | None = None,
        scale: float = 1.0,
    ):
        super().__init__(model, layers=layers)
        self.scale = check_scale(scale)
        self.feedback = FeedbackMatrices(
            "feedback", {name: tuple(m.weight.shape) for name, m in self.layers.items()}
        )
        for name, module in self.layers.items():
            bound = init_bound(fan_in(module))
            self.feedback[name] = self.scale * draw_uniform(module.weight.shape, bound, generator)

    def input_error(self, call: LayerCall, x: Tensor, g: Tensor) -> Tensor:
        return feedback_error(call, x, g, self.feedback.on(call.name, g))

    @contextlib.contextmanager
    def as_backprop(self) -> Iterator[FeedbackAlignment]:
        """Within the block ``B = W`` for every covered layer (views that follow the weights as
        they train): the update is backprop's gradient. On exit the matrices are as before."""
        views = {name: module.weight.detach() for name, module in self.layers.items()}
        with self.feedback.replaced(views):
            yield self

    def feedback_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{name: (W, B)}`` for every covered layer."""
        return {
            name: (module.weight.detach(), self.feedback[name])
            for name, module in self.layers.items()
        }
