"""guerguiev2017-mnist: learns visibly on a small budget, resumes from checkpoints, judges."""

import dataclasses

import pytest
import torch

from neuroplastic.errors import ConfigError
from neuroplastic.experiments import guerguiev2017_mnist as experiment
from neuroplastic.experiments.base import RunContext
from neuroplastic.kernels import numba_available
from neuroplastic.results import Key
from neuroplastic.runner import run_experiment
from neuroplastic.seeding import derive_seed
from neuroplastic.stats import mean_ci
from neuroplastic.store import Store
from neuroplastic.testing import recorded_run
from neuroplastic.tuning import suggest

TINY = experiment.Config(
    dataset="mnist-mini",
    networks=("0-hidden",),
    baselines=("1-hidden-fa",),
    epochs=2,
    examples_per_epoch=300,
    test_examples=200,
    eval_every=150,
    validation_examples=200,
    baseline_lrs=(0.03, 0.3),
)

needs_numba = pytest.mark.skipif(not numba_available(), reason="needs the fast extra (Numba)")
CPU = torch.device("cpu")


def assert_curves_close(a, b, rel=1e-5):
    """The same curves, measured at the same points, with values equal to float32 rounding."""
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["x"] == b[name]["x"], name
        assert a[name]["y"] == pytest.approx(b[name]["y"], rel=rel, abs=1e-6), name


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    context = RunContext(device=torch.device("cpu"), checkpoint_dir=tmp_path_factory.mktemp("ckpt"))
    return experiment.run_batch(TINY, [0, 1], context), context


def test_learns_visibly_and_reports_every_curve(outcome):
    results, context = outcome
    for result in results:
        # tested every 150 training images within each epoch of 300 and at its end
        test_curve = result.curves[Key("0-hidden", "test_error")]
        assert result.curve_x_label == "training images"
        assert test_curve["x"] == [150, 300, 450, 600]
        assert result.curves[Key("0-hidden", "train_error")]["x"] == [300, 600]
        assert result.curves[Key("1-hidden-fa", "test_error")]["x"] == [300, 600]
        assert result.metrics[Key("0-hidden", "test_error")] == test_curve["y"][-1]
        assert result.metrics[Key("0-hidden", "test_error_epoch_mean")] == pytest.approx(
            sum(test_curve["y"][2:]) / 2
        )
        assert result.metrics[Key("0-hidden", "test_error")] < 0.6  # chance is 0.9
        assert 0 <= result.metrics[Key("0-hidden", "train_error")] <= 1
        assert set(result.hyperparameters) == {"1-hidden-fa"}
        assert result.hyperparameters["1-hidden-fa"]["lr"] in TINY.baseline_lrs
        assert 0 <= result.metrics[Key("1-hidden-fa", "test_error")] <= 1
    assert results[0].metrics != results[1].metrics  # seeds differ
    # the dendritic networks' checkpoints stay, holding every epoch, so a run can be extended
    kept = sorted(path.name for path in context.checkpoint_dir.iterdir())
    assert len(kept) == len(TINY.networks) and all("seeds-0-1" in name for name in kept)
    saved = torch.load(next(context.checkpoint_dir.iterdir()), weights_only=False)
    assert saved["epoch"] == TINY.epochs


def test_the_torch_stream_runs_end_to_end(outcome):
    """``random_stream=torch``, the protocol of the runs recorded before the counter stream:
    the same curves, other spikes than the default counter stream's."""
    config = dataclasses.replace(TINY, baselines=(), random_stream="torch")
    results = experiment.run_batch(config, [0, 1], RunContext(device=CPU))
    counter, _ = outcome
    for result, default in zip(results, counter, strict=True):
        test_curve = result.curves[Key("0-hidden", "test_error")]
        assert test_curve["x"] == [150, 300, 450, 600]
        assert result.metrics[Key("0-hidden", "test_error")] < 0.6  # chance is 0.9
        assert test_curve != default.curves[Key("0-hidden", "test_error")]
    assert results[0].metrics != results[1].metrics


