"""A recurrent network of LIF neurons with a leaky readout (Bellec et al. 2020, Methods), built
from the ``neurons`` step functions; BPTT is autograd through :meth:`RecurrentLIF.forward`.

    I^t = W_in x^t + W_rec z^{t-1}            (W_rec with a zero diagonal: no self-connections)
    z^t, state^t = lif_step(I^t, state^{t-1})
    y^t = kappa y^{t-1} + W_out z^t + b_out,   kappa = exp(-dt / tau_out)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from neuroplastic.neurons.lif import LIFParameters, LIFState, decay, initial_state, lif_step
from neuroplastic.neurons.surrogate import bellec2020_pseudo_derivative


class RecurrentLIF(nn.Module):
    """``n_in`` inputs, ``n_rec`` LIF neurons, ``n_out`` leaky readouts.

    Weights start as in the authors' code in spirit: Gaussian, scaled by 1/sqrt(fan-in), from
    ``generator``.
    """

    def __init__(
        self,
        n_in: int,
        n_rec: int,
        n_out: int,
        *,
        tau_m: float = 20.0,
        tau_out: float = 20.0,
        v_th: float = 0.6,
        refractory: int = 0,
        dampening: float = 0.3,
        dt: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.n_in, self.n_rec, self.n_out = n_in, n_rec, n_out
        self.neuron = LIFParameters(decay(tau_m, dt), v_th, refractory)
        self.kappa = decay(tau_out, dt)
        self.dampening = dampening
        self.spike = bellec2020_pseudo_derivative(dampening)
        gen = generator
        self.w_in = nn.Parameter(torch.randn(n_rec, n_in, generator=gen) / math.sqrt(n_in))
        self.w_rec = nn.Parameter(torch.randn(n_rec, n_rec, generator=gen) / math.sqrt(n_rec))
        self.w_out = nn.Parameter(torch.randn(n_out, n_rec, generator=gen) / math.sqrt(n_rec))
        self.b_out = nn.Parameter(torch.zeros(n_out))
        self.register_buffer("no_self", 1.0 - torch.eye(n_rec))

    def recurrent_weights(self) -> Tensor:
        """``W_rec`` with its diagonal held at zero."""
        return self.w_rec * self.no_self

    def initial_state(self, batch: int) -> LIFState:
        return initial_state(batch, self.n_rec, dtype=self.w_in.dtype, device=self.w_in.device)

    def step(self, x: Tensor, state: LIFState, y: Tensor) -> tuple[Tensor, LIFState, Tensor]:
        """One time step on inputs ``x`` ``(batch, n_in)``: ``(spikes, state, readout)``."""
        current = x @ self.w_in.T + state.z @ self.recurrent_weights().T
        z, state = lif_step(current, state, self.neuron, self.spike)
        y = self.kappa * y + z @ self.w_out.T + self.b_out
        return z, state, y

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs ``(batch, T, n_in)`` -> readouts ``(batch, T, n_out)`` and spikes
        ``(batch, T, n_rec)``; differentiable through time (BPTT)."""
        batch, steps, _ = x.shape
        state = self.initial_state(batch)
        y = torch.zeros(batch, self.n_out, dtype=x.dtype, device=x.device)
        outputs, spikes = [], []
        for t in range(steps):
            z, state, y = self.step(x[:, t], state, y)
            outputs.append(y)
            spikes.append(z)
        return torch.stack(outputs, 1), torch.stack(spikes, 1)
