"""The one tuner: every method gets the same trial budget, every trial is recorded, studies resume.

An experiment declares, per method, a :class:`Study` (a search space, a number of trials, a
sampler) and an objective ``(params, trial) -> validation score`` that trains on the training split
and scores on validation data carved from it, never the test set. :func:`tune` asks Optuna for
hyper-parameters, runs the objective and records each trial through a :class:`TrialRecorder` (the
results store, or memory), so that a study stopped by Ctrl-C or ``kill -9`` resumes without
repeating a finished trial.

Determinism, whatever stopped or ran the study. Trials are asked in *rounds* of
``Study.round_size``: the hyper-parameters of trial ``k`` are a function of the study's seed, of
``k`` and of the trials of the rounds before ``k``'s round only, computed by a fresh Optuna study
with a sampler seeded for trial ``k`` and the earlier trials replayed into it. So

* a resumed study asks exactly what an uninterrupted one would have asked;
* the trials of one round are independent of each other and can run in parallel (an executor, a
  replica batch) without changing any result.

Samplers: ``"tpe"`` (Optuna's TPE, the default; its first ``startup_trials`` are random),
``"random"`` and ``"grid"`` (every dimension a :class:`Choice`; the grid's points are visited in
an order shuffled by the seed, one per trial, so a budget smaller than the grid is a random subset).

Pruning (optional, ``Study(pruner="median")``): an objective that calls ``trial.report(step,
score)`` after each epoch is stopped (:class:`TrialPruned`, recorded as a failed trial) when
Optuna's ``MedianPruner`` finds its score at that step worse than the median of the finished
trials *of the earlier rounds* at the same step. Like the sampler, the decision depends only on
earlier rounds, so pruning keeps resumed and parallel studies identical to sequential ones. The
reported scores are recorded with the trial as its ``"reported"`` curve.

A best value in the outer ``EDGE_FRACTION`` of a range (or at the end of an ordered grid) is
flagged in :attr:`TuningResult.on_edge`: the range was too narrow, and a verdict resting on that
method's result should say so.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any, Protocol

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from neuroplastic.errors import DivergenceError, NeuroplasticError
from neuroplastic.seeding import derive_seed

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = (None, "median")
REPORTED = "reported"
"""The curve a trial's reported intermediate scores are recorded under."""
DIRECTIONS = ("minimize", "maximize")
EDGE_FRACTION = 0.05
"""A best value within this fraction of a range's width from either end (in log space for log
ranges) counts as on the edge."""


# -- search spaces ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LogUniform:
    """A positive float, sampled uniformly in log space over ``[low, high]`` (learning rates)."""

    low: float
    high: float

    def __post_init__(self):
        if not (0 < self.low < self.high and math.isfinite(self.high)):
            raise ValueError(f"LogUniform needs 0 < low < high < inf, got {self.low}, {self.high}")


