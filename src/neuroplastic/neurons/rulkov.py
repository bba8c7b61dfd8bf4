"""Rulkov's map-based neuron as a pure step function, as the foraging network of Golden et al.
(2022, Methods, "Neuron models"; after Rulkov 2002 and Bazhenov et al. 2005) uses it, one step
per 0.5 ms:

    V_{n+1} = f(V_n, I_n + beta_n)
    I_{n+1} = I_n - mu (V_n + 1) + mu sigma + mu sigma_n
    beta_n = beta_e I_ext_n,   sigma_n = sigma_e I_ext_n

    f(V, u) = alpha / (1 - V) + u    if V <= 0                                 (subthreshold)
              alpha + u              if 0 < V < alpha + u and V_{n-1} <= 0    (the spike's top)
              -1                     otherwise                                 (after-spike reset)

``V`` is the membrane potential, ``I`` a slow variable for slow conductances (``mu << 1``), and
``I_ext`` the external (synaptic) input of the step, which the caller computes, as for
``lif_step``: in the paper a synaptic event is a conductance, ``I_syn = -g (V_post - V_rp)``.
A spike is the step on which ``V`` turns positive. The paper's values: alpha = 3.65, sigma = 0.06,
mu = 0.0005, beta_e = 0.133, sigma_e = 1. With them the neuron rests at ``V* = sigma - 1`` and
is excitable, not spontaneously active: it fires only when driven (``sigma`` from about 0.09
up makes it fire on its own; ``benchmarks/rulkov_excitability.py``).

State and parameters are explicit NamedTuples; nothing is stored between calls. The map is not
differentiable at its branches and has no surrogate gradient here: it is for simulation and
local plasticity rules.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class RulkovParameters(NamedTuple):
    """Floats, or tensors broadcast against the state ``(batch, neurons)``."""

    alpha: Tensor | float = 3.65
    """Shape of the fast map (the paper's 3.65)."""
    sigma: Tensor | float = 0.06
    """Constant drive of the slow variable; sets the resting potential ``sigma - 1``."""
    mu: Tensor | float = 0.0005
    """Rate of the slow variable (``mu << 1``)."""
    beta_e: Tensor | float = 0.133
    """Weight of the external input in the fast map."""
    sigma_e: Tensor | float = 1.0
    """Weight of the external input in the slow variable."""


GOLDEN2022 = RulkovParameters()
"""The values of Golden et al. (2022)."""


class RulkovState(NamedTuple):
    v: Tensor
    """Membrane potential ``V_n``."""
    v_before: Tensor
    """``V_{n-1}``: the map's spike branch needs it."""
    slow: Tensor
    """The slow variable ``I_n``."""
    z: Tensor
    """Spikes of the last step (0 or 1)."""


def rulkov_resting_state(
    batch: int,
    neurons: int,
    params: RulkovParameters = GOLDEN2022,
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> RulkovState:
    """The fixed point without input: ``V* = sigma - 1`` and ``I* = V* - alpha / (1 - V*)``
    (stable for the paper's sigma; see the module docstring)."""
    sigma = torch.as_tensor(params.sigma, dtype=dtype, device=device)  # the state's dtype
    v = (sigma - 1).expand(batch, neurons).clone()
    slow = v - torch.as_tensor(params.alpha, dtype=dtype, device=device) / (1 - v)
    return RulkovState(v, v.clone(), slow, torch.zeros_like(v))


def rulkov_step(
    external: Tensor | float, state: RulkovState, params: RulkovParameters = GOLDEN2022
) -> tuple[Tensor, RulkovState]:
    """One step of the map with external input ``external`` (``I_ext_n``, broadcast against
    the state); returns the step's spikes and the new state."""
    v, v_before, slow = state.v, state.v_before, state.slow
    external = torch.as_tensor(external, dtype=v.dtype, device=v.device)
    u = slow + params.beta_e * external
    alpha = torch.as_tensor(params.alpha, dtype=v.dtype, device=v.device)
    top = alpha + u
    v_next = torch.where(
        v <= 0,
        # a tensor over a tensor: torch computes `float / tensor` as a reciprocal times the
        # float, a last-bit difference that this map's unstable regimes amplify
        alpha / (1 - v.clamp(max=0)) + u,  # clamp: the unused branch must stay finite
        torch.where((v < top) & (v_before <= 0), top, torch.full_like(v, -1.0)),
    )
    slow_next = slow - params.mu * (v + 1) + params.mu * params.sigma
    slow_next = slow_next + params.mu * params.sigma_e * external
    spikes = ((v_next > 0) & (v <= 0)).to(v.dtype)
    return spikes, RulkovState(v_next, v, slow_next, spikes)
