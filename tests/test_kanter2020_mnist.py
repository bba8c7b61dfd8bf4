"""kanter2020-mnist: balanced data, replica batching, tuning that never sees the test set."""

import dataclasses

import pytest
import torch

from neuroplastic.experiments import kanter2020_mnist as experiment
from neuroplastic.experiments.base import RunContext
from neuroplastic.models.mlp import MLP
from neuroplastic.models.replica_mlp import ReplicaMLP
from neuroplastic.results import Key
from neuroplastic.testing import recorded_run
from neuroplastic.tuning import LogUniform, MemoryRecorder

TINY = experiment.Config(
    sizes=(20,),
    costs=("cross_entropy",),
    methods=("sgd", "accelerated-sign"),
    hidden=8,
    trials=2,
    tuning_seeds=1,
    curve_points=2,
)


@pytest.fixture(scope="module")
def context():
    return RunContext(device=torch.device("cpu"))


@pytest.fixture(scope="module")
def pools(context):
    data = context.load_dataset("mnist-mini")
    return experiment.carve_validation(data.train_y, 100), data


def test_replica_r_is_the_mlp_of_seed_r():
    x = torch.rand(5, 12)
    replicas = ReplicaMLP((12, 7, 3), "sigmoid", seeds=[4, 9])
    for r, seed in enumerate([4, 9]):
        single = MLP((12, 7, 3), "sigmoid", torch.Generator().manual_seed(seed))
        torch.testing.assert_close(replicas(x)[r], single(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(replicas.replica(r)(x), single(x), rtol=0, atol=0)


def test_training_sets_are_balanced_in_blocks_of_ten_and_avoid_validation(pools):
    (label_pools, validation), data = pools
    order = experiment.training_sets(label_pools, 300, [0, 1])
    assert order.shape == (2, 300)
    labels = data.train_y[order[0]]
    for block in labels.view(30, 10):
        assert sorted(block.tolist()) == list(range(10))
    assert len(set(order[0].tolist())) == 300  # no example twice
    assert not set(order.flatten().tolist()) & set(validation.tolist())
    assert len(validation) == 1000
    assert torch.equal(order, experiment.training_sets(label_pools, 300, [0, 1]))
    assert not torch.equal(order[0], order[1])


def test_a_batch_of_replicas_trains_like_each_replica_alone(pools):
    """Equal up to float rounding: batched matrix products are not batch-size invariant in the
    last bit, so an accuracy may differ by an example or two, never more."""
    (label_pools, validation), data = pools
    config = dataclasses.replace(TINY, sizes=(30,))
    order = experiment.training_sets(label_pools, 30, [0, 1, 2])
    hyper = {"lr": torch.tensor([0.5, 0.1, 1.0], dtype=torch.float64),
             "delta": torch.tensor([0.01, 0.1, 0.001], dtype=torch.float64),
             "decay": torch.tensor([0.9, 0.99, 0.5], dtype=torch.float64)}  # fmt: skip
    args = (
        data.train_x,
        data.train_y,
        data.train_x[validation],
        data.train_y[validation],
        [10, 30],
    )
    batch, _ = experiment.train_replicas(
        config, "accelerated-sign", "square", hyper, [0, 1, 2], order, *args
    )
    for r in range(3):
        alone, _ = experiment.train_replicas(
            config, "accelerated-sign", "square", {k: v[r : r + 1] for k, v in hyper.items()},
            [r], order[r : r + 1], *args,
        )  # fmt: skip
        torch.testing.assert_close(batch[r], alone[0], rtol=0, atol=2.5 / len(validation))


def test_a_seed_gives_the_same_record_alone_or_in_a_batch(context):
    together = experiment.run_batch(TINY, [0, 1], context)
    alone = experiment.run(TINY, 1, context)
    assert together[1].metrics.keys() == alone.metrics.keys()
    assert together[1].hyperparameters == alone.hyperparameters  # tuning never uses the seeds
    for key, value in alone.metrics.items():  # a seed's own training: equal up to rounding
        assert together[1].metrics[key] == pytest.approx(value, abs=2.5e-4), key
    assert together[0].metrics != alone.metrics
    sgd = Key("sgd", "test_accuracy", size=20, cost="cross_entropy")
    assert set(alone.metrics) == {sgd, sgd.replace(method="accelerated-sign")}
    assert alone.curves[sgd]["x"] == [10, 20]
    assert set(alone.hyperparameters) == {"sgd n=20 ce", "accelerated-sign n=20 ce"}


def test_tuning_never_reads_the_test_set(context, monkeypatch):
    data = context.load_dataset("mnist-mini")
    scrambled = dataclasses.replace(data, test_y=torch.zeros_like(data.test_y))
    other = RunContext(device=torch.device("cpu"))
    monkeypatch.setattr(other, "load_dataset", lambda name: scrambled)
    honest = experiment.run(TINY, 0, context)
    blind = experiment.run(TINY, 0, other)
    assert blind.hyperparameters == honest.hyperparameters
    assert blind.metrics != honest.metrics  # the scrambled test set was read, but only to test


def test_every_method_gets_a_study_with_the_same_budget():
    config = experiment.Config()
    studies = experiment.studies(config)
    assert experiment.EXPERIMENT.studies is experiment.studies
    assert len(studies) == 7 * 4 * 2 and len({st.method for st in studies}) == len(studies)
    assert {(st.trials, st.sampler, st.round_size, st.seed) for st in studies} == {
        (16, "random", 16, 0)
    }  # one round: every trial of a study in one replica batch
    assert all(st.direction == "maximize" for st in studies)
    momentum = experiment.settings_study(config, "momentum", 300, "cross_entropy")
    assert momentum.method == "momentum n=300 ce"
    assert momentum.space["lr"] == LogUniform(1e-3, 10.0)
    tpe = experiment.settings_study(
        dataclasses.replace(config, sampler="tpe"), "sgd", 300, "square"
    )
    assert (tpe.sampler, tpe.round_size, tpe.trials, tpe.method) == (
        "tpe",
        4,
        16,
        "sgd n=300 square",
    )


def test_the_tune_hook_runs_every_study_so_seeds_only_read_them(context):
    """The runner tunes in the driver; a seed's run (any context sharing the recorder, as the
    store is shared) runs no trial again, and records the chosen settings."""
    recorder, started = MemoryRecorder(), []
    start = recorder.start_trial
    recorder.start_trial = lambda *args: started.append(args[:2]) or start(*args)
    driver = RunContext(device=torch.device("cpu"), recorder_for=lambda config: recorder)
    driver._datasets = context._datasets
    experiment.tune(TINY, driver)
    studies = {"sgd n=20 ce", "accelerated-sign n=20 ce"}
    assert sorted(started) == sorted((st, n) for st in studies for n in range(TINY.trials))
    worker = RunContext(device=torch.device("cpu"), recorder_for=lambda config: recorder)
    worker._datasets = context._datasets
    result = experiment.run(TINY, 3, worker)
    assert len(started) == len(studies) * TINY.trials  # nothing ran twice
    assert set(result.hyperparameters) == studies
    for study, params in result.hyperparameters.items():
        assert params.keys() == experiment.SEARCH_SPACES[study.split(" ")[0]].keys()
        best = max(recorder.finished_trials(study), key=lambda t: (t.value, -t.number))
        assert best.params == params


def test_learning_is_visible_at_300_examples(context):
    config = dataclasses.replace(TINY, sizes=(300,), hidden=30, trials=3)
    metrics = experiment.run(config, 0, context).metrics
    assert (
        metrics[Key("sgd", "test_accuracy", size=300, cost="cross_entropy")] > 0.5
    )  # chance is 0.1


def test_config_rejects_unknown_methods_and_unbalanced_sizes():
    with pytest.raises(ValueError, match="unknown methods"):
        experiment.Config(methods=("rprop",))
    with pytest.raises(ValueError, match="multiples of 10"):
        experiment.Config(sizes=(305,))


def record(seed, accelerated, momentum):
    key = lambda m: Key(m, "test_accuracy", size=300, cost="cross_entropy")  # noqa: E731
    metrics = {key("accelerated-sign"): accelerated, key("momentum"): momentum, key("adam"): 0.6}
    return recorded_run(experiment.NAME, experiment.Config(), seed, metrics)


def test_verdict_uses_the_paired_difference():
    wins = [record(s, 0.55 + 0.001 * s, 0.43 + 0.001 * s) for s in range(20)]
    assert experiment.verdict(wins).status == "holds"
    losses = [record(s, 0.43 + (0.01 if s % 2 else -0.01), 0.43) for s in range(20)]
    assert experiment.verdict(losses).status == "does not hold"
    assert experiment.verdict(wins[:5]).status == "not run"
