"""credit-mnist: backprop against random feedback on MNIST, under a protocol that gives every rule
the same network, optimiser arms, tuning budget, epochs and seeds.

Sheet: shared/papers/credit-assignment.md. The claim (Lillicrap et al. 2016, Nøkland 2016; numbers
from Bartunov et al. 2018, fully connected MNIST: BP 1.48, FA 1.85, DFA 2.75 % test error): random
feedback learns MNIST nearly as well as backprop.

Protocol (ours where the sources are silent; see docs/experiments/credit-mnist.md):

- The same MLP for every rule (default 784-500-500-10, tanh, PyTorch's default initialisation from
  the seed, the same initialisation seeds for every rule), cross-entropy.
- Two optimiser arms, each its own table: ``adam`` (AdamW: learning rate and weight decay tuned)
  and ``sgd`` (SGD with momentum: learning rate, momentum and weight decay tuned, and for the rules
  with feedback matrices their ``scale``, which under plain SGD acts as a hidden-layer learning
  rate). A cosine schedule over the epochs in both arms.
- Tuning: one study per (rule, arm) through the one tuner, the same number of TPE trials for every
  study, each trial the full final schedule from its own seed (the same seeds for every rule),
  scored by the final error on a validation split carved from the training images (never the test
  set; a diverged trial scores 1.0), pruned by the median rule after epoch 2 against earlier
  rounds. The ranges are wide on purpose; a winner on an edge is flagged.
- The final runs: ``epochs`` epochs on the training split (the validation images held out), the
  tuned values, test error each epoch. Converged: the mean validation error of the last
  ``convergence_window`` epochs within ``CONVERGENCE_TOLERANCE`` of the mean of the window before.
- Logged per epoch: the angle between each layer's update and the backprop gradient on a fixed
  batch of training images; for rules with feedback matrices, the angle between each forward
  matrix and its feedback.

Verdict (fixed before the runs; read from the default config, at least ``MIN_SEEDS`` seeds): in
each arm the paired differences of test error (same seed) FA - BP and DFA - BP; the claim holds
for a (rule, arm) when the upper end of the 95 % interval of its difference is below its margin
(``MARGINS``: 0.5 points for FA, 1.5 points for DFA). All four pass: holds; none: does not hold;
otherwise partly holds. The ordering FA <= DFA of Bartunov et al. counts as reversed only where
the paired interval of FA - DFA lies above zero in both arms.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from neuroplastic.config import config_to_dict
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
from neuroplastic.models.lenet import LeNet5
from neuroplastic.models.mlp import MLP
from neuroplastic.results import Key
from neuroplastic.seeding import derive_seed, generator
from neuroplastic.stats import Summary, mean_ci
from neuroplastic.store import RunRecord, config_hash
from neuroplastic.tasks.splits import validation_split
from neuroplastic.tuning import LogUniform, Objective, Study, Trial, TrialOutcome, Uniform

NAME = "credit-mnist"
MIN_SEEDS = 5
REFERENCE_ERROR = {"backprop": 1.48, "fa": 1.85, "dfa": 2.75}
"""Bartunov et al. 2018, MNIST, fully connected networks: test error in per cent."""
MARGINS = {"fa": 0.005, "dfa": 0.015}
"""How much worse than backprop (test error, paired, upper 95 % bound) still counts as "nearly as
well": 0.5 points for FA, 1.5 points for DFA."""
ARMS = ("adam", "sgd")
RULE_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "usf": ("sign-symmetry", {"variant": "usf"}),
    "brsf": ("sign-symmetry", {"variant": "brsf"}),
    "frsf": ("sign-symmetry", {"variant": "frsf"}),
}
"""Names for the sign-symmetry variants (Moskovitz et al. 2018, as biotorch names them), so one
run can compare them as rules."""
FEEDBACK_RULES = ("fa", "dfa", "sign-symmetry", *RULE_VARIANTS)
"""Rules with feedback matrices, whose ``scale`` the ``sgd`` arm tunes."""
MODELS = ("mlp", "lenet")
INPUT_LAYERS = ("layers.0", "1.features.0")
"""The first layer of each model: the feedback into the image is drawn, never used."""
CONVERGENCE_TOLERANCE = 0.001
"""Converged: the last window's mean validation error within 0.1 points of the window before."""
DIAGNOSTIC_BATCH = 1000
PRUNING_WARMUP = 2
"""Epochs a trial always runs before the median rule may stop it."""


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    """Images: ``mnist`` (60,000 training images) or the bundled ``mnist-mini``."""
    rules: tuple[str, ...] = ("backprop", "fa", "dfa", "sign-symmetry")
    """Credit-assignment rules compared (names of ``neuroplastic.credit.RULES``, or ``usf``,
    ``brsf``, ``frsf`` for the sign-symmetry variants)."""
    model: Literal["mlp", "lenet"] = "mlp"
    """Network: the MLP of ``hidden``, or LeNet-5 (``models.lenet``; ``hidden`` unused)."""
    arms: tuple[str, ...] = ARMS
    """Optimiser arms: ``adam`` (AdamW) and ``sgd`` (SGD with momentum, feedback scale tuned)."""
    hidden: tuple[int, ...] = (500, 500)
    """Hidden widths for every rule but equilibrium propagation."""
    ep_hidden: tuple[int, ...] = (500,)
    """Hidden widths for equilibrium propagation (its settling loop is the expensive part)."""
    activation: Literal["tanh", "relu", "sigmoid"] = "tanh"
    """Hidden non-linearity (equilibrium propagation uses its own, the hard sigmoid)."""
    loss: Literal["cross_entropy", "square"] = "cross_entropy"
    """Training cost; a rule that does not support it (equilibrium propagation: square cost
    only) trains with the first cost it supports."""
    epochs: int = 30
    """Training epochs of the final runs and of every tuning trial."""
    batch_size: int = 100
    """Examples per step."""
    trials: int = 24
    """Tuning trials per (rule, arm): the same budget for every study."""
    sampler: Literal["tpe", "random"] = "tpe"
    """The tuner's sampler."""
    pruner: Literal["median", "none"] = "median"
    """Stop trials worse than the median of earlier rounds at the same epoch (``none``: never)."""
    adam_lr: tuple[float, float] = (1e-5, 1e-1)
    """Log range of AdamW's learning rate."""
    sgd_lr: tuple[float, float] = (1e-4, 3.0)
    """Log range of SGD's learning rate."""
    momentum: tuple[float, float] = (0.0, 0.99)
    """Range of SGD's momentum."""
    weight_decay: tuple[float, float] = (1e-8, 1e-2)
    """Log range of the weight decay (both arms)."""
    feedback_scale: tuple[float, float] = (1e-2, 1e2)
    """Log range of the feedback matrices' scale (``sgd`` arm, feedback rules)."""
    tuning_seed: int = 0
    """Seed of the tuner and of the trials' networks, independent of the run seed."""
    validation_fraction: float = 0.1
    """Share of the training images held out for validation (a fixed split)."""
    convergence_window: int = 5
    """Epochs per window of the convergence check."""

    def __post_init__(self) -> None:
        known = sorted({*RULES, *RULE_VARIANTS})
        unknown = sorted(set(self.rules) - set(known))
        if unknown:
            raise ValueError(f"unknown rules {unknown}; choose from {known}")
        bad_arms = sorted(set(self.arms) - set(ARMS))
        if bad_arms or not self.arms:
            raise ValueError(f"unknown arms {bad_arms}; choose from {list(ARMS)}")
        for name in ("epochs", "batch_size", "trials", "convergence_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("adam_lr", "sgd_lr", "weight_decay", "feedback_scale"):
            low, high = getattr(self, name)
            if not 0 < low < high:
                raise ValueError(f"{name} needs 0 < low < high, got {low}, {high}")
        if not 0 <= self.momentum[0] < self.momentum[1] < 1:
            raise ValueError(f"momentum needs 0 <= low < high < 1, got {self.momentum}")


def quick(config: Config) -> Config:
    """Two epochs, four trials: every rule and arm runs, nothing converges."""
    return dataclasses.replace(config, epochs=2, trials=4, convergence_window=1)


def architecture(config: Config, rule: str, n_in: int) -> tuple[int, ...]:
    hidden = config.ep_hidden if rule == "equilibrium-propagation" else config.hidden
    return (n_in, *hidden, 10)


def build_model(config: Config, rule: str, n_in: int, seed: int) -> torch.nn.Module:
    """The network of ``config.model``, initialised from ``seed`` (the same for every rule)."""
    if config.model == "mlp":
        return MLP(architecture(config, rule, n_in), config.activation,
                   generator(NAME, "init", seed))  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # LeNet5 initialises from the global generator
        torch.manual_seed(derive_seed(NAME, "lenet-init", seed))
        return torch.nn.Sequential(
            torch.nn.Unflatten(1, (1, 28, 28)), LeNet5(activation=config.activation)
        )


def make_rule(rule: str, model: torch.nn.Module, seed: int, params: dict[str, float]):
    """``rule`` (a name of ``RULES`` or ``RULE_VARIANTS``) on ``model``, with the tuned feedback
    scale when the arm tunes one."""
    base, options = RULE_VARIANTS.get(rule, (rule, {}))
    scale = {"scale": params["feedback_scale"]} if "feedback_scale" in params else {}
    return RULES[base](model, generator=generator(NAME, "rule", seed), **options, **scale)


def rule_loss(config: Config, rule: str) -> str:
    """The configured cost, or the rule's first supported one if it cannot train with it."""
    base = RULE_VARIANTS.get(rule, (rule, {}))[0]
    supported = getattr(RULES[base], "supported_losses", LOSSES)
    return config.loss if config.loss in supported else supported[0]


def make_optimizer(arm: str, params: dict[str, float], model: torch.nn.Module):
    """AdamW (``adam``) or SGD with momentum (``sgd``) with the tuned ``params``."""
    if arm == "adam":
        return torch.optim.AdamW(
            model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"]
        )
    return torch.optim.SGD(
        model.parameters(), lr=params["lr"], momentum=params["momentum"],
        weight_decay=params["weight_decay"],
    )  # fmt: skip


def train(
    config: Config,
    rule_name: str,
    arm: str,
    params: dict[str, float],
    seed: int,
    train_set: tuple[torch.Tensor, torch.Tensor],
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
    diagnostics: tuple[torch.Tensor, torch.Tensor] | None = None,
    context: RunContext | None = None,
    report: Callable[[int, float], None] | None = None,
) -> dict[Key, list[float]]:
    """Train one network with one rule in one arm for ``config.epochs``; per-epoch curves (errors
    on ``eval_sets``, diagnostics), keyed by method ``rule_name`` and setting ``arm``.

    ``report(epoch, validation error)`` is called after each epoch (1.0 once diverged), e.g. a
    tuning trial's ``report``, which may stop training by raising. A non-finite loss ends
    training: the remaining epochs are recorded as nan (the run diverged).
    """
    train_x, train_y = train_set
    device = train_x.device
    model = build_model(config, rule_name, train_x.shape[1], seed).to(device)
    rule = make_rule(rule_name, model, seed, params)
    cost = rule_loss(config, rule_name)
    named = recorded_name if config.model == "mlp" else str
    optimizer = make_optimizer(arm, params, model)
    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, config.epochs * steps_per_epoch
    )
    shuffle = generator(NAME, "order", seed)

    def key(metric: str, layer: str | None = None) -> Key:
        return Key(rule_name, metric, setting=arm, layer=layer)

    curves: dict[Key, list[float]] = {
        key("train_loss"): [],
        **{key(f"{k}_error"): [] for k in eval_sets},
    }
    diverged = False
    for epoch in range(1, config.epochs + 1):
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
                curves.setdefault(key("angle", named(name)), []).append(angle)
            for name, angle in feedback_weight_angles(rule).items():
                if name in INPUT_LAYERS:
                    continue  # FA's matrix into the image: drawn, never used
                curves.setdefault(key("feedback_angle", named(name)), []).append(angle)
        if context is not None:
            context.progress.advance(loss=curves[key("train_loss")][-1])
        if report is not None and key("val_error") in curves:
            report(epoch, score(curves[key("val_error")]))
    return curves


