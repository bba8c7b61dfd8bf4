"""What every experiment provides, and what the runner hands it.

An experiment is one readable file (see ``mnist_backprop.py``): a ``Config`` dataclass with the
paper's defaults, a ``run(config, seed, context) -> RunResult`` function, the claim it tests, and a
``verdict`` that reads finished runs from the store and says whether the claim holds. The file ends
with an :class:`Experiment` value that the registry in ``experiments/__init__.py`` lists.

``run`` must be self-contained (a config and a seed in, a result out) so that any executor,
in-process or distributed, can call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from neuroplastic.errors import NeuroplasticError
from neuroplastic.results import Key

if TYPE_CHECKING:
    from neuroplastic.store import RunRecord
    from neuroplastic.tasks.datasets import Dataset
    from neuroplastic.tuning import (
        Batch,
        BatchObjective,
        Objective,
        Study,
        TrialRecorder,
        TuningResult,
    )


class Progress(Protocol):
    """How a run reports progress; the runner supplies a progress bar or a silent one."""

    def start(self, total: int, description: str) -> None: ...

    def advance(self, steps: int = 1, **status: float) -> None: ...


class SilentProgress:
    """Progress that shows nothing (``--quiet``, tests, remote workers)."""

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, steps: int = 1, **status: float) -> None:
        pass


@dataclass
class RunContext:
    """Everything a run needs besides its config and seed."""

    device: torch.device
    data_dir: Path | None = None
    progress: Progress = field(default_factory=SilentProgress)
    checkpoint_dir: Path | None = None
    """Where a long run may save its progress to resume after an interruption (beside the
    store); None: no checkpoints."""
    recorder_for: Callable[[Any], TrialRecorder] | None = None
    """``recorder_for(config) -> TrialRecorder``: where :meth:`tune` records the trials of a
    config. The runner binds it to the results store, so a study resumes across processes;
    None: trials are kept in memory for this context."""
    _datasets: dict[str, Dataset] = field(default_factory=dict, repr=False)
    _tuned: dict[tuple[str, str], TuningResult] = field(default_factory=dict, repr=False)
    _recorders: dict[str, TrialRecorder] = field(default_factory=dict, repr=False)

    def tune(
        self,
        config: Any,
        study: Study,
        objective: Objective | None = None,
        *,
        batch_objective: BatchObjective | None = None,
    ) -> TuningResult:
        """``study`` for ``config``, tuned by :func:`neuroplastic.tuning.tune` once per context
        (the seeds of one invocation share it); trials already recorded are not run again.

        ``objective`` (one trial at a time) or ``batch_objective`` (a round's trials at once, e.g.
        as one replica batch) must depend on nothing but ``config`` and its arguments: a study is
        known by its config and name.
        """
        from neuroplastic.config import config_to_dict
        from neuroplastic.store import config_hash
        from neuroplastic.tuning import MemoryRecorder, tune

        digest = config_hash(config_to_dict(config))
        key = (digest, study.method)
        if key not in self._tuned:
            if digest not in self._recorders:
                make = self.recorder_for
                self._recorders[digest] = make(config) if make else MemoryRecorder()
            self._tuned[key] = tune(
                study, objective, self._recorders[digest], batch_objective=batch_objective
            )
        return self._tuned[key]

    def load_dataset(self, name: str) -> Dataset:
        """The named dataset on this context's device, read from disk once per context."""
        if name not in self._datasets:
            from neuroplastic.tasks.datasets import load_dataset

            self._datasets[name] = load_dataset(name, self.data_dir, device=self.device)
        return self._datasets[name]


@dataclass
class RunResult:
    """What one seed of an experiment produced.

    ``metrics`` and ``curves`` are keyed by :class:`~neuroplastic.results.Key`
    (``Key("backprop", "test_error")``, ``Key("momentum", "test_accuracy", size=300)``), so that
    one experiment can compare several methods over named coordinates and verdicts and reports
    select values by coordinate. A curve is ``{"x": [...], "y": [...]}``.
    """

    metrics: dict[Key, float]
    curves: dict[Key, dict[str, list[float]]] = field(default_factory=dict)
    curve_x_label: str = "epoch"
    hyperparameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``{study name: chosen hyper-parameters}`` this seed trained with (from ``context.tune``),
    recorded with the run."""


@dataclass(frozen=True)
class Verdict:
    """Whether a claim holds, as the README's experiments table shows it."""

    status: str
    """``holds``, ``does not hold``, ``partly holds`` or ``not run``."""
    headline: str
    """The measured figure(s) behind the status, with n."""


