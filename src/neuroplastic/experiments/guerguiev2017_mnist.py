"""guerguiev2017-mnist: segregated dendrites learn deep representations (Guerguiev et al. 2017).

Sheet: shared/papers/guerguiev2017-segregated-dendrites.md. The claim: spiking multi-compartment
neurons whose feedback arrives on a separate apical dendrite, through fixed random weights, assign
credit to hidden layers: on MNIST a hidden layer beats none and two beat one (paper, after 60
epochs: 8.3 %, 4.1 %, 3.2 % test error; sparse feedback 3.7 %, symmetric feedback 3.6 %). The
paper's "n = 20" are 20 repeated tests of *one* trained network per architecture (Fig. 6B
caption), not 20 trained networks: its spreads measure the test's spike noise only, and there is
no spread over training seeds to compare with ours.

Protocol:

- Networks (``networks``): ``0-hidden`` 784-10, ``1-hidden`` 784-500-10, ``2-hidden``
  784-500-100-10 (direct random feedback from the output to each hidden layer), and
  ``1-hidden-sparse`` / ``1-hidden-symmetric`` feedback variants. The model, Table 1's parameters
  and the paper's learning rates (0.19; 0.21/0.21; 0.23/0.23/0.12) are in
  :mod:`neuroplastic.models.segregated_dendrites` and :mod:`neuroplastic.credit.plateau`; nothing
  of the dendritic networks is tuned here.
- Online training, one image at a time: a forward phase and a target phase per image, each 50 steps
  plus a Wald(2, 1) extra. The phase lengths are part of the task (the same sequence for every
  seed); the image order, initial weights and spikes come from the seed. The seeds of one network
  type run as one batch of replicas, each with its own random streams.
- Spikes (``random_stream``, ``backend``): by default every uniform behind a spike is a hash of
  its place (:mod:`neuroplastic.kernels.counter_random`): a network's key is (its seed, a number
  derived from the network's name), a training image's index the number of images seen before
  it (phases ``FORWARD``, ``TARGET``), test image ``i`` of the test after ``s`` training images
  example ``s * N_test + i`` (phase ``TEST``). A seed's results do not depend on which seeds
  share its batch, and the stream has no state to checkpoint. ``random_stream=torch``: a torch
  generator per seed and network, as before the option (with ``backend=torch``, bit for bit).
  ``backend=auto`` runs the Numba kernels on the CPU when installed (on the counter stream a
  run of training images in one compiled call), and on a GPU the replica path
  (:mod:`neuroplastic.kernels.dendrite_replicas`: the seeds as one batch in a fixed-shape step,
  replayed as a CUDA graph); PyTorch otherwise. All agree to rounding.
- Dynamics (``psp_kernel``, ``integration``): the authors' code by default (a PSP kernel cut
  after 10 taps, about half of its mass; Euler steps of the somatic ODEs, whose target-phase
  transient alternates in sign); ``psp_kernel=paper`` and ``integration=exponential`` give the
  paper's equations (an untruncated kernel; the exact solution of each step), as an ablation.
  See :mod:`neuroplastic.models.segregated_dendrites`.
- Budget: ``epochs`` passes over ``examples_per_epoch`` training images (the paper: 60 x 60,000).
  Test error on the first ``test_examples`` test images (default all 10,000, as the authors'
  code tests; a 250-step forward phase per image from a silent network) every ``eval_every``
  training images within an epoch and at its end; after every epoch also the training error of
  the forward phases and the angle between the first hidden layer's plateau update and what
  backprop would send it through the same averages (mean over the epoch). Curves are plotted
  against training images seen; the metrics are the last epoch's end-of-epoch values, and
  ``test_error_epoch_mean`` the mean of the last epoch's test measurements (less snapshot
  noise). A measurement's test spikes depend only on seed, network and training images seen,
  so it does not depend on how many were taken before it. A checkpoint is written after every
  epoch (keyed by what changes results: not ``backend``); an interrupted run resumes from it,
  redoing the interrupted epoch, its within-epoch measurements included (recomputed
  identically, recorded once).
- Baselines (``baselines``): the same architectures as ``1-hidden`` and ``2-hidden`` (sigmoid
  units) trained by backprop and by feedback alignment, SGD on minibatches of ``baseline_batch``
  (default 10; 1 is online), with the same number of
  training images. Their one free parameter, the learning rate, is picked from ``baseline_lrs``
  by the error on a validation split carved from the training images (a diverged trial scores
  1.0; ties go to the rate listed first), one grid study per baseline through the one tuner
  (:mod:`neuroplastic.tuning`: run in the driver before the seeds, trials recorded, the chosen
  rate recorded with every seed); the dendritic networks get the learning rates the authors
  tuned.

Verdict: read from the recorded configuration with the authors' dynamics (the default
``psp_kernel`` and ``integration``) and the most training images among those that ran all three
depths for at least ``MIN_SEEDS`` seeds (not ``--quick``). The differences between depths are
paired: seed ``s`` trains every network on the same image order and phase lengths, so for each
seed ``d_01 = err(0-hidden) - err(1-hidden)`` and ``d_12 = err(1-hidden) - err(2-hidden)`` (end of
the last epoch), each reported as a mean with a 95 % Student-t interval over seeds
(:func:`neuroplastic.stats.mean_ci`). The claim holds when both mean differences are positive,
i.e. the mean test errors order 0 > 1 > 2 hidden layers; the intervals say whether the seeds run
resolve that ordering.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from neuroplastic.credit import RULES
from neuroplastic.credit.plateau import learn_examples
from neuroplastic.errors import ConfigError, DivergenceError
from neuroplastic.experiments.base import (
    Experiment,
    ReportTable,
    RunContext,
    RunResult,
    Verdict,
    chosen_hyperparameter,
    finished_by_config,
)
from neuroplastic.kernels.counter_random import CounterStream
from neuroplastic.kernels.dendrite_replicas import ReplicaTrainer
from neuroplastic.metrics import error_rate
from neuroplastic.models.mlp import MLP
from neuroplastic.models.segregated_dendrites import (
    DendriticParams,
    SegregatedDendriteNet,
    phase_lengths,
    predict,
)
from neuroplastic.results import Key
from neuroplastic.seeding import derive_seed, generator
from neuroplastic.stats import Summary, mean_ci
from neuroplastic.store import RunRecord, config_hash
from neuroplastic.tasks.splits import validation_split
from neuroplastic.tuning import Choice, Objective, Study, Trial, TrialOutcome

NAME = "guerguiev2017-mnist"
MIN_SEEDS = 3

NETWORKS: dict[str, tuple[tuple[int, ...], str, tuple[float, ...]]] = {
    "0-hidden": ((784, 10), "random", (0.19,)),
    "1-hidden": ((784, 500, 10), "random", (0.21, 0.21)),
    "2-hidden": ((784, 500, 100, 10), "random", (0.23, 0.23, 0.12)),
    "1-hidden-sparse": ((784, 500, 10), "sparse", (0.21, 0.21)),
    "1-hidden-symmetric": ((784, 500, 10), "symmetric", (0.21, 0.21)),
}
"""Sizes, feedback and per-layer learning rates of the paper's networks."""