@pytest.mark.parametrize("backend", ["torch", pytest.param("numba", marks=needs_numba)])
def test_on_the_counter_stream_a_seed_does_not_depend_on_its_batch(backend):
    """The point of the counter stream: seeds 0 and 1 as two replicas of one batch give each
    seed what it gives alone (to rounding), a hidden layer's angle included."""
    config = dataclasses.replace(
        TINY, networks=("1-hidden",), baselines=(), epochs=1, examples_per_epoch=40,
        test_examples=20, eval_every=20, backend=backend,
    )  # fmt: skip
    both = experiment.train_dendritic(config, "1-hidden", [0, 1], RunContext(device=CPU))
    for r, seed in enumerate([0, 1]):
        alone = experiment.train_dendritic(config, "1-hidden", [seed], RunContext(device=CPU))
        assert_curves_close(both[r], alone[0])
    assert both[0] != both[1]


def test_on_the_counter_stream_the_tiny_run_does_not_depend_on_its_batch(outcome):
    """The end-to-end run of seeds 0 and 1 against seed 1 alone."""
    results, _ = outcome
    alone = experiment.train_dendritic(TINY, "0-hidden", [1], RunContext(device=CPU))
    for name, curve in alone[0].items():
        assert_curves_close({name: results[1].curves[Key("0-hidden", name)]}, {name: curve})


@needs_numba
@pytest.mark.parametrize("random_stream", ["counter", "torch"])
def test_the_backends_agree_to_rounding(random_stream):
    """PyTorch and Numba simulate the same spikes: the same curves on the tiny config, and
    for a hidden layer."""
    for network, config in [
        ("0-hidden", dataclasses.replace(TINY, baselines=())),
        ("1-hidden", dataclasses.replace(
            TINY, networks=("1-hidden",), baselines=(), epochs=1, examples_per_epoch=40,
            test_examples=20, eval_every=20,
        )),
    ]:  # fmt: skip
        config = dataclasses.replace(config, random_stream=random_stream)
        torch_run, numba_run = (
            experiment.train_dendritic(
                dataclasses.replace(config, backend=backend), network, [0, 1],
                RunContext(device=CPU),
            )
            for backend in ("torch", "numba")
        )  # fmt: skip
        for a, b in zip(torch_run, numba_run, strict=True):
            assert_curves_close(a, b)


def test_the_replica_path_agrees_with_the_torch_path():
    """``backend=replicas`` (the GPU's fixed-shape step, eager on the CPU) trains the same
    networks as ``torch`` on the counter stream: the same curves, to rounding."""
    config = dataclasses.replace(
        TINY, networks=("1-hidden",), baselines=(), epochs=1, examples_per_epoch=40,
        test_examples=20, eval_every=20,
    )  # fmt: skip
    torch_run, replica_run = (
        experiment.train_dendritic(
            dataclasses.replace(config, backend=backend), "1-hidden", [0, 1], RunContext(device=CPU)
        )
        for backend in ("torch", "replicas")
    )
    for a, b in zip(torch_run, replica_run, strict=True):
        assert_curves_close(a, b)
    with pytest.raises(ValueError, match="random_stream=counter"):
        dataclasses.replace(config, backend="replicas", random_stream="torch")


def test_checkpoints_are_keyed_by_the_random_stream_not_the_backend(tmp_path):
    """The backend changes only rounding: a run may resume under another one."""
    context = RunContext(device=CPU, checkpoint_dir=tmp_path)

    def path(**changes):
        config = dataclasses.replace(TINY, **changes)
        return experiment._checkpoint_path(context, config, "0-hidden", [0])

    assert path(backend="torch") == path(backend="numba") == path()
    assert path(random_stream="torch") != path()
    with pytest.raises(ValueError, match="random_stream"):
        dataclasses.replace(TINY, random_stream="numpy")
    with pytest.raises(ValueError, match="backend"):
        dataclasses.replace(TINY, backend="triton")


BASELINES_ONLY = dataclasses.replace(
    TINY, networks=(), baselines=("1-hidden-backprop", "1-hidden-fa"), epochs=1
)


