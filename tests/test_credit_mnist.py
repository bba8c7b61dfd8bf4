"""credit-mnist: every rule trains in both arms under one protocol; tuning, pruning, verdict."""

import dataclasses

import pytest
import torch

from neuroplastic.experiments import credit_mnist as experiment
from neuroplastic.experiments.base import RunContext
from neuroplastic.results import Key
from neuroplastic.runner import run_experiment
from neuroplastic.store import Store
from neuroplastic.testing import recorded_run
from neuroplastic.tuning import LogUniform, Uniform

TINY = experiment.Config(
    dataset="mnist-mini",
    rules=("backprop", "fa"),
    hidden=(16,),
    epochs=3,
    trials=4,
    batch_size=200,
    convergence_window=1,
)


@pytest.fixture(scope="module")
def result():
    context = RunContext(device=torch.device("cpu"))
    return experiment.run(TINY, 0, context), context


def test_every_rule_and_arm_reports_errors_angles_and_its_tuned_values(result):
    outcome, _ = result
    for rule, arm in experiment.cells(TINY):
        assert 0 <= outcome.metrics[Key(rule, "test_error", setting=arm)] <= 1
        assert outcome.curves[Key(rule, "test_error", setting=arm)]["x"] == [1, 2, 3]
        assert Key(rule, "converged", setting=arm) in outcome.metrics
        chosen = outcome.hyperparameters[experiment.study_name(rule, arm)]
        assert chosen.keys() == experiment.search_space(TINY, rule, arm).keys()
    angle = Key("backprop", "angle", setting="adam", layer="layer0.weight")
    assert outcome.metrics[angle] < 1e-3  # backprop against itself
    assert 0 < outcome.metrics[angle.replace(method="fa")] < 180
    assert Key("fa", "feedback_angle", setting="sgd", layer="layer0.feedback") in outcome.metrics


def test_the_sgd_arm_tunes_the_feedback_scale_of_feedback_rules_only():
    assert "feedback_scale" in experiment.search_space(TINY, "fa", "sgd")
    assert "feedback_scale" not in experiment.search_space(TINY, "backprop", "sgd")
    assert experiment.search_space(TINY, "fa", "adam").keys() == {"lr", "weight_decay"}
    space = experiment.search_space(experiment.Config(), "dfa", "sgd")
    assert space["momentum"] == Uniform(0.0, 0.99)
    assert space["feedback_scale"] == LogUniform(1e-2, 1e2)


def test_every_study_gets_the_same_budget_and_pruning():
    studies = experiment.studies(experiment.Config())
    assert len(studies) == 4 * 2 and len({s.method for s in studies}) == 8
    assert {(s.trials, s.sampler, s.pruner, s.seed) for s in studies} == {(24, "tpe", "median", 0)}


def test_a_feedback_scale_reaches_the_rule(monkeypatch):
    seen = []
    original = experiment.RULES["fa"]
    monkeypatch.setitem(
        experiment.RULES, "fa", lambda model, **kw: seen.append(kw) or original(model, **kw)
    )
    context = RunContext(device=torch.device("cpu"))
    data, (train_index, val_index) = experiment.data_and_split(TINY, context)
    params = {"lr": 0.1, "momentum": 0.5, "weight_decay": 1e-6, "feedback_scale": 3.0}
    one_epoch = dataclasses.replace(TINY, epochs=1)
    experiment.train(one_epoch, "fa", "sgd", params, 0, (data.train_x[:200], data.train_y[:200]),
                     {"val": (data.train_x[:100], data.train_y[:100])})  # fmt: skip
    assert seen[0]["scale"] == 3.0


def test_tuning_is_shared_by_seeds_of_one_config(result, monkeypatch):
    _, context = result
    calls = []
    original = experiment.train
    monkeypatch.setattr(
        experiment, "train", lambda *a, **kw: calls.append(kw.get("report")) or original(*a, **kw)
    )
    again = experiment.run(TINY, 1, context)
    assert all(report is None for report in calls)  # no tuning trial ran again
    assert again.hyperparameters == result[0].hyperparameters


