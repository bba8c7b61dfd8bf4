"""Adam with per-replica hyper-parameters.

D. P. Kingma and J. Ba, "Adam: a method for stochastic optimization", ICLR 2015, arXiv:1412.6980,
Algorithm 1, with the conventions of ``torch.optim.Adam`` (``amsgrad=False``): L2 weight decay is
added to the gradient, both moments are bias-corrected, and eps is added after the square root of
the bias-corrected second moment, ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)``, as in Algorithm 1
(not the "efficient version" of Section 2, whose eps sits before the bias correction).

The floating-point operations follow ``torch.optim.Adam``'s single-tensor (for-loop) code, and the
per-replica coefficients are computed in float64 on the host with torch's scalar formulas, so that
with float hyper-parameters :class:`ReplicaAdam` equals ``torch.optim.Adam(..., foreach=False)``
and with tensor ones each replica equals a separate float run; ``tests/test_optim_adam.py`` checks
both bit for bit on the CPU in float32 and float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .momentum import (
    NON_NEGATIVE,
    Hyper,
    _check_hyper,
    _hyper_dtype,
    _is_zero,
    _per_replica,
    _Range,
    _ReplicaOptimizer,
)

__all__ = ["ReplicaAdam"]

_BETA = _Range(0.0, 1.0, high_open=True)


def _check_betas(value: Any, where: str = "") -> tuple[Hyper, Hyper]:
    """``value`` as a validated pair (beta1, beta2) of floats or float64 1-D tensor copies."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(
            f"{where}betas must be a pair (beta1, beta2) of floats or 1-D per-replica tensors, "
            f"got {value!r}"
        )
    return (
        _check_hyper("betas[0]", value[0], _BETA, where),
        _check_hyper("betas[1]", value[1], _BETA, where),
    )


class _Coefficients(NamedTuple):
    """The scalars of one Adam step: floats, or per-replica (R,) tensors."""

    weight_decay: Hyper
    one_minus_beta1: Hyper
    beta2: Hyper
    one_minus_beta2: Hyper
    neg_step_size: Hyper  # -lr / (1 - beta1**step)
    bias_correction2_sqrt: Hyper  # (1 - beta2**step) ** 0.5
    eps: Hyper


_WEIGHT_DECAY = _Coefficients._fields.index("weight_decay")
_EPS = _Coefficients._fields.index("eps")


def _scalar_coefficients(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int
) -> _Coefficients:
    """The coefficients of step ``step`` (from 1), in float64 with torch.optim.Adam's formulas."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    return _Coefficients(
        weight_decay=weight_decay,
        one_minus_beta1=1 - beta1,
        beta2=beta2,
        one_minus_beta2=1 - beta2,
        neg_step_size=-step_size,
        bias_correction2_sqrt=bias_correction2**0.5,
        eps=eps,
    )


def _host_values(h: Hyper, n_replicas: int) -> list[float]:
    if isinstance(h, Tensor):
        return h.detach().to(device="cpu", dtype=torch.float64).tolist()
    return [h] * n_replicas


def _coefficients(
    group: dict[str, Any], step: int, device: torch.device, dtype: torch.dtype
) -> _Coefficients:
    """The coefficients of ``group`` at step ``step``, placed for parameters on device/dtype.

    With float hyper-parameters these are Python floats. With any per-replica tensor, every
    coefficient is computed replica by replica with the same float64 formulas on the host, then
    sent to ``device`` in one (7, R) tensor of the computation dtype.
    """
    beta1, beta2 = group["betas"]
    hypers = (group["lr"], beta1, beta2, group["eps"], group["weight_decay"])
    if not any(isinstance(h, Tensor) for h in hypers):
        return _scalar_coefficients(*hypers, step)
    n_replicas = next(h.shape[0] for h in hypers if isinstance(h, Tensor))
    columns = zip(*(_host_values(h, n_replicas) for h in hypers), strict=True)
    rows = zip(*(_scalar_coefficients(*c, step) for c in columns), strict=True)
    table = torch.tensor(list(rows), dtype=torch.float64)
    compute_dtype = _hyper_dtype(dtype)
    if compute_dtype != dtype:
        # Below float32, torch rounds the scalar of add() and add(alpha=) to the parameter's dtype
        # (the other kernels keep it in float32): round weight_decay and eps through it too.
        for i in (_WEIGHT_DECAY, _EPS):
            table[i] = table[i].to(dtype).to(torch.float64)
    # Cast on the host (some devices have no float64), then one copy; non_blocking: a copy from
    # pageable host memory is staged at once, without waiting for the device.
    table = table.to(compute_dtype).to(device=device, non_blocking=True)
    return _Coefficients(*table.unbind(0))


def _lerp_(exp_avg: Tensor, g: Tensor, weight: Hyper) -> None:
    """``exp_avg <- exp_avg + weight * (g - exp_avg)`` in place, with torch.lerp's rounding."""
    if isinstance(weight, Tensor) and weight.dtype != exp_avg.dtype:  # bf16/fp16: float32 math
        exp_avg.copy_(torch.lerp(exp_avg.to(weight.dtype), g.to(weight.dtype), weight))
    else:
        exp_avg.lerp_(g, weight)


