"""golden2022-foraging (``experiments.golden2022_foraging``): the four conditions on a tiny
budget, the verdict's criterion, and the report's pictures."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from neuroplastic.envs import ForagingWorlds
from neuroplastic.experiments import EXPERIMENTS
from neuroplastic.experiments import golden2022_foraging as golden
from neuroplastic.experiments.base import RunContext
from neuroplastic.results import Key
from neuroplastic.store import RunRecord
from neuroplastic.testing import recorded_run

TINY = golden.Config(unsupervised_cycles=4, task_cycles=20, block_cycles=10, test_cycles=6,
                     test_worlds=2, episode_cycles=8)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two networks through the runner into a store, as the command line runs them."""
    from neuroplastic.runner import run_experiment
    from neuroplastic.store import Store

    path = tmp_path_factory.mktemp("store") / "runs.db"
    with Store(path) as store:
        return run_experiment(golden.EXPERIMENT, TINY, [0, 1], store, device="cpu").records


@pytest.fixture(scope="module")
def tiny_results(tiny_runs):
    return tiny_runs


def test_every_condition_is_measured_on_both_tasks_per_network(tiny_results):
    assert len(tiny_results) == 2
    for result in tiny_results:
        for condition in golden.CONDITIONS:
            for task in golden.TASKS:
                d = result.metrics[Key(condition, "discriminability", setting=task)]
                assert math.isnan(d) or 0.0 <= d <= 1.0
                assert result.metrics[Key(condition, "meals_per_world", setting=task)] >= 0
                for kind in ("rewarded", "punished"):
                    taken = result.metrics[Key(condition, f"lone_{kind}_taken", setting=task)]
                    assert taken * 8 == round(taken * 8) and 0.0 <= taken <= 1.0
            for metric in ("task1_synapses_in_top", "task2_synapses_in_top"):
                assert 0.0 <= result.metrics[Key(condition, metric)] <= 1.0
        # by definition each task's own synapses are its top 10 %
        assert result.metrics[Key("task1-only", "task1_synapses_in_top")] == 1.0
        assert result.metrics[Key("task1-then-task2", "task2_synapses_in_top")] == 1.0
        interleaved = result.curves[Key("interleaved", "training_discriminability",
                                        setting="task1")]  # fmt: skip
        assert interleaved["x"] == [30.0, 40.0]  # after task 1's 20 cycles, two blocks
        assert len(result.curves[Key("sleep", "episode_moves", setting="task1")]["y"]) == 8
        for task in golden.TASKS:
            scores = {p: result.metrics[Key(f"policy:{p}", "discriminability", setting=task)]
                      for p in golden.REFERENCE_POLICIES}  # fmt: skip
            assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in scores.values())


def test_the_recorded_episode_replays_in_a_world_from_its_seed():
    """The report redraws the episode from the world's seed and the moves: the replay must
    eat what the agent ate."""
    from neuroplastic.envs.foraging import TASKS
    from neuroplastic.experiments.foraging_protocol import Foragers, test_phase
    from neuroplastic.models.forager import Forager

    agent = Forager(2, golden.forager_parameters(TINY), seed=3)
    agent.w_out = agent.w_out * (1 + torch.rand(agent.w_out.shape))
    alone = Foragers(agent.select(1), ForagingWorlds(1, "task1"), torch.Generator().manual_seed(4))
    moves = torch.zeros(150, 1, dtype=torch.long)
    rewarded, punished = test_phase(alone, "task1", 150, 1, seed=11, moves=moves)
    assert rewarded.item() + punished.item() > 0
    world = ForagingWorlds(1, "task1", seed=11)
    eaten = [int(world.step(torch.tensor([int(m)]))[2][0]) for m in moves[:, 0]]
    assert sum(e in TASKS["task1"].rewarded for e in eaten) == rewarded.item()
    assert sum(e in TASKS["task1"].punished for e in eaten) == punished.item()


def records(values: dict[tuple[str, str], list[float]], n: int = 10) -> list[RunRecord]:
    return [
        recorded_run(
            golden.NAME,
            golden.Config(),
            seed,
            {Key(c, "discriminability", setting=t): v[seed] for (c, t), v in values.items()},
        )
        for seed in range(n)
    ]


def outcome(task1_only, sequential, sleep_task1, sleep_task2):
    jitter = [0.01 * ((i % 3) - 1) for i in range(10)]
    base = {
        ("task1-only", "task1"): task1_only, ("task1-only", "task2"): 0.5,
        ("task1-then-task2", "task1"): sequential, ("task1-then-task2", "task2"): 0.7,
        ("interleaved", "task1"): 0.65, ("interleaved", "task2"): 0.65,
        ("sleep", "task1"): sleep_task1, ("sleep", "task2"): sleep_task2,
    }  # fmt: skip
    return records({k: [v + j for j in jitter] for k, v in base.items()})


