"""Executors: the pool and Ray give the in-process metrics; killed workers are retried, a killed
or stopped driver leaves a store that --resume completes; workers never tune."""

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from neuroplastic.executors import (
    TUNING_IN_DRIVER,
    PoolExecutor,
    RayExecutor,
    RunSpec,
    WorkerEnv,
    make_executor,
    worker_context,
)
from neuroplastic.experiments import get_experiment
from neuroplastic.runner import REPLICA_BATCH, replica_batches, run_experiment
from neuroplastic.store import Store
from neuroplastic.tuning import LogUniform, Study

TINY = {"dataset": "mnist-mini", "hidden": (16,), "epochs": 2, "batch_size": 200}
TINY_ARGS = ["--set", "dataset=mnist-mini", "--set", "hidden=16", "--set", "batch_size=200"]
LINUX = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


@pytest.fixture
def backprop():
    experiment = get_experiment("mnist-backprop")
    return experiment, dataclasses.replace(experiment.config_cls(), **TINY)


@pytest.fixture
def one_thread():
    """Workers run with one intra-op thread; so does the in-process reference here (PyTorch's
    CPU reductions depend on the thread count in the last bit, whichever executor runs them)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance (2 CPUs) for the module; RayExecutor joins it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def finished_metrics(store: Store) -> dict[int, dict]:
    return {r.seed: r.metrics for r in store.runs(status="finished")}


def children(pid: int, marker: str) -> list[int]:
    """Live processes whose parent is ``pid`` and whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and marker in cmdline:
            found.append(int(entry.name))
    return found