@dataclass(frozen=True)
class ReportTable:
    """A table an experiment adds to its report."""

    title: str
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: a paper's claim and how to test it."""

    name: str
    paper: str
    claim: str
    config_cls: type
    run: Callable[[Any, int, RunContext], RunResult]
    verdict: Callable[[Sequence[RunRecord]], Verdict]
    quick: Callable[[Any], Any]
    """Maps a config to its ``--quick`` version: shorter training, never another dataset."""
    command: str
    """The command whose runs the verdict reads, as written in the README."""
    plot_panel: Callable[[Key], tuple[str, str] | None] | None = None
    """Optional: maps a curve's key to (panel title, line label) so related curves share a panel,
    or to None for a stored series that is not a curve to plot (e.g. an episode's moves); by
    default each metric (with its coordinates) is a panel and each method a line."""
    tables: Callable[[Sequence[RunRecord]], list[ReportTable]] | None = None
    """Optional: extra tables for the report (e.g. methods against sizes), from finished runs."""
    figures: Callable[[Sequence[RunRecord], Path], list[tuple[str, Path]]] | None = None
    """Optional: extra pictures for the report (a world, an animation, an analysis), drawn
    from finished runs into the given folder: ``[(title, path), ...]``."""
    run_batch: (
        Callable[[Any, Sequence[int], RunContext], Sequence[RunResult | NeuroplasticError]] | None
    ) = None
    """Optional: all seeds as one batched computation (a replica dimension), one outcome per seed
    in order, each equal to what ``run`` gives for that seed alone up to float rounding (a
    diverged replica is a NeuroplasticError in its place)."""
    studies: Callable[[Any], Sequence[Study]] | None = None
    """Optional, with ``tune``: the studies a config tunes (a pure function of the config), so
    that reports can rebuild their declarations (ranges, direction) from the stored config and
    flag best values on the edge of their range."""
    tune: Callable[[Any, RunContext], None] | None = None
    """Optional, for experiments that tune: run every study the config needs through
    ``context.tune`` (what ``run`` would otherwise do on its first seed). The runner calls it
    once, in the driver, before any seed starts, so the trials are recorded by the driver and
    the seeds, wherever they run, only read the finished studies."""
    objective: Callable[[Any, str, RunContext], Objective | Batch] | None = None
    """Optional, with ``studies`` and ``tune``: ``objective(config, study name, context)``
    rebuilds the objective of one of ``studies(config)`` (a :class:`~neuroplastic.tuning.Batch`
    for a batch objective) in any process, loading data through ``context``; it must be the
    objective ``tune`` gives ``context.tune`` for that study. With it, an executor of more than
    one worker runs the studies' rounds in parallel (the driver asks and records every trial),
    and ``tune`` then finds them finished."""


def finished_by_config(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Finished runs grouped by config hash, in order of first appearance."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.status == "finished":
            groups.setdefault(record.config_hash, []).append(record)
    return groups


def default_runs(records: Sequence[RunRecord], config_cls: type) -> list[RunRecord]:
    """The finished, full (not ``--quick``) runs of the default config: what a verdict reads.

    A config class may name, in a class attribute ``OPTIONS_ADDED_LATER``, fields added after
    runs were recorded whose defaults keep what the code did before them. A run that lacks only
    such fields, and recorded the default value of every other, is a run of the default config.
    (Not every added field keeps the old behaviour, so this is declared, never assumed.)

    It may also name, in ``EXECUTION_OPTIONS``, fields that choose how the same computation is
    carried out (a compiled backend equal to the reference in distribution), not what is
    computed: a run that differs from the defaults only in those is a run of the default
    config."""
    from neuroplastic.config import config_to_dict
    from neuroplastic.store import config_hash

    defaults = config_to_dict(config_cls())
    default_hash = config_hash(defaults)
    added_later = set(getattr(config_cls, "OPTIONS_ADDED_LATER", ()))
    execution = set(getattr(config_cls, "EXECUTION_OPTIONS", ()))

    def is_default(record: RunRecord) -> bool:
        if record.config_hash == default_hash:
            return True
        missing = set(defaults) - set(record.config)
        merged = {k: v for k, v in {**defaults, **record.config}.items() if k not in execution}
        wanted = {k: v for k, v in defaults.items() if k not in execution}
        return missing <= added_later and merged == wanted

    return [r for r in records if r.status == "finished" and not r.quick and is_default(r)]


def chosen_hyperparameter(record: RunRecord, study: str, name: str) -> Any:
    """The value of hyper-parameter ``name`` that ``study`` chose for ``record``, or None.

    Runs recorded before hyper-parameters had their own column (store schema 1) kept it as a
    metric, ``Key(study, "tuned_<name>")``; it is read from there for them.
    """
    if study in record.hyperparameters:
        return record.hyperparameters[study].get(name)
    return record.metrics.get(Key(study, f"tuned_{name}"))