PAPER_ERROR = {
    "0-hidden": 8.3,
    "1-hidden": 4.1,
    "2-hidden": 3.2,
    "1-hidden-sparse": 3.7,
    "1-hidden-symmetric": 3.6,
}
"""Test error in per cent after 60 epochs, from the paper's table: the mean of 20 repeated tests
of one trained network (Fig. 6B caption), not of 20 trained networks."""

BASELINES = {
    "1-hidden-backprop": ("1-hidden", "backprop"),
    "1-hidden-fa": ("1-hidden", "fa"),
    "2-hidden-backprop": ("2-hidden", "backprop"),
    "2-hidden-fa": ("2-hidden", "fa"),
}


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    """Images: ``mnist`` or the bundled ``mnist-mini``."""
    networks: tuple[str, ...] = tuple(NETWORKS)
    """Segregated-dendrite networks to train (keys of ``NETWORKS``)."""
    baselines: tuple[str, ...] = tuple(BASELINES)
    """Backprop / feedback-alignment networks of the same architectures (keys of ``BASELINES``)."""
    epochs: int = 1
    """Passes over the training images (the paper: 60; one pass of 60,000 images costs about
    5 ms per network and image on one CPU core here)."""
    examples_per_epoch: int = 20_000
    """Training images per epoch (the first ones of each epoch's shuffled order; the paper:
    60,000)."""
    test_examples: int = 10_000
    """Test images scored at every measurement (the first ones of the test set; the default is
    all of MNIST's, as the authors' code tests; its first 5,000 are the cleaner half)."""
    eval_every: int = 5_000
    """Training images between two measurements of the test error within an epoch (0: only at
    the end of each epoch). Each costs a 250-step test of ``test_examples`` images: with 10,000
    of them roughly the time of 10,000 training images (the docs' speed table), so testing every
    5,000 images makes an epoch of 60,000 about 2.5 times as long as testing at its end only."""
    psp_kernel: Literal["authors", "paper"] = "authors"
    """The dendritic networks' PSP kernel: ``authors`` (10 taps, about half of its mass, as the
    authors' code) or ``paper`` (untruncated: the paper's equation)."""
    integration: Literal["euler", "exponential"] = "euler"
    """How the dendritic networks' somatic ODEs are stepped: ``euler`` (the authors' code; its
    target-phase transient alternates in sign) or ``exponential`` (exact over a step)."""
    baseline_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
    """Learning rates tried for each baseline (plain SGD on minibatches of ``baseline_batch``).
    Over 10 epochs of 60,000 images backprop's best rate was the largest of {0.01, ..., 0.3},
    and feedback alignment's the largest of {0.01, ..., 3} and then of {0.01, ..., 10} (its
    fixed feedback scales the hidden layers' errors down), so the grid reaches 30."""
    validation_examples: int = 10_000
    """Training images held out to pick the baselines' learning rate."""
    baseline_batch: int = 10
    """Images per SGD step of the baselines (1 is online but costs about 2 ms a step here; the
    budget in images is the same either way)."""
    baseline_loss: str = "cross_entropy"
    """Cost of the baselines: ``cross_entropy`` or ``square``."""
    chunk: int = 0
    """Test images per replica simulated at once (0: a size chosen for the CPU cache; larger
    values suit a GPU). With ``random_stream=torch`` it changes the test spikes; with
    ``counter`` it does not."""
    random_stream: Literal["counter", "torch"] = "counter"
    """Where the dendritic networks' spikes come from: ``counter`` (every uniform a hash of the
    seed, the network, the image's index and its place: results do not depend on how seeds are
    batched, and the compiled path draws them inside its loop) or ``torch`` (stateful torch
    generators, one per seed and network: the protocol of runs recorded before this option)."""
    backend: Literal["auto", "torch", "numba", "replicas"] = "auto"
    """How the dendritic networks' phases are simulated: ``numba`` (compiled, on the CPU; the
    ``fast`` extra), ``torch``, ``replicas`` (training in the fixed-shape step of
    :mod:`neuroplastic.kernels.dendrite_replicas`, a CUDA graph on a GPU; needs
    ``random_stream=counter``), or ``auto`` (Numba on the CPU when it is installed, ``replicas``
    on a CUDA device with the counter stream, PyTorch otherwise). The results agree up to
    rounding; ``random_stream=torch`` with ``backend=torch`` reproduces runs recorded before
    these options bit for bit."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.networks) - set(NETWORKS))
        if unknown:
            raise ValueError(f"unknown networks {unknown}; choose from {sorted(NETWORKS)}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; choose from {sorted(BASELINES)}")
        for name in ("epochs", "examples_per_epoch", "test_examples", "baseline_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.random_stream not in ("counter", "torch"):
            raise ValueError(f"random_stream must be counter or torch, got {self.random_stream!r}")
        if self.backend not in ("auto", "torch", "numba", "replicas"):
            raise ValueError(
                f"backend must be auto, torch, numba or replicas, got {self.backend!r}"
            )
        if self.backend == "replicas" and self.random_stream != "counter":
            raise ValueError(
                "backend=replicas draws from the counter stream: set random_stream=counter"
            )
        if self.chunk < 0:
            raise ValueError(f"chunk must be 0 (automatic) or positive, got {self.chunk}")
        if self.eval_every < 0:
            raise ValueError(
                f"eval_every must be 0 (end of epoch only) or positive, got {self.eval_every}"
            )
        DendriticParams(psp_kernel=self.psp_kernel, integration=self.integration)  # validates
        if not self.baseline_lrs or min(self.baseline_lrs) <= 0:
            raise ValueError(f"baseline_lrs must be positive, got {self.baseline_lrs}")
        if len(set(self.baseline_lrs)) != len(self.baseline_lrs):
            raise ValueError(f"baseline_lrs must be distinct, got {self.baseline_lrs}")
        if self.baseline_loss not in ("cross_entropy", "square"):
            raise ValueError(
                f"baseline_loss must be cross_entropy or square, got {self.baseline_loss!r}"
            )


def quick(config: Config) -> Config:
    """3,000 training images, 1,000 test images, no hidden layer against one: learns visibly."""
    return dataclasses.replace(
        config,
        networks=("0-hidden", "1-hidden"),
        baselines=("1-hidden-backprop", "1-hidden-fa"),
        epochs=1,
        examples_per_epoch=3000,
        test_examples=1000,
        validation_examples=1000,
        baseline_lrs=(0.03, 0.3),
    )


# --------------------------------------------------------------------------- dendritic networks


CHECKPOINT_FIELDS = (
    "dataset", "examples_per_epoch", "test_examples", "chunk", "eval_every", "psp_kernel",
    "integration", "random_stream",
)  # fmt: skip
"""The config fields a dendritic network's checkpoint is keyed by: those that change its
training or its curves. ``backend`` is left out: it changes only rounding (as the machine or
the thread count may), so an interrupted run may resume under another backend, on a machine
without Numba for instance (from then on it follows the uninterrupted run only statistically:
a potential rounded otherwise can move a spike)."""


def _checkpoint_path(
    context: RunContext, config: Config, network: str, seeds: Sequence[int]
) -> Path | None:
    if context.checkpoint_dir is None:
        return None
    # only what shapes the dendritic networks' training and curves: baseline settings and the
    # number of epochs stay out, so a run can be extended with more epochs from its last checkpoint
    shaping = {k: getattr(config, k) for k in CHECKPOINT_FIELDS}
    digest = config_hash(shaping)[:12]
    return (
        context.checkpoint_dir / f"{NAME}-{digest}-{network}-seeds-{'-'.join(map(str, seeds))}.pt"
    )


def _spike_stream(network: str, seeds: Sequence[int], example: int) -> CounterStream:
    """The counter-based stream of every seed's ``network`` (``random_stream=counter``), at
    ``example``: replica ``r`` keyed by (its seed, the network), the seed's network named by a
    number derived from its name, not by its place in a batch (so a seed's spikes are the same
    whichever seeds share its batch)."""
    return CounterStream.of(
        [derive_seed(NAME, "spikes", s) for s in seeds],
        [derive_seed(NAME, "network", network)] * len(seeds),
        example,
    )


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Degrees between the rows of a and b over their last dimension, (R,)."""
    cosine = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))