def recorded_name(name: str) -> str:
    """The MLP's parameter or layer name as this experiment has recorded it since its first
    run, so curves stay comparable across versions: ``layers.0.weight`` -> ``layer0.weight``;
    the feedback into the input of ``layers.1`` (that of hidden layer 0) -> ``layer0.feedback``."""
    parts = name.split(".")
    if len(parts) == 3:
        return f"layer{parts[1]}.{parts[2]}"
    return f"layer{int(parts[1]) - 1}.feedback"


def study_name(rule: str, arm: str) -> str:
    return f"{rule} {arm}"


def search_space(config: Config, rule: str, arm: str) -> dict[str, LogUniform | Uniform]:
    """What the (rule, arm) study tunes (see the module docstring)."""
    if arm == "adam":
        return {"lr": LogUniform(*config.adam_lr), "weight_decay": LogUniform(*config.weight_decay)}
    space = {
        "lr": LogUniform(*config.sgd_lr),
        "momentum": Uniform(*config.momentum),
        "weight_decay": LogUniform(*config.weight_decay),
    }
    if rule in FEEDBACK_RULES:
        space["feedback_scale"] = LogUniform(*config.feedback_scale)
    return space


def study(config: Config, rule: str, arm: str) -> Study:
    """The same budget, sampler, seeds and pruning for every (rule, arm)."""
    return Study(
        study_name(rule, arm), search_space(config, rule, arm), trials=config.trials,
        sampler=config.sampler, seed=config.tuning_seed, round_size=4, startup_trials=8,
        pruner=None if config.pruner == "none" else config.pruner,
        pruning_warmup=PRUNING_WARMUP,
    )  # fmt: skip


