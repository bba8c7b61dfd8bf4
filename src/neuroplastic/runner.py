"""Runs an experiment over seeds and records every run in the store.

The unit of work is a :class:`~neuroplastic.executors.RunSpec`: an experiment name, a config as
plain data, its seeds and the config's finished tuning trials, which is all a worker needs to
reproduce the runs anywhere. Specs go through an executor (``neuroplastic.executors``): in this
process (the default; specs share loaded datasets), a local process pool, or Ray.

Recording is the driver's job, never the worker's: tuning (``Experiment.tune``) runs here, before
any seed, recording its trials (with an executor of several workers and an
``Experiment.objective``, :func:`tune_through` first hands the studies' rounds to the workers as
one :class:`~neuroplastic.executors.TuneSpec` each, the driver asking and recording each
trial); a run is written as ``running`` when its spec is handed out and
turned ``finished`` in one transaction with its metrics when the outcome comes back, so Ctrl-C, a
killed worker or ``kill -9`` of the driver can cost the runs in flight but never a finished seed,
and ``--resume`` skips what is finished.
"""

from __future__ import annotations

import subprocess
import traceback
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import neuroplastic
from neuroplastic.config import config_to_dict
from neuroplastic.errors import ConfigError, NeuroplasticError
from neuroplastic.executors import (
    Executor,
    InProcessExecutor,
    Outcome,
    RunSpec,
    TuneSpec,
    WorkerLost,
    execute,
)
from neuroplastic.experiments.base import (
    Experiment,
    Progress,
    RunContext,
    SilentProgress,
)
from neuroplastic.store import RunRecord, Store, config_hash
from neuroplastic.tasks.datasets import DATASETS
from neuroplastic.tuning import Trial, ask, pending_round, record_outcome

__all__ = [
    "Executor",
    "InProcessExecutor",
    "Outcome",
    "RunOutcome",
    "RunSpec",
    "StoreRecorder",
    "execute",
    "run_experiment",
]


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


REPLICA_BATCH = 10
"""Seeds of an experiment with a ``run_batch`` train together in replica batches of the seeds
that share ``seed // REPLICA_BATCH``, whatever executor runs them: a batched computation is not
invariant to its batch in the last bit (and in a chaotic cell that bit can grow into points of
accuracy), so fixing the batches by seed, not by the number of workers, keeps a seed's metrics the
same in process, in a pool and on Ray."""


