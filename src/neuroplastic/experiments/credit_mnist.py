"""credit-mnist: every credit-assignment rule on MNIST, with the same network, budget and optimiser.

Sheet: shared/papers/credit-assignment.md. Reference numbers (Bartunov et al. 2018, NeurIPS,
fully connected MNIST): backprop 1.48 %, feedback alignment 1.85 %, direct feedback alignment
2.75 % test error. The claim tested here is the ordering they report: backprop <= FA <= DFA, and
all three learn MNIST to a few per cent, while the perturbation rules lag far behind at equal
epochs.

Protocol (ours where the sources are silent):

- The same MLP for every rule (default 784-500-500-10, tanh), PyTorch's default initialisation
  from the seed; equilibrium propagation on ``ep_hidden`` (default 784-500-10), the size its
  settling loop can train here.
- Every rule writes ``.grad``; the same optimiser takes the step for all of them: SGD with
  ``momentum`` and a cosine learning-rate schedule over ``epochs``.
- The same tuning budget for every rule: ``trials`` learning rates log-spaced over
  [``lr_low``, ``lr_high``], each trained ``tuning_epochs`` epochs and scored by the error on a
  validation split carved from the training images (never the test set; a diverged trial scores
  1.0); the lowest error wins, ties going to the lower learning rate. By default a trial is the
  whole final schedule (``tuning_epochs == epochs``): short trials under a cosine schedule favour
  learning rates too large for the long run. The search is one grid study per rule through the
  one tuner (:mod:`neuroplastic.tuning`): it depends only on the config, runs in the driver
  before the seeds, its trials are recorded (and not run again), and every seed records the rate
  it trained with.
- Logged per epoch: test and validation error; the angle between each layer's update and the
  backprop gradient on a fixed batch of training images; for rules with feedback matrices, the
  angle between each forward matrix and its feedback.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from neuroplastic.credit import LOSSES, RULES
from neuroplastic.credit.diagnostics import feedback_weight_angles, update_angles
from neuroplastic.experiments.base import (
    Experiment,
    ReportTable,
    RunContext,
    RunResult,
    Verdict,
    chosen_hyperparameter,
    default_runs,
    finished_by_config,
)
from neuroplastic.metrics import error_rate
from neuroplastic.models.mlp import MLP
from neuroplastic.results import Key
from neuroplastic.seeding import derive_seed, generator
from neuroplastic.stats import mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.tasks.splits import validation_split
from neuroplastic.tuning import Choice, Objective, Study, Trial, TrialOutcome

NAME = "credit-mnist"
MIN_SEEDS = 5
REFERENCE_ERROR = {"backprop": 1.48, "fa": 1.85, "dfa": 2.75}
"""Bartunov et al. 2018, MNIST, fully connected networks: test error in per cent."""
DIAGNOSTIC_BATCH = 1000


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    """Images: ``mnist`` (60,000 training images) or the bundled ``mnist-mini``."""
    rules: tuple[str, ...] = (
        "backprop",
        "fa",
        "dfa",
        "sign-symmetry",
        "node-perturbation",
        "weight-perturbation",
        "equilibrium-propagation",
    )
    """Credit-assignment rules compared (names of ``neuroplastic.credit.RULES``)."""
    hidden: tuple[int, ...] = (500, 500)
    """Hidden widths for every rule but equilibrium propagation."""
    ep_hidden: tuple[int, ...] = (500,)
    """Hidden widths for equilibrium propagation (its settling loop is the expensive part)."""
    activation: Literal["tanh", "relu", "sigmoid"] = "tanh"
    """Hidden non-linearity (equilibrium propagation uses its own, the hard sigmoid)."""
    loss: Literal["cross_entropy", "square"] = "cross_entropy"
    """Training cost; a rule that does not support it (equilibrium propagation: square cost
    only) trains with the first cost it supports."""
    epochs: int = 10
    """Training epochs of the final runs."""
    batch_size: int = 100
    """Examples per step."""
    momentum: float = 0.9
    """Momentum of the shared SGD optimiser."""
    lr_low: float = 1e-4
    """Lowest learning rate of the log-spaced search grid."""
    lr_high: float = 1.0
    """Highest learning rate of the log-spaced search grid."""
    trials: int = 5
    """Learning rates tried per rule (log-spaced, so 5 means one per decade of [1e-4, 1]): the
    same budget for every rule."""
    tuning_epochs: int = 10
    """Epochs per tuning trial; equal to ``epochs`` so that a trial is the final schedule."""
    tuning_seed: int = 0
    """Seed of the trial networks, independent of the run seed."""
    validation_fraction: float = 0.1
    """Share of the training images held out for validation (a fixed split)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rules) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rules {unknown}; choose from {sorted(RULES)}")
        for name in ("epochs", "batch_size", "trials", "tuning_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr_low < self.lr_high:
            raise ValueError(f"need 0 < lr_low < lr_high, got {self.lr_low}, {self.lr_high}")


def quick(config: Config) -> Config:
    """One epoch, three trials of one epoch each: every rule runs, nothing converges."""
    return dataclasses.replace(config, epochs=1, trials=3, tuning_epochs=1)


def architecture(config: Config, rule: str, n_in: int) -> tuple[int, ...]:
    hidden = config.ep_hidden if rule == "equilibrium-propagation" else config.hidden
    return (n_in, *hidden, 10)


def rule_loss(config: Config, rule: str) -> str:
    """The configured cost, or the rule's first supported one if it cannot train with it."""
    supported = getattr(RULES[rule], "supported_losses", LOSSES)
    return config.loss if config.loss in supported else supported[0]


def train(
    config: Config,
    rule_name: str,
    lr: float,
    seed: int,
    epochs: int,
    train_set: tuple[torch.Tensor, torch.Tensor],
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
    diagnostics: tuple[torch.Tensor, torch.Tensor] | None = None,
    context: RunContext | None = None,
) -> dict[Key, list[float]]:
    """Train one network with one rule; per-epoch curves (errors on ``eval_sets``, diagnostics),
    keyed by method ``rule_name``.

    A non-finite loss ends training: the remaining epochs are recorded as nan (the run diverged).
    """
    train_x, train_y = train_set
    device = train_x.device
    model = MLP(architecture(config, rule_name, train_x.shape[1]), config.activation,
                generator(NAME, "init", seed)).to(device)  # fmt: skip
    rule = RULES[rule_name](model, generator=generator(NAME, "rule", seed))
    cost = rule_loss(config, rule_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum)
    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    shuffle = generator(NAME, "order", seed)

    def key(metric: str, layer: str | None = None) -> Key:
        return Key(rule_name, metric, layer=layer)

    curves: dict[Key, list[float]] = {
        key("train_loss"): [],
        **{key(f"{k}_error"): [] for k in eval_sets},
    }
    diverged = False
    for _ in range(epochs):
        total = torch.zeros((), device=device)
        if not diverged:
            order = torch.randperm(len(train_y), generator=shuffle).to(device)
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                total += rule.backward(train_x[batch], train_y[batch], cost) * len(batch)
                optimizer.step()
                schedule.step()
            loss = total.item() / len(train_y)
            diverged = not math.isfinite(loss)
        curves[key("train_loss")].append(float("nan") if diverged else loss)
        for name, (x, y) in eval_sets.items():
            curves[key(f"{name}_error")].append(
                float("nan") if diverged else error_rate(rule.predict, x, y)
            )
        if diagnostics is not None and not diverged:
            for name, angle in update_angles(rule, *diagnostics, loss=cost).items():
                curves.setdefault(key("angle", recorded_name(name)), []).append(angle)
            for name, angle in feedback_weight_angles(rule).items():
                if name == "layers.0":
                    continue  # FA's matrix into the image: drawn, never used
                curves.setdefault(key("feedback_angle", recorded_name(name)), []).append(angle)
        if context is not None:
            context.progress.advance(loss=curves[key("train_loss")][-1])
    return curves


def recorded_name(name: str) -> str:
    """The MLP's parameter or layer name as this experiment has recorded it since its first
    run, so curves stay comparable across versions: ``layers.0.weight`` -> ``layer0.weight``;
    the feedback into the input of ``layers.1`` (that of hidden layer 0) -> ``layer0.feedback``."""
    parts = name.split(".")
    if len(parts) == 3:
        return f"layer{parts[1]}.{parts[2]}"
    return f"layer{int(parts[1]) - 1}.feedback"


def learning_rates(config: Config) -> list[float]:
    """The ``trials`` learning rates of the search, log-spaced over [``lr_low``, ``lr_high``]."""
    return torch.logspace(
        math.log10(config.lr_low), math.log10(config.lr_high), config.trials, dtype=torch.float64
    ).tolist()


def learning_rate_study(config: Config, rule: str) -> Study:
    """Every rate of :func:`learning_rates` once (the same budget for every rule).

    The grid visits the rates in an order shuffled by ``tuning_seed``; neither the trials'
    training seeds nor the winner depend on that order: rate ``i`` of the list trains from
    ``derive_seed("tuning", tuning_seed, i)`` (see :func:`validation_error`).
    """
    rates = learning_rates(config)
    return Study(
        rule, {"lr": Choice(rates)}, trials=len(rates), sampler="grid", seed=config.tuning_seed,
        training_seed=lambda number, params: derive_seed(
            "tuning", config.tuning_seed, rates.index(params["lr"])
        ),
    )  # fmt: skip


def studies(config: Config) -> list[Study]:
    """The learning-rate studies of a config, one per rule."""
    return [learning_rate_study(config, rule) for rule in config.rules]


def score(val_errors: Sequence[float]) -> float:
    """A trial's validation error: the last epoch's, 1.0 if the run diverged."""
    return 1.0 if math.isnan(val_errors[-1]) else val_errors[-1]


def validation_error(config: Config, rule: str, data, split) -> Objective:
    """The objective of a learning-rate trial: train ``tuning_epochs`` from ``trial.seed``, the
    rate's own seed ``derive_seed("tuning", tuning_seed, i)`` with ``i`` the rate's position in
    :func:`learning_rates` (see :func:`learning_rate_study`), and score the final validation
    error, 1.0 if the run diverged.

    The score adds ``i * 2**-10 / (n * trials)`` (``n`` validation images), far less than the
    ``1 / n`` between two different errors: equal errors go to the lower rate whatever order
    the grid visits them in. The error itself is the trial's ``val_error`` curve.
    """
    train_index, validation_index = split
    rates = learning_rates(config)
    tie_break = 2.0**-10 / (max(len(validation_index), 1) * len(rates))

    def objective(params: dict, trial: Trial) -> TrialOutcome:
        index = rates.index(params["lr"])
        errors = train(
            config, rule, params["lr"], trial.seed, config.tuning_epochs,
            (data.train_x[train_index], data.train_y[train_index]),
            {"val": (data.train_x[validation_index], data.train_y[validation_index])},
        )[Key(rule, "val_error")]  # fmt: skip
        curves = {"val_error": {"x": list(range(1, len(errors) + 1)), "y": errors}}
        return TrialOutcome(score(errors) + index * tie_break, curves)

    return objective


def tuned_lr(config: Config, rule: str, data, split, context: RunContext) -> tuple[float, float]:
    """The learning rate with the lowest validation error and that error (``context.tune``:
    once per context, trials recorded where the runner says)."""
    objective = validation_error(config, rule, data, split)
    best = context.tune(config, learning_rate_study(config, rule), objective).best
    return best.params["lr"], score(best.curves["val_error"]["y"])


def data_and_split(config: Config, context: RunContext):
    """The dataset and its (training, validation) index split, on the context's device."""
    data = context.load_dataset(config.dataset)
    device = data.train_x.device
    n_validation = round(config.validation_fraction * len(data.train_y))
    split = tuple(i.to(device) for i in validation_split(len(data.train_y), n_validation))
    return data, split


def objective(config: Config, name: str, context: RunContext) -> Objective:
    """The objective of rule ``name``'s study (``Experiment.objective``: rebuilt anywhere)."""
    if name not in config.rules:
        raise KeyError(f"{NAME} has no study {name!r}")
    data, split = data_and_split(config, context)
    return validation_error(config, name, data, split)


def tune(config: Config, context: RunContext) -> None:
    """Every rule's learning-rate study (the runner calls this in the driver before the seeds)."""
    data, split = data_and_split(config, context)
    for rule in config.rules:
        tuned_lr(config, rule, data, split, context)


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    """Tune (once per config) and train every rule from ``seed``."""
    data, split = data_and_split(config, context)
    train_index, validation_index = split
    diagnostic = train_index[:DIAGNOSTIC_BATCH]
    metrics: dict[Key, float] = {}
    curves: dict[Key, dict[str, list[float]]] = {}
    hyperparameters: dict[str, dict[str, float]] = {}
    context.progress.start(len(config.rules) * config.epochs, f"{NAME} seed {seed}")
    for rule in config.rules:
        lr, _ = tuned_lr(config, rule, data, split, context)
        hyperparameters[rule] = {"lr": lr}
        rule_curves = train(
            config, rule, lr, seed, config.epochs,
            (data.train_x[train_index], data.train_y[train_index]),
            {"val": (data.train_x[validation_index], data.train_y[validation_index]),
             "test": (data.test_x, data.test_y)},
            diagnostics=(data.train_x[diagnostic], data.train_y[diagnostic]),
            context=context,
        )  # fmt: skip
        epochs = list(range(1, config.epochs + 1))
        for key, values in rule_curves.items():
            curves[key] = {"x": epochs[: len(values)], "y": values}
            if key.metric in ("test_error", "val_error", "angle", "feedback_angle"):
                metrics[key] = values[-1]
        metrics[Key(rule, "diverged")] = float(math.isnan(metrics[Key(rule, "test_error")]))
    return RunResult(metrics, curves, "epoch", hyperparameters)


def verdict(records: Sequence[RunRecord]) -> Verdict:
    """Holds when backprop <= FA <= DFA in mean test error over >= 5 seeds of the defaults."""
    runs = default_runs(records, Config)
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")
    errors = {
        rule: mean_ci([r.metrics[Key(rule, "test_error")] for r in runs])
        for rule in REFERENCE_ERROR
    }
    ordered = errors["backprop"].mean <= errors["fa"].mean <= errors["dfa"].mean
    headline = ", ".join(
        f"{rule} {errors[rule].format(scale=100, unit=' %')} (paper {REFERENCE_ERROR[rule]} %)"
        for rule in REFERENCE_ERROR
    )
    return Verdict("holds" if ordered else "does not hold", headline)


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    """Test error per rule against the reference numbers, one table per config."""
    result = []
    for digest, runs in finished_by_config(records).items():
        rows = []
        for rule in runs[0].config["rules"]:
            error = mean_ci([r.metrics[Key(rule, "test_error")] for r in runs])
            lr = chosen_hyperparameter(runs[0], rule, "lr")
            reference = REFERENCE_ERROR.get(rule)
            rows.append([
                rule,
                error.format(scale=100, unit=" %").rsplit(" (n=", 1)[0],
                f"{lr:.3g}",
                f"{reference} %" if reference is not None else "",
            ])  # fmt: skip
        kind = "quick" if runs[0].quick else "full"
        result.append(
            ReportTable(
                f"Test error, {kind} config {digest[:8]}, n={len(runs)} seeds",
                ["rule", "test error (mean ± 95 % CI)", "tuned lr", "Bartunov 2018"],
                rows,
            )
        )
    return result


EXPERIMENT = Experiment(
    name=NAME,
    paper="Lillicrap 2016, Nøkland 2016, Scellier & Bengio 2017; numbers: Bartunov 2018",
    claim=(
        "Random feedback learns MNIST nearly as well as backprop "
        "(BP 1.48 <= FA 1.85 <= DFA 2.75 %)."
    ),
    config_cls=Config,
    run=run,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS}",
    tables=tables,
    studies=studies,
    tune=tune,
    objective=objective,
)
