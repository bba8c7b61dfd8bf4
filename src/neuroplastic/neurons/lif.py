"""Leaky integrate-and-fire (LIF) and adaptive LIF (ALIF) neurons as pure step functions.

Bellec et al. 2020 (e-prop), Methods, with dt the time step:

    v_j^t = alpha_j v_j^{t-1} + I_j^t - z_j^{t-1} v_th               (reset by subtraction)
    A_j^t = v_th + beta_j a_j^t,   a_j^t = rho_j a_j^{t-1} + z_j^{t-1}   (ALIF; LIF: beta = 0)
    z_j^t = H((v_j^t - A_j^t) / v_th), held at 0 for ``refractory`` steps after a spike
    alpha = exp(-dt / tau_m),  rho = exp(-dt / tau_a)

``I^t`` is the input current of step t (``W_in x^t + W_rec z^{t-1}`` in a recurrent network: the
caller computes it, which keeps the steps free of weights and lets a network zero the diagonal of
``W_rec``, no self-connections). State and parameters are explicit NamedTuples; nothing is stored
between calls.

Which terms are detached: by default the reset term ``z^{t-1} v_th`` uses the previous spikes
*detached*, as e-prop's eligibility traces assume (the paper ignores the reset's derivative), so
BPTT through these steps and e-prop differentiate the same graph (with ``W_rec = 0`` their
gradients agree exactly). ``LIFParameters(detach_reset=False)`` differentiates the reset too, as
the authors' BPTT baseline does: over long trials its ``-v_th dz/dv`` term damps the membrane's
backward recursion, and without it BPTT's gradients can explode (at the evidence-accumulation
size, 2250 steps, by many orders of magnitude). The adaptation ``a`` is never detached: ALIF's
traces carry it (``eps_a``). A refractory neuron's spike and its pseudo-derivative are both 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuroplastic.neurons.surrogate import (
    SpikeFunction,
    bellec2020_pseudo_derivative,
    pseudo_derivative,
)


class LIFParameters(NamedTuple):
    """Per-neuron tensors broadcast against the state ``(batch, neurons)`` (floats work too)."""

    alpha: Tensor | float
    """Membrane decay per step, ``exp(-dt / tau_m)``."""
    v_th: float = 0.6
    """Baseline threshold (also the reset amount and the pseudo-derivative's scale)."""
    refractory: int = 0
    """Steps without a spike after one (``n_ref``)."""
    beta: Tensor | float = 0.0
    """Threshold adaptation strength (0: plain LIF)."""
    rho: Tensor | float = 0.0
    """Adaptation decay per step, ``exp(-dt / tau_a)`` (ALIF)."""
    detach_reset: bool = True
    """Whether the reset's gradient is dropped (see the module docstring)."""


class LIFState(NamedTuple):
    v: Tensor
    """Membrane potential after the last step."""
    z: Tensor
    """Spikes of the last step (0 or 1)."""
    a: Tensor
    """Threshold adaptation (stays 0 for LIF)."""
    refractory: Tensor
    """Steps of refractoriness left (integers stored in the state's dtype)."""


def decay(tau: Tensor | float, dt: float = 1.0) -> Tensor | float:
    """``exp(-dt / tau)``: the per-step decay of a time constant ``tau`` (same units as dt)."""
    if isinstance(tau, Tensor):
        return torch.exp(-dt / tau)
    return math.exp(-dt / tau)


def initial_state(
    batch: int, neurons: int, *, dtype: torch.dtype = torch.float32, device=None
) -> LIFState:
    """Everything at rest: no potential, no spikes, no adaptation, not refractory."""
    zeros = torch.zeros(batch, neurons, dtype=dtype, device=device)
    return LIFState(zeros, zeros.clone(), zeros.clone(), zeros.clone())


_DEFAULT_SPIKE = bellec2020_pseudo_derivative()


def threshold(state_a: Tensor, params: LIFParameters) -> Tensor | float:
    """``A = v_th + beta a``."""
    return params.v_th + params.beta * state_a


def lif_step(
    current: Tensor,
    state: LIFState,
    params: LIFParameters,
    spike: SpikeFunction = _DEFAULT_SPIKE,
) -> tuple[Tensor, LIFState]:
    """One step of the (A)LIF neurons driven by ``current`` ``(batch, neurons)``:
    ``(spikes, new state)``. ALIF when ``params.beta`` is non-zero (see :func:`alif_step`)."""
    previous = state.z.detach() if params.detach_reset else state.z  # (module docstring)
    a = params.rho * state.a + state.z
    v = params.alpha * state.v + current - previous * params.v_th
    distance = (v - threshold(a, params)) / params.v_th
    ready = (state.refractory <= 0).to(v.dtype)
    z = spike(distance) * ready
    refractory = torch.where(
        z.detach() > 0,
        torch.full_like(state.refractory, float(params.refractory)),
        (state.refractory - 1).clamp(min=0),
    )
    return z, LIFState(v, z, a, refractory)


def alif_step(
    current: Tensor,
    state: LIFState,
    params: LIFParameters,
    spike: SpikeFunction = _DEFAULT_SPIKE,
) -> tuple[Tensor, LIFState]:
    """One step of adaptive LIF neurons: :func:`lif_step` with the threshold
    ``A = v_th + beta a``, ``a^t = rho a^{t-1} + z^{t-1}``; requires ``params.beta`` and
    ``params.rho`` (Bellec et al. 2020: ``beta`` about 1.7 (1 - rho) / (1 - alpha))."""
    return lif_step(current, state, params, spike)


def pseudo_derivative_of(
    before: LIFState, after: LIFState, params: LIFParameters, dampening: float = 0.3
) -> Tensor:
    """``psi^t = (gamma / v_th) max(0, 1 - |(v^t - A^t) / v_th|)`` for the step that took
    ``before`` to ``after``, 0 where the neuron was refractory during it: the quantity e-prop's
    eligibility traces use, equal to autograd's ``dz/dv`` through the step."""
    distance = (after.v - threshold(after.a, params)) / params.v_th
    psi = pseudo_derivative(distance, dampening) / params.v_th
    return psi * (before.refractory <= 0).to(psi.dtype)
