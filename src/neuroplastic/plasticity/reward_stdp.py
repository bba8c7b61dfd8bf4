"""Reward-modulated STDP with eligibility kept for several movement cycles, as in the foraging
network of Golden et al. (2022, Methods, after Sanda et al. 2017): the pair changes of windowed
STDP (``plasticity.stdp``) are not applied when they happen, but stored as traces, and every
reward event scales the traces still stored by the reward and by how long ago they were made.

A pair trace ``tr_k`` (the STDP change of one spike pair, made at step ``t_k``, the later spike
of the pair) is kept for ``cycles_kept`` movement cycles of ``cycle`` steps. At a reward event at
step ``t`` with reward ``S`` (once per movement cycle, at its end: every move is rewarded or
punished in the foraging task), the synapse from presynaptic neuron ``i`` changes as::

    W_ji <- W_ji (1 + (W_i^0 / W_i) S sum_k tr_k / (t - t_k + c))

``c`` (``offset``, one cycle in the paper) keeps the newest traces from dominating; the factor
``W_i^0 / W_i`` (``balance_outputs``: neuron ``i``'s total outgoing weight at the start over its
total now) lets neurons with weak outputs grow. The paper writes a product over traces,
``prod_k (1 + a D_k)``; each ``D_k`` is at most ``0.04 / c`` (below 1e-4 at c = 600 steps), so
the sum differs from the product by less than one part in 10^7 and is what this module computes.
The paper also combines each ``D_k`` with the ratio of ``Sum_tr = sum_k tr_k / (t - t_k + c)``
to its running average ``Avg_tr <- (1 - d) Avg_tr + d Sum_tr`` ("activity normalisation"). Its
published text does not render whether the ratio multiplies or divides, nor over what ``Sum_tr``
is summed; per synapse it would be the change itself, and its square or inverse would lose the
change's sign, so ``activity_normalisation`` reads it over each network's synapses, on absolute
values: ``Sum = sum_ij |E_ij|`` at the reward event (``E`` the event's eligibility), ``Avg``
updated with it (starting at the first nonzero ``Sum``), and ``E`` multiplied by ``Avg / Sum``
(``"divide"``: every event moves the synapses by the same total, the running average) or by
``Sum / Avg`` (``"multiply"``); ``"off"`` (the default) leaves it out.

The authors' simulation (bazhlab-ucsd/spirit3PublicRepo, ``Network::apply_STDP_traces``) settles
the reading: per synapse and signed (``"per_synapse"``). At each reward event, each synapse's
``Sum`` is its own eligibility ``E_ji = sum_k tr_k / (t - t_k + c)``, its running average moves
first, ``Avg_ji <- (1 - d) Avg_ji + d E_ji`` (kept at least 1e-10 in magnitude, its sign
kept, at ``d = 0.001`` there), and each trace changes the weight by the relative amount
``D_k = S (tr_k / (t - t_k + c)) E_ji / Avg_ji``, clipped to ``+-0.01``, then scaled by the
output balancing: ``W_ji <- W_ji prod_k (1 + (W_i^0 / W_i) D_k)``. Unclipped, the traces sum to
``S E_ji^2 / Avg_ji``: a synapse far more active than it usually is at a reward moves by its
full cap, whatever the size of its pair changes, in the direction of its usual activity's sign.
Here the clip (``change_cap``) applies to the event's sum per synapse, which is what the code
computes whenever a synapse holds at most one trace, as in its sparse hidden layer (0.01 spikes
per cycle per neuron); with several traces of one sign it caps their sum at one trace's cap.
``change_cap`` applies to the other readings too.

Because every pair made at step ``t_k`` shares that step, the sum is kept exactly without storing
traces: at each step the step's STDP change ``dW^t`` is added, weighted by
``1 / (T_m - t + c)``, to the accumulators of the ``cycles_kept`` reward events ``T_m`` it will
meet (the ends of this cycle and the next ones), and a reward event consumes its accumulator.
:func:`eligibility_block` does the same for a block of steps at once (``stdp.stdp_block`` with
each accumulator's ages as weights), equal to stepping through it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from neuroplastic.plasticity.stdp import (
    FORAGING,
    STDPParameters,
    STDPState,
    skip_silent,
    stdp_block,
    stdp_step,
)
from neuroplastic.plasticity.stdp import initial_state as stdp_initial_state


class RewardSTDPParameters(NamedTuple):
    stdp: STDPParameters = FORAGING
    """The pair rule whose changes become traces."""
    cycle: int = 600
    """Steps per movement cycle (300 ms at 0.5 ms); reward events come at the end of each."""
    cycles_kept: int = 6
    """Movement cycles a trace is kept for (it meets this many reward events)."""
    offset: float = 600.0
    """``c`` in ``tr / (t - t_k + c)``, in steps (one cycle)."""
    activity_normalisation: str = "off"
    """``"off"``, ``"divide"``, ``"multiply"`` or ``"per_synapse"``: the reading of the paper's
    activity normalisation (module docstring)."""
    activity_rate: float = 0.01
    """``d``, the running average's rate (the paper does not give it; the authors' code: 0.001)."""
    change_cap: float = math.inf
    """Largest relative change ``|S E|`` (after normalisation) of a synapse at one reward event,
    before output balancing (the authors' code: 0.01 per trace; module docstring)."""


GOLDEN2022 = RewardSTDPParameters()
NORMALISATIONS = ("off", "divide", "multiply", "per_synapse")


class RewardSTDPState(NamedTuple):
    stdp: STDPState
    pending: Tensor
    """``(cycles_kept, ..., n_post, n_pre)``: for the reward event at the end of cycle ``m``
    (slot ``m mod cycles_kept``), the sum of ``tr_k / (T_m - t_k + c)`` over the traces made so
    far that it will meet."""
    average_activity: Tensor | None = None
    """The running average ``Avg`` (only with ``activity_normalisation``): ``(...)``, of each
    network's eligibility total, zero until the first event with traces; ``(..., n_post,
    n_pre)``, signed, of each synapse's eligibility with ``"per_synapse"``."""


def initial_state(
    batch: tuple[int, ...], n_pre: int, n_post: int, params: RewardSTDPParameters = GOLDEN2022,
    *, dtype: torch.dtype = torch.float32, device=None,
) -> RewardSTDPState:  # fmt: skip
    stdp = stdp_initial_state(batch, n_pre, n_post, params.stdp, dtype=dtype, device=device)
    pending = torch.zeros(params.cycles_kept, *batch, n_post, n_pre, dtype=dtype, device=device)
    return RewardSTDPState(stdp, pending)


def eligibility_step(
    pre: Tensor, post: Tensor, state: RewardSTDPState, params: RewardSTDPParameters = GOLDEN2022
) -> RewardSTDPState:
    """One step of spikes: the step's pair changes join the eligibility of the reward events
    to come. ``pending`` is updated in place."""
    t = state.stdp.step
    change, stdp = stdp_step(pre, post, state.stdp, params.stdp)
    if change.any():
        cycle = t // params.cycle
        for ahead in range(params.cycles_kept):
            reward_step = (cycle + ahead + 1) * params.cycle - 1  # the cycle's last step
            weight = 1.0 / (reward_step - t + params.offset)
            state.pending[(cycle + ahead) % params.cycles_kept] += weight * change
    return state._replace(stdp=stdp)


def eligibility_block(
    pre: Tensor, post: Tensor, state: RewardSTDPState, params: RewardSTDPParameters = GOLDEN2022
) -> RewardSTDPState:
    """``T`` steps of spikes at once (``pre`` ``(T, ..., n_pre)``, ``post`` ``(T, ..., n_post)``),
    equal to ``T`` calls of :func:`eligibility_step`. ``pending`` is updated in place."""
    steps = pre.shape[0]
    t = torch.arange(state.stdp.step, state.stdp.step + steps, device=pre.device)
    cycle = t // params.cycle
    weights = torch.zeros(params.cycles_kept, steps, dtype=pre.dtype, device=pre.device)
    for ahead in range(params.cycles_kept):
        reward_step = (cycle + ahead + 1) * params.cycle - 1
        slot = (cycle + ahead) % params.cycles_kept
        weights[slot, torch.arange(steps, device=pre.device)] += 1.0 / (
            reward_step - t + params.offset
        ).to(pre.dtype)
    change, stdp = stdp_block(pre, post, state.stdp, params.stdp, weights)
    state.pending.add_(change)
    return state._replace(stdp=stdp)


def skip_silent_steps(
    state: RewardSTDPState, steps: int, params: RewardSTDPParameters = GOLDEN2022
) -> RewardSTDPState:
    """``steps`` steps without spikes: no trace is made, only the STDP traces advance."""
    return state._replace(stdp=skip_silent(state.stdp, steps, params.stdp))


def reward_change(
    weight: Tensor, reward: Tensor | float, state: RewardSTDPState, initial_outputs: Tensor,
    params: RewardSTDPParameters = GOLDEN2022, balance_outputs: bool = True,
) -> tuple[Tensor, RewardSTDPState]:  # fmt: skip
    """The reward event that ends the cycle just completed (call it after the cycle's last
    ``eligibility_step``): ``(dW, state)`` with ``dW = W (W_i^0 / W_i) S sum_k ...`` for
    ``weight`` ``(..., n_post, n_pre)``, ``reward`` a number or one per batch element, and
    ``initial_outputs`` ``W_i^0`` ``(..., n_pre)``; that slot is then emptied for the cycle
    ``cycles_kept`` ahead."""
    steps = state.stdp.step
    if steps == 0 or steps % params.cycle:
        raise ValueError(
            f"a reward event ends a movement cycle of {params.cycle} steps; {steps} steps taken"
        )
    slot = (steps // params.cycle - 1) % params.cycles_kept
    eligibility = state.pending[slot].clone()
    state.pending[slot].zero_()
    if params.activity_normalisation != "off":
        eligibility, state = _normalise_activity(eligibility, state, params)
    reward = torch.as_tensor(reward, dtype=weight.dtype, device=weight.device)
    relative_change = reward.reshape(*reward.shape, 1, 1) * eligibility
    if params.change_cap < math.inf:
        relative_change = relative_change.clamp(-params.change_cap, params.change_cap)
    scale = torch.ones_like(weight[..., :1, :])
    if balance_outputs:
        scale = (initial_outputs / weight.sum(-2))[..., None, :]
    return weight * scale * relative_change, state


def _normalise_activity(
    eligibility: Tensor, state: RewardSTDPState, params: RewardSTDPParameters
) -> tuple[Tensor, RewardSTDPState]:
    """The event's eligibility scaled by ``Avg / Sum`` or ``Sum / Avg`` per network (module
    docstring), and the running average moved on."""
    if params.activity_normalisation not in NORMALISATIONS:
        raise ValueError(f"activity_normalisation must be one of {NORMALISATIONS}, got "
                         f"{params.activity_normalisation!r}")  # fmt: skip
    if params.activity_normalisation == "per_synapse":
        return _normalise_per_synapse(eligibility, state, params)
    total = eligibility.abs().sum((-2, -1))
    average = state.average_activity
    if average is None:
        average = torch.zeros_like(total)
    first = (average == 0) & (total > 0)
    average = torch.where(first, total,
                          (1 - params.activity_rate) * average + params.activity_rate * total)
    if params.activity_normalisation == "divide":
        ratio = torch.where(total > 0, average / total.clamp(min=1e-30), 0.0)
    else:
        ratio = torch.where(average > 0, total / average.clamp(min=1e-30), 0.0)
    return eligibility * ratio[..., None, None], state._replace(average_activity=average)


AVERAGE_FLOOR = 1e-10
"""The smallest magnitude of a synapse's running average (the authors' code), so that a synapse
that has long been silent gets a large but finite ratio."""


def _normalise_per_synapse(
    eligibility: Tensor, state: RewardSTDPState, params: RewardSTDPParameters
) -> tuple[Tensor, RewardSTDPState]:
    """Each synapse's eligibility times its ratio ``E / Avg`` to its own signed running average,
    the average moved on first (module docstring)."""
    average = state.average_activity
    if average is None:
        average = torch.zeros_like(eligibility)
    average = (1 - params.activity_rate) * average + params.activity_rate * eligibility
    # the floor keeps the sign; an average of exactly zero counts as positive, as in the code
    average = torch.where(average >= 0, average.clamp(min=AVERAGE_FLOOR),
                          average.clamp(max=-AVERAGE_FLOOR))  # fmt: skip
    return eligibility * (eligibility / average), state._replace(average_activity=average)