def cells(config: Config) -> list[tuple[str, str]]:
    """Every (rule, arm) of a config, arm by arm."""
    return [(rule, arm) for arm in config.arms for rule in config.rules]


def studies(config: Config) -> list[Study]:
    """One study per (rule, arm)."""
    return [study(config, rule, arm) for rule, arm in cells(config)]


def score(val_errors: Sequence[float]) -> float:
    """A trial's validation error: the last epoch's, 1.0 if the run diverged."""
    return 1.0 if math.isnan(val_errors[-1]) else val_errors[-1]


def validation_error(config: Config, rule: str, arm: str, data, split) -> Objective:
    """The objective of a (rule, arm) trial: the final schedule from ``trial.seed`` on the training
    split, scored by the final validation error (reported each epoch for the pruner)."""
    train_index, validation_index = split

    def objective(params: dict, trial: Trial) -> TrialOutcome:
        curves = train(
            config, rule, arm, params, trial.seed,
            (data.train_x[train_index], data.train_y[train_index]),
            {"val": (data.train_x[validation_index], data.train_y[validation_index])},
            report=trial.report,
        )  # fmt: skip
        errors = curves[Key(rule, "val_error", setting=arm)]
        return TrialOutcome(
            score(errors), {"val_error": {"x": list(range(1, len(errors) + 1)), "y": errors}}
        )

    return objective