def count_tunings(monkeypatch) -> list:
    """Wrap ``train_baseline`` to record the (baseline, lr) of every tuning trial it runs."""
    trained, original = [], experiment.train_baseline
    tuning_seed = derive_seed("tuning", 0)

    def counting(config, baseline, lr, seed, *args, **kwargs):
        if seed == tuning_seed:
            trained.append((baseline, lr))
        return original(config, baseline, lr, seed, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_baseline", counting)
    return trained


def test_trials_are_recorded_and_a_second_invocation_runs_none(tmp_path, monkeypatch):
    """Through the runner: every rate of every baseline is a trial in the store, tuned in the
    driver before the seeds; each run records its rates; the same config again runs no trial."""
    config = BASELINES_ONLY
    trained = count_tunings(monkeypatch)
    with Store(tmp_path / "runs.db") as store:
        records = run_experiment(experiment.EXPERIMENT, config, [0, 1], store, device="cpu").records
        trials = store.trials(experiment.NAME)
        assert len(trials) == len(config.baselines) * len(config.baseline_lrs)
        assert {t.status for t in trials} == {"finished"}
        assert sorted(trained) == sorted(
            (b, lr) for b in config.baselines for lr in config.baseline_lrs
        )
        for baseline in config.baselines:
            errors = {
                t.params["lr"]: experiment.score(t.curves["val_error"]["y"])
                for t in trials if t.method == baseline
            }  # fmt: skip
            best = min(config.baseline_lrs, key=errors.__getitem__)  # the first of equals
            for record in records:
                assert record.hyperparameters[baseline] == {"lr": best}
        trained.clear()
        again = run_experiment(experiment.EXPERIMENT, config, [2], store, device="cpu").records
        assert trained == []
        assert len(store.trials(experiment.NAME)) == len(trials)
        assert again[0].hyperparameters == records[0].hyperparameters


@pytest.mark.parametrize("error", [0.25, float("nan")])
def test_ties_go_to_the_rate_listed_first_whatever_the_grid_order(monkeypatch, error):
    """As before the one tuner: equal validation errors (or divergence, scored 1.0) pick the
    first of ``baseline_lrs``, though the grid visits the rates in a shuffled order."""
    config = dataclasses.replace(BASELINES_ONLY, baseline_lrs=(0.01, 0.03, 0.1, 0.3, 1.0))
    study = experiment.learning_rate_study(config, "1-hidden-fa")
    assert suggest(study, [], 0)["lr"] != 0.01  # not simply the grid's first trial
    monkeypatch.setattr(experiment, "train_baseline", lambda *args, **kwargs: [0.5, error])
    context = RunContext(device=torch.device("cpu"))
    assert experiment.tuned_baseline_lr(config, "1-hidden-fa", context) == 0.01
    tuned = context.tune(config, study, experiment.validation_error(config, "1-hidden-fa", context))
    (best,) = [t for t in tuned.trials if t.params["lr"] == 0.01]
    assert experiment.score(best.curves["val_error"]["y"]) == (1.0 if error != error else error)


def test_config_rejects_repeated_learning_rates():
    with pytest.raises(ValueError, match="distinct"):
        dataclasses.replace(TINY, baseline_lrs=(0.03, 0.03))


class Interrupt(Exception):
    pass


class StopAtEpoch:
    """A progress sink that interrupts the run when the given epoch starts."""

    def __init__(self, epoch):
        self.epoch, self.starts = epoch, 0

    def start(self, total, description):
        if "epoch" in description:
            self.starts += 1
            if self.starts == self.epoch:
                raise Interrupt

    def advance(self, steps=1, **status):
        pass


@pytest.mark.parametrize("random_stream", ["counter", "torch"])
def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, random_stream):
    """The counter stream has no state to save (its position is the images seen); the torch
    generators' states are saved with the checkpoint."""
    config = dataclasses.replace(
        TINY, baselines=(), examples_per_epoch=150, test_examples=100, random_stream=random_stream
    )
    whole = experiment.train_dendritic(
        config, "0-hidden", [3], RunContext(device=torch.device("cpu"))
    )
    context = RunContext(
        device=torch.device("cpu"), checkpoint_dir=tmp_path, progress=StopAtEpoch(2)
    )
    with pytest.raises(Interrupt):
        experiment.train_dendritic(config, "0-hidden", [3], context)
    assert len(list(tmp_path.iterdir())) == 1  # the first epoch is saved
    context.progress = StopAtEpoch(99)
    resumed = experiment.train_dendritic(config, "0-hidden", [3], context)
    assert resumed == whole


