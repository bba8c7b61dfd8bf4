"""The segregated-dendrite network of Guerguiev, Lillicrap & Richards (2017, eLife 6:e22901).

Sheet: shared/papers/guerguiev2017-segregated-dendrites.md. Hidden neurons have three compartments:
a basal dendrite that receives the layer below, an apical dendrite that receives the output layer
through fixed feedback weights ``Y``, and a soma that spikes (Poisson). Output neurons have a
dendrite and a soma that a teaching current nudges towards the label in the target phase.
With ``dt = 1 ms`` and ``C_m = 1`` (so ``tau = 1/g_l``), one Euler step of each compartment is::

    PSP_j(t) = sum_{i=1..K} kappa(i dt) s_j(t - i + 1)          filtered spike train, K = 10 steps
    kappa(t) = (exp(-t/tau_L) - exp(-t/tau_s)) / (tau_L - tau_s)

    hidden:  V_b = W PSP_below(t) + b                            basal potential
             V_a = Y PSP_out(t - 1)                              apical potential (output spikes
                                                                 reach it one step late)
             C  += dt (-g_l C + g_b (V_b - C) + g_a (V_a - C))   somatic potential
    output:  V_b = W PSP_below(t) + b
             I   = g_E (E_E - C) + g_I (E_I - C)                 teaching current, target phase only
             C  += dt (-g_l C + g_d (V_b - C) + I)
    rate     lambda = phi_max sigmoid(C);  spikes s(t) ~ Poisson(lambda dt)

These are the authors' code's discrete equations (the defaults, ``psp_kernel="authors"`` and
``integration="euler"``). They depart from the paper's continuous ones in two places, which
:class:`DendriticParams` offers in the paper's form:

* The kernel is cut after K = 10 taps, which hold about 51 % of its mass (``sum_{i>=1}
  kappa(i dt)`` = 0.997 with Table 1's time constants; the first 10 taps 0.510): PSPs, and so
  the effective learning rates, are about half the paper's. ``psp_kernel="paper"`` keeps as
  many taps as leave out less than ``PAPER_KERNEL_TAIL`` of the mass (96 with Table 1's).
* Each soma's ODE ``dC/dt = drive - g_total C`` (the paper's somatic equations, in the sheet's
  Model section; ``g_total`` the sum of the conductances onto the soma) is stepped by Euler,
  ``C <- (1 - g_total dt) C + dt drive``. In the target phase ``g_total dt = g_l + g_d + g_E +
  g_I = 1.7``: the decay factor is -0.7, so a transient alternates in sign from step to step
  (the ODE's own factor is ``exp(-1.7) = 0.18``). ``integration="exponential"`` steps it exactly
  for a drive held over the step, ``C <- exp(-g_total dt) C + (1 - exp(-g_total dt)) drive /
  g_total``. Both have the same fixed point ``drive / g_total``, so the rule's ``k_b`` and
  ``k_d`` are unchanged.

Layers update in order within a step (input, hidden 0, hidden 1, ..., output), so feed-forward
input arrives in the same step and feedback one step later, as in the authors' code. A phase
(forward: no teaching current; target: teaching current on) lasts ``phase_steps`` plus a
Wald(2, 1)-distributed extra; the plasticity variables are averages over its last
``phase_steps - settle_steps`` steps. The learning rule on those averages is in
:mod:`neuroplastic.credit.plateau`.

Two simulations of a phase give the same result for the same uniforms (see :class:`PhaseNoise`):

* :func:`simulate_phase_reference`: the equations above, one time step at a time.
* :func:`simulate_phase`: the fast path. With ``g_a = 0`` (the paper's main setting) nothing
  flows back into a soma within a phase, so each layer is computed for *all* time steps at once:
  input spikes for the whole phase, the weights applied to the spike counts (event by event for
  the sparse input), the kernel filter and the linear somatic recurrence
  ``C(t) = a C(t-1) + u(t)`` folded into one cached matrix (``C = M D + ...``, see
  :func:`_soma_matrices`), then the layer's spikes, then the next layer. With ``g_a != 0``
  the apical compartment couples the layers step by step and the fast path falls back to the
  reference loop (still batched over replicas and examples).
* ``simulate_phase(..., backend="numba")``: the reference's time loop compiled
  (:mod:`neuroplastic.kernels.numba_dendrites`, the ``fast`` extra), one (replica, example) at a
  time, event-driven: the weights are applied to each step's spikes as they occur, and a ring
  buffer of those products is filtered by the kernel's taps. It also runs ``g_a != 0``.

Random streams: :meth:`SegregatedDendriteNet.draw_noise` draws a phase's uniforms from torch
generators; :meth:`SegregatedDendriteNet.counter_noise` gives each uniform as a hash of (key,
example, phase, population, step, unit) (:mod:`neuroplastic.kernels.counter_random`), so that
results do not depend on how replicas and examples are batched, and the compiled paths can draw
them inside their loops (:class:`CounterPhase`; ``credit.plateau.learn_example``).

Shapes: every tensor has a leading replica dimension ``R`` (independent networks: seeds or
settings) and an example dimension ``B`` (1 while training online; many at test time).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from neuroplastic.kernels import as_array, resolve_backend
from neuroplastic.kernels import counter_random as crandom
from neuroplastic.kernels.counter_random import CounterStream

FeedbackKind = Literal["random", "sparse", "symmetric"]
PspKernel = Literal["authors", "paper"]
Integration = Literal["euler", "exponential"]

PAPER_KERNEL_TAIL = 1e-4
"""Fraction of the PSP kernel's mass that the ``paper`` kernel leaves out beyond its last tap."""