@dataclass(frozen=True)
class Uniform:
    """A float, sampled uniformly over ``[low, high]``."""

    low: float
    high: float

    def __post_init__(self):
        if not (self.low < self.high and math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"Uniform needs finite low < high, got {self.low}, {self.high}")


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]`` (both included), uniform or log-uniform."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self):
        if not self.low < self.high or (self.log and self.low < 1):
            raise ValueError(f"IntRange needs low < high (and low >= 1 if log), got {self}")


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (numbers, strings or booleans). Numeric values count as ordered for the
    edge check; a :class:`Study` with ``sampler="grid"`` takes its grid from its Choices."""

    values: tuple

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) < 1 or len(set(self.values)) != len(self.values):
            raise ValueError(f"Choice needs distinct values, got {self.values}")


Dimension = LogUniform | Uniform | IntRange | Choice


def _distribution(dimension: Dimension) -> BaseDistribution:
    if isinstance(dimension, LogUniform):
        return FloatDistribution(dimension.low, dimension.high, log=True)
    if isinstance(dimension, Uniform):
        return FloatDistribution(dimension.low, dimension.high)
    if isinstance(dimension, IntRange):
        return IntDistribution(dimension.low, dimension.high, log=dimension.log)
    if isinstance(dimension, Choice):
        return CategoricalDistribution(dimension.values)
    raise TypeError(f"not a search-space dimension: {dimension!r}")


@dataclass(frozen=True)
class Study:
    """What to tune for one method, and how.

    Args:
        method: the method's name (a study is identified by experiment, config and method).
        space: ``{hyper-parameter: dimension}``.
        trials: the budget; every method of an experiment should get the same.
        sampler: ``"tpe"`` (default), ``"random"`` or ``"grid"``.
        seed: the study's seed (the sampler's draws; not the trials' training seeds).
        direction: ``"minimize"`` (an error, default) or ``"maximize"`` (an accuracy).
        round_size: trials asked together (see the module docstring). Part of the protocol:
            changing it changes which hyper-parameters are tried.
        startup_trials: TPE's random trials before it models the scores.
        training_seed: the seed a trial trains from, handed to the objective as ``trial.seed``
            and recorded with the trial: ``None`` (default) derives one per trial number (the
            same for every method: paired); an int fixes one for every trial (every value
            trained from the same networks and data, as a paired grid does); a callable
            ``(number, params) -> seed`` anything else. Not part of the study's identity.
        pruner: ``None`` (default: every trial runs to the end) or ``"median"`` (see the module
            docstring); only objectives that call ``trial.report`` are pruned.
        pruning_startup: finished trials of earlier rounds needed before any trial is pruned.
        pruning_warmup: a trial is never pruned at a reported step below this (Optuna's
            ``n_warmup_steps``; with epochs numbered from 1, the default 2 never prunes on the
            first epoch alone).
    """

    method: str
    space: Mapping[str, Dimension]
    trials: int
    sampler: str = "tpe"
    seed: int = 0
    direction: str = "minimize"
    round_size: int = 4
    startup_trials: int = 8
    training_seed: int | Callable[[int, dict[str, Any]], int] | None = field(
        default=None, compare=False
    )
    pruner: str | None = None
    pruning_startup: int = 4
    pruning_warmup: int = 2

    def __post_init__(self):
        if not self.space:
            raise ValueError(f"study {self.method!r}: the search space is empty")
        for name, dimension in self.space.items():
            _distribution(dimension)  # type check, with a clear error
            if not isinstance(name, str):
                raise TypeError(f"hyper-parameter names are strings, got {name!r}")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ValueError(f"trials must be a positive integer, got {self.trials!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.round_size < 1 or self.startup_trials < 0:
            raise ValueError("round_size must be >= 1 and startup_trials >= 0")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {PRUNERS}, got {self.pruner!r}")
        if self.pruning_startup < 1 or self.pruning_warmup < 0:
            raise ValueError("pruning_startup must be >= 1 and pruning_warmup >= 0")
        if self.sampler == "grid":
            if not all(isinstance(d, Choice) for d in self.space.values()):
                raise ValueError("sampler='grid' needs every dimension to be a Choice")
            size = math.prod(len(d.values) for d in self.space.values())
            if self.trials > size:
                raise ValueError(f"{self.trials} trials asked of a grid of {size} points")


# -- trials and their record ------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One trial as the tuner sees it."""

    number: int
    params: dict[str, Any]
    seed: int
    """The trial's training seed (derived from the study's seed and the trial's number)."""
    status: str = "finished"
    """``finished`` or ``failed`` (the objective raised a NeuroplasticError, e.g. divergence)."""
    value: float | None = None
    curves: dict = field(default_factory=dict)
    pruning: MedianPruning | None = field(default=None, compare=False, repr=False)
    """Decides whether to stop this trial from what it reported (None: never)."""
    reported: list[tuple[int, float]] = field(default_factory=list, compare=False, repr=False)
    """The (step, score) pairs the objective reported, in order."""

    def report(self, step: int, score: float) -> None:
        """Report the validation score after ``step`` (e.g. an epoch). Raises
        :class:`TrialPruned` when the study's pruner stops the trial here; the objective should
        let it propagate."""
        self.reported.append((int(step), float(score)))
        if self.pruning is not None and self.pruning.should_prune(self.reported):
            raise TrialPruned(
                f"pruned after step {step}: score {score:.4g} is worse than the median of the "
                "earlier rounds' trials at that step (it counts against the budget)"
            )


