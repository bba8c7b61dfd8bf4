"""credit-mnist: every rule trains under one protocol; diagnostics and tuning behave."""

import dataclasses

import pytest
import torch

from neuroplastic.config import config_to_dict
from neuroplastic.experiments import credit_mnist as experiment
from neuroplastic.experiments.base import RunContext
from neuroplastic.store import RunRecord, config_hash

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
        assert 0 <= outcome.metrics[f"{rule}/test_error"] <= 1
        assert TINY.lr_low <= outcome.metrics[f"{rule}/tuned_lr"] <= TINY.lr_high
        assert outcome.curves[f"{rule}/test_error"]["x"] == [1, 2]
    assert outcome.metrics["backprop/angle_layer0.weight"] < 1e-3  # backprop against itself
    assert 0 < outcome.metrics["fa/angle_layer0.weight"] < 180
    assert "fa/feedback_angle_layer0.feedback" in outcome.metrics
    assert outcome.metrics["backprop/test_error"] < 0.5  # learns visibly in two epochs


def test_tuning_is_shared_by_seeds_of_one_config(result):
    _, context = result
    cached = {key: value for key, value in context.cache.items() if key[0] == experiment.NAME}
    assert len(cached) == len(TINY.rules)
    again = experiment.run(TINY, 1, context)
    assert again.metrics["fa/tuned_lr"] == result[0].metrics["fa/tuned_lr"]
    assert len([k for k in context.cache if k[0] == experiment.NAME]) == len(TINY.rules)


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
        metrics={f"{rule}/test_error": e for rule, e in errors.items()},
    )  # fmt: skip


def test_verdict_checks_the_ordering():
    ordered = [fake_record(s, {"backprop": 0.015, "fa": 0.019, "dfa": 0.027}) for s in range(5)]
    assert experiment.verdict(ordered).status == "holds"
    swapped = [fake_record(s, {"backprop": 0.015, "fa": 0.030, "dfa": 0.027}) for s in range(5)]
    assert experiment.verdict(swapped).status == "does not hold"
    assert experiment.verdict(ordered[:2]).status == "not run"
