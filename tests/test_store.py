"""Tests for the results store: round trips, resume bookkeeping, tuning trials, surviving kill -9,
and migrating files written by earlier versions."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import select
import shutil
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
from neuroplastic.results import Key, curves_to_records, metrics_to_records
from neuroplastic.store import (
    RUN_STATUSES,
    SCHEMA_VERSION,
    STALE_RUN_ERROR,
    RunRecord,
    Store,
    TrialRecord,
    _legacy_key,
    config_hash,
)

COMMITTED_STORE = Path(__file__).resolve().parents[1] / "results" / "neuroplastic.db"

LOSS = Key("xor", "loss")

RUN_DEFAULTS = dict(
    experiment="xor",
    config={"lr": 0.1, "hidden": 8},
    quick=True,
    dataset="xor",
    device="cpu",
    version="0.1.0",
    git_rev="abc1234",
)

TRIAL_DEFAULTS = dict(
    experiment="xor",
    config={"lr": 0.1, "hidden": 8},
    method="backprop",
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


def start_trial(store: Store, number: int = 0, **overrides) -> int:
    defaults = {"params": {"lr": 0.1 * (number + 1)}, "seed": 1000 + number}
    return store.start_trial(**{**TRIAL_DEFAULTS, **defaults, "number": number, **overrides})


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
    test_error, loss = Key("backprop", "test_error"), Key("hebb", "loss", width=64)
    metrics = {test_error: 0.0178, loss: math.nan, Key("", "a"): math.inf, Key("", "b"): -math.inf}
    curves = {
        test_error: {"x": [1, 2, 3], "y": [0.05, math.nan, 0.03]},
        loss: {"x": [1, 2, 3], "y": [math.inf, -math.inf, 1.5]},
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
    store.finish_run(run_id, {LOSS: math.nan}, {LOSS: {"x": [0], "y": [math.inf]}})
    with raw_connection(store_path) as connection:
        metrics_text, curves_text = connection.execute(
            "SELECT metrics, curves FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    for text in (metrics_text, curves_text):
        json.loads(text, parse_constant=pytest.fail)  # NaN/Infinity literals would call it


class Scalar:
    """Stands in for a numpy or 0-d torch scalar without importing either."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value

    def __float__(self):
        return float(self.value)


class Array:
    """Stands in for an array of several elements, whose ``.item()`` refuses."""

    def item(self):
        raise ValueError("only one element tensors can be converted to Python scalars")


def test_numpy_like_scalars_are_stored_as_plain_numbers(store: Store):
    run_id = start(store)
    store.finish_run(
        run_id, {LOSS: Scalar(0.5)}, {LOSS: {"x": [Scalar(1), Scalar(2)], "y": [0.5, 0.25]}}
    )
    record = store.get(run_id)
    assert record.metrics == {LOSS: 0.5}
    assert record.curves[LOSS]["x"] == [1, 2]
    assert all(type(x) is int for x in record.curves[LOSS]["x"])


def test_curve_with_unpaired_points_is_rejected(store: Store):
    run_id = start(store)
    with pytest.raises(ValueError, match="2 x values but 1 y values"):
        store.finish_run(run_id, {}, {LOSS: {"x": [1, 2], "y": [0.5]}})
    assert store.get(run_id).status == "running", "nothing was written"


def test_to_dict_is_json_serialisable(store: Store):
    run_id = start(store)
    store.finish_run(run_id, {LOSS: 0.5}, {LOSS: {"x": [1], "y": [0.5]}}, "epoch")
    as_dict = store.get(run_id).to_dict()
    assert set(as_dict) == set(RunRecord.__dataclass_fields__)
    assert json.loads(json.dumps(as_dict))["metrics"] == [
        {"method": "xor", "metric": "loss", "value": 0.5}
    ]
    assert json.loads(json.dumps(as_dict))["curves"] == [
        {"method": "xor", "metric": "loss", "x": [1], "y": [0.5]}
    ]


def test_runs_filters_by_experiment_and_status_in_id_order(store: Store):
    xor_finished = start(store, seed=0)
    store.finish_run(xor_finished, {LOSS: 0.1}, {})
    xor_running = start(store, seed=1)
    mnist_finished = start(store, seed=0, experiment="mnist")
    store.finish_run(mnist_finished, {LOSS: 0.2}, {})

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
        store.finish_run(run_id, {LOSS: 0.5}, {})
    with Store(store_path) as reopened:
        assert reopened.get(run_id).metrics == {LOSS: 0.5}


# -- hyper-parameters of final runs ------------------------------------------------------------


