"""e-prop (Bellec et al. 2020, Nat. Commun. 11:3625, Methods) for :class:`RecurrentLIF`: gradients
computed forward in time from eligibility traces and a learning signal, with no stored history.

For the loss ``E = 1/2 sum_t |y^t - y*^t|^2`` (averaged over the batch) and LIF neurons:

    eps_in^t  = alpha eps_in^{t-1}  + x^t            (presynaptic trace of the input weights)
    eps_rec^t = alpha eps_rec^{t-1} + z^{t-1}        (of the recurrent weights)
    e^t       = psi^t eps^t                          (eligibility trace; psi the pseudo-derivative)
    ebar^t    = kappa ebar^{t-1} + e^t               (filtered like the readout)
    L_j^t     = sum_k B_jk (y_k^t - y*_k^t)          (learning signal)
    dE/dW     = sum_t L^t ebar^t

``B`` is ``W_out^T`` (symmetric feedback) or a fixed random matrix (random feedback). The readout
weights and bias get their exact gradient, ``sum_t (y^t - y*^t) zbar^t`` with
``zbar^t = kappa zbar^{t-1} + z^t``. With ``W_rec = 0`` and symmetric feedback the input and
readout gradients equal BPTT's exactly (the reset term is detached in both, see
``neurons.lif``); with recurrence e-prop drops the error paths through future spikes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neuroplastic.models.rsnn import RecurrentLIF
from neuroplastic.neurons.lif import pseudo_derivative_of

FEEDBACK = ("symmetric", "random")


class EProp:
    """Writes e-prop's gradients into ``model``'s ``.grad`` (any optimiser then steps).

    Args:
        model: the network.
        feedback: ``symmetric`` (``B = W_out^T``) or ``random`` (a fixed Gaussian ``B`` scaled by
            1/sqrt(n_out), drawn from ``generator``).
    """

    def __init__(
        self,
        model: RecurrentLIF,
        feedback: str = "symmetric",
        generator: torch.Generator | None = None,
    ):
        if feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}, got {feedback!r}")
        self.model, self.feedback = model, feedback
        self.random_feedback = None
        if feedback == "random":
            draw = torch.randn(model.n_rec, model.n_out, generator=generator)
            self.random_feedback = (draw / math.sqrt(model.n_out)).to(model.w_out)

    def feedback_matrix(self) -> Tensor:
        """``B`` ``(n_rec, n_out)``."""
        if self.random_feedback is not None:
            return self.random_feedback
        return self.model.w_out.detach().T

    @torch.no_grad()
    def gradients(self, x: Tensor, target: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """``({parameter name: gradient}, loss)`` for inputs ``(batch, T, n_in)`` and targets
        ``(batch, T, n_out)``, in one pass forward in time."""
        model = self.model
        batch, steps, n_in = x.shape
        alpha = torch.as_tensor(model.neuron.alpha, dtype=x.dtype)
        kappa = model.kappa
        feedback = self.feedback_matrix()
        state = model.initial_state(batch)
        y = torch.zeros(batch, model.n_out, dtype=x.dtype, device=x.device)
        eps_in = torch.zeros(batch, n_in, dtype=x.dtype, device=x.device)
        eps_rec = torch.zeros(batch, model.n_rec, dtype=x.dtype, device=x.device)
        ebar_in = torch.zeros(batch, model.n_rec, n_in, dtype=x.dtype, device=x.device)
        ebar_rec = torch.zeros(batch, model.n_rec, model.n_rec, dtype=x.dtype, device=x.device)
        zbar = torch.zeros(batch, model.n_rec, dtype=x.dtype, device=x.device)
        onebar = 0.0
        grads = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        loss = torch.zeros((), dtype=x.dtype, device=x.device)
        for t in range(steps):
            before = state
            z, state, y = model.step(x[:, t], state, y)
            psi = pseudo_derivative_of(before, state, model.neuron, model.dampening)
            eps_in = alpha * eps_in + x[:, t]  # alpha is a scalar here: one trace per input
            eps_rec = alpha * eps_rec + before.z
            ebar_in = kappa * ebar_in + psi[:, :, None] * eps_in[:, None, :]
            ebar_rec = kappa * ebar_rec + psi[:, :, None] * eps_rec[:, None, :]
            zbar = kappa * zbar + z
            onebar = kappa * onebar + 1.0
            error = (y - target[:, t]) / batch
            loss += 0.5 * batch * error.pow(2).sum()
            signal = error @ feedback.T  # (batch, n_rec)
            grads["w_in"] += torch.einsum("bj,bji->ji", signal, ebar_in)
            grads["w_rec"] += torch.einsum("bj,bji->ji", signal, ebar_rec)
            grads["w_out"] += error.T @ zbar
            grads["b_out"] += error.sum(0) * onebar
        grads["w_rec"] *= model.no_self
        return grads, loss

    def backward(self, x: Tensor, target: Tensor) -> Tensor:
        """Add e-prop's gradients to the parameters' ``.grad``; return the loss."""
        grads, loss = self.gradients(x, target)
        for name, param in self.model.named_parameters():
            if param.grad is None:
                param.grad = grads[name].clone()
            else:
                param.grad += grads[name]
        return loss
