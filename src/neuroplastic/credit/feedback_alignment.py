"""Feedback alignment (FA): errors travel backwards through fixed random matrices, not W^T.

Lillicrap, Cownden, Tweed & Akerman (2016), "Random synaptic feedback weights support error
backpropagation for deep learning", Nature Communications 7:13276 (Methods, "Feedback alignment").

This module also holds what the FA family shares (direct feedback alignment, sign symmetry): a
forward pass that records every layer's input and pre-activation, the derivative of the hidden
activation, and the step that turns one error signal per layer into weight and bias updates.

Notation (the paper's, with a batch of row vectors). Layers ``l = 0 .. L-1`` are
``model.layers``; ``h_{-1} = x``; for the hidden layers ``a_l = h_{l-1} W_l^T + b_l`` and
``h_l = f(a_l)``; the output layer is linear, ``a_{L-1} = z`` (the logits). The update of every
layer is built from its error signal ``delta_l`` ``(B, n_l)``::

    dW_l = delta_l^T h_{l-1}          # (n_l, n_{l-1}), written into layers[l].weight.grad
    db_l = sum over the batch of delta_l

with ``delta_{L-1} = e = dL/dz`` of the mean loss (``output_error``), so the output layer always
gets its true gradient. The rules differ only in how ``delta_l`` reaches a hidden layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from neuroplastic.credit.base import CreditRule, loss_per_example, output_error
from neuroplastic.models.mlp import MLP

# ----------------------------------------------------------------------------------------------
# Shared by the FA family
# ----------------------------------------------------------------------------------------------


def activation_derivative(activation: nn.Module, a: Tensor, h: Tensor) -> Tensor:
    """``f'(a)`` for the hidden activation, given ``a`` and ``h = f(a)`` (same shape).

    Closed forms for the MLP's activations: ReLU ``1[a > 0]`` (0 at ``a = 0``, as torch autograd),
    tanh ``1 - h^2``, sigmoid ``h (1 - h)``. Any other element-wise module falls back to
    autograd on that one element-wise function (still no graph through the network).
    """
    if isinstance(activation, nn.ReLU):
        return (a > 0).to(a.dtype)
    if isinstance(activation, nn.Tanh):
        return 1 - h * h
    if isinstance(activation, nn.Sigmoid):
        return h * (1 - h)
    with torch.enable_grad():
        a_leaf = a.detach().requires_grad_(True)
        (slope,) = torch.autograd.grad(activation(a_leaf).sum(), a_leaf)
    return slope.detach()


@torch.no_grad()
def forward_record(model: MLP, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The forward pass, keeping what a local update needs, without an autograd graph.

    Returns ``(inputs, pre, slopes)``: ``inputs[l] = h_{l-1}`` the input of layer ``l``
    (``inputs[0] = x``) for every layer; ``pre[l] = a_l`` for every layer, the last one being the
    logits ``z``; ``slopes[l] = f'(a_l)`` for the hidden layers only (``len(slopes) = L - 1``).
    """
    inputs: list[Tensor] = []
    pre: list[Tensor] = []
    slopes: list[Tensor] = []
    h = x
    for index, layer in enumerate(model.layers):
        inputs.append(h)
        a = layer(h)  # (B, n_l)
        pre.append(a)
        if index < len(model.layers) - 1:
            h = model.activation(a)  # (B, n_l)
            slopes.append(activation_derivative(model.activation, a, h))
    return inputs, pre, slopes


def init_bound(fan_in: int) -> float:
    """Half-width of the forward init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``nn.Linear``'s
    default and :meth:`MLP.reset_parameters`)."""
    return 1.0 / math.sqrt(fan_in)


def draw_uniform(shape: Sequence[int], bound: float, generator: torch.Generator | None) -> Tensor:
    """``U(-bound, bound)`` drawn on the CPU in the default dtype, as the MLP draws its weights,
    so the same seed gives the same matrix on every device and dtype. ``generator=None`` draws
    from torch's global generator (as ``MLP(generator=None)`` does)."""
    return torch.empty(tuple(shape)).uniform_(-bound, bound, generator=generator)


def check_feedback(
    matrices: Sequence[Tensor], shapes: Sequence[tuple[int, ...]], what: str
) -> None:
    """Raise a clear error when user-replaced feedback matrices do not fit the network."""
    if len(matrices) != len(shapes):
        raise ValueError(f"{what}: expected {len(shapes)} matrices, got {len(matrices)}")
    for index, (matrix, shape) in enumerate(zip(matrices, shapes, strict=True)):
        if tuple(matrix.shape) != tuple(shape):
            raise ValueError(
                f"{what}[{index}] has shape {tuple(matrix.shape)}, expected {tuple(shape)}"
            )


