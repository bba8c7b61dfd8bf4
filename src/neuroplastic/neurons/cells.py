"""Thin modules over the step functions: parameters as module state, per-neuron time constants
(optionally trainable), the state passed in and out explicitly."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neuroplastic.neurons.lif import LIFParameters, LIFState, decay, initial_state, lif_step
from neuroplastic.neurons.surrogate import SpikeFunction, bellec2020_pseudo_derivative


class LIFCell(nn.Module):
    """A population of LIF neurons, or ALIF neurons when ``tau_a`` is given.

    Args:
        neurons: population size.
        tau_m: membrane time constant(s), a float or one per neuron (in units of ``dt``).
        v_th: baseline threshold.
        refractory: steps without a spike after one.
        tau_a: adaptation time constant(s) (ALIF); None: LIF.
        beta: threshold adaptation strength(s) (ALIF).
        dt: the time step.
        train_tau: make ``tau_m`` (and ``tau_a``) parameters that learn (kept positive through a
            log parametrisation).
        spike: the surrogate spike function (default: Bellec et al. 2020, dampening 0.3).
    """

    def __init__(
        self,
        neurons: int,
        *,
        tau_m: float | Tensor = 20.0,
        v_th: float = 0.6,
        refractory: int = 0,
        tau_a: float | Tensor | None = None,
        beta: float | Tensor = 0.0,
        dt: float = 1.0,
        train_tau: bool = False,
        spike: SpikeFunction | None = None,
    ):
        super().__init__()
        if v_th <= 0 or refractory < 0 or dt <= 0:
            raise ValueError("need v_th > 0, refractory >= 0 and dt > 0")
        self.neurons, self.v_th, self.refractory, self.dt = neurons, v_th, refractory, dt
        self.spike = spike if spike is not None else bellec2020_pseudo_derivative()
        log_tau_m = torch.log(torch.as_tensor(tau_m, dtype=torch.float32).expand(neurons).clone())
        self.log_tau_m = nn.Parameter(log_tau_m, requires_grad=train_tau)
        if tau_a is None:
            self.log_tau_a = None
        else:
            log_tau_a = torch.log(torch.as_tensor(tau_a, dtype=torch.float32).expand(neurons))
            self.log_tau_a = nn.Parameter(log_tau_a.clone(), requires_grad=train_tau)
        self.register_buffer(
            "beta", torch.as_tensor(beta, dtype=torch.float32).expand(neurons).clone()
        )

    def parameters_now(self) -> LIFParameters:
        """The step functions' parameters from the module's current time constants."""
        alpha = decay(self.log_tau_m.exp(), self.dt)
        if self.log_tau_a is None:
            return LIFParameters(alpha, self.v_th, self.refractory)
        rho = decay(self.log_tau_a.exp(), self.dt)
        return LIFParameters(alpha, self.v_th, self.refractory, self.beta, rho)

    def initial_state(self, batch: int) -> LIFState:
        return initial_state(batch, self.neurons, dtype=self.log_tau_m.dtype,
                             device=self.log_tau_m.device)  # fmt: skip

    def forward(self, current: Tensor, state: LIFState | None = None) -> tuple[Tensor, LIFState]:
        """One step: ``(spikes, new state)``; a missing state starts at rest."""
        if state is None:
            state = self.initial_state(current.shape[0])
        return lif_step(current, state, self.parameters_now(), self.spike)