class StopWithinEpoch:
    """A progress sink that interrupts the run at its ``advances``-th advance of ``epoch``."""

    def __init__(self, epoch, advances):
        self.epoch, self.advances, self.starts, self.count = epoch, advances, 0, 0

    def start(self, total, description):
        self.starts += "epoch" in description

    def advance(self, steps=1, **status):
        if self.starts == self.epoch:
            self.count += 1
            if self.count == self.advances:
                raise Interrupt


def test_a_run_interrupted_within_an_epoch_redoes_its_tests_once(tmp_path):
    """Interrupted in epoch 2 after its within-epoch tests at 250 and 300 images: the resumed run
    redoes epoch 2 from the checkpoint, tests again (the same values) and records each point
    once."""
    config = dataclasses.replace(
        TINY, baselines=(), examples_per_epoch=200, test_examples=40, eval_every=50
    )
    cpu = torch.device("cpu")
    whole = experiment.train_dendritic(config, "0-hidden", [4], RunContext(device=cpu))
    assert whole[0]["test_error"]["x"] == [50, 100, 150, 200, 250, 300, 350, 400]
    context = RunContext(device=cpu, checkpoint_dir=tmp_path, progress=StopWithinEpoch(2, 1))
    with pytest.raises(Interrupt):  # at step 100 of epoch 2, after the tests at 250 and 300
        experiment.train_dendritic(config, "0-hidden", [4], context)
    (checkpoint,) = tmp_path.iterdir()
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["epoch"] == 1 and saved["curves"][0]["test_error"]["x"] == [50, 100, 150, 200]
    context.progress = StopAtEpoch(99)
    resumed = experiment.train_dendritic(config, "0-hidden", [4], context)
    assert resumed == whole
    # a measurement does not depend on how many were taken before it
    sparse = dataclasses.replace(config, eval_every=100)
    every_100 = experiment.train_dendritic(sparse, "0-hidden", [4], RunContext(device=cpu))
    kept = [i for i, x in enumerate(whole[0]["test_error"]["x"]) if x % 100 == 0]
    assert every_100[0]["test_error"]["y"] == [whole[0]["test_error"]["y"][i] for i in kept]


def test_the_papers_dynamics_are_a_config_change():
    """A hidden layer's angle to backprop tells the dynamics apart (on the counter stream both
    see the same uniforms, so 20 images' error rates may well agree)."""
    config = dataclasses.replace(
        TINY, networks=("1-hidden",), baselines=(), epochs=1, examples_per_epoch=20,
        test_examples=10, psp_kernel="paper", integration="exponential",
    )  # fmt: skip
    curves = experiment.train_dendritic(config, "1-hidden", [0], RunContext(device="cpu"))
    default = dataclasses.replace(config, psp_kernel="authors", integration="euler")
    authors = experiment.train_dendritic(default, "1-hidden", [0], RunContext(device="cpu"))
    assert curves[0]["hidden_angle"] != authors[0]["hidden_angle"]
    with pytest.raises(ValueError, match="integration"):
        dataclasses.replace(config, integration="rk4")
    with pytest.raises(ValueError, match="eval_every"):
        dataclasses.replace(config, eval_every=-1)


def test_hidden_layers_report_the_angle_to_backprop():
    config = dataclasses.replace(
        TINY,
        networks=("1-hidden",),
        baselines=(),
        epochs=1,
        examples_per_epoch=40,
        test_examples=20,
    )
    curves = experiment.train_dendritic(
        config, "1-hidden", [0], RunContext(device=torch.device("cpu"))
    )
    assert 0 < curves[0]["hidden_angle"]["y"][0] < 180


def record(seed, errors, **changes):
    config = dataclasses.replace(experiment.Config(), **changes)
    return recorded_run(experiment.NAME, config, seed,
                        {Key(n, "test_error"): e for n, e in errors.items()})  # fmt: skip


