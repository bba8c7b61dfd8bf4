"""perturbation-scaling: weight against node perturbation against backprop as networks grow.

Claim tested (Marblestone, Wayne & Kording 2016, "Toward an integration of deep learning and
neuroscience", Front. Comput. Neurosci. 10:94, section 2, after Werfel, Xie & Seung 2005; sheet
``shared/papers/credit-assignment.md``): the variance of parallel *weight* perturbation's gradient
estimate grows with the number of synapses, that of *node* perturbation's with the number of
neurons; so, at the same number of forward passes, node perturbation learns faster than weight
perturbation.

(a) Variance. For each architecture ``n_in-H-10`` (ReLU hidden layer; by default H = 16 ... 256
on 28x28 images, plus 7x7 and 14x14 average-pooled images at H = 64, which add synapses at a
fixed number of neurons) and each seed: a fresh network, one minibatch of training images, the
backprop gradient ``g`` of its mean loss, and ``variance_draws`` single-draw estimates ``g_hat``
of each perturbation rule (``samples = 1``: each estimate costs two forward passes, one clean and
one perturbed, for both rules). The metric is the relative variance

    V = mean over draws of |g_hat - g|^2 / |g|^2

(the mean squared error against backprop, normalised by the squared gradient norm; the bias is
O(sigma^2) and negligible at the default sigma, so this is the variance). Synapses ``P`` count
every perturbed weight and bias, neurons ``N`` every perturbed unit (hidden and output). Per seed,
``log V = alpha log P + beta log N + c`` is fitted by least squares over all architectures: the
claim says ``alpha ~ 1, beta ~ 0`` for weight perturbation (theory: ``V = P + 1`` exactly as sigma
-> 0) and ``alpha ~ 0, beta ~ 1`` for node perturbation. The plain slopes of ``log V`` against
``log P`` and against ``log N`` over the width sweep alone are recorded too (there P and N both
grow with H, so those two slopes cannot tell the scalings apart; the pooled inputs can).

(a, linear) Werfel, Xie & Seung's own setting, where the theory is exact: a linear student
``y = W x`` (N inputs, M outputs, no bias) learning a random linear teacher with the square loss
``0.5 |W x - W* x|^2``, one input of unit norm per estimate. For Gaussian perturbations
``E |g_hat|^2 = (K + 2) |g|^2`` with K the perturbed dimensions, so the relative variance is
``V = M + 1`` for node perturbation and ``V = N M + 1`` for weight perturbation (up to the
O(sigma) bias of the finite difference). Swept factorially over ``linear_inputs`` x
``linear_outputs``, ``linear_draws`` estimates each.

(a, per layer) In the MLP, V is also measured for each layer on its own
(``|g_hat_l - g_l|^2 / |g_l|^2``), and exponents are fitted per layer as for the aggregate. For
weight perturbation with one example the algebra gives ``V_l = K_l |g|^2 / |g_l|^2 + 1`` per layer
(K_l its perturbed parameters) and exactly ``V = P + 1`` for the aggregate: the aggregate is the
clean measure. For node perturbation the aggregate weighs each layer by the squared norm of its
input, which pooling the images changes, while a layer's own V_l depends on its units' share of
the output-error gradient and not on its input: the per-layer values are the clean measure.

Verdict (criterion fixed before the runs of this protocol): five parts, each over the seed means
of the default config. (i) Linear: at every (N, M), V divided by its theory is within
``RATIO_TOLERANCE`` of 1 for both rules. (ii) MLP: weight perturbation's aggregate exponents
within ``EXPONENT_TOLERANCE`` of (1, 0), and node perturbation's per-layer exponents within it of
(0, 1) for both layers. (iii) Learning, below: node perturbation's final training loss below weight
perturbation's at every training width (paired 95 % interval of the difference below 0). (iv)
Learning speed in the linear setting: node perturbation needs fewer passes than weight perturbation
at every (N, M), and the fitted exponent of the ratio weight / node on log N is within
``EXPONENT_TOLERANCE`` of 1. (v) Serial against parallel weight perturbation in the same linear
sweep (fixed before serial perturbation's runs): at every (N, M), serial perturbation's passes are
within a factor ``SAME_RATE_FACTOR`` of weight perturbation's. All five: holds; none: does not
hold; otherwise partly holds.

(b, linear) Learning speed in Werfel's setting, their central claim, with serial perturbation
(``credit.serial_perturbation``: one weight per step, its exact finite difference) beside the
parallel rules. The linear student starts
at W = 0 and learns online, one fresh unit-norm input per step, until its generalisation error
``|W - W*|^2 / |W*|^2`` falls below ``speed_target``; the measure is the forward passes spent (2 per
perturbation step, clean and perturbed; ``backprop_pass_cost`` per backprop step). Each (method, N,
M) gets the same grid of learning rates (``speed_lrs``), scored on the tuning seed; the chosen
rate is then run on the seed. With the optimal rate a Gaussian-perturbation step makes about
``1 / (K + 2)`` of a gradient step's progress (K perturbed dimensions), and online learning of N
inputs takes about N gradient steps, so the passes grow about as ``N^2 M`` for weight
perturbation, ``N M`` for node perturbation and ``N`` for backprop: the ratio weight / node grows
as N, the synapses per neuron. A serial step (rate 1) moves one of the ``K = N M`` weights by
its exact derivative and makes ``1 / K`` of a gradient step's expected progress: against
``1 / (K + 2)`` for the parallel step, about the same per pass (Werfel et al.). The simulation
is batched over learning rates (:func:`linear_speed`); its estimators are tested equal to the
rules' own.

(b) Learning. At each width of ``train_widths`` every method trains the same initial network on
the same minibatch sequence with plain SGD until it has spent ``budget`` forward passes. Counting:
a perturbation step costs its rule's ``forward_passes`` (1 clean + 1 perturbed pass with forward
differences and ``samples = 1``); a backprop step is charged ``backprop_pass_cost`` passes (default
2: one forward and one backward pass, so all three methods take the same number of steps; in
multiply-adds a backward pass costs about two forwards, which ``--set backprop_pass_cost=3``
models). The training loss on a fixed set of ``n_train_eval`` training images is read every
``budget / curve_points`` passes (not counted). Learning rates: every method gets the same grid
``lrs`` (the same tuning budget), each value trained once from ``tuning_seed`` and scored by the
loss on the validation split carved from the training images (never the test set); the tuning
depends on the config only and is computed once per process.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neuroplastic.credit.backprop import Backprop
from neuroplastic.credit.base import CreditRule, loss_per_example
from neuroplastic.credit.node_perturbation import NodePerturbation
from neuroplastic.credit.serial_perturbation import SerialPerturbation
from neuroplastic.credit.weight_perturbation import PerturbationRule, WeightPerturbation
from neuroplastic.errors import DivergenceError
from neuroplastic.experiments.base import (
    Experiment,
    ReportTable,
    RunContext,
    RunResult,
    Verdict,
    default_runs,
    finished_by_config,
)
from neuroplastic.models.mlp import MLP
from neuroplastic.results import Key
from neuroplastic.seeding import sequence_generator as generator  # (seed, role, *key)
from neuroplastic.stats import Summary, mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.tasks.splits import validation_split
from neuroplastic.threads import one_cpu_thread
from neuroplastic.tuning import Batch, Choice, Objective, Study, Trial

NAME = "perturbation-scaling"
WEIGHT, NODE, BACKPROP = "weight-perturbation", "node-perturbation", "backprop"
SERIAL = "serial-perturbation"
METHODS = (WEIGHT, NODE, BACKPROP, SERIAL)
"""Every method, in the order that keys their noise streams (so adding one leaves the others')."""
PERTURBATION_METHODS = (WEIGHT, NODE)
"""The rules whose gradient-estimate variance is measured (a)."""
RULES: dict[str, type[PerturbationRule]] = {
    WEIGHT: WeightPerturbation, NODE: NodePerturbation, SERIAL: SerialPerturbation,
}  # fmt: skip
MIN_SEEDS = 5
IMAGE_SIDE = 28
N_CLASSES = 10
EXPONENT_TOLERANCE = 0.25
"""The per-layer variance claim holds for a rule when its fitted exponent of the named count is
within this of 1 and that of the other count within this of 0 (seed means)."""
RATIO_TOLERANCE = 0.15
"""The linear claim holds when every seed-mean V / theory is within this of 1."""
SAME_RATE_FACTOR = 2.0
"""Serial and parallel weight perturbation learn "at about the same rate" when the seed-mean
passes of one are within this factor of the other's at every (N, M)."""
LAYERS = ("hidden", "output")
_ROLE_INIT, _ROLE_ORDER, _ROLE_NOISE, _ROLE_BATCH, _ROLE_LINEAR = range(5)


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist-mini"
    """Dataset: ``mnist-mini`` (the bundled 6,000 training images) or ``mnist``."""
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    """Hidden widths H of the 784-H-10 networks whose gradient estimates are measured (a)."""
    input_sides: tuple[int, ...] = (7, 14)
    """Side lengths of average-pooled images (7: 49 inputs, 14: 196) measured at
    ``input_sweep_width`` (a): more synapses at the same number of neurons."""
    input_sweep_width: int = 64
    """Hidden width of the pooled-input networks."""
    activation: Literal["relu", "tanh", "sigmoid"] = "relu"
    """Non-linearity of the hidden layer."""
    loss: Literal["cross_entropy", "square"] = "cross_entropy"
    """Cost: cross-entropy on softmax, or 0.5 ||z - onehot||^2 on the outputs."""
    sigma: float = 1e-3
    """Standard deviation of the weight or node noise."""
    difference: Literal["forward", "central"] = "forward"
    """Finite difference of both perturbation rules: forward, C(+xi) - C(0) (2 passes per
    estimate), or central, (C(+xi) - C(-xi)) / 2 (3 passes with the clean one)."""
    batch_size: int = 100
    """Examples per minibatch, for the variance measurements and for training."""
    variance_draws: int = 128
    """Single-draw estimates per rule and architecture from which V is measured."""
    linear_inputs: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    """Input counts N of the linear student-teacher networks (Werfel's setting)."""
    linear_outputs: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    """Output counts M of the linear student-teacher networks (swept with every N)."""
    linear_draws: int = 512
    """Single-draw estimates per rule and linear network."""
    speed_inputs: tuple[int, ...] = (8, 16, 32)
    """Input counts N of the linear learning-speed sweep."""
    speed_outputs: tuple[int, ...] = (2, 4, 8)
    """Output counts M of the linear learning-speed sweep (with every N)."""
    speed_lrs: tuple[float, ...] = tuple(2.0**-k for k in range(-1, 15))
    """Learning-rate grid of the linear learning-speed sweep (2 down to 2^-14), the same for every
    method and size."""
    speed_patience: float = 4.0
    """In a batch of rates, one that has not learnt within this many times the passes of the
    fastest counts as not learning (inf): the search needs the fastest, not the slow tail."""
    speed_target: float = 0.1
    """Generalisation error ``|W - W*|^2 / |W*|^2`` at which the linear student has learnt."""
    speed_max_passes: int = 200_000
    """Forward passes after which a linear run that has not learnt counts as never (inf)."""
    methods: tuple[str, ...] = METHODS
    """Methods of the learning sweeps (b, b linear); weight and node perturbation are always in."""
    train_widths: tuple[int, ...] = (32, 128)
    """Hidden widths at which the three methods are trained (b)."""
    budget: int = 2000
    """Forward passes each method may spend on training (b)."""
    curve_points: int = 20
    """Points of each training-loss curve after the initial one (one every budget/curve_points
    passes)."""
    n_train_eval: int = 1000
    """Training images (fixed: the first of the training split) on which the curves' loss is
    read."""
    lrs: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
    """Learning-rate grid of SGD, the same for every method (the equal tuning budget); it reaches
    1000 because serial perturbation, which moves one weight per step, chose 10, the previous
    edge."""
    backprop_pass_cost: float = 2.0
    """Forward passes charged for one backprop step (a forward and a backward pass)."""
    validation_fraction: float = 0.1
    """Share of the training images held out to score the learning rates (a fixed split)."""
    tuning_seed: int = 1000
    """Seed of the networks, minibatches and noise of the learning-rate search."""

    def __post_init__(self) -> None:
        for name in (
            "input_sweep_width",
            "batch_size",
            "variance_draws",
            "linear_draws",
            "budget",
            "curve_points",
            "n_train_eval",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if len(set(self.widths)) < 2 or min(self.widths) < 1:
            raise ValueError(
                f"widths must hold at least two distinct positive widths: {self.widths}"
            )
        if not self.input_sides or not all(1 <= s < IMAGE_SIDE for s in self.input_sides):
            raise ValueError(
                f"input_sides must hold at least one side in [1, {IMAGE_SIDE}) (the joint fit "
                f"needs networks with fewer synapses at a fixed number of neurons): "
                f"{self.input_sides}"
            )
        if not self.speed_lrs or not all(0 < lr < math.inf for lr in self.speed_lrs):
            raise ValueError(f"speed_lrs must hold positive learning rates: {self.speed_lrs}")
        if not 0 < self.speed_target < 1 or self.speed_max_passes < 1:
            raise ValueError("need 0 < speed_target < 1 and speed_max_passes >= 1")
        if not self.speed_patience >= 1:
            raise ValueError(f"speed_patience must be at least 1, got {self.speed_patience}")
        for name in ("linear_inputs", "linear_outputs", "speed_inputs", "speed_outputs"):
            values = getattr(self, name)
            if len(set(values)) < 2 or min(values) < 1:
                raise ValueError(
                    f"{name} must hold at least two distinct positive counts: {values}"
                )
        unknown = set(self.methods) - set(METHODS)
        if unknown or not {WEIGHT, NODE} <= set(self.methods):
            raise ValueError(
                f"methods must include {WEIGHT} and {NODE} and come from {METHODS}: "
                f"{self.methods}"
            )
        if not self.train_widths or min(self.train_widths) < 1:
            raise ValueError(f"train_widths must hold positive widths: {self.train_widths}")
        if not self.lrs or not all(0 < lr < math.inf for lr in self.lrs):
            raise ValueError(f"lrs must hold positive finite learning rates: {self.lrs}")
        if not (0 < self.sigma < math.inf):
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if not self.backprop_pass_cost > 0:
            raise ValueError(f"backprop_pass_cost must be positive, got {self.backprop_pass_cost}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction}"
            )


def quick(config: Config) -> Config:
    """The two smallest widths, one pooled size at H <= 16, 32 draws, the smallest training width,
    at most 400 passes, every other learning rate: a smoke test of seconds."""
    return dataclasses.replace(
        config,
        widths=tuple(sorted(config.widths)[:2]),
        input_sides=tuple(sorted(config.input_sides)[-1:]),
        input_sweep_width=min(config.input_sweep_width, 16),
        variance_draws=min(config.variance_draws, 32),
        linear_inputs=tuple(sorted(config.linear_inputs)[:2]),
        linear_outputs=tuple(sorted(config.linear_outputs)[:2]),
        linear_draws=min(config.linear_draws, 64),
        speed_inputs=tuple(sorted(config.speed_inputs)[:2]),
        speed_outputs=tuple(sorted(config.speed_outputs)[:2]),
        speed_max_passes=min(config.speed_max_passes, 20_000),
        train_widths=tuple(sorted(config.train_widths)[:1]),
        budget=min(config.budget, 400),
        curve_points=min(config.curve_points, 8),
        lrs=config.lrs[1::2] or config.lrs,
    )


# -- architectures and data -----------------------------------------------------------------------


def architectures(config: Config) -> list[tuple[int, int]]:
    """``(n_in, H)`` of every network whose estimates are measured: the width sweep on full
    images, then the pooled-input sweep."""
    full = [(IMAGE_SIDE**2, width) for width in config.widths]
    pooled = [(side**2, config.input_sweep_width) for side in config.input_sides]
    return full + pooled


def variance_key(method: str, n_in: int, width: int, layer: str | None = None) -> Key:
    """Where ``method``'s relative variance on the ``n_in``-``width``-10 network is recorded
    (of one layer, or of all parameters when ``layer`` is None)."""
    return Key(method, "relative_variance", inputs=n_in, width=width, layer=layer)


def linear_key(method: str, n_in: int, n_out: int) -> Key:
    """Where ``method``'s relative variance on the linear ``n_in -> n_out`` student is
    recorded."""
    return Key(method, "relative_variance", setting="linear", inputs=n_in, outputs=n_out)


def speed_key(method: str, n_in: int, n_out: int) -> Key:
    """Where ``method``'s forward passes to learn the linear ``n_in -> n_out`` task go."""
    return Key(method, "passes_to_target", setting="linear", inputs=n_in, outputs=n_out)


def linear_theory(method: str, n_in: int, n_out: int) -> float:
    """Werfel, Xie & Seung's relative variance: ``M + 1`` (node), ``N M + 1`` (weight)."""
    return n_out + 1.0 if method == NODE else n_in * n_out + 1.0


def synapses(n_in: int, width: int) -> int:
    """Perturbed weights and biases of ``n_in-width-10``."""
    return n_in * width + width + width * N_CLASSES + N_CLASSES


def neurons(width: int) -> int:
    """Perturbed units (hidden and output) of ``n_in-width-10``."""
    return width + N_CLASSES


def pool(images: Tensor, n_in: int) -> Tensor:
    """``(B, 784)`` images average-pooled to ``(B, n_in)``, ``n_in`` a square side**2."""
    side = math.isqrt(n_in)
    if side == IMAGE_SIDE:
        return images
    grid = images.view(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    return F.adaptive_avg_pool2d(grid, side).flatten(1)


def make_rule(method: str, model: MLP, config: Config, noise: torch.Generator) -> CreditRule:
    if method == BACKPROP:
        return Backprop(model)
    rule_cls = RULES[method]
    return rule_cls(model, generator=noise, sigma=config.sigma, difference=config.difference)


def fit_exponents(
    log_variance: Sequence[float], log_synapses: Sequence[float], log_neurons: Sequence[float]
) -> tuple[float, float]:
    """Least-squares ``(alpha, beta)`` of ``log V = alpha log P + beta log N + c``."""
    design = np.column_stack([log_synapses, log_neurons, np.ones(len(log_variance))])
    coefficients, *_ = np.linalg.lstsq(design, np.asarray(log_variance), rcond=None)
    return float(coefficients[0]), float(coefficients[1])


def slope(log_y: Sequence[float], log_x: Sequence[float]) -> float:
    """Least-squares slope of ``log_y`` against ``log_x``."""
    return float(np.polyfit(np.asarray(log_x), np.asarray(log_y), 1)[0])


# -- (a) the variance of the estimates ------------------------------------------------------------


@torch.no_grad()
def relative_variances(
    config: Config, seed: int, n_in: int, width: int, x: Tensor, y: Tensor
) -> dict[str, float]:
    """V of each perturbation rule for a fresh ``n_in-width-10`` network of ``seed`` on
    ``(x, y)``."""
    model = MLP(
        (n_in, width, N_CLASSES), config.activation, generator(seed, _ROLE_INIT, n_in, width)
    )
    model = model.to(x.device)
    with torch.enable_grad():
        Backprop(model).backward(x, y, config.loss)
    gradient = [
        p.grad.detach().clone() for layer in model.layers for p in (layer.weight, layer.bias)
    ]
    model.zero_grad(set_to_none=True)
    result = {}
    for index, method in enumerate(PERTURBATION_METHODS):
        noise = generator(seed, _ROLE_NOISE, n_in, width, index)
        rule = RULES[method](
            model, generator=noise, sigma=config.sigma, difference=config.difference
        )
        result[method] = mean_relative_errors(
            lambda draws, rule=rule: rule.estimates(x, y, config.loss, draws=draws).grads,
            gradient, config.variance_draws, groups={None: [0, 1, 2, 3], "hidden": [0, 1],
                                                     "output": [2, 3]},
        )  # fmt: skip
        if not all(math.isfinite(v) for v in result[method].values()):
            raise DivergenceError(
                f"{method} gave a non-finite gradient estimate for {n_in}-{width}-10 (seed {seed})",
                hint=f"try another sigma (now {config.sigma}) with --set sigma=...",
            )
    return result


def mean_relative_errors(
    estimate: Callable[[int], Sequence[Tensor]],
    gradient: Sequence[Tensor],
    total_draws: int,
    groups: dict[str | None, list[int]],
    chunk: int = 32,
) -> dict[str | None, float]:
    """``mean over draws of |g_hat - g|^2 / |g|^2`` over each group of parameter indices;
    ``estimate(draws)`` gives ``(draws, *shape)`` single-draw estimates per parameter."""
    squared_error = [0.0] * len(gradient)
    for start in range(0, total_draws, chunk):
        draws = min(chunk, total_draws - start)
        for i, (e, g) in enumerate(zip(estimate(draws), gradient, strict=True)):
            squared_error[i] += float((e - g).flatten(1).pow(2).sum())
    norm2 = [float(g.pow(2).sum()) for g in gradient]
    return {
        name: sum(squared_error[i] for i in members) / total_draws / sum(norm2[i] for i in members)
        for name, members in groups.items()
    }


@torch.no_grad()
def linear_relative_variances(config: Config, seed: int, n_in: int, n_out: int) -> dict[str, float]:
    """V of each perturbation rule in Werfel's setting: a linear ``n_in -> n_out`` student (no
    bias) and a linear teacher, both with N(0, 1/n_in) weights, one input of unit norm, the
    square loss."""
    draw = generator(seed, _ROLE_LINEAR, n_in, n_out)
    student = torch.nn.Sequential(torch.nn.Linear(n_in, n_out, bias=False))
    student[0].weight.copy_(torch.randn(n_out, n_in, generator=draw) / math.sqrt(n_in))
    teacher = torch.randn(n_out, n_in, generator=draw) / math.sqrt(n_in)
    x = torch.randn(1, n_in, generator=draw, dtype=torch.float64).float()
    x = x / x.norm()
    target = x @ teacher.T

    def losses(model: torch.nn.Module) -> Tensor:
        return 0.5 * (model(x) - target).pow(2).sum(dim=-1)

    gradient = [(student(x) - target).T @ x]  # dL/dW = (W x - W* x) x^T
    result = {}
    for index, method in enumerate(PERTURBATION_METHODS):
        noise = generator(seed, _ROLE_NOISE, n_in, n_out, index, _ROLE_LINEAR)
        rule = RULES[method](
            student, generator=noise, sigma=config.sigma, difference=config.difference
        )
        result[method] = mean_relative_errors(
            lambda draws, rule=rule: rule.estimates(losses, draws=draws).grads,
            gradient, config.linear_draws, groups={None: [0]},
        )[None]  # fmt: skip
        rule.remove()
    return result


# -- (b, linear) learning speed in Werfel's setting -------------------------------------------


def linear_speed(
    config: Config, method: str, n_in: int, n_out: int, lrs: Sequence[float], seed: int
) -> list[float]:
    """Forward passes the linear student of ``seed`` needs to reach ``speed_target`` with each of
    ``lrs`` (inf: diverged, not within ``speed_max_passes``, or not within ``speed_patience`` times
    the fastest rate's passes), all rates as one batch on the same inputs and noise.

    One online step on input ``x`` (unit norm), with ``d = (W - W*) x`` and ``L = |d|^2 / 2``:
    backprop ``g = d x^T``; weight perturbation (forward difference, noise ``sigma Xi``)
    ``g = (L(W + sigma Xi) - L(W)) / sigma Xi``; serial perturbation the same with ``Xi = e_i``, one
    weight drawn uniformly; node perturbation (noise ``sigma xi`` on the outputs)
    ``g = (L(y + sigma xi) - L(y)) / sigma xi x^T``: the estimators of ``WeightPerturbation``,
    ``SerialPerturbation`` and ``NodePerturbation`` with one draw (tested equal).
    """
    draw = generator(seed, _ROLE_LINEAR, n_in, n_out, 1)
    noise = generator(seed, _ROLE_NOISE, n_in, n_out, 1)
    dtype = torch.float64
    teacher = torch.randn(n_out, n_in, generator=draw, dtype=dtype) / math.sqrt(n_in)
    norm2 = float(teacher.pow(2).sum())
    rates = torch.tensor(list(lrs), dtype=dtype)[:, None, None]
    student = torch.zeros(len(lrs), n_out, n_in, dtype=dtype)
    passes_per_step = config.backprop_pass_cost if method == BACKPROP else 2.0
    reached = torch.full((len(lrs),), math.inf, dtype=dtype)
    sigma, steps = config.sigma, int(config.speed_max_passes // passes_per_step)
    for step in range(1, steps + 1):
        x = torch.randn(n_in, generator=draw, dtype=dtype)
        x = x / x.norm()
        d = (student - teacher) @ x  # (R, M)
        if method == BACKPROP:
            gradient = d[:, :, None] * x
        elif method in (WEIGHT, SERIAL):
            if method == WEIGHT:
                xi = torch.randn(n_out, n_in, generator=noise, dtype=dtype)
            else:  # the draw SerialPerturbation makes: one index over all weights
                xi = torch.zeros(n_out * n_in, dtype=dtype)
                xi[int(torch.randint(n_out * n_in, (1,), generator=noise))] = 1.0
                xi = xi.view(n_out, n_in)
            change = ((d + sigma * (xi @ x)).pow(2).sum(-1) - d.pow(2).sum(-1)) / 2
            gradient = (change / sigma)[:, None, None] * xi
        else:
            xi = torch.randn(n_out, generator=noise, dtype=dtype)
            change = ((d + sigma * xi).pow(2).sum(-1) - d.pow(2).sum(-1)) / 2
            gradient = (change / sigma)[:, None, None] * (xi[:, None] * x)
        student = student - rates * gradient
        error = (student - teacher).pow(2).sum((1, 2)) / norm2
        newly = (error <= config.speed_target) & torch.isinf(reached)
        reached[newly] = step * passes_per_step
        lost = ~torch.isfinite(error) | (error > 1e6)
        student[lost] = 0.0  # a diverged rate stays at inf and stops overflowing
        if bool((torch.isfinite(reached) | lost).all()):
            break
        fastest = float(reached.min())
        if step * passes_per_step >= config.speed_patience * fastest:
            break  # the rest are slower than the patience allows: inf
    return reached.tolist()


def speed_study_name(method: str, n_in: int, n_out: int) -> str:
    return f"{method}@linear{n_in}x{n_out}"


def speed_cells(config: Config) -> list[tuple[str, int, int]]:
    return [
        (m, n, k) for n in config.speed_inputs for k in config.speed_outputs for m in config.methods
    ]


def speed_study(config: Config, method: str, n_in: int, n_out: int) -> Study:
    """Every rate of ``speed_lrs`` once, as one batch, on the tuning seed."""
    return Study(
        speed_study_name(method, n_in, n_out), {"lr": Choice(config.speed_lrs)},
        trials=len(config.speed_lrs), sampler="grid", seed=config.tuning_seed,
        round_size=len(config.speed_lrs), training_seed=config.tuning_seed,
    )  # fmt: skip


def speed_objective(config: Config, method: str, n_in: int, n_out: int) -> Batch:
    """Passes to the target for every rate of a round, simulated as one batch."""

    def objective(trials: Sequence[tuple[dict, Trial]]) -> list[float]:
        lrs = [params["lr"] for params, _ in trials]
        return linear_speed(config, method, n_in, n_out, lrs, config.tuning_seed)

    return Batch(objective)


def tuned_speed_rate(config: Config, method: str, n_in: int, n_out: int, context) -> float:
    study = speed_study(config, method, n_in, n_out)
    batch = speed_objective(config, method, n_in, n_out).objective
    return context.tune(config, study, batch_objective=batch).params["lr"]


# -- (b) learning against forward passes ----------------------------------------------------------


@dataclass
class Splits:
    """The training images (minus the validation carve), the validation carve, the fixed
    evaluation subset of the training images."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    eval_x: Tensor
    eval_y: Tensor


def make_splits(config: Config, context: RunContext) -> Splits:
    data = context.load_dataset(config.dataset)
    device = data.train_x.device
    n_validation = round(config.validation_fraction * len(data.train_y))
    train_index, val_index = validation_split(len(data.train_y), n_validation)
    train_x, train_y = data.train_x[train_index.to(device)], data.train_y[train_index.to(device)]
    n_eval = min(config.n_train_eval, len(train_y))
    return Splits(
        train_x,
        train_y,
        data.train_x[val_index.to(device)],
        data.train_y[val_index.to(device)],
        train_x[:n_eval],
        train_y[:n_eval],
    )


@torch.no_grad()
def mean_loss(model: MLP, x: Tensor, y: Tensor, loss: str) -> float:
    return float(loss_per_example(model(x), y, loss).mean())


def train(
    config: Config, method: str, width: int, lr: float, seed: int, splits: Splits
) -> tuple[list[float], list[float], MLP]:
    """Plain SGD with ``method`` on ``784-width-10`` from ``seed`` until ``budget`` forward passes
    are spent; the training loss on the evaluation images at every ``budget/curve_points``."""
    n_in = IMAGE_SIDE**2
    device = splits.train_x.device
    model = MLP(
        (n_in, width, N_CLASSES), config.activation, generator(seed, _ROLE_INIT, n_in, width)
    )
    model = model.to(device)
    noise = generator(seed, _ROLE_NOISE, n_in, width, METHODS.index(method))
    rule = make_rule(method, model, config, noise)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    order_generator = generator(seed, _ROLE_ORDER, width)
    order = torch.empty(0, dtype=torch.long)
    passes, steps, position = 0.0, 0, 0
    passes_axis = [0.0]
    losses = [mean_loss(model, splits.eval_x, splits.eval_y, config.loss)]
    interval = config.budget / config.curve_points
    if isinstance(rule, PerturbationRule):
        step_cost = 1 + rule.samples * rule.passes_per_draw()
    else:
        step_cost = config.backprop_pass_cost
    while passes + step_cost <= config.budget + 1e-9:
        if position + config.batch_size > len(order):
            order = torch.randperm(len(splits.train_y), generator=order_generator)
            position = 0
        batch = order[position : position + config.batch_size].to(device)
        position += config.batch_size
        optimizer.zero_grad(set_to_none=True)
        loss = rule.backward(splits.train_x[batch], splits.train_y[batch], config.loss)
        if not math.isfinite(float(loss)):
            raise DivergenceError(
                f"{method} training loss became {float(loss)} at width {width}, lr {lr} "
                f"(seed {seed})",
                hint="narrow the learning-rate grid with --set lrs=...",
            )
        optimizer.step()
        steps += 1
        passes = rule.forward_passes if isinstance(rule, PerturbationRule) else steps * step_cost
        if passes >= interval * len(passes_axis) - 1e-9:
            passes_axis.append(float(passes))
            losses.append(mean_loss(model, splits.eval_x, splits.eval_y, config.loss))
            if not math.isfinite(losses[-1]):
                raise DivergenceError(
                    f"{method} training loss became {losses[-1]} at width {width}, lr {lr} "
                    f"(seed {seed})",
                    hint="narrow the learning-rate grid with --set lrs=...",
                )
    return passes_axis, losses, model


def study_name(method: str, width: int) -> str:
    """One learning-rate study per method and training width: ``"node-perturbation@w32"``."""
    return f"{method}@w{width}"


def learning_rate_study(config: Config, method: str, width: int) -> Study:
    """Every value of the ``lrs`` grid once (an equal budget for every method and width)."""
    return Study(
        study_name(method, width),
        {"lr": Choice(config.lrs)},
        trials=len(config.lrs),
        sampler="grid",
        seed=config.tuning_seed,
        training_seed=config.tuning_seed,  # every rate from the same networks, batches, noise
    )


def validation_loss(config: Config, method: str, width: int, splits: Splits) -> Objective:
    """The objective of a learning-rate trial: train from ``tuning_seed`` (never a run's seed;
    the same networks, minibatches and noise for every value of the grid, a paired comparison)
    and score the mean loss on the validation images; a diverging run fails its trial."""

    def objective(params: dict, trial: Trial) -> float:
        model = train(config, method, width, params["lr"], trial.seed, splits)[2]
        return mean_loss(model, splits.val_x, splits.val_y, config.loss)

    return objective


def tuned_learning_rates(
    config: Config, splits: Splits, context: RunContext
) -> dict[tuple[str, int], float]:
    """The grid value with the lowest validation loss, per (method, width), through the one
    tuner (recorded in the store when the runner gives the context one; once per context)."""
    chosen = {}
    for width in config.train_widths:
        for method in config.methods:
            study = learning_rate_study(config, method, width)
            result = context.tune(config, study, validation_loss(config, method, width, splits))
            chosen[method, width] = result.params["lr"]
    return chosen


def studies(config: Config) -> list[Study]:
    """The learning-rate studies of a config, one per method and training width."""
    return [
        learning_rate_study(config, method, width)
        for width in config.train_widths
        for method in config.methods
    ] + [speed_study(config, *cell) for cell in speed_cells(config)]


def objective(config: Config, name: str, context: RunContext) -> Objective:
    """The objective of the study ``name`` (``Experiment.objective``: rebuilt anywhere), on one
    CPU thread as in :func:`tune`."""
    for width in config.train_widths:
        for method in config.methods:
            if study_name(method, width) == name:
                inner = validation_loss(config, method, width, make_splits(config, context))

                def one_thread(params: dict, trial: Trial, inner: Objective = inner) -> float:
                    with one_cpu_thread(context.device):
                        return inner(params, trial)

                return one_thread
    for cell in speed_cells(config):
        if speed_study_name(*cell) == name:
            return speed_objective(config, *cell)
    raise KeyError(f"{NAME} has no study {name!r}")


def tune(config: Config, context: RunContext) -> None:
    """Every learning-rate study of the config (the runner calls this before the seeds)."""
    with one_cpu_thread(context.device):
        tuned_learning_rates(config, make_splits(config, context), context)
        for cell in speed_cells(config):
            tuned_speed_rate(config, *cell, context)


# -- one seed -------------------------------------------------------------------------------------


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    """Measure V at every architecture, then train the three methods at ``train_widths``.

    Runs with one intra-op thread on the CPU (:func:`one_cpu_thread`): the ops are small and
    many, and the results do not depend on the machine's thread count.
    """
    with one_cpu_thread(context.device):
        return _run(config, seed, context)


def _run(config: Config, seed: int, context: RunContext) -> RunResult:
    splits = make_splits(config, context)
    archs = architectures(config)
    steps = len(archs) + len(config.train_widths) * len(config.methods)
    context.progress.start(steps, f"{NAME} {seed}")

    batch_generator = generator(seed, _ROLE_BATCH)
    batch = torch.randperm(len(splits.train_y), generator=batch_generator)[: config.batch_size]
    x_full = splits.train_x[batch.to(splits.train_x.device)]
    y = splits.train_y[batch.to(splits.train_y.device)]

    metrics: dict[Key, float] = {}
    log_v: dict[tuple[str, str | None], list[float]] = {
        (method, layer): [] for method in PERTURBATION_METHODS for layer in (None, *LAYERS)
    }
    for n_in, width in archs:
        values = relative_variances(config, seed, n_in, width, pool(x_full, n_in), y)
        for method, per_layer in values.items():
            for layer, value in per_layer.items():
                metrics[variance_key(method, n_in, width, layer)] = value
                log_v[method, layer].append(math.log(value))
        context.progress.advance()
    log_p = [math.log(synapses(n_in, width)) for n_in, width in archs]
    log_n = [math.log(neurons(width)) for _, width in archs]
    sweep = len(config.widths)
    for (method, layer), logs in log_v.items():
        alpha, beta = fit_exponents(logs, log_p, log_n)
        metrics[Key(method, "synapse_exponent", layer=layer)] = alpha
        metrics[Key(method, "neuron_exponent", layer=layer)] = beta
        if layer is None:
            metrics[Key(method, "slope_synapses")] = slope(logs[:sweep], log_p[:sweep])
            metrics[Key(method, "slope_neurons")] = slope(logs[:sweep], log_n[:sweep])

    linear = [(n, m) for n in config.linear_inputs for m in config.linear_outputs]
    log_linear: dict[str, list[float]] = {method: [] for method in PERTURBATION_METHODS}
    for n_in, n_out in linear:
        for method, value in linear_relative_variances(config, seed, n_in, n_out).items():
            metrics[linear_key(method, n_in, n_out)] = value
            log_linear[method].append(math.log(value))
    for method, logs in log_linear.items():
        alpha, beta = fit_exponents(
            logs, [math.log(n * m) for n, m in linear], [math.log(m) for _, m in linear]
        )
        metrics[Key(method, "synapse_exponent", setting="linear")] = alpha
        metrics[Key(method, "neuron_exponent", setting="linear")] = beta

    speed_rates = {}
    for method, n_in, n_out in speed_cells(config):
        lr = tuned_speed_rate(config, method, n_in, n_out, context)
        speed_rates[speed_study_name(method, n_in, n_out)] = {"lr": lr}
        (passes,) = linear_speed(config, method, n_in, n_out, [lr], seed)
        metrics[speed_key(method, n_in, n_out)] = passes
    for method in config.methods:
        cells = [(n, k) for n in config.speed_inputs for k in config.speed_outputs]
        passes = [metrics[speed_key(method, n, k)] for n, k in cells]
        alpha, beta = math.nan, math.nan  # a size that never learnt has no exponent
        if all(math.isfinite(v) for v in passes):
            alpha, beta = fit_exponents([math.log(v) for v in passes],
                                        [math.log(n) for n, _ in cells],
                                        [math.log(k) for _, k in cells])  # fmt: skip
        metrics[Key(method, "passes_exponent_inputs", setting="linear")] = alpha
        metrics[Key(method, "passes_exponent_outputs", setting="linear")] = beta

    rates = tuned_learning_rates(config, splits, context)
    curves: dict[Key, dict[str, list[float]]] = {}
    for width in config.train_widths:
        for method in config.methods:
            lr = rates[method, width]
            passes, losses, _ = train(config, method, width, lr, seed, splits)
            curves[Key(method, "train_loss", width=width)] = {"x": passes, "y": losses}
            metrics[Key(method, "train_loss", width=width)] = losses[-1]
            context.progress.advance(loss=losses[-1])
    hyperparameters = {
        study_name(method, width): {"lr": rates[method, width]}
        for width in config.train_widths
        for method in config.methods
    }
    hyperparameters.update(speed_rates)
    return RunResult(metrics, curves, "forward passes", hyperparameters)


# -- verdict and report ---------------------------------------------------------------------------


def verdict(records: Sequence[RunRecord]) -> Verdict:
    """Reads the default config's runs (at least ``MIN_SEEDS``); the criterion is in the module
    docstring: (i) linear V / theory within ``RATIO_TOLERANCE`` of 1 at every (N, M), (ii)
    per-layer exponents within ``EXPONENT_TOLERANCE`` of the claim, (iii) node perturbation's
    final training loss below weight perturbation's at every training width (paired 95 %
    interval), (iv) node perturbation faster than weight perturbation in the linear setting, the
    ratio growing as N, (v) serial perturbation's passes within ``SAME_RATE_FACTOR`` of weight
    perturbation's there. All five: holds; none: does not hold; otherwise partly holds."""
    default = Config()
    runs = default_runs(records, Config)
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")

    def summary(key: Key) -> Summary:
        return mean_ci([r.metrics[key] for r in runs])

    def near(value: Summary, target: float) -> bool:
        return abs(value.mean - target) <= EXPONENT_TOLERANCE

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    ratios = {
        method: [
            summary(linear_key(method, n, m)).mean / linear_theory(method, n, m)
            for n in default.linear_inputs
            for m in default.linear_outputs
        ]
        for method in PERTURBATION_METHODS
    }
    linear_holds = all(abs(r - 1) <= RATIO_TOLERANCE for rs in ratios.values() for r in rs)
    linear_part = "; ".join(
        f"{short} V/theory {min(ratios[method]):.2f}-{max(ratios[method]):.2f}"
        for short, method in (("node", NODE), ("weight", WEIGHT))
    )

    alpha_w = summary(Key(WEIGHT, "synapse_exponent"))
    beta_w = summary(Key(WEIGHT, "neuron_exponent"))
    layer_holds = near(alpha_w, 1) and near(beta_w, 0)
    layer_parts = [f"weight, all parameters ({alpha_w.mean:.2f}, {beta_w.mean:.2f})"]
    for layer in LAYERS:
        alpha_n = summary(Key(NODE, "synapse_exponent", layer=layer))
        beta_n = summary(Key(NODE, "neuron_exponent", layer=layer))
        layer_holds = layer_holds and near(alpha_n, 0) and near(beta_n, 1)
        layer_parts.append(f"node, {layer} layer ({alpha_n.mean:.2f}, {beta_n.mean:.2f})")

    learning_holds, loss_parts = True, []
    for width in default.train_widths:
        gap = mean_ci(
            [
                r.metrics[Key(NODE, "train_loss", width=width)]
                - r.metrics[Key(WEIGHT, "train_loss", width=width)]
                for r in runs
            ]
        )
        learning_holds = learning_holds and gap.mean + gap.ci95 < 0
        losses = ", ".join(
            f"{short} {summary(Key(method, 'train_loss', width=width)).mean:.3f}"
            for short, method in (("node", NODE), ("weight", WEIGHT), ("backprop", BACKPROP))
        )
        loss_parts.append(f"H={width}: {losses}")
    cells = [(n, k) for n in default.speed_inputs for k in default.speed_outputs]
    passes = {
        (method, n, k): summary(speed_key(method, n, k)).mean
        for method in (WEIGHT, NODE)
        for n, k in cells
    }
    node_faster = all(passes[NODE, n, k] < passes[WEIGHT, n, k] for n, k in cells)
    ratios = [passes[WEIGHT, n, k] / passes[NODE, n, k] for n, k in cells]
    ratio_exponent = math.nan
    if all(math.isfinite(r) and r > 0 for r in ratios):
        ratio_exponent, _ = fit_exponents(
            [math.log(r) for r in ratios], [math.log(n) for n, _ in cells],
            [math.log(k) for _, k in cells],
        )  # fmt: skip
    speed_holds = node_faster and abs(ratio_exponent - 1) <= EXPONENT_TOLERANCE
    serial_ratios = [summary(speed_key(SERIAL, n, k)).mean / passes[WEIGHT, n, k] for n, k in cells]
    serial_holds = all(1 / SAME_RATE_FACTOR <= r <= SAME_RATE_FACTOR for r in serial_ratios)
    held = (linear_holds, layer_holds, learning_holds, speed_holds, serial_holds)
    status = {len(held): "holds", 0: "does not hold"}.get(sum(held), "partly holds")
    headline = (
        f"linear student-teacher [within {RATIO_TOLERANCE:.0%} of M+1 and NM+1: "
        f"{yes(linear_holds)}]: {linear_part}; MLP exponents on (log synapses, "
        f"log neurons) [weight ~(1, 0), node per layer ~(0, 1): {yes(layer_holds)}]: "
        f"{'; '.join(layer_parts)}; training loss after {default.budget} forward passes "
        f"[node < weight: {yes(learning_holds)}]: {'; '.join(loss_parts)}; linear learning speed "
        f"[node faster at every (N, M), weight/node ~ N: {yes(speed_holds)}]: passes weight/node "
        f"{min(ratios):.1f}-{max(ratios):.1f}, exponent on N {ratio_exponent:.2f}; serial against "
        f"parallel weight perturbation [within {SAME_RATE_FACTOR:g}x at every (N, M): "
        f"{yes(serial_holds)}]: passes serial/weight {min(serial_ratios):.2f}-"
        f"{max(serial_ratios):.2f} (n={len(runs)})"
    )
    return Verdict(status, headline)


def plot_panel(key: Key) -> tuple[str, str]:
    """One panel per training width, one line per method."""
    return f"training loss, 784-{key.get('width')}-10", key.method


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    """Relative variance V per rule and architecture (with P and N), one table per config."""
    result = []
    for digest, runs in finished_by_config(records).items():
        config = runs[0].config
        kind = "quick" if runs[0].quick else "full"
        archs = [(IMAGE_SIDE**2, w) for w in config["widths"]] + [
            (s**2, config["input_sweep_width"]) for s in config["input_sides"]
        ]
        rows = []
        for n_in, width in archs:
            cells = [f"{n_in}-{width}-10", str(synapses(n_in, width)), str(neurons(width))]
            for method in PERTURBATION_METHODS:
                key = variance_key(method, n_in, width)
                values = [r.metrics[key] for r in runs if key in r.metrics]
                cells.append(mean_ci(values).format(digits=1).rsplit(" (n=", 1)[0])
            rows.append(cells)
        result.append(
            ReportTable(
                f"Relative variance |g_hat - g|^2 / |g|^2 of one estimate, {kind} config "
                f"{digest[:8]}, n={len(runs)} seeds",
                ["network", "synapses P", "neurons N", WEIGHT, NODE],
                rows,
            )
        )
    return result


EXPERIMENT = Experiment(
    name=NAME,
    paper="Marblestone, Wayne & Kording 2016 (sec. 2); Werfel, Xie & Seung 2005",
    claim=(
        "Weight perturbation's gradient variance grows with the number of synapses, node "
        "perturbation's with the number of neurons; at equal forward passes node perturbation "
        "learns faster than weight perturbation, and serial perturbation (one weight at a time) "
        "about as fast as parallel weight perturbation."
    ),
    config_cls=Config,
    run=run,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS}",
    plot_panel=plot_panel,
    tables=tables,
    studies=studies,
    tune=tune,
    objective=objective,
)
