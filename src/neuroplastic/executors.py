"""Executors: where the work of a run goes (this process, a local process pool, or Ray).

The unit of work is a :class:`RunSpec`: an experiment name, a config as plain data, the seeds and
the finished tuning trials of the config, which is all a worker needs to reproduce the runs
anywhere. An :class:`Executor` turns specs into outcomes (one per seed); the driver (the runner)
records every run in the store. Workers never open the store: the trials they need travel in the
spec, and :class:`ShippedTrials` lets ``context.tune`` find them finished (tuning belongs in the
driver, through ``Experiment.tune``). A :class:`TuneSpec` is one round of one tuning study: the
worker evaluates the trials the driver asked, with the objective ``Experiment.objective``
rebuilds, and the driver records the outcomes (``runner.tune_through``).

Three executors, all behind the same ``map``:

* :class:`InProcessExecutor` (the default): the specs one after another in the driver, sharing its
  loaded datasets.
* :class:`PoolExecutor`: a local ``concurrent.futures.ProcessPoolExecutor`` (``spawn`` context),
  ``workers`` processes, each loading and verifying its datasets once.
* :class:`RayExecutor`: Ray tasks on a local instance it starts, or on a running cluster
  (``address="auto"`` or ``"HOST:PORT"``). Ray is an optional extra (``pip install -e '.[ray]'``).

Faults. A worker process that dies mid-spec (``kill -9``, the OOM killer, a lost node) loses that
spec's outcome; the executor calls ``on_lost(spec, reason)`` (the runner marks its runs
``interrupted``), then submits the spec again, up to ``retries`` times; after that its seeds get a
:class:`WorkerLost` outcome. Since a spec is resubmitted only when its outcome never reached the
driver, and only the driver records, a finished run is never lost or recorded twice. Ctrl-C (or
SIGTERM, which the CLI turns into Ctrl-C) cancels the outstanding specs and stops the workers;
the runner marks the runs in flight ``interrupted``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from neuroplastic.errors import ConfigError, NeuroplasticError
from neuroplastic.experiments.base import RunContext, RunResult
from neuroplastic.tuning import MedianPruning, Trial, evaluate

EXECUTORS = ("inprocess", "pool", "ray")
DEFAULT_RETRIES = 2

TUNING_IN_DRIVER = (
    "tuning belongs in the driver: declare Experiment.tune (it runs every study before the "
    "seeds, and the workers then read the finished trials)"
)


@dataclass(frozen=True)
class RunSpec:
    """Self-contained work: everything a worker needs, as plain data.

    One seed for most experiments; a chunk of the requested seeds for experiments with a
    ``run_batch`` (replicas simulated as one batched computation): all of them in process, one
    chunk per worker otherwise.
    """

    experiment: str
    config: dict[str, Any]
    seeds: tuple[int, ...]
    trials: tuple[dict[str, Any], ...] = ()
    """The finished and failed tuning trials the driver recorded for the configs this
    experiment tunes (``config_hash``, ``method``, ``number``, ``params``, ``seed``, ``status``,
    ``value``, ``curves``), so that ``context.tune`` in a worker only picks the best."""


@dataclass(frozen=True)
class TuneSpec:
    """One round of one tuning study as work: the trials the driver asked (``(number, params,
    seed)``), to be evaluated by the objective ``Experiment.objective(config, study, context)``
    rebuilds in the worker. The driver asks the rounds and records the outcomes."""

    experiment: str
    config: dict[str, Any]
    study: str
    trials: tuple[tuple[int, dict[str, Any], int], ...]
    pruning: MedianPruning | None = None
    """How the round's trials are pruned (decided by the driver from the earlier rounds)."""


@dataclass(frozen=True)
class WorkerEnv:
    """Where a worker runs a spec: the driver's device, data directory and checkpoint folder
    (paths as strings; on a cluster they must mean the same on every node, see
    docs/executors.md)."""

    device: str
    data_dir: str | None = None
    checkpoint_dir: str | None = None


class WorkerLost(NeuroplasticError):
    """A spec's worker process died more often than ``retries`` allows."""


Outcome = RunResult | NeuroplasticError
"""A run's result, or the NeuroplasticError (e.g. divergence) that ended it."""


def execute(spec: RunSpec | TuneSpec, context: RunContext) -> list[Any]:
    """Run a spec: look the experiment up, rebuild its config, one outcome per seed (a
    :class:`TuneSpec`: one TrialOutcome or NeuroplasticError per trial)."""
    from neuroplastic.config import config_from_dict
    from neuroplastic.experiments import get_experiment

    experiment = get_experiment(spec.experiment)
    config = config_from_dict(experiment.config_cls, spec.config)
    if isinstance(spec, TuneSpec):
        if experiment.objective is None:
            raise NeuroplasticError(f"{spec.experiment} declares no Experiment.objective")
        objective = experiment.objective(config, spec.study, context)
        trials = [
            Trial(n, dict(p), seed, "running", pruning=spec.pruning) for n, p, seed in spec.trials
        ]
        return evaluate(objective, trials)
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


