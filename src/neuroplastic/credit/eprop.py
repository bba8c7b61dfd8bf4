"""e-prop (Bellec et al. 2020, Nat. Commun. 11:3625, Methods) for :class:`RecurrentLIF`: gradients
computed forward in time from eligibility traces and a learning signal, with no stored history.

The exact gradient factorises (the paper's Eq. 1) as ``dE/dW_ji = sum_t dE/dz_j^t e_ji^t``, with
``dE/dz_j^t`` the total derivative through the other neurons and the readout, and the eligibility
trace ``e_ji^t = [dz_j^t / dW_ji]_local`` computed forward in time from the neuron's own dynamics.
With ``s_i^t`` the presynaptic signal (``x_i^t`` for input weights, ``z_i^{t-1}`` for recurrent
ones) and ``psi^t`` the pseudo-derivative (``neurons.lif.pseudo_derivative_of``)::

    eps_v^t = alpha eps_v^{t-1} + s_i^t                                  (membrane trace)
    eps_a^t = (rho - beta_j psi_j^{t-1}) eps_a^{t-1} + psi_j^{t-1} eps_v^{t-1}  (ALIF only)
    e_ji^t  = psi_j^t (eps_v^t - beta_j eps_a^t)

e-prop replaces the total derivative by the learning signal of the current step,
``L_j^t = sum_k B_jk dE/dy_k^t``, which needs no future, and since the readout is leaky
(``y^t = kappa y^{t-1} + W_out z^t + b``) pairs it with the trace filtered like the readout::

    ebar^t = kappa ebar^{t-1} + e^t,      dE/dW_ji = sum_t L_j^t ebar_ji^t

``dE/dy^t`` is ``(y^t - y*^t)`` for the square loss ``1/2 |y - y*|^2`` and ``(pi^t - onehot)``,
``pi = softmax(y)``, for cross-entropy; both are weighted by a per-step ``mask`` and averaged over
the batch. ``B`` is ``W_out^T`` (symmetric), a fixed random matrix (random), or a random matrix
that receives the same gradient as ``W_out^T`` (adaptive, Kolen-Pollack: with weight decay in the
optimiser, ``B`` and ``W_out^T`` converge). The readout weights and bias get their exact gradient,
``sum_t dE/dy^t zbar^t`` with ``zbar^t = kappa zbar^{t-1} + z^t``.

Firing-rate regularisation ``reg sum_j (fbar_j - f0)^2`` (``fbar`` the mean spikes per step over the
batch and the trial) adds ``2 reg (fbar_j - f0) sum_t e_ji^t / (batch T)``: through the traces too.

With ``W_rec = 0`` and symmetric feedback the input and readout gradients equal BPTT's exactly (the
reset term is detached in both, see ``neurons.lif``); with recurrence e-prop drops the error paths
through future spikes of other neurons. Updates can be summed over a trial (:meth:`EProp.backward`)
or applied online every ``k`` steps (:meth:`EProp.online`); the learning state is the traces alone,
so memory does not grow with the trial's length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from neuroplastic.grads import add_to_grad
from neuroplastic.kernels import as_array, check_backend, resolve_backend
from neuroplastic.models.rsnn import RecurrentLIF
from neuroplastic.neurons.lif import LIFParameters, LIFState, pseudo_derivative_of

FEEDBACK = ("symmetric", "random", "adaptive")
LOSSES = ("mse", "cross_entropy")
IMPLEMENTATIONS = ("segmented", "reference")


class Traces(NamedTuple):
    """The learning state e-prop carries from one step to the next: nothing else is kept.
    ``n_ad`` is the number of ALIF neurons (the last rows of the network)."""

    eps_in: Tensor
    """``(batch, n_in)``: membrane trace of the input weights (alpha is shared by all neurons, so
    it depends on the presynaptic side only)."""
    eps_rec: Tensor
    """``(batch, n_rec)``: membrane trace of the recurrent weights."""
    eps_a_in: Tensor
    """``(batch, n_ad, n_in)``: adaptation traces of the ALIF neurons' input weights."""
    eps_a_rec: Tensor
    """``(batch, n_ad, n_rec)``: adaptation traces of their recurrent weights."""
    psi: Tensor
    """``(batch, n_rec)``: the previous step's pseudo-derivative."""
    ebar_in: Tensor
    """``(batch, n_rec, n_in)``: eligibility traces filtered by the readout's kappa."""
    ebar_rec: Tensor
    """``(batch, n_rec, n_rec)``."""
    zbar: Tensor
    """``(batch, n_rec)``: spikes filtered by kappa (the readout weights' exact gradient)."""
    onebar: Tensor
    """``()``: a constant 1 filtered by kappa (the readout bias')."""


class NetworkDynamics(NamedTuple):
    """What the eligibility traces need to know of a recurrent spiking network (``RecurrentLIF``
    has these attributes; for a network of your own, :func:`network_dynamics` builds one)."""

    n_in: int
    n_rec: int
    n_adaptive: int
    """The last ``n_adaptive`` neurons are ALIF (their rows carry adaptation traces)."""
    alpha: float
    """Membrane decay, shared by all neurons (the input traces are then presynaptic only)."""
    rho: float
    beta: Tensor
    """``(n_rec,)`` adaptation strengths (0 for LIF neurons)."""
    kappa: float
    """The readout's decay per step (0: ``y = W_out z + b``, a readout without memory)."""
    neuron: LIFParameters
    dampening: float


