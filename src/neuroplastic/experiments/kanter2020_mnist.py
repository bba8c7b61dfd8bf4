"""kanter2020-mnist: accelerated learning steps against tuned baselines with few MNIST examples.

Paper: Sardi et al., "Brain experiments imply adaptation mechanisms which outperform common AI
learning algorithms", Sci. Rep. 10:6923 (2020).
Sheet: shared/papers/kanter2020-accelerated-learning.md.

Claim tested: with 300 training examples (30 per label) presented online, one example per learning
step, a 784-30-10 network whose per-weight step grows over coherent consecutive gradients (Eq. 1)
reaches a markedly higher test accuracy than the optimised momentum method of Eq. 2: about 0.54
against 0.43 after 300 steps.

Protocol (the paper's where it says, ours where it is silent, marked *ours*):

- Network 784-30-10, sigmoid hidden units (the sheet's likely reading), PyTorch's default
  initialisation; cross-entropy on softmax outputs, or the square cost
  ``0.5 * ||sigmoid(z) - onehot||^2`` on sigmoid outputs (*ours*: the paper does not give its form).
- Training sets: ``size / 10`` examples of each label drawn at random from the training pool, shown
  in a balanced random order (each block of ten consecutive steps holds one example of each label
  in random order), one example per step, ``epochs`` passes (1: 300 steps for 300 examples).
- Validation (*ours*, for fairness): ``validation_per_class`` images of each label are carved from
  the training images once and never trained on; all tuning reads them, never the test set.
- Tuning (*ours*), through the one tuner (:mod:`neuroplastic.tuning`): one :class:`Study` per
  (method, size, cost), named like its metrics (``"momentum n=300 ce"``), every one with the same
  budget of ``trials`` random-search settings (Optuna's random sampler, seeded by
  ``tuning_seed``) from the method's search space. Each setting trains on the same
  ``tuning_seeds`` training sets (drawn independently of the final seeds) and is scored by its
  mean validation accuracy; a setting that diverges on any of them fails its trial. The runner
  tunes in the driver before the seeds (:func:`tune`) and records every trial in the store. The
  best setting then trains once per final seed, on a training set that depends only on (seed,
  size), so all methods see the same examples: the comparison is paired.
- Test: the full 10,000 MNIST test images (``mnist-mini`` carries all of them).

All replicas of one (method, size, cost), tuning trials or seeds, train as one batched computation
(:class:`~neuroplastic.models.replica_mlp.ReplicaMLP`, optimisers with per-replica
hyper-parameters), so 20 seeds cost about as much as one. Random search asks all its trials in one
round (``round_size = trials``), so a study's ``trials x tuning_seeds`` trainings are one batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from neuroplastic.errors import DivergenceError, NeuroplasticError
from neuroplastic.experiments.base import (
    Experiment,
    ReportTable,
    RunContext,
    RunResult,
    Verdict,
    default_runs,
    finished_by_config,
)
from neuroplastic.models.replica_mlp import ReplicaMLP
from neuroplastic.optim import AcceleratedSGD, DeltaBarDelta, MomentumSGD
from neuroplastic.results import Key
from neuroplastic.seeding import derive_seed, generator
from neuroplastic.stats import mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.tasks.datasets import Dataset
from neuroplastic.tuning import (
    Batch,
    BatchObjective,
    Dimension,
    LogUniform,
    Study,
    Trial,
    TrialOutcome,
    TuningResult,
    Uniform,
)

NAME = "kanter2020-mnist"
N_CLASSES = 10
PAPER_MOMENTUM, PAPER_ACCELERATED = 0.43, 0.54
MIN_SEEDS = 20
TPE_ROUND_SIZE, TPE_STARTUP_TRIALS = 4, 8
"""With ``sampler="tpe"``: trials asked (and batched) together, and TPE's random first trials."""