def tuned(config: Config, rule: str, arm: str, data, split, context: RunContext) -> dict:
    """The (rule, arm) study's best hyper-parameters (``context.tune``: once per context,
    trials recorded where the runner says)."""
    objective = validation_error(config, rule, arm, data, split)
    return dict(context.tune(config, study(config, rule, arm), objective).params)


def data_and_split(config: Config, context: RunContext):
    """The dataset and its (training, validation) index split, on the context's device."""
    data = context.load_dataset(config.dataset)
    device = data.train_x.device
    n_validation = round(config.validation_fraction * len(data.train_y))
    split = tuple(i.to(device) for i in validation_split(len(data.train_y), n_validation))
    return data, split


def objective(config: Config, name: str, context: RunContext) -> Objective:
    """The objective of study ``name`` (``Experiment.objective``: rebuilt anywhere)."""
    for rule, arm in cells(config):
        if study_name(rule, arm) == name:
            data, split = data_and_split(config, context)
            return validation_error(config, rule, arm, data, split)
    raise KeyError(f"{NAME} has no study {name!r}")


def tune(config: Config, context: RunContext) -> None:
    """Every (rule, arm) study (the runner calls this in the driver before the seeds)."""
    data, split = data_and_split(config, context)
    for rule, arm in cells(config):
        tuned(config, rule, arm, data, split, context)


