"""tadros2022-split-mnist: sleep replay consolidation (SRC) against the standard continual-learning
baselines on class-incremental Split MNIST.

Sheet: shared/papers/sleep-replay.md, part B and its notes on the authors' code. The claim
(Tadros, Krishnan, Ramyaa & Bazhenov 2022, Nat. Commun. 13:7742): a sleep phase after each task,
in which the trained ReLU network runs as a spiking network driven by noise with a local
STDP-like rule, reduces catastrophic forgetting without replaying stored data. Class-incremental
MNIST, 5 tasks of 2 digits, accuracy on all 10 digits after the last task: sequential 19.5 %,
SRC 48.5 %, joint training 98.0 % (the sheet's figures, read second-hand).

Protocol (the authors' where they give one; see docs/experiments/tadros2022-split-mnist.md):

- Tasks (0, 1), (2, 3), ..., (8, 9). Of each task's training images, 10 % are held out for
  validation (a fixed split); the first 5,000 of the rest are trained on; the others are the
  task's extra images, never trained on.
- The same network and training for every method: 784-1200-1200-10 bias-free ReLU (the output
  too), weights uniform on +-0.01, dropout 0.25, squared error against one-hot targets, SGD lr
  0.1 momentum 0.5 (one optimiser for the whole sequence, as the authors' code), batch 100,
  2 epochs per task. The same initial network and first-task order for every method of a seed.
- Methods (``continual.methods``): sequential; joint (every training image of all tasks at
  once, 2 epochs, as the authors' ideal network); online EWC; SI; LwF; experience replay, 100
  images per class; SRC with the authors' scales (from every training image of the tasks seen,
  a quiet use of old data); ``src-running``, SRC whose input and scales come from statistics
  kept without the data (the running mean image and running per-layer maxima); SRC + replay;
  and ``src-authors``, SRC at the authors' published values, untuned.
- Tuning: one study per method with hyper-parameters (EWC and SI: their strength; LwF: strength
  and temperature; every SRC variant: the seven knobs of the authors' code, max rate,
  increment, decrement, three thresholds, alpha scale), the same number of TPE trials each,
  each trial the whole five-task sequence from its own seed, scored by the accuracy on the
  validation images of all five tasks after the last (never the test set), pruned by the
  median rule from task 3 on. Sequential, joint and replay have nothing to tune (the buffer's
  size is part of the protocol). Ranges are wide; a best value on an edge is flagged.
- The final runs: every method from each seed with its tuned values; test accuracy on every
  task's digits after each task (the accuracy matrix) and on all digits seen so far.

Verdict (fixed before the runs; at least ``MIN_SEEDS`` seeds of the default config): the paired
difference (same seed) of final accuracy on all 10 digits, tuned SRC minus sequential.

- *holds*: the lower end of its 95 % interval is above ``MARGIN`` (10 points) and SRC's mean
  lies within ``PAPER_TOLERANCE`` (10 points) of the paper's 48.5 %;
- *partly holds*: the lower end is above ``MARGIN`` but the size is off the paper's;
- *does not hold*: otherwise.

Reported beside it, not part of the status: ``src-running`` minus ``src`` (what the quiet use
of old data is worth), SRC + replay minus replay (the paper's "complementary"), and the
baselines against their published pattern (regularisation near 20 %, replay near 90 %, joint
near 98 %).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from neuroplastic.continual.methods import learn_tasks
from neuroplastic.continual.training import Protocol, accuracy, predict
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiments.base import (
    Experiment,
    ReportTable,
    RunContext,
    RunResult,
    Verdict,
    default_runs,
    finished_by_config,
)
from neuroplastic.results import Key
from neuroplastic.seeding import generator
from neuroplastic.stats import mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.tasks.split_mnist import DIGIT_PAIRS, Task, seen_so_far, split_tasks
from neuroplastic.tuning import LogUniform, Objective, Study, Trial, TrialOutcome, Uniform

NAME = "tadros2022-split-mnist"
MIN_SEEDS = 5
MARGIN = 0.10
"""How much SRC must beat sequential training (paired, lower 95 % bound) to count."""
PAPER_TOLERANCE = 0.10
"""How close to the paper's 48.5 % SRC's mean must come for the size to reproduce."""
PAPER = {"sequential": 0.195, "src": 0.485, "joint": 0.980}
"""Tadros et al. 2022, MNIST, accuracy on all 10 digits after the 5 tasks (the sheet)."""
METHODS = ("sequential", "joint", "ewc", "si", "lwf", "replay", "src", "src-running",
           "src+replay", "src-authors")  # fmt: skip
TUNED = ("ewc", "si", "lwf", "src", "src-running", "src+replay")
"""Methods with hyper-parameters to tune (the others have none, or use published values)."""
TASK_NAMES = tuple(f"digits {a}-{b}" for a, b in DIGIT_PAIRS)


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    """Images: ``mnist`` or the bundled ``mnist-mini`` (tests)."""
    methods: tuple[str, ...] = METHODS
    """Methods compared (see the module docstring)."""
    per_task: int = 5000
    """Training images per task (the first of each task's images, as the authors' code)."""
    test_per_task: int | None = None
    """Test images per task (the first of each task's digits); ``None``: all of them."""
    validation_fraction: float = 0.1
    """Share of each task's training images held out for validation (a fixed split)."""
    extra_per_task: int | None = None
    """Extra images kept per task (never trained on; the authors' SRC scales and joint network
    use them): ``None``, all of them (the authors')."""
    hidden: tuple[int, ...] = (1200, 1200)
    """Hidden widths."""
    epochs: int = 2
    """Epochs per task."""
    batch_size: int = 100
    """Images per SGD step (the authors')."""
    lr: float = 0.1
    """SGD's learning rate (the authors')."""
    momentum: float = 0.5
    """SGD's momentum, never reset across tasks (the authors')."""
    dropout: float = 0.25
    """Dropout before each hidden layer's weights (the authors')."""
    loss: Literal["squared", "cross_entropy"] = "squared"
    """The authors' squared error on the ReLU outputs, or softmax cross-entropy."""
    init: float = 0.01
    """Initial weights uniform on [-init, init]."""
    buffer_per_class: int = 100
    """Replay buffer: images kept per class (replay and SRC + replay)."""
    sleep_steps: int = 15000
    """SRC sleep length after the first task (the authors')."""
    sleep_steps_per_task: int = 5000
    """Extra SRC sleep steps for each later task (the authors')."""
    max_sleep_activity: float = 0.2
    """A sleep in which a layer's neurons fire in more than this share of the steps (over 1,000
    steps) is stopped and its trial fails: runaway activity rewrites every weight row each step
    and costs minutes (the authors' values stay below 0.001)."""
    trials: int = 12
    """Tuning trials per tuned method: the same budget for every one."""
    round_size: int = 2
    """Trials asked together (run in parallel by a multi-worker executor)."""
    startup_trials: int = 6
    """TPE's random trials before it models the scores."""
    tuning_seed: int = 0
    """Seed of the tuner and of the trials' networks, independent of the run seed."""
    split_seed: int = 0
    """Seed of the validation split (the same for every run seed)."""
    ewc_strength: tuple[float, float] = (0.1, 1e5)
    """Log range of online EWC's strength (lambda; gamma 1). Under the authors' SGD (lr 0.1) the
    penalty's own step diverges above about 2 / (lr max F), a few thousand after task 1."""
    si_strength: tuple[float, float] = (1e-3, 1e5)
    """Log range of SI's strength (c; damping xi 0.1)."""
    lwf_strength: tuple[float, float] = (1e-2, 1e3)
    """Log range of LwF's distillation weight."""
    lwf_temperature: tuple[float, float] = (1.0, 8.0)
    """Range of LwF's temperature."""
    src_max_rate: tuple[float, float] = (20.0, 2000.0)
    """Log range of SRC's input rate (Hz; authors: 239.5)."""
    src_increment: tuple[float, float] = (1e-3, 0.3)
    """Log range of SRC's increment (authors: 0.0321)."""
    src_decrement: tuple[float, float] = (1e-4, 0.03)
    """Log range of SRC's decrement (authors: 0.00334)."""
    src_threshold: tuple[float, float] = (2.0, 200.0)
    """Log range of each of SRC's three thresholds (authors: 14.55, 44.56, 38.05)."""
    src_alpha_scale: tuple[float, float] = (5.0, 500.0)
    """Log range of SRC's alpha scale (authors: 55.88)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        if not 0 < self.max_sleep_activity <= 1:
            raise ValueError(
                f"max_sleep_activity must lie in (0, 1], got {self.max_sleep_activity}"
            )
        for name in ("per_task", "epochs", "batch_size", "trials", "round_size", "sleep_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in (0, 1), got "
                             f"{self.validation_fraction}")  # fmt: skip
        if self.extra_per_task is not None and self.extra_per_task < 0:
            raise ValueError(f"extra_per_task must be None or >= 0, got {self.extra_per_task}")
        if self.test_per_task is not None and self.test_per_task < 1:
            raise ValueError(f"test_per_task must be None or >= 1, got {self.test_per_task}")
        for name in ("ewc_strength", "si_strength", "lwf_strength", "src_max_rate",
                     "src_increment", "src_decrement", "src_threshold", "src_alpha_scale"):
            low, high = getattr(self, name)
            if not 0 < low < high:
                raise ValueError(f"{name} needs 0 < low < high, got {low}, {high}")


def quick(config: Config) -> Config:
    """500 training and 500 test images per task, no extra ones, a short sleep, one trial per
    study: every method runs in seconds; nothing is learnt well or tuned."""
    return dataclasses.replace(
        config, per_task=500, extra_per_task=0, test_per_task=500, trials=1, startup_trials=1,
        sleep_steps=3000, sleep_steps_per_task=1000,
    )  # fmt: skip


def protocol(config: Config) -> Protocol:
    return Protocol(config.epochs, config.batch_size, config.lr, config.momentum,
                    config.dropout, config.loss)  # fmt: skip


def make_tasks(config: Config, context: RunContext) -> list[Task]:
    data = context.load_dataset(config.dataset)
    tasks = split_tasks(data, DIGIT_PAIRS, config.per_task, config.validation_fraction,
                        config.split_seed)  # fmt: skip
    extra, test = config.extra_per_task, config.test_per_task
    return [t._replace(extra_x=t.extra_x[:extra], extra_y=t.extra_y[:extra],
                       test_x=t.test_x[:test], test_y=t.test_y[:test]) for t in tasks]  # fmt: skip


def search_space(config: Config, method: str) -> dict[str, LogUniform | Uniform]:
    """What ``method``'s study tunes (see the module docstring)."""
    if method == "ewc":
        return {"strength": LogUniform(*config.ewc_strength)}
    if method == "si":
        return {"strength": LogUniform(*config.si_strength)}
    if method == "lwf":
        return {"strength": LogUniform(*config.lwf_strength),
                "temperature": Uniform(*config.lwf_temperature)}  # fmt: skip
    return {
        "max_rate": LogUniform(*config.src_max_rate),
        "increment": LogUniform(*config.src_increment),
        "decrement": LogUniform(*config.src_decrement),
        **{f"beta_{i}": LogUniform(*config.src_threshold) for i in (1, 2, 3)},
        "alpha_scale": LogUniform(*config.src_alpha_scale),
    }


def study(config: Config, method: str) -> Study:
    """The same budget, sampler, seeds and pruning for every tuned method."""
    return Study(
        method, search_space(config, method), trials=config.trials, seed=config.tuning_seed,
        direction="maximize", round_size=config.round_size,
        startup_trials=config.startup_trials, pruner="median", pruning_startup=2,
        pruning_warmup=3,
    )  # fmt: skip


def studies(config: Config) -> list[Study]:
    return [study(config, m) for m in config.methods if m in TUNED]


def learn(config: Config, method: str, tasks: Sequence[Task], hyper: dict, seed: int,
          evaluate) -> list[float]:  # fmt: skip
    """Run ``method`` over ``tasks`` from ``seed``; ``evaluate(model, k)`` after each task."""
    base = {"src-running": "src", "src-authors": "src"}.get(method, method)
    settings = dict(hyper)
    if base in ("replay", "src+replay"):
        settings["per_class"] = config.buffer_per_class
    if base.startswith("src"):
        settings |= {"steps": config.sleep_steps, "steps_per_task": config.sleep_steps_per_task}
    sizes = (tasks[0].train_x.shape[1], *config.hidden, 10)
    _, scores = learn_tasks(
        base, tasks, protocol(config), settings, sizes, generator(NAME, "train", seed), evaluate,
        scales="running" if method == "src-running" else "data", init=config.init,
        max_sleep_activity=config.max_sleep_activity,
    )  # fmt: skip
    return scores


def validation_accuracy(config: Config, method: str, tasks: Sequence[Task]) -> Objective:
    """A trial: the whole sequence from ``trial.seed``, scored by the accuracy on the validation
    images of all tasks after the last (reported after each task for the pruner)."""

    def objective(params: dict, trial: Trial) -> TrialOutcome:
        def evaluate(model, k):
            score = accuracy(model, *seen_so_far(tasks, k, "validation"))
            trial.report(k + 1, score)
            return score

        scores = learn(config, method, tasks, params, trial.seed, evaluate)
        curve = {"x": list(range(1, len(scores) + 1)), "y": scores}
        return TrialOutcome(scores[-1], {"validation_accuracy_seen": curve})

    return objective


def objective(config: Config, name: str, context: RunContext) -> Objective:
    """The objective of study ``name`` (``Experiment.objective``: rebuilt anywhere)."""
    if name not in TUNED or name not in config.methods:
        raise KeyError(f"{NAME} has no study {name!r}")
    return validation_accuracy(config, name, make_tasks(config, context))


def tuned(config: Config, method: str, tasks: Sequence[Task], context: RunContext) -> dict:
    if method not in TUNED:
        return {}
    found = context.tune(config, study(config, method), validation_accuracy(config, method, tasks))
    return dict(found.params)


def tune(config: Config, context: RunContext) -> None:
    """Every tuned method's study (the runner calls this in the driver before the seeds)."""
    tasks = make_tasks(config, context)
    for method in config.methods:
        tuned(config, method, tasks, context)


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    """Every method from ``seed`` with its tuned values: the accuracy matrix on the test digits."""
    tasks = make_tasks(config, context)
    test_x, test_y = seen_so_far(tasks, len(tasks) - 1, "test")
    owner = torch.cat([torch.full((len(t.test_y),), j) for j, t in enumerate(tasks)])
    metrics: dict[Key, float] = {}
    curves: dict[Key, dict[str, list[float]]] = {}
    hyperparameters: dict[str, dict] = {}
    context.progress.start(len(config.methods), f"{NAME} seed {seed}")
    for method in config.methods:
        params = tuned(config, method, tasks, context)
        if method in TUNED:
            hyperparameters[method] = params
        after: list[int] = []
        matrix: list[list[float]] = []

        def evaluate(model, k, after=after, matrix=matrix):
            correct = predict(model, test_x) == test_y  # every test image once
            after.append(k + 1)
            matrix.append([float(correct[owner == j].double().mean()) for j in range(len(tasks))])
            return float(correct[owner <= k].double().mean())

        try:
            seen = learn(config, method, tasks, params, seed, evaluate)
        except NeuroplasticError:
            # a method that diverges (or whose sleep runs away) on this seed with the values
            # tuned on another is recorded as such; the other methods' results stand
            metrics[Key(method, "diverged")] = 1.0
            metrics[Key(method, "test_accuracy")] = float("nan")
            for task_name in TASK_NAMES:
                metrics[Key(method, "test_accuracy", setting=task_name)] = float("nan")
            context.progress.advance()
            continue
        curves[Key(method, "seen_accuracy")] = {"x": after, "y": seen}
        for j, task_name in enumerate(TASK_NAMES):
            row = [matrix[i][j] for i in range(len(after))]
            curves[Key(method, "task_accuracy", setting=task_name)] = {"x": after, "y": row}
            metrics[Key(method, "test_accuracy", setting=task_name)] = row[-1]
        metrics[Key(method, "test_accuracy")] = seen[-1]
        metrics[Key(method, "diverged")] = 0.0
        context.progress.advance(accuracy=seen[-1])
    return RunResult(metrics, curves, "after task", hyperparameters)


# -- verdict and report -----------------------------------------------------------------------


def _final(runs: Sequence[RunRecord], method: str) -> list[float]:
    return [r.metrics[Key(method, "test_accuracy")] for r in runs]


def paired(runs: Sequence[RunRecord], method: str, other: str):
    """Mean and 95 % interval over seeds of ``method``'s final accuracy minus ``other``'s (seeds
    where either diverged left out)."""
    pairs = zip(_final(runs, method), _final(runs, other), strict=True)
    return mean_ci([a - b for a, b in pairs if math.isfinite(a) and math.isfinite(b)])


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _pct(summary) -> str:
    return f"{summary.mean * 100:.1f} ± {summary.ci95 * 100:.1f}"


def verdict(records: Sequence[RunRecord]) -> Verdict:
    """The criterion of the module docstring, on the default config's runs."""
    runs = default_runs(records, Config)
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")
    gain = paired(runs, "src", "sequential")
    src = mean_ci(_finite(_final(runs, "src")))
    beats = gain.mean - gain.ci95 > MARGIN
    close = abs(src.mean - PAPER["src"]) <= PAPER_TOLERANCE
    status = "holds" if beats and close else "partly holds" if beats else "does not hold"
    parts = [
        f"all 10 digits after 5 tasks: SRC {_pct(src)} %, sequential "
        f"{_pct(mean_ci(_finite(_final(runs, 'sequential'))))} %, joint "
        f"{_pct(mean_ci(_finite(_final(runs, 'joint'))))} %",
        f"SRC - sequential {_pct(gain)} points (paired; needs > {MARGIN * 100:.0f})",
    ]
    running = paired(runs, "src-running", "src")
    parts.append(f"running statistics - authors' scales {_pct(running)} points")
    parts.append(f"SRC + replay - replay {_pct(paired(runs, 'src+replay', 'replay'))} points")
    paper = ", ".join(f"{m} {v * 100:.1f} %" for m, v in PAPER.items())
    headline = (
        f"{'; '.join(parts)}; n={len(runs)} seeds, {Config().trials} trials per tuned method "
        f"(paper: {paper})"
    )
    return Verdict(status, headline)


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    """Final accuracy per method (mean ± 95 % CI), the paper's figure beside it, and the tuned
    values; one table per config."""
    out = []
    for digest, runs in finished_by_config(records).items():
        config = runs[0].config
        kind = "quick" if runs[0].quick else "full"
        rows = []
        for method in config["methods"]:
            values = _final(runs, method)
            final = mean_ci(_finite(values))
            diverged = len(values) - len(_finite(values))
            per_task = [mean_ci(_finite([r.metrics[Key(method, "test_accuracy", setting=t)]
                                         for r in runs])).mean for t in TASK_NAMES]  # fmt: skip
            chosen = runs[0].hyperparameters.get(method) or {}
            paper = PAPER.get(method)
            rows.append([
                method,
                _pct(final) + " %" + (f" ({diverged} of {len(values)} diverged)" if diverged
                                      else ""),  # fmt: skip
                " / ".join(f"{a * 100:.0f}" for a in per_task),
                f"{paper * 100:.1f} %" if paper is not None else "",
                ", ".join(f"{k} {v:.3g}" for k, v in chosen.items()),
            ])  # fmt: skip
        out.append(ReportTable(
            f"Accuracy on all 10 digits after the 5 tasks, {kind} config {digest[:8]}, "
            f"n={len(runs)} seeds",
            ["method", "all digits (mean ± 95 % CI)", "per task (0-1 / 2-3 / ... / 8-9)",
             "Tadros 2022", "tuned"],
            rows,
        ))  # fmt: skip
    return out


def plot_panel(key: Key) -> tuple[str, str] | None:
    """One panel: accuracy on the digits seen so far after each task, a line per method (the
    per-task rows are drawn as matrices by :func:`figures`)."""
    if key.metric != "seen_accuracy":
        return None
    return "test accuracy on the digits seen so far", key.method


def figures(records: Sequence[RunRecord], out_dir: Path) -> list[tuple[str, Path]]:
    """The mean accuracy matrix of each method (row: after task k; column: a task's digits)."""
    runs = [r for r in records if r.status == "finished" and not r.quick]
    runs = runs or [r for r in records if r.status == "finished"]
    if not runs:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in runs[0].config["methods"] if m != "joint"]
    columns = min(5, len(methods))
    rows = math.ceil(len(methods) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows), squeeze=False)
    n = len(TASK_NAMES)
    for ax, method in zip(axes.flat, methods, strict=False):
        matrix = torch.full((n, n), float("nan"))
        for j, task_name in enumerate(TASK_NAMES):
            key = Key(method, "task_accuracy", setting=task_name)
            rows_of = [r.curves[key]["y"] for r in runs if key in r.curves]  # (diverged: none)
            if rows_of:
                matrix[:, j] = torch.tensor(rows_of).mean(0)
        matrix = torch.where(torch.ones(n, n).tril().bool(), matrix, float("nan"))
        ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
        for i in range(n):
            for j in range(i + 1):
                ax.text(j, i, f"{matrix[i, j] * 100:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < 0.6 else "black")  # fmt: skip
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(n), [t.removeprefix("digits ") for t in TASK_NAMES], fontsize=6)
        ax.set_yticks(range(n), [f"after {i + 1}" for i in range(n)], fontsize=6)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.suptitle(f"Test accuracy (%) on each task's digits after each task, n={len(runs)} seeds",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    path = out_dir / f"{NAME}-matrices.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [("Accuracy matrices", path)]


EXPERIMENT = Experiment(
    name=NAME,
    paper="Tadros, Krishnan, Ramyaa & Bazhenov 2022, Nat. Commun. 13:7742 (sleep replay "
    "consolidation)",
    claim=(
        "A sleep phase after each task (SRC) reduces catastrophic forgetting on class-incremental "
        "Split MNIST without stored data: all-digit accuracy from 19.5 % (sequential) to 48.5 %, "
        "joint training 98 %."
    ),
    config_cls=Config,
    run=run,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS}",
    tables=tables,
    figures=figures,
    plot_panel=plot_panel,
    studies=studies,
    tune=tune,
    objective=objective,
)