def test_hyperparameters_round_trip_with_the_run(store: Store):
    hyperparameters = {
        "backprop": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "schedule": None},
        "feedback_alignment": {"lr": 0.02, "layers": (784, 10), "clip": math.inf},
    }
    run_id = start(store, hyperparameters=hyperparameters)
    store.finish_run(run_id, {LOSS: 0.1}, {})
    record = store.get(run_id)
    assert record.hyperparameters == {
        "backprop": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "schedule": None},
        "feedback_alignment": {"lr": 0.02, "layers": [784, 10], "clip": math.inf},
    }
    assert list(record.hyperparameters) == ["backprop", "feedback_alignment"], "order is kept"
    assert json.loads(json.dumps(record.to_dict()))["hyperparameters"]["backprop"]["lr"] == 0.1


def test_a_flat_hyperparameter_dict_is_fine_too(store: Store):
    run_id = start(store, hyperparameters={"lr": 0.5, "batch_size": 32})
    assert store.get(run_id).hyperparameters == {"lr": 0.5, "batch_size": 32}


def test_runs_without_hyperparameters_record_an_empty_object(store: Store, store_path: Path):
    run_id = start(store)
    assert store.get(run_id).hyperparameters == {}
    assert RunRecord.__dataclass_fields__["hyperparameters"].default_factory() == {}
    with raw_connection(store_path) as connection:
        (stored,) = connection.execute(
            "SELECT hyperparameters FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    assert stored == "{}"


def test_hyperparameters_unwrap_numpy_like_scalars(store: Store):
    run_id = start(store, hyperparameters={"backprop": {"lr": Scalar(0.5), "epochs": Scalar(3)}})
    stored = store.get(run_id).hyperparameters["backprop"]
    assert stored == {"lr": 0.5, "epochs": 3}
    assert type(stored["epochs"]) is int


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ([("lr", 0.1)], "hyperparameters must be a dict of names to values, not a list"),
        ({"backprop": {1: 0.1}}, r"hyperparameters\['backprop'\] has the key 1 \(int\)"),
        ({"backprop": {"act": object()}}, r"\['backprop'\]\['act'\] is of type object"),
        ({"backprop": {"lrs": [0.1, {0.2}]}}, r"\['backprop'\]\['lrs'\]\[1\] is of type set"),
        ({"backprop": {"w": Array()}}, r"\['backprop'\]\['w'\] is of type Array"),
    ],
)
def test_hyperparameters_json_cannot_hold_are_refused_before_anything_is_written(
    store: Store, hyperparameters, message: str
):
    with pytest.raises(NeuroplasticError, match=message) as excinfo:
        start(store, hyperparameters=hyperparameters)
    assert excinfo.value.hint
    assert store.runs() == []


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
    store.finish_run(finished_0, {LOSS: 0.1}, {})
    finished_2 = start(store, seed=2)
    store.finish_run(finished_2, {LOSS: 0.1}, {})
    start(store, seed=1)  # still running
    store.mark_run(start(store, seed=3), "failed", "diverged")
    store.mark_run(start(store, seed=4), "interrupted")
    other_config = start(store, seed=5, config={**config, "lr": 0.5})
    store.finish_run(other_config, {LOSS: 0.1}, {})
    other_experiment = start(store, seed=6, experiment="mnist")
    store.finish_run(other_experiment, {LOSS: 0.1}, {})

    assert store.finished_seeds("xor", config_hash(config)) == {0: finished_0, 2: finished_2}
    assert store.finished_seeds("mnist", config_hash(config)) == {6: other_experiment}
    assert store.finished_seeds("xor", "0" * 16) == {}


def test_finished_seeds_prefers_the_latest_run_of_a_seed(store: Store):
    ids = []
    for _ in range(2):
        ids.append(start(store, seed=0))
        store.finish_run(ids[-1], {LOSS: 0.1}, {})
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
    store.finish_run(run_id, {LOSS: 0.1}, {})
    store.mark_run(run_id, "interrupted", "Ctrl-C just after finishing")
    record = store.get(run_id)
    assert (record.status, record.error, record.metrics) == ("finished", None, {LOSS: 0.1})


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
    store.finish_run(run_id, {LOSS: 0.1}, {})
    with pytest.raises(NeuroplasticError, match="cannot be finished"):
        store.finish_run(run_id, {LOSS: 0.9}, {})
    assert store.get(run_id).metrics == {LOSS: 0.1}


# -- tuning trials -----------------------------------------------------------------------------