# -- the trials a worker reads -----------------------------------------------------------------


@dataclass(frozen=True)
class ShippedTrials:
    """A read-only :class:`~neuroplastic.tuning.TrialRecorder` over trials the driver shipped:
    ``finished_trials`` returns them; starting a trial is an error (:data:`TUNING_IN_DRIVER`)."""

    trials: tuple[Trial, ...]
    methods: tuple[str, ...]

    def finished_trials(self, method: str) -> list[Trial]:
        return [t for m, t in zip(self.methods, self.trials, strict=True) if m == method]

    def start_trial(self, method: str, number: int, params: dict, seed: int) -> int:
        raise NeuroplasticError(
            f"a worker was asked to run tuning trial {number} of {method!r}: {TUNING_IN_DRIVER}",
            "declare Experiment.tune for this experiment, or run it in process (--workers 1)",
        )

    def finish_trial(self, trial_id: int, value: float, curves: dict) -> None:
        raise NeuroplasticError(TUNING_IN_DRIVER)

    def mark_trial(self, trial_id: int, status: str, error: str | None = None) -> None:
        raise NeuroplasticError(TUNING_IN_DRIVER)


def shipped_recorder_for(trials: Sequence[dict[str, Any]]) -> Callable[[Any], ShippedTrials]:
    """``RunContext.recorder_for`` in a worker: the shipped trials of the config asked for (the
    latest record of a trial number wins, as in the store)."""
    from neuroplastic.config import config_to_dict
    from neuroplastic.store import config_hash

    def recorder_for(config: Any) -> ShippedTrials:
        digest = config_hash(config_to_dict(config))
        latest: dict[tuple[str, int], Trial] = {}
        for t in trials:
            if t["config_hash"] == digest and t["status"] in ("finished", "failed"):
                latest[t["method"], t["number"]] = Trial(
                    t["number"], dict(t["params"]), t["seed"], t["status"], t["value"],
                    dict(t["curves"]),
                )  # fmt: skip
        keys = sorted(latest)
        return ShippedTrials(tuple(latest[k] for k in keys), tuple(m for m, _ in keys))

    return recorder_for


# -- the worker side ---------------------------------------------------------------------------

_DATASETS: dict[tuple[str, str | None], dict] = {}
"""Per worker process: datasets by (device, data dir), loaded and verified once per process."""
_CONTEXTS: OrderedDict[tuple, RunContext] = OrderedDict()
"""Per worker process: one context per (env, experiment, config, trials), so the specs of one
config that land in the same process share the context's tuned studies and datasets, as
in-process seeds do."""
_MAX_CONTEXTS = 4


def worker_context(spec: RunSpec | TuneSpec, env: WorkerEnv) -> RunContext:
    """This process's context for a spec: its datasets are shared by every context of the same
    device and data directory; trials come from the spec, never from a store."""
    from neuroplastic.store import config_hash

    tuning = isinstance(spec, TuneSpec)  # rounds of one config share a context
    trials = () if tuning else spec.trials
    key = (env, spec.experiment, config_hash(spec.config), config_hash({"t": trials}), tuning)
    if key in _CONTEXTS:
        _CONTEXTS.move_to_end(key)
        return _CONTEXTS[key]
    datasets = _DATASETS.setdefault((env.device, env.data_dir), {})
    context = RunContext(
        device=torch.device(env.device),
        data_dir=Path(env.data_dir) if env.data_dir is not None else None,
        checkpoint_dir=Path(env.checkpoint_dir) if env.checkpoint_dir is not None else None,
        recorder_for=shipped_recorder_for(trials),
        _datasets=datasets,
    )
    _CONTEXTS[key] = context
    while len(_CONTEXTS) > _MAX_CONTEXTS:
        _CONTEXTS.popitem(last=False)
    return context


def run_in_worker(spec: RunSpec | TuneSpec, env: WorkerEnv) -> list[Any]:
    """A spec's outcomes, computed in a worker process (pool or Ray)."""
    return execute(spec, worker_context(spec, env))


def init_pool_worker(threads: int, parent: int) -> None:
    """Pool initializer: ``threads`` intra-op threads (one when the workers share the cores, so
    they do not spin-wait for each other: see ``neuroplastic.threads``); Ctrl-C is the driver's
    to handle; exit when the driver is gone (``kill -9`` of the driver must not leave workers
    running on)."""
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


# -- executors ---------------------------------------------------------------------------------

