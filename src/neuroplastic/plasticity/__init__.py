"""Local plasticity rules: synaptic changes from the activity on either side of a synapse (and,
where the rule says so, a reward). Each is a pure step function with explicit state, equations
in its module's docstring; ``rules`` wraps them in the project's contract (write minus the change
into ``param.grad``, so any optimiser, or plain SGD with lr 1, applies it)."""

from neuroplastic.plasticity.exploratory_hebbian import ExploratoryHebbian
from neuroplastic.plasticity.hebbian import HebbianRule, SimilarityMatching
from neuroplastic.plasticity.homeostasis import (
    balanced_inhibition,
    normalise_inputs,
    scale_gains,
    scale_targets,
)
from neuroplastic.plasticity.reward_stdp import RewardSTDPParameters
from neuroplastic.plasticity.rules import STDP, RewardSTDP
from neuroplastic.plasticity.sleep_replay import SleepReplay, SRCParameters
from neuroplastic.plasticity.stdp import STDPParameters, STDPState, initial_state, stdp_step

__all__ = [
    "ExploratoryHebbian", "HebbianRule", "SimilarityMatching",
    "STDP", "RewardSTDP", "RewardSTDPParameters", "SRCParameters", "SleepReplay",
    "STDPParameters", "STDPState",
    "balanced_inhibition", "initial_state", "normalise_inputs", "scale_gains", "scale_targets",
    "stdp_step",
]  # fmt: skip