@dataclass(frozen=True)
class DendriticParams:
    """Table 1 of the paper (time in ms, rates in spikes per ms), and the code's choices."""

    dt: float = 1.0
    phi_max: float = 0.2
    """Maximum rate: 200 Hz = 0.2 spikes per ms."""
    tau_s: float = 3.0
    tau_L: float = 10.0
    kernel_steps: int = 10
    """How many past steps the PSP kernel sums (the authors' ``mem``) with ``psp_kernel``
    ``authors``."""
    psp_kernel: PspKernel = "authors"
    """``authors``: the code's ``kernel_steps`` taps (about 51 % of the kernel's mass with Table
    1's time constants); ``paper``: the kernel untruncated, i.e. as many taps as leave out less
    than ``PAPER_KERNEL_TAIL`` of its mass (see :attr:`kernel_length`)."""
    integration: Integration = "euler"
    """How a somatic ODE advances one step (see :meth:`soma_step`): ``euler`` (the authors'
    code) or ``exponential`` (exact for a drive held over the step)."""
    g_b: float = 0.6
    g_a: float = 0.0
    g_d: float = 0.6
    g_l: float = 0.1
    E_E: float = 8.0
    E_I: float = -8.0
    phase_steps: int = 50
    """Minimum length of a forward or target phase."""
    settle_steps: int = 30
    """Steps at the start of a phase left out of the averages."""
    wald_mean: float = 2.0
    wald_scale: float = 1.0
    test_steps: int = 250
    """Length of the forward phase that classifies a test image (the code's 250 ms)."""

    def __post_init__(self) -> None:
        if self.psp_kernel not in ("authors", "paper"):
            raise ValueError(f"psp_kernel must be authors or paper, got {self.psp_kernel!r}")
        if self.integration not in ("euler", "exponential"):
            raise ValueError(f"integration must be euler or exponential, got {self.integration!r}")

    @property
    def integration_steps(self) -> int:
        """Steps averaged at the end of every training phase (20 with the defaults)."""
        return self.phase_steps - self.settle_steps

    @property
    def test_integration_steps(self) -> int:
        return self.test_steps - self.settle_steps

    @property
    def k_b(self) -> float:
        return self.g_b / (self.g_l + self.g_b + self.g_a)

    @property
    def k_d(self) -> float:
        return self.g_d / (self.g_l + self.g_d)

    @property
    def p_hidden(self) -> float:
        """Scale of the hidden-layer update, P0 = 20 / phi_max."""
        return 20.0 / self.phi_max

    @property
    def p_output(self) -> float:
        """Scale of the output-layer update, P1 = 20 / phi_max^2."""
        return 20.0 / self.phi_max**2

    def kernel_tail(self, taps: int) -> float:
        """``sum_{i > taps} kappa(i dt)``, the mass a kernel of ``taps`` taps leaves out; with
        ``taps = 0`` the whole kernel's. Each exponential of kappa is a geometric series,
        ``sum_{i > K} a^i = a^(K+1) / (1 - a)`` with ``a = exp(-dt / tau)``."""

        def series(tau: float) -> float:
            a = math.exp(-self.dt / tau)
            return a ** (taps + 1) / (1.0 - a)

        return (series(self.tau_L) - series(self.tau_s)) / (self.tau_L - self.tau_s)

    @property
    def kernel_length(self) -> int:
        """Taps K of the PSP kernel: ``kernel_steps`` for the authors' kernel; for the paper's,
        the fewest taps whose omitted tail holds less than ``PAPER_KERNEL_TAIL`` of the mass."""
        if self.psp_kernel == "authors":
            return self.kernel_steps
        taps, whole = 1, self.kernel_tail(0)
        while self.kernel_tail(taps) >= PAPER_KERNEL_TAIL * whole:
            taps += 1
        return taps

    def kernel(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """``kappa(i dt)`` for ``i = K, ..., 1``: oldest step first, like a spike history."""
        t = torch.arange(self.kernel_length, 0, -1, dtype=torch.float64) * self.dt
        values = (torch.exp(-t / self.tau_L) - torch.exp(-t / self.tau_s)) / (
            self.tau_L - self.tau_s
        )
        return values.to(dtype=dtype, device=device)

    def soma_step(self, conductance: float) -> tuple[float, float]:
        """``(decay, gain)`` of one step of ``dC/dt = drive - conductance C`` (``C_m = 1``; the
        paper's somatic equations, ``conductance`` the sum of the conductances onto the soma),
        taken as ``C <- decay C + gain drive``:

        * ``euler`` (the authors' code): ``(1 - conductance dt, dt)``. In the target phase
          (conductance 1.7) the decay is -0.7: a transient alternates in sign.
        * ``exponential``: ``(exp(-conductance dt), (1 - exp(-conductance dt)) / conductance)``,
          the exact solution over the step when the drive is constant over it.

        Both leave the fixed point ``drive / conductance`` where it is."""
        if self.integration == "euler":
            return 1.0 - self.dt * conductance, self.dt
        decay = math.exp(-conductance * self.dt)
        return decay, (1.0 - decay) / conductance


def _uniform(
    generator: torch.Generator, shape: tuple[int, ...], mean: float, sd: float
) -> torch.Tensor:
    """The authors' draw: mean + 3.465 sd U(-1, 1)."""
    return mean + 3.465 * sd * (2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1)


class NetworkState(NamedTuple):
    """What carries over from one phase (and one training example) to the next."""

    input_history: torch.Tensor
    """(R, B, K, n_in) input spike counts of the last K steps, oldest first."""
    soma: tuple[torch.Tensor, ...]
    """Per layer (hidden..., output): (R, B, n) somatic potentials."""
    spike_history: tuple[torch.Tensor, ...]
    """Per layer: (R, B, K, n) spike counts of the last K steps."""


class PhaseAverages(NamedTuple):
    """Averages over the integration window at the end of a phase, per layer."""

    soma: tuple[torch.Tensor, ...]
    """(R, B, n) mean somatic potential."""
    rate: tuple[torch.Tensor, ...]
    """(R, B, n) mean firing rate, phi_max sigmoid(C)."""
    input_psp: tuple[torch.Tensor, ...]
    """(R, B, n_below) mean filtered spike train arriving at the layer's basal dendrite."""
    apical: tuple[torch.Tensor, ...]
    """Per hidden layer: (R, B, n) mean apical potential; its sigmoid is the plateau alpha."""


class ExampleSignals(NamedTuple):
    """What online training reports of each example of a run of C examples
    (``credit.plateau.learn_examples``), beyond the weights it changed."""

    output_soma: torch.Tensor
    """(R, C, n_out) the forward phase's mean output somatic potential: the network's answer
    (its argmax) before the example's update."""
    plateau_errors: tuple[torch.Tensor, ...]
    """Per hidden layer (R, C, n_l): the plateau rule's error ``E_l`` (``hidden_errors``)."""
    backprop_errors: tuple[torch.Tensor, ...]
    """Per hidden layer (R, C, n_l): backprop's error through the same averages and the weights
    after the example's update (``backprop_signals``; the authors' code also reads the weights
    after its update)."""


class PhaseNoise(NamedTuple):
    """The uniforms a phase turns into Poisson spikes, one per neuron and time step.

    Drawing them up front is what lets the reference and the fast simulation consume the same
    random stream: the reference reads step ``t``, the fast path reads all steps at once.
    """

    input: torch.Tensor
    """(R, B, T, n_in)"""
    layers: tuple[torch.Tensor, ...]
    """Per layer: (R, B, T, n)."""

    @property
    def steps(self) -> int:
        return self.input.shape[-2]


class CounterPhase(NamedTuple):
    """A phase's uniforms named by their place in the counter-based stream instead of drawn:
    ``stream`` (a key per replica, and the index of the batch's first example), ``phase``
    (``counter_random.FORWARD``, ``TARGET`` or ``TEST``) and ``steps``. ``simulate_phase``
    with the Numba backend draws them inside its loop; every other path materialises them with
    :meth:`SegregatedDendriteNet.counter_noise` (the same values)."""

    stream: CounterStream
    phase: int
    steps: int


class PhaseResult(NamedTuple):
    state: NetworkState
    averages: PhaseAverages
    spikes: tuple[torch.Tensor, ...] | None
    """With ``keep_spikes``: (R, B, T, n) spike counts of the input and of every layer."""


class SegregatedDendriteNet(nn.Module):
    """``R`` independent networks ``sizes[0] -> ... -> sizes[-1]`` of segregated-dendrite neurons.

    Parameters (``weights[l]``: (R, n_below, n_l), input-major so that a layer computes
    ``psp @ W + b`` and an input spike selects a contiguous row; ``biases[l]``: (R, n_l)) are
    ``nn.Parameter`` so that the plateau rule can write ``.grad`` and any ``torch.optim``
    optimiser take the step. The feedback matrices ``feedback[l]``: (R, n_out, n_l), one per
    hidden layer, each straight from the output layer (the paper's direct feedback), are buffers.

    ``feedback``: ``random`` (fixed, drawn like the forward weights), ``sparse`` (random, 80 % of
    the entries zeroed and the rest multiplied by 5), ``symmetric`` (``Y`` = the transpose of the
    weights above, products of them for lower layers, kept in step after every update).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        replicas: int = 1,
        feedback: FeedbackKind = "random",
        params: DendriticParams | None = None,
        generators: Sequence[torch.Generator] | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if len(sizes) < 2 or any(n <= 0 for n in sizes):
            raise ValueError(f"sizes must be at least two positive widths, got {list(sizes)}")
        if feedback not in ("random", "sparse", "symmetric"):
            raise ValueError(f"feedback must be random, sparse or symmetric, got {feedback!r}")
        if generators is not None and len(generators) != replicas:
            raise ValueError(f"need one generator per replica ({replicas}), got {len(generators)}")
        self.sizes = tuple(sizes)
        self.replicas = replicas
        self.feedback_kind = feedback
        self.params = params or DendriticParams()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_below, n in zip(sizes[:-1], sizes[1:], strict=True):
            self.weights.append(nn.Parameter(torch.zeros(replicas, n_below, n, dtype=dtype)))
            self.biases.append(nn.Parameter(torch.zeros(replicas, n, dtype=dtype)))
        for layer in range(self.n_hidden):
            self.register_buffer(
                f"feedback_{layer}", torch.zeros(replicas, sizes[-1], sizes[layer + 1], dtype=dtype)
            )
            self.register_buffer(
                f"feedback_mask_{layer}", torch.ones_like(getattr(self, f"feedback_{layer}"))
            )
        self.reset_parameters(generators or [torch.Generator() for _ in range(replicas)])

    @property
    def n_hidden(self) -> int:
        return len(self.sizes) - 2

    @property
    def feedback(self) -> list[torch.Tensor]:
        return [getattr(self, f"feedback_{layer}") for layer in range(self.n_hidden)]

    @torch.no_grad()
    def reset_parameters(self, generators: Sequence[torch.Generator]) -> None:
        """The authors' initialisation: uniform weights whose mean and spread put the dendritic
        potentials near mean 3 and s.d. 3 when the inputs are rates linearised as nu V with
        nu = phi_max / 4 (slope of the sigmoid's linear part), biases near 0.8 (the code's
        ``use_weight_optimization``). Replica ``r`` draws from ``generators[r]``,
        output layer first, then each layer below with its feedback matrix."""
        v_mean, v_sd, b_mean, b_sd = 3.0, 3.0, 0.8, 0.001
        nu = 0.25 * self.params.phi_max
        v_second = v_sd**2 + v_mean**2
        for replica, gen in enumerate(generators):
            for layer in range(len(self.weights) - 1, -1, -1):
                n_below, n = self.weights[layer].shape[1:]
                w_mean = (v_mean - b_mean) / (nu * n_below * v_mean)
                w_second = (
                    v_second
                    + nu**2 * (n_below - n_below**2) * w_mean**2 * v_mean**2
                    - 2 * n_below * nu * b_mean * v_mean * w_mean
                    - b_mean**2
                ) / (n_below * nu**2 * v_second)
                w_sd = math.sqrt(w_second - w_mean**2)
                self.weights[layer][replica] = _uniform(gen, (n_below, n), w_mean, w_sd)
                self.biases[layer][replica] = _uniform(gen, (n,), b_mean, b_sd)
                if layer > 0:
                    # the feedback into the layer below, drawn with this layer's statistics
                    shape = (self.sizes[-1], n_below)
                    self.feedback[layer - 1][replica] = _uniform(gen, shape, w_mean, w_sd)
            if self.feedback_kind == "sparse":
                for layer, y in enumerate(self.feedback):
                    keep = torch.ones(y[replica].numel(), dtype=y.dtype)
                    keep[torch.randperm(keep.numel(), generator=gen)[: int(0.8 * keep.numel())]] = 0
                    getattr(self, f"feedback_mask_{layer}")[replica] = keep.view_as(y[replica])
        for layer, y in enumerate(self.feedback):
            if self.feedback_kind == "sparse":
                y.mul_(5.0 * getattr(self, f"feedback_mask_{layer}"))
        self.sync_feedback()

    @torch.no_grad()
    def sync_feedback(self) -> None:
        """Symmetric feedback follows the forward weights: Y_last = W_out^T, Y_l = Y_{l+1} W_{l+1}^T
        (input-major weights: the output's effect on layer l through the layers above).
        A no-op for random and sparse feedback, which stay fixed."""
        if self.feedback_kind != "symmetric":
            return
        above = None
        for layer in range(self.n_hidden - 1, -1, -1):
            w_above = self.weights[layer + 1].transpose(1, 2)  # (R, n_{l+1}, n_l) -> W^T
            value = w_above if above is None else above @ w_above
            self.feedback[layer].copy_(value)
            above = self.feedback[layer]

    def initial_state(self, examples: int = 1) -> NetworkState:
        """Silent network: no spikes in the history, somatic potentials at rest (0)."""
        ref = self.weights[0]
        k = self.params.kernel_length
        shape = (self.replicas, examples)
        return NetworkState(
            input_history=ref.new_zeros(*shape, k, self.sizes[0]),
            soma=tuple(ref.new_zeros(*shape, n) for n in self.sizes[1:]),
            spike_history=tuple(ref.new_zeros(*shape, k, n) for n in self.sizes[1:]),
        )

    def draw_noise(
        self,
        steps: int,
        generator: torch.Generator | Sequence[torch.Generator],
        examples: int = 1,
        input_rates: torch.Tensor | None = None,
    ) -> PhaseNoise:
        """Uniforms for one phase of ``steps`` steps.

        With one generator per replica each replica's stream depends only on its own generator
        (a seed's run does not depend on which other seeds share its batch); one generator
        draws for all replicas at once. Given the phase's ``input_rates`` (R, B, n_in) and one
        generator per replica, input uniforms are drawn only for the inputs with a non-zero rate
        in that replica (an input at rate 0 never spikes, whatever its uniform): a fifth of
        the draws on MNIST."""
        ref = self.weights[0]
        generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
        per_replica = len(generators) > 1 or self.replicas == 1
        if per_replica and len(generators) != self.replicas:
            raise ValueError(f"need 1 or {self.replicas} generators, got {len(generators)}")

        def draw(n: int, g: torch.Generator, replicas: int) -> torch.Tensor:
            shape = (replicas, examples, steps, n)
            return torch.rand(shape, generator=g, dtype=ref.dtype, device=g.device).to(ref.device)

        if not per_replica:
            layers = tuple(draw(n, generators[0], self.replicas) for n in self.sizes[1:])
            return PhaseNoise(draw(self.sizes[0], generators[0], self.replicas), layers)
        inputs, layers = [], []
        for r, g in enumerate(generators):
            if input_rates is None:
                inputs.append(draw(self.sizes[0], g, 1))
            else:
                columns = (input_rates[r] != 0).any(dim=0).nonzero().squeeze(1)
                values = ref.new_zeros(1, examples, steps, self.sizes[0])
                values[..., columns] = draw(len(columns), g, 1)
                inputs.append(values)
            layers.append([draw(n, g, 1) for n in self.sizes[1:]])
        return PhaseNoise(
            torch.cat(inputs), tuple(torch.cat(parts) for parts in zip(*layers, strict=True))
        )

    def counter_noise(
        self,
        steps: int,
        stream: CounterStream,
        phase: int,
        examples: int = 1,
        input_rates: torch.Tensor | None = None,
    ) -> PhaseNoise:
        """Uniforms for one phase from the counter-based stream (:mod:`neuroplastic.kernels.
        counter_random`): replica ``r``, example ``b`` of the batch, population ``l`` (0 the
        input), step ``t``, unit ``j`` at ``stream.keys[r] -> stream.example + b -> phase -> l
        -> t -> j``; ``phase`` is ``counter_random.FORWARD``, ``TARGET`` or ``TEST``. These are
        the values that ``learn_example(..., backend="numba")`` draws inside its compiled loop,
        so the reference simulation fed this noise is its check. Unlike :meth:`draw_noise` the
        values do not depend on what else is drawn, or on how replicas and examples are
        batched. Given ``input_rates``, inputs at rate 0 everywhere get 0 (they never spike).
        Float32 and float64 exactly; other dtypes get the float64 values rounded."""
        ref = self.weights[0]
        if len(stream.keys) != self.replicas:
            raise ValueError(f"need one key per replica ({self.replicas}), got {len(stream.keys)}")
        device = ref.device
        keys = crandom.words_tensor(stream.words(), device)
        examples = crandom.words_tensor(int(stream.example) + np.arange(examples), device)
        columns = None
        if input_rates is not None:
            columns = (input_rates != 0).flatten(0, -2).any(dim=0).nonzero().squeeze(1)
        return counter_uniforms(self.sizes, keys, examples, phase, steps, ref.dtype, columns)


def counter_uniforms(
    sizes: Sequence[int],
    keys: torch.Tensor,
    examples: torch.Tensor,
    phase: int,
    steps: int,
    dtype: torch.dtype,
    input_columns: torch.Tensor | None = None,
) -> PhaseNoise:
    """:meth:`SegregatedDendriteNet.counter_noise` on tensors: ``keys`` (R,) and ``examples``
    (R, B) or (B,) int64 words on the network's device. Every input is drawn, or only
    ``input_columns`` (the others get 0). Hashed where the tensors are, all replicas and
    examples at once, with no copy from the host (so a CUDA graph can capture it)."""
    device = keys.device
    hashed = dtype if dtype in (torch.float32, torch.float64) else torch.float64

    def population(layer: int, units: torch.Tensor) -> torch.Tensor:
        where = (keys, examples, phase, layer, steps, units)
        return crandom.population_uniforms_tensor(*where, hashed).to(dtype)

    if input_columns is None:
        inputs = population(0, torch.arange(sizes[0], device=device))
    else:
        drawn = population(0, input_columns.to(device))
        inputs = drawn.new_zeros(*drawn.shape[:-1], sizes[0])
        inputs[..., input_columns] = drawn
    layers = tuple(
        population(layer + 1, torch.arange(n, device=device)) for layer, n in enumerate(sizes[1:])
    )
    return PhaseNoise(inputs, layers)


def _poisson_low_counts(
    rate: torch.Tensor, uniform: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts 0, 1, 2 of :func:`poisson_from_uniform`, and where the count is higher."""
    scaled = uniform * torch.exp(rate)
    count = (scaled > 1.0).to(rate.dtype) + (scaled > 1.0 + rate).to(rate.dtype)
    return count, scaled > 1.0 + rate + rate * rate * 0.5


def poisson_from_uniform(
    rate: torch.Tensor, uniform: torch.Tensor, max_count: int = 16, dense: bool = False
) -> torch.Tensor:
    """Poisson(rate) counts by inverting the CDF at ``uniform``: the count is the number of
    cumulative probabilities P(N <= k) = exp(-rate) S_k, S_k = sum_{j<=k} rate^j / j!, that
    ``uniform`` exceeds. Exact up to ``max_count`` (for rates <= 0.2 per step the probability of
    more is below 1e-20).

    The comparisons are made as ``uniform exp(rate) > S_k``. Counts of 0, 1 and 2 (all but about
    one draw in a thousand at these rates) are settled on the whole tensor; only draws beyond S_2
    go on, gathered into a short vector. ``dense``: every draw goes on (the same counts, and no
    shape that depends on the data, as a CUDA graph needs)."""
    count, beyond = _poisson_low_counts(rate, uniform)
    return _poisson_high_counts(rate, uniform, count, beyond, max_count, dense)


def _poisson_high_counts(
    rate: torch.Tensor,
    uniform: torch.Tensor,
    count: torch.Tensor,
    beyond: torch.Tensor,
    max_count: int = 16,
    dense: bool = False,
) -> torch.Tensor:
    """Add the counts above 2 (where ``beyond``) to ``count``, on the gathered few draws; or,
    ``dense``, on every draw (:func:`_dense_high_counts`)."""
    if dense:
        return _dense_high_counts(rate, uniform, count, beyond, max_count)
    rest = beyond.nonzero(as_tuple=True)
    if rest[0].numel() == 0:
        return count
    rate_rest = rate.expand_as(count)[rest]
    scaled = uniform.expand_as(count)[rest] * torch.exp(rate_rest)
    # S_k for k = 3 .. max_count - 1 at once: term_k = term_{k-1} rate / k, S_k = S_{k-1} + term_k
    orders = torch.arange(3, max_count, dtype=rate.dtype, device=rate.device)
    terms = (rate_rest * rate_rest * 0.5)[:, None] * torch.cumprod(
        rate_rest[:, None] / orders, dim=1
    )
    partials = (1.0 + rate_rest + rate_rest * rate_rest * 0.5)[:, None] + torch.cumsum(terms, dim=1)
    extra = 1.0 + (scaled[:, None] > partials).sum(dim=1).to(rate.dtype)
    count[rest] += extra
    return count


def _dense_high_counts(rate, uniform, count, beyond, max_count):
    """:func:`_poisson_high_counts` on every draw: the same S_k, summed in the same order (the
    running product and sum that ``cumprod`` and ``cumsum`` take there), compared everywhere."""
    scaled = uniform * torch.exp(rate)
    base = 1.0 + rate + rate * rate * 0.5
    half_square = rate * rate * 0.5
    count = count + beyond.to(count.dtype)
    product = total = None
    for order in range(3, max_count):
        ratio = rate / order
        product = ratio if product is None else product * ratio
        total = half_square * product if total is None else total + half_square * product
        count = count + (scaled > base + total).to(count.dtype)
    return count


def teaching_conductances(
    labels: torch.Tensor, n_out: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """g_E = 1, g_I = 0 for the correct output unit; g_E = 0, g_I = 1 for the others."""
    # a comparison rather than ``one_hot``, which checks the labels' range on the host
    g_e = (labels[..., None] == torch.arange(n_out, device=labels.device)).to(dtype)
    return g_e, 1.0 - g_e


# --------------------------------------------------------------------------- reference path


def _materialise(
    net: SegregatedDendriteNet, noise: PhaseNoise | CounterPhase, input_rates: torch.Tensor
) -> PhaseNoise:
    """The uniforms of ``noise``, drawn if it is a :class:`CounterPhase`."""
    if isinstance(noise, CounterPhase):
        examples = input_rates.shape[1]
        return net.counter_noise(noise.steps, noise.stream, noise.phase, examples, input_rates)
    return noise


def _exact_step(
    c: torch.Tensor, conductance: float | torch.Tensor, drive: torch.Tensor, dt: float
) -> torch.Tensor:
    """One step of ``dC/dt = drive - conductance C`` solved exactly for a drive and conductance
    held over the step: ``C`` relaxes towards ``drive / conductance`` by ``exp(-conductance
    dt)`` (``integration="exponential"``; a tensor conductance, the target phase's, per unit)."""
    decay = torch.exp(-dt * torch.as_tensor(conductance, dtype=c.dtype, device=c.device))
    return decay * c + (1.0 - decay) / conductance * drive


@torch.no_grad()
def simulate_phase_reference(
    net: SegregatedDendriteNet,
    state: NetworkState,
    input_rates: torch.Tensor,
    noise: PhaseNoise | CounterPhase,
    window: int,
    labels: torch.Tensor | None = None,
    keep_spikes: bool = False,
) -> PhaseResult:
    """One phase, one time step after another, exactly as the module docstring writes it.

    ``input_rates``: (R, B, n_in) spikes per step (phi_max times the pixel intensity);
    ``noise``: the uniforms (or a :class:`CounterPhase`, drawn with ``counter_noise``);
    ``labels``: (R, B) class indices to switch the teaching current on (target phase), or None
    (forward phase). Averages cover the last ``window`` steps.
    """
    p = net.params
    noise = _materialise(net, noise, input_rates)
    exact = p.integration == "exponential"
    kernel = p.kernel(input_rates.dtype, input_rates.device)  # (K,) oldest first
    n_layers = len(net.weights)
    steps = noise.steps
    teaching = (
        None if labels is None else teaching_conductances(labels, net.sizes[-1], input_rates.dtype)
    )

    def psp(history: torch.Tensor) -> torch.Tensor:  # (R, B, K, n) -> (R, B, n)
        return torch.einsum("rbkn,k->rbn", history, kernel)

    def apply(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (R, m, n), (R, B, m)
        return x @ weight

    input_history = state.input_history
    soma = list(state.soma)
    history = list(state.spike_history)
    sums = {name: [None] * n_layers for name in ("soma", "rate", "input_psp", "apical")}
    recorded: list[list[torch.Tensor]] = [[] for _ in range(n_layers + 1)]

    def accumulate(name: str, layer: int, value: torch.Tensor) -> None:
        sums[name][layer] = value if sums[name][layer] is None else sums[name][layer] + value

    for t in range(steps):
        spikes = poisson_from_uniform(input_rates, noise.input[:, :, t])
        input_history = torch.cat([input_history[:, :, 1:], spikes[:, :, None]], dim=2)
        recorded[0].append(spikes)
        below = psp(input_history)
        output_psp_before = psp(history[-1])  # output spikes up to t - 1
        in_window = t >= steps - window
        for layer in range(n_layers):
            basal = apply(net.weights[layer], below) + net.biases[layer][:, None]
            c = soma[layer]
            if layer < n_layers - 1:
                apical = apply(net.feedback[layer], output_psp_before)
                if exact:
                    drive = p.g_b * basal + p.g_a * apical
                    c = _exact_step(c, p.g_l + p.g_b + p.g_a, drive, p.dt)
                else:
                    c = c + p.dt * (-p.g_l * c + p.g_b * (basal - c) + p.g_a * (apical - c))
                if in_window:
                    accumulate("apical", layer, apical)
            elif exact:
                conductance, drive = p.g_l + p.g_d, p.g_d * basal
                if teaching is not None:
                    g_e, g_i = teaching
                    conductance, drive = conductance + g_e + g_i, drive + g_e * p.E_E + g_i * p.E_I
                c = _exact_step(c, conductance, drive, p.dt)
            else:
                current = 0.0
                if teaching is not None:
                    g_e, g_i = teaching
                    current = g_e * (p.E_E - c) + g_i * (p.E_I - c)
                c = c + p.dt * (-p.g_l * c + p.g_d * (basal - c) + current)
            soma[layer] = c
            rate = p.phi_max * torch.sigmoid(c)
            spikes = poisson_from_uniform(rate, noise.layers[layer][:, :, t])
            history[layer] = torch.cat([history[layer][:, :, 1:], spikes[:, :, None]], dim=2)
            recorded[layer + 1].append(spikes)
            if in_window:
                accumulate("soma", layer, c)
                accumulate("rate", layer, rate)
                accumulate("input_psp", layer, below)
            below = psp(history[layer])

    averages = PhaseAverages(
        soma=tuple(s / window for s in sums["soma"]),
        rate=tuple(s / window for s in sums["rate"]),
        input_psp=tuple(s / window for s in sums["input_psp"]),
        apical=tuple(s / window for s in sums["apical"][: n_layers - 1]),
    )
    spikes = tuple(torch.stack(r, dim=2) for r in recorded) if keep_spikes else None
    return PhaseResult(NetworkState(input_history, tuple(soma), tuple(history)), averages, spikes)


# --------------------------------------------------------------------------- fast path


@functools.lru_cache(maxsize=64)
def _soma_matrices(
    size: int, kernel: tuple[float, ...], decay: float, gain: float, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matrices that turn a block of ``size`` steps of unfiltered drive into somatic potentials.

    With ``u(t) = gain (sum_i kernel[i] D[t + 1 + i]) + offset`` (D: the weights applied to the
    spike counts, K - 1 rows of history first) and ``C(t) = decay C(t-1) + u(t)``:
    ``C = M D + geo offset + power C(-1)``, where ``M = gain L F``, ``F`` the banded kernel
    matrix, ``L[t, s] = decay^(t-s)`` for s <= t, ``geo[t] = sum_{s<=t} decay^(t-s)`` and
    ``power[t] = decay^(t+1)``. Built once per (size, kernel, decay, gain) and cached."""
    k = len(kernel)
    powers = torch.cumprod(torch.full((size + 1,), decay, dtype=torch.float64), dim=0) / decay
    lag = torch.arange(size)[:, None] - torch.arange(size)[None, :]
    recurrence = torch.where(lag >= 0, powers[lag.clamp(min=0)], 0.0)  # (size, size)
    band = torch.zeros(size, size + k - 1, dtype=torch.float64)
    for i, value in enumerate(kernel):
        band[torch.arange(size), torch.arange(size) + i] = value
    matrices = (gain * recurrence @ band, recurrence.sum(dim=1), powers[1:])
    return tuple(m.to(dtype=dtype, device=device) for m in matrices)


@functools.lru_cache(maxsize=16)
def _window_weights(
    window: int, kernel: tuple[float, ...], delay: int, dtype: torch.dtype, device: str
) -> torch.Tensor:
    """``w`` with ``w @ tail`` = the mean over the last ``window`` steps of the filtered train,
    ``tail`` = the last ``window + K`` rows of counts (``delay`` = 1: the train one step late)."""
    k = len(kernel)
    weights = torch.zeros(window + k, dtype=torch.float64)
    for t in range(window):
        for i, value in enumerate(kernel):
            weights[t + 1 + i - delay] += value / window
    return weights.to(dtype=dtype, device=device)


def _window_mean(
    full: torch.Tensor,
    window: int,
    kernel: tuple[float, ...],
    delay: int,
    ends: torch.Tensor | None,
) -> torch.Tensor:
    """The mean over a phase's last ``window`` steps of the filtered train (``delay`` 1: one step
    late), (R, B, n), from the counts (R, B, K + T, n), history first; ``ends`` see
    :func:`_phase_core`."""
    weights = _window_weights(window, kernel, delay, full.dtype, str(full.device))
    if ends is None:
        return weights @ full[:, :, -len(weights) :]
    # the weights placed so that their last one meets the phase's last step, row K + end - 1
    place = torch.arange(full.shape[2], device=full.device) - (ends[..., None] - window)
    inside = (place >= 0) & (place < len(weights))
    spread = torch.where(inside, weights[place.clamp(0, len(weights) - 1)], 0.0)  # (R, B, K + T)
    return (spread[..., None, :] @ full).squeeze(-2)


def _mean_over_window(x: torch.Tensor, window: int, ends: torch.Tensor | None) -> torch.Tensor:
    """(R, B, T, n) -> (R, B, n): the mean over each phase's last ``window`` steps."""
    if ends is None:
        return x[:, :, -window:].mean(dim=2)
    step = torch.arange(x.shape[2], device=x.device)
    inside = (step >= ends[..., None] - window) & (step < ends[..., None])  # (R, B, T)
    return ((inside.to(x.dtype) / window)[..., None, :] @ x).squeeze(-2)


def _at_end(x: torch.Tensor, ends: torch.Tensor | None) -> torch.Tensor:
    """(R, B, T, n) -> (R, B, n): the value at each phase's last step."""
    if ends is None:
        return x[:, :, -1]
    index = (ends - 1)[..., None, None].expand(*ends.shape, 1, x.shape[-1])
    return x.gather(2, index).squeeze(2)


def _last_rows(full: torch.Tensor, k: int, ends: torch.Tensor | None) -> torch.Tensor:
    """(R, B, K + T, n) counts, history first -> (R, B, K, n): those of each phase's last K steps
    (rows ``end .. end + K - 1``)."""
    if ends is None:
        return full[:, :, -k:]
    rows = ends[..., None] + torch.arange(k, device=full.device)  # (R, B, K)
    return full.gather(2, rows[..., None].expand(*rows.shape, full.shape[-1]))


def _soma_over_time(
    drive: torch.Tensor, kernel: tuple[float, ...], decay: float, gain: float,
    offset: torch.Tensor, initial: torch.Tensor, block: int = 64,
) -> torch.Tensor:  # fmt: skip
    """Somatic potentials (R, B, T, n) from the unfiltered drive (R, B, K + T, n), block by block
    (products of at most ``block`` x ``block + K - 1`` matrices keep long phases linear in T)."""
    k = len(kernel)
    steps = drive.shape[-2] - k
    outputs, before = [], initial
    for start in range(0, steps, block):
        n = min(block, steps - start)
        matrix, geo, power = _soma_matrices(n, kernel, decay, gain, drive.dtype, str(drive.device))
        rows = drive[..., start + 1 : start + n + k, :]  # (R, B, n + K - 1, units)
        # one (n, n + K - 1) x (n + K - 1, everything else) product per block
        flat = rows.movedim(-2, 0).reshape(n + k - 1, -1)
        response = (matrix @ flat).reshape(n, *rows.shape[:-2], rows.shape[-1]).movedim(0, -2)
        out = response + geo[:, None] * offset[..., None, :] + power[:, None] * before[..., None, :]
        outputs.append(out)
        before = out[..., -1, :]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)


def _sparse_apply(spikes: torch.Tensor, weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """(R, B, T, a) spike counts of the inputs ``inputs`` (a indices into the m rows of the
    (R, m, n) weights) times those weights, touching only the non-zero counts: one sparse-dense
    product of a block-diagonal (replica) spike matrix with the stacked weights."""
    r, b, t, _ = spikes.shape
    m = weight.shape[1]
    index = spikes.nonzero(as_tuple=True)
    rows = (index[0] * b + index[1]) * t + index[2]
    columns = index[0] * m + inputs[index[3]]
    matrix = torch.sparse_coo_tensor(
        torch.stack([rows, columns]), spikes[index], (r * b * t, r * m),
        is_coalesced=True, check_invariants=False,
    )  # fmt: skip
    return torch.sparse.mm(matrix, weight.reshape(r * m, -1)).reshape(r, b, t, -1)


def _apply_over_time(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(R, m, n) weights applied to (R, B, T, m) trains: one batched matrix product per replica."""
    r, b, t, m = x.shape
    return (x.reshape(r, b * t, m) @ weight).reshape(r, b, t, -1)


@torch.no_grad()
def simulate_phase(
    net: SegregatedDendriteNet,
    state: NetworkState,
    input_rates: torch.Tensor,
    noise: PhaseNoise | CounterPhase,
    window: int,
    labels: torch.Tensor | None = None,
    keep_spikes: bool = False,
    backend: str = "torch",
    average_rates: bool = True,
) -> PhaseResult:
    """The fast path of :func:`simulate_phase_reference`: same arguments, same results for the same
    noise (up to float rounding).

    ``average_rates=False`` (a test, which reads only the somatic potentials) lets the Numba
    backend skip the rates where no spike can come of them; its ``averages.rate`` is then
    empty.

    ``backend``: ``torch`` (each layer vectorised over the phase's time steps; the reference loop
    when ``g_a != 0``), ``numba`` (the time loop compiled, :mod:`neuroplastic.kernels.
    numba_dendrites`; float32 or float64 on the CPU, PyTorch otherwise) or ``auto`` (Numba on the
    CPU when it is installed). ``noise`` may be a :class:`CounterPhase`: the Numba backend then
    draws the uniforms inside its loop."""
    p = net.params
    if backend not in ("auto", "torch", "numba"):
        raise ValueError(f"backend must be auto, torch or numba, got {backend!r}")
    device = input_rates.device
    if backend == "auto" and device.type != "cpu":
        backend = "torch"
    if resolve_backend(backend, device) == "numba":
        dtype = net.weights[0].dtype
        tensors = (input_rates, state.input_history, *state.soma)
        if isinstance(noise, PhaseNoise):
            tensors = (*tensors, noise.input)
        if dtype in (torch.float32, torch.float64) and all(x.dtype == dtype for x in tensors):
            return _simulate_phase_numba(
                net, state, input_rates, noise, window, labels, keep_spikes, average_rates
            )
    noise = _materialise(net, noise, input_rates)
    if p.g_a != 0.0:
        return simulate_phase_reference(net, state, input_rates, noise, window, labels, keep_spikes)
    # Only inputs with a non-zero rate, or spikes still in their history, can touch the basal
    # dendrites in this phase (on MNIST about a fifth of the pixels): simulate just those columns.
    active = (input_rates != 0) | (state.input_history != 0).any(dim=2)
    active = active.flatten(0, 1).any(dim=0).nonzero().squeeze(1)
    teaching = None
    if labels is not None:
        teaching = teaching_conductances(labels, net.sizes[-1], input_rates.dtype)
    out = _phase_core(
        tuple(net.weights), tuple(net.biases), tuple(net.feedback),
        state.input_history[..., active], state.soma, state.spike_history,
        input_rates[:, :, None, active], noise.input[..., active], noise.layers, active,
        teaching, tuple(p.kernel(torch.float64).tolist()), _constants(p), window,
    )  # fmt: skip
    (
        input_history,
        input_psp,
        somas,
        histories,
        soma_means,
        rate_means,
        psp_means,
        apical,
        spikes,
    ) = out
    new_input_history = torch.zeros_like(state.input_history)
    new_input_history[..., active] = input_history
    input_psp_mean = torch.zeros_like(input_rates)
    input_psp_mean[..., active] = input_psp
    recorded = None
    if keep_spikes:
        recorded = (torch.zeros_like(noise.input), *spikes[1:])
        recorded[0][..., active] = spikes[0]
    averages = PhaseAverages(soma_means, rate_means, (input_psp_mean, *psp_means), apical)
    return PhaseResult(NetworkState(new_input_history, somas, histories), averages, recorded)


def _simulate_phase_numba(
    net: SegregatedDendriteNet,
    state: NetworkState,
    input_rates: torch.Tensor,
    noise: PhaseNoise | CounterPhase,
    window: int,
    labels: torch.Tensor | None,
    keep_spikes: bool,
    average_rates: bool = True,
) -> PhaseResult:
    """:func:`simulate_phase` through the compiled loop: PyTorch tensors in and out (the kernel
    writes into NumPy views of freshly zeroed result tensors)."""
    from neuroplastic.kernels.numba_dendrites import phase
    from neuroplastic.kernels.numba_rsnn import follow_torch_threads

    p = net.params
    n_hidden = net.n_hidden
    replicas, examples = input_rates.shape[:2]
    ref = input_rates

    def zeros(*shape: int) -> torch.Tensor:
        return ref.new_zeros(*shape)

    k = p.kernel_length
    sizes = net.sizes
    counter = None
    if isinstance(noise, CounterPhase):
        stream, steps = noise.stream, noise.steps
        if len(stream.keys) != net.replicas:
            raise ValueError(f"need one key per replica ({net.replicas}), got {len(stream.keys)}")
        counter = (stream.words(), stream.example, noise.phase, steps)
        shapes = [(replicas, examples, steps, n) for n in sizes]
        noise = None
    else:
        shapes = [tuple(noise.input.shape), *(tuple(u.shape) for u in noise.layers)]
    out = {
        "new_input_history": zeros(*state.input_history.shape),
        "input_psp": zeros(*input_rates.shape),
        "new_somas": tuple(zeros(replicas, examples, n) for n in sizes[1:]),
        "new_histories": tuple(zeros(replicas, examples, k, n) for n in sizes[1:]),
        "soma_means": tuple(zeros(replicas, examples, n) for n in sizes[1:]),
        "rate_means": tuple(zeros(replicas, examples, n) for n in sizes[1:]),
        "psp_means": tuple(zeros(replicas, examples, n) for n in sizes[1:-1]),
        "apical_means": tuple(zeros(replicas, examples, n) for n in sizes[1:-1]),
        "input_spikes": zeros(*shapes[0]) if keep_spikes else None,
        "layer_spikes": tuple(zeros(*shape) for shape in shapes[1:]) if keep_spikes else None,
    }

    def arrays(value):
        if value is None or isinstance(value, torch.Tensor):
            return None if value is None else value.numpy()
        return tuple(v.numpy() for v in value)

    follow_torch_threads()
    phase(
        [as_array(w) for w in net.weights], [as_array(b) for b in net.biases],
        [as_array(y) for y in net.feedback[:n_hidden]], as_array(state.input_history),
        [as_array(c) for c in state.soma], [as_array(h) for h in state.spike_history],
        as_array(input_rates), None if noise is None else as_array(noise.input),
        None if noise is None else [as_array(u) for u in noise.layers],
        None if labels is None else as_array(labels.to(torch.int64)),
        _kernel_taps(p, ref.dtype), _constants(p), window, p.g_a != 0.0, keep_spikes,
        [arrays(v) for v in out.values()], input_exp=as_array(torch.exp(input_rates)),
        counter=counter, average_rates=average_rates,
    )  # fmt: skip
    averages = PhaseAverages(
        out["soma_means"], out["rate_means"] if average_rates else (),
        (out["input_psp"], *out["psp_means"]),
        out["apical_means"],
    )  # fmt: skip
    new_state = NetworkState(out["new_input_history"], out["new_somas"], out["new_histories"])
    spikes = (out["input_spikes"], *out["layer_spikes"]) if keep_spikes else None
    return PhaseResult(new_state, averages, spikes)


@functools.lru_cache(maxsize=16)
def _kernel_taps(p: DendriticParams, dtype: torch.dtype):
    """:meth:`DendriticParams.kernel` as a NumPy array, built once per parameters and dtype."""
    return p.kernel(dtype).numpy()


@functools.lru_cache(maxsize=16)
def _constants(p: DendriticParams) -> tuple[float, ...]:
    """The decays and drive scales of the somatic recurrences (:meth:`DendriticParams.soma_step`
    of each compartment's total conductance), phi_max, and the apical potential's drive scale
    (the PyTorch fast path runs only ``g_a = 0``, where it is 0; the compiled loop any)."""
    hidden_decay, hidden_gain = p.soma_step(p.g_l + p.g_b + p.g_a)
    out_decay, out_gain = p.soma_step(p.g_l + p.g_d)  # forward phase
    # target phase: g_E + g_I = 1 for every output unit
    target_decay, target_gain = p.soma_step(p.g_l + p.g_d + 1.0)
    return (
        hidden_decay,
        hidden_gain * p.g_b,
        out_decay,
        out_gain * p.g_d,
        target_decay,
        target_gain * p.g_d,
        target_gain * p.E_E,
        target_gain * p.E_I,
        p.phi_max,
        hidden_gain * p.g_a,
    )


def _phase_core(
    weights, biases, feedback, input_history, somas, histories, input_rates, input_uniform,
    layer_uniforms, active, teaching, kernel, constants, window, ends=None,
):  # fmt: skip
    """The phase on tensors only: the body of :func:`simulate_phase`.

    ``active``: the input columns simulated (indices into the first weights' rows), their
    weights applied event by event; or None: every input, and only operations whose shapes do
    not depend on the data (dense products, dense Poisson counts), as a CUDA graph needs.
    ``ends``: (R, B) the length of each replica's phase, at most the T steps simulated, or None
    (every phase T steps long). A phase padded to T steps ends at its own length: each step
    depends only on earlier ones, so the steps after the end change nothing before it, and the
    averages, end state and history are read at the end (masks and gathers)."""
    (
        hidden_decay, hidden_gain, out_decay, out_gain, target_decay, target_gain, e_drive,
        i_drive, phi_max, _apical_gain,
    ) = constants  # fmt: skip
    k = len(kernel)
    n_layers = len(weights)

    dense = active is None
    spikes = poisson_from_uniform(input_rates, input_uniform, dense=dense)  # (R, B, T, n_active)
    full = torch.cat([input_history, spikes], dim=2)  # (R, B, K + T, n_active)
    recorded = [spikes]
    # W PSP(t) = sum_i kappa_i W s(t - i): apply the weights to the spike counts first (for the
    # input layer event by event: about 1 in 60 inputs spikes in a step on MNIST), then filter
    # the narrower drive, folded with the somatic recurrence into one matrix product.
    drive = _apply_over_time(weights[0], full) if dense else _sparse_apply(full, weights[0], active)
    input_history = _last_rows(full, k, ends)
    # the filtered trains themselves are only needed averaged over the window, for plasticity
    input_psp = _window_mean(full, window, kernel, 0, ends)
    soma_means, rate_means, psp_means, new_somas, new_histories = [], [], [], [], []
    for layer in range(n_layers):
        if layer < n_layers - 1:
            decay, gain, offset = hidden_decay, hidden_gain, hidden_gain * biases[layer][:, None]
        elif teaching is None:
            decay, gain, offset = out_decay, out_gain, out_gain * biases[layer][:, None]
        else:
            g_e, g_i = teaching
            decay, gain = target_decay, target_gain
            offset = target_gain * biases[layer][:, None] + g_e * e_drive + g_i * i_drive
        c = _soma_over_time(drive, kernel, decay, gain, offset, somas[layer])  # (R, B, T, n)
        rate = phi_max * torch.sigmoid(c)
        low_counts, beyond = _poisson_low_counts(rate, layer_uniforms[layer])
        layer_spikes = _poisson_high_counts(
            rate, layer_uniforms[layer], low_counts, beyond, dense=dense
        )
        recorded.append(layer_spikes)
        full = torch.cat([histories[layer], layer_spikes], dim=2)  # (R, B, K + T, n)
        soma_means.append(_mean_over_window(c, window, ends))
        rate_means.append(_mean_over_window(rate, window, ends))
        new_somas.append(_at_end(c, ends))
        new_histories.append(_last_rows(full, k, ends))
        if layer < n_layers - 1:
            drive = _apply_over_time(weights[layer + 1], full)
            psp_means.append(_window_mean(full, window, kernel, 0, ends))
    # apical potentials only enter the plateau averages: average the output train first
    output_mean = _window_mean(full, window, kernel, 1, ends)  # (R, B, n_out)
    apical = tuple(output_mean @ y for y in feedback)  # (R, B, n_out) @ (R, n_out, n_l)
    return (
        input_history, input_psp, tuple(new_somas), tuple(new_histories), tuple(soma_means),
        tuple(rate_means), tuple(psp_means), apical, tuple(recorded),
    )  # fmt: skip


def wald(generator: torch.Generator, mean: float, scale: float, size: int) -> torch.Tensor:
    """Wald (inverse Gaussian) samples by the transformation of Michael, Schucany & Haas (1976)."""
    nu = torch.randn(size, generator=generator, dtype=torch.float64) ** 2
    x = (
        mean
        + mean**2 * nu / (2 * scale)
        - mean / (2 * scale) * torch.sqrt(4 * mean * scale * nu + mean**2 * nu**2)
    )
    u = torch.rand(size, generator=generator, dtype=torch.float64)
    return torch.where(u <= mean / (mean + x), x, mean**2 / x)


def phase_lengths(params: DendriticParams, generator: torch.Generator, count: int) -> torch.Tensor:
    """(count, 2) forward and target phase lengths in steps: ``phase_steps`` plus the integer part
    of a Wald(mean 2, scale 1) extra, as the authors' code draws them."""
    extra = wald(generator, params.wald_mean, params.wald_scale, 2 * count).floor().long()
    return params.phase_steps + extra.view(count, 2)


@torch.no_grad()
def predict(
    net: SegregatedDendriteNet,
    images: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator] | CounterStream,
    chunk: int = 0,
    reference: bool = False,
    backend: str = "torch",
) -> torch.Tensor:
    """Class of each image for every replica: (R, N) from images (R, N, n_in) or (N, n_in).

    Each image starts from a silent network and drives a forward phase of ``test_steps``; the class
    is the output unit with the highest mean somatic potential over the last
    ``test_steps - settle_steps`` steps (the code's test; the paper reads rates, the same order).
    ``chunk`` images per replica are simulated at once (0: a size chosen for the CPU cache);
    ``backend``: that of :func:`simulate_phase` (with ``reference``, the reference loop instead).
    ``generator`` a :class:`~neuroplastic.kernels.counter_random.CounterStream`: image ``i``
    takes the uniforms of example ``stream.example + i``, phase ``TEST``, whatever the chunks
    (the Numba backend draws them inside its loop).
    """
    p = net.params
    if images.dim() == 2:
        images = images.expand(net.replicas, *images.shape)
    # a few images per replica at a time keep a phase's tensors in cache (measured fastest on CPU)
    chunk = chunk or max(1, 6 // net.replicas)
    predictions = []
    for start in range(0, images.shape[1], chunk):
        rates = p.phi_max * images[:, start : start + chunk]
        state = net.initial_state(rates.shape[1])
        if isinstance(generator, CounterStream):
            stream = generator._replace(example=generator.example + start)
            noise = CounterPhase(stream, crandom.TEST, p.test_steps)
        else:
            noise = net.draw_noise(p.test_steps, generator, rates.shape[1], rates)
        if reference:
            result = simulate_phase_reference(net, state, rates, noise, p.test_integration_steps)
        else:
            window = p.test_integration_steps
            result = simulate_phase(
                net, state, rates, noise, window, backend=backend, average_rates=False
            )
        predictions.append(result.averages.soma[-1].argmax(dim=-1))
    return torch.cat(predictions, dim=1)
