"""credit-lenet: credit-mnist's protocol on LeNet-5, with the sign-symmetry variants as rules."""

import dataclasses

import pytest
import torch

from neuroplastic.config import config_fields
from neuroplastic.experiments import EXPERIMENTS, credit_lenet, credit_mnist
from neuroplastic.experiments.base import RunContext
from neuroplastic.results import Key
from neuroplastic.testing import recorded_run

TINY = credit_lenet.Config(
    dataset="mnist-mini", rules=("backprop", "fa", "frsf"), arms=("adam",), epochs=1, trials=2,
    batch_size=200,
)  # fmt: skip


def test_it_is_registered_with_lenet_and_the_sign_symmetry_variants():
    assert EXPERIMENTS["credit-lenet"] is credit_lenet.EXPERIMENT
    default = credit_lenet.Config()
    assert default.model == "lenet" and default.batch_size == 64
    assert default.rules == ("backprop", "fa", "dfa", "usf", "brsf", "frsf")
    assert default.arms == credit_mnist.Config().arms
    assert default.trials == 8  # fewer than credit-mnist's 24: the budget (docs)
    docs = {spec.name: spec.help for spec in config_fields(credit_lenet.Config)}
    assert docs["model"] == "Network: LeNet-5 (``models.lenet``)."
    assert docs["epochs"]  # inherited fields keep their documentation


def test_every_rule_trains_lenet_and_reports_angles_per_parameter():
    outcome = credit_lenet.EXPERIMENT.run(TINY, 0, RunContext(device=torch.device("cpu")))
    for rule in TINY.rules:
        assert 0 <= outcome.metrics[Key(rule, "test_error", setting="adam")] <= 1
    conv = Key("backprop", "angle", setting="adam", layer="1.features.0.weight")
    assert outcome.metrics[conv] < 1e-3  # backprop against itself, on the first convolution
    assert 0 < outcome.metrics[conv.replace(method="fa")] < 180
    assert Key("frsf", "feedback_angle", setting="adam", layer="1.features.3") in outcome.metrics


def test_the_sign_symmetry_variants_reach_the_rule(monkeypatch):
    seen = []
    original = credit_mnist.RULES["sign-symmetry"]
    monkeypatch.setitem(
        credit_mnist.RULES, "sign-symmetry", lambda m, **kw: seen.append(kw) or original(m, **kw)
    )
    model = credit_mnist.build_model(TINY, "brsf", 784, 0)
    credit_mnist.make_rule("brsf", model, 0, {"feedback_scale": 2.0})
    assert seen[0]["variant"] == "brsf" and seen[0]["scale"] == 2.0


def test_the_initialisation_depends_on_the_seed_only():
    first, again = (credit_mnist.build_model(TINY, r, 784, 3) for r in ("fa", "usf"))
    other = credit_mnist.build_model(TINY, "fa", 784, 4)
    assert all(
        torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters(), strict=True)
    )
    assert not torch.equal(next(first.parameters()), next(other.parameters()))


def test_unknown_rules_are_refused():
    with pytest.raises(ValueError, match="unknown rules"):
        dataclasses.replace(TINY, rules=("backprop", "xsf"))


def test_verdict_reads_this_experiments_default_runs_beside_biotorch():
    records = [
        recorded_run(
            credit_lenet.NAME,
            credit_lenet.Config(),
            seed,
            {
                Key(rule, "test_error", setting=arm): 0.01 + 0.001 * (rule == "dfa")
                for rule in credit_lenet.Config().rules
                for arm in credit_mnist.ARMS
            },
        )
        for seed in range(5)
    ]
    verdict = credit_lenet.verdict(records)
    assert verdict.status == "holds"
    assert "biotorch, test-set selected: backprop 0.91 %" in verdict.headline
    assert credit_mnist.verdict(records).status == "not run"  # another experiment's defaults