class TrialPruned(NeuroplasticError):
    """The study's pruner stopped a trial (recorded as failed, with this message)."""


@dataclass(frozen=True)
class MedianPruning:
    """Optuna's ``MedianPruner`` against the reported curves of earlier rounds' finished trials.

    Plain data (picklable), so a worker process can decide as the driver would.
    """

    direction: str
    startup: int
    warmup: int
    reference: tuple[tuple[tuple[int, float], ...], ...]
    """The (step, score) curves of the earlier rounds' finished trials."""

    def should_prune(self, reported: Sequence[tuple[int, float]]) -> bool:
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=self.startup, n_warmup_steps=self.warmup
        )
        study = optuna.create_study(direction=self.direction, pruner=pruner)
        for curve in self.reference:
            study.add_trial(
                optuna.trial.create_trial(
                    value=curve[-1][1], intermediate_values=dict(curve), params={},
                    distributions={},
                )
            )  # fmt: skip
        trial = study.ask()
        for step, score in reported:
            trial.report(score, step)
        return trial.should_prune()


def pruning_for(study: Study, earlier: Sequence[Trial]) -> MedianPruning | None:
    """How the trials of the round after ``earlier`` are pruned (None: ``study.pruner`` is
    None)."""
    if study.pruner is None:
        return None
    reference = tuple(
        tuple(zip(t.curves[REPORTED]["x"], t.curves[REPORTED]["y"], strict=True))
        for t in earlier
        if t.status == "finished" and t.curves.get(REPORTED, {}).get("x")
    )
    return MedianPruning(study.direction, study.pruning_startup, study.pruning_warmup, reference)


def with_reports(outcome: Any, trial: Trial) -> Any:
    """``outcome`` with the scores ``trial`` reported added as its ``"reported"`` curve."""
    if isinstance(outcome, NeuroplasticError) or not trial.reported:
        return outcome
    if not isinstance(outcome, TrialOutcome):
        outcome = TrialOutcome(float(outcome))
    steps, scores = zip(*trial.reported, strict=True)
    reported = {"x": list(steps), "y": list(scores)}
    return TrialOutcome(outcome.value, {**outcome.curves, REPORTED: reported})


@dataclass(frozen=True)
class TrialOutcome:
    """What an objective returns: the validation score and, optionally, learning curves."""

    value: float
    curves: dict = field(default_factory=dict)


class TrialRecorder(Protocol):
    """Where trials are recorded. ``finished_trials`` returns the study's finished and failed
    trials (the others, interrupted ones included, are run again)."""

    def finished_trials(self, method: str) -> list[Trial]: ...

    def start_trial(self, method: str, number: int, params: dict, seed: int) -> int: ...

    def finish_trial(self, trial_id: int, value: float, curves: dict) -> None: ...

    def mark_trial(self, trial_id: int, status: str, error: str | None = None) -> None: ...


class MemoryRecorder:
    """Trials kept in this process only (library use without a store, tests)."""

    def __init__(self):
        self._trials: dict[int, tuple[str, Trial]] = {}

    def finished_trials(self, method: str) -> list[Trial]:
        return sorted(
            (t for m, t in self._trials.values() if m == method and t.status != "running"),
            key=lambda t: t.number,
        )

    def start_trial(self, method: str, number: int, params: dict, seed: int) -> int:
        trial_id = len(self._trials)
        self._trials[trial_id] = (method, Trial(number, dict(params), seed, "running"))
        return trial_id

    def finish_trial(self, trial_id: int, value: float, curves: dict) -> None:
        method, trial = self._trials[trial_id]
        finished = replace(trial, status="finished", value=float(value), curves=dict(curves))
        self._trials[trial_id] = (method, finished)

    def mark_trial(self, trial_id: int, status: str, error: str | None = None) -> None:
        method, trial = self._trials[trial_id]
        if status == "failed":
            self._trials[trial_id] = (method, replace(trial, status="failed"))
        else:  # interrupted: forgotten, so it runs again
            del self._trials[trial_id]