def test_trial_lifecycle_round_trips_every_field(store: Store):
    config = {"lr": 0.1, "layers": [2, 8, 1]}
    params = {"lr": 0.03, "momentum": 0.9, "nesterov": False}
    trial_id = start_trial(store, number=3, config=config, params=params, seed=1003)
    running = store.get_trial(trial_id)
    assert running.status == "running"
    assert (running.value, running.ended_at, running.curves, running.error) == (
        None,
        None,
        {},
        None,
    )
    assert store.trials() == [running]

    curves = {"validation_error": {"x": [1, 2], "y": [0.4, 0.2]}}
    store.finish_trial(trial_id, 0.2, curves)
    record = store.get_trial(trial_id)

    assert record.id == trial_id
    assert (record.experiment, record.method, record.number, record.seed) == (
        "xor",
        "backprop",
        3,
        1003,
    )
    assert record.config == config
    assert record.config_hash == config_hash(config)
    assert record.params == params
    assert list(record.params) == list(params)
    assert record.quick is True
    assert (record.dataset, record.device) == ("xor", "cpu")
    assert (record.version, record.git_rev) == ("0.1.0", "abc1234")
    assert (record.status, record.value, record.error) == ("finished", 0.2, None)
    assert record.curves == curves
    started, ended = (datetime.fromisoformat(t) for t in (record.started_at, record.ended_at))
    assert started.utcoffset() == ended.utcoffset() == timedelta(0)
    assert started <= ended
    assert store.runs() == [], "a trial is not a final run"


def test_a_trial_without_curves_stores_none(store: Store):
    trial_id = start_trial(store)
    store.finish_trial(trial_id, 0.5)
    assert store.get_trial(trial_id).curves == {}


def test_trial_to_dict_is_json_serialisable(store: Store):
    trial_id = start_trial(store)
    store.finish_trial(trial_id, 0.5, {"loss": {"x": [1], "y": [0.5]}})
    as_dict = store.get_trial(trial_id).to_dict()
    assert set(as_dict) == set(TrialRecord.__dataclass_fields__)
    assert json.loads(json.dumps(as_dict))["value"] == 0.5


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -1e-300, 1 / 3, 2.0**60])
def test_trial_values_round_trip_exactly_non_finite_included(store_path: Path, value: float):
    with Store(store_path) as store:
        trial_id = start_trial(store)
        store.finish_trial(trial_id, value)
        assert_same_floats([store.get_trial(trial_id).value], [value])
    with Store(store_path) as reopened:
        assert_same_floats([reopened.get_trial(trial_id).value], [value])
    with raw_connection(store_path) as connection:
        (text,) = connection.execute(
            "SELECT value FROM trials WHERE id = ?", (trial_id,)
        ).fetchone()
    json.loads(text, parse_constant=pytest.fail)  # strict JSON: NaN is a tagged object


def test_trial_value_unwraps_scalars_and_refuses_non_numbers(store: Store):
    trial_id = start_trial(store)
    for bad in ("0.5", None, True, [0.5]):
        with pytest.raises(TypeError, match="expected a number"):
            store.finish_trial(trial_id, bad)
    assert store.get_trial(trial_id).status == "running", "nothing was written"
    store.finish_trial(trial_id, Scalar(0.25))
    assert store.get_trial(trial_id).value == 0.25


def test_trial_curve_with_unpaired_points_is_rejected(store: Store):
    trial_id = start_trial(store)
    with pytest.raises(ValueError, match="2 x values but 1 y values"):
        store.finish_trial(trial_id, 0.5, {"loss": {"x": [1, 2], "y": [0.5]}})
    assert store.get_trial(trial_id).status == "running", "nothing was written"


def test_a_trial_finishes_only_once(store: Store):
    trial_id = start_trial(store)
    store.finish_trial(trial_id, 0.2)
    with pytest.raises(NeuroplasticError, match="is 'finished', so it cannot be finished") as exc:
        store.finish_trial(trial_id, 0.9)
    assert exc.value.hint
    assert store.get_trial(trial_id).value == 0.2

    failed = start_trial(store, number=1)
    store.mark_trial(failed, "failed", "diverged")
    with pytest.raises(NeuroplasticError, match="is 'failed', so it cannot be finished"):
        store.finish_trial(failed, 0.1)
    assert store.get_trial(failed).value is None


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_mark_trial_records_status_error_and_end_time(store: Store, status: str):
    trial_id = start_trial(store)
    store.mark_trial(trial_id, status, "boom")
    record = store.get_trial(trial_id)
    assert (record.status, record.error, record.value, record.curves) == (status, "boom", None, {})
    assert record.ended_at is not None


def test_mark_trial_never_downgrades_a_finished_trial(store: Store):
    trial_id = start_trial(store)
    store.finish_trial(trial_id, 0.1, {"loss": {"x": [1], "y": [0.1]}})
    store.mark_trial(trial_id, "interrupted", "Ctrl-C just after finishing")
    record = store.get_trial(trial_id)
    assert (record.status, record.error, record.value) == ("finished", None, 0.1)
    assert record.curves == {"loss": {"x": [1], "y": [0.1]}}


def test_mark_trial_rejects_statuses_it_does_not_set(store: Store):
    trial_id = start_trial(store)
    for status in ("finished", "running", "done"):
        with pytest.raises(ValueError, match="mark_trial status"):
            store.mark_trial(trial_id, status)
    assert store.get_trial(trial_id).status == "running"


