"""credit-mnist: every rule trains under one protocol; diagnostics and tuning behave."""

import dataclasses

import pytest
import torch

from neuroplastic.config import config_to_dict
from neuroplastic.experiments import credit_mnist as experiment
from neuroplastic.experiments.base import RunContext
from neuroplastic.results import Key
from neuroplastic.runner import run_experiment
from neuroplastic.seeding import derive_seed
from neuroplastic.store import RunRecord, Store, config_hash
from neuroplastic.tuning import suggest

TINY = experiment.Config(
    dataset="mnist-mini",
    rules=("backprop", "fa", "node-perturbation"),
    hidden=(16,),
    epochs=2,
    trials=2,
    tuning_epochs=1,
    batch_size=200,
)


@pytest.fixture(scope="module")
def result():
    context = RunContext(device=torch.device("cpu"))
    return experiment.run(TINY, 0, context), context


def test_every_rule_reports_errors_angles_and_its_tuned_rate(result):
    outcome, _ = result
    for rule in TINY.rules:
        assert 0 <= outcome.metrics[Key(rule, "test_error")] <= 1
        assert TINY.lr_low <= outcome.hyperparameters[rule]["lr"] <= TINY.lr_high
        assert outcome.curves[Key(rule, "test_error")]["x"] == [1, 2]
    assert (
        outcome.metrics[Key("backprop", "angle", layer="layer0.weight")] < 1e-3
    )  # backprop against itself
    assert 0 < outcome.metrics[Key("fa", "angle", layer="layer0.weight")] < 180
    assert Key("fa", "feedback_angle", layer="layer0.feedback") in outcome.metrics
    assert outcome.metrics[Key("backprop", "test_error")] < 0.5  # learns visibly in two epochs


def count_trainings(monkeypatch) -> list:
    """Wrap ``train`` to record the (lr, seed) of every tuning trial (no test set) it runs."""
    trained, original = [], experiment.train

    def counting(config, rule, lr, seed, epochs, train_set, eval_sets, *args, **kwargs):
        if "test" not in eval_sets:
            trained.append((rule, lr, seed))
        return original(config, rule, lr, seed, epochs, train_set, eval_sets, *args, **kwargs)

    monkeypatch.setattr(experiment, "train", counting)
    return trained


def test_tuning_is_shared_by_seeds_of_one_config(result, monkeypatch):
    _, context = result
    trained = count_trainings(monkeypatch)
    again = experiment.run(TINY, 1, context)
    assert trained == []  # the studies of the first seed are reused
    assert again.hyperparameters["fa"] == result[0].hyperparameters["fa"]
    assert again.hyperparameters == result[0].hyperparameters


def test_trials_are_recorded_and_a_second_invocation_runs_none(result, tmp_path, monkeypatch):
    """Through the runner: every rate of every rule is a trial in the store, trained from the
    rate's own seed; each run records its rates; the same config again runs no trial."""
    trained = count_trainings(monkeypatch)
    rates = experiment.learning_rates(TINY)
    with Store(tmp_path / "runs.db") as store:
        (record,) = run_experiment(experiment.EXPERIMENT, TINY, [0], store, device="cpu").records
        trials = store.trials(experiment.NAME)
        assert len(trials) == len(TINY.rules) * TINY.trials
        assert {t.status for t in trials} == {"finished"}
        assert sorted(trained) == sorted(
            (rule, lr, derive_seed("tuning", TINY.tuning_seed, i))
            for rule in TINY.rules
            for i, lr in enumerate(rates)
        )
        assert record.metrics == result[0].metrics  # a store or memory: the same numbers
        for rule in TINY.rules:
            chosen = record.hyperparameters[rule]["lr"]
            errors = {t.params["lr"]: t.curves["val_error"]["y"][-1] for t in trials
                      if t.method == rule}  # fmt: skip
            assert chosen == min(rates, key=lambda lr: experiment.score([errors[lr]]))
        trained.clear()
        (again,) = run_experiment(experiment.EXPERIMENT, TINY, [1], store, device="cpu").records
        assert trained == []
        assert len(store.trials(experiment.NAME)) == len(trials)
        assert again.hyperparameters == record.hyperparameters


@pytest.mark.parametrize("tuning_seed", range(4))
@pytest.mark.parametrize("error", [0.25, float("nan")])
def test_ties_go_to_the_lowest_rate_whatever_the_grid_order(monkeypatch, tuning_seed, error):
    """As before the one tuner: equal validation errors (or divergence, scored 1.0) pick the
    first rate of the log-spaced list, though the grid visits the rates in a shuffled order."""
    config = dataclasses.replace(TINY, rules=("backprop",), trials=5, tuning_seed=tuning_seed)
    curves = {Key("backprop", "val_error"): [0.5, error]}
    monkeypatch.setattr(experiment, "train", lambda *args, **kwargs: curves)
    context = RunContext(device=torch.device("cpu"))
    data, split = experiment.data_and_split(config, context)
    lr, tuning_error = experiment.tuned_lr(config, "backprop", data, split, context)
    assert lr == experiment.learning_rates(config)[0] == config.lr_low
    study = experiment.learning_rate_study(config, "backprop")
    assert suggest(study, [], 0)["lr"] != lr  # not simply the grid's first trial
    assert tuning_error == (1.0 if error != error else error)


def test_same_seed_same_metrics(result):
    outcome, _ = result
    fresh = experiment.run(TINY, 0, RunContext(device=torch.device("cpu")))
    assert fresh.metrics == outcome.metrics


def test_config_rejects_unknown_rules():
    with pytest.raises(ValueError, match="unknown rules"):
        dataclasses.replace(TINY, rules=("backprop", "target-prop"))


def fake_record(seed, errors):
    config = config_to_dict(experiment.Config())
    return RunRecord(
        id=seed, experiment=experiment.NAME, config=config, config_hash=config_hash(config),
        seed=seed, quick=False, dataset="mnist", device="cpu", version="0", git_rev=None,
        status="finished", started_at="", ended_at="", curves={}, curve_x_label=None, error=None,
        metrics={Key(rule, "test_error"): e for rule, e in errors.items()},
    )  # fmt: skip


def test_verdict_checks_the_ordering():
    ordered = [fake_record(s, {"backprop": 0.015, "fa": 0.019, "dfa": 0.027}) for s in range(5)]
    assert experiment.verdict(ordered).status == "holds"
    swapped = [fake_record(s, {"backprop": 0.015, "fa": 0.030, "dfa": 0.027}) for s in range(5)]
    assert experiment.verdict(swapped).status == "does not hold"
    assert experiment.verdict(ordered[:2]).status == "not run"
