"""e-prop (Bellec et al. 2020, Nat. Commun. 11:3625, Methods) for :class:`RecurrentLIF`: gradients
computed forward in time from eligibility traces and a learning signal, with no stored history.

The exact gradient factorises (the paper's Eq. 1) as ``dE/dW_ji = sum_t dE/dz_j^t e_ji^t``, with
``dE/dz_j^t`` the total derivative through the other neurons and the readout, and the eligibility
trace ``e_ji^t = [dz_j^t / dW_ji]_local`` computed forward in time from the neuron's own dynamics.
With ``s_i^t`` the presynaptic signal (``x_i^t`` for input weights, ``z_i^{t-1}`` for recurrent
ones) and ``psi^t`` the pseudo-derivative (``neurons.lif.pseudo_derivative_of``)::

    eps_v^t = alpha eps_v^{t-1} + s_i^t                                  (membrane trace)
    eps_a^t = (rho - beta_j psi_j^{t-1}) eps_a^{t-1} + psi_j^{t-1} eps_v^{t-1}  (ALIF only)
    e_ji^t  = psi_j^t (eps_v^t - beta_j eps_a^t)

e-prop replaces the total derivative by the learning signal of the current step,
``L_j^t = sum_k B_jk dE/dy_k^t``, which needs no future, and since the readout is leaky
(``y^t = kappa y^{t-1} + W_out z^t + b``) pairs it with the trace filtered like the readout::

    ebar^t = kappa ebar^{t-1} + e^t,      dE/dW_ji = sum_t L_j^t ebar_ji^t

``dE/dy^t`` is ``(y^t - y*^t)`` for the square loss ``1/2 |y - y*|^2`` and ``(pi^t - onehot)``,
``pi = softmax(y)``, for cross-entropy; both are weighted by a per-step ``mask`` and averaged over
the batch. ``B`` is ``W_out^T`` (symmetric), a fixed random matrix (random), or a random matrix
that receives the same gradient as ``W_out^T`` (adaptive, Kolen-Pollack: with weight decay in the
optimiser, ``B`` and ``W_out^T`` converge). The readout weights and bias get their exact gradient,
``sum_t dE/dy^t zbar^t`` with ``zbar^t = kappa zbar^{t-1} + z^t``.

Firing-rate regularisation ``reg sum_j (fbar_j - f0)^2`` (``fbar`` the mean spikes per step over the
batch and the trial) adds ``2 reg (fbar_j - f0) sum_t e_ji^t / (batch T)``: through the traces too.

With ``W_rec = 0`` and symmetric feedback the input and readout gradients equal BPTT's exactly (the
reset term is detached in both, see ``neurons.lif``); with recurrence e-prop drops the error paths
through future spikes of other neurons. Updates can be summed over a trial (:meth:`EProp.backward`)
or applied online every ``k`` steps (:meth:`EProp.online`); the learning state is the traces alone,
so memory does not grow with the trial's length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from neuroplastic.models.rsnn import RecurrentLIF
from neuroplastic.neurons.lif import LIFState, pseudo_derivative_of

FEEDBACK = ("symmetric", "random", "adaptive")
LOSSES = ("mse", "cross_entropy")


class Traces(NamedTuple):
    """The learning state e-prop carries from one step to the next: nothing else is kept.
    ``n_ad`` is the number of ALIF neurons (the last rows of the network)."""

    eps_in: Tensor
    """``(batch, n_in)``: membrane trace of the input weights (alpha is shared by all neurons, so
    it depends on the presynaptic side only)."""
    eps_rec: Tensor
    """``(batch, n_rec)``: membrane trace of the recurrent weights."""
    eps_a_in: Tensor
    """``(batch, n_ad, n_in)``: adaptation traces of the ALIF neurons' input weights."""
    eps_a_rec: Tensor
    """``(batch, n_ad, n_rec)``: adaptation traces of their recurrent weights."""
    psi: Tensor
    """``(batch, n_rec)``: the previous step's pseudo-derivative."""
    ebar_in: Tensor
    """``(batch, n_rec, n_in)``: eligibility traces filtered by the readout's kappa."""
    ebar_rec: Tensor
    """``(batch, n_rec, n_rec)``."""
    zbar: Tensor
    """``(batch, n_rec)``: spikes filtered by kappa (the readout weights' exact gradient)."""
    onebar: Tensor
    """``()``: a constant 1 filtered by kappa (the readout bias')."""


