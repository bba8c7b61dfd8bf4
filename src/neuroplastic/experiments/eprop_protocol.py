"""The protocol the e-prop experiments share (``bellec2020-*``): BPTT against e-prop with
symmetric, random and adaptive feedback, every method on the same networks and data, with a
learning rate tuned by the one tuner on the same budget, and a verdict on paired differences.

The classification tasks (evidence accumulation, store-recall) also share their training loop:
a task gives trials, its loss (for autograd), its targets and per-step weights (for e-prop) and
its error count; an experiment gives its network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from neuroplastic.credit.eprop import EProp
from neuroplastic.errors import DivergenceError
from neuroplastic.experiments.base import (
    ReportTable,
    RunContext,
    RunResult,
    Verdict,
    default_runs,
    finished_by_config,
)
from neuroplastic.models.rsnn import RecurrentLIF
from neuroplastic.results import Key
from neuroplastic.seeding import generator
from neuroplastic.stats import mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.tuning import LogUniform, Objective, Study, Trial, TrialOutcome

METHODS = ("bptt", "eprop-symmetric", "eprop-random", "eprop-adaptive")
COUNTED = ("eprop-symmetric", "eprop-random")
"""The variants the verdicts count; adaptive feedback is reported beside them."""
MIN_SEEDS = 5


def check_config(config: Any, positive: Sequence[str]) -> None:
    """The checks every e-prop config shares: known methods, positive counts, ordered ranges."""
    unknown = sorted(set(config.methods) - set(METHODS))
    if unknown or not config.methods:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
    for name in ("lr", "feedback_decay"):
        low, high = getattr(config, name)
        if not 0 < low < high:
            raise ValueError(f"{name} must be a range 0 < low < high, got {(low, high)}")


def feedback(method: str) -> str | None:
    """e-prop's feedback for ``method`` (``None`` for BPTT)."""
    return None if method == "bptt" else method.removeprefix("eprop-")


def rule_for(
    model: RecurrentLIF, method: str, name: str, seed: int, config: Any, loss: str, steps: int
) -> EProp | None:
    """e-prop for ``method`` on ``model`` (None for BPTT): feedback drawn from the experiment
    ``name``'s stream for ``seed``, the config's rate penalty, the trial as one segment."""
    if method == "bptt":
        return None
    return EProp(
        model, feedback(method), generator(name, "feedback", seed), loss=loss,
        regularisation=config.regularisation, target_rate=config.target_rate, segment=steps,
    )  # fmt: skip


def optimizer_for(model: RecurrentLIF, rule: EProp | None, params: dict) -> torch.optim.Optimizer:
    """AdamW at the tuned rate; weight decay only for Kolen-Pollack's readout and feedback."""
    if rule is None or not rule.parameters():
        return torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=0.0)
    others = [p for name, p in model.named_parameters() if name != "w_out"]
    return torch.optim.AdamW(
        [{"params": others, "weight_decay": 0.0},
         {"params": [model.w_out, *rule.parameters()], "weight_decay": params["feedback_decay"]}],
        lr=params["lr"],
    )  # fmt: skip


def rate_penalty(spikes: Tensor, config: Any) -> Tensor:
    """``reg sum_j (rate_j - f0)^2`` from spikes ``(batch, T, n_rec)``: what ``EProp`` adds."""
    return config.regularisation * (spikes.mean((0, 1)) - config.target_rate).pow(2).sum()


def check_finite(loss: Tensor, method: str, iteration: int, seed: int, params: dict) -> None:
    if not math.isfinite(loss.item()):
        raise DivergenceError(
            f"{method}: the loss became {loss.item()} at iteration {iteration} (seed {seed})",
            hint=f"lower the learning rate (lr={params['lr']:.3g}) or its range --set lr=...",
        )


def study(config: Any, method: str) -> Study:
    """The same budget, sampler and pruning for every method."""
    space = {"lr": LogUniform(*config.lr)}
    if method == "eprop-adaptive":
        space["feedback_decay"] = LogUniform(*config.feedback_decay)
    return Study(
        method, space, trials=config.trials, seed=config.tuning_seed, round_size=2,
        startup_trials=4, pruner="median", pruning_startup=2, pruning_warmup=2,
    )  # fmt: skip


def studies(config: Any) -> list[Study]:
    return [study(config, method) for method in config.methods]


def paired_gap(runs: Sequence[RunRecord], method: str, metric: str):
    """``method - bptt`` on ``metric``, paired by seed: mean and 95 % interval."""
    return mean_ci([r.metrics[Key(method, metric)] - r.metrics[Key("bptt", metric)] for r in runs])


