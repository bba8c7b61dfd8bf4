"""Runs an experiment over seeds and records every run in the store.

The unit of work is a :class:`RunSpec`: an experiment name, a config as plain data and its seeds,
which is all a worker needs to reproduce the runs anywhere. Specs go through an executor; the
in-process one runs them in order and shares loaded datasets between them. A distributed executor
(Ray) only has to implement the same ``map``.

Recording is the driver's job, never the worker's: a run is written as ``running`` when it starts
and turned ``finished`` in one transaction with its metrics, so Ctrl-C or ``kill -9`` can cost the
run in flight but never a finished seed, and ``--resume`` skips what is finished.
"""

from __future__ import annotations

import subprocess
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

import neuroplastic
from neuroplastic.config import config_from_dict, config_to_dict
from neuroplastic.errors import ConfigError, NeuroplasticError
from neuroplastic.experiments import get_experiment
from neuroplastic.experiments.base import (
    Experiment,
    Progress,
    RunContext,
    RunResult,
    SilentProgress,
)
from neuroplastic.store import RunRecord, Store, config_hash
from neuroplastic.tasks.datasets import DATASETS
from neuroplastic.tuning import Trial


@dataclass(frozen=True)
class RunSpec:
    """Self-contained work: everything a worker needs, as plain data.

    One seed for most experiments; all the requested seeds at once for experiments with a
    ``run_batch`` (replicas simulated as one batched computation).
    """

    experiment: str
    config: dict[str, Any]
    seeds: tuple[int, ...]


Outcome = RunResult | NeuroplasticError
"""A run's result, or the NeuroplasticError (e.g. divergence) that ended it."""


def execute(spec: RunSpec, context: RunContext) -> list[Outcome]:
    """Run a spec: look the experiment up, rebuild its config, one outcome per seed."""
    experiment = get_experiment(spec.experiment)
    config = config_from_dict(experiment.config_cls, spec.config)
    if experiment.run_batch is not None:
        try:
            return list(experiment.run_batch(config, spec.seeds, context))
        except NeuroplasticError as error:
            return [error] * len(spec.seeds)
    outcomes: list[Outcome] = []
    for seed in spec.seeds:
        try:
            outcomes.append(experiment.run(config, seed, context))
        except NeuroplasticError as error:
            outcomes.append(error)
    return outcomes


class Executor(Protocol):
    """Runs specs and yields each with one outcome per seed, in the spec's seed order.

    ``on_start`` is called as each spec starts. Errors that are bugs, and KeyboardInterrupt,
    propagate to the caller.
    """

    def map(
        self,
        specs: Sequence[RunSpec],
        context: RunContext,
        on_start: Callable[[RunSpec], None],
    ) -> Iterator[tuple[RunSpec, list[Outcome]]]: ...


class InProcessExecutor:
    """Runs specs one after another in this process."""

    def map(
        self,
        specs: Sequence[RunSpec],
        context: RunContext,
        on_start: Callable[[RunSpec], None],
    ) -> Iterator[tuple[RunSpec, list[Outcome]]]:
        for spec in specs:
            on_start(spec)
            yield spec, execute(spec, context)


@dataclass(frozen=True)
class StoreRecorder:
    """The tuning trials of one experiment and config, recorded in the results store (the
    :class:`~neuroplastic.tuning.TrialRecorder` the runner gives experiments), with the same
    provenance as its runs."""

    store: Store
    experiment: str
    config: dict[str, Any]
    quick: bool
    dataset: str
    device: str
    git_rev: str | None

    def finished_trials(self, method: str) -> list[Trial]:
        """The study's finished and failed trials; the latest record of a number wins."""
        latest: dict[int, Trial] = {}
        for record in self.store.trials(self.experiment, config_hash(self.config), method):
            if record.status in ("finished", "failed"):
                latest[record.number] = Trial(
                    record.number, record.params, record.seed, record.status, record.value,
                    record.curves,
                )  # fmt: skip
        return [latest[number] for number in sorted(latest)]

    def start_trial(self, method: str, number: int, params: dict, seed: int) -> int:
        return self.store.start_trial(
            experiment=self.experiment, config=self.config, method=method, number=number,
            params=params, seed=seed, quick=self.quick, dataset=self.dataset, device=self.device,
            version=neuroplastic.__version__, git_rev=self.git_rev,
        )  # fmt: skip

    def finish_trial(self, trial_id: int, value: float, curves: dict) -> None:
        self.store.finish_trial(trial_id, value, curves)

    def mark_trial(self, trial_id: int, status: str, error: str | None = None) -> None:
        self.store.mark_trial(trial_id, status, error)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; CUDA asked for but absent is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name} was asked for but PyTorch sees no CUDA device",
            hint="use --device cpu (or auto), or install a CUDA build of PyTorch",
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"unknown device '{name}'", hint="use --device auto, cpu or cuda"
        ) from None