def test_verdict_checks_the_ordering_of_depths():
    deeper_is_better = {"0-hidden": 0.083, "1-hidden": 0.041, "2-hidden": 0.032}
    runs = [record(s, {k: v + 0.001 * s for k, v in deeper_is_better.items()}) for s in range(3)]
    assert experiment.verdict(runs).status == "holds"
    assert "60 x 60,000" in experiment.verdict(runs).headline
    # seed by seed the differences are exactly 4.2 and 0.9 points: intervals of zero width
    assert "0 minus 1 hidden 4.20 ± 0.00 %" in experiment.verdict(runs).headline
    assert "1 minus 2 hidden 0.90 ± 0.00 %" in experiment.verdict(runs).headline
    flat = [record(s, {"0-hidden": 0.08, "1-hidden": 0.05, "2-hidden": 0.06}) for s in range(3)]
    assert experiment.verdict(flat).status == "does not hold"
    assert experiment.verdict(runs[:2]).status == "not run"
    # the largest budget with all three depths decides
    longer = [
        record(s, {"0-hidden": 0.08, "1-hidden": 0.05, "2-hidden": 0.06}, epochs=3)
        for s in range(3)
    ]
    assert experiment.verdict(runs + longer).status == "does not hold"
    assert "3 x 20,000" in experiment.verdict(runs + longer).headline
    # ... among the runs of the authors' dynamics: the paper-form ablation does not decide
    ablation = [
        record(s, deeper_is_better, epochs=5, psp_kernel="paper", integration="exponential")
        for s in range(3)
    ]
    assert experiment.verdict(runs + longer + ablation).status == "does not hold"


def test_depths_are_compared_seed_by_seed():
    """Seeds far apart (a spread of 3 points) but each seed's 1-hidden network 0.5 points better
    than its 0-hidden one: the paired interval is narrow and positive where the unpaired ones
    overlap, and a config without a recorded option counts as the authors' dynamics."""
    offsets = [0.0, 0.03, -0.02, 0.01]
    networks = {
        "1-hidden": 0.095, "2-hidden": 0.094, "1-hidden-sparse": 0.1, "1-hidden-symmetric": 0.1
    }  # fmt: skip
    runs = [
        record(s, {"0-hidden": 0.10 + o + 0.001 * s, **{k: v + o for k, v in networks.items()}},
               baselines=())
        for s, o in enumerate(offsets)
    ]  # fmt: skip
    gain = experiment.paired_difference(runs, "0-hidden", "1-hidden")
    assert gain.mean == pytest.approx(0.005 + 0.0015) and 0 < gain.mean - gain.ci95
    zero = mean_ci([r.metrics[Key("0-hidden", "test_error")] for r in runs])
    one = mean_ci([r.metrics[Key("1-hidden", "test_error")] for r in runs])
    assert zero.mean - zero.ci95 < one.mean + one.ci95  # unpaired, the intervals overlap
    old = [dataclasses.replace(r, config={
        k: v for k, v in r.config.items() if k not in ("psp_kernel", "integration", "eval_every")
    }) for r in runs]  # fmt: skip
    assert experiment.verdict(old).status == "holds"
    (errors, paired) = experiment.tables(runs)
    assert paired.rows[0][0] == "0-hidden minus 1-hidden"
    assert paired.rows[0][1] == f"{100 * gain.mean:.2f} ± {100 * gain.ci95:.2f} %"
    assert [row[0] for row in paired.rows] == [
        "0-hidden minus 1-hidden", "1-hidden minus 2-hidden", "0-hidden minus 2-hidden",
        "1-hidden minus 1-hidden-sparse", "1-hidden minus 1-hidden-symmetric",
    ]  # fmt: skip


def test_config_rejects_unknown_networks():
    with pytest.raises(ValueError, match="unknown networks"):
        dataclasses.replace(TINY, networks=("3-hidden",))
    with pytest.raises(ValueError, match="unknown baselines"):
        dataclasses.replace(TINY, baselines=("1-hidden-dfa",))


def test_more_epochs_continue_from_the_last_checkpoint(tmp_path):
    one = dataclasses.replace(
        TINY, baselines=(), epochs=1, examples_per_epoch=100, test_examples=50
    )
    two = dataclasses.replace(one, epochs=2)
    cpu = torch.device("cpu")
    straight = experiment.train_dendritic(two, "0-hidden", [5], RunContext(device=cpu))
    context = RunContext(device=cpu, checkpoint_dir=tmp_path)
    experiment.train_dendritic(one, "0-hidden", [5], context)
    assert experiment.train_dendritic(two, "0-hidden", [5], context) == straight
    with pytest.raises(ConfigError, match="holds 2 epochs"):
        experiment.train_dendritic(one, "0-hidden", [5], context)