# -- asking -----------------------------------------------------------------------------------


def trial_seed(study: Study, number: int, params: dict[str, Any] | None = None) -> int:
    """The training seed of trial ``number`` (see ``Study.training_seed``); by default the same
    for every method of an experiment with the same study seed, so methods are compared on the
    same data orders."""
    if study.training_seed is None:
        return derive_seed("trial", study.seed, number)
    if callable(study.training_seed):
        return int(study.training_seed(number, params or {}))
    return int(study.training_seed)


def suggest(study: Study, history: Sequence[Trial], number: int) -> dict[str, Any]:
    """The hyper-parameters of trial ``number``, from the trials of the earlier rounds only."""
    if study.sampler == "grid":
        names = list(study.space)
        points = list(product(*(study.space[name].values for name in names)))
        random.Random(derive_seed("grid", study.seed)).shuffle(points)
        return dict(zip(names, points[number], strict=True))
    round_start = number - number % study.round_size
    earlier = [t for t in history if t.number < round_start]
    seed = derive_seed("ask", study.seed, number) % 2**32  # same draws for every method
    if study.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=study.startup_trials)
    distributions = {name: _distribution(d) for name, d in study.space.items()}
    optuna_study = optuna.create_study(direction=study.direction, sampler=sampler)
    for trial in earlier:
        finite = trial.status == "finished" and trial.value is not None
        finite = finite and math.isfinite(trial.value)
        optuna_study.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=distributions,
                value=trial.value if finite else None,
                state=optuna.trial.TrialState.COMPLETE if finite else optuna.trial.TrialState.FAIL,
            )
        )
    return dict(optuna_study.ask(distributions).params)


optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- running a study --------------------------------------------------------------------------


@dataclass(frozen=True)
class TuningResult:
    """A finished study: its trials, the best one, and where the best sits in the space."""

    study: Study
    trials: list[Trial]
    best: Trial
    on_edge: dict[str, str]
    """``{hyper-parameter: "low" | "high"}`` for best values on the edge of their range."""

    @property
    def params(self) -> dict[str, Any]:
        return self.best.params

    def describe(self) -> str:
        """One line: ``fa: lr=0.0123 (val 0.0412, best of 8 trials; lr at the high edge)``."""
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in self.best.params.items())
        edges = "; ".join(
            f"{k} at the {side} edge of its range" for k, side in self.on_edge.items()
        )
        return (
            f"{self.study.method}: {shown} (score {_fmt(self.best.value)}, best of "
            f"{len(self.trials)} trials{'; ' + edges if edges else ''})"
        )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


Objective = Callable[[dict[str, Any], Trial], "TrialOutcome | float"]
BatchObjective = Callable[
    [list[tuple[dict[str, Any], Trial]]], "Sequence[TrialOutcome | float | NeuroplasticError]"
]
"""Many trials at once: ``[(params, trial), ...] -> [outcome, ...]`` in the same order, where an
outcome is a score, a :class:`TrialOutcome`, or a NeuroplasticError for a trial that failed
(diverged) while the others went on."""


@dataclass(frozen=True)
class Batch:
    """A :data:`BatchObjective`, marked as such (what ``Experiment.objective`` returns for a
    study whose rounds train as one replica batch)."""

    objective: BatchObjective


def pending_round(study: Study, finished: Mapping[int, Trial]) -> list[int]:
    """The numbers of the first round with trials not in ``finished`` (empty: the study is
    done). Its hyper-parameters depend only on the rounds before it, which are all finished."""
    for round_start in range(0, study.trials, study.round_size):
        numbers = range(round_start, min(round_start + study.round_size, study.trials))
        pending = [number for number in numbers if number not in finished]
        if pending:
            return pending
    return []