def test_trial_ids_that_do_not_exist_raise(store: Store, store_path: Path):
    start(store)  # run 1 exists; trial 1 does not: ids are per table
    calls = [
        lambda: store.get_trial(1),
        lambda: store.finish_trial(1, 0.1),
        lambda: store.mark_trial(1, "failed"),
    ]
    for call in calls:
        with pytest.raises(NeuroplasticError, match="no trial with id 1") as excinfo:
            call()
        assert str(store_path) in str(excinfo.value)
        assert "trials" in excinfo.value.hint


def test_trials_filter_by_study_and_status_in_id_order(store: Store):
    config = TRIAL_DEFAULTS["config"]
    backprop_0 = start_trial(store, 0)
    store.finish_trial(backprop_0, 0.1)
    backprop_1 = start_trial(store, 1)
    store.mark_trial(backprop_1, "failed", "diverged")
    fa_0 = start_trial(store, 0, method="feedback_alignment")
    store.finish_trial(fa_0, 0.2)
    other_config = start_trial(store, 0, config={**config, "hidden": 16})
    store.finish_trial(other_config, 0.3)
    mnist = start_trial(store, 0, experiment="mnist")  # still running

    def ids(trials):
        return [trial.id for trial in trials]

    study = ("xor", config_hash(config))
    assert ids(store.trials()) == [backprop_0, backprop_1, fa_0, other_config, mnist]
    assert ids(store.trials(*study, "backprop")) == [backprop_0, backprop_1]
    assert ids(store.trials(*study, "backprop", "finished")) == [backprop_0]
    assert ids(store.trials(*study)) == [backprop_0, backprop_1, fa_0]
    assert ids(store.trials(method="feedback_alignment")) == [fa_0]
    assert ids(store.trials(config_hash=config_hash({**config, "hidden": 16}))) == [other_config]
    assert ids(store.trials(status="running")) == [mnist]
    assert ids(store.trials("mnist")) == [mnist]
    assert store.trials("xor", "0" * 16) == []
    assert store.trials(*study, "hebb") == []


def test_trials_with_unknown_status_names_the_valid_ones(store: Store):
    with pytest.raises(NeuroplasticError) as excinfo:
        store.trials(status="done")
    assert all(status in str(excinfo.value) for status in RUN_STATUSES)


def test_an_interrupted_trial_can_be_tried_again_under_its_number(store: Store):
    first = start_trial(store, 2)
    store.mark_trial(first, "interrupted")
    again = start_trial(store, 2)
    store.finish_trial(again, 0.4)
    trials = store.trials(method="backprop")
    assert [(t.id, t.number, t.status) for t in trials] == [
        (first, 2, "interrupted"),
        (again, 2, "finished"),
    ]


def test_trial_number_and_params_are_checked_before_anything_is_written(store: Store):
    with pytest.raises(ValueError, match="counts from 0"):
        start_trial(store, -1)
    with pytest.raises(TypeError):
        start_trial(store, number=1.5)
    with pytest.raises(NeuroplasticError, match="params must be a dict"):
        start_trial(store, params=[0.1])
    with pytest.raises(NeuroplasticError, match=r"params\['act'\] is of type object"):
        start_trial(store, params={"act": object()})
    assert store.trials() == []


def test_trial_params_unwrap_scalars_and_keep_non_finite_values(store: Store):
    trial_id = start_trial(store, params={"lr": Scalar(0.5), "clip": math.inf, "steps": Scalar(7)})
    params = store.get_trial(trial_id).params
    assert params == {"lr": 0.5, "clip": math.inf, "steps": 7}
    assert type(params["steps"]) is int


# -- stale runs --------------------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(child.stdout)


def set_owner(
    path: Path, row_id: int, *, pid: int, hostname: str | None = None, table: str = "runs"
) -> None:
    with raw_connection(path) as connection:
        connection.execute(f"UPDATE {table} SET pid = ? WHERE id = ?", (pid, row_id))
        if hostname is not None:
            connection.execute(f"UPDATE {table} SET hostname = ? WHERE id = ?", (hostname, row_id))


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


@posix_only
def test_open_marks_running_trials_of_dead_processes_on_this_host_interrupted(store_path: Path):
    with Store(store_path) as store:
        dead = start_trial(store, 0)
        alive = start_trial(store, 1)  # this process: still alive
        other_host = start_trial(store, 2)
        finished = start_trial(store, 3)
        store.finish_trial(finished, 0.5)
    set_owner(store_path, dead, pid=dead_pid(), table="trials")
    set_owner(store_path, finished, pid=dead_pid(), table="trials")
    set_owner(
        store_path, other_host, pid=dead_pid(), hostname="some-other-host.invalid", table="trials"
    )

    with Store(store_path) as reopened:
        assert reopened.get_trial(dead).status == "interrupted"
        assert reopened.get_trial(dead).error == STALE_RUN_ERROR
        assert reopened.get_trial(alive).status == "running"
        assert reopened.get_trial(other_host).status == "running"
        assert reopened.get_trial(finished).status == "finished"


