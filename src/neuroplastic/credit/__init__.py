"""Credit assignment: who computes each weight's update direction (written into ``.grad``).

See ``base.py`` for the contract every rule keeps.
"""

from neuroplastic.credit.backprop import Backprop
from neuroplastic.credit.base import LOSSES, CreditRule, loss_per_example, output_error

__all__ = ["LOSSES", "Backprop", "CreditRule", "loss_per_example", "output_error"]
