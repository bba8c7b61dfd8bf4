"""A recurrent network of LIF and ALIF neurons with a leaky readout (Bellec et al. 2020, Methods),
built from the ``neurons`` step functions; BPTT is autograd through :meth:`RecurrentLIF.forward`.

    I^t = W_in x^t + W_rec z^{t-1}            (W_rec with a zero diagonal: no self-connections)
    z^t, state^t = lif_step(I^t, state^{t-1})  (the last ``n_adaptive`` neurons are ALIF)
    y^t = kappa y^{t-1} + W_out z^t + b_out,   kappa = exp(-dt / tau_out)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from neuroplastic.kernels import check_backend, resolve_backend
from neuroplastic.neurons.lif import LIFParameters, LIFState, decay, initial_state, lif_step
from neuroplastic.neurons.surrogate import bellec2020_pseudo_derivative


def bellec2020_beta(tau_m: float, tau_a: float, dt: float = 1.0, strength: float = 1.7) -> float:
    """The adaptation strength of the authors' evidence-accumulation set-up,
    ``beta = 1.7 (1 - rho) / (1 - alpha)``: an adaptation that, integrated over ``tau_a``, moves the
    threshold as much as ``strength`` times a spike moves the membrane."""
    return strength * (1.0 - decay(tau_a, dt)) / (1.0 - decay(tau_m, dt))


class RecurrentLIF(nn.Module):
    """``n_in`` inputs, ``n_rec`` spiking neurons (the last ``n_adaptive`` of them ALIF), ``n_out``
    leaky readouts.

    Weights start Gaussian, scaled by 1/sqrt(fan-in), from ``generator``. ``beta`` defaults to
    :func:`bellec2020_beta`. The neuron parameters are buffers, so ``.to()`` and ``.double()`` move
    them with the weights. ``detach_reset=False`` lets BPTT differentiate the reset (see
    ``neurons.lif``); e-prop's traces ignore the reset's derivative either way. ``backend``: how
    :meth:`forward` runs its time loop, ``torch`` (the step functions, differentiated by autograd),
    ``numba`` (``kernels.rsnn_functions``: the loop compiled, BPTT's backward as its adjoint
    recursion; CPU only, tested equal), ``triton`` (the same as fused GPU kernels, tested equal
    in Triton's interpreter), or ``auto`` (Numba on the CPU, Triton on a CUDA GPU, when
    installed).
    """

    def __init__(
        self,
        n_in: int,
        n_rec: int,
        n_out: int,
        *,
        n_adaptive: int = 0,
        tau_m: float = 20.0,
        tau_a: float = 2000.0,
        beta: float | None = None,
        tau_out: float = 20.0,
        v_th: float = 0.6,
        refractory: int = 0,
        dampening: float = 0.3,
        detach_reset: bool = True,
        dt: float = 1.0,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        check_backend(backend)
        self.backend = backend
        if not 0 <= n_adaptive <= n_rec:
            raise ValueError(f"n_adaptive must lie in 0..n_rec={n_rec}, got {n_adaptive}")
        self.n_in, self.n_rec, self.n_out, self.n_adaptive = n_in, n_rec, n_out, n_adaptive
        self.alpha, self.rho = decay(tau_m, dt), decay(tau_a, dt)
        self.v_th, self.refractory, self.detach_reset = v_th, refractory, detach_reset
        self.kappa = decay(tau_out, dt)
        self.dampening = dampening
        self.spike = bellec2020_pseudo_derivative(dampening)
        strength = bellec2020_beta(tau_m, tau_a, dt) if beta is None else beta
        betas = torch.zeros(n_rec)
        betas[n_rec - n_adaptive :] = strength
        self.register_buffer("beta", betas)
        gen = generator
        self.w_in = nn.Parameter(torch.randn(n_rec, n_in, generator=gen) / math.sqrt(n_in))
        self.w_rec = nn.Parameter(torch.randn(n_rec, n_rec, generator=gen) / math.sqrt(n_rec))
        self.w_out = nn.Parameter(torch.randn(n_out, n_rec, generator=gen) / math.sqrt(n_rec))
        self.b_out = nn.Parameter(torch.zeros(n_out))
        self.register_buffer("no_self", 1.0 - torch.eye(n_rec))

    @property
    def neuron(self) -> LIFParameters:
        """The neurons' parameters for the step functions (``beta`` 0 for the LIF neurons)."""
        beta = self.beta if self.n_adaptive else 0.0
        return LIFParameters(
            self.alpha, self.v_th, self.refractory, beta, self.rho, self.detach_reset
        )

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
        backend = resolve_backend(self.backend, x.device)
        if backend != "torch":
            from neuroplastic.kernels.rsnn_functions import LeakySum, RecurrentSpikes

            current = x.transpose(0, 1) @ self.w_in.T  # (T, batch, n_rec)
            spikes = RecurrentSpikes.apply(
                current, self.recurrent_weights(), self.beta, self.alpha, self.v_th,
                self.refractory, self.rho, self.dampening, self.detach_reset, backend,
            )  # fmt: skip
            y = LeakySum.apply(spikes @ self.w_out.T + self.b_out, self.kappa, backend)
            return y.transpose(0, 1), spikes.transpose(0, 1)
        batch, steps, _ = x.shape
        state = self.initial_state(batch)
        y = torch.zeros(batch, self.n_out, dtype=x.dtype, device=x.device)
        outputs, spikes = [], []
        for t in range(steps):
            z, state, y = self.step(x[:, t], state, y)
            outputs.append(y)
            spikes.append(z)
        return torch.stack(outputs, 1), torch.stack(spikes, 1)
