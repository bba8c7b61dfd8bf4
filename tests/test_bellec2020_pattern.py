"""bellec2020-pattern: the pattern-generation task, and BPTT and e-prop tuned alike on it."""

import dataclasses

import pytest
import torch

from neuroplastic.experiments import EXPERIMENTS
from neuroplastic.experiments import bellec2020_pattern as pattern
from neuroplastic.experiments.base import RunContext
from neuroplastic.results import Key
from neuroplastic.store import RunRecord
from neuroplastic.tasks.pattern import PatternTask, normalised_mse
from neuroplastic.testing import recorded_run

TINY = pattern.Config(
    methods=("bptt", "eprop-random"), n_rec=20, iterations=4, eval_every=2, trials=1,
    tune_iterations=2,
)  # fmt: skip


def test_an_instance_is_frozen_inputs_and_a_normalised_sum_of_sines():
    task = PatternTask()
    x, target = task.sample(torch.Generator().manual_seed(0))
    again, same = task.sample(torch.Generator().manual_seed(0))
    assert torch.equal(x, again) and torch.equal(target, same)
    assert x.shape == (1, 1000, 100) and target.shape == (1, 1000, 1)
    assert x.mean().item() == pytest.approx(0.05, rel=0.05)
    assert target[0, 0, 0] == 0 and target.abs().max() == pytest.approx(1.0)
    spectrum = torch.fft.rfft(target[0, :, 0].double()).abs()
    assert set(spectrum[1:10].topk(4).indices.add(1).tolist()) == {1, 2, 3, 5}  # the 4 periods
    assert normalised_mse(target, target) == 0
    assert normalised_mse(torch.full_like(target, target.mean().item()), target) == pytest.approx(1)
    with pytest.raises(ValueError, match="fit in the trial"):
        PatternTask(steps=100)


def test_every_method_learns_on_the_seeds_instance_and_records_its_rate():
    outcome = pattern.EXPERIMENT.run(TINY, 0, RunContext(device=torch.device("cpu")))
    for method in TINY.methods:
        assert outcome.metrics[Key(method, "nmse")] >= 0
        assert outcome.curves[Key(method, "nmse")]["x"] == [2, 4]
        assert "lr" in outcome.hyperparameters[method]


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown methods"):
        dataclasses.replace(TINY, methods=("bptt", "hebb"))


def records(nmse: dict[str, list[float]]) -> list[RunRecord]:
    return [
        recorded_run(
            pattern.NAME, pattern.Config(), seed, {Key(m, "nmse"): nmse[m][seed] for m in nmse}
        )
        for seed in range(5)
    ]


def test_registered_and_the_verdict_follows_the_criterion():
    assert EXPERIMENTS["bellec2020-pattern"] is pattern.EXPERIMENT
    close = {"bptt": [0.05] * 5, "eprop-symmetric": [0.08, 0.1, 0.09, 0.07, 0.08],
             "eprop-random": [0.1] * 5, "eprop-adaptive": [0.5] * 5}  # fmt: skip
    assert pattern.verdict(records(close)).status == "holds"
    far = dict(close, **{"eprop-random": [0.4, 0.5, 0.45, 0.5, 0.4]})
    assert pattern.verdict(records(far)).status == "partly holds"
    assert pattern.verdict(records(close)[:3]).status == "not run"
