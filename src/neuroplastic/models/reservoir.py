"""Echo state networks (Jaeger 2001; Jaeger & Haas 2004): a fixed random recurrent network of leaky
tanh units whose only trained part is a linear readout. Replicas (seeds, settings) are a batch
dimension: every weight carries a leading ``replicas`` axis and one step is a batched product.

State update, leak rate ``a``, with optional output feedback ``z`` (FORCE)::

    x_t = (1 - a) x_{t-1} + a tanh(W_in u_t + W x_{t-1} + W_fb z_{t-1} + b)

``W`` is sparse (each entry kept with probability ``connectivity``), drawn normal, then scaled so
that its spectral radius is ``spectral_radius``; ``W_in`` is uniform on ``[-scaling, scaling]``
(Jaeger's choice) or, with ``input_distribution="bernoulli"``, ``+-scaling`` with equal odds
(ReservoirPy's default); ``W_fb`` is uniform on ``[-scaling, scaling]``, ``b`` on
``[-bias_scaling, bias_scaling]``. Every draw comes from the generator passed in. A reservoir
drawn elsewhere (another library's, a saved one) is loaded with
:meth:`EchoStateNetwork.from_weights`.

At low connectivity the recurrent product is a sparse one (CSR, block-diagonal over replicas):
it skips the zeros a dense product multiplies. Both give the same states to rounding.

Readouts (``fit_ridge``: ridge regression on collected states, closed form; online: the
recursive-least-squares optimiser ``optim.rls``) map ``[x_t, 1]`` to the output.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

INPUT_DISTRIBUTIONS = ("uniform", "bernoulli")
RECURRENT_PRODUCTS = ("auto", "dense", "sparse")
SPARSE_BELOW = 0.1
"""``recurrent_product="auto"`` goes sparse on the CPU at connectivity up to this: measured on
500 units, a CSR product beats the dense one there by 2-5x (one thread)."""


@dataclass(frozen=True)
class ESNParameters:
    units: int = 500
    spectral_radius: float = 0.9
    """Largest absolute eigenvalue of ``W``."""
    input_scaling: float = 1.0
    leak: float = 1.0
    """Leak rate ``a`` in (0, 1]; 1: no leak."""
    connectivity: float = 0.1
    """Share of non-zero recurrent weights."""
    bias_scaling: float = 0.0
    feedback_scaling: float = 0.0
    """Scale of the output feedback ``W_fb`` (0: none)."""
    input_distribution: str = "uniform"
    """``"uniform"`` on ``[-input_scaling, input_scaling]``, or ``"bernoulli"``:
    ``+-input_scaling``."""

    def __post_init__(self) -> None:
        if self.input_distribution not in INPUT_DISTRIBUTIONS:
            raise ValueError(
                f"input_distribution must be one of {INPUT_DISTRIBUTIONS}, got "
                f"{self.input_distribution!r}"
            )
        if self.units < 1:
            raise ValueError(f"units must be at least 1, got {self.units}")
        if not 0 < self.leak <= 1:
            raise ValueError(f"leak must lie in (0, 1], got {self.leak}")
        if not 0 < self.connectivity <= 1:
            raise ValueError(f"connectivity must lie in (0, 1], got {self.connectivity}")
        for name in ("spectral_radius", "input_scaling", "bias_scaling", "feedback_scaling"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")


def spectral_radius(weight: Tensor) -> Tensor:
    """Largest absolute eigenvalue of each ``(..., n, n)`` matrix."""
    return torch.linalg.eigvals(weight.double()).abs().amax(-1).to(weight.dtype)


class EchoStateNetwork(nn.Module):
    """``replicas`` independent reservoirs of ``params.units`` units on ``n_inputs`` inputs (and
    ``n_feedback`` fed-back outputs). ``run(inputs)`` takes ``(T, replicas, batch, n_inputs)``
    (or ``(T, batch, n_inputs)`` for one replica) and returns the states, same leading shape."""

    def __init__(self, n_inputs: int, params: ESNParameters = ESNParameters(), replicas: int = 1,
                 n_feedback: int = 0, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, recurrent_product: str = "auto"):  # fmt: skip
        super().__init__()
        if replicas < 1 or n_inputs < 1 or n_feedback < 0:
            raise ValueError("need replicas >= 1, n_inputs >= 1 and n_feedback >= 0")
        if recurrent_product not in RECURRENT_PRODUCTS:
            raise ValueError(
                f"recurrent_product must be one of {RECURRENT_PRODUCTS}, got {recurrent_product!r}"
            )
        n, r = params.units, replicas
        self.params, self.replicas = params, replicas
        self.recurrent_product = recurrent_product
        self._sparse_cache: tuple[tuple, Tensor] | None = None

        def uniform(*shape, scale):
            return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale

        mask = torch.rand(r, n, n, generator=generator, dtype=torch.float64) < params.connectivity
        recurrent = torch.randn(r, n, n, generator=generator, dtype=torch.float64) * mask
        radius = spectral_radius(recurrent)
        recurrent = recurrent * (params.spectral_radius / radius.clamp(min=1e-12))[:, None, None]
        if params.input_distribution == "bernoulli":
            signs = torch.rand(r, n, n_inputs, generator=generator, dtype=torch.float64) < 0.5
            w_in = (signs * 2.0 - 1.0) * params.input_scaling
        else:
            w_in = uniform(r, n, n_inputs, scale=params.input_scaling)
        self.register_buffer("w", recurrent.to(dtype))
        self.register_buffer("w_in", w_in.to(dtype))
        self.register_buffer("w_fb", uniform(r, n, n_feedback, scale=params.feedback_scaling)
                             .to(dtype))  # fmt: skip
        self.register_buffer("bias", uniform(r, 1, n, scale=params.bias_scaling).to(dtype))

    @classmethod
    def from_weights(cls, w: Tensor, w_in: Tensor, bias: Tensor | None = None, leak: float = 1.0,
                     w_fb: Tensor | None = None,
                     recurrent_product: str = "auto") -> EchoStateNetwork:  # fmt: skip
        """A reservoir with given weights, ``([replicas,] units, units)`` recurrent,
        ``([replicas,] units, inputs)`` input, ``([replicas,] units)`` bias,
        ``([replicas,] units, feedback)`` feedback; the dtype is ``w``'s. ``params`` then records
        the measured spectral radius and connectivity, and the scalings as 0 (not drawn)."""
        if w.dim() == 2:
            w, w_in = w[None], w_in[None]
            bias = None if bias is None else bias[None]
            w_fb = None if w_fb is None else w_fb[None]
        replicas, units = w.shape[0], w.shape[-1]
        if w.shape != (replicas, units, units) or w_in.shape[:2] != (replicas, units):
            raise ValueError(
                f"w must be (replicas, units, units) and w_in (replicas, units, inputs); got "
                f"{tuple(w.shape)} and {tuple(w_in.shape)}"
            )
        w = w.detach()
        connectivity = max(float((w != 0).double().mean()), 1e-12)
        params = ESNParameters(units, float(spectral_radius(w).max()), 0.0, leak,
                               min(connectivity, 1.0))  # fmt: skip
        network = cls(w_in.shape[-1], params, replicas, n_feedback=0 if w_fb is None
                      else w_fb.shape[-1], dtype=w.dtype,
                      recurrent_product=recurrent_product)  # fmt: skip
        network.w = w.clone()
        network.w_in = w_in.detach().to(w).clone()
        if bias is not None:
            network.bias = bias.detach().to(w).reshape(replicas, 1, units).clone()
        if w_fb is not None:
            network.w_fb = w_fb.detach().to(w).clone()
        return network

    def uses_sparse_product(self) -> bool:
        if self.recurrent_product == "auto":
            return self.w.device.type == "cpu" and self.params.connectivity <= SPARSE_BELOW
        return self.recurrent_product == "sparse"

    def _sparse_w(self) -> Tensor:
        """``W`` of every replica as one block-diagonal CSR matrix, rebuilt only when ``W``
        changes (moved, cast or replaced)."""
        key = (self.w.data_ptr(), self.w.device, self.w.dtype, self.w._version)
        if self._sparse_cache is None or self._sparse_cache[0] != key:
            with warnings.catch_warnings():  # CSR support is labelled beta; its products are exact
                warnings.simplefilter("ignore", UserWarning)
                blocks = torch.block_diag(*self.w) if self.replicas > 1 else self.w[0]
                self._sparse_cache = (key, blocks.to_sparse_csr())
        return self._sparse_cache[1]

    def recurrent(self, state: Tensor) -> Tensor:
        """``W x`` for states ``(replicas, batch, units)``."""
        if not self.uses_sparse_product():
            return state @ self.w.transpose(1, 2)
        r, b, n = state.shape
        stacked = state.transpose(1, 2).reshape(r * n, b)  # replicas' units stacked, batch last
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            product = torch.sparse.mm(self._sparse_w(), stacked)
        return product.reshape(r, n, b).transpose(1, 2)

    def initial_state(self, batch: int = 1) -> Tensor:
        return self.w.new_zeros(self.replicas, batch, self.params.units)

    def step(self, state: Tensor, inputs: Tensor, feedback: Tensor | None = None) -> Tensor:
        """One update: ``state`` ``(replicas, batch, units)``, ``inputs`` ``(replicas, batch,
        n_inputs)``, ``feedback`` ``(replicas, batch, n_feedback)`` or None."""
        drive = inputs @ self.w_in.transpose(1, 2) + self.recurrent(state) + self.bias
        if feedback is not None:
            drive = drive + feedback @ self.w_fb.transpose(1, 2)
        return torch.lerp(state, torch.tanh(drive), self.params.leak)

    @torch.no_grad()
    def run(self, inputs: Tensor, state: Tensor | None = None) -> Tensor:
        """States for a whole input sequence (no feedback): ``(T, [replicas,] batch, units)``."""
        single = inputs.dim() == 3
        if single:
            if self.replicas != 1:
                raise ValueError(f"{self.replicas} replicas need inputs (T, replicas, batch, n)")
            inputs = inputs[:, None]
        if inputs.shape[1] != self.replicas or inputs.shape[-1] != self.w_in.shape[-1]:
            raise ValueError(
                f"inputs must be (T, {self.replicas}, batch, {self.w_in.shape[-1]}), got "
                f"{tuple(inputs.shape)}"
            )
        inputs = inputs.to(self.w)
        if state is None:
            state = self.initial_state(inputs.shape[2])
        # the input's contribution for every step at once; only the recurrence is sequential
        driven = inputs @ self.w_in.transpose(1, 2)[None] + self.bias
        out = self._recur(driven, state)
        return out[:, 0] if single else out


    def _recur(self, driven: Tensor, state: Tensor) -> Tensor:
        """``x_t = lerp(x_{t-1}, tanh(driven_t + W x_{t-1}), a)`` for every step: the leaky update
        with one fused product-and-add per step (the loop is dispatch-bound at small sizes)."""
        a, steps = self.params.leak, driven.shape[0]
        if not self.uses_sparse_product():
            w_t = self.w.transpose(1, 2)
            out = driven.new_empty(driven.shape)
            for t in range(steps):
                state = torch.lerp(state, torch.baddbmm(driven[t], state, w_t).tanh_(), a)
                out[t] = state
            return out
        # the states as columns, (replicas * units, batch): the block-diagonal CSR product's layout
        r, b, n = state.shape
        drives = driven.transpose(2, 3).reshape(steps, r * n, b)
        x = state.transpose(1, 2).reshape(r * n, b)
        w = self._sparse_w()
        out = drives.new_empty(drives.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for t in range(steps):
                x = torch.lerp(x, torch.addmm(drives[t], w, x).tanh_(), a)
                out[t] = x
        return out.reshape(steps, r, n, b).transpose(2, 3)


def with_bias(states: Tensor) -> Tensor:
    """``[x, 1]``: the readout's input."""
    return torch.cat([states, states.new_ones(*states.shape[:-1], 1)], -1)


