"""Delta-bar-delta: per-weight learning rates that grow while the gradient keeps its sign.

R. A. Jacobs, "Increased rates of convergence through learning rate adaptation", Neural Networks
1(4), 295-307 (1988). The prior art that the accelerated steps of Sardi et al. (2020) should be
compared with (see ``accelerated.py``): both grow a weight's step while its gradients are coherent.
The differences: delta-bar-delta compares the gradient with an exponential average of past
gradients (bar-delta) rather than with the last one, grows the rate additively and shrinks it
multiplicatively, and has no decay with training frequency (Eq. 1 of Sardi et al.).

The rule below follows the brief of this project, which states Jacobs' rule; we could not read the
1988 paper itself here, so equation numbers are not cited. The order within a step (the rate is
updated from g_t and bar-delta_{t-1}, then used for the step with g_t; bar-delta is updated last)
is the usual statement of the rule; a first step therefore uses the initial rate unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .momentum import (
    NON_NEGATIVE,
    UNIT,
    Hyper,
    _check_hyper,
    _per_replica,
    _Range,
    _ReplicaOptimizer,
)

__all__ = ["DeltaBarDelta"]

_THETA = _Range(0.0, 1.0, high_open=True)


class DeltaBarDelta(_ReplicaOptimizer):
    r"""Jacobs' (1988) delta-bar-delta rule: a learning rate per weight.

    Cite: R. A. Jacobs, "Increased rates of convergence through learning rate adaptation", Neural
    Networks 1, 295-307 (1988).

    In the code's names (all operations per element)::

        input: lr (initial rate), kappa, phi, theta, maximize
        rate <- lr,  bar_delta <- 0                      (state "rate", "bar_delta")
        for t = 1, 2, ...:
            g <- -p.grad if maximize else p.grad         (dC/dW, any credit-assignment rule)
            coherence <- sign(g) * sign(bar_delta)       (the sign of g_t * bar_delta_{t-1})
            rate <- rate + kappa                  where coherence > 0   (additive increase)
            rate <- rate * (1 - phi)              where coherence < 0   (multiplicative decrease)
                                                  (unchanged where coherence == 0)
            W <- W - rate * g
            bar_delta <- (1 - theta) * g + theta * bar_delta

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: the initial rate of every weight (>= 0). Default 1e-3.
        kappa: additive increase of a rate (>= 0). Default 1e-4.
        phi: fraction by which a rate shrinks, in [0, 1]. Default 0.1.
        theta: weight of the past in bar-delta, in [0, 1); theta = 0 compares each gradient with
            the previous one. Default 0.7.
        maximize: ascend the objective instead of descending it. Default False.

    The defaults are placeholders, not Jacobs' values; tune them. Every numeric hyper-parameter
    may be a float or a 1-D tensor of per-replica values applied along dim 0 of each parameter
    (see ``neuroplastic.optim.momentum``). A step in which ``p.grad is None`` leaves p's rate and
    bar-delta unchanged. In floating point the decrease is computed as ``rate - rate * phi`` and
    bar-delta as ``torch.lerp(g, bar_delta, theta)``, both equal to the lines above.

    State per parameter: ``step``, ``rate`` and ``bar_delta``.
    """

    _hyper_ranges = {"lr": NON_NEGATIVE, "kappa": NON_NEGATIVE, "phi": UNIT, "theta": _THETA}

    def __init__(
        self,
        params: Any,
        lr: Hyper = 1e-3,
        kappa: Hyper = 1e-4,
        phi: Hyper = 0.1,
        theta: Hyper = 0.7,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": _check_hyper("lr", lr, NON_NEGATIVE),
            "kappa": _check_hyper("kappa", kappa, NON_NEGATIVE),
            "phi": _check_hyper("phi", phi, UNIT),
            "theta": _check_hyper("theta", theta, _THETA),
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one delta-bar-delta step for every parameter whose ``.grad`` is set.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = self._gradient(p, group["maximize"])
                state = self.state[p]
                if "rate" not in state:
                    state["step"] = 0
                    state["rate"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["rate"].add_(_per_replica(group["lr"], p))
                    state["bar_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                rate, bar_delta = state["rate"], state["bar_delta"]
                kappa = _per_replica(group["kappa"], p)
                phi = _per_replica(group["phi"], p)
                theta = _per_replica(group["theta"], p)

                coherence = torch.sign(g) * torch.sign(bar_delta)  # no underflow, unlike g * bar
                grown = torch.where(coherence > 0, rate + kappa, rate)
                rate.copy_(torch.where(coherence < 0, rate - rate * phi, grown))
                p.addcmul_(g, rate, value=-1.0)
                bar_delta.copy_(torch.lerp(g, bar_delta, theta))
                state["step"] += 1
        return loss