OnStart = Callable[[RunSpec], None]
OnLost = Callable[[RunSpec, str], None]


class Executor(Protocol):
    """Runs specs and yields each with one outcome per seed, in the spec's seed order.

    ``on_start(spec)`` is called as each spec is handed to a worker (the runner records its runs
    as ``running``); ``on_lost(spec, reason)`` when its worker died before returning (the runner
    marks those runs ``interrupted``); a spec submitted again gets ``on_start`` again. Errors
    that are bugs, and KeyboardInterrupt, propagate to the caller.
    """

    parallelism: int
    """How many specs run at once (the runner splits a batched experiment's seeds this many
    ways)."""

    def map(
        self,
        specs: Sequence[RunSpec],
        context: RunContext,
        on_start: OnStart,
        on_lost: OnLost | None = None,
    ) -> Iterator[tuple[RunSpec, list[Outcome]]]: ...


class InProcessExecutor:
    """Runs specs one after another in this process (the driver's context, its datasets)."""

    parallelism = 1

    def map(
        self,
        specs: Sequence[RunSpec],
        context: RunContext,
        on_start: OnStart,
        on_lost: OnLost | None = None,
    ) -> Iterator[tuple[RunSpec, list[Outcome]]]:
        for spec in specs:
            on_start(spec)
            yield spec, execute(spec, context)


def env_of(context: RunContext) -> WorkerEnv:
    return WorkerEnv(
        device=str(context.device),
        data_dir=None if context.data_dir is None else str(context.data_dir),
        checkpoint_dir=None if context.checkpoint_dir is None else str(context.checkpoint_dir),
    )


def _lost_outcomes(spec: RunSpec | TuneSpec, attempts: int, reason: str) -> list[Outcome]:
    if isinstance(spec, TuneSpec):
        units = [number for number, _, _ in spec.trials]
        what = f"trials {units} of study {spec.study!r}"
    else:
        units, what = list(spec.seeds), f"seeds {list(spec.seeds)}"
    error = WorkerLost(
        f"the worker running {what} died {attempts} times (last: {reason})",
        "rerun with --resume; if a worker runs out of memory, use fewer --workers",
    )
    return [error] * len(units)


class PoolExecutor:
    """Specs on ``workers`` local processes (``spawn`` context: no state inherited by fork).

    At most ``workers`` specs are handed out at a time, so a run recorded ``running`` is running.
    A killed worker breaks a ``ProcessPoolExecutor`` as a whole: every spec in flight then is
    lost (and counts one attempt), the pool is made anew, and those specs go again.

    ``threads``: intra-op threads per worker; default ``max(1, cpus // workers)``.
    """

    def __init__(
        self,
        workers: int,
        retries: int = DEFAULT_RETRIES,
        threads: int | None = None,
        start_method: str = "spawn",
    ):
        if workers < 1 or retries < 0:
            raise ConfigError(f"need workers >= 1 and retries >= 0, got {workers}, {retries}")
        self.workers = workers
        self.parallelism = workers
        self.retries = retries
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.start_method = start_method

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=init_pool_worker,
            initargs=(self.threads, os.getpid()),
        )

    def map(
        self,
        specs: Sequence[RunSpec],
        context: RunContext,
        on_start: OnStart,
        on_lost: OnLost | None = None,
    ) -> Iterator[tuple[RunSpec, list[Outcome]]]:
        if not specs:
            return
        env = env_of(context)
        queue = list(enumerate(specs))  # (index, spec), in order
        attempts = [0] * len(specs)
        pool = self._new_pool()
        running: dict[Future, int] = {}
        try:
            while queue or running:
                while queue and len(running) < self.workers:
                    index, spec = queue.pop(0)
                    attempts[index] += 1
                    on_start(spec)
                    running[pool.submit(run_in_worker, spec, env)] = index
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                lost: list[tuple[int, str]] = []
                for future in done:
                    index = running.pop(future)
                    try:
                        outcomes = future.result()
                    except BrokenProcessPool as error:
                        lost.append((index, f"{type(error).__name__}: {error}"))
                        continue
                    yield specs[index], outcomes
                if lost:  # the pool is broken: what is still running is lost with it
                    for future, index in running.items():
                        if future.done() and future.exception() is None:
                            yield specs[index], future.result()  # finished just in time
                        else:
                            lost.append((index, "lost with the broken pool"))
                    running.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._new_pool()
                    retry = []
                    for index, reason in sorted(lost):
                        if on_lost is not None:
                            on_lost(specs[index], reason)
                        if attempts[index] > self.retries:
                            yield specs[index], _lost_outcomes(specs[index], attempts[index],
                                                               reason)  # fmt: skip
                        else:
                            retry.append((index, specs[index]))
                    queue = retry + queue
        finally:
            _stop_pool(pool)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and stop the workers now (Ctrl-C, an error, or done)."""
    processes = list(getattr(pool, "_processes", {}).values())  # CPython: pid -> Process
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)


RAY_LOST_ERRORS = (
    "WorkerCrashedError",
    "NodeDiedError",
    "OutOfMemoryError",
    "ObjectLostError",
    "OwnerDiedError",
    "LocalRayletDiedError",
)
"""Ray exceptions that mean the process or node running a task is gone (not a bug in the task)."""


def import_ray() -> Any:
    """Ray, imported on first use: an optional extra."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray, which is not installed",
            hint="pip install -e '.[ray]'  (or pip install 'ray>=2.9')",
        ) from None
    return ray