def replica_batches(seeds: Sequence[int]) -> list[tuple[int, ...]]:
    """``seeds`` grouped by ``seed // REPLICA_BATCH``, in order of first appearance."""
    batches: dict[int, list[int]] = {}
    for seed in seeds:
        batches.setdefault(seed // REPLICA_BATCH, []).append(seed)
    return [tuple(batch) for batch in batches.values()]


def shipped_trials(store: Store, experiment: str, digests: Sequence[str]) -> tuple[dict, ...]:
    """The finished and failed trials of these configs, as plain data for a :class:`RunSpec`."""
    return tuple(
        {
            "config_hash": t.config_hash,
            "method": t.method,
            "number": t.number,
            "params": t.params,
            "seed": t.seed,
            "status": t.status,
            "value": t.value,
            "curves": t.curves,
        }  # fmt: skip
        for digest in dict.fromkeys(digests)
        for t in store.trials(experiment, digest)
        if t.status in ("finished", "failed")
    )


def tune_through(
    executor: Executor,
    experiment: Experiment,
    config: Any,
    context: RunContext,
    recorder: StoreRecorder,
) -> None:
    """Every study of ``config`` through ``executor``, the studies in parallel and each study's
    rounds in order: a wave holds the next unfinished round of every study. The driver asks each
    round (its hyper-parameters depend on earlier rounds only), records its trials ``running``
    as the round is handed out, and finished or failed when its outcomes come back; a round
    whose worker died is marked interrupted and handed out again (new trial rows); exhausted
    retries or any exception mark the trials in flight interrupted and stop the command."""
    config_dict = config_to_dict(config)
    studies = {study.method: study for study in experiment.studies(config)}
    finished = {name: {t.number: t for t in recorder.finished_trials(name)} for name in studies}
    started: dict[int, list[tuple[int, Trial]]] = {}  # id(spec) -> (trial id, trial)

    def on_start(spec: Any) -> None:
        started[id(spec)] = [
            (recorder.start_trial(spec.study, n, params, seed), Trial(n, params, seed, "running"))
            for n, params, seed in spec.trials
        ]

    def on_lost(spec: Any, reason: str) -> None:
        for trial_id, _ in started.pop(id(spec), []):
            recorder.mark_trial(trial_id, "interrupted", f"worker lost: {reason}")

    waves = 0
    try:
        while True:
            specs = []
            for name, study in studies.items():
                numbers = pending_round(study, finished[name])
                if numbers:
                    asked = ask(study, finished[name], numbers)
                    trials = tuple((t.number, t.params, t.seed) for t in asked)
                    pruning = asked[0].pruning  # one round: one reference
                    specs.append(TuneSpec(experiment.name, config_dict, name, trials, pruning))
            if not specs:
                return
            if waves == 0:
                context.progress.start(
                    len(specs), f"{experiment.name} tuning ({executor.parallelism} workers)"
                )
            waves += 1
            with closing(iter(executor.map(specs, context, on_start, on_lost))) as results_of:
                for spec, outcomes in results_of:
                    lost = next((o for o in outcomes if isinstance(o, WorkerLost)), None)
                    if lost is not None:
                        started.pop(id(spec), None)
                        raise lost
                    for (trial_id, running), outcome in zip(
                        started.pop(id(spec)), outcomes, strict=True
                    ):
                        trial = record_outcome(recorder, trial_id, running, outcome)
                        finished[spec.study][trial.number] = trial
                    if waves == 1:
                        context.progress.advance()
    except BaseException as error:
        for trials in started.values():
            for trial_id, _ in trials:
                recorder.mark_trial(trial_id, "interrupted", f"{type(error).__name__}: {error}")
        raise


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
    leaves the store untouched. ``experiment.tune``, if declared, runs here first and records its
    trials; the seeds then go through ``executor`` (default: in process). A run that raises a
    NeuroplasticError (e.g. divergence) is recorded as failed and the other seeds go on; a run
    whose worker died is marked interrupted and retried by the executor; Ctrl-C marks the runs in
    flight as interrupted.
    """
    executor = executor if executor is not None else InProcessExecutor()
    in_process = isinstance(executor, InProcessExecutor)
    if quick:
        config = experiment.quick(config)
    progress = progress or SilentProgress()
    context = RunContext(
        device=resolve_device(device),
        data_dir=Path(data_dir) if data_dir is not None else None,
        progress=progress,  # the driver's tuning reports here; workers are silent
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

    revision = git_revision()
    in_flight: dict[int, int] = {}  # seed -> run id
    tuned_digests: list[str] = []  # the configs whose trials the seeds read

    def recorder_for(tuned_config: Any) -> StoreRecorder:
        tuned = config_to_dict(tuned_config)
        tuned_digests.append(config_hash(tuned))
        return StoreRecorder(store, experiment.name, tuned, quick, dataset,
                             str(context.device), revision)  # fmt: skip

    context.recorder_for = recorder_for

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

    def on_lost(spec: RunSpec, reason: str) -> None:
        for seed in spec.seeds:
            if seed in in_flight:
                store.mark_run(in_flight.pop(seed), "interrupted", f"worker lost: {reason}")

    try:
        if todo and experiment.tune is not None:
            if experiment.objective is not None and executor.parallelism > 1:
                tune_through(executor, experiment, config, context, recorder_for(config))
            experiment.tune(config, context)  # in the driver: trials recorded before any seed
        trials = () if in_process else shipped_trials(store, experiment.name, tuned_digests)
        if not todo:
            specs = []
        elif experiment.run_batch is not None:  # the same replica batches on every executor
            specs = [RunSpec(experiment.name, config_dict, batch, trials)
                     for batch in replica_batches(todo)]  # fmt: skip
        else:
            specs = [RunSpec(experiment.name, config_dict, (seed,), trials) for seed in todo]
        if not in_process and specs:
            progress.start(len(todo), f"{experiment.name} ({executor.parallelism} workers)")
        with closing(iter(executor.map(specs, context, on_start, on_lost))) as results_of:
            for spec, results in results_of:
                for seed, result in zip(spec.seeds, results, strict=True):
                    run_id = in_flight.pop(seed, None)
                    if isinstance(result, NeuroplasticError):
                        if run_id is not None:
                            status = "interrupted" if isinstance(result, WorkerLost) else "failed"
                            store.mark_run(run_id, status, str(result))
                        outcome.failures.append((seed, str(result)))
                    else:
                        store.finish_run(run_id, result.metrics, result.curves,
                                         result.curve_x_label, result.hyperparameters)  # fmt: skip
                        record_ids[seed] = run_id
                if not in_process:
                    progress.advance(len(spec.seeds))
    except KeyboardInterrupt:
        for run_id in in_flight.values():
            store.mark_run(run_id, "interrupted", "interrupted (Ctrl-C or SIGTERM)")
        raise
    except Exception:
        for run_id in in_flight.values():
            store.mark_run(run_id, "failed", traceback.format_exc())
        raise
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()

    outcome.records = [store.get(record_ids[seed]) for seed in seeds if seed in record_ids]
    return outcome