def test_registered_and_the_verdict_follows_the_criterion():
    assert EXPERIMENTS[golden.NAME] is golden.EXPERIMENT
    assert golden.verdict(outcome(0.70, 0.52, 0.70, 0.68)).status == "holds"
    assert golden.verdict(outcome(0.70, 0.52, 0.55, 0.68)).status == "partly holds"
    assert golden.verdict(outcome(0.70, 0.52, 0.70, 0.52)).status == "partly holds"
    assert golden.verdict(outcome(0.70, 0.52, 0.55, 0.52)).status == "does not hold"
    untestable = golden.verdict(outcome(0.55, 0.52, 0.55, 0.68))
    assert untestable.status == "does not hold" and "cannot test" in untestable.headline
    no_forgetting = golden.verdict(outcome(0.70, 0.68, 0.70, 0.68))
    assert "cannot test" in no_forgetting.headline
    assert golden.verdict(outcome(0.7, 0.5, 0.7, 0.7)[:9]).status == "not run"


def test_the_reports_table_reads_the_default_configs_runs_when_there_are_some():
    """Runs of another config in the same store (runs 185-194 beside 292-301) stay out of the
    table the verdict's runs fill; a store without default runs shows what it has."""
    current = outcome(0.70, 0.52, 0.70, 0.68)
    first = [dataclasses.replace(r, id=100 + r.seed, config=dataclasses.asdict(
        golden.first_configuration()), config_hash="first") for r in current]  # fmt: skip
    title = golden.tables(current + first)[0].title
    assert title.endswith("(n=10)")
    assert golden.tables(first)[0].title.endswith("(n=10)")