class RayExecutor:
    """Specs as Ray tasks (one CPU each) on a Ray cluster.

    ``address``: ``None`` starts a local Ray instance (``num_cpus`` CPUs, default all) and shuts
    it down afterwards; ``"auto"`` or ``"HOST:PORT"`` joins a running cluster (``ray start
    --head``). Ray's own task retries are off (``max_retries=0``): a task whose worker or node
    died is submitted again by this executor, so that the driver sees and records each attempt
    (``on_lost``) exactly as with the pool. At most ``parallelism`` (the cluster's CPUs) tasks
    are in flight.
    """

    def __init__(
        self,
        address: str | None = None,
        retries: int = DEFAULT_RETRIES,
        num_cpus: int | None = None,
    ):
        if retries < 0:
            raise ConfigError(f"need retries >= 0, got {retries}")
        self.ray = import_ray()
        self.address = address
        self.retries = retries
        self.num_cpus = num_cpus
        self._started = False
        self._parallelism: int | None = None

    def _connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            if self.address is None:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
                self._started = True
            else:
                ray.init(address=self.address, log_to_driver=False)
        if self._parallelism is None:
            self._parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))

    @property
    def parallelism(self) -> int:
        self._connect()
        assert self._parallelism is not None
        return self._parallelism

    def close(self) -> None:
        """Shut down the local Ray instance this executor started (a cluster is left running)."""
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def map(
        self,
        specs: Sequence[RunSpec],
        context: RunContext,
        on_start: OnStart,
        on_lost: OnLost | None = None,
    ) -> Iterator[tuple[RunSpec, list[Outcome]]]:
        if not specs:
            return
        self._connect()
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=0)(run_in_worker)
        env = ray.put(env_of(context))
        queue = list(enumerate(specs))
        attempts = [0] * len(specs)
        running: dict[Any, int] = {}  # ObjectRef -> spec index
        try:
            while queue or running:
                while queue and len(running) < self.parallelism:
                    index, spec = queue.pop(0)
                    attempts[index] += 1
                    on_start(spec)
                    running[task.remote(spec, env)] = index
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    index = running.pop(ref)
                    try:
                        outcomes = ray.get(ref)
                    except ray.exceptions.RayError as error:
                        if type(error).__name__ not in RAY_LOST_ERRORS:
                            cause = getattr(error, "cause", None)
                            raise (cause if isinstance(cause, BaseException) else error) from error
                        reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                        if on_lost is not None:
                            on_lost(specs[index], reason)
                        if attempts[index] > self.retries:
                            yield specs[index], _lost_outcomes(specs[index], attempts[index],
                                                               reason)  # fmt: skip
                        else:
                            queue.insert(0, (index, specs[index]))
                        continue
                    yield specs[index], outcomes
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            self.close()


def make_executor(
    name: str | None = None,
    workers: int = 1,
    *,
    retries: int = DEFAULT_RETRIES,
    ray_address: str | None = None,
) -> InProcessExecutor | PoolExecutor | RayExecutor:
    """The executor the CLI options ask for: ``inprocess`` (default; ``workers`` > 1 implies
    ``pool``), ``pool`` with ``workers`` processes, or ``ray`` (``ray_address`` None: a local
    instance with ``workers`` CPUs if ``workers`` > 1, else all)."""
    if name is None:
        name = "ray" if ray_address is not None else "pool" if workers > 1 else "inprocess"
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor '{name}'", hint=f"use one of: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if retries < 0:
        raise ConfigError(f"--retries must be at least 0, got {retries}")
    if ray_address is not None and name != "ray":
        raise ConfigError("--ray-address needs --executor ray", hint="add --executor ray")
    if name == "inprocess":
        if workers > 1:
            raise ConfigError(
                f"--executor inprocess runs one spec at a time, but --workers {workers} was asked",
                hint="drop --executor (--workers N implies the pool) or use --executor pool",
            )
        return InProcessExecutor()
    if name == "pool":
        return PoolExecutor(workers, retries)
    return RayExecutor(ray_address, retries, num_cpus=workers if workers > 1 else None)
