"""Accelerated, time-dependent learning steps after Sardi et al. (2020).

Sardi, Vardi, Meir, Tevet, Hodassman, Goldental and Kanter, "Brain experiments imply adaptation
mechanisms which outperform common AI learning algorithms", Scientific Reports 10:6923 (2020),
doi:10.1038/s41598-020-63755-5, arXiv:2005.04106. Paper sheet:
``shared/papers/kanter2020-accelerated-learning.md``.

What the paper fixes, and what it leaves to us
----------------------------------------------
Eq. 1, the time-dependent adaptation step, ``eta_{t+1} = eta_t * exp(-tau / tau_0) + Delta``,
and Eq. 2, the momentum baseline with weight regularisation, are taken from the paper sheet. For
the two accelerated methods compared on MNIST, the text we could read (abstract and introduction of
the published article; the sheet's quotes) says only that "a local learning step-size increases for
coherent consecutive learning steps" / "eta increased based on coherent consecutive gradients".
The exact form of the increment of those methods was *not* available to us: a search of the
stored public text (the nature.com article pages and listings of arXiv:2005.04106) returned the
abstract and the introduction only, not the results or the methods. So:

- ``variant="every_step"`` (A1) is Eq. 1 taken literally: Delta is added at every learning step of
  the weight. The paper's, as far as Eq. 1 goes.
- ``variant="sign_agreement"`` (A2) is our reading of the paper's MNIST methods: Delta is added
  only where the current and the previous gradient of the weight agree in sign ("coherent
  consecutive gradients"); where they disagree eta only decays (``on_disagreement="decay"``) or
  is reset to lr (``"reset"``). We take this as the paper's method, with the caveat above; the
  choice between decay and reset is ours.
- ``variant="graded"`` (A3) is ours: the increment is graded by the product of consecutive
  gradients, ``Delta * tanh(beta * g_t * g_{t-1})``, which is negative for disagreeing gradients.
  eta is clamped at 0 so that a step never points uphill (ours too).

Choices of ours that hold for all variants: the coherence test uses the gradients dC/dW (``.grad``)
only, not the momentum or regularisation terms; eta changes only in a step in which the weight
has a gradient (a step with ``p.grad is None`` is not a learning step for ``p``, so it does not
decay); the eta used at learning step t already includes the increment earned by (g_t, g_{t-1}),
so the first step uses eta = lr exactly (as in delta-bar-delta, see ``delta_bar_delta.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .momentum import (
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    Hyper,
    _check_choice,
    _check_hyper,
    _momentum_step,
    _per_replica,
    _ReplicaOptimizer,
)

__all__ = ["AcceleratedSGD", "VARIANTS", "ON_DISAGREEMENT"]

VARIANTS = ("every_step", "sign_agreement", "graded")
"""A1 (Eq. 1 literally), A2 (increment gated by sign agreement), A3 (graded increment)."""

ON_DISAGREEMENT = ("decay", "reset")


def _decay_from_tau(tau: Any, tau_0: Any, where: str = "") -> Hyper:
    """``exp(-tau / tau_0)``, for floats or per-replica tensors (computed in float64)."""
    tau = _check_hyper("tau", tau, NON_NEGATIVE, where)
    tau_0 = _check_hyper("tau_0", tau_0, POSITIVE, where)
    if not isinstance(tau, Tensor) and not isinstance(tau_0, Tensor):
        return math.exp(-tau / tau_0)
    n = tau.shape[0] if isinstance(tau, Tensor) else tau_0.shape[0]
    taus = tau.tolist() if isinstance(tau, Tensor) else [tau] * n
    tau_0s = tau_0.tolist() if isinstance(tau_0, Tensor) else [tau_0] * n
    if len(taus) != len(tau_0s):
        raise ValueError(
            f"{where}tau and tau_0 must have the same number of replicas, "
            f"got {len(taus)} and {len(tau_0s)}"
        )
    # math.exp, element by element, so that a replica gets bit for bit the decay of a float run.
    return torch.tensor(
        [math.exp(-a / b) for a, b in zip(taus, tau_0s, strict=True)], dtype=torch.float64
    )


def update_eta(
    eta: Tensor,
    g: Tensor,
    g_prev: Tensor,
    *,
    lr: Hyper,
    delta: Hyper,
    decay: Hyper,
    beta: Hyper,
    variant: str,
    on_disagreement: str,
) -> Tensor:
    """Eq. 1 with a variant's increment, in place on ``eta``; returns ``eta``.

    ``g`` and ``g_prev`` are this step's and the previous step's gradient of the same weights.
    Hyper-parameters are floats or tensors that broadcast against ``eta``.
    """
    eta.mul_(decay)  # eta_{t-1} * exp(-tau / tau_0)
    if variant == "every_step":
        eta.add_(delta)
    elif variant == "sign_agreement":
        # sign(g) * sign(g_prev), not sign(g * g_prev): the product of two tiny gradients can
        # underflow to 0 and hide their agreement.
        coherence = torch.sign(g).mul_(torch.sign(g_prev))  # -1, 0 or +1 per weight
        if on_disagreement == "reset":
            eta.copy_(torch.where(coherence < 0, lr, eta))
        # eta + [coherence > 0] * delta, with fewer passes over memory than a where(): the
        # product is exactly delta or 0, so the sum rounds as eta + delta or is eta itself.
        eta.addcmul_(coherence.clamp_(min=0.0), torch.as_tensor(delta, dtype=eta.dtype))
    elif variant == "graded":
        increment = torch.tanh((g * g_prev).mul_(beta)).mul_(delta)
        eta.add_(increment).clamp_(min=0.0)
    else:  # guarded by the constructor; kept for direct callers
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return eta


class AcceleratedSGD(_ReplicaOptimizer):
    r"""Per-weight, time-dependent learning step of Sardi et al. (2020), Eq. 1, with Eq. 2.

    Every weight has its own step eta, a state driven by the training history (Eq. 1)::

        eta_{t+1} = eta_t * exp(-tau / tau_0) + Delta                                   (Eq. 1)

    Frequent coherent training (many increments per decay time tau_0) lets eta accumulate towards
    Delta / (1 - exp(-tau / tau_0)); sparse training lets it decay. The weights then move by the
    momentum rule of Eq. 2 with the fixed eta_0 replaced by this eta::

        dW_{t+1} = mu * dW_t - eta * dC/dW - alpha * W_t,     W_{t+1} = W_t + dW_{t+1}   (Eq. 2)

    The algorithm, in the code's names (all operations per element; ``decay`` = exp(-tau/tau_0))::

        input: lr (eta_0), delta (Delta), decay, beta, momentum (mu),
               weight_regularisation (alpha), variant, on_disagreement, maximize
        for t = 1, 2, ...:
            g <- -p.grad if maximize else p.grad                   (dC/dW, any credit rule)
            if t == 1:
                eta <- lr                                          (state "eta")
            else:
                eta <- eta * decay                                 (Eq. 1, decay part)
                if variant == "every_step":                        (A1: Eq. 1 literally)
                    eta <- eta + delta
                if variant == "sign_agreement":                    (A2: gated increment)
                    coherence <- sign(g) * sign(g_prev)
                    eta <- eta + delta          where coherence > 0
                    eta <- lr                   where coherence < 0 and on_disagreement == "reset"
                if variant == "graded":                            (A3: graded increment, ours)
                    eta <- max(0, eta + delta * tanh(beta * g * g_prev))
            dW <- mu * dW - eta * g - alpha * W                   (Eq. 2; state "momentum_buffer")
            W <- W + dW
            g_prev <- g                                            (state "prev_grad")

    Which variant is the paper's: see the module docstring. In short, A1 is Eq. 1 literally, A2 is
    our reading of the paper's MNIST method ("the local learning step-size increases for coherent
    consecutive learning steps"; the exact increment could not be read), A3 is ours.

    With ``delta=0``, ``decay=1`` and ``momentum=0`` every variant is plain SGD (bit for bit
    ``torch.optim.SGD(lr=lr)``, tested on CPU); with ``delta=0``, ``decay=1`` it is
    :class:`MomentumSGD`, bit for bit.

    ``lr`` is eta's initial value (and A2's reset value), read when a parameter takes its first
    step: changing ``group["lr"]`` later, e.g. with a ``torch.optim.lr_scheduler``, does not
    rescale the eta already in the state.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: eta_0, the initial step of every weight (>= 0). Default 1e-3.
        delta: Delta, the increment of one learning step (>= 0). Default 1e-3.
        decay: exp(-tau / tau_0) in [0, 1], the factor by which eta decays between two learning
            steps. Give either ``decay`` or both ``tau`` and ``tau_0``. Default 0.9.
        tau: time between two learning steps (1 / training frequency), >= 0.
        tau_0: decay time of the adaptation, > 0 (same unit as tau).
        variant: "every_step" (A1), "sign_agreement" (A2) or "graded" (A3). Default
            "sign_agreement".
        on_disagreement: what A2 does where consecutive gradients disagree: "decay" (eta only
            decays) or "reset" (eta <- lr). Only "decay" is accepted for the other variants.
        beta: the gain of A3's ``tanh(beta * g * g_prev)`` (>= 0); unused by A1 and A2.
            Its unit is 1 / gradient**2. Default 1.
        momentum: mu of Eq. 2, in [0, 1]. Default 0.
        weight_regularisation: alpha of Eq. 2, in [0, 1]; not multiplied by eta. Default 0.
        maximize: ascend the objective instead of descending it. Default False.

    The defaults are not tuned values (the paper's values could not be read); tune lr, delta and
    decay for the task. Every numeric hyper-parameter (tau and tau_0 included) may be a float or a
    1-D tensor of per-replica values applied along dim 0 of each parameter (see
    ``neuroplastic.optim.momentum``). A param group may give its own ``decay`` or ``tau`` and
    ``tau_0``; they are stored as ``decay``.

    State per parameter: ``step`` (learning steps taken), ``eta``, ``prev_grad`` and, when the
    momentum is not the float 0, ``momentum_buffer`` (dW).

    Example::

        >>> opt = AcceleratedSGD(model.parameters(), lr=0.01, delta=0.005, tau=1.0, tau_0=10.0)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
        >>> opt.state[model.weight]["eta"]   # the per-weight learning steps
    """

    _hyper_ranges = {
        "lr": NON_NEGATIVE,
        "delta": NON_NEGATIVE,
        "decay": UNIT,
        "beta": NON_NEGATIVE,
        "momentum": UNIT,
        "weight_regularisation": UNIT,
    }

    def __init__(
        self,
        params: Any,
        lr: Hyper = 1e-3,
        delta: Hyper = 1e-3,
        decay: Hyper | None = None,
        *,
        tau: Hyper | None = None,
        tau_0: Hyper | None = None,
        variant: str = "sign_agreement",
        on_disagreement: str = "decay",
        beta: Hyper = 1.0,
        momentum: Hyper = 0.0,
        weight_regularisation: Hyper = 0.0,
        maximize: bool = False,
    ) -> None:
        if decay is None and tau is None and tau_0 is None:
            decay = 0.9
        defaults: dict[str, Any] = {
            "lr": lr,
            "delta": delta,
            "variant": variant,
            "on_disagreement": on_disagreement,
            "beta": beta,
            "momentum": momentum,
            "weight_regularisation": weight_regularisation,
            "maximize": maximize,
        }
        for name, value in (("decay", decay), ("tau", tau), ("tau_0", tau_0)):
            if value is not None:
                defaults[name] = value
        defaults = self._prepare_group(defaults, where="")
        # Validate the defaults now, so that a bad argument fails here with its own name.
        for name, allowed in self._hyper_ranges.items():
            defaults[name] = _check_hyper(name, defaults[name], allowed)
        self._check_modes(defaults, "")
        super().__init__(params, defaults)

    def _prepare_group(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        """Turn a group's ``tau`` and ``tau_0`` into its ``decay``."""
        if "tau" in group or "tau_0" in group:
            if "decay" in group:
                raise ValueError(f"{where}give either decay or tau and tau_0, not both")
            if "tau" not in group or "tau_0" not in group:
                raise ValueError(f"{where}tau and tau_0 must be given together")
            group["decay"] = _decay_from_tau(group.pop("tau"), group.pop("tau_0"), where)
        return group

    @staticmethod
    def _check_modes(group: dict[str, Any], where: str) -> None:
        _check_choice("variant", group["variant"], VARIANTS, where)
        _check_choice("on_disagreement", group["on_disagreement"], ON_DISAGREEMENT, where)
        if group["on_disagreement"] == "reset" and group["variant"] != "sign_agreement":
            raise ValueError(
                f"{where}on_disagreement='reset' applies to variant='sign_agreement' only, "
                f"got variant={group['variant']!r}"
            )

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        super()._check_group(group, where)
        self._check_modes(group, where)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one learning step for every parameter whose ``.grad`` is set.

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
                lr = _per_replica(group["lr"], p)
                if "eta" not in state:  # first learning step of p: eta = lr, no g_prev yet
                    state["step"] = 0
                    state["eta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["eta"].add_(lr)
                else:
                    update_eta(
                        state["eta"],
                        g,
                        state["prev_grad"],
                        lr=lr,
                        delta=_per_replica(group["delta"], p),
                        decay=_per_replica(group["decay"], p),
                        beta=_per_replica(group["beta"], p),
                        variant=group["variant"],
                        on_disagreement=group["on_disagreement"],
                    )
                _momentum_step(
                    p,
                    g,
                    eta=state["eta"],
                    mu=_per_replica(group["momentum"], p),
                    alpha=_per_replica(group["weight_regularisation"], p),
                    state=state,
                )
                if "prev_grad" in state:
                    state["prev_grad"].copy_(g)
                else:
                    state["prev_grad"] = g.clone(memory_format=torch.preserve_format)
                state["step"] += 1
        return loss