# Search spaces of the studies, per method (the same ranges as before the one tuner).
LR = LogUniform(1e-3, 10.0)
ACCELERATED = {"lr": LR, "delta": LogUniform(1e-4, 1.0), "decay": Uniform(0.5, 0.999)}
SEARCH_SPACES: dict[str, dict[str, Dimension]] = {
    "sgd": {"lr": LR},
    "momentum": {"lr": LR, "momentum": Uniform(0.0, 0.99), "alpha": LogUniform(1e-6, 1e-2)},
    "adam": {"lr": LogUniform(1e-4, 1.0), "beta1": Uniform(0.5, 0.99)},
    "delta-bar-delta": {"lr": LR, "kappa": LogUniform(1e-4, 1.0), "phi": Uniform(0.01, 0.5)},
    "accelerated-every-step": ACCELERATED,
    "accelerated-sign": ACCELERATED,
    "accelerated-graded": ACCELERATED | {"beta": LogUniform(1.0, 1e4)},
}
PAPER_METHOD = "accelerated-sign"
"""Our reading of the paper's accelerated method (see ``neuroplastic.optim.accelerated``)."""


def make_optimizer(method: str, params, hyper: dict[str, torch.Tensor]) -> torch.optim.Optimizer:
    """The method's optimiser over replica-stacked ``params`` with per-replica ``hyper`` (R,)."""
    if method == "sgd":
        return MomentumSGD(params, lr=hyper["lr"])
    if method == "momentum":  # Eq. 2: dW = mu dW - eta_0 dC/dW - alpha W
        return MomentumSGD(
            params, lr=hyper["lr"], momentum=hyper["momentum"], weight_regularisation=hyper["alpha"]
        )
    if method == "adam":
        from neuroplastic.optim import ReplicaAdam

        return ReplicaAdam(params, lr=hyper["lr"], betas=(hyper["beta1"], 0.999))
    if method == "delta-bar-delta":
        return DeltaBarDelta(params, lr=hyper["lr"], kappa=hyper["kappa"], phi=hyper["phi"])
    if method.startswith("accelerated-"):
        variant = {"every-step": "every_step", "sign": "sign_agreement", "graded": "graded"}[
            method.removeprefix("accelerated-")
        ]
        extra = {"beta": hyper["beta"]} if variant == "graded" else {}
        return AcceleratedSGD(
            params,
            lr=hyper["lr"],
            delta=hyper["delta"],
            decay=hyper["decay"],
            variant=variant,
            **extra,
        )
    raise ValueError(f"unknown method {method!r}; choose from {sorted(SEARCH_SPACES)}")


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist-mini"
    """Image source: ``mnist-mini`` (bundled: 600 training images per label, the full test set)
    or ``mnist``. Training sets of up to 3,000 examples fit in either."""
    sizes: tuple[int, ...] = (300, 600, 1200, 3000)
    """Training-set sizes (multiples of 10: balanced, size/10 per label)."""
    costs: tuple[str, ...] = ("cross_entropy", "square")
    """Costs to train with: ``cross_entropy`` and/or ``square``."""
    methods: tuple[str, ...] = tuple(SEARCH_SPACES)
    """Methods compared, each tuned with the same budget."""
    hidden: int = 30
    """Hidden units (the paper's 784-30-10)."""
    activation: Literal["sigmoid", "relu", "tanh"] = "sigmoid"
    """Hidden non-linearity."""
    epochs: int = 1
    """Passes over the training set, one example per step (1: size steps)."""
    trials: int = 16
    """Random-search settings per method, size and cost (the trials of each study): the same
    budget for every method."""
    sampler: Literal["random", "tpe"] = "random"
    """Sampler of every study: ``random`` (every trial in one round, so one replica batch per
    study) or ``tpe`` (Optuna's TPE in rounds of ``TPE_ROUND_SIZE`` trials, its first
    ``TPE_STARTUP_TRIALS`` random); the same for every method."""
    tuning_seeds: int = 2
    """Training sets per tuning trial; the score is their mean validation accuracy."""
    tuning_seed: int = 0
    """Seed of the studies (their settings) and of the tuning training sets, independent of the
    run's seeds."""
    validation_per_class: int = 100
    """Training images per label held out for validation (never trained on, never tested on)."""
    curve_points: int = 5
    """Test-accuracy evaluations along training for the accuracy-against-steps curves."""

    def __post_init__(self) -> None:
        if self.sampler not in ("random", "tpe"):
            raise ValueError(f"sampler must be random or tpe, got {self.sampler!r}")
        unknown = sorted(set(self.methods) - set(SEARCH_SPACES))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {list(SEARCH_SPACES)}")
        bad_costs = sorted(set(self.costs) - {"cross_entropy", "square"})
        if bad_costs:
            raise ValueError(f"unknown costs {bad_costs}; choose cross_entropy and/or square")
        if not self.sizes or any(s <= 0 or s % N_CLASSES for s in self.sizes):
            raise ValueError(f"sizes must be positive multiples of 10, got {self.sizes}")
        for name in ("hidden", "epochs", "trials", "tuning_seeds", "curve_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def quick(config: Config) -> Config:
    """300 examples, cross-entropy, 6 trials of 1 training set: the headline cell in seconds."""
    return dataclasses.replace(
        config, sizes=(300,), costs=("cross_entropy",), trials=6, tuning_seeds=1
    )


# ---------------------------------------------------------------------------------------------
# Data: the validation carve, balanced training sets, balanced order.


def carve_validation(
    labels: torch.Tensor, per_class: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Split training indices into a per-label pool and a validation set (fixed, seed-free)."""
    g = generator(NAME, "validation")
    pools, validation = [], []
    for label in range(N_CLASSES):
        members = torch.nonzero(labels.cpu() == label).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        validation.append(members[:per_class])
        pools.append(members[per_class:])
    return pools, torch.cat(validation).sort().values


def balanced_training_order(
    pools: list[torch.Tensor], size: int, g: torch.Generator
) -> torch.Tensor:
    """``size`` training indices, ``size/10`` per label, in a balanced random order.

    Step ``10 b + k`` shows the ``b``-th chosen example of label ``perm_b[k]``, where ``perm_b``
    is a fresh random permutation of the labels for every block ``b`` of ten steps.
    """
    per_label = size // N_CLASSES
    chosen = torch.stack(
        [pool[torch.randperm(len(pool), generator=g)[:per_label]] for pool in pools]
    )  # (10, per_label)
    if chosen.shape[1] < per_label:
        raise NeuroplasticError(
            f"{size} examples need {per_label} per label but the pool has {chosen.shape[1]}",
            hint="use smaller sizes, fewer validation images, or --set dataset=mnist",
        )
    label_order = torch.stack([torch.randperm(N_CLASSES, generator=g) for _ in range(per_label)])
    blocks = torch.arange(per_label)[:, None].expand(per_label, N_CLASSES)
    return chosen[label_order, blocks].flatten()  # (size,)


def training_sets(pools, size: int, seeds: Sequence[object]) -> torch.Tensor:
    """``(R, size)`` indices: replica ``r`` gets the training set of ``seeds[r]`` at this size."""
    return torch.stack(
        [balanced_training_order(pools, size, generator(NAME, s, size)) for s in seeds]
    )


# ---------------------------------------------------------------------------------------------
# Training R replicas online.


def replica_losses(logits: torch.Tensor, labels: torch.Tensor, cost: str) -> torch.Tensor:
    """Per-replica loss of one example each: logits ``(R, 10)``, labels ``(R,)`` -> ``(R,)``."""
    if cost == "cross_entropy":
        return F.cross_entropy(logits, labels, reduction="none")
    target = F.one_hot(labels, N_CLASSES).to(logits.dtype)
    return 0.5 * (torch.sigmoid(logits) - target).pow(2).sum(dim=-1)


@torch.no_grad()
def accuracy(
    model: ReplicaMLP, x: torch.Tensor, y: torch.Tensor, chunk: int = 5000
) -> torch.Tensor:
    """Per-replica accuracy ``(R,)`` on shared inputs ``x``."""
    correct = torch.zeros(model.replicas, device=x.device)
    for start in range(0, len(y), chunk):
        predictions = model(x[start : start + chunk]).argmax(dim=-1)  # (R, chunk)
        correct += (predictions == y[start : start + chunk]).sum(dim=-1)
    return correct / len(y)


def train_replicas(
    config: Config,
    method: str,
    cost: str,
    hyper: dict[str, torch.Tensor],
    model_seeds: Sequence[int],
    order: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    eval_steps: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train R replicas online; return accuracies ``(R, len(eval_steps))``, diverged mask ``(R,)``.

    Replica ``r`` starts from the weights of seed ``model_seeds[r]``, sees ``images[order[r, t]]``
    at step ``t`` and steps with its own hyper-parameters ``hyper[k][r]``. A replica whose loss
    becomes non-finite is marked diverged; the others are unaffected (they never mix).
    """
    device = images.device
    model = ReplicaMLP((images.shape[1], config.hidden, N_CLASSES), config.activation, model_seeds)
    model.to(device)
    optimizer = make_optimizer(
        method, model.parameters(), {k: v.to(device) for k, v in hyper.items()}
    )
    order = order.to(device)
    steps = order.shape[1] * config.epochs
    wanted = set(eval_steps)
    scores = []
    diverged = torch.zeros(model.replicas, dtype=torch.bool, device=device)
    for step in range(1, steps + 1):
        index = order[:, (step - 1) % order.shape[1]]  # (R,)
        logits = model(images[index][:, None, :])[:, 0, :]  # (R, 10)
        losses = replica_losses(logits, labels[index], cost)  # (R,)
        diverged |= ~torch.isfinite(losses)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # replicas are independent: d(sum)/dW_r = dL_r/dW_r
        optimizer.step()
        if step in wanted:
            scores.append(accuracy(model, eval_x, eval_y))
    return torch.stack(scores, dim=1), diverged


class Splits(NamedTuple):
    """The images and the fixed split of the training images: per-label pools to draw training
    sets from, and the validation carve (indices into the training images)."""

    data: Dataset
    pools: list[torch.Tensor]
    validation: torch.Tensor


def make_splits(config: Config, context: RunContext) -> Splits:
    data = context.load_dataset(config.dataset)
    pools, validation = carve_validation(data.train_y, config.validation_per_class)
    return Splits(data, pools, validation.to(data.train_x.device))


def settings_study(config: Config, method: str, size: int, cost: str) -> Study:
    """The study of one (method, size, cost): ``trials`` settings, the same budget and draws for
    every method; with random search all in one round (one replica batch)."""
    return Study(
        label(method, size, cost),
        SEARCH_SPACES[method],
        trials=config.trials,
        sampler=config.sampler,
        seed=config.tuning_seed,
        direction="maximize",
        round_size=config.trials if config.sampler == "random" else TPE_ROUND_SIZE,
        startup_trials=TPE_STARTUP_TRIALS,
        training_seed=config.tuning_seed,  # the seed of the tuning training sets, shared by all
    )


def validation_accuracy(
    config: Config, method: str, size: int, cost: str, splits: Splits
) -> BatchObjective:
    """The batch objective of a study: every trial's setting trains on each of the
    ``tuning_seeds`` tuning training sets (the same for every trial and method: a paired
    comparison), all as one replica batch; a trial scores its mean validation accuracy, or fails
    if it diverged on any set."""
    tuning_sets = [("tuning", config.tuning_seed, j) for j in range(config.tuning_seeds)]
    data, repeat = splits.data, config.tuning_seeds
    val_x, val_y = data.train_x[splits.validation], data.train_y[splits.validation]

    def objective(trials: list[tuple[dict[str, Any], Trial]]) -> list:
        n = len(trials)
        # replica r = trial (r // tuning_seeds) on tuning set (r % tuning_seeds)
        hyper = {
            name: torch.tensor(
                [params[name] for params, _ in trials], dtype=torch.float64
            ).repeat_interleave(repeat)
            for name in SEARCH_SPACES[method]
        }
        seeds = [derive_seed(NAME, "init", *s) for _ in range(n) for s in tuning_sets]
        order = training_sets(splits.pools, size, [s for _ in range(n) for s in tuning_sets])
        steps = size * config.epochs
        scores, diverged = train_replicas(
            config, method, cost, hyper, seeds, order, data.train_x, data.train_y, val_x, val_y,
            [steps],
        )  # fmt: skip
        means = scores[:, -1].view(n, repeat).mean(dim=1).tolist()
        failed = diverged.view(n, repeat).any(dim=1).tolist()
        return [
            DivergenceError(
                f"{label(method, size, cost)}: the setting {params} diverged in tuning",
                hint="a failed trial uses its budget; narrow the search space if many do",
            )
            if failed[i]
            else TrialOutcome(means[i])
            for i, (params, _) in enumerate(trials)
        ]

    return objective


def cells(config: Config) -> list[tuple[str, int, str]]:
    """Every (cost, size, method) the config compares, in run order."""
    return [(c, s, m) for c in config.costs for s in config.sizes for m in config.methods]


def studies(config: Config) -> list[Study]:
    """Every study the config tunes (for reports: ranges, direction, edge flags)."""
    return [settings_study(config, m, s, c) for c, s, m in cells(config)]


def tuned(
    config: Config, cost: str, size: int, method: str, splits: Splits, context: RunContext
) -> TuningResult:
    """The study of (method, size, cost) through ``context.tune``: run once per context (and
    resumed from the store when the runner gives it one)."""
    study = settings_study(config, method, size, cost)
    objective = validation_accuracy(config, method, size, cost, splits)
    return context.tune(config, study, batch_objective=objective)


def objective(config: Config, name: str, context: RunContext) -> Batch:
    """The batch objective of the study ``name`` (``Experiment.objective``: rebuilt anywhere)."""
    for cost, size, method in cells(config):
        if label(method, size, cost) == name:
            splits = make_splits(config, context)
            return Batch(validation_accuracy(config, method, size, cost, splits))
    raise KeyError(f"{NAME} has no study {name!r}")


def tune(config: Config, context: RunContext) -> None:
    """Every study of the config (the runner calls this in the driver before the seeds)."""
    splits = make_splits(config, context)
    todo = cells(config)
    context.progress.start(len(todo), f"{NAME} tuning ({config.trials} trials per study)")
    for cost, size, method in todo:
        result = tuned(config, cost, size, method, splits, context)
        context.progress.advance(**{"val acc": result.best.value})


def curve_steps(config: Config, size: int) -> list[int]:
    steps = size * config.epochs
    return sorted(
        {max(1, round(steps * (i + 1) / config.curve_points)) for i in range(config.curve_points)}
    )


def label(method: str, size: int, cost: str) -> str:
    """The name of the study of one (method, size, cost)."""
    return f"{method} n={size} {'ce' if cost == 'cross_entropy' else 'square'}"


def run_batch(
    config: Config, seeds: Sequence[int], context: RunContext
) -> list[RunResult | NeuroplasticError]:
    """Every (method, size, cost) with its tuned setting, all ``seeds`` as one batch each."""
    splits = make_splits(config, context)
    data = splits.data
    results = [RunResult(metrics={}, curves={}, curve_x_label="learning steps") for _ in seeds]
    failures: dict[int, NeuroplasticError] = {}
    todo = cells(config)
    context.progress.start(len(todo), f"{NAME} ({len(seeds)} seeds)")
    for cost, size, method in todo:
        tuning = tuned(config, cost, size, method, splits, context)
        best, val_accuracy = tuning.params, tuning.best.value
        hyper = {k: torch.full((len(seeds),), v, dtype=torch.float64) for k, v in best.items()}
        order = training_sets(splits.pools, size, list(seeds))
        steps = curve_steps(config, size)
        scores, diverged = train_replicas(
            config, method, cost, hyper, list(seeds), order, data.train_x, data.train_y,
            data.test_x, data.test_y, steps,
        )  # fmt: skip
        study = label(method, size, cost)
        key = Key(method, "test_accuracy", size=size, cost=cost)
        for r, seed in enumerate(seeds):
            if diverged[r]:
                failures.setdefault(
                    r,
                    DivergenceError(
                        f"{study}: the tuned setting {best} diverged on seed {seed}",
                        hint="the search space lets steps grow without bound; narrow it",
                    ),
                )
            results[r].metrics[key] = float(scores[r, -1])
            results[r].curves[key] = {"x": steps, "y": scores[r].tolist()}
            results[r].hyperparameters[study] = dict(best)
        context.progress.advance(**{"val acc": val_accuracy})
    return [failures.get(r, result) for r, result in enumerate(results)]


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    """One seed: the same as that seed's entry in a batch."""
    outcome = run_batch(config, [seed], context)[0]
    if isinstance(outcome, NeuroplasticError):
        raise outcome
    return outcome


def verdict(records: Sequence[RunRecord]) -> Verdict:
    """Paired comparison at 300 examples, cross-entropy: the paper's method against momentum."""
    runs = default_runs(records, Config)
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")

    def at_300(method: str) -> list[float]:
        key = Key(method, "test_accuracy", size=300, cost="cross_entropy")
        return [r.metrics[key] for r in runs]

    accelerated, momentum, adam = at_300(PAPER_METHOD), at_300("momentum"), at_300("adam")
    gain = mean_ci([a - m for a, m in zip(accelerated, momentum, strict=True)])
    status = "holds" if gain.mean - gain.ci95 > 0 else "does not hold"
    headline = (
        f"300 examples: momentum {mean_ci(momentum).format()}, accelerated "
        f"{mean_ci(accelerated).format()}, Adam {mean_ci(adam).format()} test accuracy "
        f"(paper: {PAPER_MOMENTUM} -> {PAPER_ACCELERATED})"
    )
    return Verdict(status, headline)


def plot_panel(key: Key) -> tuple[str, str]:
    """One panel per (size, cost), one line per method."""
    return f"n={key.get('size')} {key.get('cost')}: test accuracy", key.method


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    """Test accuracy, methods against training-set sizes, one table per config and cost."""
    result = []
    for digest, runs in finished_by_config(records).items():
        config = runs[0].config
        kind = "quick" if runs[0].quick else "full"
        for cost in config["costs"]:
            rows = []
            for method in config["methods"]:
                cells = []
                for size in config["sizes"]:
                    key = Key(method, "test_accuracy", size=size, cost=cost)
                    summary = mean_ci([r.metrics[key] for r in runs if key in r.metrics])
                    cells.append(summary.format(scale=100, digits=1).rsplit(" (n=", 1)[0])
                rows.append([method, *cells])
            result.append(
                ReportTable(
                    f"Test accuracy (%), {cost}, {kind} config {digest[:8]}, n={len(runs)} seeds",
                    ["method", *(f"{size} examples" for size in config["sizes"])],
                    rows,
                )
            )
    return result


EXPERIMENT = Experiment(
    name=NAME,
    paper="Sardi et al. 2020, Sci. Rep. 10:6923",
    claim=(
        "Per-weight steps that grow over coherent gradients beat tuned momentum with 300 MNIST "
        "examples (0.43 -> 0.54)."
    ),
    config_cls=Config,
    run=run,
    run_batch=run_batch,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS}",
    plot_panel=plot_panel,
    tables=tables,
    studies=studies,
    tune=tune,
    objective=objective,
)