class _ErrorSignalRule(CreditRule):
    """A rule whose only freedom is how the error signal ``delta_l`` reaches each hidden layer.

    Subclasses implement :meth:`hidden_deltas`; this class runs the forward pass, takes the output
    error, and accumulates ``dW_l = delta_l^T h_{l-1}`` and ``db_l = sum_b delta_l``.
    """

    @torch.no_grad()
    def backward(self, x: Tensor, y: Tensor, loss: str = "cross_entropy") -> Tensor:
        inputs, pre, slopes = forward_record(self.model, x)
        logits = pre[-1]  # (B, n_out)
        e = output_error(logits, y, loss)  # (B, n_out), dL/dz of the mean loss
        deltas = [*self.hidden_deltas(e, slopes), e]  # one (B, n_l) per layer
        for layer, delta, h_below in zip(self.model.layers, deltas, inputs, strict=True):
            self._accumulate(layer.weight, delta.T @ h_below)  # (n_l, n_{l-1})
            if layer.bias is not None:
                self._accumulate(layer.bias, delta.sum(dim=0))  # (n_l,)
        return loss_per_example(logits, y, loss).mean()

    def hidden_deltas(self, e: Tensor, slopes: list[Tensor]) -> list[Tensor]:
        """``[delta_0, ..., delta_{L-2}]``, the error signals of the hidden layers, from the
        output error ``e`` ``(B, n_out)`` and ``slopes[l] = f'(a_l)``."""
        raise NotImplementedError

    def feedback_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """For the alignment diagnostics: ``"layer{l}.feedback"`` -> (the matrix backprop would
        send the error into hidden layer ``l`` through, the matrix this rule uses instead)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Feedback alignment
# ----------------------------------------------------------------------------------------------


class FeedbackAlignment(_ErrorSignalRule):
    r"""Feedback alignment: backprop's backward pass with fixed random ``B_l`` in place of
    ``W_l^T`` (Lillicrap et al. 2016, Methods).

    Algorithm (batch of row vectors; ``f`` the hidden activation; ``L`` layers)::

        forward:   h_{-1} = x;  a_l = h_{l-1} W_l^T + b_l;  h_l = f(a_l)  (l < L-1);  z = a_{L-1}
        error:     e = dL/dz                              # delta_{L-1}, the true output error
        backward:  delta_l = (delta_{l+1} B_{l+1}^T) * f'(a_l)     for l = L-2, ..., 0
                   # the paper's column form: delta_l = (B_{l+1} delta_{l+1}) ⊙ f'(a_l)
        update:    W_l.grad += delta_l^T h_{l-1};  b_l.grad += sum_batch delta_l

    Backprop is the same loop with ``B_{l+1} = W_{l+1}^T``; FA never reads a forward weight on
    the way back, and the forward weights come to align with the ``B`` (the paper's Fig. 2).

    Attributes:
        feedback: list of ``L - 1`` tensors; ``feedback[i]`` is ``B_{i+1}``, shape
            ``(n_i, n_{i+1})`` = ``layers[i + 1].weight.T.shape``, carrying the error from layer
            ``i + 1`` down to hidden layer ``i``. Drawn once at construction and never changed by
            the rule. A user may replace the list or any element with another matrix of the same
            shape (e.g. ``[layer.weight.detach().T for layer in model.layers[1:]]``, views that
            follow the weights, turns FA into backprop). The matrices are moved to the weights'
            device and dtype on use.

    Scaling convention: ``B_l`` has the same law as ``W_l^T`` at initialisation,
    ``U(-1/sqrt(n_{l-1}), 1/sqrt(n_{l-1}))`` with ``n_{l-1} = layers[l].in_features``, so at
    initialisation the FA error signals have the same magnitude as backprop's.

    Args:
        model: the :class:`~neuroplastic.models.mlp.MLP` to train.
        generator: draws the feedback matrices, once, on the CPU (in the default dtype, like the
            MLP's weights); ``None`` draws from torch's global generator. Not kept after
            construction: ``backward`` is deterministic.
    """

    name = "fa"

    def __init__(self, model: MLP, *, generator: torch.Generator | None = None):
        super().__init__(model)
        upper = list(model.layers)[1:]
        self.feedback: list[Tensor] = [
            draw_uniform(
                (layer.in_features, layer.out_features), init_bound(layer.in_features), generator
            )
            for layer in upper
        ]

    def _feedback_shapes(self) -> list[tuple[int, int]]:
        return [(layer.in_features, layer.out_features) for layer in list(self.model.layers)[1:]]

    def hidden_deltas(self, e: Tensor, slopes: list[Tensor]) -> list[Tensor]:
        check_feedback(self.feedback, self._feedback_shapes(), "feedback")
        deltas: list[Tensor] = []
        delta = e  # (B, n_{L-1})
        for i in range(len(slopes) - 1, -1, -1):  # i: the paper's l, top hidden layer first
            b_above = self.feedback[i].to(e)  # B_{i+1}: (n_i, n_{i+1})
            delta = (delta @ b_above.T) * slopes[i]  # (B, n_i)
            deltas.append(delta)
        return deltas[::-1]

    def feedback_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``"layer{l}.feedback"``: (``W_{l+1}^T``, ``B_{l+1}``) for every hidden layer ``l``."""
        layers = list(self.model.layers)
        return {
            f"layer{i}.feedback": (layers[i + 1].weight.detach().T, matrix)
            for i, matrix in enumerate(self.feedback)
        }