def git_revision() -> str | None:
    """The commit the library was run from (``+dirty`` if modified), or None outside a checkout."""
    source_dir = Path(neuroplastic.__file__).parent
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return revision + ("+dirty" if changes else "")


@dataclass
class RunOutcome:
    """What ``run_experiment`` did: every record for the requested seeds, and what failed."""

    records: list[RunRecord]
    """Finished records of the requested seeds, in seed order (resumed ones included)."""
    skipped_seeds: list[int] = field(default_factory=list)
    """Seeds already finished for this config and skipped because of ``resume``."""
    failures: list[tuple[int, str]] = field(default_factory=list)
    """(seed, error message) of runs that failed."""
    config: Any = None
    """The config that ran (after ``--quick``)."""


def run_experiment(
    experiment: Experiment,
    config: Any,
    seeds: Sequence[int],
    store: Store,
    *,
    device: str = "auto",
    data_dir: str | Path | None = None,
    quick: bool = False,
    resume: bool = False,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> RunOutcome:
    """Run ``experiment`` once per seed and record each run in ``store``.

    The dataset is loaded (and verified) before anything is recorded, so a missing or corrupt file
    leaves the store untouched. A run that raises a NeuroplasticError (e.g. divergence) is recorded
    as failed and the other seeds go on; Ctrl-C marks the run in flight as interrupted.
    """
    if quick:
        config = experiment.quick(config)
    context = RunContext(
        device=resolve_device(device),
        data_dir=Path(data_dir) if data_dir is not None else None,
        progress=progress or SilentProgress(),
        checkpoint_dir=store.path.parent / f"{store.path.stem}-checkpoints",
    )
    dataset = getattr(config, "dataset", "none")
    if dataset in DATASETS:
        context.load_dataset(dataset)

    config_dict = config_to_dict(config)
    digest = config_hash(config_dict)
    finished = store.finished_seeds(experiment.name, digest) if resume else {}
    outcome = RunOutcome(records=[], config=config)
    outcome.skipped_seeds = [seed for seed in seeds if seed in finished]
    record_ids = {seed: finished[seed] for seed in outcome.skipped_seeds}
    todo = tuple(seed for seed in seeds if seed not in finished)
    if experiment.run_batch is not None:
        specs = [RunSpec(experiment.name, config_dict, todo)] if todo else []
    else:
        specs = [RunSpec(experiment.name, config_dict, (seed,)) for seed in todo]

    revision = git_revision()
    in_flight: dict[int, int] = {}  # seed -> run id
    context.recorder_for = lambda tuned_config: StoreRecorder(
        store, experiment.name, config_to_dict(tuned_config), quick, dataset,
        str(context.device), revision,
    )  # fmt: skip

    def on_start(spec: RunSpec) -> None:
        for seed in spec.seeds:
            in_flight[seed] = store.start_run(
                experiment=experiment.name,
                config=config_dict,
                seed=seed,
                quick=quick,
                dataset=dataset,
                device=str(context.device),
                version=neuroplastic.__version__,
                git_rev=revision,
            )

    if specs and experiment.tune is not None:
        experiment.tune(config, context)  # in the driver: trials recorded before any seed runs
    try:
        for spec, results in (executor or InProcessExecutor()).map(specs, context, on_start):
            for seed, result in zip(spec.seeds, results, strict=True):
                run_id = in_flight.pop(seed)
                if isinstance(result, NeuroplasticError):
                    store.mark_run(run_id, "failed", str(result))
                    outcome.failures.append((seed, str(result)))
                else:
                    store.finish_run(run_id, result.metrics, result.curves,
                                     result.curve_x_label, result.hyperparameters)  # fmt: skip
                    record_ids[seed] = run_id
    except KeyboardInterrupt:
        for run_id in in_flight.values():
            store.mark_run(run_id, "interrupted", "interrupted (Ctrl-C or SIGTERM)")
        raise
    except Exception:
        for run_id in in_flight.values():
            store.mark_run(run_id, "failed", traceback.format_exc())
        raise

    outcome.records = [store.get(record_ids[seed]) for seed in seeds if seed in record_ids]
    return outcome