def verdict(
    records: Sequence[RunRecord], config_cls: type, metric: str, learnt: float, close: float,
    show: Callable[..., str], subject: str, note: str = "",
) -> Verdict:  # fmt: skip
    """The e-prop criterion on the default config's runs: (1) BPTT and symmetric e-prop each
    reach a mean ``metric`` <= ``learnt``; (2) for symmetric and for random e-prop the paired
    difference to BPTT has an upper 95 % bound <= ``close``. Holds when all three checks pass,
    partly holds when some do, does not hold when none do. ``show(value, signed=False)`` formats
    a value; ``note`` ends the headline (a reference figure)."""
    runs = default_runs(records, config_cls)
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")
    value = {m: mean_ci([r.metrics[Key(m, metric)] for r in runs]) for m in METHODS}
    is_learnt = all(value[m].mean <= learnt for m in ("bptt", "eprop-symmetric"))
    checks, parts = [is_learnt], [f"BPTT {show(value['bptt'].mean)}"]
    for method in COUNTED:
        gap = paired_gap(runs, method, metric)
        is_close = gap.mean + gap.ci95 <= close
        checks.append(is_close)
        parts.append(
            f"{method} {show(value[method].mean)} ({show(gap.mean, signed=True)} ± "
            f"{show(gap.ci95)}, margin {show(close)}: {'yes' if is_close else 'no'})"
        )
    parts.append(f"eprop-adaptive {show(value['eprop-adaptive'].mean)} (not counted)")
    status = ("holds" if all(checks) else "does not hold" if not any(checks)
              else "partly holds")  # fmt: skip
    learnt_text = "learnt" if is_learnt else f"not learnt to <= {show(learnt)}"
    headline = (f"{'; '.join(parts)}; {subject} {learnt_text}; n={len(runs)} seeds, "
                f"{config_cls().iterations} iterations{f' ({note})' if note else ''}")  # fmt: skip
    return Verdict(status, headline)


def percent(value: float, signed: bool = False) -> str:
    return f"{value * 100:+.1f}" if signed else f"{value * 100:.1f} %"


# --- classification tasks: evidence accumulation, store-recall --------------------------------