# -- kill -9 -----------------------------------------------------------------------------------


CHILD_PRELUDE = f"""
import sys, time
from neuroplastic.results import Key
from neuroplastic.store import Store
LOSS = Key("xor", "loss")
RUN = dict({", ".join(f"{k}={v!r}" for k, v in RUN_DEFAULTS.items())})
"""

KILLED_WHILE_IDLE = """
with Store(sys.argv[1]) as store:
    first = store.start_run(seed=0, **RUN)
    store.finish_run(first, {LOSS: 0.25}, {LOSS: {"x": [1, 2], "y": [0.5, 0.25]}})
    store.start_run(seed=1, **RUN)
    print("seed 1 running", flush=True)
    time.sleep(120)
"""

KILLED_MID_STUDY = """
TRIAL = dict(RUN, method="backprop")
with Store(sys.argv[1]) as store:
    first = store.start_trial(number=0, params={"lr": 0.5}, seed=100, **TRIAL)
    store.finish_trial(first, float("nan"), {"val_error": {"x": [1, 2], "y": [0.5, 0.25]}})
    second = store.start_trial(number=1, params={"lr": 0.05}, seed=101, **TRIAL)
    store.finish_trial(second, 0.125)
    store.start_trial(number=2, params={"lr": 0.005}, seed=102, **TRIAL)
    print("trial 2 running", flush=True)
    time.sleep(120)
"""

