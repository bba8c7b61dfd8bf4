"""Recursive least squares (RLS), the online readout learning of FORCE (Sussillo & Abbott 2009,
Neuron 63:544, their Eqs. 4-5), as a ``torch.optim.Optimizer`` whose state is the running
inverse correlation matrix ``P``.

A linear readout ``z = W r`` (``W``: ``(outputs, n)``, or ``(replicas, outputs, n)``) seeing
input ``r`` with error ``e = z - f`` (before the update) changes as::

    P <- P - (P r r^T P) / (1 + r^T P r),       P(0) = I / alpha
    W <- W - e (P r)^T                           (with the updated P)

After ``t`` inputs from ``W = 0`` this is exactly the ridge solution
``argmin_W sum_s |W r_s - f_s|^2 + alpha |W|^2`` (:func:`rls_step` is tested against it).

The optimiser reads the error from ``.grad`` like every optimiser here: with the loss
``0.5 |W r - f|^2`` backprop (or any rule) writes ``grad = e r^T``, and ``step(inputs=r)``
recovers ``e = grad r / (r . r)``. The inputs are needed for ``P``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer


def rls_step(weight: Tensor, p: Tensor, inputs: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    """One RLS update: ``weight`` ``([R,] outputs, n)``, ``p`` ``([R,] n, n)``, ``inputs``
    ``([R,] n)``, ``error`` ``([R,] outputs)`` -> ``(new weight, new P)``."""
    pr = (p @ inputs[..., None])[..., 0]
    gain = pr / (1.0 + (inputs * pr).sum(-1, keepdim=True))  # = P_new r
    p = p - gain[..., :, None] * pr[..., None, :]
    return weight - error[..., :, None] * gain[..., None, :], p


class RLS(Optimizer):
    """RLS on readout weights ``(outputs, n)`` or ``(replicas, outputs, n)``; ``alpha`` sets
    ``P(0) = I / alpha`` (the ridge of the equivalent least-squares problem; Sussillo & Abbott
    used 1 to 100). Call ``step(inputs=r)`` after the gradient of ``0.5 |W r - f|^2``."""

    def __init__(self, params, alpha: float = 1.0):
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        super().__init__(params, {"alpha": alpha})

    @torch.no_grad()
    def step(self, closure=None, *, inputs: Tensor | None = None):
        if inputs is None:
            raise TypeError("RLS.step needs the readout's inputs: step(inputs=r)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for weight in group["params"]:
                if weight.grad is None:
                    continue
                if weight.dim() not in (2, 3) or inputs.shape != (*weight.shape[:-2],
                                                                  weight.shape[-1]):  # fmt: skip
                    raise ValueError(
                        f"inputs must be {(*weight.shape[:-2], weight.shape[-1])} for a readout "
                        f"of shape {tuple(weight.shape)}, got {tuple(inputs.shape)}"
                    )
                state = self.state[weight]
                r = inputs.to(weight)
                if "P" not in state:
                    eye = torch.eye(weight.shape[-1], dtype=weight.dtype, device=weight.device)
                    state["P"] = (eye / group["alpha"]).expand(*weight.shape[:-2], -1, -1).clone()
                norm = (r * r).sum(-1, keepdim=True).clamp(min=torch.finfo(r.dtype).tiny)
                error = (weight.grad @ r[..., None])[..., 0] / norm  # grad = e r^T
                new_weight, state["P"] = rls_step(weight, state["P"], r, error)
                weight.copy_(new_weight)
        return loss
