"""Direct feedback alignment (DFA): every hidden layer gets the output error directly.

Nøkland (2016), "Direct feedback alignment provides learning in deep neural networks", NeurIPS
(Section 2: the BP, FA and DFA error signals side by side; Fig. 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from neuroplastic.credit.feedback_alignment import (
    _ErrorSignalRule,
    check_feedback,
    draw_uniform,
    init_bound,
)
from neuroplastic.models.mlp import MLP


class DirectFeedbackAlignment(_ErrorSignalRule):
    r"""Direct feedback alignment: hidden layer ``l`` receives ``e`` through its own fixed random
    matrix ``D_l`` (Nøkland 2016, Section 2), with no layer-to-layer backward pass.

    Algorithm (batch of row vectors; notation as in
    :mod:`neuroplastic.credit.feedback_alignment`)::

        forward:   h_{-1} = x;  a_l = h_{l-1} W_l^T + b_l;  h_l = f(a_l)  (l < L-1);  z = a_{L-1}
        error:     e = dL/dz                              # the output layer's true gradient
        hidden:    delta_l = (e D_l^T) * f'(a_l)          for every hidden l, in any order
                   # Nøkland's column form: delta a_l = (B_l e) ⊙ f'(a_l)
        update:    W_l.grad += delta_l^T h_{l-1};  b_l.grad += sum_batch delta_l

    With one hidden layer and ``D_0 = W_1^T`` (the output weights) this is backprop; with more
    layers backprop would need ``D_l = W_{l+1}^T diag(f'(a_{l+1})) ... W_{L-1}^T``, which depends
    on the example, so no fixed ``D`` reproduces it.

    Attributes:
        feedback: list of ``L - 1`` tensors, ``feedback[l]`` is ``D_l`` of shape
            ``(n_l, n_out)``, one per hidden layer. Drawn once, never changed by the rule; a user
            may replace the list or any element with a matrix of the same shape. Moved to the
            weights' device and dtype on use.

    Scaling convention: ``D_l ~ U(-1/sqrt(n_l), 1/sqrt(n_l))``, the law the output weights
    ``W_{L-1}^T`` would have at initialisation if hidden layer ``l`` fed the output layer directly
    (for the last hidden layer this is exactly the law of ``W_{L-1}^T``).

    Args:
        model: the :class:`~neuroplastic.models.mlp.MLP` to train.
        generator: draws the feedback matrices, once, on the CPU in the default dtype; ``None``
            draws from torch's global generator. Not kept: ``backward`` is deterministic.
    """

    name = "dfa"

    def __init__(self, model: MLP, *, generator: torch.Generator | None = None):
        super().__init__(model)
        n_out = model.layers[-1].out_features
        hidden = list(model.layers)[:-1]
        self.feedback: list[Tensor] = [
            draw_uniform((layer.out_features, n_out), init_bound(layer.out_features), generator)
            for layer in hidden
        ]

    def _feedback_shapes(self) -> list[tuple[int, int]]:
        n_out = self.model.layers[-1].out_features
        return [(layer.out_features, n_out) for layer in list(self.model.layers)[:-1]]

    def hidden_deltas(self, e: Tensor, slopes: list[Tensor]) -> list[Tensor]:
        check_feedback(self.feedback, self._feedback_shapes(), "feedback")
        return [
            (e @ d.to(e).T) * slope  # (B, n_out) @ (n_out, n_l) -> (B, n_l)
            for d, slope in zip(self.feedback, slopes, strict=True)
        ]

    def feedback_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``"layer{l}.feedback"``: (``W_{l+1}^T W_{l+2}^T ... W_{L-1}^T``, ``D_l``).

        The first is backprop's path from the output error to hidden layer ``l`` with the
        activation slopes left out (exactly ``W_{L-1}^T`` for the last hidden layer)."""
        weights = [layer.weight.detach() for layer in self.model.layers]
        paths = [weights[-1].T]  # W_{L-1}^T: (n_{L-2}, n_out)
        for i in range(len(self.feedback) - 1, 0, -1):
            paths.append(weights[i].T @ paths[-1])  # W_i^T ... W_{L-1}^T: (n_{i-1}, n_out)
        paths.reverse()
        return {
            f"layer{i}.feedback": (path, d)
            for i, (path, d) in enumerate(zip(paths, self.feedback, strict=True))
        }