def test_the_report_shows_the_world_an_episode_and_the_synapses(tiny_runs, tmp_path):
    from neuroplastic.report import experiment_report

    assert [r.status for r in tiny_runs] == ["finished", "finished"]
    path = experiment_report(golden.EXPERIMENT, tiny_runs, tmp_path)
    text = path.read_text()
    for picture in ("world.png", "episode.gif", "synapses.png"):
        name = f"{golden.NAME}-{picture}"
        assert name in text and (tmp_path / name).exists()
    assert "paper (task 1 / task 2)" in text
    assert "Scripted reference policies" in text and "Lone particle" in text
    from PIL import Image

    with Image.open(tmp_path / f"{golden.NAME}-episode.gif") as gif:
        assert gif.n_frames == TINY.episode_cycles + 1
    assert np.asarray(Image.open(tmp_path / f"{golden.NAME}-world.png")).shape[2] == 3


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of block_cycles"):
        dataclasses.replace(TINY, task_cycles=25)
    with pytest.raises(ValueError, match="sleep noise"):
        dataclasses.replace(TINY, sleep_noise="pink")
    with pytest.raises(ValueError, match="test_worlds"):
        dataclasses.replace(TINY, test_worlds=0)
    with pytest.raises(ValueError, match="eligibility_cycles"):
        dataclasses.replace(TINY, eligibility_cycles=0)
    with pytest.raises(ValueError, match="input_total"):
        dataclasses.replace(TINY, input_total=-0.1)


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_numbers(tmp_path, monkeypatch):
    """Interrupted inside the sleep branch, a run resumes from its last save and ends with
    what an uninterrupted run gives; the checkpoint is removed when the run finishes."""
    from neuroplastic.experiments import foraging_protocol

    context = RunContext(torch.device("cpu"), checkpoint_dir=tmp_path)
    whole = golden.run_batch(TINY, [0, 1], RunContext(torch.device("cpu")))
    monkeypatch.setattr(golden, "CHECKPOINT_SECONDS", 0.0)  # save after every block
    real_sleep, calls = foraging_protocol.sleep_phase, []

    def interrupted_sleep(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_sleep(*args, **kwargs)

    monkeypatch.setattr(golden, "sleep_phase", interrupted_sleep)
    with pytest.raises(KeyboardInterrupt):
        golden.run_batch(TINY, [0, 1], context)
    assert list(tmp_path.glob("*.pt"))
    monkeypatch.setattr(golden, "sleep_phase", real_sleep)
    resumed = golden.run_batch(TINY, [0, 1], context)
    assert not list(tmp_path.glob("*.pt"))
    for a, b in zip(whole, resumed, strict=True):
        assert a.metrics.keys() == b.metrics.keys()
        np.testing.assert_equal(a.metrics, b.metrics)
        assert a.curves.keys() == b.curves.keys()
        for key in a.curves:
            np.testing.assert_equal(a.curves[key], b.curves[key])  # NaN equals NaN here


def test_the_compiled_backend_runs_every_condition(tiny_runs, tmp_path):
    """``backend="numba"``: the same protocol on the compiled cycles, the same measurements."""
    pytest.importorskip("numba")
    from neuroplastic.runner import run_experiment
    from neuroplastic.store import Store

    config = dataclasses.replace(TINY, backend="numba")
    with Store(tmp_path / "runs.db") as store:
        fast = run_experiment(golden.EXPERIMENT, config, [0, 1], store, device="cpu").records
    assert [set(r.metrics) for r in fast] == [set(r.metrics) for r in tiny_runs]
    for result in fast:
        for condition in golden.CONDITIONS:
            for task in golden.TASKS:
                d = result.metrics[Key(condition, "discriminability", setting=task)]
                assert math.isnan(d) or 0.0 <= d <= 1.0


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        golden.Config(backend="cuda")


def test_an_unknown_activity_normalisation_is_refused():
    with pytest.raises(ValueError, match="activity_normalisation must be one of"):
        golden.Config(activity_normalisation="sqrt")
    with pytest.raises(ValueError, match="activity_rate"):
        golden.Config(activity_normalisation="divide", activity_rate=0.0)


def test_the_authors_code_options_reach_the_rule_and_the_agent():
    from neuroplastic.experiments.foraging_protocol import Foragers
    from neuroplastic.models.forager import Forager

    config = golden.Config()  # the authors' code's values, the defaults since 2026-12-02
    params = golden.forager_parameters(config)
    assert params.decision == 600
    agent = Forager(1, params, seed=0)
    foragers = Foragers(agent, ForagingWorlds(1, "task1", seed=0), torch.Generator(), 1)
    rule = golden.hidden_to_output_rule(foragers, config).params
    assert (rule.activity_normalisation, rule.activity_rate) == ("per_synapse", 0.001)
    assert (rule.change_cap, rule.stdp.tau) == (0.01, 40.0)
    first = golden.Config(activity_normalisation="off", change_cap=0.0, pair_tau=80.0,
                          decision_steps=300, input_total=0.0, hidden_target_spikes=0.0)
    assert golden.forager_parameters(first).decision == 300
    old_rule = golden.hidden_to_output_rule(foragers, first).params
    assert old_rule.change_cap == math.inf and old_rule.stdp.tau == 80.0
    assert golden.hidden_homeostasis(first) is None
    sparse = golden.Config(input_total=0.4, hidden_target_spikes=0.01, hidden_scaling_step=0.02)
    assert golden.hidden_homeostasis(sparse) == golden.HiddenHomeostasis(0.01, 0.02, 0.01)
    coded = golden.Config(scaling_mode="gain", scaling_step=0.001, scaling_rate=0.01,
                          target_spikes=0.5, output_max=15.0)  # fmt: skip
    assert golden.forager_parameters(coded).output_max == 15.0
    assert golden.forager_parameters(golden.Config(output_max=0.0)).output_max == math.inf
    assert golden.output_scaling(coded) == golden.Scaling(0.5, 0.001, "gain", 0.01)
    for bad, message in ((dict(change_cap=-0.01), "change_cap"), (dict(pair_tau=0.0), "pair_tau"),
                         (dict(scaling_mode="resistance"), "scaling mode"),
                         (dict(scaling_rate=1.5), "scaling rate"),
                         (dict(output_max=-1.0), "output_max"),
                         (dict(decision_steps=601), "decision_steps"),
                         (dict(input_total=0.0), "set input_total"),
                         (dict(input_total=0.4, hidden_target_spikes=0.01,
                               hidden_average_rate=0.0), "rate average")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            golden.Config(**bad)


def test_runs_of_the_first_defaults_are_no_longer_default_runs_and_the_backend_does_not_count():
    """Runs 185-194 (the defaults before 2026-12-02, recorded without the keys added since) are
    not runs of today's default config; a run on the compiled backend is."""
    first = dataclasses.asdict(golden.first_configuration())
    for added in ("change_cap", "pair_tau", "decision_steps", "hidden_target_spikes",
                  "hidden_scaling_step", "hidden_average_rate", "scaling_mode", "scaling_rate",
                  "output_max"):  # fmt: skip
        del first[added]
    old = recorded_run(golden.NAME, first, 0, {}, id=1)
    compiled = recorded_run(golden.NAME, dict(dataclasses.asdict(golden.Config()), backend="numba"),
                            0, {}, id=2)  # fmt: skip
    assert [r.id for r in golden.default_runs([old, compiled], golden.Config)] == [2]
