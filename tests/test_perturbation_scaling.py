"""perturbation-scaling: a tiny config runs end to end; the pieces it is built from; the verdict."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import neuroplastic.experiments
from neuroplastic.config import config_to_dict
from neuroplastic.errors import DivergenceError
from neuroplastic.experiments import perturbation_scaling as ps
from neuroplastic.experiments.base import RunContext
from neuroplastic.models.mlp import MLP
from neuroplastic.results import Key
from neuroplastic.runner import run_experiment
from neuroplastic.store import Store
from neuroplastic.testing import recorded_run

TINY = ps.Config(
    widths=(4, 8),
    input_sides=(7,),
    input_sweep_width=4,
    batch_size=20,
    variance_draws=8,
    linear_inputs=(8, 16),
    linear_outputs=(2, 4),
    linear_draws=16,
    speed_inputs=(4, 8),
    speed_outputs=(2, 3),
    speed_lrs=(1.0, 0.25, 0.0625, 0.015625),
    speed_max_passes=4000,
    train_widths=(4,),
    budget=40,
    curve_points=4,
    n_train_eval=200,
    lrs=(1e-2, 1e-1),
)
"""Seconds: two widths and one pooled size for (a), 20 steps per method for (b)."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread is faster, above all on a loaded machine (set before
    the module-scoped run below)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def context():
    return RunContext(device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_result(context):
    return ps.run(TINY, 0, context)


def test_a_tiny_config_produces_the_metrics_and_curves(tiny_result):
    metrics = tiny_result.metrics
    for method in ps.PERTURBATION_METHODS:
        for n_in, width in ((784, 4), (784, 8), (49, 4)):
            for layer in (None, *ps.LAYERS):
                assert metrics[ps.variance_key(method, n_in, width, layer)] > 0
        for n_in in TINY.linear_inputs:
            for n_out in TINY.linear_outputs:
                assert metrics[ps.linear_key(method, n_in, n_out)] > 0
        for layer in ps.LAYERS:
            assert math.isfinite(metrics[Key(method, "synapse_exponent", layer=layer)])
        assert math.isfinite(metrics[Key(method, "neuron_exponent", setting="linear")])
        for name in ("synapse_exponent", "neuron_exponent", "slope_synapses", "slope_neurons"):
            assert math.isfinite(metrics[Key(method, name)])
    for method in ps.METHODS:
        assert tiny_result.hyperparameters[ps.study_name(method, 4)]["lr"] in TINY.lrs
        curve = tiny_result.curves[Key(method, "train_loss", width=4)]
        assert curve["x"][0] == 0 and len(curve["x"]) == TINY.curve_points + 1
        assert all(a < b for a, b in zip(curve["x"], curve["x"][1:], strict=False))
        assert curve["x"][-1] <= TINY.budget
        assert metrics[Key(method, "train_loss", width=4)] == curve["y"][-1]
        assert all(math.isfinite(v) for v in curve["y"])
    assert tiny_result.curve_x_label == "forward passes"
    # weight perturbation pays for every synapse, node perturbation for every unit
    for width in (4, 8):
        node, weight = (ps.variance_key(m, 784, width) for m in (ps.NODE, ps.WEIGHT))
        assert metrics[node] < metrics[weight]


def test_the_same_seed_gives_the_same_record(context, tiny_result):
    again = ps.run(TINY, 0, context)
    assert again.metrics == tiny_result.metrics
    assert again.curves == tiny_result.curves


def test_each_method_spends_the_budget_in_equal_steps(context):
    splits = ps.make_splits(TINY, context)
    for method in ps.METHODS:
        passes, _, _ = ps.train(TINY, method, 4, 0.01, 0, splits)
        assert passes[-1] == TINY.budget  # 20 steps of 2 passes each, for every method
    central = dataclasses.replace(TINY, difference="central", budget=30, curve_points=2)
    passes, _, _ = ps.train(central, ps.NODE, 4, 0.01, 0, splits)
    assert passes == [0.0, 15.0, 30.0]  # 1 clean + 2 perturbed passes per step


def test_counts_pooling_and_the_exponent_fit():
    for n_in, width in [(784, 16), (49, 64)]:
        model = MLP((n_in, width, 10))
        assert ps.synapses(n_in, width) == sum(p.numel() for p in model.parameters())
        assert ps.neurons(width) == width + 10
    images = torch.rand(3, 784)
    assert ps.pool(images, 784) is images
    pooled = ps.pool(images, 49)
    assert pooled.shape == (3, 49)
    torch.testing.assert_close(pooled[:, 0], images.view(3, 28, 28)[:, :4, :4].mean(dim=(1, 2)))
    log_p = np.log([100.0, 400.0, 1600.0, 800.0])
    log_n = np.log([10.0, 20.0, 40.0, 10.0])
    log_v = 0.9 * log_p + 0.2 * log_n + 1.0
    alpha, beta = ps.fit_exponents(log_v, log_p, log_n)
    assert alpha == pytest.approx(0.9) and beta == pytest.approx(0.2)
    assert ps.slope(2 * log_p, log_p) == pytest.approx(2.0)


def test_weight_perturbation_variance_is_about_the_number_of_synapses(context):
    """Theory: V = P + 1 for small sigma; 64 draws resolve it to about 20 %."""
    config = dataclasses.replace(TINY, variance_draws=64)
    splits = ps.make_splits(config, context)
    x, y = splits.train_x[:20], splits.train_y[:20]
    values = ps.relative_variances(config, 0, 49, 8, ps.pool(x, 49), y)
    assert values[ps.WEIGHT][None] == pytest.approx(ps.synapses(49, 8) + 1, rel=0.5)
    assert values[ps.NODE][None] < 0.1 * values[ps.WEIGHT][None]
    # per layer, weight perturbation pays K_l / (the layer's share of |g|^2) + 1: above K_l
    assert values[ps.WEIGHT]["hidden"] > 49 * 8 and values[ps.WEIGHT]["output"] > 8 * 10


def test_a_diverging_run_raises_divergence_error(context):
    config = dataclasses.replace(TINY, lrs=(1e6,), loss="square")
    with pytest.raises(DivergenceError):
        ps.run(config, 0, context)


def test_runs_through_the_runner_and_the_store(tmp_path, monkeypatch):
    monkeypatch.setitem(neuroplastic.experiments.EXPERIMENTS, ps.NAME, ps.EXPERIMENT)
    with Store(tmp_path / "runs.db") as store:
        outcome = run_experiment(ps.EXPERIMENT, TINY, [1], store, device="cpu")
        assert not outcome.failures
        (record,) = store.runs(ps.NAME)
    assert record.status == "finished" and record.curve_x_label == "forward passes"
    (table,) = ps.tables([record])
    assert [row[0] for row in table.rows] == ["784-4-10", "784-8-10", "49-4-10"]
    panel = ps.plot_panel(Key(ps.NODE, "train_loss", width=4))
    assert panel == ("training loss, 784-4-10", ps.NODE)
    assert ps.EXPERIMENT.verdict([record]).status == "not run"


def test_quick_is_smaller_and_keeps_the_dataset():
    full = ps.Config()
    quick = ps.quick(full)
    assert quick.dataset == full.dataset
    assert len(quick.widths) == 2 and quick.budget < full.budget and len(quick.lrs) < len(full.lrs)
    ps.Config(**{**config_to_dict(quick), "widths": quick.widths})  # still a valid config
    with pytest.raises(ValueError):
        ps.Config(widths=(16,))
    with pytest.raises(ValueError):
        ps.Config(input_sides=())
    with pytest.raises(ValueError, match="methods must include"):
        ps.Config(methods=(ps.WEIGHT, ps.BACKPROP))
    with pytest.raises(ValueError, match="methods must include"):
        ps.Config(methods=(ps.WEIGHT, ps.NODE, "twiddle"))


# -- the verdict on fake records -------------------------------------------------------------------


def record(
    seed: int,
    exponents: dict[str, tuple[float, float]],
    losses: dict[str, float],
    linear_ratio: float = 1.0,
    speed_gap: float = 1.0,
    serial_gap: float = 1.1,
):
    """A default-config run whose per-layer exponents, losses and linear V / theory are given;
    node perturbation needs ``10 N M`` passes in the linear sweep, weight perturbation
    ``speed_gap`` times ``10 N^2 M``, serial perturbation ``serial_gap`` times weight's."""
    metrics = {}
    default = ps.Config()
    for n in default.speed_inputs:
        for m in default.speed_outputs:
            metrics[ps.speed_key(ps.NODE, n, m)] = 10.0 * n * m
            metrics[ps.speed_key(ps.WEIGHT, n, m)] = 10.0 * n * n * m * speed_gap
            metrics[ps.speed_key(ps.SERIAL, n, m)] = 10.0 * n * n * m * speed_gap * serial_gap
    for method, (alpha, beta) in exponents.items():
        for layer in (None, *ps.LAYERS):
            metrics[Key(method, "synapse_exponent", layer=layer)] = alpha + 0.01 * seed
            metrics[Key(method, "neuron_exponent", layer=layer)] = beta - 0.01 * seed
        for n in ps.Config().linear_inputs:
            for m in ps.Config().linear_outputs:
                theory = ps.linear_theory(method, n, m)
                metrics[ps.linear_key(method, n, m)] = theory * linear_ratio * (1 + 0.01 * seed)
    for width in ps.Config().train_widths:
        for method, loss in losses.items():
            metrics[Key(method, "train_loss", width=width)] = loss + 0.01 * seed
    return recorded_run(ps.NAME, ps.Config(), seed, metrics)


SCALING = {ps.WEIGHT: (1.0, 0.0), ps.NODE: (0.05, 0.95)}
LEARNING = {ps.NODE: 0.6, ps.WEIGHT: 2.1, ps.BACKPROP: 0.2, ps.SERIAL: 2.2}


def test_verdict_holds_when_all_five_parts_hold():
    verdict = ps.verdict([record(s, SCALING, LEARNING) for s in range(5)])
    assert verdict.status == "holds"
    assert "weight, all parameters (1.02, -0.02)" in verdict.headline
    assert "n=5" in verdict.headline
    assert "V/theory 1.02-1.02" in verdict.headline  # the seed mean of 1 + 0.01 * seed
    assert "exponent on N 1.00" in verdict.headline  # weight / node = N in the fake runs
    assert "passes serial/weight 1.10-1.10" in verdict.headline


def test_verdict_partly_holds_when_serial_perturbation_is_far_slower_than_parallel():
    verdict = ps.verdict([record(s, SCALING, LEARNING, serial_gap=2.5) for s in range(5)])
    assert verdict.status == "partly holds"
    assert "within 2x at every (N, M): no]" in verdict.headline
    assert "node < weight: yes" in verdict.headline


def test_verdict_partly_holds_when_node_variance_also_follows_synapses():
    scaling = {ps.WEIGHT: (1.0, 0.0), ps.NODE: (0.5, 0.5)}
    verdict = ps.verdict([record(s, scaling, LEARNING) for s in range(5)])
    assert verdict.status == "partly holds"
    assert "node per layer ~(0, 1): no]" in verdict.headline
    assert "node < weight: yes" in verdict.headline


def test_verdict_partly_holds_when_the_linear_variance_misses_the_theory():
    verdict = ps.verdict([record(s, SCALING, LEARNING, linear_ratio=1.3) for s in range(5)])
    assert verdict.status == "partly holds"
    assert "M+1 and NM+1: no]" in verdict.headline


def test_verdict_partly_holds_when_node_perturbation_is_not_faster_in_the_linear_setting():
    verdict = ps.verdict([record(s, SCALING, LEARNING, speed_gap=0.01) for s in range(5)])
    assert verdict.status == "partly holds"
    assert "weight/node ~ N: no]" in verdict.headline


def test_verdict_does_not_hold_when_no_part_holds():
    scaling = {ps.WEIGHT: (0.5, 0.5), ps.NODE: (1.0, 0.0)}
    learning = {ps.NODE: 2.1, ps.WEIGHT: 0.6, ps.BACKPROP: 0.2}
    runs = [record(s, scaling, learning, linear_ratio=0.5, speed_gap=0.01, serial_gap=0.4)
            for s in range(5)]  # fmt: skip
    assert ps.verdict(runs).status == "does not hold"


@pytest.mark.parametrize(("n_in", "n_out"), [(16, 2), (64, 8)])
def test_linear_relative_variance_matches_werfel_xie_seung(n_in, n_out):
    """E|g_hat - g|^2 / |g|^2 = M + 1 (node) and N M + 1 (weight) for Gaussian perturbations of a
    linear network with one example; 4,000 draws put the Monte Carlo error near 3 %."""
    config = dataclasses.replace(ps.Config(), linear_draws=4000, difference="central")
    values = ps.linear_relative_variances(config, 0, n_in, n_out)
    for method, value in values.items():
        assert value / ps.linear_theory(method, n_in, n_out) == pytest.approx(1, abs=0.1), method


def test_verdict_needs_five_default_seeds():
    runs = [record(s, SCALING, LEARNING) for s in range(4)]
    assert ps.verdict(runs).status == "not run"
    quick = dataclasses.replace(record(4, SCALING, LEARNING), quick=True)
    assert ps.verdict([*runs, quick]).status == "not run"


def test_tuning_trials_are_recorded_and_reused(tmp_path, monkeypatch):
    """Every learning-rate trial is a row of the store; the runs record the rates they used; a
    second invocation of the same config finds the study finished and runs no trial again."""
    monkeypatch.setitem(neuroplastic.experiments.EXPERIMENTS, ps.NAME, ps.EXPERIMENT)
    with Store(tmp_path / "runs.db") as store:
        run_experiment(ps.EXPERIMENT, TINY, [1], store, device="cpu")
        trials = store.trials(ps.NAME)
        speed = len(ps.speed_cells(TINY)) * len(TINY.speed_lrs)
        assert len(trials) == len(ps.METHODS) * len(TINY.train_widths) * len(TINY.lrs) + speed
        assert {t.status for t in trials} <= {"finished", "failed"}
        (record,) = store.runs(ps.NAME)
        for method in ps.METHODS:
            name = ps.study_name(method, 4)
            chosen = record.hyperparameters[name]["lr"]
            scores = {t.params["lr"]: t.value for t in trials if t.method == name}
            assert chosen == min(scores, key=lambda lr: scores[lr])
        run_experiment(ps.EXPERIMENT, TINY, [2], store, device="cpu")
        assert len(store.trials(ps.NAME)) == len(trials)


def test_kill_9_in_the_middle_of_tuning_resumes_where_it_stopped(tmp_path):
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    store = tmp_path / "results.db"
    settings = {"widths": "4,8", "input_sides": "7", "input_sweep_width": "4",
                "batch_size": "20", "variance_draws": "8", "train_widths": "4", "budget": "1500",
                "curve_points": "4", "n_train_eval": "200",
                "lrs": "0.001,0.003,0.01,0.03,0.1,0.3", "speed_inputs": "4,8",
                "speed_outputs": "2,3", "speed_lrs": "1,0.25,0.0625",
                "speed_max_passes": "4000"}  # fmt: skip
    overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    argv = [sys.executable, "-m", "neuroplastic.cli", "run", ps.NAME, "--store", str(store),
            "--quiet", *overrides]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            if store.exists():
                with sqlite3.connect(store) as db:
                    try:
                        query = "select count(*) from trials where status='finished'"
                        if db.execute(query).fetchone()[0] >= 3:
                            break
                    except sqlite3.OperationalError:  # schema not created yet
                        pass
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    with Store(store) as results:
        before = {t.id: t for t in results.trials(status="finished")}
        assert 3 <= len(before) < 24
        assert results.runs() == []  # tuning comes first, in the driver: no seed had started
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    with Store(store) as results:
        trials = results.trials(status="finished") + results.trials(status="failed")
        studies = [(t.method, t.number) for t in trials]
        # every trial once, none repeated: 4 methods x 6 rates, and 16 linear cells x 3 rates
        assert len(studies) == len(set(studies)) == 24 + 48
        assert all(results.get_trial(i) == t for i, t in before.items())  # kept as they were
        assert results.runs(status="finished")[0].hyperparameters


@pytest.mark.parametrize("method", [ps.WEIGHT, ps.NODE, ps.SERIAL])
def test_the_batched_linear_learner_steps_as_the_rules_estimate(method):
    """linear_speed's estimator of one step equals the rule's single-draw estimate with the same
    noise: (L(+noise) - L) / sigma^2 times the noise."""
    n_in, n_out, sigma = 5, 3, 1e-3
    config = dataclasses.replace(ps.Config(), sigma=sigma)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, n_in, generator=gen, dtype=torch.float64)
    x = x / x.norm()
    teacher = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
    student = torch.nn.Sequential(torch.nn.Linear(n_in, n_out, bias=False)).double()
    rule = ps.RULES[method](student, sigma=sigma, difference=config.difference)

    def losses(model):
        return 0.5 * (model(x) - x @ teacher.T).pow(2).sum(-1)

    d = ((student[0].weight - teacher) @ x[0]).detach()
    if method in (ps.WEIGHT, ps.SERIAL):
        if method == ps.WEIGHT:
            xi = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
        else:  # linear_speed's draw of the visited weight is the rule's own
            xi = torch.zeros(n_out * n_in, dtype=torch.float64)
            visit = torch.randint(n_out * n_in, (1,), generator=torch.Generator().manual_seed(7))
            xi[int(visit)] = 1
            xi = xi.view(n_out, n_in)
            rule.generator = torch.Generator().manual_seed(7)
            (drawn,) = rule.draw_noise(1)
            assert torch.equal(drawn[0], sigma * xi)
        (estimate,) = rule.estimates(losses, noise=[sigma * xi[None]]).grads
        change = ((d + sigma * (xi @ x[0])).pow(2).sum() - d.pow(2).sum()) / 2
        expected = change / sigma * xi
    else:
        xi = torch.randn(n_out, generator=gen, dtype=torch.float64)
        (estimate,) = rule.estimates(losses, noise=[sigma * xi[None, None]]).grads
        change = ((d + sigma * xi).pow(2).sum() - d.pow(2).sum()) / 2
        expected = change / sigma * xi[:, None] * x[0]
    assert torch.allclose(estimate[0], expected, rtol=1e-6, atol=1e-9)


def test_node_perturbation_learns_the_linear_task_in_fewer_passes_than_weight_perturbation():
    config = dataclasses.replace(TINY, speed_max_passes=20_000)
    lrs = tuple(2.0**-k for k in range(1, 9))  # 0.5 down to 1/256: weight's optimum ~ 1/66
    fastest = {
        method: min(ps.linear_speed(config, method, 16, 4, lrs, seed=0)) for method in ps.METHODS
    }
    assert fastest[ps.BACKPROP] < fastest[ps.NODE] < fastest[ps.WEIGHT] < math.inf
    # serial perturbation: about weight perturbation's rate (theory: K / (K + 2) of its passes)
    assert 0.5 < fastest[ps.SERIAL] / fastest[ps.WEIGHT] < 2