def ask(study: Study, finished: Mapping[int, Trial], numbers: Sequence[int]) -> list[Trial]:
    """The trials ``numbers`` of one round, asked (``running``, not recorded)."""
    earlier = [finished[n] for n in sorted(finished) if n < min(numbers)]
    pruning = pruning_for(study, earlier)
    asked = []
    for number in numbers:
        params = suggest(study, earlier, number)
        seed = trial_seed(study, number, params)
        asked.append(Trial(number, params, seed, "running", pruning=pruning))
    return asked


def evaluate(objective: Objective | Batch, trials: Sequence[Trial]) -> list[Any]:
    """The outcomes of a round's ``trials`` (a TrialOutcome, or the NeuroplasticError that failed
    the trial), wherever it runs: a :class:`Batch` in one call, a plain objective in order.
    Any other exception propagates."""
    if isinstance(objective, Batch):
        try:
            outcomes = list(objective.objective([(t.params, t) for t in trials]))
        except NeuroplasticError as error:
            return [error] * len(trials)
        if len(outcomes) != len(trials):
            raise ValueError(
                f"batch_objective returned {len(outcomes)} outcomes for {len(trials)} trials"
            )
    else:
        outcomes = []
        for trial in trials:
            try:
                outcomes.append(objective(trial.params, trial))
            except NeuroplasticError as error:
                outcomes.append(error)
    outcomes = [with_reports(o, t) for o, t in zip(outcomes, trials, strict=True)]
    return [
        o if isinstance(o, NeuroplasticError | TrialOutcome) else TrialOutcome(float(o))
        for o in outcomes
    ]


def tune(
    study: Study,
    objective: Objective | None = None,
    recorder: TrialRecorder | None = None,
    *,
    on_trial: Callable[[Trial], None] | None = None,
    batch_objective: BatchObjective | None = None,
) -> TuningResult:
    """Run the trials of ``study`` that ``recorder`` has not finished, then pick the best.

    ``objective(params, trial)`` trains with ``params`` from ``trial.seed`` and returns the
    validation score (or a :class:`TrialOutcome` with curves). A NeuroplasticError (divergence)
    records the trial as failed, which uses its budget; any other exception, Ctrl-C included,
    marks the trial interrupted and propagates, and the next call runs it again.

    ``batch_objective`` instead of ``objective``: the unfinished trials of each round (up to
    ``study.round_size``) are asked together and evaluated by one call, e.g. as one replica
    batch. A round's hyper-parameters depend on earlier rounds only, so the trials asked, and
    with an objective whose outcome for a trial does not depend on its batch-mates the results,
    are those of the sequential form. Each outcome is recorded as its trial's; a
    NeuroplasticError *returned* in a trial's place fails that trial alone, one *raised* fails
    the whole batch; any other exception marks the batch's trials interrupted and propagates.
    """
    if (objective is None) == (batch_objective is None):
        raise TypeError("tune needs exactly one of objective and batch_objective")
    recorder = recorder if recorder is not None else MemoryRecorder()
    history = {t.number: t for t in recorder.finished_trials(study.method)}

    def finish(trial: Trial) -> None:
        history[trial.number] = trial
        if on_trial is not None:
            on_trial(trial)

    for round_start in range(0, study.trials, study.round_size):
        numbers = range(round_start, min(round_start + study.round_size, study.trials))
        pending = [number for number in numbers if number not in history]
        if not pending:
            continue
        earlier = [history[n] for n in sorted(history) if n < round_start]
        pruning = pruning_for(study, earlier)

        def start(
            number: int, earlier: list[Trial] = earlier, pruning: MedianPruning | None = pruning
        ) -> tuple[int, Trial]:
            params = suggest(study, earlier, number)
            seed = trial_seed(study, number, params)
            trial_id = recorder.start_trial(study.method, number, params, seed)
            return trial_id, Trial(number, params, seed, "running", pruning=pruning)

        if batch_objective is not None:
            asked = [start(number) for number in pending]
            outcomes = _run_batch(batch_objective, asked, recorder)
            for (trial_id, running), outcome in zip(asked, outcomes, strict=True):
                outcome = with_reports(outcome, running)
                finish(record_outcome(recorder, trial_id, running, outcome))
            continue
        for number in pending:  # each trial recorded before the next one starts
            trial_id, running = start(number)
            try:
                outcome = objective(running.params, running)
            except NeuroplasticError as error:
                outcome = error
            except BaseException as error:
                recorder.mark_trial(trial_id, "interrupted", f"{type(error).__name__}: {error}")
                raise
            outcome = with_reports(outcome, running)
            finish(record_outcome(recorder, trial_id, running, outcome))
    trials = [history[n] for n in range(study.trials)]
    return TuningResult(study, trials, best_trial(study, trials), on_edge(study, trials))


