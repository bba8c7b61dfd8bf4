"""Spiking neurons as pure step functions with explicit state (``lif_step``, ``alif_step``,
Rulkov's map ``rulkov_step``), surrogate gradients named after their papers, and thin modules
on top (``LIFCell``)."""

from neuroplastic.neurons.cells import LIFCell
from neuroplastic.neurons.lif import (
    LIFParameters,
    LIFState,
    alif_step,
    decay,
    initial_state,
    lif_step,
    pseudo_derivative_of,
)
from neuroplastic.neurons.rulkov import (
    RulkovParameters,
    RulkovState,
    rulkov_resting_state,
    rulkov_step,
)
from neuroplastic.neurons.surrogate import bellec2020_pseudo_derivative, pseudo_derivative

__all__ = [
    "LIFCell",
    "LIFParameters",
    "LIFState",
    "RulkovParameters",
    "RulkovState",
    "alif_step",
    "bellec2020_pseudo_derivative",
    "decay",
    "initial_state",
    "lif_step",
    "pseudo_derivative",
    "pseudo_derivative_of",
    "rulkov_resting_state",
    "rulkov_step",
]
