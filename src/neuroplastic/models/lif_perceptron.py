"""A perceptron with asynchronous inputs and a leaky integrate-and-fire output (Sardi et al.).

The architecture of the teacher-student experiments of Sardi et al. (2019, Sci. Rep. 9:11558;
2020, Sci. Rep. 10:6923): ``N`` inputs, each of which fires once, at its own time ``t_i`` in a
window ``[0, T)``; the output neuron sums them with exponential decay,

    V(t) = sum_{i : t_i <= t} w_i * exp(-(t - t_i) / tau_m),                                (1)

and the output is binary: 1 if ``V`` reaches the threshold ``theta`` (> 0) within the window, else
0. No reset is needed: only whether the neuron fires matters. ``V`` jumps at each arrival and
relaxes towards 0 in between, so for ``theta > 0`` it reaches its largest value in the window
just after an arrival; the neuron fires if and only if ``max_k V(t_(k)) >= theta``, with ``t_(k)``
the k-th arrival in time order. (1) is the paper's description ("asynchronous inputs with
decaying input summation", a leaky integrate-and-fire output); the symbols are ours.

Fast path: in arrival order, with ``u_j = exp((t_(j) - T) / tau_m)`` (in ``(exp(-T/tau_m), 1]``),
the potential just after the k-th arrival is a cumulative sum::

    V_k = sum_{j <= k} w_(j) * exp(-(t_(k) - t_(j)) / tau_m) = cumsum(w_(j) * u_j)_k / u_k

One sort per example (done once, as the inputs are fixed) and one ``cumsum`` per evaluation, for
any leading batch dims (replicas, examples). The division can amplify rounding by at most
``exp(T / tau_m)`` (12 for T = 50, tau_m = 20), which float64 absorbs; ``membrane_potential`` is the
plain reference sum of (1), and the tests prove the two equal.

The learning signal (a tempotron-like rule, Guetig & Sompolinsky 2006, see the experiment
``kanter2020_perceptron``) needs each input's contribution to ``V`` at the decision time
``t* = t_(k*)``, the time of the largest potential: ``c_i = exp(-(t* - t_i) / tau_m)`` for inputs
that arrived by ``t*`` and 0 for later ones, i.e. ``c_i = dV(t*)/dw_i``.

Dendritic scenario: ``K`` dendrites each gather ``N/K`` consecutive inputs; input ``i`` sits on
dendrite ``i // (N/K)`` and its effective weight is ``d_k * s_i`` (dendritic strength times fixed
synaptic weight). Dendritic strengths live in ``[d_min, d_max]`` with reflecting bounds
(:func:`reflect`).

All functions are pure and take explicit tensors; arrival times are drawn from an explicit
``torch.Generator`` on the CPU, so the same seed gives the same inputs on every device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "LIFPerceptronParams",
    "Response",
    "SortedInputs",
    "contributions",
    "dendritic_weights",
    "membrane_potential",
    "potentials_at_arrivals",
    "reflect",
    "respond",
    "sample_arrival_times",
    "sort_inputs",
]


class LIFPerceptronParams(NamedTuple):
    """Time constants of the neuron; any time unit (the experiment uses ms)."""

    tau_m: float
    """Membrane time constant: an input's contribution decays as exp(-elapsed / tau_m)."""
    window: float
    """Length T of the input window [0, T) in which every input fires once."""


class SortedInputs(NamedTuple):
    """Examples with their inputs in arrival order, as the fast path needs them."""

    order: Tensor
    """``(..., N)`` int64: ``order[..., j]`` is the input that arrives j-th."""
    kernel: Tensor
    """``(..., N)``: ``u_j = exp((t_(j) - T) / tau_m)`` of the j-th arrival, in (0, 1]."""


class Response(NamedTuple):
    """The output neuron's answer to a batch of examples."""

    fires: Tensor
    """``(...)`` bool: the potential reached the threshold within the window."""
    v_max: Tensor
    """``(...)``: the largest potential in the window (over arrivals)."""
    k_star: Tensor
    """``(...)`` int64: arrival rank of the decision time t*, where V is largest (the first such
    arrival on a tie)."""