def _test_error(
    config: Config, net: SegregatedDendriteNet, network: str, seeds: Sequence[int],
    images_seen: int, context: RunContext,
) -> torch.Tensor:  # fmt: skip
    """Test error of every replica, (R,), on the first ``test_examples`` test images.

    The test spikes depend on the seed, the network and ``images_seen`` only: a measurement does
    not depend on how many were taken before it (``eval_every``), and an epoch redone after a
    resume measures exactly what it measured the first time. With ``random_stream=counter``
    test image ``i`` takes example ``images_seen * N + i`` (``N`` the size of the test set) of
    the seeds' streams, phase ``TEST``: no two measurements share an example, and the phase
    keeps them apart from the training draws (``FORWARD``, ``TARGET``) of the same index. With
    ``torch`` they come from a generator seeded by the same four."""
    data = context.load_dataset(config.dataset)
    if config.random_stream == "counter":
        spikes = _spike_stream(network, seeds, images_seen * len(data.test_y))
    else:
        spikes = [generator(NAME, "test", network, seed, images_seen) for seed in seeds]
    test_x = data.test_x[: config.test_examples]
    # a test phase is a batch of images, which the vectorised torch path already runs well
    backend = "torch" if config.backend == "replicas" else config.backend
    predicted = predict(net, test_x, spikes, chunk=config.chunk, backend=backend)
    return (predicted != data.test_y[: config.test_examples]).float().mean(dim=1)


