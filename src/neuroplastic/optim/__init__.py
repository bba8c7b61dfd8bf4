"""Step-size dynamics: how a step is taken from ``param.grad``, whoever wrote it.

Every optimiser here is a ``torch.optim.Optimizer`` that only reads ``p.grad``, so it pairs with
any credit-assignment rule (backprop, feedback alignment, e-prop, ...). Each numeric
hyper-parameter may be a float or a 1-D tensor of per-replica values, applied along dim 0 of every
parameter of its group (see ``neuroplastic.optim.momentum``).

- :class:`AcceleratedSGD`: the time-dependent, per-weight step of Sardi et al. (2020), Eq. 1,
  in three variants (every step, sign agreement, graded), with the momentum of Eq. 2.
- :class:`MomentumSGD`: Eq. 2 of the same paper, momentum with weight regularisation.
- :class:`DeltaBarDelta`: Jacobs (1988), the prior art of per-weight growing steps.
- :class:`ReplicaAdam`: Adam (Kingma & Ba 2015) as ``torch.optim.Adam``, with per-replica values.
- :class:`RLS`: recursive least squares, FORCE's online readout learning (Sussillo & Abbott
  2009); its state is the inverse correlation matrix.
"""

from .accelerated import ON_DISAGREEMENT, VARIANTS, AcceleratedSGD, update_eta
from .adam import ReplicaAdam
from .delta_bar_delta import DeltaBarDelta
from .momentum import MomentumSGD
from .rls import RLS

__all__ = [
    "AcceleratedSGD",
    "DeltaBarDelta",
    "MomentumSGD",
    "ON_DISAGREEMENT",
    "RLS",
    "ReplicaAdam",
    "VARIANTS",
    "update_eta",
]
