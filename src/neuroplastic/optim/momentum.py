"""Momentum with weight regularisation (Eq. 2 of Sardi et al. 2020), and the machinery that the
optimisers of this package share: hyper-parameters given as floats or as per-replica tensors.

Replicas
--------
Every optimiser here takes each numeric hyper-parameter either as a float or as a 1-D tensor of
length ``R``. A tensor value holds one setting per *replica* and is applied along dim 0 of every
parameter of its group: a parameter of shape ``(R, ...)`` trained with ``lr=torch.tensor([a, b])``
behaves, slice by slice, like ``R`` separate parameters trained with ``lr=a`` and ``lr=b``.
Floats and tensors may be mixed within a group; all tensors of a group must have the same length
``R``, and every parameter of that group must have ``R`` as its leading size. The tests prove the
batched trajectories equal, bit for bit in float32 and float64, to those of ``R`` separate
optimisers with float hyper-parameters.

Tensor hyper-parameters are copied (a later change to the tensor you passed does not reach the
optimiser; write ``group["lr"] = new_tensor`` instead) and cast once to the device and floating
dtype of the group's parameters. Per step, a tensor hyper-parameter costs a ``view`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["MomentumSGD"]

Hyper = float | Tensor
"""A hyper-parameter: one float for every replica, or a 1-D tensor with one value per replica."""


class _Range(NamedTuple):
    """The allowed values of a numeric hyper-parameter."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def contains(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return math.isfinite(x) and above and below

    def __str__(self) -> str:
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        return f"{lo}{self.low:g}, {self.high:g}{hi}"


NON_NEGATIVE = _Range(0.0, math.inf, high_open=True)
POSITIVE = _Range(0.0, math.inf, low_open=True, high_open=True)
UNIT = _Range(0.0, 1.0)