def network_dynamics(
    neuron: LIFParameters, n_in: int, n_rec: int, kappa: float = 0.0, dampening: float = 0.3
) -> NetworkDynamics:
    """The traces' view of a network of ``n_rec`` neurons stepped by ``neurons.lif_step`` with
    ``neuron`` (a shared ``alpha`` and ``rho``; ``beta`` a float or per-neuron tensor) on
    ``n_in`` inputs, read out with decay ``kappa``; ``dampening`` as in the surrogate gradient
    the network spikes with (the paper's 0.3 by default)."""
    alpha, rho = _shared(neuron.alpha, "alpha"), _shared(neuron.rho, "rho")
    beta = torch.as_tensor(neuron.beta, dtype=torch.float64).expand(n_rec).clone()
    adaptive = int(bool((beta != 0).any())) * n_rec  # all rows; LIF rows' beta 0 drops them
    return NetworkDynamics(n_in, n_rec, adaptive, alpha, rho, beta, kappa, neuron,
                           dampening)  # fmt: skip


def _shared(value: Tensor | float, name: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() > 1 and not bool((value == value.flatten()[0]).all()):
            raise ValueError(
                f"e-prop's traces need one {name} shared by all neurons, got per-neuron values"
            )
        return float(value.flatten()[0])
    return float(value)


def initial_traces(
    model: RecurrentLIF | NetworkDynamics, batch: int, dtype: torch.dtype, device
) -> Traces:
    """All traces at zero, for a trial that starts at rest."""
    n_in, n_rec, n_ad = model.n_in, model.n_rec, model.n_adaptive

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(shape, dtype=dtype, device=device)

    return Traces(
        eps_in=zeros(batch, n_in), eps_rec=zeros(batch, n_rec),
        eps_a_in=zeros(batch, n_ad, n_in), eps_a_rec=zeros(batch, n_ad, n_rec),
        psi=zeros(batch, n_rec),
        ebar_in=zeros(batch, n_rec, n_in), ebar_rec=zeros(batch, n_rec, n_rec),
        zbar=zeros(batch, n_rec), onebar=zeros(),
    )  # fmt: skip


def trace_step(
    traces: Traces,
    model: RecurrentLIF | NetworkDynamics,
    x: Tensor,
    before: LIFState,
    after: LIFState,
) -> tuple[Traces, Tensor, Tensor]:
    """Advance the traces over the network step ``before -> after`` driven by inputs ``x``:
    ``(traces, e_in, e_rec)``, the eligibility traces of this step, ``(batch, n_rec, n_in)`` and
    ``(batch, n_rec, n_rec)`` (equations in the module docstring)."""
    alpha, kappa, n_lif = model.alpha, model.kappa, model.n_rec - model.n_adaptive
    beta = model.beta[n_lif:].to(x)  # (n_ad,)
    psi_ad, eps_in, eps_rec = traces.psi[:, n_lif:, None], traces.eps_in, traces.eps_rec
    # eps_a^t from the previous step's psi and eps_v:                   # (batch, n_ad, n_pre)
    eps_a_in = (model.rho - beta[:, None] * psi_ad) * traces.eps_a_in + psi_ad * eps_in[:, None]
    eps_a_rec = (model.rho - beta[:, None] * psi_ad) * traces.eps_a_rec + psi_ad * eps_rec[:, None]
    eps_in = alpha * eps_in + x  # (batch, n_in)
    eps_rec = alpha * eps_rec + before.z  # (batch, n_rec)
    psi = pseudo_derivative_of(before, after, model.neuron, model.dampening)  # (batch, n_rec)
    e_in = psi[:, :, None] * eps_in[:, None, :]  # (batch, n_rec, n_in)
    e_rec = psi[:, :, None] * eps_rec[:, None, :]  # (batch, n_rec, n_rec)
    if model.n_adaptive:
        adaptive = psi[:, n_lif:, None] * beta[:, None]  # (batch, n_ad, 1)
        e_in = torch.cat([e_in[:, :n_lif], e_in[:, n_lif:] - adaptive * eps_a_in], 1)
        e_rec = torch.cat([e_rec[:, :n_lif], e_rec[:, n_lif:] - adaptive * eps_a_rec], 1)
    traces = Traces(
        eps_in, eps_rec, eps_a_in, eps_a_rec, psi,
        ebar_in=kappa * traces.ebar_in + e_in, ebar_rec=kappa * traces.ebar_rec + e_rec,
        zbar=kappa * traces.zbar + after.z, onebar=kappa * traces.onebar + 1.0,
    )  # fmt: skip
    return traces, e_in, e_rec


def output_error(y: Tensor, target: Tensor, weight: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """``(dE/dy, E)``: readouts ``y`` ``(..., n_out)``, targets ``(..., n_out)`` (``mse``) or
    labels ``(...)`` (``cross_entropy``), weights ``(...)`` that already include the 1/batch
    average (the leading dimensions are a batch, or steps and a batch)."""
    if loss == "mse":
        difference = y - target
        return difference * weight[..., None], 0.5 * (weight * difference.pow(2).sum(-1)).sum()
    log_pi = torch.log_softmax(y, -1)
    onehot = torch.nn.functional.one_hot(target, y.shape[-1]).to(y.dtype)
    return (log_pi.exp() - onehot) * weight[..., None], -(weight * (onehot * log_pi).sum(-1)).sum()


def summed_outer(post: Tensor, pre: Tensor) -> Tensor:
    """``sum_{k,b} post[k,b,j] pre[k,b,i]`` ``(j, i)`` as one matrix product (einsum's own route
    for this pattern is several times slower on the CPU)."""
    return post.flatten(0, 1).T @ pre.flatten(0, 1)


def outer_per_example(post: Tensor, pre: Tensor) -> Tensor:
    """``sum_k post[k,b,j] pre[k,b,i]`` ``(b, j, i)`` as one batched matrix product."""
    return torch.bmm(post.permute(1, 2, 0), pre.transpose(0, 1))


def adaptation_weights(w: Tensor, c: Tensor, backend: str = "torch") -> tuple[Tensor, Tensor]:
    """``(G^r for the segment's steps r = t0 .. t1-1, G^{t0-1})`` from the backward recursion
    ``G^{t1-1} = 0``, ``G^q = w^{q+1} + c^{q+1} G^{q+1}``; ``w``, ``c`` ``(k, batch, n_ad)`` for
    the segment's steps. Unrolling the ``eps_a`` recursion gives
    ``sum_r w^r eps_a^r = c^{t0-1} G^{t0-1} eps_a^{t0-1} + sum_q G^q psi^q eps_v^q``."""
    if backend == "numba":
        from neuroplastic.kernels import numba_rsnn

        at_steps, before = numba_rsnn.reverse_leaky_sum_shifted(as_array(w), as_array(c.to(w)))
        return torch.from_numpy(at_steps), torch.from_numpy(before)
    if backend == "triton":
        from neuroplastic.kernels import triton_rsnn

        return triton_rsnn.scan(w, c, reverse=True, shifted=True)
    at_steps = torch.empty_like(w)
    acc = torch.zeros_like(w[0])
    for r in reversed(range(w.shape[0])):
        at_steps[r] = acc
        acc = w[r] + c[r] * acc
    return at_steps, acc


def reverse_leaky_sum(signal: Tensor, factor: float, backend: str = "torch") -> Tensor:
    """``out^r = signal^r + factor out^{r+1}`` backwards over the first axis (``out`` 0 after the
    last step)."""
    if backend in ("numba", "triton"):
        from neuroplastic.kernels.rsnn_functions import leaky_sum

        return leaky_sum(signal, float(factor), None, backend, reverse=True)
    out = torch.empty_like(signal)
    acc = torch.zeros_like(signal[0])
    for r in reversed(range(signal.shape[0])):
        acc = signal[r] + factor * acc
        out[r] = acc
    return out


Forward = tuple[tuple[Tensor, ...], LIFState, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]


def segment_forward(
    model: RecurrentLIF, x: Tensor, state: LIFState, y: Tensor, traces: Traces
) -> Forward:
    """The network over a segment ``x`` ``(batch, k, n_in)``, keeping per-neuron quantities:
    ``((psi, eps_v, z, y, onebar, spike count) per step, state, y, (eps_in, eps_rec, zbar,
    onebar) at the end)``, the per-step ones ``(k, batch, ·)`` (``onebar`` ``(k,)``)."""
    alpha, kappa = model.alpha, model.kappa
    eps_in, eps_rec, zbar, onebar = traces.eps_in, traces.eps_rec, traces.zbar, traces.onebar
    history: dict[str, list[Tensor]] = {n: [] for n in ("psi", "eps_v", "z", "y", "onebar")}
    spike_count = torch.zeros_like(zbar[0])
    for s in range(x.shape[1]):
        before = state
        z, state, y = model.step(x[:, s], state, y)
        eps_in = alpha * eps_in + x[:, s]
        eps_rec = alpha * eps_rec + before.z
        zbar = kappa * zbar + z
        onebar = kappa * onebar + 1.0
        spike_count += z.sum(0)
        history["psi"].append(pseudo_derivative_of(before, state, model.neuron, model.dampening))
        history["eps_v"].append(torch.cat([eps_in, eps_rec], 1))
        history["z"].append(z)
        history["y"].append(y)
        history["onebar"].append(onebar)
    steps = tuple(torch.stack(history[n]) for n in history)
    return (*steps, spike_count), state, y, (eps_in, eps_rec, zbar, onebar)


def segment_forward_compiled(
    model: RecurrentLIF, x: Tensor, state: LIFState, y: Tensor, traces: Traces, backend: str
) -> Forward:
    """:func:`segment_forward` by a compiled time loop (``kernels.numba_rsnn`` on the CPU,
    ``kernels.triton_rsnn`` on a GPU): the input currents as one matrix product, the recurrence
    inside the kernel, the traces and the readout as leaky sums over the spikes it returns."""
    from neuroplastic.kernels.rsnn_functions import leaky_sum

    inputs = x.transpose(0, 1)  # (k, batch, n_in)
    current = inputs @ model.w_in.detach().T
    w_rec = model.recurrent_weights().detach()
    beta = model.beta.to(x.dtype)
    neuron = (model.alpha, model.v_th, float(model.refractory))  # then beta, rho, dampening
    if backend == "triton":
        from neuroplastic.kernels import triton_rsnn

        v, z, a, refractory = (t.clone() for t in state)
        spikes, psi = triton_rsnn.lif_segment(
            current, w_rec, v, z, a, refractory, *neuron, beta, model.rho, model.dampening
        )
        presynaptic = torch.cat([inputs, torch.cat([state.z[None], spikes[:-1]])], 2)
        initial = torch.cat([traces.eps_in, traces.eps_rec], 1)
        eps_v = triton_rsnn.scan(presynaptic, model.alpha, initial)[0]
        state = LIFState(v, z, a, refractory)
    else:
        from neuroplastic.kernels import numba_rsnn

        numba_rsnn.follow_torch_threads()
        v, z, a, refractory = (as_array(t).copy() for t in state)
        eps_in, eps_rec = as_array(traces.eps_in).copy(), as_array(traces.eps_rec).copy()
        arrays = numba_rsnn.lif_segment_with_traces(
            as_array(current), as_array(w_rec.T), v, z, a, refractory, *neuron, as_array(beta),
            model.rho, model.dampening, as_array(x), eps_in, eps_rec,
        )  # fmt: skip
        spikes, psi, eps_v = (torch.from_numpy(array) for array in arrays)
        state = LIFState(*(torch.from_numpy(t) for t in (v, z, a, refractory)))
    drive = spikes @ model.w_out.detach().T + model.b_out.detach()
    ys = leaky_sum(drive, model.kappa, y, backend)
    steps = torch.arange(1, spikes.shape[0] + 1, dtype=x.dtype, device=x.device)
    powers = model.kappa**steps  # onebar^t = kappa^(t+1) onebar^(t0-1) + sum of kappa powers
    onebars = powers * traces.onebar + (
        (1 - powers) / (1 - model.kappa) if model.kappa < 1 else steps
    )
    n_in = model.n_in
    # zbar at the segment's end: kappa^k zbar^{t0-1} + sum_r kappa^{t1-1-r} z^r, one product
    zbar = powers[-1] * traces.zbar + torch.einsum(
        "k,kbj->bj", model.kappa ** (steps.flip(0) - 1), spikes
    )
    ends = (eps_v[-1, :, :n_in], eps_v[-1, :, n_in:], zbar, onebars[-1])
    return (psi, eps_v, spikes, ys, onebars, spikes.sum((0, 1))), state, ys[-1], ends


class StepwiseEProp:
    """e-prop fed one time step at a time, from inside any time loop: for a network of your own
    built from the ``neurons`` steps, or the reference path of :class:`EProp`.

    Each :meth:`step` advances the eligibility traces over the network step ``before -> after``
    and adds ``L^t ebar^t`` (``L = error B^T``) to the gradients; :meth:`write` adds them to the
    weights' ``.grad``. ``error`` is ``dE/dy^t`` of that step, already averaged over the batch as
    the loss is. The readout must follow ``y^t = kappa y^{t-1} + W_out z^t + b`` (``kappa`` from
    ``dynamics``; ``y = W_out z + b`` when it is 0). Every entry of ``w_rec`` gets its gradient,
    the diagonal included: zero it (or its gradient) if your network has no self-connections.

    Args:
        w_in, w_rec, w_out: the input ``(n_rec, n_in)``, recurrent ``(n_rec, n_rec)`` and readout
            ``(n_out, n_rec)`` weights (``nn.Linear.weight`` layout).
        b_out: the readout bias, or None.
        dynamics: :func:`network_dynamics` of the network (or a ``RecurrentLIF``).
        feedback: ``B`` ``(n_rec, n_out)`` for random or adaptive feedback; None for symmetric
            (``W_out^T``, read at every step).
    """

    def __init__(
        self,
        w_in: Tensor,
        w_rec: Tensor,
        w_out: Tensor,
        b_out: Tensor | None,
        dynamics: NetworkDynamics | RecurrentLIF,
        feedback: Tensor | None = None,
    ):
        n_rec, n_in = dynamics.n_rec, dynamics.n_in
        expected = {
            "w_in": (n_rec, n_in),
            "w_rec": (n_rec, n_rec),
            "w_out": (w_out.shape[0], n_rec),
        }
        for name, weight in (("w_in", w_in), ("w_rec", w_rec), ("w_out", w_out)):
            if tuple(weight.shape) != expected[name]:
                raise ValueError(f"{name} must be {expected[name]}, got {tuple(weight.shape)}")
        self.weights = {"w_in": w_in, "w_rec": w_rec, "w_out": w_out}
        if b_out is not None:
            self.weights["b_out"] = b_out
        self.dynamics, self.feedback = dynamics, feedback
        self.traces: Traces | None = None
        self.grads: dict[str, Tensor] = {}

    def start(self, batch: int) -> None:
        """A new trial at rest: traces and gradients at zero."""
        w = self.weights["w_in"]
        self.traces = initial_traces(self.dynamics, batch, w.dtype, w.device)
        self.grads = {name: torch.zeros_like(p) for name, p in self.weights.items()}

    @torch.no_grad()
    def step(
        self, x: Tensor, before: LIFState, after: LIFState, error: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Inputs ``x`` ``(batch, n_in)`` of the step ``before -> after`` and its readout error
        ``(batch, n_out)``; returns this step's eligibility traces ``(e_in, e_rec)``."""
        if self.traces is None:
            raise RuntimeError("call start(batch) before the first step of a trial")
        traces, e_in, e_rec = trace_step(self.traces, self.dynamics, x, before, after)
        feedback = self.weights["w_out"].T if self.feedback is None else self.feedback
        signal = error @ feedback.detach().T  # (batch, n_rec)
        self.grads["w_in"] += torch.einsum("bj,bji->ji", signal, traces.ebar_in)
        self.grads["w_rec"] += torch.einsum("bj,bji->ji", signal, traces.ebar_rec)
        self.grads["w_out"] += error.T @ traces.zbar
        if "b_out" in self.grads:
            self.grads["b_out"] += error.sum(0) * traces.onebar
        self.traces = traces
        return e_in, e_rec

    def take(self) -> dict[str, Tensor]:
        """The gradients since the last take (or start), which start again from zero."""
        grads, self.grads = self.grads, {n: torch.zeros_like(g) for n, g in self.grads.items()}
        return grads

    def write(self) -> None:
        """Add the gradients since the last take to the weights' ``.grad``."""
        for name, grad in self.take().items():
            add_to_grad(self.weights[name], grad)


class EProp:
    """Writes e-prop's gradients into ``model``'s ``.grad`` (any optimiser then steps).

    Args:
        model: the network.
        feedback: ``symmetric`` (``B = W_out^T``), ``random`` (a fixed Gaussian ``B`` scaled by
            1/sqrt(n_out), drawn from ``generator``), or ``adaptive`` (that random ``B`` trained
            with ``W_out``'s gradient: pass :meth:`parameters` to the optimiser too, with weight
            decay, as Kolen-Pollack learning needs).
        loss: ``mse`` (regression targets ``(batch, T, n_out)``) or ``cross_entropy`` (labels
            ``(batch,)`` or ``(batch, T)``).
        regularisation: strength ``reg`` of the firing-rate penalty (0: none).
        target_rate: ``f0`` in spikes per step (10 Hz at dt = 1 ms is 0.01).
        implementation: ``reference`` advances every trace at every step, as the equations read;
            ``segmented`` (default, tested equal to it) runs the network ``segment`` steps at a
            time keeping only per-neuron quantities for those steps, then sums the traces'
            products over the segment with matrix products (:func:`segment_step`). Memory is
            bounded by ``segment``, not by the trial's length.
        segment: steps per segment of the segmented path (online updates use ``every``).
        backend: how the segmented path runs its time loop: ``torch`` (the readable loop),
            ``numba`` (a compiled loop on the CPU, ``kernels.numba_rsnn``, tested equal; the
            ``fast`` extra), or ``auto`` (Numba on the CPU when installed).
    """

    def __init__(
        self,
        model: RecurrentLIF,
        feedback: str = "symmetric",
        generator: torch.Generator | None = None,
        *,
        loss: str = "mse",
        regularisation: float = 0.0,
        target_rate: float = 0.01,
        implementation: str = "segmented",
        segment: int = 500,
        backend: str = "auto",
    ):
        if feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}, got {feedback!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if regularisation < 0:
            raise ValueError(f"regularisation must be >= 0, got {regularisation}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
            )
        if segment < 1:
            raise ValueError(f"segment must be >= 1 step, got {segment}")
        check_backend(backend)
        self.implementation, self.segment, self.backend = implementation, segment, backend
        self.model, self.feedback, self.loss = model, feedback, loss
        self.regularisation, self.target_rate = regularisation, target_rate
        self.feedback_weights: torch.nn.Parameter | None = None
        if feedback != "symmetric":
            draw = torch.randn(model.n_rec, model.n_out, generator=generator)
            self.feedback_weights = torch.nn.Parameter(
                (draw / math.sqrt(model.n_out)).to(model.w_out), requires_grad=False
            )

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimiser should also step: the adaptive feedback matrix, else nothing."""
        return [self.feedback_weights] if self.feedback == "adaptive" else []

    def feedback_matrix(self) -> Tensor:
        """``B`` ``(n_rec, n_out)``."""
        if self.feedback_weights is not None:
            return self.feedback_weights.detach()
        return self.model.w_out.detach().T

    @torch.no_grad()
    def chunks(
        self, x: Tensor, target: Tensor, mask: Tensor | None = None, every: int | None = None
    ) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Run one trial forward in time and yield ``(gradients, loss)`` for every ``every`` steps
        (default: once, for the whole trial). Between two yields the caller may change the
        weights (online learning); the traces carry on.

        ``x`` ``(batch, T, n_in)``; ``target`` as the ``loss`` needs; ``mask`` ``(T,)`` or
        ``(batch, T)``: each step's weight in the loss (default 1).
        """
        model = self.model
        batch, steps, _ = x.shape
        every = steps if every is None else every
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        targets, weights = self._per_step(target, mask, batch, steps, x)
        if self.implementation == "segmented":
            yield from self._segmented(x, targets, weights, every if every < steps else None)
            return
        state = model.initial_state(batch)
        y = torch.zeros(batch, model.n_out, dtype=x.dtype, device=x.device)
        learner = StepwiseEProp(model.w_in, model.w_rec, model.w_out, model.b_out, model,
                                self.feedback_weights)  # fmt: skip
        learner.start(batch)
        spikes = torch.zeros(model.n_rec, dtype=x.dtype, device=x.device)
        e_sum, loss = self._zeros(), x.new_zeros(())
        for t in range(steps):
            before = state
            z, state, y = model.step(x[:, t], state, y)
            error, step_loss = output_error(y, targets[t], weights[t], self.loss)
            e_in, e_rec = learner.step(x[:, t], before, state, error)
            loss += step_loss
            if self.regularisation:
                spikes += z.sum(0)
                e_sum["w_in"] += e_in.sum(0)
                e_sum["w_rec"] += e_rec.sum(0)
            if (t + 1) % every == 0 or t + 1 == steps:
                grads = learner.take()
                if self.regularisation:
                    loss += self._add_rate_penalty(grads, e_sum, spikes, batch, t + 1, steps)
                grads["w_rec"] *= model.no_self
                yield grads, loss
                e_sum, loss = self._zeros(), x.new_zeros(())

    def gradients(
        self, x: Tensor, target: Tensor, mask: Tensor | None = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """``({parameter name: gradient}, loss)`` summed over one trial."""
        return next(self.chunks(x, target, mask))

    def backward(self, x: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Add e-prop's gradients, summed over the trial, to the parameters' ``.grad``; return the
        loss."""
        grads, loss = self.gradients(x, target, mask)
        self._write(grads)
        return loss

    def online(
        self,
        x: Tensor,
        target: Tensor,
        optimizer: torch.optim.Optimizer,
        every: int = 1,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Learn during the trial: every ``every`` steps write the gradients of those steps and let
        ``optimizer`` step (the traces carry on with the new weights). Returns the trial's loss.
        The rate penalty then uses the rate so far in place of the trial's."""
        total = x.new_zeros(())
        for grads, loss in self.chunks(x, target, mask, every):
            optimizer.zero_grad()
            self._write(grads)
            optimizer.step()
            total += loss
        return total

    def _segmented(
        self, x: Tensor, targets: Tensor, weights: Tensor, every: int | None
    ) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """:meth:`chunks` by :func:`segment_step`: segments of ``every`` steps (online), or of
        ``self.segment`` steps summed into one yield (``every`` None)."""
        model = self.model
        batch, steps, _ = x.shape
        length = every or self.segment
        backend = resolve_backend(self.backend, x.device)
        state = model.initial_state(batch)
        y = torch.zeros(batch, model.n_out, dtype=x.dtype, device=x.device)
        traces = initial_traces(model, batch, x.dtype, x.device)
        spikes = torch.zeros(model.n_rec, dtype=x.dtype, device=x.device)
        total, e_sum, total_loss = self._zeros(), self._zeros(), x.new_zeros(())
        for start in range(0, steps, length):
            end = min(start + length, steps)
            whole_trial = every is None and start == 0 and end == steps
            grads, loss, state, y, traces, rate_terms = segment_step(
                model, x[:, start:end], targets[start:end], weights[start:end], state, y,
                traces, self.feedback_matrix(), self.loss, bool(self.regularisation),
                last=end == steps, backend=backend,
                rate_factor=partial(self._rate_factor, batch=batch, steps_so_far=steps,
                                    steps=steps) if whole_trial else None,
            )  # fmt: skip
            if rate_terms is not None:
                spikes += rate_terms.pop("spikes")
                for name, value in rate_terms.items():
                    e_sum[name] += value
            if every is not None:
                if self.regularisation:
                    loss += self._add_rate_penalty(grads, e_sum, spikes, batch, end, steps)
                    e_sum = self._zeros()
                grads["w_rec"] *= model.no_self
                yield grads, loss
                continue
            for name in total:
                total[name] += grads[name]
            total_loss += loss
        if every is None:
            if self.regularisation:
                total_loss += self._add_rate_penalty(total, e_sum, spikes, batch, steps, steps)
            total["w_rec"] *= model.no_self
            yield total, total_loss

    def _write(self, grads: dict[str, Tensor]) -> None:
        for name, param in self.model.named_parameters():
            add_to_grad(param, grads[name])
        if self.feedback == "adaptive":  # Kolen-Pollack: B gets W_out^T's gradient
            add_to_grad(self.feedback_weights, grads["w_out"].T)

    def _zeros(self) -> dict[str, Tensor]:
        return {name: torch.zeros_like(p) for name, p in self.model.named_parameters()}

    def _add_rate_penalty(self, grads, e_sum, spikes, batch, steps_so_far, steps) -> Tensor:
        """Add the rate penalty's gradient for the steps since the last chunk; its loss on the
        trial's last chunk (the penalty is defined on the whole trial's rate)."""
        rate = spikes / (batch * steps_so_far)
        factor = self._rate_factor(spikes, batch, steps_so_far, steps)
        grads["w_in"] += factor[:, None] * e_sum["w_in"]
        grads["w_rec"] += factor[:, None] * e_sum["w_rec"]
        if steps_so_far < steps:
            return rate.new_zeros(())
        return self.regularisation * (rate - self.target_rate).pow(2).sum()

    def _rate_factor(self, spikes: Tensor, batch: int, steps_so_far: int, steps: int) -> Tensor:
        """``d penalty / d (sum over the batch and the trial of a neuron's spikes)``, per neuron:
        the factor of ``sum_t e^t`` in the penalty's gradient."""
        rate = spikes / (batch * steps_so_far)
        return 2 * self.regularisation * (rate - self.target_rate) / (batch * steps)

    def _per_step(self, target, mask, batch, steps, x) -> tuple[Tensor, Tensor]:
        """Targets and loss weights (with the 1/batch average) indexed by step first:
        ``(T, batch, ...)``, ``(T, batch)``; views where the inputs allow, so that nothing of the
        trial's length is allocated here (a segment's slice is materialised when used)."""
        if self.loss == "mse":
            if target.shape[:2] != (batch, steps):
                raise ValueError(
                    f"mse targets must be (batch, T, n_out), got {tuple(target.shape)}"
                )
            targets = target.transpose(0, 1)
        else:
            if target.dtype not in (torch.int64, torch.int32):
                raise ValueError(
                    f"cross_entropy targets must be integer labels, got {target.dtype}"
                )
            labels = target[:, None].expand(batch, steps) if target.dim() == 1 else target
            targets = labels.transpose(0, 1).long()
        mask = x.new_full((1,), 1.0 / batch).expand(steps) if mask is None else mask.to(x) / batch
        weights = mask[:, None].expand(steps, batch) if mask.dim() == 1 else mask.T
        return targets, weights


def segment_step(
    model: RecurrentLIF,
    x: Tensor,
    targets: Tensor,
    weights: Tensor,
    state: LIFState,
    y: Tensor,
    traces: Traces,
    feedback: Tensor,
    loss: str,
    rate_terms: bool = False,
    last: bool = True,
    backend: str = "torch",
    rate_factor: Callable[[Tensor], Tensor] | None = None,
) -> tuple[dict[str, Tensor], Tensor, LIFState, Tensor, Traces, dict[str, Tensor] | None]:
    """e-prop over ``k`` steps at once: ``(gradients, loss, state, y, traces, rates)`` for ``x``
    ``(batch, k, n_in)``, step-first ``targets`` and ``weights``, from the traces before the
    segment. Equal to ``k`` steps of the reference loop; only per-neuron quantities of the
    segment are kept.

    Every sum the segment needs has the form ``sum_r W_j^r e_ji^r`` for per-neuron weights ``W``
    (``e`` the eligibility trace), which unrolls into products of per-neuron and presynaptic
    factors: ``sum_r (W^r psi^r - G^r psi^r) eps_v^r`` (``G`` from :func:`adaptation_weights` with
    ``w = W psi beta``, ALIF rows only) plus terms at the step before the segment. With
    ``Lf^r = sum_{r<=s<t1} kappa^{s-r} L^s`` (the learning signal filtered backwards within the
    segment)::

        gradient   sum_s L^s ebar^s = kappa Lf^{t0} ebar^{t0-1} + sum_r Lf^r e^r
        next ebar  ebar^{t1-1} = kappa^k ebar^{t0-1} + sum_r kappa^{t1-1-r} e^r   (per example)
        next eps_a eps_a^{t1-1}: the unrolled recursion with w = 1[r = t1-1]      (per example)

    The sums over the batch are one matrix product, the per-example ones one batched product.
    ``rate_terms``: also return what the firing-rate penalty needs (see :class:`EProp`), the
    segment's spike count per neuron and ``sum_r e^r``; otherwise ``rates`` is None.
    ``backend``: ``torch`` (the loops as written here) or ``numba`` (``kernels.numba_rsnn``, CPU
    tensors only, tested equal). ``rate_factor`` (with ``rate_terms``, when the segment is the
    whole trial): maps the segment's spike counts to the penalty's per-neuron factor, which is
    then folded into the task's coefficients (one matrix product for both; ``rates`` then holds
    the spike count only).
    """
    k, kappa = x.shape[1], model.kappa
    if backend == "torch":
        forward = segment_forward(model, x, state, y, traces)
    else:
        forward = segment_forward_compiled(model, x, state, y, traces, backend)
    history, state, y, (eps_in, eps_rec, zbar, onebar) = forward
    psi, eps_v, spikes, ys, onebars, spike_count = history
    error, segment_loss = output_error(ys, targets, weights, loss)  # (k, batch, n_out)
    # Lf = the learning signal filtered backwards; filtering is linear, so the n_out-wide error
    # is filtered and then fed back, rather than the n_rec-wide signal
    error_filtered = reverse_leaky_sum(error, kappa, backend)

    n_in, n_ad = model.n_in, model.n_adaptive
    ad, beta = slice(model.n_rec - n_ad, None), model.beta[model.n_rec - n_ad :]
    c_before = model.rho - beta * traces.psi[:, ad]
    eps_v_before = torch.cat([traces.eps_in, traces.eps_rec], 1)  # (batch, n_in + n_rec)
    eps_a_before = torch.cat([traces.eps_a_in, traces.eps_a_rec], 2)  # (batch, n_ad, n_pre)
    ebar_before = torch.cat([traces.ebar_in, traces.ebar_rec], 2)  # (batch, n_rec, n_pre)

    def coefficients(weight: Tensor | None) -> tuple[Tensor, Tensor]:
        """For ``sum_r W^r e^r`` (``weight`` W, None: only the ALIF rows' ``eps_a`` at the
        segment's last step): the factor of ``eps_v^r`` per step, and ``G^{t0-1}``."""
        c = model.rho - beta * psi[:, :, ad]  # (k, batch, n_ad): the eps_a recursion's factor
        if weight is None:  # eps_a^{t1-1}: the unrolled recursion with w = 1[r = t1-1]
            w = torch.zeros_like(c)
            w[-1] = 1.0
            g, g_before = adaptation_weights(w, c, backend)
            return g * psi[:, :, ad], g_before
        coef = weight * psi
        g, g_before = adaptation_weights(coef[:, :, ad] * beta, c, backend)
        coef[:, :, ad] -= g * psi[:, :, ad]
        return coef, g_before

    def boundary(g0: Tensor) -> tuple[Tensor, Tensor]:
        """The terms at the step before the segment, per example: ``(G psi)^{t0-1}`` (times
        ``eps_v^{t0-1}``) and ``c^{t0-1} G^{t0-1}`` (times ``eps_a^{t0-1}``)."""
        return g0 * traces.psi[:, ad], c_before * g0

    folded = rate_terms and rate_factor is not None
    offset = rate_factor(spike_count) if folded else torch.zeros_like(spike_count)
    if backend == "numba":  # one sweep, no segment-long intermediates
        from neuroplastic.kernels import numba_rsnn

        arrays = numba_rsnn.task_coefficients(
            as_array(error_filtered), as_array(feedback), as_array(offset), as_array(psi),
            as_array(beta.to(psi)), model.rho,
        )  # fmt: skip
        task, g_task = (torch.from_numpy(a) for a in arrays)
    else:
        task, g_task = coefficients(error_filtered @ feedback.T + offset)
    posts = [task]
    if rate_terms and not folded:
        rate, g_rate = coefficients(torch.ones_like(psi))
        posts.append(rate)
    summed = [summed_outer(post, eps_v) for post in posts]  # (n_rec, n_pre) each
    signal_first = kappa * error_filtered[0] @ feedback.T  # kappa Lf^{t0}
    with_ebar = summed[0] + torch.einsum("bj,bji->ji", signal_first, ebar_before)
    totals = [with_ebar] + summed[1:]
    for total, g0 in zip(totals, [g_task] + ([g_rate] if len(posts) > 1 else []), strict=True):
        if n_ad:
            v_factor, a_factor = boundary(g0)
            total[ad] -= v_factor.T @ eps_v_before + torch.einsum(
                "bj,bji->ji", a_factor, eps_a_before
            )
    grads = {
        "w_in": totals[0][:, :n_in],
        "w_rec": totals[0][:, n_in:],
        # sum_s e^s zbar^s, unrolled like the input weights' sum: kappa Ef^{t0} zbar^{t0-1} + ...
        "w_out": summed_outer(error_filtered, spikes)
        + kappa * error_filtered[0].T @ traces.zbar,
        "b_out": torch.einsum("kbo,k->o", error, onebars),
    }
    rates = None
    if folded:
        rates = {"spikes": spike_count}
    elif rate_terms:
        rates = {"spikes": spike_count, "w_in": totals[1][:, :n_in], "w_rec": totals[1][:, n_in:]}
    if last:
        return grads, segment_loss, state, y, traces, rates

    decay = kappa ** torch.arange(k - 1, -1, -1, dtype=x.dtype, device=x.device)[:, None, None]
    ebar_coef, g_ebar = coefficients(decay.expand_as(psi))
    a_coef, g_a = coefficients(None)
    carried = outer_per_example(torch.cat([ebar_coef, a_coef], 2), eps_v)  # (batch, rows, n_pre)
    ebar = kappa**k * ebar_before + carried[:, : model.n_rec]
    eps_a = carried[:, model.n_rec :]
    if n_ad:
        v_factor, a_factor = boundary(g_ebar)
        ebar[:, ad] -= (
            v_factor[:, :, None] * eps_v_before[:, None] + a_factor[:, :, None] * eps_a_before
        )
        v_factor, a_factor = boundary(g_a)
        eps_a = (
            eps_a
            + v_factor[:, :, None] * eps_v_before[:, None]
            + a_factor[:, :, None] * eps_a_before
        )
    traces = Traces(
        eps_in, eps_rec, eps_a[:, :, :n_in], eps_a[:, :, n_in:], psi[-1],
        ebar[:, :, :n_in], ebar[:, :, n_in:], zbar, onebar,
    )  # fmt: skip
    return grads, segment_loss, state, y, traces, rates