def processes(marker: str) -> list[int]:
    """Live processes whose command line starts with ``marker`` (Ray names a task's process
    ``ray::<function>`` while it runs)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(
                marker.encode()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def count_runs(store_path: Path, status: str, table: str = "runs") -> int:
    if not store_path.exists():
        return 0
    with sqlite3.connect(store_path) as db:
        try:
            query = f"select count(*) from {table} where status = ?"
            return db.execute(query, (status,)).fetchone()[0]
        except sqlite3.OperationalError:  # schema not created yet
            return 0


# -- same seeds, same metrics --------------------------------------------------------------------


def test_the_pool_and_ray_give_the_in_process_metrics(tmp_path, backprop, one_thread, request):
    experiment, config = backprop
    with Store(tmp_path / "in.db") as store:
        run_experiment(experiment, config, [0, 1], store, device="cpu")
        reference = finished_metrics(store)
    executors = {"pool": PoolExecutor(2, threads=1)}
    if _has_ray():
        request.getfixturevalue("ray_session")
        executors["ray"] = RayExecutor()
    for name, executor in executors.items():
        with Store(tmp_path / f"{name}.db") as store:
            outcome = run_experiment(experiment, config, [0, 1], store, device="cpu",
                                     executor=executor)  # fmt: skip
            assert finished_metrics(store) == reference, name  # bit for bit
            assert [r.seed for r in outcome.records] == [0, 1]
            assert len(store.runs()) == 2  # one row per seed, nothing else


def test_a_batched_experiment_splits_its_seeds_and_workers_read_the_drivers_trials(
    tmp_path, one_thread
):
    """kanter2020-mnist tunes its studies through the pool (the driver asks and records each
    trial once; the same trials as in process), then each worker trains a replica batch of
    seeds from the shipped trials; the batches are fixed by seed, so every metric is the
    in-process one, bit for bit."""
    experiment = get_experiment("kanter2020-mnist")
    config = experiment.config_cls(sizes=(20,), costs=("cross_entropy",), hidden=8, trials=2,
                                   methods=("sgd", "accelerated-sign"), tuning_seeds=1,
                                   curve_points=2)  # fmt: skip
    seeds = [REPLICA_BATCH - 2, REPLICA_BATCH - 1, REPLICA_BATCH, REPLICA_BATCH + 1]  # 2 batches
    with Store(tmp_path / "in.db") as store:
        run_experiment(experiment, config, seeds, store, device="cpu")
        reference = finished_metrics(store)
        reference_trials = trial_rows(store)
    with Store(tmp_path / "pool.db") as store:
        run_experiment(experiment, config, seeds, store, device="cpu",
                       executor=PoolExecutor(2, threads=1))  # fmt: skip
        pooled = finished_metrics(store)
        trials = store.trials("kanter2020-mnist")
        assert trial_rows(store) == reference_trials  # asked, trained and scored the same
    assert len(trials) == 4 and {t.status for t in trials} == {"finished"}  # 2 studies x 2, once
    assert sorted(pooled) == seeds
    assert pooled == reference


def trial_rows(store: Store) -> list[tuple]:
    """Every trial as (study, number, params, seed, status, value), in order."""
    rows = [(t.method, t.number, t.params, t.seed, t.status, t.value) for t in store.trials()]
    return sorted(rows, key=lambda row: row[:2])


PS_TINY = {"widths": (4, 8), "input_sides": (7,), "input_sweep_width": 4, "batch_size": 20,
           "variance_draws": 8, "train_widths": (4,), "budget": 40, "curve_points": 4,
           "n_train_eval": 200, "lrs": (1e-3, 1e-2, 3e-2, 1e-1, 3e-1),
           "speed_inputs": (4, 8), "speed_outputs": (2, 3), "speed_lrs": (0.125, 0.03125),
           "speed_max_passes": 8000}  # fmt: skip
"""perturbation-scaling in seconds: 4 studies of 5 trials (one per method), in rounds of 4 (two
waves), and 16 linear learning-speed studies of 2 rates (one batch each)."""


def test_studies_tuned_through_the_pool_equal_in_process(tmp_path, one_thread):
    experiment = get_experiment("perturbation-scaling")
    config = experiment.config_cls(**PS_TINY)
    results = {}
    for name, executor in {"in": None, "pool": PoolExecutor(2, threads=1)}.items():
        with Store(tmp_path / f"{name}.db") as store:
            run_experiment(experiment, config, [0], store, device="cpu", executor=executor)
            (run,) = store.runs()
            results[name] = (trial_rows(store), run.hyperparameters, run.metrics)
    assert len(results["in"][0]) == 4 * 5 + 16 * 2
    assert results["pool"] == results["in"]  # trials, chosen rates, metrics: bit for bit


@LINUX
def test_a_worker_killed_while_tuning_is_retried_and_each_trial_finishes_once(tmp_path):
    experiment = get_experiment("perturbation-scaling")
    config = experiment.config_cls(**{**PS_TINY, "budget": 600})  # trials long enough to kill
    store_path = tmp_path / "r.db"
    killed: list[int] = []

    def kill() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            workers = children(os.getpid(), "spawn_main")
            if workers and count_runs(store_path, "running", "trials"):
                time.sleep(0.5)
                if workers[0] in children(os.getpid(), "spawn_main"):
                    os.kill(workers[0], signal.SIGKILL)
                    killed.append(workers[0])
                    return
            time.sleep(0.1)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    with Store(store_path) as store:
        outcome = run_experiment(experiment, config, [0], store, device="cpu",
                                 executor=PoolExecutor(2, retries=2, threads=1))  # fmt: skip
        thread.join()
        trials = store.trials()
    assert killed, "no worker was killed"
    assert not outcome.failures and len(outcome.records) == 1
    done = [(t.method, t.number) for t in trials if t.status in ("finished", "failed")]
    assert len(done) == len(set(done)) == 4 * 5 + 16 * 2  # every trial once, none recorded twice
    interrupted = [t for t in trials if t.status == "interrupted"]
    assert interrupted and all("worker lost" in t.error for t in interrupted)
    assert {t.status for t in trials} <= {"finished", "failed", "interrupted"}


def test_replica_batches_are_fixed_by_seed_not_by_workers():
    b = REPLICA_BATCH
    assert replica_batches(range(2 * b)) == [tuple(range(b)), tuple(range(b, 2 * b))]
    assert replica_batches((b - 1, b, b + 1)) == [(b - 1,), (b, b + 1)]
    assert replica_batches((5,)) == [(5,)]


def test_a_worker_never_runs_a_tuning_trial():
    spec = RunSpec("mnist-backprop", {}, (0,), trials=())
    context = worker_context(spec, WorkerEnv(device="cpu"))
    study = Study("sgd", {"lr": LogUniform(1e-3, 1.0)}, trials=2)
    with pytest.raises(Exception, match="tuning belongs in the driver"):
        context.tune(get_experiment("mnist-backprop").config_cls(), study, lambda p, t: 0.0)
    assert "Experiment.tune" in TUNING_IN_DRIVER


def test_executor_options_are_checked():
    assert make_executor().parallelism == 1
    assert isinstance(make_executor(workers=3), PoolExecutor)
    for bad in ({"name": "threads"}, {"name": "inprocess", "workers": 2},
                {"ray_address": "auto", "name": "pool"}):  # fmt: skip
        with pytest.raises(Exception, match="executor|--workers|--ray-address"):
            make_executor(**bad)


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


# -- faults ----------------------------------------------------------------------------------------


def kill_when_running(store_path: Path, find_workers, killed: list[int]) -> threading.Thread:
    """In the background: once a run is recorded running, SIGKILL one of its worker processes."""

    def kill() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = find_workers() if count_runs(store_path, "running") else []
            if workers:
                time.sleep(0.2)  # mid-run, past the worker's start
                # still at work on a run (on a loaded machine the run may have ended meanwhile)
                if workers[0] in find_workers() and count_runs(store_path, "running"):
                    os.kill(workers[0], signal.SIGKILL)
                    killed.append(workers[0])
                    return
            time.sleep(0.1)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@LINUX
@pytest.mark.parametrize("executor", ["pool", "ray"])
def test_a_killed_worker_is_retried_and_each_seed_finishes_once(
    tmp_path, backprop, executor, request
):
    experiment, config = backprop
    config = dataclasses.replace(config, epochs=30)  # runs of seconds: killed mid-run under load
    store_path = tmp_path / "r.db"
    if executor == "ray":
        if not _has_ray():
            pytest.skip("ray is not installed (pip install -e '.[ray]')")
        request.getfixturevalue("ray_session")
        chosen = RayExecutor(retries=2)
        find = lambda: processes("ray::run_in_worker")  # noqa: E731
    else:
        chosen = PoolExecutor(2, retries=2, threads=1)
        find = lambda: children(os.getpid(), "spawn_main")  # noqa: E731
    killed: list[int] = []
    thread = kill_when_running(store_path, find, killed)
    with Store(store_path) as store:
        outcome = run_experiment(experiment, config, [0, 1, 2], store, device="cpu",
                                 executor=chosen)  # fmt: skip
        thread.join()
        runs = store.runs()
    assert killed, "no worker was killed"
    assert not outcome.failures
    assert sorted(r.seed for r in runs if r.status == "finished") == [0, 1, 2]  # once each
    interrupted = [r for r in runs if r.status == "interrupted"]
    assert interrupted and all("worker lost" in r.error for r in interrupted)
    assert {r.status for r in runs} == {"finished", "interrupted"}


def cli_argv(store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "neuroplastic.cli", "run", "mnist-backprop", *TINY_ARGS,
            "--store", str(store), "--quiet", "--workers", "2", *extra]  # fmt: skip


@LINUX
def test_sigterm_on_the_driver_marks_runs_in_flight_interrupted_and_stops_the_workers(tmp_path):
    store = tmp_path / "r.db"
    argv = cli_argv(store, "--seeds", "2", "--set", "epochs=200")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: count_runs(store, "running") == 2, 60, "two runs in flight")
        workers = children(process.pid, "spawn_main")
        assert len(workers) == 2
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and "--resume" in err
    with sqlite3.connect(store) as db:  # read without opening a Store: no stale-run marking
        rows = db.execute("select status, error from runs").fetchall()
    assert rows == [("interrupted", "interrupted (Ctrl-C or SIGTERM)")] * 2
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10, "workers")


@LINUX
def test_resume_after_the_driver_is_killed(tmp_path):
    """kill -9 of the driver: its workers exit on their own, the store is intact, the runs in
    flight are marked interrupted on the next open, and --resume runs only what is missing."""
    store = tmp_path / "r.db"
    argv = cli_argv(store, "--seeds", "3", "--set", "epochs=4")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: count_runs(store, "finished") >= 1, 120, "a finished seed")
        workers = children(process.pid, "spawn_main")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 15, "orphans")
    with Store(store) as results:  # opening marks the runs of the dead driver
        before = {r.id: (r.seed, r.status) for r in results.runs()}
    assert "running" not in {status for _, status in before.values()}
    done_before = sorted(seed for seed, status in before.values() if status == "finished")

    resumed = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with Store(store) as results:
        runs = results.runs()
    assert sorted(r.seed for r in runs if r.status == "finished") == [0, 1, 2]  # once each
    assert {r.id: (r.seed, r.status) for r in runs if r.id in before} == before  # untouched
    assert f"seeds {done_before} were already finished" in resumed.stdout