def initial_traces(model: RecurrentLIF, batch: int, dtype: torch.dtype, device) -> Traces:
    """All traces at zero, for a trial that starts at rest."""
    n_in, n_rec, n_ad = model.n_in, model.n_rec, model.n_adaptive

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(shape, dtype=dtype, device=device)

    return Traces(
        eps_in=zeros(batch, n_in), eps_rec=zeros(batch, n_rec),
        eps_a_in=zeros(batch, n_ad, n_in), eps_a_rec=zeros(batch, n_ad, n_rec),
        psi=zeros(batch, n_rec),
        ebar_in=zeros(batch, n_rec, n_in), ebar_rec=zeros(batch, n_rec, n_rec),
        zbar=zeros(batch, n_rec), onebar=zeros(),
    )  # fmt: skip


def trace_step(
    traces: Traces, model: RecurrentLIF, x: Tensor, before: LIFState, after: LIFState
) -> tuple[Traces, Tensor, Tensor]:
    """Advance the traces over the network step ``before -> after`` driven by inputs ``x``:
    ``(traces, e_in, e_rec)``, the eligibility traces of this step, ``(batch, n_rec, n_in)`` and
    ``(batch, n_rec, n_rec)`` (equations in the module docstring)."""
    alpha, kappa, n_lif = model.alpha, model.kappa, model.n_rec - model.n_adaptive
    beta = model.beta[n_lif:]  # (n_ad,)
    psi_ad, eps_in, eps_rec = traces.psi[:, n_lif:, None], traces.eps_in, traces.eps_rec
    # eps_a^t from the previous step's psi and eps_v:                   # (batch, n_ad, n_pre)
    eps_a_in = (model.rho - beta[:, None] * psi_ad) * traces.eps_a_in + psi_ad * eps_in[:, None]
    eps_a_rec = (model.rho - beta[:, None] * psi_ad) * traces.eps_a_rec + psi_ad * eps_rec[:, None]
    eps_in = alpha * eps_in + x  # (batch, n_in)
    eps_rec = alpha * eps_rec + before.z  # (batch, n_rec)
    psi = pseudo_derivative_of(before, after, model.neuron, model.dampening)  # (batch, n_rec)
    e_in = psi[:, :, None] * eps_in[:, None, :]  # (batch, n_rec, n_in)
    e_rec = psi[:, :, None] * eps_rec[:, None, :]  # (batch, n_rec, n_rec)
    if model.n_adaptive:
        adaptive = psi[:, n_lif:, None] * beta[:, None]  # (batch, n_ad, 1)
        e_in = torch.cat([e_in[:, :n_lif], e_in[:, n_lif:] - adaptive * eps_a_in], 1)
        e_rec = torch.cat([e_rec[:, :n_lif], e_rec[:, n_lif:] - adaptive * eps_a_rec], 1)
    traces = Traces(
        eps_in, eps_rec, eps_a_in, eps_a_rec, psi,
        ebar_in=kappa * traces.ebar_in + e_in, ebar_rec=kappa * traces.ebar_rec + e_rec,
        zbar=kappa * traces.zbar + after.z, onebar=kappa * traces.onebar + 1.0,
    )  # fmt: skip
    return traces, e_in, e_rec


