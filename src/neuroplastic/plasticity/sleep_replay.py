"""Sleep replay consolidation (SRC) for ordinary networks: Tadros, Krishnan, Ramyaa & Bazhenov
(2022), "Sleep-like unsupervised replay reduces catastrophic forgetting in artificial neural
networks", Nat. Commun. 13:7742; the sleep-replay sheet, part B, with its notes on the authors'
MATLAB code (read, not copied).

After a task is trained, a bias-free ReLU network of Linear layers runs for a while as a network
of integrate-and-fire neurons with the same weights, driven by Poisson noise shaped like the
inputs seen so far, and every spike changes the weights by a local, STDP-like rule:

1. **Scales** (:func:`layer_scales`, the data-based normalisation the code uses): for layer
   ``l`` take ``s_l = max(largest positive weight, largest activation on the data)`` and divide by
   the previous layer's *applied* factor, which carries forward::

       applied_1 = s_1,   applied_l = s_l / applied_{l-1},   scale_l = 1 / applied_l

   (so the third layer's scale is ``s_2 / (s_1 s_3)``, as in the code). A layer's input is
   ``alpha_l (W_l z_{l-1})`` with ``alpha_l = alpha_scale * scale_l``.
2. **Input** (:func:`input_spikes`): each step, inside a random ``window`` x ``window`` patch of
   the mean input image ``x`` (pixels outside it are silent), pixel ``i`` spikes with probability
   ``2 dt max_rate x_i`` (the code's doubled rate).
3. **Neurons** (:func:`sleep_step`): ``v <- decay v + alpha_l W_l z_{l-1}``; a spike where
   ``v >= beta_l``, then ``v <- 0``. Spikes cross every layer within one step; no refractory
   period, no inhibition (both off in the code).
4. **Plasticity**, for each postsynaptic neuron that spiked::

       W_ji <- W_ji + inc f(W_ji)   where presynaptic i spiked this step
       W_ji <- W_ji - dec f(W_ji)   where it did not

   with ``f(w) = 2 (1 - sigmoid(w / 0.001))`` (:func:`weight_factor`): about 2 for negative
   weights, 1 at zero, about 0 for weights well above 0.001, so sleep mostly moves the small
   and negative weights.
5. The changed weights stay in the ReLU network.

:meth:`SleepReplay.sleep` runs these steps with :func:`sleep_step` (the readable reference) or,
on the CPU with the ``fast`` extra, with the compiled event-driven loop of
``kernels.numba_sleep`` (tested equal; ``benchmarks/sleep_replay.py`` times both), both on
the same input spikes.

The defaults are the authors' MNIST values (``SRC_MNIST``). Sleep length: ``15000 + 5000 (task
- 1)`` steps after task ``task`` (:func:`sleep_steps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from neuroplastic.errors import NeuroplasticError
from neuroplastic.kernels import resolve_backend


@dataclass(frozen=True)
class SRCParameters:
    max_rate: float = 239.5
    """Input rate scale (Hz): a pixel of value x spikes with probability 2 dt max_rate x."""
    increment: float = 0.0321
    """``inc``: potentiation, applied where pre and post spiked together."""
    decrement: float = 0.00334
    """``dec``: depression, applied where post spiked and pre did not."""
    thresholds: tuple[float, ...] = (14.55, 44.56, 38.05)
    """``beta_l``, one per layer."""
    alpha_scale: float = 55.88
    """Multiplies each layer's data-based scale."""
    dt: float = 0.001
    """Step (s)."""
    decay: float = 0.999
    """Membrane decay per step."""
    window: int = 11
    """Side of the random patch of the input image that can spike each step (0: the whole
    input, for inputs that are not images)."""
    image_side: int = 28
    """Side of the square input image the patch is cut from."""
    steps: int = 15000
    """Sleep steps after the first task."""
    steps_per_task: int = 5000
    """Extra steps for each later task."""

    def __post_init__(self) -> None:
        for name in ("max_rate", "increment", "decrement", "alpha_scale", "dt"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must lie in (0, 1], got {self.decay}")
        if any(not b > 0 for b in self.thresholds):
            raise ValueError(f"thresholds must be positive, got {self.thresholds}")
        if self.window < 0 or self.window > self.image_side:
            raise ValueError(f"window must lie in [0, image_side], got {self.window}")


SRC_MNIST = SRCParameters()
"""The authors' tuned MNIST values."""


def sleep_steps(task: int, params: SRCParameters = SRC_MNIST) -> int:
    """Sleep length after task ``task`` (1-based)."""
    if task < 1:
        raise ValueError(f"tasks count from 1, got {task}")
    return params.steps + params.steps_per_task * (task - 1)


def weight_factor(weight: Tensor) -> Tensor:
    """``f(w) = 2 (1 - sigmoid(w / 0.001))``."""
    return 2.0 * (1.0 - torch.sigmoid(weight / 0.001))


def layer_scales(weights: Sequence[Tensor], max_activations: Sequence[float]) -> list[float]:
    """The data-based scale of each layer (step 1 of the module docstring): ``weights`` the
    layers' ``(out, in)`` matrices, ``max_activations`` each layer's largest ReLU output on the
    data."""
    if len(weights) != len(max_activations):
        raise ValueError(
            f"need one largest activation per layer: {len(weights)} layers, "
            f"{len(max_activations)} activations"
        )
    scales, previous = [], 1.0
    for weight, activation in zip(weights, max_activations, strict=True):
        largest = max(float(weight.detach().max().clamp(min=0)), float(activation), 0.0)
        if largest == 0:
            raise ValueError("a layer with no positive weight and no activation cannot be scaled")
        applied = largest / previous
        scales.append(1.0 / applied)
        previous = applied
    return scales


@torch.no_grad()
def max_activations(layers: Sequence[nn.Linear], inputs: Tensor, chunk: int = 1000) -> list[float]:
    """Each layer's largest ReLU output over ``inputs`` ``(examples, in)`` (the code's gains come
    from all the data seen so far)."""
    largest = [0.0] * len(layers)
    for start in range(0, len(inputs), chunk):
        x = inputs[start : start + chunk]
        for index, layer in enumerate(layers):
            x = torch.relu(x @ layer.weight.T)
            largest[index] = max(largest[index], float(x.max()))
    return largest


def input_spike_train(
    mean_input: Tensor, params: SRCParameters, steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:  # fmt: skip
    """``steps`` steps of input spikes ``(steps, in)``: each step, the pixels of a random
    ``window`` patch of the image spike with probability ``2 dt max_rate x``; the rest are silent
    (step 2). Drawn for a whole stretch at once (the same law as step by step)."""
    probability = (2.0 * params.dt * params.max_rate * mean_input.flatten()).clamp(0.0, 1.0)
    draw = torch.rand((steps, probability.numel()), generator=generator, dtype=probability.dtype)
    spikes = (draw.to(probability.device) < probability).to(probability.dtype)
    if params.window:
        side = params.image_side
        if probability.numel() != side * side:
            raise ValueError(
                f"a {params.window}x{params.window} window needs a {side}x{side} image input, got "
                f"{probability.numel()} inputs (set window=0 for other inputs)"
            )
        corners = torch.randint(0, side - params.window + 1, (steps, 2), generator=generator)
        lines = torch.arange(side)
        inside = (lines >= corners[..., None]) & (lines < corners[..., None] + params.window)
        mask = inside[:, 0, :, None] & inside[:, 1, None, :]  # (steps, rows, columns)
        spikes = spikes * mask.flatten(1).to(spikes)
    return spikes


def input_spikes(
    mean_input: Tensor, params: SRCParameters, generator: torch.Generator | None = None
) -> Tensor:
    """One step's input spikes ``(in,)`` (:func:`input_spike_train` of one step)."""
    return input_spike_train(mean_input, params, 1, generator)[0]


class SleepState(NamedTuple):
    potentials: list[Tensor]
    """Each layer's membrane potentials ``(out,)``."""


def initial_state(weights: Sequence[Tensor]) -> SleepState:
    return SleepState([w.new_zeros(w.shape[0]) for w in weights])


def sleep_step(
    weights: list[Tensor], state: SleepState, spikes_in: Tensor, alphas: Sequence[float],
    params: SRCParameters = SRC_MNIST,
) -> tuple[list[Tensor], SleepState, list[Tensor]]:  # fmt: skip
    """One step through every layer (steps 3 and 4): ``(new weights, new state, each layer's
    spikes)``. ``weights`` are not modified in place."""
    if len(params.thresholds) != len(weights):
        raise ValueError(
            f"{len(weights)} layers need {len(weights)} thresholds, got {params.thresholds}"
        )
    new_weights, potentials, spikes = [], [], []
    pre = spikes_in
    for weight, v, alpha, beta in zip(weights, state.potentials, alphas, params.thresholds,
                                      strict=True):  # fmt: skip
        v = params.decay * v + alpha * (weight @ pre)
        post = (v >= beta).to(v.dtype)
        v = v * (1 - post)  # reset to zero
        fired = post.nonzero(as_tuple=True)[0]
        if len(fired):  # only the rows of neurons that spiked change
            change = params.increment * pre - params.decrement * (1 - pre)  # (in,)
            rows = weight[fired]
            weight = weight.index_copy(0, fired, rows + change[None, :] * weight_factor(rows))
        new_weights.append(weight)
        potentials.append(v)
        spikes.append(post)
        pre = post
    return new_weights, SleepState(potentials), spikes


class SleepReplay:
    """SRC on a model's bias-free Linear layers (a ReLU network). ``sleep(mean_input, steps)``
    runs the spiking phase and writes the changed weights back. Scales come from
    ``calibrate(data)`` (the largest activations on the data seen so far, as the authors' code)
    or ``calibrate_from(max_activations)`` (e.g. running maxima kept without storing data)."""

    def __init__(self, layers: Sequence[nn.Linear], params: SRCParameters = SRC_MNIST):
        layers = list(layers)
        if not layers:
            raise ValueError("SleepReplay needs at least one Linear layer")
        for layer in layers:
            if not isinstance(layer, nn.Linear) or layer.bias is not None:
                raise ValueError(
                    "SRC maps a bias-free ReLU network: every layer must be nn.Linear(..., "
                    "bias=False)"
                )
        if len(params.thresholds) != len(layers):
            raise ValueError(
                f"{len(layers)} layers need {len(layers)} thresholds, got {params.thresholds}"
            )
        self.layers, self.params = layers, params
        self.alphas: list[float] | None = None

    def calibrate(self, data: Tensor) -> list[float]:
        return self.calibrate_from(max_activations(self.layers, data.flatten(1)))

    def calibrate_from(self, largest: Sequence[float]) -> list[float]:
        scales = layer_scales([layer.weight for layer in self.layers], largest)
        self.alphas = [self.params.alpha_scale * scale for scale in scales]
        return self.alphas

    @torch.no_grad()
    def sleep(
        self, mean_input: Tensor, steps: int, generator: torch.Generator | None = None,
        backend: str = "auto", chunk: int = 1000, max_activity: float | None = None,
    ) -> list[Tensor]:  # fmt: skip
        """``steps`` steps of sleep driven by ``mean_input`` ``(in,)``; the layers' weights are
        replaced by the slept ones. Returns each layer's spike count per neuron.

        ``backend``: ``torch`` (:func:`sleep_step`, step by step, the reference), ``numba`` (the
        compiled loop of ``kernels.numba_sleep``, tested equal to it; CPU, the ``fast`` extra) or
        ``auto`` (numba where it is installed and the weights are on the CPU). Both consume the
        same input spikes, drawn ``chunk`` steps at a time.

        ``max_activity``: stop with :class:`RunawaySleep` when, over a chunk, a layer's neurons
        fire on average in more than this share of the steps (activity the authors' values never
        come near; it rewrites every row each step and costs minutes). ``None``: never stop."""
        if backend not in ("auto", "torch", "numba"):  # no Triton sleep
            raise ValueError(f"backend must be auto, torch or numba, got {backend!r}")
        if self.alphas is None:
            raise RuntimeError("call calibrate(data) or calibrate_from(...) before sleep")
        weights = [layer.weight.detach().clone(memory_format=torch.contiguous_format)
                   for layer in self.layers]  # fmt: skip
        device = weights[0].device
        backend = "torch" if backend == "auto" and device.type != "cpu" else resolve_backend(
            backend, device)  # fmt: skip
        state = initial_state(weights)
        counts = [w.new_zeros(w.shape[0]) for w in weights]
        mean_input = mean_input.flatten().to(weights[0])
        if backend == "numba":
            from neuroplastic.kernels.numba_sleep import sleep_segment

            transposed = [w.T.contiguous() for w in weights]
        for start in range(0, steps, chunk):
            before = [c.sum().item() for c in counts] if max_activity is not None else []
            train = input_spike_train(mean_input, self.params, min(chunk, steps - start),
                                      generator)  # fmt: skip
            if backend == "numba":
                sleep_segment(
                    [w.numpy() for w in transposed], [v.numpy() for v in state.potentials],
                    [c.numpy() for c in counts], self.alphas, self.params.thresholds,
                    self.params.decay, self.params.increment, self.params.decrement,
                    train.numpy(),
                )  # fmt: skip
            else:
                for spikes_in in train:
                    weights, state, spikes = sleep_step(weights, state, spikes_in, self.alphas,
                                                        self.params)  # fmt: skip
                    for count, s in zip(counts, spikes, strict=True):
                        count += s
            if max_activity is not None:
                for layer, (count, previous) in enumerate(zip(counts, before, strict=True)):
                    activity = (count.sum().item() - previous) / (len(count) * len(train))
                    if activity > max_activity:
                        raise RunawaySleep(
                            f"sleep stopped at step {start + len(train)}: layer {layer + 1}'s "
                            f"neurons fired in {activity:.0%} of the steps (max_activity "
                            f"{max_activity:.0%}); raise the thresholds or lower alpha_scale"
                        )
        if backend == "numba":
            weights = [w.T for w in transposed]
        for layer, weight in zip(self.layers, weights, strict=True):
            layer.weight.copy_(weight)
        return counts


class RunawaySleep(NeuroplasticError):
    """A sleep's activity exceeded ``max_activity``: see :meth:`SleepReplay.sleep`."""
