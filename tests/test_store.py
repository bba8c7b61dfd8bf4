"""Tests for the results store: round trips, resume bookkeeping, and surviving kill -9."""

from __future__ import annotations

import json
import math
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import neuroplastic
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store import (
    RUN_STATUSES,
    SCHEMA_VERSION,
    STALE_RUN_ERROR,
    RunRecord,
    Store,
    config_hash,
)

RUN_DEFAULTS = dict(
    experiment="xor",
    config={"lr": 0.1, "hidden": 8},
    quick=True,
    dataset="xor",
    device="cpu",
    version="0.1.0",
    git_rev="abc1234",
)

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL and select on pipes")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "results.db"


@pytest.fixture
def store(store_path: Path):
    with Store(store_path) as opened:
        yield opened


def start(store: Store, seed: int = 0, **overrides) -> int:
    return store.start_run(**{**RUN_DEFAULTS, "seed": seed, **overrides})


def raw_connection(path: Path) -> closing[sqlite3.Connection]:
    """A plain autocommit connection, closed on leaving ``with`` (sqlite3's own ``with`` only
    ends a transaction)."""
    return closing(sqlite3.connect(path, isolation_level=None))


def assert_same_floats(actual: list[float], expected: list[float]) -> None:
    """Equality where NaN equals NaN, which ``==`` on lists does not give."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert type(got) is float
        assert got == want or (math.isnan(got) and math.isnan(want)), (actual, expected)


# -- round trip --------------------------------------------------------------------------------


def test_finished_run_round_trips_every_field(store: Store, store_path: Path):
    assert store_path.exists(), "parent directories and the file are created on open"
    metrics = {"backprop/test_error": 0.0178, "hebb/loss": math.nan, "a": math.inf, "b": -math.inf}
    curves = {
        "backprop/test_error": {"x": [1, 2, 3], "y": [0.05, math.nan, 0.03]},
        "hebb/loss": {"x": [1, 2, 3], "y": [math.inf, -math.inf, 1.5]},
    }
    config = {"lr": 0.1, "layers": [784, 256, 10], "optim": {"name": "sgd", "momentum": 0.9}}

    run_id = start(store, seed=7, config=config)
    store.finish_run(run_id, metrics, curves, curve_x_label="epoch")
    record = store.get(run_id)

    assert record.id == run_id
    assert record.experiment == "xor"
    assert record.config == config
    assert record.config_hash == config_hash(config)
    assert record.seed == 7
    assert record.quick is True
    assert (record.dataset, record.device) == ("xor", "cpu")
    assert (record.version, record.git_rev) == ("0.1.0", "abc1234")
    assert record.status == "finished"
    assert record.curve_x_label == "epoch"
    assert record.error is None
    assert list(record.metrics) == list(metrics), "names keep the order they were given in"
    assert_same_floats(list(record.metrics.values()), list(metrics.values()))
    assert list(record.curves) == list(curves)
    for name, curve in curves.items():
        assert record.curves[name]["x"] == curve["x"]
        assert_same_floats(record.curves[name]["y"], curve["y"])
    started, ended = (datetime.fromisoformat(t) for t in (record.started_at, record.ended_at))
    assert started.utcoffset() == ended.utcoffset() == timedelta(0)
    assert started <= ended


def test_stored_json_is_strict_so_other_tools_can_read_it(store: Store, store_path: Path):
    run_id = start(store)
    store.finish_run(run_id, {"loss": math.nan}, {"loss": {"x": [0], "y": [math.inf]}})
    with raw_connection(store_path) as connection:
        metrics_text, curves_text = connection.execute(
            "SELECT metrics, curves FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    for text in (metrics_text, curves_text):
        json.loads(text, parse_constant=pytest.fail)  # NaN/Infinity literals would call it


def test_numpy_like_scalars_are_stored_as_plain_numbers(store: Store):
    class Scalar:  # stands in for a numpy or 0-d torch scalar without importing either
        def __init__(self, value):
            self.value = value

        def item(self):
            return self.value

        def __float__(self):
            return float(self.value)

    run_id = start(store)
    store.finish_run(
        run_id, {"loss": Scalar(0.5)}, {"loss": {"x": [Scalar(1), Scalar(2)], "y": [0.5, 0.25]}}
    )
    record = store.get(run_id)
    assert record.metrics == {"loss": 0.5}
    assert record.curves["loss"]["x"] == [1, 2]
    assert all(type(x) is int for x in record.curves["loss"]["x"])


def test_curve_with_unpaired_points_is_rejected(store: Store):
    run_id = start(store)
    with pytest.raises(ValueError, match="2 x values but 1 y values"):
        store.finish_run(run_id, {}, {"loss": {"x": [1, 2], "y": [0.5]}})
    assert store.get(run_id).status == "running", "nothing was written"


def test_to_dict_is_json_serialisable(store: Store):
    run_id = start(store)
    store.finish_run(run_id, {"loss": 0.5}, {"loss": {"x": [1], "y": [0.5]}}, "epoch")
    as_dict = store.get(run_id).to_dict()
    assert set(as_dict) == set(RunRecord.__dataclass_fields__)
    assert json.loads(json.dumps(as_dict))["metrics"] == {"loss": 0.5}


def test_runs_filters_by_experiment_and_status_in_id_order(store: Store):
    xor_finished = start(store, seed=0)
    store.finish_run(xor_finished, {"loss": 0.1}, {})
    xor_running = start(store, seed=1)
    mnist_finished = start(store, seed=0, experiment="mnist")
    store.finish_run(mnist_finished, {"loss": 0.2}, {})

    assert [r.id for r in store.runs()] == [xor_finished, xor_running, mnist_finished]
    assert [r.id for r in store.runs("xor")] == [xor_finished, xor_running]
    assert [r.id for r in store.runs(status="finished")] == [xor_finished, mnist_finished]
    assert [r.id for r in store.runs("xor", "running")] == [xor_running]
    assert store.runs("nope") == []
    assert store.experiments() == ["mnist", "xor"]


def test_runs_with_unknown_status_names_the_valid_ones(store: Store):
    with pytest.raises(NeuroplasticError) as excinfo:
        store.runs(status="done")
    assert all(status in str(excinfo.value) for status in RUN_STATUSES)


def test_get_of_missing_id_raises(store: Store, store_path: Path):
    with pytest.raises(NeuroplasticError, match="no run with id 42") as excinfo:
        store.get(42)
    assert str(store_path) in str(excinfo.value)


def test_data_persists_across_reopen(store_path: Path):
    with Store(store_path) as store:
        run_id = start(store)
        store.finish_run(run_id, {"loss": 0.5}, {})
    with Store(store_path) as reopened:
        assert reopened.get(run_id).metrics == {"loss": 0.5}


# -- config hash -------------------------------------------------------------------------------


def test_config_hash_is_stable_under_key_order():
    first = {"lr": 0.1, "optim": {"name": "sgd", "momentum": 0.9}, "layers": [2, 3]}
    reordered = {"layers": [2, 3], "optim": {"momentum": 0.9, "name": "sgd"}, "lr": 0.1}
    assert config_hash(first) == config_hash(reordered)
    assert len(config_hash(first)) == 16
    assert all(c in "0123456789abcdef" for c in config_hash(first))


def test_config_hash_differs_for_different_values():
    assert config_hash({"lr": 0.1}) != config_hash({"lr": 0.2})
    assert config_hash({"lr": 0.1}) != config_hash({"eta": 0.1})
    assert config_hash({"layers": [2, 3]}) != config_hash({"layers": [3, 2]})


def test_config_hash_is_a_known_constant():
    """Resume across library versions needs the hash never to change for the same config."""
    assert config_hash({"b": 1, "a": [1.5, "x"]}) == config_hash({"a": [1.5, "x"], "b": 1})
    assert config_hash({}) == "44136fa355b3678a"


# -- resume bookkeeping ------------------------------------------------------------------------


def test_finished_seeds_counts_only_finished_runs_of_same_experiment_and_config(store: Store):
    config = RUN_DEFAULTS["config"]
    finished_0 = start(store, seed=0)
    store.finish_run(finished_0, {"loss": 0.1}, {})
    finished_2 = start(store, seed=2)
    store.finish_run(finished_2, {"loss": 0.1}, {})
    start(store, seed=1)  # still running
    store.mark_run(start(store, seed=3), "failed", "diverged")
    store.mark_run(start(store, seed=4), "interrupted")
    other_config = start(store, seed=5, config={**config, "lr": 0.5})
    store.finish_run(other_config, {"loss": 0.1}, {})
    other_experiment = start(store, seed=6, experiment="mnist")
    store.finish_run(other_experiment, {"loss": 0.1}, {})

    assert store.finished_seeds("xor", config_hash(config)) == {0: finished_0, 2: finished_2}
    assert store.finished_seeds("mnist", config_hash(config)) == {6: other_experiment}
    assert store.finished_seeds("xor", "0" * 16) == {}


def test_finished_seeds_prefers_the_latest_run_of_a_seed(store: Store):
    ids = []
    for _ in range(2):
        ids.append(start(store, seed=0))
        store.finish_run(ids[-1], {"loss": 0.1}, {})
    assert store.finished_seeds("xor", config_hash(RUN_DEFAULTS["config"])) == {0: ids[-1]}


# -- status changes ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_mark_run_records_status_error_and_end_time(store: Store, status: str):
    run_id = start(store)
    store.mark_run(run_id, status, "boom")
    record = store.get(run_id)
    assert (record.status, record.error) == (status, "boom")
    assert record.ended_at is not None
    assert record.metrics == {} and record.curves == {}


def test_mark_run_never_downgrades_a_finished_run(store: Store):
    run_id = start(store)
    store.finish_run(run_id, {"loss": 0.1}, {})
    store.mark_run(run_id, "interrupted", "Ctrl-C just after finishing")
    record = store.get(run_id)
    assert (record.status, record.error, record.metrics) == ("finished", None, {"loss": 0.1})


def test_mark_run_rejects_statuses_it_does_not_set(store: Store):
    run_id = start(store)
    for status in ("finished", "running", "done"):
        with pytest.raises(ValueError):
            store.mark_run(run_id, status)


def test_mark_and_finish_of_missing_id_raise(store: Store):
    with pytest.raises(NeuroplasticError, match="no run with id 9"):
        store.mark_run(9, "failed")
    with pytest.raises(NeuroplasticError, match="no run with id 9"):
        store.finish_run(9, {}, {})


def test_a_run_finishes_only_once(store: Store):
    run_id = start(store)
    store.finish_run(run_id, {"loss": 0.1}, {})
    with pytest.raises(NeuroplasticError, match="cannot be finished"):
        store.finish_run(run_id, {"loss": 0.9}, {})
    assert store.get(run_id).metrics == {"loss": 0.1}


# -- stale runs --------------------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(child.stdout)


def set_owner(path: Path, run_id: int, *, pid: int, hostname: str | None = None) -> None:
    with raw_connection(path) as connection:
        connection.execute("UPDATE runs SET pid = ? WHERE id = ?", (pid, run_id))
        if hostname is not None:
            connection.execute("UPDATE runs SET hostname = ? WHERE id = ?", (hostname, run_id))


@posix_only
def test_open_marks_running_runs_of_dead_processes_on_this_host_interrupted(store_path: Path):
    with Store(store_path) as store:
        dead = start(store, seed=0)
        alive = start(store, seed=1)  # this process: still alive
        other_host = start(store, seed=2)
    set_owner(store_path, dead, pid=dead_pid())
    set_owner(store_path, other_host, pid=dead_pid(), hostname="some-other-host.invalid")

    with Store(store_path) as reopened:
        assert reopened.get(dead).status == "interrupted"
        assert reopened.get(dead).error == STALE_RUN_ERROR
        assert reopened.get(alive).status == "running"
        assert reopened.get(other_host).status == "running"


# -- kill -9 -----------------------------------------------------------------------------------


CHILD_PRELUDE = f"""
import sys, time
from neuroplastic.store import Store
RUN = dict({", ".join(f"{k}={v!r}" for k, v in RUN_DEFAULTS.items())})
"""

KILLED_WHILE_IDLE = """
with Store(sys.argv[1]) as store:
    first = store.start_run(seed=0, **RUN)
    store.finish_run(first, {"loss": 0.25}, {"loss": {"x": [1, 2], "y": [0.5, 0.25]}})
    store.start_run(seed=1, **RUN)
    print("seed 1 running", flush=True)
    time.sleep(120)