BIG_METRICS = {Key("xor", f"metric_{i}", epoch=i): i / 7 for i in range(200)}
BIG_CURVES = {
    Key("xor", f"curve_{i}"): {"x": list(range(300)), "y": [j / 3 for j in range(300)]}
    for i in range(4)
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
        assert seed_0.metrics == {LOSS: 0.25}
        assert seed_0.curves == {LOSS: {"x": [1, 2], "y": [0.5, 0.25]}}
        assert (seed_1.seed, seed_1.status) == (1, "interrupted")
        assert seed_1.error == STALE_RUN_ERROR
        assert store.finished_seeds("xor", config_hash(RUN_DEFAULTS["config"])) == {0: seed_0.id}


@posix_only
def test_kill_9_mid_study_keeps_finished_trials_and_interrupts_running_one(
    store_path, spawn_store_child
):
    child = spawn_store_child(KILLED_MID_STUDY)
    wait_for_line(child, "trial 2 running")
    kill_and_reap(child)

    assert_integrity_ok(store_path)
    with Store(store_path) as store:
        study = store.trials("xor", config_hash(RUN_DEFAULTS["config"]), "backprop")
        assert [(t.number, t.seed, t.params, t.status) for t in study] == [
            (0, 100, {"lr": 0.5}, "finished"),
            (1, 101, {"lr": 0.05}, "finished"),
            (2, 102, {"lr": 0.005}, "interrupted"),
        ]
        assert math.isnan(study[0].value), "a diverged trial's NaN score survives"
        assert study[0].curves == {"val_error": {"x": [1, 2], "y": [0.5, 0.25]}}
        assert study[1].value == 0.125
        assert (study[2].value, study[2].error) == (None, STALE_RUN_ERROR)
        finished = [trial.id for trial in store.trials(status="finished")]
        assert finished == [study[0].id, study[1].id], "what a resumed study skips"


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


# -- the command line's view of a run ----------------------------------------------------------


def test_show_prints_a_runs_hyperparameters_only_when_it_has_some(store_path: Path, capsys):
    from neuroplastic.cli import main

    with Store(store_path) as store:
        tuned = start(store, hyperparameters={"backprop": {"lr": 0.125}, "fa": {"lr": 0.5}})
        untuned = start(store, seed=1)

    def show(*argv: str) -> str:
        with pytest.raises(SystemExit) as done:
            main(["show", *argv, "--store", str(store_path)])
        captured = capsys.readouterr()
        assert done.value.code == 0, captured.err
        return captured.out

    out = show(str(tuned))
    assert "hyperparameters backprop" in out and '{"lr": 0.125}' in out
    assert "hyperparameters fa" in out and '{"lr": 0.5}' in out
    assert "hyperparameters" not in show(str(untuned))
    assert json.loads(show(str(tuned), "--json"))["hyperparameters"]["fa"] == {"lr": 0.5}


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


# -- migrating files written by earlier versions -----------------------------------------------

V1_STATUS_CHECK = "CHECK (status IN ('running', 'finished', 'failed', 'interrupted'))"

V1_SCHEMA = (
    """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    f"""
CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment    TEXT    NOT NULL,
    config        TEXT    NOT NULL,
    config_hash   TEXT    NOT NULL,
    seed          INTEGER NOT NULL,
    quick         INTEGER NOT NULL CHECK (quick IN (0, 1)),
    dataset       TEXT    NOT NULL,
    device        TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    git_rev       TEXT,
    status        TEXT    NOT NULL {V1_STATUS_CHECK},
    started_at    TEXT    NOT NULL,
    ended_at      TEXT,
    metrics       TEXT    NOT NULL DEFAULT '{{}}',
    curves        TEXT    NOT NULL DEFAULT '{{}}',
    curve_x_label TEXT,
    error         TEXT,
    pid           INTEGER NOT NULL,
    hostname      TEXT    NOT NULL,
    CHECK (status != 'finished' OR ended_at IS NOT NULL)
)""",
    "CREATE INDEX runs_by_config ON runs (experiment, config_hash, seed, status)",
)
"""Schema version 1, verbatim as release 0.1 created it: the layout that files in the wild (and
``results/neuroplastic.db``) have. Frozen here on purpose; never import it from the library."""

V1_COLUMNS = (
    "id, experiment, config, config_hash, seed, quick, dataset, device, version, git_rev, "
    "status, started_at, ended_at, metrics, curves, curve_x_label, error, pid, hostname"
)

V1_ROWS = [
    # id, experiment, config, config_hash, seed, quick, dataset, device, version, git_rev,
    # status, started_at, ended_at, metrics, curves, curve_x_label, error, pid, hostname
    (1, "xor", '{"lr":0.1}', config_hash({"lr": 0.1}), 0, 0, "xor", "cpu", "0.1.0", "abc1234",
     "finished", "2026-01-01T00:00:00.000+00:00", "2026-01-01T00:01:00.000+00:00",
     '{"loss":{"$float":"NaN"},"acc":0.5}', '{"loss":{"x":[1,2],"y":[{"$float":"Infinity"},0.5]}}',
     "epoch", None, 1, "some-other-host.invalid"),
    (2, "xor", '{"lr":0.1}', config_hash({"lr": 0.1}), 1, 1, "xor", "cuda", "0.1.0", None,
     "interrupted", "2026-01-01T00:02:00.000+00:00", None, "{}", "{}", None,
     "process ended without finishing (killed?)", 2, "some-other-host.invalid"),
    (3, "mnist", '{"hidden":8}', config_hash({"hidden": 8}), 0, 0, "mnist", "cpu", "0.1.0",
     "abc1234", "failed", "2026-01-01T00:03:00.000+00:00", "2026-01-01T00:04:00.000+00:00",
     "{}", "{}", None, "diverged", 3, "some-other-host.invalid"),
    (4, "mnist", '{"hidden":8}', config_hash({"hidden": 8}), 1, 0, "mnist", "cpu", "0.1.0",
     "abc1234", "running", "2026-01-01T00:05:00.000+00:00", None, "{}", "{}", None, None, 4,
     "some-other-host.invalid"),
]  # fmt: skip
"""Raw rows as version 1 stored them (tagged NaN/inf in the JSON), from another host so that
opening the store leaves the running one alone."""


def make_v1_store(path: Path) -> None:
    """A store as version 1 wrote it, built from its own schema; run 5 was deleted, so its id is
    in ``sqlite_sequence`` but no row, and must never be handed out again."""
    with raw_connection(path) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        for statement in V1_SCHEMA:
            connection.execute(statement)
        connection.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
        placeholders = ", ".join("?" * len(V1_ROWS[0]))
        connection.executemany(f"INSERT INTO runs ({V1_COLUMNS}) VALUES ({placeholders})", V1_ROWS)
        connection.execute(
            f"INSERT INTO runs ({V1_COLUMNS}) VALUES ({placeholders})", (5, *V1_ROWS[0][1:])
        )
        connection.execute("DELETE FROM runs WHERE id = 5")


def raw_runs(path: Path, columns: str = V1_COLUMNS) -> list[tuple]:
    with raw_connection(path) as connection:
        return connection.execute(f"SELECT {columns} FROM runs ORDER BY id").fetchall()


def schema_version_of(path: Path) -> int:
    with raw_connection(path) as connection:
        (value,) = connection.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
    return int(value)


def layout(path: Path) -> dict:
    """Columns (name, type, not null, default, primary key), indexes and the trials table's SQL:
    everything a migrated file must share with a new one."""
    with raw_connection(path) as connection:
        tables = {
            table: [
                tuple(column[1:]) for column in connection.execute(f"PRAGMA table_info({table})")
            ]
            for table in ("meta", "runs", "trials")
        }
        indexes = {
            name: (table, [row[2] for row in connection.execute(f"PRAGMA index_info({name})")])
            for name, table in connection.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
        (trials_sql,) = connection.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'trials'"
        ).fetchone()
    return {"tables": tables, "indexes": indexes, "trials_sql": trials_sql}


KEPT_COLUMNS = ", ".join(c for c in V1_COLUMNS.split(", ") if c not in ("metrics", "curves"))
"""What no migration changes; metrics and curves became records in version 3."""


def legacy_values(experiment: str, text: str) -> dict:
    """A stored metrics or curves column, keyed as version 3 reads it: version 1 and 2 objects
    keyed by strings, or version 3 records."""
    decoded = decode_v1_json(text)
    if isinstance(decoded, list):
        return {
            Key.from_dict(r): r["value"] if "value" in r else {"x": r["x"], "y": r["y"]}
            for r in decoded
        }
    return {_legacy_key(experiment, name): value for name, value in decoded.items()}


def same_json(a, b) -> bool:
    """Equality of decoded JSON values where NaN equals NaN (``json.dumps`` spells both "NaN")."""
    return json.dumps(a) == json.dumps(b)


def decode_v1_json(text: str):
    """Version 1's stored JSON, decoded independently of the library: ``{"$float": "NaN"}`` and
    friends stand for non-finite floats."""
    return json.loads(
        text, object_hook=lambda obj: float(obj["$float"]) if set(obj) == {"$float"} else obj
    )


def test_a_version_1_store_is_migrated_in_place_keeping_every_run(store_path: Path):
    store_path.parent.mkdir(parents=True)
    make_v1_store(store_path)
    before = raw_runs(store_path)

    with Store(store_path) as store:
        records = store.runs()
        assert store.trials() == []
        assert store.get(4).status == "running", "another host's run is left alone"

    assert schema_version_of(store_path) == SCHEMA_VERSION == 3
    assert raw_runs(store_path, KEPT_COLUMNS) == [
        tuple(row[V1_COLUMNS.split(", ").index(c)] for c in KEPT_COLUMNS.split(", "))
        for row in before
    ], "no stored byte of an old run changed, but its metrics' layout"
    assert raw_runs(store_path, "hyperparameters") == [("{}",)] * len(V1_ROWS)
    assert [record.id for record in records] == [1, 2, 3, 4]
    for record, row in zip(records, V1_ROWS, strict=True):
        raw = dict(zip(V1_COLUMNS.split(", "), row, strict=True))
        assert record.experiment == raw["experiment"]
        assert record.config == json.loads(raw["config"])
        assert record.config_hash == raw["config_hash"]
        assert (record.seed, record.quick, record.status) == (
            raw["seed"],
            bool(raw["quick"]),
            raw["status"],
        )
        assert (record.git_rev, record.error, record.ended_at) == (
            raw["git_rev"],
            raw["error"],
            raw["ended_at"],
        )
        assert same_json(
            metrics_to_records(record.metrics),
            metrics_to_records(legacy_values(raw["experiment"], raw["metrics"])),
        )
        assert same_json(
            curves_to_records(record.curves),
            curves_to_records(legacy_values(raw["experiment"], raw["curves"])),
        )
        assert record.hyperparameters == {}
    loss = Key("", "loss")  # version 1 had no method in this key
    assert math.isnan(records[0].metrics[loss]) and records[0].curves[loss]["y"][0] == math.inf


def test_a_migrated_store_is_fully_usable_and_never_reuses_an_id(store_path: Path):
    store_path.parent.mkdir(parents=True)
    make_v1_store(store_path)
    with Store(store_path) as store:
        run_id = start(store, hyperparameters={"backprop": {"lr": 0.25}})
        store.finish_run(run_id, {LOSS: 0.1}, {})
        trial_id = start_trial(store)
        store.finish_trial(trial_id, 0.3)
    assert run_id == 6, "id 5 was used (and deleted) under version 1"
    with Store(store_path) as reopened:
        assert reopened.get(run_id).hyperparameters == {"backprop": {"lr": 0.25}}
        assert reopened.get_trial(trial_id).value == 0.3
        assert reopened.finished_seeds("xor", config_hash({"lr": 0.1})) == {0: 1}
    assert_integrity_ok(store_path)


def test_a_migrated_store_has_the_same_layout_as_a_new_one(tmp_path: Path):
    migrated, new = tmp_path / "migrated.db", tmp_path / "new.db"
    make_v1_store(migrated)
    Store(migrated).close()
    Store(new).close()
    assert layout(migrated) == layout(new)
    assert "hyperparameters" in [column[0] for column in layout(new)["tables"]["runs"]]


def test_migration_rechecks_the_version_under_the_write_lock(store_path: Path, monkeypatch):
    """Two processes open a version 1 file at once; both read version 1, the first migrates. The
    second must see version 2 once it holds the write lock, not migrate again (which would fail on
    the duplicate column). Simulated here by making the first, unlocked read say 1."""
    store_path.parent.mkdir(parents=True)
    make_v1_store(store_path)
    Store(store_path).close()  # the "other process" migrates
    real_schema_version = Store._schema_version
    reads = []

    def first_read_is_stale(self: Store) -> int:
        reads.append(real_schema_version(self))
        return 1 if len(reads) == 1 else reads[-1]

    monkeypatch.setattr(Store, "_schema_version", first_read_is_stale)
    with Store(store_path) as store:
        assert [record.id for record in store.runs()] == [1, 2, 3, 4]
    assert reads == [3, 3], "read once unlocked (made stale), once under the lock"
    assert schema_version_of(store_path) == 3


OPEN_WHEN_TOLD = """
line = sys.stdin.readline()
with Store(sys.argv[1]) as store:
    print(len(store.runs()), flush=True)
"""


@posix_only
def test_processes_opening_a_version_1_store_at_once_all_succeed(store_path: Path):
    store_path.parent.mkdir(parents=True)
    make_v1_store(store_path)
    package_root = str(Path(neuroplastic.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }
    script = textwrap.dedent(CHILD_PRELUDE + OPEN_WHEN_TOLD)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(store_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        time.sleep(0.5)  # let them import, so they open as nearly at once as we can make them
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            out, err = child.communicate(timeout=60)
            assert (child.returncode, out.strip()) == (0, str(len(V1_ROWS))), err
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert schema_version_of(store_path) == 3
    assert raw_runs(store_path, "hyperparameters") == [("{}",)] * len(V1_ROWS)


def test_a_failed_migration_leaves_the_file_as_it_was(store_path: Path):
    store_path.parent.mkdir(parents=True)
    make_v1_store(store_path)
    with raw_connection(store_path) as connection:  # a table in the way of the migration
        connection.execute("CREATE TABLE trials (note TEXT)")
    before = raw_runs(store_path)

    with pytest.raises(
        NeuroplasticError, match="could not migrate .* from store schema version 1 to 3"
    ) as excinfo:
        Store(store_path)
    assert str(store_path) in str(excinfo.value)
    assert "left as it was" in excinfo.value.hint
    assert schema_version_of(store_path) == 1
    assert raw_runs(store_path) == before
    with raw_connection(store_path) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(runs)")]
    assert "hyperparameters" not in columns, "the added column was rolled back with the rest"


def test_a_store_older_than_any_migration_is_refused(store_path: Path):
    store_path.parent.mkdir(parents=True)
    make_v1_store(store_path)
    with raw_connection(store_path) as connection:
        connection.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(NeuroplasticError, match="schema version 0, which this version") as excinfo:
        Store(store_path)
    assert excinfo.value.hint
    assert schema_version_of(store_path) == 0


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_version_1_schema_here_is_the_one_release_files_have(tmp_path: Path):
    copy = tmp_path / "committed.db"
    shutil.copyfile(COMMITTED_STORE, copy)  # never open the committed file itself
    if schema_version_of(copy) != 1:
        pytest.skip("results/neuroplastic.db has been migrated; V1_SCHEMA stays as it was")
    with raw_connection(copy) as connection:
        stored = [
            sql.strip()
            for (sql,) in connection.execute(
                "SELECT sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY rowid"
            )
        ]
    assert stored == [statement.strip() for statement in V1_SCHEMA]


def test_a_copy_of_the_committed_store_opens_with_every_run_intact(tmp_path: Path):
    committed_hash = sha256_of(COMMITTED_STORE)
    copy = tmp_path / "committed.db"
    shutil.copyfile(COMMITTED_STORE, copy)  # never open the committed file itself
    before = raw_runs(copy)
    assert before, "the committed store has runs"
    version_before = schema_version_of(copy)

    with Store(copy) as store:
        records = store.runs()
        trials = store.trials()
    assert all(t.status in ("finished", "failed", "interrupted") for t in trials)
    if version_before == 1:
        assert trials == []  # migrated on opening: no trials yet
    assert schema_version_of(copy) == SCHEMA_VERSION
    assert raw_runs(copy, KEPT_COLUMNS) == [
        tuple(row[V1_COLUMNS.split(", ").index(c)] for c in KEPT_COLUMNS.split(", "))
        for row in before
    ], "no stored byte of a recorded run changed, but its metrics' layout"
    assert_integrity_ok(copy)
    assert [record.id for record in records] == [row[0] for row in before]
    for record, row in zip(records, before, strict=True):
        raw = dict(zip(V1_COLUMNS.split(", "), row, strict=True))
        assert (record.experiment, record.seed, record.status) == (
            raw["experiment"],
            raw["seed"],
            raw["status"],
        )
        assert record.config == json.loads(raw["config"])
        assert same_json(
            metrics_to_records(record.metrics),
            metrics_to_records(legacy_values(raw["experiment"], raw["metrics"])),
        ), record.id
        assert same_json(
            curves_to_records(record.curves),
            curves_to_records(legacy_values(raw["experiment"], raw["curves"])),
        ), record.id
        if version_before == 1:
            assert record.hyperparameters == {}
    assert sha256_of(COMMITTED_STORE) == committed_hash, "the committed file is untouched"
    siblings = {path.name for path in COMMITTED_STORE.parent.glob(COMMITTED_STORE.name + "-*")}
    assert not siblings, f"nothing opened the committed file ({siblings})"
