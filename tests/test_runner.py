"""The runner: determinism, resume, failures and interrupts are recorded, data checked first."""

import dataclasses
from dataclasses import dataclass

import pytest

from neuroplastic.errors import DataError, DivergenceError
from neuroplastic.experiments import EXPERIMENTS, get_experiment
from neuroplastic.experiments.base import Experiment, RunResult, Verdict
from neuroplastic.results import Key
from neuroplastic.runner import run_experiment
from neuroplastic.store import Store

TINY = {"dataset": "mnist-mini", "hidden": (16,), "epochs": 2, "batch_size": 200}


@pytest.fixture
def backprop():
    experiment = get_experiment("mnist-backprop")
    return experiment, dataclasses.replace(experiment.config_cls(), **TINY)


def test_same_seed_same_device_same_metrics(tmp_path, backprop):
    experiment, config = backprop
    with Store(tmp_path / "a.db") as store:
        first = run_experiment(experiment, config, [3], store, device="cpu")
        second = run_experiment(experiment, config, [3], store, device="cpu")
        other_seed = run_experiment(experiment, config, [4], store, device="cpu")
    assert first.records[0].metrics == second.records[0].metrics
    assert first.records[0].curves == second.records[0].curves
    assert first.records[0].id != second.records[0].id  # without --resume both are recorded
    assert other_seed.records[0].metrics != first.records[0].metrics


def test_runs_record_provenance_and_learn(tmp_path, backprop):
    experiment, config = backprop
    with Store(tmp_path / "a.db") as store:
        outcome = run_experiment(experiment, config, [0], store, device="cpu")
    record = outcome.records[0]
    assert record.status == "finished"
    assert record.dataset == "mnist-mini"
    assert record.device == "cpu"
    assert record.config["hidden"] == [16]
    assert record.started_at <= record.ended_at
    assert record.metrics[Key("backprop", "test_error")] < 0.5  # chance is 0.9
    assert record.curves[Key("backprop", "test_error")]["x"] == [1, 2]


def test_resume_skips_finished_seeds(tmp_path, backprop):
    experiment, config = backprop
    with Store(tmp_path / "a.db") as store:
        run_experiment(experiment, config, [0], store, device="cpu")
        outcome = run_experiment(experiment, config, [0, 1], store, device="cpu", resume=True)
        assert outcome.skipped_seeds == [0]
        assert [r.seed for r in outcome.records] == [0, 1]
        assert len(store.runs()) == 2
        changed = dataclasses.replace(config, lr=0.01)  # another config: nothing to resume
        assert run_experiment(experiment, changed, [0], store, resume=True).skipped_seeds == []


def test_quick_shortens_training_but_keeps_the_dataset(tmp_path, backprop):
    experiment, config = backprop
    long = dataclasses.replace(config, epochs=5)
    with Store(tmp_path / "a.db") as store:
        outcome = run_experiment(experiment, long, [0], store, device="cpu", quick=True)
    record = outcome.records[0]
    assert record.quick is True
    assert record.config["epochs"] == 2
    assert record.config["dataset"] == "mnist-mini"


def test_corrupt_data_fails_before_anything_is_recorded(tmp_path, backprop, monkeypatch):
    experiment, config = backprop
    data_dir = tmp_path / "data"
    (data_dir / "mnist").mkdir(parents=True)
    monkeypatch.delenv("NEUROPLASTIC_DATA", raising=False)
    full = dataclasses.replace(config, dataset="mnist")
    (data_dir / "mnist" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 truncated")
    with Store(tmp_path / "a.db") as store:
        with pytest.raises(DataError, match="train-images-idx3-ubyte"):
            run_experiment(experiment, full, [0], store, data_dir=data_dir, device="cpu")
        assert store.runs() == []


@dataclass(frozen=True)
class FakeConfig:
    dataset: str = "none"
    """No data."""
    fail_on_seed: int = -1
    """Seed that diverges."""
    interrupt_on_seed: int = -1
    """Seed at which the user presses Ctrl-C."""


def fake_run(config, seed, context):
    if seed == config.fail_on_seed:
        raise DivergenceError(f"loss became nan (seed {seed})", hint="lower lr")
    if seed == config.interrupt_on_seed:
        raise KeyboardInterrupt
    return RunResult(metrics={Key("fake", "value"): float(seed)})


@pytest.fixture
def fake(monkeypatch):
    experiment = Experiment(
        name="fake",
        paper="none",
        claim="none",
        config_cls=FakeConfig,
        run=fake_run,
        verdict=lambda records: Verdict("not run", ""),
        quick=lambda config: config,
        command="neuroplastic run fake",
    )
    monkeypatch.setitem(EXPERIMENTS, "fake", experiment)
    return experiment


def test_a_diverged_seed_is_recorded_as_failed_and_the_others_go_on(tmp_path, fake):
    with Store(tmp_path / "a.db") as store:
        outcome = run_experiment(fake, FakeConfig(fail_on_seed=1), [0, 1, 2], store)
        statuses = {r.seed: r.status for r in store.runs()}
        failed = store.runs(status="failed")[0]
    assert statuses == {0: "finished", 1: "failed", 2: "finished"}
    assert [r.seed for r in outcome.records] == [0, 2]
    assert outcome.failures[0][0] == 1
    assert "loss became nan" in failed.error


def test_ctrl_c_marks_the_run_in_flight_and_keeps_finished_seeds(tmp_path, fake):
    with Store(tmp_path / "a.db") as store:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(fake, FakeConfig(interrupt_on_seed=1), [0, 1, 2], store)
        statuses = {r.seed: r.status for r in store.runs()}
    assert statuses == {0: "finished", 1: "interrupted"}


def test_batched_experiments_get_all_seeds_in_one_call(tmp_path, fake, monkeypatch):
    calls = []

    def run_batch(config, seeds, context):
        calls.append(tuple(seeds))
        outcomes = []
        for seed in seeds:  # a batch reports a diverged replica in its place
            try:
                outcomes.append(fake_run(config, seed, context))
            except DivergenceError as error:
                outcomes.append(error)
        return outcomes

    batched = dataclasses.replace(fake, run_batch=run_batch)
    monkeypatch.setitem(EXPERIMENTS, "fake", batched)
    with Store(tmp_path / "a.db") as store:
        run_experiment(batched, FakeConfig(), [0], store)
        outcome = run_experiment(batched, FakeConfig(fail_on_seed=2), [0, 1, 2], store)
        again = run_experiment(batched, FakeConfig(fail_on_seed=2), [0, 1], store, resume=True)
    assert calls == [(0,), (0, 1, 2)]  # the resumed call had nothing left to run
    assert [r.metrics[Key("fake", "value")] for r in outcome.records] == [0.0, 1.0]
    assert [seed for seed, _ in outcome.failures] == [2]
    assert again.skipped_seeds == [0, 1]