def sample_arrival_times(
    n_examples: int,
    n_inputs: int,
    window: float,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``(n_examples, n_inputs)`` arrival times, independent and uniform in ``[0, window)``.

    Drawn on the CPU from ``generator``: every input fires once per example, at a random delay.
    """
    return torch.rand(n_examples, n_inputs, generator=generator, dtype=dtype) * window


def sort_inputs(times: Tensor, params: LIFPerceptronParams) -> SortedInputs:
    """Arrival order and decay kernel of examples ``times`` (``(..., N)``)."""
    sorted_times, order = torch.sort(times, dim=-1, stable=True)  # (..., N), (..., N)
    kernel = torch.exp((sorted_times - params.window) / params.tau_m)  # (..., N) u_j
    return SortedInputs(order, kernel)


def _in_arrival_order(weights: Tensor, order: Tensor) -> Tensor:
    """``weights`` (``(R, N)`` or ``(N,)``) gathered into the arrival order ``order``.

    ``order`` has the weights' leading dims, optionally followed by an examples dim:
    ``(R, N)``, ``(R, M, N)``, ``(N,)`` or ``(M, N)``.
    """
    if order.dim() > weights.dim():
        weights = weights.unsqueeze(-2).expand(*order.shape)  # (..., M, N), a view
    return torch.gather(weights, -1, order)  # (..., [M,] N)


def potentials_at_arrivals(weights: Tensor, inputs: SortedInputs) -> Tensor:
    """``V`` just after each arrival (Eq. 1), in arrival order: ``(..., N)``.

    ``V_k = cumsum_j(w_(j) * u_j)_k / u_k``; see the module docstring for the shapes.
    """
    w_sorted = _in_arrival_order(weights, inputs.order)  # (..., N) w_(j)
    return torch.cumsum(w_sorted * inputs.kernel, dim=-1) / inputs.kernel  # (..., N) V_k


def respond(weights: Tensor, inputs: SortedInputs, threshold: Tensor | float) -> Response:
    """Whether the neuron fires for each example, and when it decides.

    ``threshold`` (> 0) is a float or a tensor broadcasting against the examples' batch dims
    (e.g. ``(R, 1)`` for ``(R, M)`` examples, one threshold per replica).
    """
    v = potentials_at_arrivals(weights, inputs)  # (..., N)
    v_max, k_star = torch.max(v, dim=-1)  # (...), (...)
    return Response(v_max >= threshold, v_max, k_star)


def contributions(inputs: SortedInputs, k_star: Tensor) -> Tensor:
    """``c_i = exp(-(t* - t_i) / tau_m)`` for inputs arriving by ``t* = t_(k*)``, else 0.

    ``c_i`` is the contribution per unit weight of input ``i`` to ``V(t*)``, i.e.
    ``dV(t*)/dw_i``; returned in *input* order, shape ``(..., N)``.
    """
    u = inputs.kernel  # (..., N)
    u_star = torch.gather(u, -1, k_star.unsqueeze(-1))  # (..., 1) u_{k*}
    rank = torch.arange(u.shape[-1], device=u.device)  # (N,)
    arrived = rank <= k_star.unsqueeze(-1)  # (..., N) j <= k*
    c_sorted = torch.where(arrived, u / u_star, torch.zeros((), dtype=u.dtype, device=u.device))
    return torch.zeros_like(c_sorted).scatter_(-1, inputs.order, c_sorted)  # (..., N)


def membrane_potential(weights: Tensor, times: Tensor, t: Tensor | float, tau_m: float) -> Tensor:
    """Reference for Eq. (1): ``V(t) = sum_{t_i <= t} w_i exp(-(t - t_i) / tau_m)``.

    ``weights`` and ``times`` broadcast over ``(..., N)``; ``t`` broadcasts over ``(...)``.
    A plain sum over inputs, written for clarity, not speed.
    """
    t = torch.as_tensor(t, dtype=times.dtype, device=times.device).unsqueeze(-1)  # (..., 1)
    elapsed = t - times  # (..., N)
    zero = torch.zeros((), dtype=times.dtype, device=times.device)
    terms = torch.where(elapsed >= 0, weights * torch.exp(-elapsed.clamp(min=0) / tau_m), zero)
    return terms.sum(dim=-1)


def dendritic_weights(strengths: Tensor, synapses: Tensor) -> Tensor:
    """Effective weights ``w_i = d_{k(i)} * s_i`` with ``k(i) = i // (N / K)``.

    ``strengths`` ``(..., K)``, ``synapses`` ``(..., N)`` with ``N`` a multiple of ``K``.
    """
    n, k = synapses.shape[-1], strengths.shape[-1]
    if n % k:
        raise ValueError(f"{n} synapses cannot be split evenly over {k} dendrites")
    return torch.repeat_interleave(strengths, n // k, dim=-1) * synapses  # (..., N)


def reflect(x: Tensor, low: float, high: float) -> Tensor:
    """``x`` folded into ``[low, high]`` by reflection at both bounds (any number of times).

    A value that overshoots ``high`` by ``a`` lands at ``high - a``; one that undershoots ``low``
    by ``a`` lands at ``low + a``; an overshoot larger than the range reflects again. Values
    inside the bounds are returned unchanged.
    """
    if not high > low:
        raise ValueError(f"need low < high, got [{low}, {high}]")
    width = high - low
    folded = torch.remainder(x - low, 2 * width)  # [0, 2 width)
    reflected = low + (width - (folded - width).abs())  # [low, high]
    return torch.where((x < low) | (x > high), reflected, x)  # values inside stay bit for bit
