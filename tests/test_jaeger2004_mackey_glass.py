"""jaeger2004-mackey-glass (``experiments.jaeger2004_mackey_glass``): free-running prediction,
tuning, the verdict's criterion."""

import dataclasses

import pytest
import torch

from neuroplastic.experiments import EXPERIMENTS
from neuroplastic.experiments import jaeger2004_mackey_glass as mg
from neuroplastic.experiments.base import RunContext
from neuroplastic.results import Key
from neuroplastic.testing import recorded_run

TINY = dataclasses.replace(mg.quick(mg.Config()), units=60, trials=2, train_steps=800,
                           validation_starts=4, test_starts=4, max_horizon=90,
                           ar_order=(1, 50))  # fmt: skip


def test_the_parts_do_not_overlap_and_truth_follows_each_start():
    config = mg.Config()
    validation, test = mg.starts(config, "validation"), mg.starts(config, "test")
    assert validation[0] - config.max_horizon >= config.train_steps
    assert test[0] > validation[-1] + config.max_horizon
    u = mg.series(config)
    assert len(u) > test[-1] + config.max_horizon
    truth = mg.truth(u, [5, 9], 3)
    assert torch.equal(truth, torch.stack([u[6:9], u[10:13]]))


def test_an_ar_model_of_a_linear_recurrence_predicts_it_exactly():
    """A sampled sine obeys u_{t+1} = 2 cos(w) u_t - u_{t-1}, an AR(2) model: fitted, it
    continues the sine on its own predictions."""
    config = dataclasses.replace(TINY, train_steps=300, washout=10)
    u = torch.sin(0.3 * torch.arange(600, dtype=torch.float64) + 0.2)
    predicted = mg.ar_predictions(config, {"order": 2, "ridge": 0.0}, u, [400, 450])
    truth = mg.truth(u, [400, 450], config.max_horizon)
    assert truth.abs().max() > 0.9
    torch.testing.assert_close(predicted, truth, atol=1e-8, rtol=0)


def test_both_methods_run_and_the_esn_beats_ar_on_the_chaotic_series():
    outcome = mg.run(TINY, 0, RunContext(device=torch.device("cpu")))
    esn = outcome.metrics[Key("esn", "test_nrmse", size=mg.HORIZON)]
    ar = outcome.metrics[Key("ar", "test_nrmse", size=mg.HORIZON)]
    assert 0 < esn < ar
    assert set(outcome.hyperparameters) == {"esn", "ar"}
    assert len(outcome.curves[Key("esn", "test_nrmse")]["y"]) == TINY.max_horizon


def records(esn, ar, n=5):
    return [
        recorded_run(
            mg.NAME,
            mg.Config(),
            seed,
            {
                Key("esn", "test_nrmse", size=mg.HORIZON): esn * (1 + 0.1 * seed),
                Key("ar", "test_nrmse", size=mg.HORIZON): ar,
            },
        )
        for seed in range(n)
    ]


def test_registered_and_the_verdict_follows_the_criterion():
    assert EXPERIMENTS[mg.NAME] is mg.EXPERIMENT
    assert mg.verdict(records(1e-3, 0.4)).status == "holds"
    assert mg.verdict(records(5e-2, 0.9)).status == "partly holds"  # a decade below AR only
    assert mg.verdict(records(5e-3, 0.02)).status == "partly holds"  # accurate only
    assert mg.verdict(records(0.3, 0.4)).status == "does not hold"
    assert mg.verdict(records(1e-3, 0.4, n=3)).status == "not run"


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="horizon"):
        mg.Config(horizon=300)
    with pytest.raises(ValueError, match="AR order"):
        mg.Config(train_steps=200, washout=10)