def fit_ridge(states: Tensor, targets: Tensor, ridge: float = 1e-6) -> Tensor:
    """The readout ``W_out`` ``([replicas,] outputs, units + 1)`` minimising
    ``|| [X, 1] W_out^T - Y ||^2 + ridge || W_out ||^2``: ``W_out = Y^T X~ (X~^T X~ + ridge I)^-1``.
    ``states`` ``(examples, [replicas,] units)``, ``targets`` ``(examples, [replicas,] outputs)``
    (flatten time and batch into examples; drop the washout first)."""
    if ridge < 0:
        raise ValueError(f"ridge must be non-negative, got {ridge}")
    x = with_bias(states.double())
    y = targets.double()
    if x.dim() == 3:  # replicas in the middle: put them first
        x, y = x.transpose(0, 1), y.transpose(0, 1)
    gram = x.transpose(-1, -2) @ x
    gram = gram + ridge * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    cross = x.transpose(-1, -2) @ y
    return torch.linalg.solve(gram, cross).transpose(-1, -2).to(states.dtype)


def readout(states: Tensor, w_out: Tensor) -> Tensor:
    """``[x, 1] W_out^T`` for states ``(..., [replicas,] units)``."""
    x = with_bias(states)
    if w_out.dim() == 3:
        return (x.unsqueeze(-2) @ w_out.transpose(-1, -2)).squeeze(-2)
    return x @ w_out.T