def converged(val_errors: Sequence[float], window: int) -> bool:
    """Whether the last ``window`` epochs' mean validation error is within
    ``CONVERGENCE_TOLERANCE`` of the ``window`` before (False if there are not 2 windows)."""
    if len(val_errors) < 2 * window or any(math.isnan(e) for e in val_errors):
        return False
    last, before = val_errors[-window:], val_errors[-2 * window : -window]
    return abs(sum(last) / window - sum(before) / window) <= CONVERGENCE_TOLERANCE


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    """Train every (rule, arm) from ``seed`` with its tuned hyper-parameters."""
    data, split = data_and_split(config, context)
    train_index, validation_index = split
    diagnostic = train_index[:DIAGNOSTIC_BATCH]
    metrics: dict[Key, float] = {}
    curves: dict[Key, dict[str, list[float]]] = {}
    hyperparameters: dict[str, dict[str, float]] = {}
    context.progress.start(len(cells(config)) * config.epochs, f"{NAME} seed {seed}")
    checkpoint = _checkpoint_path(context, config, seed)
    finished = _load_cells(checkpoint)
    for rule, arm in cells(config):
        params = tuned(config, rule, arm, data, split, context)
        hyperparameters[study_name(rule, arm)] = params
        saved = finished.get((rule, arm))
        if saved is not None and saved[0] == params:
            rule_curves = saved[1]  # trained before an interruption, with these values
            context.progress.advance(config.epochs)
        else:
            rule_curves = train(
                config, rule, arm, params, seed,
                (data.train_x[train_index], data.train_y[train_index]),
                {"val": (data.train_x[validation_index], data.train_y[validation_index]),
                 "test": (data.test_x, data.test_y)},
                diagnostics=(data.train_x[diagnostic], data.train_y[diagnostic]),
                context=context,
            )  # fmt: skip
            finished[(rule, arm)] = (params, rule_curves)
            _save_cells(checkpoint, finished)
        epochs = list(range(1, config.epochs + 1))
        for key, values in rule_curves.items():
            curves[key] = {"x": epochs[: len(values)], "y": values}
            if key.metric in ("test_error", "val_error", "angle", "feedback_angle"):
                metrics[key] = values[-1]
        test_error = metrics[Key(rule, "test_error", setting=arm)]
        metrics[Key(rule, "diverged", setting=arm)] = float(math.isnan(test_error))
        val_errors = rule_curves[Key(rule, "val_error", setting=arm)]
        metrics[Key(rule, "converged", setting=arm)] = float(
            converged(val_errors, config.convergence_window)
        )
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return RunResult(metrics, curves, "epoch", hyperparameters)


def _checkpoint_path(context: RunContext, config: Config, seed: int) -> Path | None:
    """Where a seed's finished (rule, arm) trainings are kept until the seed's run is recorded,
    so an interrupted run (a seed trains 12 or more networks) resumes at its next one."""
    if context.checkpoint_dir is None:
        return None
    digest = config_hash(config_to_dict(config))[:12]
    return context.checkpoint_dir / f"credit-{config.model}-{digest}-seed-{seed}.pt"


def _load_cells(path: Path | None) -> dict:
    """``{(rule, arm): (hyper-parameters, curves)}`` saved by an interrupted run, or nothing."""
    if path is None or not path.exists():
        return {}
    return torch.load(path, weights_only=False)


