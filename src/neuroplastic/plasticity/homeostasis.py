"""Homeostatic rules that keep a plastic layer's weights in balance, as the foraging network uses
them around its reward-modulated STDP (Golden et al. 2022, Methods; Sanda et al. 2017). Weights
are ``(..., n_post, n_pre)``; leading dimensions are replicas.

- Synaptic scaling: each postsynaptic neuron ``j`` has a target total input ``W_j^0``, moved once
  per movement cycle by a factor ``1 + delta`` when the neuron fired below its target rate and
  ``1 - delta`` when above (:func:`scale_targets`).
- Gain homeostasis, the authors' code's form for the outputs: each output's whole synaptic
  input is divided by a "resistance" ``R_j``, moved once per cycle by ``1 + delta`` when the
  neuron's running rate is above its target and ``1 - delta`` when below
  (:func:`scale_gains`, on the gain ``1 / R_j``); the weights' totals stay where they are.
- Heterosynaptic normalisation: after plasticity, each neuron's inputs are rescaled together to
  their target total, ``W_ji <- W_ji W_j^0 / sum_i W_ji`` (:func:`normalise_inputs`): a synapse
  grows only at its neighbours' expense.
- Balanced feed-forward inhibition: each presynaptic neuron ``i`` also inhibits every output,
  with the negative mean of its excitatory weights, ``WI_ji = -mean_j W_ji``
  (:func:`balanced_inhibition`), so a uniform output pattern cancels and only the differences
  between outputs drive them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalise_inputs(weight: Tensor, targets: Tensor) -> Tensor:
    """Each row (postsynaptic neuron) rescaled to sum to its ``target`` ``(..., n_post)``."""
    totals = weight.sum(-1, keepdim=True)
    if (totals <= 0).any():
        raise ValueError("normalise_inputs needs positive input totals (excitatory weights)")
    return weight * (targets[..., None] / totals)


def scale_targets(targets: Tensor, rates: Tensor, target_rate: float, delta: float) -> Tensor:
    """``W_j^0`` times ``1 + delta`` where ``rates`` (same shape) lie below ``target_rate``,
    ``1 - delta`` where above, unchanged where equal."""
    factor = torch.where(rates < target_rate, 1.0 + delta, 1.0)
    factor = torch.where(rates > target_rate, 1.0 - delta, factor)
    return targets * factor


def scale_gains(gains: Tensor, rates: Tensor, target_rate: float, delta: float) -> Tensor:
    """Input gains ``1 / R_j``, the resistance ``R_j`` times ``1 + delta`` where ``rates`` lie
    above ``target_rate`` and ``1 - delta`` where below (the authors' ``spike_rate_adaptation``
    for the output layer), unchanged where equal."""
    factor = torch.where(rates > target_rate, 1.0 + delta, 1.0)
    factor = torch.where(rates < target_rate, 1.0 - delta, factor)
    return gains / factor


def balanced_inhibition(weight: Tensor) -> Tensor:
    """``WI_ji = -mean_j W_ji``, broadcast to the excitatory weights' shape."""
    return (-weight.mean(-2, keepdim=True)).expand_as(weight)
