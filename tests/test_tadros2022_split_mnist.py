"""tadros2022-split-mnist (``experiments.tadros2022_split_mnist``): every method through the runner
on the bundled mnist-mini, the studies' declarations, the verdict's criterion and the report."""

import dataclasses

import pytest
import torch

from neuroplastic.config import config_to_dict
from neuroplastic.experiments import EXPERIMENTS
from neuroplastic.experiments import tadros2022_split_mnist as split
from neuroplastic.results import Key
from neuroplastic.store import RunRecord, config_hash
from neuroplastic.testing import recorded_run

TINY = dataclasses.replace(
    split.quick(split.Config(dataset="mnist-mini")), per_task=60, hidden=(40, 30), init=0.1,
    trials=2, sleep_steps=200, sleep_steps_per_task=50, buffer_per_class=5,
    ewc_strength=(0.1, 10.0), si_strength=(0.01, 1.0), lwf_strength=(0.01, 1.0),
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two seeds through the runner into a store (tuning included), as the command runs them."""
    from neuroplastic.runner import run_experiment
    from neuroplastic.store import Store

    path = tmp_path_factory.mktemp("store") / "runs.db"
    with Store(path) as store:
        outcome = run_experiment(split.EXPERIMENT, TINY, [0, 1], store, device="cpu")
        trials = {m: store.trials(split.NAME, config_hash(config_to_dict(TINY)), m)
                  for m in split.TUNED}  # fmt: skip
    return outcome.records, trials


def test_every_method_reports_its_accuracy_matrix(tiny_runs):
    records, _ = tiny_runs
    assert [r.status for r in records] == ["finished", "finished"]
    for record in records:
        for method in split.METHODS:
            seen = record.curves[Key(method, "seen_accuracy")]
            assert seen["x"] == ([5] if method == "joint" else [1, 2, 3, 4, 5])
            assert seen["y"][-1] == record.metrics[Key(method, "test_accuracy")]
            for task in split.TASK_NAMES:
                row = record.curves[Key(method, "task_accuracy", setting=task)]["y"]
                assert all(0.0 <= a <= 1.0 for a in row)
        # every tuned method ran with the values its study chose
        assert set(record.hyperparameters) == set(split.TUNED)
        assert set(record.hyperparameters["src"]) == {
            "max_rate", "increment", "decrement", "beta_1", "beta_2", "beta_3", "alpha_scale"
        }  # fmt: skip
    # sequential training on ReLU outputs forgets: after the last task only its digits remain
    last = records[0].curves[Key("sequential", "task_accuracy", setting="digits 0-1")]["y"]
    assert last[0] > last[-1]


def test_each_tuned_method_gets_the_same_budget_scored_on_validation(tiny_runs):
    _, trials = tiny_runs
    assert {m: len(t) for m, t in trials.items()} == {m: TINY.trials for m in split.TUNED}
    for method_trials in trials.values():
        finished = [t for t in method_trials if t.status == "finished"]
        assert finished and all(t.status in ("finished", "failed") for t in method_trials)
        for trial in finished:  # (failed: diverged, e.g. EWC at a huge strength)
            curve = trial.curves["validation_accuracy_seen"]
            assert curve["x"] == [1, 2, 3, 4, 5] and trial.value == curve["y"][-1]
    studies = split.studies(split.Config())
    assert {s.method for s in studies} == set(split.TUNED)
    assert len({s.trials for s in studies}) == 1 and studies[0].direction == "maximize"
    src = next(s for s in studies if s.method == "src")
    authors = {"max_rate": 239.5, "increment": 0.0321, "decrement": 0.00334, "beta_1": 14.55,
               "beta_2": 44.56, "beta_3": 38.05, "alpha_scale": 55.88}  # fmt: skip
    for name, value in authors.items():  # the published values lie well inside the ranges
        assert src.space[name].low * 3 < value < src.space[name].high / 3


def records(finals: dict[str, list[float]], n: int = 5) -> list[RunRecord]:
    return [
        recorded_run(
            split.NAME,
            split.Config(),
            seed,
            {Key(m, "test_accuracy"): v + 0.01 * ((seed % 3) - 1) for m, v in finals.items()},
        )
        for seed in range(n)
    ]


def finals(src: float, sequential: float = 0.195) -> dict[str, float]:
    return {"sequential": sequential, "src": src, "joint": 0.98, "src-running": src - 0.05,
            "replay": 0.88, "src+replay": 0.87}  # fmt: skip


def test_registered_and_the_verdict_follows_the_criterion():
    assert EXPERIMENTS[split.NAME] is split.EXPERIMENT
    assert split.verdict(records(finals(0.48))).status == "holds"
    assert split.verdict(records(finals(0.33))).status == "partly holds"  # better, not as much
    assert split.verdict(records(finals(0.25))).status == "does not hold"  # +5.5 points only
    headline = split.verdict(records(finals(0.48))).headline
    assert "SRC + replay - replay -1.0" in headline and "paper" in headline
    assert split.verdict(records(finals(0.48), n=4)).status == "not run"


def test_the_report_draws_the_matrices_and_the_table(tiny_runs, tmp_path):
    from neuroplastic.report import experiment_report

    path = experiment_report(split.EXPERIMENT, tiny_runs[0], tmp_path)
    text = path.read_text()
    picture = f"{split.NAME}-matrices.png"
    assert picture in text and (tmp_path / picture).exists()
    assert "Tadros 2022" in text and "per task (0-1 / 2-3 / ... / 8-9)" in text


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown methods"):
        split.Config(methods=("sequential", "icarl"))
    with pytest.raises(ValueError, match="src_increment"):
        split.Config(src_increment=(0.1, 0.01))
    with pytest.raises(ValueError, match="extra_per_task"):
        split.Config(extra_per_task=-1)


def test_a_method_that_diverges_on_a_seed_is_recorded_and_the_others_stand(monkeypatch):
    from neuroplastic.errors import DivergenceError
    from neuroplastic.experiments.base import RunContext

    original = split.learn

    def learn(config, method, *args, **kwargs):
        if method == "ewc":
            raise DivergenceError("the training loss diverged")
        return original(config, method, *args, **kwargs)

    monkeypatch.setattr(split, "learn", learn)
    monkeypatch.setattr(split, "tuned", lambda *args: {})
    config = dataclasses.replace(TINY, methods=("sequential", "ewc"))
    outcome = split.run(config, 0, RunContext(device=torch.device("cpu")))
    assert outcome.metrics[Key("ewc", "diverged")] == 1.0
    assert outcome.metrics[Key("sequential", "diverged")] == 0.0
    assert 0 <= outcome.metrics[Key("sequential", "test_accuracy")] <= 1
