"""Equilibrium propagation (Scellier & Bengio 2017), with symmetric nudging (Laborieux et al. 2021).

The MLP's weights define a layered, continuous Hopfield-like network. The input ``x`` is clamped;
the hidden and output layers are state variables ``s_1 .. s_L`` (``s_L`` the output) that relax to
a minimum of an energy instead of being computed feed-forward. Scellier & Bengio (2017),
"Equilibrium propagation: bridging the gap between energy-based models and backpropagation",
Front. Comput. Neurosci. 11:24, section 2 (the model, its dynamics and learning rule), section 3
(Theorem 1: the gradient formula), section 5 (hard sigmoid, states clipped to [0, 1], the settling
hyper-parameters). Laborieux, Ernoult, Scellier, Bengio, Grollier, Querlioz (2021), "Scaling
equilibrium propagation to deep ConvNets by drastically reducing its gradient estimator bias",
Front. Neurosci. 15:633674, section 2 (the symmetric, two-sided estimate). Equation numbers are not
quoted: we did not have the published texts at hand to check them; the sections are.

With ``W_l = model.layers[l].weight`` ``(n_{l+1}, n_l)``, ``b_l = model.layers[l].bias``,
``s_0 = x`` (clamped, used as given) and ``d = onehot(y)``::

    E(s)    = 1/2 sum_{l=1..L} ||s_l||^2
              - sum_{l=0..L-1} rho(s_{l+1})^T W_l rho(s_l) - sum_{l=0..L-1} b_l^T rho(s_{l+1})
    C(s)    = 1/2 ||s_L - d||^2                         the square cost, on the output *states*
    F(s)    = E(s) + beta C(s)                          total energy
    ds/dt   = -dF/ds                                    gradient dynamics (paper, section 2)
    dE/ds_l = s_l - rho'(s_l) * (W_{l-1} rho(s_{l-1}) + b_{l-1} + W_l^T rho(s_{l+1}))
    dC/ds_L = s_L - d

``rho`` is the paper's hard sigmoid ``clamp(s, 0, 1)`` (``activation="hard_sigmoid"``, default),
or ``sigmoid(4 s - 2)`` (``activation="sigmoid"``), the smooth curve with the same range and the
same slope 1 at s = 1/2 that Scellier's public code keeps as a commented-out alternative. The smooth
one is offered because the theory assumes a differentiable ``rho``; it is our addition.

Settling (what this module computes). Forward Euler on ``ds/dt = -dF/ds`` with step ``dt``,
projected back onto the box [0, 1] for the hard sigmoid, all layers updated at once from the
previous states, starting from ``s = 0``::

    for t in range(steps):
        s <- P(s - dt * dF/ds(s))          P = clamp(., 0, 1) (hard sigmoid) or the identity

This is the discretisation of section 5 of the paper (clipped states, step epsilon = ``dt``). On
the box the hard sigmoid is the identity, so ``rho(s) = s`` and, with the one-sided derivative
``rho'(s) = 1`` on the closed interval (torch's ``clamp`` backward agrees), the step is
``s_l <- clamp((1 - dt) s_l + dt h_l, 0, 1)``, ``h_l`` the bracket above. With ``dt = 1`` it is the
fixed-point iteration ``s_l <- rho(h_l)`` of Laborieux et al.'s code: the two common ways of
settling are one family here. The fixed point is the *projected* stationarity condition
``s = clamp(s - dF/ds, 0, 1)``: ``dF/ds_i = 0`` for units strictly inside (0, 1), ``>= 0`` for units
at 0 and ``<= 0`` for units at 1; :func:`stationarity_residual` measures it.

Phases and update. Free phase: ``free_steps`` steps at ``beta = 0`` from ``s = 0``, giving
``s^0`` (the prediction, :meth:`EquilibriumPropagation.predict`). Nudged phase: ``nudged_steps``
steps at ``beta`` starting from ``s^0``, giving ``s^beta``. Since ``dF/dW_l = -rho(s_{l+1})
rho(s_l)^T`` and ``dF/db_l = -rho(s_{l+1})``, Theorem 1 (``dL/dtheta = d/dbeta dF/dtheta(s^beta)``
at ``beta = 0``, ``L(theta) = C(s^0(theta))``) gives the estimate written into ``.grad``, averaged
over the batch::

    one-sided (S&B 2017, section 2):
        grad W_l = -(1/beta) mean_b[rho(s_{l+1}^beta) rho(s_l^beta)^T - rho(s_{l+1}^0) rho(s_l^0)^T]
    symmetric (Laborieux et al. 2021, section 2):
        grad W_l = -(1/(2 beta)) mean_b[rho(s_{l+1}^{+beta}) rho(s_l^{+beta})^T
                                        - rho(s_{l+1}^{-beta}) rho(s_l^{-beta})^T]
    biases alike, with rho(s_l) replaced by 1.

``grad W`` approaches ``dL/dW`` as ``beta -> 0``, with an O(beta) bias one-sided and O(beta^2)
symmetric (both phases of the symmetric estimate start from ``s^0``). ``.grad`` holds the
gradient estimate (minus the desired step), as every rule here, so any ``torch.optim`` optimiser
descends it; the paper's update ``Delta W = -alpha grad W`` is plain SGD with rate ``alpha``.

Ours, not the papers': the states start from 0 at every call (the paper's code keeps one
"persistent particle" per training example); the input is used as given (the paper's code applies
``rho`` to the input too, which changes nothing for inputs in [0, 1] such as MNIST pixels); the
model's own ``activation`` is not used (the energy's ``rho`` is); cross-entropy is not supported
(Laborieux et al.'s cross-entropy variant changes the architecture: a softmax read-out that is
not part of the energy), so ``supported_losses = ("square",)``.

Two implementations, tested equal to rounding: the reference, :func:`settle_reference` and
:func:`ep_gradient_reference`, takes ``dF/ds`` and ``dF/dtheta`` from torch autograd of
:func:`energy` as written above (plain and slow); the fast path, :func:`settle` and
:func:`ep_gradient`, which the rule runs, uses the closed forms, batched over the minibatch (no
Python loop over examples), with the input drive ``W_0 x + b_0`` computed once per batch and
``dt``, ``beta`` and the target folded into per-phase constants (:class:`Phase`), so that a
hidden layer's step is two matrix products, one ``addcmul`` and one ``clamp``. ``compile=True``
runs that step through ``torch.compile``: equal to the eager step (tested), but not faster on a
CPU (see ``benchmarks/equilibrium_settling.py``); it is there for accelerators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from neuroplastic.credit.base import CreditRule, loss_per_example
from neuroplastic.models.mlp import MLP

ACTIVATIONS = ("hard_sigmoid", "sigmoid")

States = list[Tensor]


# ---------------------------------------------------------------------------------------------
# The model: rho, energy, cost (the paper's formulation)
# ---------------------------------------------------------------------------------------------


def rho(s: Tensor, activation: str = "hard_sigmoid") -> Tensor:
    """The firing rate: ``clamp(s, 0, 1)`` (paper) or ``sigmoid(4 s - 2)`` (smooth option)."""
    if activation == "hard_sigmoid":
        return s.clamp(0.0, 1.0)
    if activation == "sigmoid":
        return torch.sigmoid(4.0 * s - 2.0)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def energy(
    x: Tensor,
    states: Sequence[Tensor],
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    activation: str = "hard_sigmoid",
) -> Tensor:
    """Hopfield-like energy ``E(s)`` per example ``(B,)``; input ``x`` ``(B, n_0)`` clamped,
    ``states[l]`` ``(B, n_{l+1})``, ``weights[l]`` ``(n_{l+1}, n_l)``, ``biases[l]``
    ``(n_{l+1},)``."""
    rates = [x] + [rho(s, activation) for s in states]  # rho(s_0) := x
    e = 0.5 * sum(s.pow(2).sum(dim=-1) for s in states)  # (B,)
    for pre, post, w, b in zip(rates[:-1], rates[1:], weights, biases, strict=True):
        e = e - ((pre @ w.T) * post).sum(dim=-1) - post @ b  # rho(s_{l+1})^T W_l rho(s_l) + b^T..
    return e


def cost(states: Sequence[Tensor], target: Tensor) -> Tensor:
    """Square cost ``C = 1/2 ||s_L - d||^2`` per example ``(B,)``; ``target`` is ``d``
    ``(B, n_L)``."""
    return 0.5 * (states[-1] - target).pow(2).sum(dim=-1)


def _project(s: Tensor, activation: str) -> Tensor:
    return s.clamp(0.0, 1.0) if activation == "hard_sigmoid" else s


def _total_energy_gradient(x, states, weights, biases, target, beta, activation) -> States:
    """``dF/ds`` for every layer by autograd of the summed total energy (the per-example energies
    do not interact, so the gradient of the sum is each example's gradient)."""
    with torch.enable_grad():
        s = [t.detach().requires_grad_(True) for t in states]
        total = energy(x, s, weights, biases, activation)
        if target is not None:
            total = total + beta * cost(s, target)
        return list(torch.autograd.grad(total.sum(), s))


def stationarity_residual(
    x: Tensor,
    states: Sequence[Tensor],
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    target: Tensor | None = None,
    beta: float = 0.0,
    activation: str = "hard_sigmoid",
) -> Tensor:
    """How far ``states`` are from a fixed point of the settling: ``max |s - P(s - dF/ds)|``.

    For the hard sigmoid (``P`` the projection on [0, 1]) this is zero exactly at the projected
    stationary points (``dF/ds_i = 0`` inside the box, ``>= 0`` at 0, ``<= 0`` at 1); for the
    smooth sigmoid (``P`` the identity) it is ``max |dF/ds|``."""
    grads = _total_energy_gradient(x, states, weights, biases, target, beta, activation)
    return max(
        (s.detach() - _project(s.detach() - g, activation)).abs().max()
        for s, g in zip(states, grads, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# Settling: the reference (autograd of the energy) and the fast, closed-form path
# ---------------------------------------------------------------------------------------------


def settle_reference(
    x: Tensor,
    states: Sequence[Tensor],
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    target: Tensor | None,
    beta: float,
    steps: int,
    dt: float,
    activation: str = "hard_sigmoid",
) -> States:
    """``steps`` projected Euler steps ``s <- P(s - dt dF/ds)`` with ``dF/ds`` by autograd of
    :func:`energy` (+ ``beta`` :func:`cost`). Slow and plain: the definition the fast path is
    tested against."""
    states = [s.detach() for s in states]
    for _ in range(steps):
        grads = _total_energy_gradient(x, states, weights, biases, target, beta, activation)
        states = [_project(s - dt * g, activation) for s, g in zip(states, grads, strict=True)]
    return states


class Phase(NamedTuple):
    """What stays constant while the states settle in one phase, folded for :func:`settle_step`
    (built once per phase by :func:`make_phase`).

    One Euler step of layer ``l`` is ``s_l - dt dF/ds_l = (1 - dt k_l) s_l + dt (rho'(s_l) h_l +
    beta d [l = L])``, with ``k_l = 1`` except ``k_L = 1 + beta`` for the output layer of a nudged
    phase (``dF/ds_L = s_L - rho'(s_L) h_L + beta (s_L - d)``). ``dt`` is folded into the drives
    and matrices, so that ``dt h_l`` comes out of the matrix products directly; for the hard
    sigmoid (``rho' = 1`` on the box) ``dt beta d`` is folded into the output layer's drive too.
    Nothing is divided by ``k_L``, which is 0 at ``beta = -1`` (the paper's code nudges at
    ``beta = -1`` with its random sign)."""

    drive: list[Tensor]  # dt * (layer l's constant input): W_0 x + b_0 for l = 1, b_{l-1} above
    up: list[Tensor | None]  # dt W_{l-1}^T: rho(s_{l-1}) @ up[l]; None for the first layer
    down: list[Tensor | None]  # dt W_l: rho(s_{l+1}) @ down[l]; None for the output layer
    keep: list[Tensor]  # 1 - dt k_l, 0-d (a tensor, so a compiled step is not specialised on it)
    nudge: Tensor | None  # dt beta d on the output layer, smooth sigmoid only


def make_phase(
    drive: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    target: Tensor | None,
    beta: float,
    dt: float,
    activation: str = "hard_sigmoid",
) -> Phase:
    """The :class:`Phase` of a free (``target=None``) or nudged phase. ``drive = x @ W_0^T + b_0``
    ``(B, n_1)``: the clamped input's contribution to the first layer, computed once per batch."""
    n = len(weights)
    inputs = [dt * drive] + [dt * b for b in biases[1:]]
    up: list[Tensor | None] = [None] + [dt * w.T for w in weights[1:]]
    down: list[Tensor | None] = [dt * w for w in weights[1:]] + [None]
    keep = [drive.new_tensor(1.0 - dt) for _ in range(n)]
    nudge = None
    if target is not None:
        keep[-1] = drive.new_tensor(1.0 - dt * (1.0 + beta))
        if activation == "hard_sigmoid":
            inputs[-1] = inputs[-1] + (dt * beta) * target  # (B, n_L)
        else:
            nudge = (dt * beta) * target  # (B, n_L)
    return Phase(inputs, up, down, keep, nudge)


def settle_step(states: Sequence[Tensor], phase: Phase, activation: str = "hard_sigmoid") -> States:
    """One projected Euler step ``s <- P(s - dt dF/ds)`` of every layer at once (from the
    previous states), by the closed-form ``dF/ds`` folded as in :class:`Phase`.

    For the hard sigmoid the states stay in [0, 1] (the start must be in the box), where
    ``rho(s) = s`` and ``rho'(s) = 1``, so a hidden layer's step is
    ``clamp((1 - dt) s_l + dt (W_{l-1} s_{l-1} + b_{l-1} + W_l^T s_{l+1}), 0, 1)``: two matrix
    products, one ``addcmul`` and one ``clamp``."""
    hard = activation == "hard_sigmoid"
    n = len(states)
    rates = list(states) if hard else [torch.sigmoid(4.0 * s - 2.0) for s in states]
    new = []
    for l in range(n):  # noqa: E741 (l is the paper's layer index)
        e = phase.drive[l]  # dt h_l, built up: (B, n_l), or (n_l,) until a product is added
        if l > 0:
            e = torch.addmm(e, rates[l - 1], phase.up[l])  # + dt W_{l-1} rho(s_{l-1})
        if l + 1 < n:
            e = torch.addmm(e, rates[l + 1], phase.down[l])  # + dt W_l^T rho(s_{l+1})
        if hard:
            new.append(torch.addcmul(e, states[l], phase.keep[l]).clamp_(0.0, 1.0))
        else:
            r = rates[l]
            e = 4.0 * r * (1.0 - r) * e  # dt rho'(s) h
            if l == n - 1 and phase.nudge is not None:
                e = e + phase.nudge  # + dt beta d
            new.append(torch.addcmul(e, states[l], phase.keep[l]))
    return new


def settle(
    states: Sequence[Tensor],
    phase: Phase,
    steps: int,
    activation: str = "hard_sigmoid",
    step: Callable[..., States] = settle_step,
) -> States:
    """``steps`` steps of :func:`settle_step` (or ``step``, e.g. :func:`compiled_settle_step`):
    the same dynamics as :func:`settle_reference`, fast."""
    states = list(states)
    for _ in range(steps):
        states = step(states, phase, activation)
    return states


_compiled_step: Callable[..., States] | None = None


def compiled_settle_step() -> Callable[..., States]:
    """:func:`settle_step` through ``torch.compile``, built once per process and shared by every
    rule. One graph per step: compiling a whole unrolled phase took 25 to 60 s on a CPU, one step
    a few seconds. The batch dimension is dynamic; a new dtype, activation, depth or device, batch
    size 1 after larger ones (or the reverse), and for the smooth sigmoid the nudged phase after
    the free one, each compile once more (past torch's recompile limit, 8, torch runs the step
    eagerly and warns)."""
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(settle_step, dynamic=True)
    return _compiled_step


def ep_gradient(
    x: Tensor,
    states_a: Sequence[Tensor],
    states_b: Sequence[Tensor],
    beta_a: float,
    beta_b: float,
    activation: str = "hard_sigmoid",
) -> tuple[States, States]:
    """The EP estimate of ``(dL/dW_l, dL/db_l)`` from two settled states, mean over the batch:
    ``(dF/dtheta(s^a) - dF/dtheta(s^b)) / (beta_a - beta_b)`` with ``dF/dW_l = -rho(s_{l+1})
    rho(s_l)^T``: ``(a, b) = (beta, 0)`` one-sided, ``(+beta, -beta)`` symmetric."""
    scale = 1.0 / ((beta_a - beta_b) * x.shape[0])
    rates_a = [x] + [rho(s, activation) for s in states_a]
    rates_b = [x] + [rho(s, activation) for s in states_b]
    grad_w, grad_b = [], []
    for l in range(len(states_a)):  # noqa: E741
        post_a, post_b = rates_a[l + 1], rates_b[l + 1]  # (B, n_{l+1})
        diff = (post_b - post_a) * scale  # (B, n_{l+1})
        if l == 0:  # the clamped input is the same in both states: one product
            gw = diff.T @ x  # (n_1, n_0)
        else:
            gw = post_b.T @ rates_b[l]  # (n_{l+1}, n_l)
            gw = torch.addmm(gw, post_a.T, rates_a[l], beta=scale, alpha=-scale)
        grad_w.append(gw)
        grad_b.append(diff.sum(dim=0))  # (n_{l+1},)
    return grad_w, grad_b


def ep_gradient_reference(
    x: Tensor,
    states_a: Sequence[Tensor],
    states_b: Sequence[Tensor],
    beta_a: float,
    beta_b: float,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    activation: str = "hard_sigmoid",
) -> tuple[States, States]:
    """:func:`ep_gradient` by autograd: ``d/dtheta mean_b (E(s^a) - E(s^b)) / (beta_a - beta_b)``
    with the states held constant (the cost does not depend on theta, so E stands for F)."""
    with torch.enable_grad():
        w = [t.detach().requires_grad_(True) for t in weights]
        b = [t.detach().requires_grad_(True) for t in biases]
        e_a = energy(x, [s.detach() for s in states_a], w, b, activation).mean()
        e_b = energy(x, [s.detach() for s in states_b], w, b, activation).mean()
        grads = torch.autograd.grad((e_a - e_b) / (beta_a - beta_b), w + b)
    return list(grads[: len(w)]), list(grads[len(w) :])


# ---------------------------------------------------------------------------------------------
# The rule
# ---------------------------------------------------------------------------------------------


class EquilibriumPropagation(CreditRule):
    """Equilibrium propagation on the MLP's weights: ``.grad += `` the EP estimate of ``dL/dtheta``.

    Args:
        model: the MLP whose ``layers`` hold ``W_l``, ``b_l`` (its ``activation`` is not used).
        generator: draws the sign of ``beta`` when ``random_sign`` (needed only then).
        beta: nudging strength, > 0 (the paper's code: 0.5 for one hidden layer, 1 for two and
            three).
        free_steps: settling steps of the free phase (paper's code: ``n_it_neg`` = 20 for one
            hidden layer, 150 for two, 500 for three).
        nudged_steps: settling steps of each nudged phase (``n_it_pos`` = 4, 6, 8 there).
        dt: Euler step of the settling (``epsilon`` = 0.5 there); 1 gives the fixed-point
            iteration ``s <- rho(h)``. Check convergence with :func:`stationarity_residual`.
        symmetric: nudge at ``+beta`` and ``-beta`` and take the symmetric difference (Laborieux
            et al. 2021): O(beta^2) bias instead of O(beta), one more phase.
        random_sign: draw the sign of ``beta`` at random (probability 1/2) at each ``backward``,
            as the paper's code does; one-sided only.
        activation: ``"hard_sigmoid"`` (paper) or ``"sigmoid"`` (``sigmoid(4 s - 2)``).
        compile: run each settling step through ``torch.compile`` (:func:`compiled_settle_step`;
            equal to the eager step to rounding, tested). The first call compiles (seconds).

    Algorithm, one ``backward(x, y)`` (names as in the code)::

        drive = x W_0^T + b_0                            # input clamped, once per batch
        free = settle(zeros, phase(drive, None, 0), free_steps)                    # s^0
        nudged = settle(free, phase(drive, d, beta), nudged_steps)                 # s^beta
        if symmetric:
            opposite = settle(free, phase(drive, d, -beta), nudged_steps)          # s^-beta
            a, b, delta = nudged, opposite, 2 beta
        else:
            a, b, delta = nudged, free, beta
        W_l.grad += -(1 / delta) mean_b[rho(a_{l+1}) rho(a_l)^T - rho(b_{l+1}) rho(b_l)^T]
        b_l.grad += -(1 / delta) mean_b[rho(a_{l+1}) - rho(b_{l+1})]
        return mean_b C(free)
    """

    name = "equilibrium_propagation"
    supported_losses = ("square",)
    conformance_exemptions = {
        "identity": "the EP estimate equals the gradient only in the limit beta -> 0 at an exact "
        "fixed point (bias O(beta), O(beta^2) symmetric); that limit is tested in "
        "tests/test_equilibrium_propagation.py",
    }

    def __init__(
        self,
        model: MLP,
        *,
        generator: torch.Generator | None = None,
        beta: float = 0.5,
        free_steps: int = 20,
        nudged_steps: int = 4,
        dt: float = 0.5,
        symmetric: bool = False,
        random_sign: bool = False,
        activation: str = "hard_sigmoid",
        compile: bool = False,
    ):
        if not isinstance(model, MLP):
            raise TypeError(
                "equilibrium propagation needs a layered energy model: its update comes from "
                "the settled states of the energy E(s) built from the layers' weights, which "
                f"exists for neuroplastic.models.mlp.MLP; got {type(model).__name__}. For "
                "other models use a rule that works through autograd (fa, dfa, sign-symmetry)"
            )
        super().__init__(model)
        if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        for key, value in (("free_steps", free_steps), ("nudged_steps", nudged_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if symmetric and random_sign:
            raise ValueError("random_sign applies to one-sided nudging; symmetric uses both signs")
        if random_sign and generator is None:
            raise ValueError("random_sign=True draws signs from `generator`: pass a Generator")
        self.generator = generator
        self.beta = float(beta)
        self.free_steps = free_steps
        self.nudged_steps = nudged_steps
        self.dt = float(dt)
        self.symmetric = symmetric
        self.random_sign = random_sign
        self.activation = activation
        self.compile = compile

    # -- the network's parameters, detached (the rule writes .grad itself) ----------------------
    def _weights(self) -> tuple[States, States]:
        layers = self.model.layers
        return [m.weight.detach() for m in layers], [m.bias.detach() for m in layers]

    def _settle(self, drive, states, target, beta, steps) -> States:
        weights, biases = self._weights()
        phase = make_phase(drive, weights, biases, target, beta, self.dt, self.activation)
        step = compiled_settle_step() if self.compile else settle_step
        return settle(states, phase, steps, self.activation, step)

    def _drive(self, x: Tensor) -> Tensor:
        first = self.model.layers[0]
        return torch.addmm(first.bias.detach(), x, first.weight.detach().T)  # (B, n_1)

    def _free(self, x: Tensor, drive: Tensor) -> States:
        sizes = self.model.sizes[1:]
        start = [x.new_zeros(x.shape[0], n) for n in sizes]
        return self._settle(drive, start, None, 0.0, self.free_steps)

    @torch.no_grad()
    def free_phase(self, x: Tensor) -> States:
        """The free fixed point ``s^0``: ``[s_1, ..., s_L]``, each ``(B, n_l)``."""
        return self._free(x, self._drive(x))

    @torch.no_grad()
    def nudged_phase(self, x: Tensor, y: Tensor, start: Sequence[Tensor], beta: float) -> States:
        """``nudged_steps`` steps at ``beta`` (any sign) from ``start`` (usually the free point)."""
        target = F.one_hot(y, self.model.sizes[-1]).to(x.dtype)
        return self._settle(self._drive(x), list(start), target, float(beta), self.nudged_steps)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The output states of the free fixed point, ``(B, n_L)``."""
        return self.free_phase(x)[-1]

    @torch.no_grad()
    def backward(self, x: Tensor, y: Tensor, loss: str = "square") -> Tensor:
        """Free phase, nudged phase(s), EP estimate added to ``.grad``; returns the mean square
        cost at the free fixed point (detached)."""
        if loss not in self.supported_losses:
            raise ValueError(
                f"equilibrium propagation supports the losses {self.supported_losses} (the cost on "
                f"the output states), got {loss!r}"
            )
        target = F.one_hot(y, self.model.sizes[-1]).to(x.dtype)  # d (B, n_L)
        drive = self._drive(x)
        free = self._free(x, drive)
        beta = self.beta
        if self.random_sign and torch.randint(2, (1,), generator=self.generator).item() == 0:
            beta = -beta
        nudged = self._settle(drive, free, target, beta, self.nudged_steps)
        if self.symmetric:
            opposite = self._settle(drive, free, target, -beta, self.nudged_steps)
            grad_w, grad_b = ep_gradient(x, nudged, opposite, beta, -beta, self.activation)
        else:
            grad_w, grad_b = ep_gradient(x, nudged, free, beta, 0.0, self.activation)
        for layer, gw, gb in zip(self.model.layers, grad_w, grad_b, strict=True):
            for param, update in ((layer.weight, gw), (layer.bias, gb)):
                if param.grad is None:
                    param.grad = update  # a fresh tensor: no copy needed
                else:
                    param.grad.add_(update)
        return loss_per_example(free[-1], y, "square").mean().detach()
