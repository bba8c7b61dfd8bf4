"""Credit assignment: who computes each weight's update direction (written into ``.grad``).

Rules attach to any ``nn.Module`` (see ``base.py`` for the contract every rule keeps and
``layers.py`` for the layers they cover); ``neuroplastic.testing.check_rule`` checks a rule
against that contract.
"""

from neuroplastic.credit.backprop import Backprop
from neuroplastic.credit.base import (
    LOSSES,
    CreditRule,
    FeedbackMatrices,
    LayerLocalRule,
    loss_per_example,
    output_error,
)
from neuroplastic.credit.diagnostics import feedback_weight_angles, update_angles
from neuroplastic.credit.direct_feedback_alignment import DirectFeedbackAlignment
from neuroplastic.credit.equilibrium_propagation import EquilibriumPropagation
from neuroplastic.credit.feedback_alignment import FeedbackAlignment
from neuroplastic.credit.node_perturbation import NodePerturbation
from neuroplastic.credit.serial_perturbation import SerialPerturbation
from neuroplastic.credit.sign_symmetry import SignSymmetry
from neuroplastic.credit.weight_perturbation import (
    VectorizeError,
    WeightPerturbation,
    loss_closure,
)

# Every rule, by name; each is built as ``RULES[name](model, generator=...)``. The shared
# conformance suite (tests/test_credit_conformance.py) runs over this dict.
RULES: dict[str, type[CreditRule]] = {
    "backprop": Backprop,
    "fa": FeedbackAlignment,
    "dfa": DirectFeedbackAlignment,
    "sign-symmetry": SignSymmetry,
    "node-perturbation": NodePerturbation,
    "weight-perturbation": WeightPerturbation,
    "serial-perturbation": SerialPerturbation,
    "equilibrium-propagation": EquilibriumPropagation,
}

__all__ = [
    "LOSSES",
    "RULES",
    "Backprop",
    "CreditRule",
    "DirectFeedbackAlignment",
    "EquilibriumPropagation",
    "FeedbackAlignment",
    "FeedbackMatrices",
    "LayerLocalRule",
    "NodePerturbation",
    "SerialPerturbation",
    "SignSymmetry",
    "VectorizeError",
    "WeightPerturbation",
    "feedback_weight_angles",
    "loss_closure",
    "loss_per_example",
    "output_error",
    "update_angles",
]