def test_trials_are_recorded_pruned_or_finished_and_a_second_invocation_runs_none(result, tmp_path):
    with Store(tmp_path / "runs.db") as store:
        (record,) = run_experiment(experiment.EXPERIMENT, TINY, [0], store, device="cpu").records
        trials = store.trials(experiment.NAME)
        assert len(trials) == len(experiment.cells(TINY)) * TINY.trials
        assert {t.status for t in trials} <= {"finished", "failed"}
        assert record.metrics == result[0].metrics  # a store or memory: the same numbers
        for rule, arm in experiment.cells(TINY):
            name = experiment.study_name(rule, arm)
            finished = [t for t in trials if t.method == name and t.status == "finished"]
            best = min(finished, key=lambda t: (t.value, t.number))
            assert record.hyperparameters[name] == best.params
            assert best.curves["reported"]["x"] == [1, 2, 3]  # what the pruner compares
        (again,) = run_experiment(experiment.EXPERIMENT, TINY, [1], store, device="cpu").records
        assert len(store.trials(experiment.NAME)) == len(trials)
        assert again.hyperparameters == record.hyperparameters


def test_same_seed_same_metrics(result):
    outcome, _ = result
    fresh = experiment.run(TINY, 0, RunContext(device=torch.device("cpu")))
    assert fresh.metrics == outcome.metrics


def test_convergence_compares_the_last_window_with_the_one_before():
    assert experiment.converged([0.05, 0.03, 0.0202, 0.0200, 0.0201, 0.0199], window=2)
    assert not experiment.converged([0.05, 0.04, 0.03, 0.02], window=2)
    assert not experiment.converged([0.02, 0.02, float("nan"), 0.02], window=2)
    assert not experiment.converged([0.02, 0.02, 0.02], window=2)  # one window only


def test_config_rejects_unknown_rules_and_arms_and_bad_ranges():
    with pytest.raises(ValueError, match="unknown rules"):
        dataclasses.replace(TINY, rules=("backprop", "target-prop"))
    with pytest.raises(ValueError, match="unknown arms"):
        dataclasses.replace(TINY, arms=("rmsprop",))
    with pytest.raises(ValueError, match="adam_lr needs"):
        dataclasses.replace(TINY, adam_lr=(0.1, 0.01))


def fake_record(seed, errors):
    """A default-config run with test errors ``{rule: (adam, sgd)}``, plus seed-dependent noise
    shared by all rules (so paired differences are exact)."""
    noise = 0.001 * (seed % 3)
    metrics = {
        Key(rule, "test_error", setting=arm): value + noise
        for rule, pair in errors.items()
        for arm, value in zip(experiment.ARMS, pair, strict=True)
    }
    return recorded_run(experiment.NAME, experiment.Config(), seed, metrics)


def runs(**errors):
    base = {"backprop": (0.015, 0.015), "sign-symmetry": (0.016, 0.02)}
    return [fake_record(s, base | errors) for s in range(5)]


def test_verdict_holds_within_the_margins_in_both_arms():
    verdict = experiment.verdict(runs(fa=(0.019, 0.018), dfa=(0.025, 0.029)))
    assert verdict.status == "holds"
    assert "FA - BP +0.40 ± 0.00 points" in verdict.headline
    assert "FA <= DFA not reversed" in verdict.headline


def test_verdict_partly_holds_when_one_arm_misses_a_margin():
    verdict = experiment.verdict(runs(fa=(0.019, 0.025), dfa=(0.025, 0.029)))
    assert verdict.status == "partly holds"
    assert "margin 0.5: no" in verdict.headline


def test_verdict_does_not_hold_and_reports_a_reversed_ordering():
    verdict = experiment.verdict(runs(fa=(0.04, 0.04), dfa=(0.035, 0.035)))
    assert verdict.status == "does not hold"
    assert "FA <= DFA reversed" in verdict.headline
    assert experiment.verdict(runs(fa=(0.019, 0.018), dfa=(0.025, 0.029))[:2]).status == "not run"


def test_an_interrupted_seed_resumes_at_its_next_training_to_the_same_numbers(
    result, tmp_path, monkeypatch
):
    """Interrupted in its third (rule, arm), a seed's run keeps the two it finished and trains
    only the rest when run again, ending with the uninterrupted numbers; the checkpoint goes
    when the run is done."""
    outcome, context = result
    context = dataclasses.replace(context, checkpoint_dir=tmp_path)
    original, calls = experiment.train, []

    def interrupted(*args, **kwargs):
        calls.append(args[1:3])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(experiment, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(TINY, 0, context)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    calls.clear()
    monkeypatch.setattr(experiment, "train",
                        lambda *a, **kw: calls.append(a[1:3]) or original(*a, **kw))
    resumed = experiment.run(TINY, 0, context)
    assert calls == experiment.cells(TINY)[2:]
    assert resumed.metrics == outcome.metrics
    assert resumed.curves == outcome.curves
    assert not list(tmp_path.glob("*.pt"))