class ReplicaAdam(_ReplicaOptimizer):
    r"""Adam (Kingma & Ba 2015, Algorithm 1) whose hyper-parameters may differ per replica.

    With float hyper-parameters it is ``torch.optim.Adam`` with ``amsgrad=False`` and L2 weight
    decay (not AdamW's decoupled decay), bit for bit on the CPU. Each of ``lr``, ``betas[0]``,
    ``betas[1]``, ``eps`` and ``weight_decay`` may instead be a 1-D tensor of R per-replica values,
    applied along dim 0 of every parameter of the group (see ``neuroplastic.optim.momentum``).

    In the code's names (all operations per element)::

        input: lr, betas = (beta1, beta2), eps, weight_decay, maximize
        step <- 0, exp_avg <- 0, exp_avg_sq <- 0      (state, made at a parameter's first step)
        for each step in which p.grad is set:
            step <- step + 1
            g <- -p.grad if maximize else p.grad      (from any credit-assignment rule)
            if weight_decay != 0:
                g <- g + weight_decay * p             (L2 decay, added to the gradient)
            exp_avg <- beta1 * exp_avg + (1 - beta1) * g           (m_t)
            exp_avg_sq <- beta2 * exp_avg_sq + (1 - beta2) * g * g (v_t)
            bias_correction1 <- 1 - beta1 ** step
            bias_correction2 <- 1 - beta2 ** step
            step_size <- lr / bias_correction1
            denom <- sqrt(exp_avg_sq) / sqrt(bias_correction2) + eps   (sqrt(v_hat) + eps)
            p <- p - step_size * exp_avg / denom                       (lr * m_hat / denom)

    This is Algorithm 1 (m_hat = m_t / bias_correction1, v_hat = v_t / bias_correction2,
    p <- p - lr * m_hat / (sqrt(v_hat) + eps)) with torch's arrangement of the arithmetic:
    ``exp_avg`` is updated as ``lerp(exp_avg, g, 1 - beta1)``, the scalars ``1 - beta1``,
    ``step_size``, ``sqrt(bias_correction2)``, ... are computed in float64 and rounded once to the
    parameter's precision, and the last line is ``p.addcdiv_(exp_avg, denom, value=-step_size)``.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: the step size alpha (>= 0). Default 1e-3.
        betas: (beta1, beta2), the decay rates of the moment estimates, each in [0, 1).
            Default (0.9, 0.999).
        eps: added to sqrt(v_hat) (>= 0). Default 1e-8.
        weight_decay: L2 coefficient added to the gradient, g + weight_decay * p (>= 0).
            Default 0.
        maximize: ascend the objective instead of descending it. Default False.

    Per-replica values: tensors given for lr, betas, eps and weight_decay are validated and kept as
    float64 copies on the CPU (unlike the other optimisers of this package, which cast them to the
    parameters' device and dtype). Each step, the per-replica scalars above are computed from them
    on the host in float64, exactly as for a float run, and sent to the parameters' device once per
    param group (one small copy, no synchronisation). To change a value later, assign a new float
    or tensor to ``group["lr"]`` or ``group["betas"]`` etc.; a tensor placed elsewhere is read back
    to the host at every step (a device sync).

    Exactness: per-replica runs equal separate float runs, and float runs equal torch's Adam, bit
    for bit in float32 and float64 on the CPU (tested). Below float32 they agree to rounding only:
    there torch's own kernels round some scalar operations differently in their vectorised and
    scalar loops, so a result depends on the tensor's layout even within torch.

    State per parameter: ``step`` (an int), ``exp_avg`` and ``exp_avg_sq``, as in torch's Adam
    (whose ``step`` is a tensor). A step in which ``p.grad is None`` leaves p and its state alone.

    Example::

        >>> w = torch.nn.Parameter(torch.randn(4, 10, 3))   # 4 replicas of a 10 x 3 weight
        >>> opt = ReplicaAdam([w], lr=torch.tensor([1e-3, 3e-3, 1e-2, 3e-2]), betas=(0.9, 0.99))
        >>> w.grad = torch.randn(4, 10, 3); opt.step()
    """

    _hyper_ranges = {
        "lr": NON_NEGATIVE,
        "beta1": _BETA,
        "beta2": _BETA,
        "eps": NON_NEGATIVE,
        "weight_decay": NON_NEGATIVE,
    }

    def __init__(
        self,
        params: Any,
        lr: Hyper = 1e-3,
        betas: tuple[Hyper, Hyper] = (0.9, 0.999),
        eps: Hyper = 1e-8,
        weight_decay: Hyper = 0.0,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": _check_hyper("lr", lr, NON_NEGATIVE),
            "betas": _check_betas(betas),
            "eps": _check_hyper("eps", eps, NON_NEGATIVE),
            "weight_decay": _check_hyper("weight_decay", weight_decay, NON_NEGATIVE),
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        """Validate ``group`` in place; its tensor hyper-parameters stay float64 on the CPU."""
        beta1, beta2 = _check_betas(group["betas"], where)
        host = {
            "lr": _check_hyper("lr", group["lr"], NON_NEGATIVE, where),
            "beta1": beta1,
            "beta2": beta2,
            "eps": _check_hyper("eps", group["eps"], NON_NEGATIVE, where),
            "weight_decay": _check_hyper(
                "weight_decay", group["weight_decay"], NON_NEGATIVE, where
            ),
        }
        # The shared checks (maximize, parameter dtypes, replica counts and leading sizes) run on
        # a flat copy; the device copies they make of the hyper-parameters are not kept.
        flat = {k: v for k, v in group.items() if k != "betas"} | host
        super()._check_group(flat, where)
        group["maximize"] = flat["maximize"]
        group["lr"], group["eps"] = host["lr"], host["eps"]
        group["weight_decay"] = host["weight_decay"]
        group["betas"] = (beta1, beta2)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one Adam step for every parameter whose ``.grad`` is set.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            cache: dict[tuple[int, torch.device, torch.dtype], _Coefficients] = {}
            decay = not _is_zero(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = self._gradient(p, group["maximize"])
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                key = (state["step"], p.device, p.dtype)
                if key not in cache:
                    cache[key] = _coefficients(group, state["step"], p.device, p.dtype)
                c = _Coefficients(*(_per_replica(h, p) for h in cache[key]))
                _adam_step(p, g, state["exp_avg"], state["exp_avg_sq"], c, decay)
        return loss


def _adam_step(
    p: Tensor, g: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, c: _Coefficients, decay: bool
) -> None:
    """One Adam step in place, in the operations of torch.optim.Adam's single-tensor code.

    A per-replica coefficient takes the place of a scalar in the same operation where torch allows
    a tensor (``mul_``, ``div_``, ``add_``, ``lerp_``) and otherwise enters the operand that the
    kernel multiplies first: ``addcmul_(g, g, value=c)`` computes ``(c * g) * g`` and
    ``addcdiv_(m, d, value=c)`` computes ``(c * m) / d``, so ``addcmul_(g * c, g)`` and
    ``addcdiv_(m * c, d)`` round alike (checked by the tests).
    """
    if decay:
        wd = c.weight_decay
        g = torch.addcmul(g, p, wd).to(p.dtype) if isinstance(wd, Tensor) else g.add(p, alpha=wd)
    _lerp_(exp_avg, g, c.one_minus_beta1)
    exp_avg_sq.mul_(c.beta2)
    if isinstance(c.one_minus_beta2, Tensor):
        exp_avg_sq.addcmul_(g * c.one_minus_beta2, g)
    else:
        exp_avg_sq.addcmul_(g, g, value=c.one_minus_beta2)
    denom = exp_avg_sq.sqrt()
    denom.div_(c.bias_correction2_sqrt).add_(c.eps)  # in place: rounded to p's dtype, as torch
    if isinstance(c.neg_step_size, Tensor):
        p.addcdiv_(exp_avg * c.neg_step_size, denom)
    else:
        p.addcdiv_(exp_avg, denom, value=c.neg_step_size)