def _check_hyper(name: str, value: Any, allowed: _Range, where: str = "") -> Hyper:
    """``value`` as a float or as a float64 1-D tensor copy; ``ValueError`` if it is invalid."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.item()
        elif value.dim() != 1 or value.numel() == 0:
            raise ValueError(
                f"{where}{name} must be a float or a non-empty 1-D tensor with one value per "
                f"replica, got a tensor of shape {tuple(value.shape)}"
            )
        elif value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{where}{name} must hold real numbers, got dtype {value.dtype}")
        else:
            values = value.detach().to(dtype=torch.float64).clone()
            for i, x in enumerate(values.tolist()):
                if not allowed.contains(x):
                    raise ValueError(
                        f"{where}{name}[{i}] = {x!r} is outside the allowed range {allowed}"
                    )
            return values
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{where}{name} must be a float or a 1-D tensor of per-replica values, "
            f"got {type(value).__name__}"
        )
    x = float(value)
    if not allowed.contains(x):
        raise ValueError(f"{where}{name} = {x!r} is outside the allowed range {allowed}")
    return x


def _check_choice(name: str, value: Any, choices: tuple[str, ...], where: str = "") -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}{name} must be one of {choices}, got {value!r}")
    return value


def _check_bool(name: str, value: Any, where: str = "") -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}{name} must be True or False, got {value!r}")
    return value


def _is_zero(h: Hyper) -> bool:
    """True for the float 0. A tensor never counts as zero (checking it would sync a GPU)."""
    return not isinstance(h, Tensor) and h == 0.0


def _per_replica(h: Hyper, p: Tensor) -> Hyper:
    """``h`` ready to broadcast against ``p``: a float as is, an (R,) tensor as (R, 1, ..., 1)."""
    if not isinstance(h, Tensor):
        return h
    if p.dim() == 0 or h.dim() != 1 or h.shape[0] != p.shape[0]:
        raise ValueError(
            f"a per-replica hyper-parameter of shape {tuple(h.shape)} does not fit a parameter "
            f"of shape {tuple(p.shape)}: its leading size must be the number of replicas"
        )
    h = h.to(device=p.device, dtype=_hyper_dtype(p.dtype))
    return h.view((-1,) + (1,) * (p.dim() - 1))


def _hyper_dtype(param_dtype: torch.dtype) -> torch.dtype:
    # float32 and float64 compute in their own precision; lower precisions compute in float32
    # (like a Python scalar would), so the hyper-parameter is kept in float32 for them.
    return param_dtype if param_dtype in (torch.float32, torch.float64) else torch.float32


class _ReplicaOptimizer(Optimizer):
    """Base class: validates every param group and places per-replica hyper-parameter tensors.

    Subclasses set ``_hyper_ranges`` (name -> allowed range) and may extend ``_prepare_group``
    (runs before the defaults are filled in) and ``_check_group`` (runs after).
    """

    _hyper_ranges: dict[str, _Range] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        where = f"param group {len(self.param_groups)}: "
        param_group = self._prepare_group(dict(param_group), where)
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1], where)
        except ValueError:
            self.param_groups.pop()
            raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for i, group in enumerate(self.param_groups):
            self._check_group(group, f"param group {i}: ")

    def _prepare_group(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        return group

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        """Validate ``group`` in place and cast its tensor hyper-parameters next to its params."""
        group["maximize"] = _check_bool("maximize", group["maximize"], where)
        for name, allowed in self._hyper_ranges.items():
            group[name] = _check_hyper(name, group[name], allowed, where)
        params: list[Tensor] = group["params"]
        for p in params:
            if not p.is_floating_point():
                raise ValueError(
                    f"{where}can only optimise real floating-point tensors, got {p.dtype}"
                )
        tensors = {n: group[n] for n in self._hyper_ranges if isinstance(group[n], Tensor)}
        if not tensors:
            return
        lengths = {n: t.shape[0] for n, t in tensors.items()}
        n_replicas = next(iter(lengths.values()))
        if any(r != n_replicas for r in lengths.values()):
            raise ValueError(
                f"{where}per-replica hyper-parameters must all have the same length, got {lengths}"
            )
        for i, p in enumerate(params):
            if p.dim() == 0 or p.shape[0] != n_replicas:
                raise ValueError(
                    f"{where}per-replica hyper-parameters have R = {n_replicas} values, so every "
                    f"parameter of the group needs a leading replica dimension of size "
                    f"{n_replicas}; parameter {i} has shape {tuple(p.shape)}"
                )
        placements = {(p.device, _hyper_dtype(p.dtype)) for p in params}
        if len(placements) == 1:  # else each step casts (correct, a little slower)
            device, dtype = placements.pop()
            for n, t in tensors.items():
                group[n] = t.to(device=device, dtype=dtype)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)

    def _gradient(self, p: Tensor, maximize: bool) -> Tensor:
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        return -p.grad if maximize else p.grad


def _momentum_step(
    p: Tensor, g: Tensor, eta: Hyper, mu: Hyper, alpha: Hyper, state: dict[str, Any]
) -> None:
    """One step of Eq. 2, in place: ``dW <- mu * dW - eta * g - alpha * W``, ``W <- W + dW``.

    ``eta`` is a float, a per-replica view or a per-element tensor. The momentum buffer ``dW`` is
    created (as zeros: dW_0 = 0) only when ``mu`` is not the float 0, and is stored as the
    displacement actually made, ``W_{t+1} - W_t``, which is Eq. 2's dW_{t+1}. The order of the
    floating-point operations is fixed so that a term whose coefficient is 0 (float or tensor
    entry) adds an exact zero: a batched optimiser then reproduces separate ones bit for bit, and
    ``mu = alpha = 0`` rounds as ``torch.optim.SGD`` does (``W - eta * g`` with one rounding, as
    ``add(alpha=)`` and ``addcmul`` do on CPU; tested there).
    """
    dW: Tensor | None = state.get("momentum_buffer")
    correction: Tensor | None = None  # mu * dW_t - alpha * W_t
    if not _is_zero(mu):
        if dW is None:
            dW = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["momentum_buffer"] = dW
        correction = dW * mu
    if not _is_zero(alpha):
        if correction is None:
            correction = (p * alpha).neg_()
        else:
            correction.sub_(p * alpha)
    if dW is not None:
        dW.copy_(p)  # W_t, until the step is made
    if correction is not None:
        p.add_(correction)
    if isinstance(eta, Tensor):
        p.addcmul_(g, eta, value=-1.0)
    else:
        p.add_(g, alpha=-eta)
    if dW is not None:
        torch.sub(p, dW, out=dW)  # dW_{t+1} = W_{t+1} - W_t


class MomentumSGD(_ReplicaOptimizer):
    r"""Momentum with weight regularisation, exactly Eq. 2 of Sardi et al. (2020).

    The paper's baseline ("momentum strategy with weight regularisation")::

        dW_{t+1} = mu * dW_t - eta_0 * dC/dW - alpha * W_t          (Eq. 2)
        W_{t+1}  = W_t + dW_{t+1}

    with mu, alpha in [0, 1] and a constant eta_0. In the code's names::

        input: lr (eta_0), momentum (mu), weight_regularisation (alpha), maximize
        dW <- 0                                      (state "momentum_buffer", made lazily)
        for t = 1, 2, ...:
            g <- -p.grad if maximize else p.grad     (dC/dW, from any credit-assignment rule)
            dW <- mu * dW - lr * g - alpha * W
            W <- W + dW

    Relation to ``torch.optim.SGD``: torch keeps ``buf <- mu * buf + (g + wd * W)`` and takes
    ``W <- W - lr * buf``. With ``dampening=0``, ``nesterov=False`` and ``lr = eta_0 > 0``,
    ``dW = -lr * buf`` at every step, so Eq. 2 with (mu, eta_0, alpha) *is* torch SGD with
    ``momentum=mu, lr=eta_0, weight_decay=alpha / eta_0``. The two differ in where lr sits: in
    Eq. 2 a change of ``lr`` during training scales only new gradients, in torch SGD it rescales
    the whole accumulated buffer. ``tests/test_optim.py`` checks the mapping over many steps.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: eta_0, the constant learning step (>= 0). Default 1e-3.
        momentum: mu in [0, 1]. Default 0.
        weight_regularisation: alpha in [0, 1]; note it is *not* multiplied by lr. Default 0.
        maximize: ascend the objective instead of descending it. Default False.

    Every numeric hyper-parameter may be a float or a 1-D tensor of per-replica values (see the
    module docstring). Example::

        >>> opt = MomentumSGD(model.parameters(), lr=0.1, momentum=0.9, weight_regularisation=1e-4)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """

    _hyper_ranges = {"lr": NON_NEGATIVE, "momentum": UNIT, "weight_regularisation": UNIT}

    def __init__(
        self,
        params: Any,
        lr: Hyper = 1e-3,
        momentum: Hyper = 0.0,
        weight_regularisation: Hyper = 0.0,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": _check_hyper("lr", lr, NON_NEGATIVE),
            "momentum": _check_hyper("momentum", momentum, UNIT),
            "weight_regularisation": _check_hyper(
                "weight_regularisation", weight_regularisation, UNIT
            ),
            "maximize": _check_bool("maximize", maximize),
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one step of Eq. 2 for every parameter whose ``.grad`` is set.

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
                state["step"] = state.get("step", 0) + 1
                _momentum_step(
                    p,
                    g,
                    eta=_per_replica(group["lr"], p),
                    mu=_per_replica(group["momentum"], p),
                    alpha=_per_replica(group["weight_regularisation"], p),
                    state=state,
                )
        return loss