def record_outcome(recorder: TrialRecorder, trial_id: int, running: Trial, outcome: Any) -> Trial:
    """Record ``outcome`` (a score, a TrialOutcome, or a NeuroplasticError: failed) as the
    trial's; the finished trial."""
    if isinstance(outcome, NeuroplasticError):
        recorder.mark_trial(trial_id, "failed", str(outcome))
        return replace(running, status="failed")
    if not isinstance(outcome, TrialOutcome):
        outcome = TrialOutcome(float(outcome))
    value = float(outcome.value)
    recorder.finish_trial(trial_id, value, outcome.curves)
    return replace(running, status="finished", value=value, curves=dict(outcome.curves))


def _run_batch(batch_objective: BatchObjective, asked: list, recorder: TrialRecorder) -> list:
    try:
        outcomes = list(batch_objective([(running.params, running) for _, running in asked]))
    except NeuroplasticError as error:
        return [error] * len(asked)
    except BaseException as error:
        for trial_id, _ in asked:
            recorder.mark_trial(trial_id, "interrupted", f"{type(error).__name__}: {error}")
        raise
    if len(outcomes) != len(asked):
        for trial_id, _ in asked:
            recorder.mark_trial(trial_id, "interrupted", "wrong number of outcomes")
        raise ValueError(
            f"batch_objective returned {len(outcomes)} outcomes for {len(asked)} trials"
        )
    return outcomes


def best_trial(study: Study, trials: Sequence[Trial]) -> Trial:
    """The finished trial with the best finite score (ties: the earliest)."""
    scored = [t for t in trials if t.status == "finished" and t.value is not None]
    scored = [t for t in scored if math.isfinite(t.value)]
    if not scored:
        raise DivergenceError(
            f"every one of the {len(trials)} trials of {study.method!r} failed or diverged",
            "lower the range of the step size (--set ...), or check the method on a smaller "
            "problem",
        )
    sign = 1.0 if study.direction == "minimize" else -1.0
    return min(scored, key=lambda t: (sign * t.value, t.number))


def on_edge(study: Study, trials: Sequence[Trial]) -> dict[str, str]:
    """Where the best trial's values sit on the edge of their dimension (see the module doc)."""
    best = best_trial(study, trials).params
    edges: dict[str, str] = {}
    for name, dimension in study.space.items():
        value = best[name]
        if isinstance(dimension, Choice):
            numeric = [v for v in dimension.values if isinstance(v, int | float)]
            if len(numeric) != len(dimension.values) or isinstance(value, bool):
                continue
            low, high = min(numeric), max(numeric)
            side = "low" if value == low else "high" if value == high else None
        else:  # ranges, integer ones included: within EDGE_FRACTION of an end
            log = isinstance(dimension, LogUniform) or getattr(dimension, "log", False)
            scale = math.log if log else float
            position = (scale(value) - scale(dimension.low)) / (
                scale(dimension.high) - scale(dimension.low)
            )
            near_high = position > 1 - EDGE_FRACTION
            side = "low" if position < EDGE_FRACTION else "high" if near_high else None
        if side is not None:
            edges[name] = side
    return edges