def _save_cells(path: Path | None, finished: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save(finished, partial)
    partial.replace(path)  # an interrupted save leaves the last one intact


def paired_difference(runs: Sequence[RunRecord], rule: str, other: str, arm: str) -> Summary:
    """Mean and 95 % interval over seeds of ``rule``'s test error minus ``other``'s (same seed)."""
    return mean_ci(
        [
            r.metrics[Key(rule, "test_error", setting=arm)]
            - r.metrics[Key(other, "test_error", setting=arm)]
            for r in runs
        ]
    )


def verdict(records: Sequence[RunRecord]) -> Verdict:
    """The criterion of the module docstring, on the default config's runs."""
    anchors = ", ".join(f"{rule} {value} %" for rule, value in REFERENCE_ERROR.items())
    return verdict_for(Config, records, f"Bartunov 2018: {anchors}")


def verdict_for(config_cls: type[Config], records: Sequence[RunRecord], anchors: str) -> Verdict:
    """The criterion of the module docstring on the runs of ``config_cls()``, with the published
    numbers ``anchors`` beside ours (credit-lenet reuses it with its own defaults)."""
    runs = default_runs(records, config_cls)
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")
    default = config_cls()
    passed, parts = 0, []
    reversed_in = []
    for arm in default.arms:
        error = {
            rule: mean_ci([r.metrics[Key(rule, "test_error", setting=arm)] for r in runs])
            for rule in default.rules
        }
        cells = [f"BP {error['backprop'].mean * 100:.2f} %"]
        for rule, margin in MARGINS.items():
            gap = paired_difference(runs, rule, "backprop", arm)
            ok = gap.mean + gap.ci95 <= margin
            passed += ok
            cells.append(
                f"{rule.upper()} {error[rule].mean * 100:.2f} % ({rule.upper()} - BP "
                f"{gap.mean * 100:+.2f} ± {gap.ci95 * 100:.2f} points, margin "
                f"{margin * 100:.1f}: {'yes' if ok else 'no'})"
            )
        for rule in default.rules:
            if rule not in MARGINS and rule != "backprop":
                cells.append(f"{rule} {error[rule].mean * 100:.2f} %")
        order = paired_difference(runs, "fa", "dfa", arm)
        if order.mean - order.ci95 > 0:
            reversed_in.append(arm)
        parts.append(f"{arm}: " + ", ".join(cells))
    total = len(MARGINS) * len(default.arms)
    status = {total: "holds", 0: "does not hold"}.get(passed, "partly holds")
    ordering = (
        "FA <= DFA reversed (FA worse in both arms)"
        if len(reversed_in) == len(default.arms)
        else "FA <= DFA not reversed"
    )
    headline = (
        f"{'; '.join(parts)}; {ordering}; n={len(runs)} seeds, {default.epochs} epochs, "
        f"{default.trials} trials per rule and arm ({anchors})"
    )
    return Verdict(status, headline)


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    """Test error per rule, one table per config and arm, with the chosen hyper-parameters."""
    return tables_for(records, REFERENCE_ERROR, "Bartunov 2018")


def tables_for(
    records: Sequence[RunRecord], reference_error: dict[str, float], source: str
) -> list[ReportTable]:
    """:func:`tables` with another column of published numbers (``source``: per cent)."""
    result = []
    for digest, runs in finished_by_config(records).items():
        config = runs[0].config
        kind = "quick" if runs[0].quick else "full"
        for arm in config.get("arms", [None]):  # configs before the arms had none
            rows = []
            for rule in config["rules"]:
                error = mean_ci([r.metrics[Key(rule, "test_error", setting=arm)] for r in runs])
                study = study_name(rule, arm) if arm else rule
                chosen = runs[0].hyperparameters.get(study) or {
                    "lr": chosen_hyperparameter(runs[0], rule, "lr")
                }
                reference = reference_error.get(rule)
                rows.append([
                    rule,
                    error.format(scale=100, unit=" %").rsplit(" (n=", 1)[0],
                    ", ".join(f"{k} {v:.3g}" for k, v in chosen.items() if v is not None),
                    f"{reference} %" if reference is not None else "",
                ])  # fmt: skip
            result.append(
                ReportTable(
                    f"Test error, {arm or 'sgd (before the arms)'}, {kind} config {digest[:8]}, "
                    f"n={len(runs)} seeds",
                    ["rule", "test error (mean ± 95 % CI)", "tuned", source],
                    rows,
                )
            )
    return result


EXPERIMENT = Experiment(
    name=NAME,
    paper="Lillicrap 2016, Nøkland 2016, Scellier & Bengio 2017; numbers: Bartunov 2018",
    claim=(
        "Random feedback learns MNIST nearly as well as backprop: FA within 0.5 and DFA within "
        "1.5 points of BP, with Adam and with tuned SGD (Bartunov 2018: BP 1.48, FA 1.85, "
        "DFA 2.75 %)."
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