"""

BIG_METRICS = {f"metric_{i}": i / 7 for i in range(200)}
BIG_CURVES = {
    f"curve_{i}": {"x": list(range(300)), "y": [j / 3 for j in range(300)]} for i in range(4)
}

KILLED_WHILE_WRITING = f"""
metrics = {BIG_METRICS!r}
curves = {BIG_CURVES!r}
with Store(sys.argv[1]) as store:
    seed = 0
    while True:
        run_id = store.start_run(seed=seed, **RUN)
        store.finish_run(run_id, metrics, curves, "epoch")
        if seed == 0:
            print("writing", flush=True)
        seed += 1
"""


@pytest.fixture
def spawn_store_child(store_path: Path):
    """Start a Python child running a store script; kill and reap any left at teardown."""
    children: list[subprocess.Popen] = []
    package_root = str(Path(neuroplastic.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }

    def spawn(script: str) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD_PRELUDE + script), str(store_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        children.append(child)
        return child

    yield spawn
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()


def wait_for_line(child: subprocess.Popen, expected: str, timeout_s: float = 30.0) -> None:
    ready, _, _ = select.select([child.stdout], [], [], timeout_s)
    assert ready, f"child printed nothing within {timeout_s}s"
    line = child.stdout.readline()
    assert line.strip() == expected, f"child said {line!r}; stderr:\n{child.stderr.read()}"


def kill_and_reap(child: subprocess.Popen) -> None:
    """SIGKILL, then wait: an unreaped zombie still answers ``os.kill(pid, 0)`` as alive."""
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def assert_integrity_ok(path: Path) -> None:
    with raw_connection(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@posix_only
def test_kill_9_keeps_finished_seed_and_interrupts_running_one(store_path, spawn_store_child):
    child = spawn_store_child(KILLED_WHILE_IDLE)
    wait_for_line(child, "seed 1 running")
    kill_and_reap(child)

    assert_integrity_ok(store_path)
    with Store(store_path) as store:
        seed_0, seed_1 = store.runs()
        assert (seed_0.seed, seed_0.status) == (0, "finished")
        assert seed_0.metrics == {"loss": 0.25}
        assert seed_0.curves == {"loss": {"x": [1, 2], "y": [0.5, 0.25]}}
        assert (seed_1.seed, seed_1.status) == (1, "interrupted")
        assert seed_1.error == STALE_RUN_ERROR
        assert store.finished_seeds("xor", config_hash(RUN_DEFAULTS["config"])) == {0: seed_0.id}


@posix_only
@pytest.mark.parametrize("attempt", range(4))
def test_kill_9_mid_write_never_leaves_a_half_written_run(store_path, spawn_store_child, attempt):
    child = spawn_store_child(KILLED_WHILE_WRITING)
    wait_for_line(child, "writing")
    delay_s = random.uniform(0.0, 0.2)
    time.sleep(delay_s)
    kill_and_reap(child)

    assert_integrity_ok(store_path)
    with Store(store_path) as store:
        runs = store.runs()
    finished = [run for run in runs if run.status == "finished"]
    assert finished, f"killed after {delay_s:.3f}s with nothing finished"
    for run in runs:
        context = f"run {run.id} ({run.status}), killed after {delay_s:.3f}s"
        if run.status == "finished":
            assert run.metrics == BIG_METRICS, context
            assert run.curves == BIG_CURVES, context
            assert run.ended_at is not None, context
        else:
            assert run.status == "interrupted", context
            assert (run.metrics, run.curves, run.curve_x_label) == ({}, {}, None), context
    assert [run.seed for run in runs] == list(range(len(runs))), "no seed lost or duplicated"


# -- files that are not our store --------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(NeuroplasticError, match="not an SQLite database") as excinfo:
        Store(path)
    assert str(path) in str(excinfo.value)
    assert excinfo.value.hint
    assert path.read_text().startswith("these are my notes"), "the file is left untouched"


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path):
    path = tmp_path / "other.db"
    with raw_connection(path) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(NeuroplasticError, match="other tables") as excinfo:
        Store(path)
    assert str(path) in str(excinfo.value)
    assert excinfo.value.hint
    with raw_connection(path) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == [("customers",)], "nothing was added to the foreign database"


def test_a_store_from_a_newer_version_is_refused(store_path: Path):
    Store(store_path).close()
    with raw_connection(store_path) as connection:
        connection.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(NeuroplasticError, match="newer neuroplastic") as excinfo:
        Store(store_path)
    assert str(store_path) in str(excinfo.value)
    assert "upgrade" in excinfo.value.hint


def test_an_empty_file_becomes_a_new_store(tmp_path: Path):
    path = tmp_path / "empty.db"
    path.touch()
    with Store(path) as store:
        assert store.runs() == []


def test_a_directory_is_refused(tmp_path: Path):
    with pytest.raises(NeuroplasticError, match="is a directory"):
        Store(tmp_path)