def output_error(y: Tensor, target: Tensor, weight: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """``(dE/dy, E)`` of one step: readouts ``y`` ``(batch, n_out)``, targets ``(batch, n_out)``
    (``mse``) or labels ``(batch,)`` (``cross_entropy``), per-example weights ``(batch,)`` that
    already include the 1/batch average."""
    if loss == "mse":
        difference = y - target
        return difference * weight[:, None], 0.5 * (weight * difference.pow(2).sum(1)).sum()
    log_pi = torch.log_softmax(y, 1)
    onehot = torch.nn.functional.one_hot(target, y.shape[1]).to(y.dtype)
    return (log_pi.exp() - onehot) * weight[:, None], -(weight * (onehot * log_pi).sum(1)).sum()


class EProp:
    """Writes e-prop's gradients into ``model``'s ``.grad`` (any optimiser then steps).

    Args:
        model: the network.
        feedback: ``symmetric`` (``B = W_out^T``), ``random`` (a fixed Gaussian ``B`` scaled by
            1/sqrt(n_out), drawn from ``generator``), or ``adaptive`` (that random ``B`` trained
            with ``W_out``'s gradient: pass :meth:`parameters` to the optimiser too, with weight
            decay, as Kolen-Pollack learning needs).
        loss: ``mse`` (regression targets ``(batch, T, n_out)``) or ``cross_entropy`` (labels
            ``(batch,)`` or ``(batch, T)``).
        regularisation: strength ``reg`` of the firing-rate penalty (0: none).
        target_rate: ``f0`` in spikes per step (10 Hz at dt = 1 ms is 0.01).
    """

    def __init__(
        self,
        model: RecurrentLIF,
        feedback: str = "symmetric",
        generator: torch.Generator | None = None,
        *,
        loss: str = "mse",
        regularisation: float = 0.0,
        target_rate: float = 0.01,
    ):
        if feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}, got {feedback!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if regularisation < 0:
            raise ValueError(f"regularisation must be >= 0, got {regularisation}")
        self.model, self.feedback, self.loss = model, feedback, loss
        self.regularisation, self.target_rate = regularisation, target_rate
        self.feedback_weights: torch.nn.Parameter | None = None
        if feedback != "symmetric":
            draw = torch.randn(model.n_rec, model.n_out, generator=generator)
            self.feedback_weights = torch.nn.Parameter(
                (draw / math.sqrt(model.n_out)).to(model.w_out), requires_grad=False
            )

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimiser should also step: the adaptive feedback matrix, else nothing."""
        return [self.feedback_weights] if self.feedback == "adaptive" else []

    def feedback_matrix(self) -> Tensor:
        """``B`` ``(n_rec, n_out)``."""
        if self.feedback_weights is not None:
            return self.feedback_weights.detach()
        return self.model.w_out.detach().T

    @torch.no_grad()
    def chunks(
        self, x: Tensor, target: Tensor, mask: Tensor | None = None, every: int | None = None
    ) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Run one trial forward in time and yield ``(gradients, loss)`` for every ``every`` steps
        (default: once, for the whole trial). Between two yields the caller may change the
        weights (online learning); the traces carry on.

        ``x`` ``(batch, T, n_in)``; ``target`` as the ``loss`` needs; ``mask`` ``(T,)`` or
        ``(batch, T)``: each step's weight in the loss (default 1).
        """
        model = self.model
        batch, steps, _ = x.shape
        every = steps if every is None else every
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        targets, weights = self._per_step(target, mask, batch, steps, x)
        state = model.initial_state(batch)
        y = torch.zeros(batch, model.n_out, dtype=x.dtype, device=x.device)
        traces = initial_traces(model, batch, x.dtype, x.device)
        spikes = torch.zeros(model.n_rec, dtype=x.dtype, device=x.device)
        grads, e_sum, loss = self._zeros(), self._zeros(), x.new_zeros(())
        for t in range(steps):
            before = state
            z, state, y = model.step(x[:, t], state, y)
            traces, e_in, e_rec = trace_step(traces, model, x[:, t], before, state)
            error, step_loss = output_error(y, targets[t], weights[t], self.loss)
            loss += step_loss
            signal = error @ self.feedback_matrix().T  # (batch, n_rec)
            grads["w_in"] += torch.einsum("bj,bji->ji", signal, traces.ebar_in)
            grads["w_rec"] += torch.einsum("bj,bji->ji", signal, traces.ebar_rec)
            grads["w_out"] += error.T @ traces.zbar
            grads["b_out"] += error.sum(0) * traces.onebar
            if self.regularisation:
                spikes += z.sum(0)
                e_sum["w_in"] += e_in.sum(0)
                e_sum["w_rec"] += e_rec.sum(0)
            if (t + 1) % every == 0 or t + 1 == steps:
                if self.regularisation:
                    loss += self._add_rate_penalty(grads, e_sum, spikes, batch, t + 1, steps)
                grads["w_rec"] *= model.no_self
                yield grads, loss
                grads, e_sum, loss = self._zeros(), self._zeros(), x.new_zeros(())

    def gradients(
        self, x: Tensor, target: Tensor, mask: Tensor | None = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """``({parameter name: gradient}, loss)`` summed over one trial."""
        return next(self.chunks(x, target, mask))

    def backward(self, x: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Add e-prop's gradients, summed over the trial, to the parameters' ``.grad``; return the
        loss."""
        grads, loss = self.gradients(x, target, mask)
        self._write(grads)
        return loss

    def online(
        self,
        x: Tensor,
        target: Tensor,
        optimizer: torch.optim.Optimizer,
        every: int = 1,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Learn during the trial: every ``every`` steps write the gradients of those steps and let
        ``optimizer`` step (the traces carry on with the new weights). Returns the trial's loss.
        The rate penalty then uses the rate so far in place of the trial's."""
        total = x.new_zeros(())
        for grads, loss in self.chunks(x, target, mask, every):
            optimizer.zero_grad()
            self._write(grads)
            optimizer.step()
            total += loss
        return total

    def _write(self, grads: dict[str, Tensor]) -> None:
        for name, param in self.model.named_parameters():
            param.grad = grads[name].clone() if param.grad is None else param.grad + grads[name]
        if self.feedback == "adaptive":  # Kolen-Pollack: B gets W_out^T's gradient
            b = self.feedback_weights
            b.grad = grads["w_out"].T.clone() if b.grad is None else b.grad + grads["w_out"].T

    def _zeros(self) -> dict[str, Tensor]:
        return {name: torch.zeros_like(p) for name, p in self.model.named_parameters()}

    def _add_rate_penalty(self, grads, e_sum, spikes, batch, steps_so_far, steps) -> Tensor:
        """Add the rate penalty's gradient for the steps since the last chunk; its loss on the
        trial's last chunk (the penalty is defined on the whole trial's rate)."""
        rate = spikes / (batch * steps_so_far)
        factor = 2 * self.regularisation * (rate - self.target_rate) / (batch * steps)
        grads["w_in"] += factor[:, None] * e_sum["w_in"]
        grads["w_rec"] += factor[:, None] * e_sum["w_rec"]
        if steps_so_far < steps:
            return rate.new_zeros(())
        return self.regularisation * (rate - self.target_rate).pow(2).sum()

    def _per_step(self, target, mask, batch, steps, x) -> tuple[Tensor, Tensor]:
        """Targets and loss weights indexed by step first: ``(T, batch, ...)``, ``(T, batch)``."""
        if self.loss == "mse":
            if target.shape[:2] != (batch, steps):
                raise ValueError(
                    f"mse targets must be (batch, T, n_out), got {tuple(target.shape)}"
                )
            targets = target.transpose(0, 1)
        else:
            if target.dtype not in (torch.int64, torch.int32):
                raise ValueError(
                    f"cross_entropy targets must be integer labels, got {target.dtype}"
                )
            labels = target[:, None].expand(batch, steps) if target.dim() == 1 else target
            targets = labels.transpose(0, 1).long()
        mask = x.new_ones(steps) if mask is None else mask.to(x)
        weights = (mask[:, None].expand(steps, batch) if mask.dim() == 1 else mask.T) / batch
        return targets, weights