def nrmse(prediction: Tensor, target: Tensor, dim: int = 0) -> Tensor:
    """Root mean squared error over ``dim`` divided by the target's standard deviation there."""
    error = ((prediction - target) ** 2).mean(dim).sqrt()
    return error / target.std(dim)


@dataclass(frozen=True)
class ForceParameters:
    """Sussillo & Abbott (2009)'s rate network, their values for the periodic targets."""

    units: int = 1000
    gain: float = 1.5
    """``g``: above 1 the network is chaotic before training."""
    connectivity: float = 0.1
    """``p``: share of non-zero recurrent weights, each N(0, 1 / (p N))."""
    tau: float = 10.0
    """Membrane time constant (ms)."""
    dt: float = 1.0
    """Euler step (ms)."""

    def __post_init__(self) -> None:
        if self.units < 1 or not 0 < self.connectivity <= 1:
            raise ValueError("need units >= 1 and connectivity in (0, 1]")
        if not (self.gain >= 0 and self.tau > 0 and 0 < self.dt <= self.tau):
            raise ValueError("need gain >= 0, tau > 0 and 0 < dt <= tau")


class ForceNetwork(nn.Module):
    """The rate network FORCE learning trains (Sussillo & Abbott 2009, Eqs. 1-2), ``replicas``
    independent copies::

        tau dx/dt = -x + g J r + w_f z,     r = tanh(x),     z = W_out r

    ``J`` sparse (connectivity ``p``, entries N(0, 1 / (p N))), feedback ``w_f`` uniform on
    [-1, 1], readout ``W_out`` ``(replicas, outputs, units)`` a parameter starting at zero, trained
    by recursive least squares (``optim.RLS``) or by a reward-modulated rule
    (:func:`reward_modulated_change`). Euler steps of ``dt``."""

    def __init__(self, params: ForceParameters = ForceParameters(), outputs: int = 1,
                 replicas: int = 1, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):  # fmt: skip
        super().__init__()
        n, r = params.units, replicas
        self.params, self.replicas = params, replicas
        mask = torch.rand(r, n, n, generator=generator, dtype=torch.float64) < params.connectivity
        scale = 1.0 / (params.connectivity * n) ** 0.5
        j = torch.randn(r, n, n, generator=generator, dtype=torch.float64) * mask * scale
        feedback = torch.rand(r, n, outputs, generator=generator, dtype=torch.float64) * 2 - 1
        self.register_buffer("j", (params.gain * j).to(dtype))
        self.register_buffer("w_feedback", feedback.to(dtype))
        self.w_out = nn.Parameter(torch.zeros(r, outputs, n, dtype=dtype))
        self.x0 = 0.5 * torch.randn(r, n, generator=generator, dtype=torch.float64).to(dtype)

    def initial_state(self) -> tuple[Tensor, Tensor]:
        """``(x, z)`` at the start: random potentials, the readout of their rates."""
        x = self.x0.to(self.j).clone()
        return x, self.output(torch.tanh(x))

    def output(self, rates: Tensor) -> Tensor:
        return (self.w_out.detach() @ rates[..., None])[..., 0]

    @torch.no_grad()
    def step(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One Euler step from ``x`` ``(replicas, units)`` with the fed-back output ``z``
        ``(replicas, outputs)``: ``(x, r, z)`` after it."""
        rates = torch.tanh(x)
        recurrent = (self.j @ rates[..., None])[..., 0]
        fed_back = (self.w_feedback @ z[..., None])[..., 0]
        x = x + self.params.dt / self.params.tau * (-x + recurrent + fed_back)
        rates = torch.tanh(x)
        return x, rates, self.output(rates)


def run_force(
    network: ForceNetwork, steps: int, targets: Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None, learn_every: int = 2,
    state: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # fmt: skip
    """Run ``network`` for ``steps`` steps; with ``targets`` ``(steps, replicas, outputs)`` and
    an ``optimizer`` (``optim.RLS`` on ``network.w_out``: FORCE), learn every ``learn_every``
    steps from the error ``z - f`` before the update (Sussillo & Abbott's Eq. 4). Returns the
    outputs ``(steps, replicas, outputs)`` and the final ``(x, z)`` to continue from."""
    if (targets is None) != (optimizer is None):
        raise ValueError("learning needs both targets and an optimizer")
    if targets is not None and targets.shape[0] < steps:
        raise ValueError(f"need {steps} target steps, got {targets.shape[0]}")
    x, z = network.initial_state() if state is None else state
    outputs = []
    for t in range(steps):
        x, rates, z = network.step(x, z)
        if optimizer is not None and (t + 1) % learn_every == 0:
            optimizer.zero_grad()
            with torch.enable_grad():
                prediction = (network.w_out @ rates[..., None])[..., 0]
                (0.5 * ((prediction - targets[t]) ** 2).sum()).backward()
            optimizer.step(inputs=rates)
            z = network.output(rates)
        outputs.append(z)
    return torch.stack(outputs), (x, z)


@dataclass(frozen=True)
class LiquidParameters:
    """A liquid state machine (Maass, Natschläger & Markram 2002) of LIF neurons from
    ``neurons.lif``: random sparse recurrence obeying Dale's law, a readout of filtered spikes."""

    units: int = 400
    excitatory_fraction: float = 0.8
    connectivity: float = 0.1
    excitatory_weight: float = 0.1
    """Mean recurrent weight from an excitatory neuron (entries uniform on [0, 2 w])."""
    inhibitory_weight: float = 0.6
    """Mean magnitude from an inhibitory neuron (negative)."""
    input_scaling: float = 2.0
    """Input weights uniform on [-s, s]."""
    background: float = 0.05
    """Constant current into every neuron."""
    tau_membrane: float = 10.0
    """Steps."""
    threshold: float = 1.0
    tau_readout: float = 5.0
    """Time constant (steps) of the spike traces the readout sees."""

    def __post_init__(self) -> None:
        if self.units < 2 or not 0 < self.excitatory_fraction < 1:
            raise ValueError("need units >= 2 and excitatory_fraction in (0, 1)")
        if not 0 < self.connectivity <= 1 or self.tau_membrane <= 0 or self.tau_readout <= 0:
            raise ValueError("need connectivity in (0, 1] and positive time constants")


class SpikingLiquid(nn.Module):
    """``replicas`` liquids of LIF neurons (``neurons.lif.lif_step``, reset by subtraction)::

        I_t = W_in u_t + W z_{t-1} + background;   z_t = LIF(I_t)
        s_t = exp(-1 / tau_readout) s_{t-1} + z_t          (the readout's state)

    ``W``: each entry present with probability ``connectivity``, no self-connections, columns of
    excitatory neurons non-negative and of inhibitory ones non-positive (Dale's law). ``run``
    returns the traces ``s``, same layout as :meth:`EchoStateNetwork.run`."""

    def __init__(self, n_inputs: int, params: LiquidParameters = LiquidParameters(),
                 replicas: int = 1, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):  # fmt: skip
        super().__init__()
        n, r = params.units, replicas
        self.params, self.replicas = params, replicas
        excitatory = torch.arange(n) < round(params.excitatory_fraction * n)
        mask = (torch.rand(r, n, n, generator=generator, dtype=torch.float64)
                < params.connectivity) & ~torch.eye(n, dtype=torch.bool)  # fmt: skip
        size = torch.where(excitatory, params.excitatory_weight, -params.inhibitory_weight)
        magnitude = 2 * torch.rand(r, n, n, generator=generator, dtype=torch.float64)
        self.register_buffer("w", (mask * magnitude * size.double()).to(dtype))
        w_in = (torch.rand(r, n, n_inputs, generator=generator, dtype=torch.float64) * 2 - 1)
        self.register_buffer("w_in", (params.input_scaling * w_in).to(dtype))

    @torch.no_grad()
    def run(self, inputs: Tensor) -> Tensor:
        from neuroplastic.neurons.lif import LIFParameters, LIFState, decay

        single = inputs.dim() == 3
        if single:
            inputs = inputs[:, None]
        if inputs.shape[1] != self.replicas or inputs.shape[-1] != self.w_in.shape[-1]:
            raise ValueError(
                f"inputs must be (T, {self.replicas}, batch, {self.w_in.shape[-1]}), got "
                f"{tuple(inputs.shape)}"
            )
        p = self.params
        lif = LIFParameters(alpha=decay(p.tau_membrane), v_th=p.threshold)
        keep = math.exp(-1.0 / p.tau_readout)
        shape = (self.replicas, inputs.shape[2], p.units)
        zeros = self.w.new_zeros(shape)
        state = LIFState(zeros, zeros.clone(), zeros.clone(), zeros.clone())
        trace = zeros.clone()
        driven = inputs.to(self.w) @ self.w_in.transpose(1, 2)[None] + p.background
        w_t = self.w.transpose(1, 2)
        traces = []
        for drive in driven:
            z, state = lif_step_plain(drive + state.z @ w_t, state, lif)
            trace = keep * trace + z
            traces.append(trace)
        out = torch.stack(traces)
        return out[:, 0] if single else out


def lif_step_plain(current: Tensor, state, params):
    """``neurons.lif.lif_step`` with a plain threshold (no surrogate gradient: the liquid is not
    trained)."""
    from neuroplastic.neurons.lif import lif_step

    return lif_step(current, state, params, spike=lambda x: (x > 0).to(x.dtype))
