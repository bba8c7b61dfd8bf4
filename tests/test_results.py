"""Metrics as records with named coordinates, and the migration of string-keyed stores."""

import json
import pickle
import sqlite3

import pytest

from neuroplastic.results import (
    Key,
    curves_from_records,
    curves_to_records,
    metrics_from_records,
    metrics_to_records,
    only,
    select,
)
from neuroplastic.store import Store, _legacy_key


def test_keys_are_equal_by_value_whatever_the_order_of_coordinates():
    a = Key("momentum", "test_accuracy", size=300, cost="cross_entropy")
    b = Key("momentum", "test_accuracy", cost="cross_entropy", size=300)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != a.replace(size=600)
    assert a.replace(size=None) == Key("momentum", "test_accuracy", cost="cross_entropy")
    assert Key("fa", "angle", layer=None) == Key("fa", "angle")  # None: coordinate absent
    assert a.coords == {"size": 300, "cost": "cross_entropy"}
    assert a.get("size") == 300 and a.get("layer") is None


def test_keys_refuse_unknown_coordinates_and_odd_values():
    with pytest.raises(ValueError, match="unknown coordinate.*depth"):
        Key("fa", "test_error", depth=2)
    with pytest.raises(TypeError, match="string or a number"):
        Key("fa", "test_error", size=[300])
    with pytest.raises(TypeError, match="string or a number"):
        Key("fa", "test_error", size=True)
    with pytest.raises(TypeError, match="method and a metric"):
        Key("fa", "")
    with pytest.raises(AttributeError, match="immutable"):
        Key("fa", "test_error").method = "dfa"


def test_keys_survive_pickling_for_other_processes():
    key = Key("fa", "angle", layer="layer0.weight", epoch=3)
    assert pickle.loads(pickle.dumps(key)) == key


def test_select_and_only_pick_by_coordinate():
    metrics = {
        Key("sgd", "test_accuracy", size=300): 0.5,
        Key("sgd", "test_accuracy", size=600): 0.6,
        Key("adam", "test_accuracy", size=300): 0.7,
    }
    assert set(select(metrics, size=300).values()) == {0.5, 0.7}
    assert only(metrics, method="adam") == 0.7
    with pytest.raises(KeyError, match="2 values match"):
        only(metrics, method="sgd")


def test_records_round_trip_through_json():
    metrics = {Key("fa", "angle", layer="layer0.weight"): 12.5, Key("fa", "test_error"): 0.03}
    records = metrics_to_records(metrics)
    assert records[0] == {
        "method": "fa",
        "metric": "angle",
        "layer": "layer0.weight",
        "value": 12.5,
    }
    assert metrics_from_records(json.loads(json.dumps(records))) == metrics
    curves = {Key("fa", "test_error", width=64): {"x": [1, 2], "y": [0.5, 0.4]}}
    assert curves_from_records(json.loads(json.dumps(curves_to_records(curves)))) == curves
    with pytest.raises(TypeError, match="keyed by neuroplastic.results.Key"):
        metrics_to_records({"fa/test_error": 0.03})


def test_describe_names_the_coordinates():
    assert Key("m", "test_accuracy", size=300, cost="square").describe() == (
        "test_accuracy (size 300, cost square)"
    )
    assert str(Key("m", "loss")) == "m: loss"


@pytest.mark.parametrize(
    ("experiment", "name", "expected"),
    [
        ("mnist-backprop", "backprop/test_error", Key("backprop", "test_error")),
        (
            "kanter2020-mnist",
            "momentum n=300 ce/test_accuracy",
            Key("momentum", "test_accuracy", size=300, cost="cross_entropy"),
        ),
        (
            "kanter2020-mnist",
            "accelerated-every-step n=1200 square/tuned_lr",
            Key("accelerated-every-step", "tuned_lr", size=1200, cost="square"),
        ),
        (
            "kanter2020-perceptron",
            "accelerated-dendritic/eps_g_final",
            Key("accelerated", "eps_g_final", setting="dendritic"),
        ),
        (
            "perturbation-scaling",
            "node-perturbation/relative_variance_in49_w64",
            Key("node-perturbation", "relative_variance", inputs=49, width=64),
        ),
        (
            "perturbation-scaling",
            "weight-perturbation/relative_variance_w256",
            Key("weight-perturbation", "relative_variance", inputs=784, width=256),
        ),
        (
            "perturbation-scaling",
            "backprop/train_loss_w32",
            Key("backprop", "train_loss", width=32),
        ),
        (
            "credit-mnist",
            "fa/feedback_angle_layer1.feedback",
            Key("fa", "feedback_angle", layer="layer1.feedback"),
        ),
        ("credit-mnist", "dfa/angle_layer0.weight", Key("dfa", "angle", layer="layer0.weight")),
        ("guerguiev2017-mnist", "1-hidden-fa/tuned_lr", Key("1-hidden-fa", "tuned_lr")),
    ],
)
def test_legacy_keys_become_coordinates(experiment, name, expected):
    assert _legacy_key(experiment, name) == expected


def test_a_version_2_store_migrates_its_string_keys_to_records(tmp_path):
    path = tmp_path / "old.db"
    with Store(path) as store:
        run_id = store.start_run(
            experiment="kanter2020-mnist", config={"a": 1}, seed=0, quick=False,
            dataset="mnist", device="cpu", version="0", git_rev=None,
        )  # fmt: skip
        unfinished = store.start_run(
            experiment="kanter2020-mnist", config={"a": 1}, seed=1, quick=False,
            dataset="mnist", device="cpu", version="0", git_rev=None,
        )  # fmt: skip
    # write what schema version 2 stored, bypassing today's writer
    connection = sqlite3.connect(path)
    metrics = {"sgd n=300 ce/test_accuracy": 0.5, "sgd n=300 ce/diverged": {"$float": "NaN"}}
    curves = {"sgd n=300 ce/test_accuracy": {"x": [1, 2], "y": [0.4, 0.5]}}
    with connection:
        connection.execute(
            "UPDATE runs SET status = 'finished', ended_at = 'x', metrics = ?, curves = ? "
            "WHERE id = ?",
            (json.dumps(metrics), json.dumps(curves), run_id),
        )
        connection.execute(
            "UPDATE runs SET metrics = '{}', curves = '{}' WHERE id = ?", (unfinished,)
        )
        connection.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    connection.close()

    with Store(path) as store:
        record, other = store.get(run_id), store.get(unfinished)
    key = Key("sgd", "test_accuracy", size=300, cost="cross_entropy")
    assert record.metrics[key] == 0.5
    assert record.metrics[Key("sgd", "diverged", size=300, cost="cross_entropy")] != 0.5  # NaN
    assert record.curves == {key: {"x": [1, 2], "y": [0.4, 0.5]}}
    assert other.metrics == {} and other.curves == {}
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT value FROM meta").fetchone()[0] == "3"
    connection.close()