class ClassificationTask(Protocol):
    n_inputs: int

    @property
    def steps(self) -> int: ...

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(spikes (batch, T, n_inputs), labels)``."""

    def loss(self, y: Tensor, labels: Tensor) -> Tensor:
        """The task's loss from readouts ``(batch, T, n_out)``, differentiable (BPTT)."""

    def eprop_targets(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(targets, mask)`` with which ``EProp`` computes the same loss."""

    def wrong(self, y: Tensor, labels: Tensor) -> tuple[int, int]:
        """``(wrong answers, answers)``."""


@dataclass(frozen=True)
class Classification:
    """An experiment's task and network for the shared loop below."""

    name: str
    """The experiment's name (it seeds the data streams)."""
    task: ClassificationTask
    build: Callable[[Any, str, int, torch.device], tuple[RecurrentLIF, EProp | None]]
    """``(config, method, seed, device) -> (network, e-prop rule or None for BPTT)``."""


def trials(setup: Classification, config: Any, name: str, count: int, device: torch.device):
    """The fixed ``validation`` or ``test`` trials, in batches (the same for every method and
    seed)."""
    gen = generator(setup.name, name)
    batches, left = [], count
    while left > 0:
        x, labels = setup.task.sample(min(config.batch_size, left), gen)
        batches.append((x.to(device), labels.to(device)))
        left -= len(labels)
    return batches


@torch.no_grad()
def error(setup: Classification, model: RecurrentLIF, batches) -> float:
    """Share of wrong answers over ``batches``."""
    wrong = total = 0
    for x, labels in batches:
        y, _ = model(x)
        counts = setup.task.wrong(y, labels)
        wrong, total = wrong + counts[0], total + counts[1]
    return wrong / total


def train(
    setup: Classification, config: Any, method: str, params: dict, seed: int, iterations: int,
    evaluations: dict, device: torch.device, progress=None, report=None, test=None,
) -> dict[str, list[float]]:  # fmt: skip
    """Train ``method`` from ``seed`` for ``iterations`` Adam steps on fresh trials; every
    ``eval_every`` steps measure the error on each of ``evaluations`` (name -> batches).
    ``report(step, validation error)`` feeds the tuner's pruner; ``test`` batches are measured
    once, at the end (``test_error``)."""
    model, rule = setup.build(config, method, seed, device)
    optimizer = optimizer_for(model, rule, params)
    data = generator(setup.name, "train", seed)
    curves: dict[str, list[float]] = {"iteration": [], "train_loss": []}
    curves.update({f"{name}_error": [] for name in evaluations})
    for iteration in range(1, iterations + 1):
        x, labels = (t.to(device) for t in setup.task.sample(config.batch_size, data))
        optimizer.zero_grad(set_to_none=True)
        if rule is None:
            y, z = model(x)
            loss = setup.task.loss(y, labels) + rate_penalty(z, config)
            loss.backward()
        else:
            targets, mask = (t.to(device) for t in setup.task.eprop_targets(labels))
            loss = rule.backward(x, targets, mask)
        check_finite(loss, method, iteration, seed, params)
        optimizer.step()
        if progress is not None:
            progress.advance(loss=loss.item())
        if iteration % config.eval_every == 0 or iteration == iterations:
            curves["iteration"].append(iteration)
            curves["train_loss"].append(loss.item())
            for name, batches in evaluations.items():
                curves[f"{name}_error"].append(error(setup, model, batches))
            if report is not None:
                report(iteration // config.eval_every, curves["validation_error"][-1])
    if test is not None:
        curves["test_error"] = [error(setup, model, test)]
    return curves


def objective(setup: Classification, config: Any, method: str, context: RunContext) -> Objective:
    """A trial: ``tune_iterations`` steps from the trial's seed, scored by the final validation
    error (reported at every evaluation for the pruner)."""
    validation = trials(setup, config, "validation", config.validation_trials, context.device)

    def evaluate(params: dict, trial: Trial) -> TrialOutcome:
        curves = train(setup, config, method, params, trial.seed, config.tune_iterations,
                       {"validation": validation}, context.device, report=trial.report)  # fmt: skip
        values = curves["validation_error"]
        return TrialOutcome(values[-1], {"val_error": {"x": curves["iteration"], "y": values}})

    return evaluate


def tune(setup: Classification, config: Any, context: RunContext) -> None:
    for method in config.methods:
        context.tune(config, study(config, method), objective(setup, config, method, context))


def run(setup: Classification, config: Any, seed: int, context: RunContext) -> RunResult:
    """Every method from ``seed`` with its tuned hyper-parameters: test error, the validation
    curve, and the iterations to ``config.target_error`` on validation."""
    device = context.device
    evaluations = {"validation": trials(setup, config, "validation", config.validation_trials,
                                        device)}  # fmt: skip
    test = trials(setup, config, "test", config.test_trials, device)
    metrics: dict[Key, float] = {}
    curves: dict[Key, dict[str, list[float]]] = {}
    chosen: dict[str, dict] = {}
    context.progress.start(len(config.methods) * config.iterations, f"{setup.name} seed {seed}")
    for method in config.methods:
        params = dict(context.tune(config, study(config, method),
                                   objective(setup, config, method, context)).params)  # fmt: skip
        chosen[method] = params
        result = train(setup, config, method, params, seed, config.iterations, evaluations,
                       device, progress=context.progress, test=test)  # fmt: skip
        x = result.pop("iteration")
        metrics[Key(method, "test_error")] = result.pop("test_error")[0]
        for name, values in result.items():
            curves[Key(method, name)] = {"x": x, "y": values}
        metrics[Key(method, "validation_error")] = result["validation_error"][-1]
        reached = [i for i, e in zip(x, result["validation_error"], strict=True)
                   if e < config.target_error]  # fmt: skip
        metrics[Key(method, "reached_target")] = float(bool(reached))
        metrics[Key(method, "iterations_to_target")] = float(reached[0] if reached else x[-1])
    return RunResult(metrics, curves, "iteration", chosen)


def error_tables(records: Sequence[RunRecord], title: str, target: str) -> list[ReportTable]:
    """Test error, paired difference to BPTT, iterations to the target and the tuned values, per
    config."""
    result = []
    for digest, runs in finished_by_config(records).items():
        methods = runs[0].config.get("methods", METHODS)
        rows = []
        for method in methods:
            test = mean_ci([r.metrics[Key(method, "test_error")] for r in runs])
            to_target = mean_ci([r.metrics[Key(method, "iterations_to_target")] for r in runs])
            reached = sum(r.metrics[Key(method, "reached_target")] for r in runs)
            gap = ""
            if method != "bptt" and "bptt" in methods:
                difference = paired_gap(runs, method, "test_error")
                gap = f"{difference.mean * 100:+.1f}"
                if len(runs) > 1:  # one seed has no interval
                    gap += f" ± {difference.ci95 * 100:.1f}"
            tuned = runs[0].hyperparameters.get(method, {})
            rows.append([
                method, test.format(scale=100, unit=" %").rsplit(" (n=", 1)[0], gap,
                f"{to_target.mean:.0f} ({reached:.0f}/{len(runs)} reached)",
                ", ".join(f"{k}={v:.3g}" for k, v in tuned.items()),
            ])  # fmt: skip
        kind = "quick" if runs[0].quick else "full"
        result.append(ReportTable(
            f"{title}, {kind} config {digest[:8]}, n={len(runs)} seeds",
            ["method", "test error (mean ± 95 % CI)", "- BPTT (points, paired)",
             f"iterations to {target} validation error", "tuned"],
            rows,
        ))  # fmt: skip
    return result