def _append(curve: dict[str, list[float]], images_seen: int, value: float) -> None:
    curve["x"].append(images_seen)
    curve["y"].append(value)


TRAINING_RUN = 500
"""Most training images per ``learn_examples`` call (the progress bar moves after each)."""


def train_dendritic(
    config: Config, network: str, seeds: Sequence[int], context: RunContext
) -> list[dict[str, dict[str, list[float]]]]:
    """Train one network type for every seed (replicas of one batch).

    Returns per seed ``{name: {"x": training images seen, "y": values}}``: ``test_error`` every
    ``eval_every`` images within each epoch and at its end, ``train_error`` and (with hidden
    layers) ``hidden_angle`` at the end of each epoch."""
    data = context.load_dataset(config.dataset)
    device = data.train_x.device
    sizes, feedback, learning_rates = NETWORKS[network]
    params = DendriticParams(psp_kernel=config.psp_kernel, integration=config.integration)
    replicas = len(seeds)
    net = SegregatedDendriteNet(
        sizes, replicas, feedback, params, [generator(NAME, "init", network, s) for s in seeds]
    ).to(device)
    # the spikes: a counter-based stream, whose position is the number of images seen (nothing
    # to save in a checkpoint), or a torch generator per seed
    counter = _spike_stream(network, seeds, 0) if config.random_stream == "counter" else None
    spikes = [] if counter is not None else [generator(NAME, "spikes", network, s) for s in seeds]
    orders = [generator(NAME, "order", s) for s in seeds]
    names = ["test_error", "train_error"] + (["hidden_angle"] if net.n_hidden else [])
    curves = [{name: {"x": [], "y": []} for name in names} for _ in seeds]
    state = net.initial_state()
    first_epoch = 0

    checkpoint = _checkpoint_path(context, config, network, seeds)
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        net.load_state_dict(saved["net"])
        state = type(state)(*saved["state"])
        for gen, value in zip(spikes + orders, saved["generators"], strict=True):
            gen.set_state(value)
        # the curves up to the end of the saved epoch: the interrupted epoch, redone below,
        # appends its own points once
        curves, first_epoch = saved["curves"], saved["epoch"]
        if first_epoch > config.epochs:
            raise ConfigError(
                f"{checkpoint} holds {first_epoch} epochs, more than the {config.epochs} asked for",
                "ask for at least as many epochs, or delete the checkpoint to start over",
            )

    n = min(config.examples_per_epoch, len(data.train_y))
    replicated = counter is not None and (
        config.backend == "replicas" or (config.backend == "auto" and device.type == "cuda")
    )
    trainer = ReplicaTrainer(net, learning_rates) if replicated else None
    for epoch in range(first_epoch, config.epochs):
        lengths = phase_lengths(params, generator(NAME, "phases", epoch), n).tolist()
        order = torch.stack(
            [torch.randperm(len(data.train_y), generator=g)[:n] for g in orders]
        ).to(device)
        correct = torch.zeros(replicas, device=device)
        angles = torch.zeros(replicas, device=device)
        context.progress.start(n, f"{network} epoch {epoch + 1}/{config.epochs}")
        step = 0
        while step < n:
            # a run of examples up to the next test (at most TRAINING_RUN): one call of
            # ``learn_examples``, compiled whole where ``learn_example`` would be per example
            stop = min(n, step + TRAINING_RUN)
            if config.eval_every:
                stop = min(stop, (step // config.eval_every + 1) * config.eval_every)
            index = order[:, step:stop]  # (R, C)
            rates = params.phi_max * data.train_x[index]  # (R, C, 784)
            labels = data.train_y[index]  # (R, C)
            # the counter stream's example: the images seen before this one
            stream = spikes if counter is None else counter._replace(example=epoch * n + step)
            if trainer is not None:
                state, signals = trainer.learn_examples(
                    state, rates, labels, stream, lengths[step:stop]
                )
            else:
                state, signals = learn_examples(
                    net, state, rates, labels, stream, lengths[step:stop], learning_rates,
                    config.backend,
                )  # fmt: skip
            correct += (signals.output_soma.argmax(-1) == labels).sum(1)
            if net.n_hidden:
                # each update against backprop's through the same averages and the updated
                # weights above (the authors' code also reads them after their update)
                angles += _angle(signals.plateau_errors[0], signals.backprop_errors[0]).sum(1)
            context.progress.advance(stop - step)
            step = stop
            if config.eval_every and step % config.eval_every == 0 and step < n:
                images_seen = epoch * n + step
                test_error = _test_error(config, net, network, seeds, images_seen, context)
                for r in range(replicas):
                    _append(curves[r]["test_error"], images_seen, test_error[r].item())
        if not all(torch.isfinite(w).all() for w in net.weights):
            raise DivergenceError(
                f"{network}: weights became non-finite in epoch {epoch + 1}",
                "the paper's learning rates are calibrated for Table 1's parameters; restore them",
            )
        images_seen = (epoch + 1) * n
        test_error = _test_error(config, net, network, seeds, images_seen, context)
        for r in range(replicas):
            _append(curves[r]["test_error"], images_seen, test_error[r].item())
            _append(curves[r]["train_error"], images_seen, 1.0 - correct[r].item() / n)
            if net.n_hidden:
                _append(curves[r]["hidden_angle"], images_seen, angles[r].item() / n)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            saved = {
                "net": net.state_dict(),
                "state": tuple(state),
                "curves": curves,
                "epoch": epoch + 1,
                "generators": [g.get_state() for g in spikes + orders],
            }
            torch.save(saved, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
    return curves


# --------------------------------------------------------------------------- baselines


def train_baseline(
    config: Config, baseline: str, lr: float, seed: int, train_index: torch.Tensor,
    test_x: torch.Tensor, test_y: torch.Tensor, context: RunContext, epochs: int | None = None,
) -> list[float]:  # fmt: skip
    """SGD of a sigmoid MLP with the rule ``BASELINES[baseline]`` on minibatches of
    ``baseline_batch`` images (1: online, like the dendritic networks); test error per epoch."""
    data = context.load_dataset(config.dataset)
    network, rule_name = BASELINES[baseline]
    sizes = NETWORKS[network][0]
    model = MLP(sizes, "sigmoid", generator(NAME, baseline, "init", seed)).to(data.train_x.device)
    rule = RULES[rule_name](model, generator=generator(NAME, baseline, "rule", seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    order_generator = generator(NAME, "order", seed)
    n = min(config.examples_per_epoch, len(train_index))
    errors = []
    for _ in range(epochs or config.epochs):
        order = train_index[torch.randperm(len(train_index), generator=order_generator)[:n]]
        for batch in order.to(data.train_x.device).split(config.baseline_batch):
            optimizer.zero_grad(set_to_none=True)
            loss = rule.backward(data.train_x[batch], data.train_y[batch], config.baseline_loss)
            optimizer.step()
        errors.append(
            float("nan")
            if not math.isfinite(float(loss))
            else error_rate(rule.predict, test_x, test_y)
        )
    return errors


def learning_rate_study(config: Config, baseline: str) -> Study:
    """Every rate of ``baseline_lrs`` once (the grid's visiting order is shuffled; neither the
    trials' training nor the winner depend on it, see :func:`validation_error`)."""
    lrs = config.baseline_lrs
    return Study(
        baseline, {"lr": Choice(lrs)}, trials=len(lrs), sampler="grid", seed=0,
        training_seed=derive_seed("tuning", 0),  # every rate from the same network and order
    )  # fmt: skip


def studies(config: Config) -> list[Study]:
    """The learning-rate studies of a config, one per baseline."""
    return [learning_rate_study(config, baseline) for baseline in config.baselines]


def score(val_errors: Sequence[float]) -> float:
    """A trial's validation error: the last epoch's, 1.0 if the run diverged."""
    return 1.0 if math.isnan(val_errors[-1]) else val_errors[-1]


def validation_error(config: Config, baseline: str, context: RunContext) -> Objective:
    """The objective of a learning-rate trial: train the baseline from ``trial.seed``
    (``derive_seed("tuning", 0)``, the same for every rate) on the training images outside a
    validation split of ``validation_examples`` (at most half of them), and score the final
    validation error, 1.0 if the run diverged.

    The score adds ``i * 2**-10 / (n * len(baseline_lrs))`` (``i`` the rate's position in
    ``baseline_lrs``, ``n`` validation images), far less than the ``1 / n`` between two
    different errors: equal errors go to the rate listed first whatever order the grid visits
    them in. The error itself is the trial's ``val_error`` curve.
    """
    data = context.load_dataset(config.dataset)
    n_validation = min(config.validation_examples, len(data.train_y) // 2)
    train_index, validation_index = validation_split(len(data.train_y), n_validation)
    x, y = (
        data.train_x[validation_index.to(data.train_x.device)],
        data.train_y[validation_index.to(data.train_x.device)],
    )
    lrs = list(config.baseline_lrs)
    tie_break = 2.0**-10 / (max(len(y), 1) * len(lrs))

    def objective(params: dict, trial: Trial) -> TrialOutcome:
        lr = params["lr"]
        errors = train_baseline(config, baseline, lr, trial.seed, train_index, x, y, context)
        curves = {"val_error": {"x": list(range(1, len(errors) + 1)), "y": errors}}
        return TrialOutcome(score(errors) + lrs.index(lr) * tie_break, curves)

    return objective


def tuned_baseline_lr(config: Config, baseline: str, context: RunContext) -> float:
    """The rate of ``baseline_lrs`` with the lowest validation error (``context.tune``: once per
    context, trials recorded where the runner says)."""
    study = learning_rate_study(config, baseline)
    return context.tune(config, study, validation_error(config, baseline, context)).params["lr"]


def objective(config: Config, name: str, context: RunContext) -> Objective:
    """The objective of baseline ``name``'s study (``Experiment.objective``: rebuilt
    anywhere)."""
    if name not in config.baselines:
        raise KeyError(f"{NAME} has no study {name!r}")
    return validation_error(config, name, context)


def tune(config: Config, context: RunContext) -> None:
    """Every baseline's learning-rate study (the runner calls this in the driver before the
    seeds)."""
    for baseline in config.baselines:
        tuned_baseline_lr(config, baseline, context)


# --------------------------------------------------------------------------- the experiment


def run_batch(config: Config, seeds: Sequence[int], context: RunContext) -> list[RunResult]:
    """Every dendritic network (seeds as replicas of one batch), then every baseline."""
    data = context.load_dataset(config.dataset)
    metrics: list[dict[Key, float]] = [{} for _ in seeds]
    curves: list[dict[Key, dict[str, list[float]]]] = [{} for _ in seeds]
    n = min(config.examples_per_epoch, len(data.train_y))
    epoch_ends = [epoch * n for epoch in range(1, config.epochs + 1)]  # training images seen
    for network in config.networks:
        for r, network_curves in enumerate(train_dendritic(config, network, seeds, context)):
            for name, curve in network_curves.items():
                curves[r][Key(network, name)] = curve
                metrics[r][Key(network, name)] = curve["y"][-1]  # at the end of the last epoch
            # every test of the last epoch, within it and at its end: less snapshot noise
            test = network_curves["test_error"]
            last_epoch = [
                y for x, y in zip(test["x"], test["y"], strict=True) if x > epoch_ends[-1] - n
            ]
            metrics[r][Key(network, "test_error_epoch_mean")] = sum(last_epoch) / len(last_epoch)
    test_x, test_y = data.test_x[: config.test_examples], data.test_y[: config.test_examples]
    all_train = torch.arange(len(data.train_y))
    hyperparameters: dict[str, dict[str, float]] = {}
    for baseline in config.baselines:
        lr = tuned_baseline_lr(config, baseline, context)
        hyperparameters[baseline] = {"lr": lr}
        context.progress.start(len(seeds), f"{baseline} (lr {lr:g})")
        for r, seed in enumerate(seeds):
            errors = train_baseline(config, baseline, lr, seed, all_train, test_x, test_y, context)
            curves[r][Key(baseline, "test_error")] = {"x": epoch_ends, "y": errors}
            metrics[r][Key(baseline, "test_error")] = errors[-1]
            context.progress.advance(1)
    # the dendritic networks' checkpoints stay: a later run with more epochs resumes from them
    return [
        RunResult(m, c, "training images", {name: dict(p) for name, p in hyperparameters.items()})
        for m, c in zip(metrics, curves, strict=True)
    ]


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    return run_batch(config, [seed], context)[0]


def _images(config: dict) -> int:
    return config["epochs"] * config["examples_per_epoch"]


DEPTHS = ("0-hidden", "1-hidden", "2-hidden")
DEPTH_PAIRS = (("0-hidden", "1-hidden"), ("1-hidden", "2-hidden"))
"""The differences the verdict reads: each depth against the next."""

PAIRS = (
    ("0-hidden", "1-hidden"),
    ("1-hidden", "2-hidden"),
    ("0-hidden", "2-hidden"),
    ("1-hidden", "1-hidden-sparse"),
    ("1-hidden", "1-hidden-symmetric"),
)
"""Networks compared seed by seed: (a, b) reports err(a) - err(b), positive when b is better."""


def paired_difference(runs: Sequence[RunRecord], a: str, b: str) -> Summary:
    """Mean and 95 % interval over seeds of ``err(a) - err(b)``, each seed's two networks taken
    from its own run: trained on the same image order and phase lengths, so the seed's share of
    the noise cancels (a paired comparison)."""
    return mean_ci(r.metrics[Key(a, "test_error")] - r.metrics[Key(b, "test_error")] for r in runs)


def _percent(summary: Summary) -> str:
    """``12.65 ± 1.52 %``: a mean and its interval in per cent, without the n."""
    return summary.format(scale=100, unit=" %").rsplit(" (n=", 1)[0]


def _authors_dynamics(config: dict) -> bool:
    """Whether a recorded config ran the authors' dynamics (configs from before the option
    existed did)."""
    return (
        config.get("psp_kernel", "authors") == "authors"
        and config.get("integration", "euler") == "euler"
    )


def epoch_errors(runs: Sequence[RunRecord], network: str) -> list[Summary]:
    """Mean and 95 % interval over seeds of ``network``'s test error at the end of each epoch
    (from the recorded curves): how fast it learns."""
    per_epoch = []
    n = runs[0].config["examples_per_epoch"]
    for epoch in range(1, runs[0].config["epochs"] + 1):
        values = []
        for run in runs:
            curve = run.curves.get(Key(network, "test_error"), {"x": [], "y": []})
            values += [y for x, y in zip(curve["x"], curve["y"], strict=True) if x == epoch * n]
        if len(values) == len(runs):
            per_epoch.append(mean_ci(values))
    return per_epoch


def verdict(records: Sequence[RunRecord]) -> Verdict:
    """Holds when the mean paired differences err(0-hidden) - err(1-hidden) and err(1-hidden) -
    err(2-hidden) are both positive (the mean test errors order 0 > 1 > 2 hidden layers); the
    headline gives both differences with their 95 % intervals over seeds.

    The budget is a knob here (the paper's 60 epochs take days on a CPU), so the verdict reads the
    recorded configuration with the authors' dynamics and the most training images among those
    that ran all three depths for at least 3 seeds (not --quick), and its headline says what that
    budget was."""
    candidates = [
        runs
        for runs in finished_by_config(records).values()
        if not runs[0].quick
        and _authors_dynamics(runs[0].config)
        and set(DEPTHS) <= set(runs[0].config["networks"])
        and len(runs) >= MIN_SEEDS
    ]
    if not candidates:
        return Verdict("not run", f"no config with {', '.join(DEPTHS)} and {MIN_SEEDS} seeds")
    runs = max(candidates, key=lambda group: (_images(group[0].config), len(group)))
    errors = {n: mean_ci([r.metrics[Key(n, "test_error")] for r in runs]) for n in DEPTHS}
    gains = [paired_difference(runs, a, b) for a, b in DEPTH_PAIRS]
    ordered = all(gain.mean > 0 for gain in gains)
    config = runs[0].config
    headline = ", ".join(f"{n} {_percent(errors[n])}" for n in DEPTHS)
    paper = " / ".join(f"{PAPER_ERROR[n]}" for n in DEPTHS)
    headline += f" (paper {paper} %, one network tested 20 times); paired per seed, " + ", ".join(
        f"{a[0]} minus {b[0]} hidden {_percent(gain)}"
        for (a, b), gain in zip(DEPTH_PAIRS, gains, strict=True)
    )
    headline += (
        f" (n={len(runs)} seeds); after {config['epochs']} x {config['examples_per_epoch']:,}"
        f" training images, {config['test_examples']:,} test images"
        " (paper: 60 x 60,000, 10,000)"
    )
    if config["epochs"] > 1:  # how fast each depth learns: the paper describes it in words
        first = {n: epoch_errors(runs, n)[:1] for n in DEPTHS}
        if all(first.values()):
            headline += "; after the first epoch " + " / ".join(
                f"{first[n][0].mean * 100:.1f}" for n in DEPTHS
            ) + " %"
    return Verdict("holds" if ordered else "does not hold", headline)


DYNAMICS = ("psp_kernel", "integration")
"""The config fields of the ablation of the paper's dynamics."""


def _dynamics(config: dict) -> tuple[str, str]:
    return config.get("psp_kernel", "authors"), config.get("integration", "euler")


def dynamics_ablation(records: Sequence[RunRecord]) -> list[ReportTable]:
    """The ablation of the paper's dynamics: among finished configs that differ only in
    :data:`DYNAMICS` (and baselines, which the dendritic networks do not see), one table per
    budget that has the authors' dynamics and another: each setting's test error per depth and
    its paired difference with the authors' dynamics (the same seed: the same images, phase
    lengths and initial weights; the counter stream makes a seed's run independent of its batch).

    Its criterion, fixed before it ran (docs/experiments/guerguiev2017-mnist.md): a difference
    whose 95 % interval excludes 0 is an effect of the dynamics; and whether each setting orders
    the depths 0 > 1 > 2 (both paired differences between depths positive)."""
    ignored = {*DYNAMICS, "baselines", "baseline_lrs", "backend"}
    budgets: dict[str, dict[tuple[str, str], list[RunRecord]]] = {}
    for runs in finished_by_config(records).values():
        config = runs[0].config
        if runs[0].quick:
            continue
        shared = {k: v for k, v in config.items() if k not in ignored}
        budgets.setdefault(config_hash(shared), {})[_dynamics(config)] = runs
    result = []
    for settings in budgets.values():
        reference = settings.get(("authors", "euler"))
        if reference is None or len(settings) < 2:
            continue
        config = reference[0].config
        depths = [n for n in DEPTHS if n in config["networks"]]
        by_seed = {r.seed: r for r in reference}
        rows = []
        # the authors' dynamics first, the others in the order they were recorded
        for setting, runs in sorted(settings.items(), key=lambda kv: kv[0] != ("authors", "euler")):
            paired = [r for r in runs if r.seed in by_seed]
            orders = [paired_difference(runs, a, b) for a, b in DEPTH_PAIRS
                      if {a, b} <= set(depths)]  # fmt: skip
            ordered = "yes" if orders and all(g.mean > 0 for g in orders) else "no"
            for depth in depths:
                error = mean_ci([r.metrics[Key(depth, "test_error")] for r in runs])
                difference = ""
                if setting != ("authors", "euler") and paired:
                    difference = _percent(mean_ci(
                        r.metrics[Key(depth, "test_error")]
                        - by_seed[r.seed].metrics[Key(depth, "test_error")]
                        for r in paired
                    ))  # fmt: skip
                rows.append([
                    f"{setting[0]} kernel, {setting[1]}", depth, _percent(error), difference,
                    ordered if depth == depths[0] else "",
                ])  # fmt: skip
        result.append(ReportTable(
            f"Ablation of the paper's dynamics after {config['epochs']} epoch(s) of "
            f"{config['examples_per_epoch']} images, n={len(reference)} seeds",
            ["dynamics (PSP kernel, integration)", "network", "test error (mean ± 95 % CI)",
             "minus the authors' dynamics (paired per seed)", "orders 0 > 1 > 2 hidden"],
            rows,
        ))  # fmt: skip
    return result


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    """Per config: test error (and hidden-update angle) per network against the paper, and the
    paired differences between networks (:data:`PAIRS`); then :func:`dynamics_ablation`."""
    result = []
    for digest, runs in finished_by_config(records).items():
        config = runs[0].config
        kind = "quick" if runs[0].quick else "full"
        budget = (
            f"{config['epochs']} epoch(s) of {config['examples_per_epoch']} images, "
            f"{kind} config {digest[:8]}, n={len(runs)} seeds"
        )
        rows = []
        for name in [*config["networks"], *config["baselines"]]:
            error = mean_ci([r.metrics[Key(name, "test_error")] for r in runs])
            optional = {}
            for metric in ("hidden_angle", "test_error_epoch_mean"):
                key = Key(name, metric)
                if all(key in r.metrics for r in runs):
                    optional[metric] = mean_ci([r.metrics[key] for r in runs])
            epoch_mean = optional.get("test_error_epoch_mean")
            angle = optional.get("hidden_angle")
            lr = chosen_hyperparameter(runs[0], name, "lr")
            rows.append([
                name,
                error.format(scale=100, unit=" %").rsplit(" (n=", 1)[0],
                epoch_mean.format(scale=100, unit=" %").rsplit(" (n=", 1)[0] if epoch_mean else "",
                angle.format(unit="°").rsplit(" (n=", 1)[0] if angle else "",
                f"{lr:g} (tuned)" if lr is not None else "paper's",
                f"{PAPER_ERROR[name]} %" if name in PAPER_ERROR else "",
            ])  # fmt: skip
        result.append(ReportTable(
            f"Test error on {config['test_examples']} test images after {budget}",
            ["network", "test error (mean ± 95 % CI)", "mean over the last epoch's tests",
             "hidden update vs backprop", "learning rate", "paper (60 epochs, one network)"],
            rows,
        ))  # fmt: skip
        if config["epochs"] > 1:
            names = [*config["networks"], *config["baselines"]]
            by_epoch = {name: epoch_errors(runs, name) for name in names}
            epochs = range(1, max(len(v) for v in by_epoch.values()) + 1)
        if config["epochs"] > 1 and len(epochs):
            result.append(ReportTable(
                f"Test error at the end of each epoch (mean over seeds, %) after {budget}",
                ["network", *(f"epoch {e}" for e in epochs)],
                [[name, *(f"{e.mean * 100:.2f}" for e in by_epoch[name])] for name in names],
            ))  # fmt: skip
        pairs = [(a, b) for a, b in PAIRS if {a, b} <= set(config["networks"])]
        if pairs:
            rows = []
            for a, b in pairs:
                gain = paired_difference(runs, a, b)
                paper = f"{PAPER_ERROR[a] - PAPER_ERROR[b]:.1f} %"
                rows.append([f"{a} minus {b}", _percent(gain), paper])
            result.append(ReportTable(
                f"Paired differences in test error (same seed: same images in the same order) "
                f"after {budget}",
                ["networks", "difference (mean ± 95 % CI over seeds)", "paper (60 epochs)"],
                rows,
            ))  # fmt: skip
    return result + dynamics_ablation(records)


EXPERIMENT = Experiment(
    name=NAME,
    paper="Guerguiev, Lillicrap & Richards 2017, eLife 6:e22901",
    claim=(
        "Segregated dendrites with random feedback learn deep representations: "
        "0 > 1 > 2 hidden layers in test error (8.3 / 4.1 / 3.2 %)."
    ),
    config_cls=Config,
    run=run,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS}",
    tables=tables,
    run_batch=run_batch,
    studies=studies,
    tune=tune,
    objective=objective,
)
