"""bellec2020-evidence: BPTT and the e-prop variants on evidence accumulation, tuned alike."""

import dataclasses

import pytest
import torch

from neuroplastic.experiments import EXPERIMENTS
from neuroplastic.experiments import bellec2020_evidence as evidence
from neuroplastic.experiments.base import RunContext
from neuroplastic.results import Key
from neuroplastic.store import RunRecord
from neuroplastic.testing import recorded_run

TINY = evidence.Config(
    methods=("bptt", "eprop-symmetric", "eprop-adaptive"), batch_size=2, iterations=2,
    eval_every=1, validation_trials=2, test_trials=3, trials=1, tune_iterations=1,
)  # fmt: skip


def test_it_is_registered_with_the_papers_set_up():
    assert EXPERIMENTS["bellec2020-evidence"] is evidence.EXPERIMENT
    default = evidence.Config()
    assert (default.n_lif, default.n_alif, default.refractory) == (50, 50, 5)
    assert default.batch_size == 64 and default.regularisation == 1.0
    assert evidence.TASK.steps == 2250 and evidence.TASK.n_inputs == 40
    studies = evidence.EXPERIMENT.studies(default)
    assert {s.method for s in studies} == set(evidence.METHODS)
    assert all(s.trials == default.trials for s in studies)  # equal budgets


def test_every_method_trains_from_the_same_network_and_records_its_tuned_rate():
    networks = [evidence.build(TINY, m, 3, torch.device("cpu"))[0] for m in evidence.METHODS]
    for other in networks[1:]:
        assert torch.equal(other.w_rec, networks[0].w_rec)
    assert not networks[0].detach_reset and networks[1].detach_reset  # BPTT differentiates it
    outcome = evidence.EXPERIMENT.run(TINY, 0, RunContext(device=torch.device("cpu")))
    for method in TINY.methods:
        assert 0 <= outcome.metrics[Key(method, "test_error")] <= 1
        assert outcome.curves[Key(method, "validation_error")]["x"] == [1, 2]
        assert set(outcome.hyperparameters[method]) >= {"lr"}
    assert "feedback_decay" in outcome.hyperparameters["eprop-adaptive"]


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown methods"):
        dataclasses.replace(TINY, methods=("bptt", "eprop-magic"))
    with pytest.raises(ValueError, match="lr must be a range"):
        dataclasses.replace(TINY, lr=(0.1, 0.01))


def records(errors: dict[str, list[float]]) -> list[RunRecord]:
    return [
        recorded_run(
            evidence.NAME,
            evidence.Config(),
            seed,
            {Key(m, "test_error"): errors[m][seed] for m in errors},
        )
        for seed in range(5)
    ]


def test_verdict_follows_the_criterion_written_before_the_runs():
    close = {"bptt": [0.05] * 5, "eprop-symmetric": [0.06, 0.07, 0.06, 0.065, 0.06],
             "eprop-random": [0.08] * 5, "eprop-adaptive": [0.3] * 5}  # fmt: skip
    assert evidence.verdict(records(close)).status == "holds"
    far = dict(close, **{"eprop-random": [0.2, 0.25, 0.2, 0.3, 0.2]})
    assert evidence.verdict(records(far)).status == "partly holds"
    unlearnt = {m: [0.5] * 5 for m in close}
    unlearnt["eprop-random"] = [0.7] * 5
    unlearnt["eprop-symmetric"] = [0.7] * 5
    assert evidence.verdict(records(unlearnt)).status == "does not hold"
    assert evidence.verdict(records(close)[:4]).status == "not run"
