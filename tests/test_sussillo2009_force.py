"""sussillo2009-force (``experiments.sussillo2009_force``): FORCE on a small network, the
periodicity index, the verdict's criterion."""

import dataclasses

import torch

from neuroplastic.experiments import EXPERIMENTS
from neuroplastic.experiments import sussillo2009_force as fx
from neuroplastic.experiments.base import RunContext
from neuroplastic.results import Key
from neuroplastic.testing import recorded_run

TINY = dataclasses.replace(fx.quick(fx.Config()), units=200, period=200, train_periods=8,
                           test_periods=2, eh_periods=2)  # fmt: skip


def test_force_tames_the_chaotic_network_into_the_target():
    outcome = fx.run(TINY, 0, RunContext(device=torch.device("cpu")))
    assert outcome.metrics[Key("force", "periodicity_before")] > fx.CHAOTIC
    assert outcome.metrics[Key("force", "test_error")] < fx.ACCURATE
    assert outcome.metrics[Key("force", "periodicity_after")] < fx.PERIODIC
    assert len(outcome.curves[Key("target", "test_output")]["y"]) == TINY.period
    assert outcome.metrics[Key("eh", "test_error")] >= 0


def test_periodicity_is_zero_for_repeating_rates_and_the_target_has_its_period():
    rates = torch.sin(torch.arange(300.0)[:, None] * 2 * torch.pi / 50 + torch.arange(4.0))
    assert fx.periodicity(rates, 50) < 1e-4 and fx.periodicity(rates, 37) > 0.3
    f = fx.target(TINY, 3 * TINY.period)
    torch.testing.assert_close(f[: TINY.period], f[TINY.period : 2 * TINY.period])


def records(errors, before=1.2, after=0.02):
    shared = {Key("force", "periodicity_before"): before, Key("force", "periodicity_after"): after,
              Key("eh", "test_error"): 0.5}  # fmt: skip
    return [
        recorded_run(fx.NAME, fx.Config(), i, {Key("force", "test_error"): e, **shared})
        for i, e in enumerate(errors)
    ]


def test_registered_and_the_verdict_follows_the_criterion():
    assert EXPERIMENTS[fx.NAME] is fx.EXPERIMENT
    assert fx.verdict(records([0.01] * 5)).status == "holds"
    assert fx.verdict(records([0.01] * 5, after=0.3)).status == "partly holds"
    assert fx.verdict(records([0.01] * 4 + [0.2])).status == "does not hold"  # every network
    assert fx.verdict(records([0.01] * 4)).status == "not run"
