"""How close a rule is to backprop: angles between updates, and between forward and feedback.

Two measures from the feedback-alignment literature (Lillicrap et al. 2016, Fig. 2 and 3; Nøkland
2016, Fig. 3; biotorch's per-layer "alignment"), in degrees, 0 for identical directions, 90 for
orthogonal ones:

* :func:`update_angles`: for every weight and bias, the angle between the update a rule proposes
  on a batch and the backprop gradient on the same batch. Below 90 degrees, the rule's step
  lowers the loss to first order.
* :func:`feedback_weight_angles`: for rules that send errors through feedback matrices, the angle
  between each feedback matrix and the forward matrix backprop would use in its place; FA's
  forward weights come to align with their fixed ``B`` during learning.

Angles are computed in float64 as ``2 atan2(|u - v|, |u + v|)`` of the unit vectors ``u, v``
(accurate near 0 and 180 degrees, where ``acos`` of the cosine loses half its digits); an angle
with a zero vector is ``nan``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neuroplastic.credit.backprop import Backprop
from neuroplastic.credit.base import CreditRule


def angle_degrees(a: Tensor, b: Tensor) -> float:
    """The angle between two tensors of the same number of elements, flattened, in degrees."""
    u = a.detach().reshape(-1).to(torch.float64)
    v = b.detach().reshape(-1).to(device=u.device, dtype=torch.float64)
    if u.numel() != v.numel():
        raise ValueError(f"cannot compare {tuple(a.shape)} with {tuple(b.shape)}")
    norm_u, norm_v = u.norm(), v.norm()
    if norm_u == 0 or norm_v == 0:
        return math.nan
    u, v = u / norm_u, v / norm_v
    return math.degrees(2 * math.atan2((u - v).norm().item(), (u + v).norm().item()))


def _collect_update(rule: CreditRule, params: dict[str, torch.nn.Parameter], x, y, loss):
    for param in params.values():
        param.grad = None
    rule.backward(x, y, loss)
    return {
        name: (param.grad.detach().clone() if param.grad is not None else torch.zeros_like(param))
        for name, param in params.items()
    }


def _generators(rule: CreditRule) -> list[torch.Generator]:
    """The random generators a rule holds as attributes (directly, or in a list or tuple)."""
    found: list[torch.Generator] = []
    for value in vars(rule).values():
        values = value if isinstance(value, list | tuple) else (value,)
        found.extend(item for item in values if isinstance(item, torch.Generator))
    return found


def update_angles(
    rule: CreditRule, x: Tensor, y: Tensor, loss: str = "cross_entropy"
) -> dict[str, float]:
    """``{parameter name: deg}`` for every parameter of ``rule.model`` that requires a gradient:
    the angle between the update ``rule`` writes into its ``.grad`` on the batch ``(x, y)``
    (``rule.backward(x, y, loss)``) and the backprop gradient on that batch (the same call with
    the rule's hooks disabled, then plain autograd).

    Leaves no trace: every parameter's ``.grad`` (a tensor, or ``None``) is restored afterwards;
    the random generators the rule holds as attributes (e.g. ``rule.generator``) are reset to their
    state before the call, and torch's global CPU generator too, so a stochastic rule's training
    run draws the same noise whether or not it is diagnosed, and the angle is measured on the very
    update (same noise) the rule's next ``backward`` on this batch will make. Other internal state
    a rule may keep between calls is not rewound.
    """
    params = {n: p for n, p in rule.model.named_parameters() if p.requires_grad}
    saved_grads = {name: param.grad for name, param in params.items()}
    generators = _generators(rule)
    saved_states = [generator.get_state() for generator in generators]
    try:
        with torch.enable_grad():  # rules may use autograd, even if called under no_grad
            with torch.random.fork_rng(devices=[]):
                rule_update = _collect_update(rule, params, x, y, loss)
            with rule.disabled():
                reference = _collect_update(Backprop(rule.model), params, x, y, loss)
    finally:
        for generator, state in zip(generators, saved_states, strict=True):
            generator.set_state(state)
        for name, param in params.items():
            param.grad = saved_grads[name]
    return {name: angle_degrees(rule_update[name], reference[name]) for name in params}


def feedback_weight_angles(rule: CreditRule) -> dict[str, float]:
    """``{layer name: deg}``: the angle between the matrix that carries the error into the
    input of a covered layer and the one backprop would use in its place.

    * feedback alignment: ``B`` against ``W``;
    * sign symmetry: ``V`` (from the current weights) against ``W``;
    * direct feedback alignment, on a chain of Linear layers: ``D_l`` against
      ``W_l^T ... W_L^T``, backprop's path from the output error with the activation slopes left
      out (just ``W_out^T`` for the output layer's input).

    A rule takes part by defining ``feedback_pairs() -> {name: (backprop_matrix, feedback)}``;
    for any other rule (backprop, perturbation, equilibrium propagation) the result is ``{}``.
    """
    pairs = getattr(rule, "feedback_pairs", None)
    if pairs is None:
        return {}
    return {name: angle_degrees(forward, feedback) for name, (forward, feedback) in pairs().items()}