def test_the_report_shows_how_fast_each_depth_learns():
    """With several epochs the verdict gives the test error after the first (the paper
    describes the depths' speed in words) and a table gives it at the end of every epoch, read
    from the recorded curves; within-epoch tests are not epoch ends."""
    final = {"0-hidden": 0.083, "1-hidden": 0.041, "2-hidden": 0.032}
    first = {"0-hidden": 0.09, "1-hidden": 0.12, "2-hidden": 0.10}
    n = 20_000

    def run(seed):
        curves = {
            Key(name, "test_error"): {"x": [n // 2, n, 3 * n // 2, 2 * n],
                                      "y": [0.5, first[name] + 0.01 * seed, 0.5, final[name]]}
            for name in final
        }  # fmt: skip
        config = dataclasses.replace(
            experiment.Config(), epochs=2, baselines=(), networks=tuple(final)
        )
        return recorded_run(experiment.NAME, config, seed,
                            {Key(k, "test_error"): v for k, v in final.items()},
                            curves=curves)  # fmt: skip

    runs = [run(s) for s in range(3)]
    verdict = experiment.verdict(runs)
    assert verdict.status == "holds"
    assert verdict.headline.endswith("after the first epoch 10.0 / 13.0 / 11.0 %")
    by_epoch = next(t for t in experiment.tables(runs) if "each epoch" in t.title)
    assert by_epoch.header == ["network", "epoch 1", "epoch 2"]
    assert by_epoch.rows[1] == ["1-hidden", "13.00", "4.10"]


def test_the_ablation_pairs_each_dynamics_with_the_authors_seed_by_seed():
    """Configs that differ only in the dynamics (and the baselines) form one ablation table:
    each setting's error per depth, its paired difference with the authors' dynamics and
    whether it orders the depths; a config of another budget, or a quick one, stays out."""
    base = dataclasses.replace(
        experiment.Config(), networks=experiment.DEPTHS, baselines=(), epochs=1,
        examples_per_epoch=60_000,
    )  # fmt: skip
    authors = {"0-hidden": 0.10, "1-hidden": 0.11, "2-hidden": 0.12}
    paper = {"0-hidden": 0.09, "1-hidden": 0.07, "2-hidden": 0.06}

    def runs(config, errors, shift=0.0, **fields):
        return [
            recorded_run(experiment.NAME, config, seed,
                         {Key(n, "test_error"): e + shift * seed for n, e in errors.items()},
                         id=100 * len(fields) + seed + (10 if config.psp_kernel == "paper" else 0),
                         **fields)  # fmt: skip
            for seed in range(3)
        ]

    records = [
        *runs(base, authors),
        *runs(dataclasses.replace(base, psp_kernel="paper", baselines=("1-hidden-fa",)),
              {**paper, "1-hidden-fa": 0.03}, shift=0.01),  # fmt: skip
        *runs(dataclasses.replace(base, epochs=2, integration="exponential"), paper),
        *runs(dataclasses.replace(base, integration="exponential"), paper, quick=True),
    ]
    (table,) = experiment.dynamics_ablation(records)
    assert "1 epoch(s) of 60000 images, n=3 seeds" in table.title
    settings = ["authors kernel, euler"] * 3 + ["paper kernel, euler"] * 3
    assert [row[0] for row in table.rows] == settings
    by_setting = {(row[0], row[1]): row for row in table.rows}
    assert by_setting["authors kernel, euler", "0-hidden"][4] == "no"
    assert by_setting["paper kernel, euler", "0-hidden"][4] == "yes"
    # paper minus authors for 2-hidden, seed by seed: 0.06 + 0.01 s - 0.12
    expected = mean_ci([0.06 + 0.01 * s - 0.12 for s in range(3)])
    assert by_setting["paper kernel, euler", "2-hidden"][3] == experiment._percent(expected)
    assert by_setting["authors kernel, euler", "2-hidden"][3] == ""
    assert table in experiment.tables(records)
