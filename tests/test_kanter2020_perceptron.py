"""Tests of kanter2020-perceptron and of the LIF perceptron it is built on.

Identities first (the membrane potential against a hand-computed sum, Eq. 1 reducing to the fixed
step, the teacher agreeing with itself, the reflecting bounds, batched runs equal to single runs,
determinism), then behaviour (students learn) and the verdict.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from neuroplastic.config import config_fields
from neuroplastic.errors import DivergenceError
from neuroplastic.experiments import kanter2020_perceptron as kp
from neuroplastic.experiments.base import RunContext
from neuroplastic.models.lif_perceptron import (
    LIFPerceptronParams,
    SortedInputs,
    contributions,
    membrane_potential,
    potentials_at_arrivals,
    reflect,
    respond,
    sample_arrival_times,
    sort_inputs,
)
from neuroplastic.results import Key
from neuroplastic.testing import recorded_run
from neuroplastic.tuning import MemoryRecorder, tune

EXACT = {"rtol": 0.0, "atol": 0.0}
CPU = torch.device("cpu")
F64 = torch.float64

SMALL = kp.Config(
    n_inputs=20,
    n_dendrites=4,
    n_examples=3000,
    n_curve_points=5,
    n_test=400,
    n_calibration=300,
    tuning_trials=4,
    tuning_tasks=2,
    n_validation=300,
    eta_range=(0.05, 0.5),
    delta_range=(1e-3, 3e-2),
    tau_0_range=(10.0, 300.0),
)
"""Small enough to learn in seconds: N = 20 inputs on 4 dendrites, 3000 examples."""
TINY = dataclasses.replace(SMALL, n_examples=200, n_test=200, n_validation=200)
"""For the exactness tests: a few hundred steps."""


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are small: one intra-op thread is faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def context() -> RunContext:
    return RunContext(device=CPU)


# -- the LIF perceptron ----------------------------------------------------------------------


def test_membrane_potential_equals_hand_computed_sum():
    """Three inputs arriving at 0.1, 0.3 and 0.5 (tau_m = 1): Eq. (1) of the model by hand."""
    params = LIFPerceptronParams(tau_m=1.0, window=1.0)
    weights = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    times = torch.tensor([0.5, 0.1, 0.3], dtype=F64)  # input 1 first, then 2, then 0
    e = math.exp
    expected = torch.tensor(
        [2.0, 2 * e(-0.2) - 1, 2 * e(-0.4) - e(-0.2) + 1], dtype=F64
    )  # V just after each arrival
    inputs = sort_inputs(times, params)
    assert inputs.order.tolist() == [1, 2, 0]
    assert_close(potentials_at_arrivals(weights, inputs), expected, rtol=0, atol=1e-15)
    reference = membrane_potential(weights, times, torch.tensor([0.1, 0.3, 0.5], dtype=F64), 1.0)
    assert_close(reference, expected, rtol=0, atol=1e-15)
    assert membrane_potential(weights, times, 0.05, 1.0).item() == 0.0  # nothing arrived yet
    assert_close(
        membrane_potential(weights, times, 0.4, 1.0).item(),
        2 * e(-0.3) - e(-0.1),
        rtol=0,
        atol=1e-15,
    )

    # Largest potential 2 at t* = 0.1: only input 1 had arrived, so only it contributed.
    response = respond(weights, inputs, 1.5)
    assert response.fires.item() and response.k_star.item() == 0
    assert_close(response.v_max, torch.tensor(2.0, dtype=F64), **EXACT)
    assert contributions(inputs, response.k_star).tolist() == [0.0, 1.0, 0.0]
    assert not respond(weights, inputs, 2.5).fires.item()

    # All positive: the largest potential is the last, t* = 0.5, and every input contributed.
    positive = torch.tensor([1.0, 2.0, 1.0], dtype=F64)
    response = respond(positive, inputs, 10.0)
    assert response.k_star.item() == 2 and not response.fires.item()
    assert_close(
        contributions(inputs, response.k_star),
        torch.tensor([1.0, e(-0.4), e(-0.2)], dtype=F64),
        rtol=0,
        atol=1e-15,
    )


def test_fast_path_equals_reference_and_contributions_are_the_gradient():
    params = LIFPerceptronParams(tau_m=20.0, window=50.0)
    generator = torch.Generator().manual_seed(0)
    times = sample_arrival_times(6, 40, params.window, generator)  # (6, 40)
    weights = torch.randn(40, generator=generator, dtype=F64)
    inputs = sort_inputs(times, params)
    fast = potentials_at_arrivals(weights, inputs)  # (6, 40)
    arrivals = torch.sort(times, dim=-1).values  # (6, 40)
    reference = membrane_potential(weights, times.unsqueeze(1), arrivals, params.tau_m)
    assert_close(fast, reference, rtol=0, atol=1e-12)

    response = respond(weights, inputs, 1.0)
    t_star = torch.gather(arrivals, -1, response.k_star.unsqueeze(-1)).squeeze(-1)  # (6,)
    c = contributions(inputs, response.k_star)
    w = weights.clone().requires_grad_()
    v_star = membrane_potential(w, times, t_star, params.tau_m)  # (6,)
    for m in range(6):
        (gradient,) = torch.autograd.grad(v_star[m], w, retain_graph=True)
        assert_close(c[m], gradient, rtol=0, atol=1e-14)


def test_reflect_hand_computed():
    x = torch.tensor([2.3, 0.1, 1.0, 2.0, 0.2, 4.1, -1.9], dtype=F64)
    # 2.3 overshoots 2.0 by 0.3 -> 1.7; 0.1 undershoots 0.2 by 0.1 -> 0.3; inside: unchanged;
    # 4.1 -> 2.0 - 2.1 = -0.1 -> 0.2 + 0.3 = 0.5; -1.9 -> 0.2 + 2.1 = 2.3 -> 1.7.
    expected = torch.tensor([1.7, 0.3, 1.0, 2.0, 0.2, 0.5, 1.7], dtype=F64)
    result = reflect(x, 0.2, 2.0)
    assert_close(result, expected, rtol=0, atol=1e-12)
    assert result[2:5].tolist() == [1.0, 2.0, 0.2]  # values inside stay bit for bit
    with pytest.raises(ValueError, match="low < high"):
        reflect(x, 1.0, 1.0)


def test_dendritic_strengths_stay_in_bounds_under_large_steps():
    config = dataclasses.replace(TINY, d_min=0.5, d_max=1.5)
    batch = kp.stack_tasks([kp.make_task(config, "dendritic", s, 100) for s in range(3)], CPU)
    task_of = torch.arange(3)
    steps = kp.StepSizes.fixed(torch.full((3,), 3.0, dtype=F64))  # steps larger than the range
    result = kp.train_students(batch, task_of, steps, config, "dendritic", [config.n_examples])
    assert ((result.params >= 0.5) & (result.params <= 1.5)).all()
    assert not torch.equal(result.params, batch.student)


# -- Eq. 1 and the learning rule ---------------------------------------------------------------


def test_eq1_hand_computed_and_fixed_step_identity():
    eta = torch.tensor([[0.5, 0.5, 0.25]], dtype=F64)
    last = torch.tensor([[0.0, 1.0, 3.0]], dtype=F64)
    active = torch.tensor([[True, True, False]])
    new_eta, new_last = kp.update_step_sizes(
        eta, last, active, 3.0, torch.tensor([[0.125]], dtype=F64), torch.tensor([[2.0]], dtype=F64)
    )
    # tau = 3 and 2 examples since the last learning step; the inactive weight keeps its state.
    expected = [0.5 * math.exp(-1.5) + 0.125, 0.5 * math.exp(-1.0) + 0.125, 0.25]
    assert_close(new_eta, torch.tensor([expected], dtype=F64), rtol=1e-15, atol=0)
    assert new_last.tolist() == [[3.0, 3.0, 3.0]]

    # Delta = 0 and decay 1 (tau_0 = inf): eta stays the fixed step, bit for bit.
    generator = torch.Generator().manual_seed(1)
    eta = torch.rand(4, 30, generator=generator, dtype=F64)
    last = torch.randint(0, 50, (4, 30), generator=generator).to(F64)
    active = torch.rand(4, 30, generator=generator) < 0.5
    zero, inf = torch.zeros(4, 1, dtype=F64), torch.full((4, 1), math.inf, dtype=F64)
    same, _ = kp.update_step_sizes(eta, last, active, 60.0, zero, inf)
    assert_close(same, eta, **EXACT)


def fixed_step_by_hand(config, task, eta, scenario, checkpoints):
    """The perceptron rule with a constant step, one example at a time, no step-size state."""
    params = task.student.clone()
    n, k = config.n_inputs, config.n_dendrites
    eps_g = []
    for p in range(config.n_examples + 1):
        if p in checkpoints:
            weights = kp.effective_weights(params, task.synapses, scenario)
            fires = respond(weights, task.evaluation, task.threshold).fires
            eps_g.append((fires != task.evaluation_labels).sum().item() / len(fires))
        if p == config.n_examples:
            break
        inputs = SortedInputs(task.train.order[p], task.train.kernel[p])
        response = respond(
            kp.effective_weights(params, task.synapses, scenario), inputs, task.threshold
        )
        error = float(task.train_labels[p]) - float(response.fires)
        c = contributions(inputs, response.k_star)
        g = c if scenario == "synaptic" else (c * task.synapses).view(k, n // k).sum(-1)
        params = params + eta * error * g
        if scenario == "dendritic":
            params = reflect(params, config.d_min, config.d_max)
    return params, eps_g


@pytest.mark.parametrize("scenario", kp.SCENARIOS)
def test_time_dependent_step_with_no_increment_and_no_decay_is_the_fixed_step(scenario):
    """Eq. 1 with Delta = 0 and tau_0 = inf reproduces a plain fixed-step learner exactly."""
    config = TINY
    tasks = [kp.make_task(config, scenario, seed, config.n_test) for seed in (3, 4)]
    batch = kp.stack_tasks(tasks, CPU)
    etas = [0.1, 0.3]
    steps = kp.StepSizes(
        torch.tensor(etas, dtype=F64), torch.zeros(2, dtype=F64), torch.full((2,), math.inf)
    )
    checkpoints = kp.curve_points(config.n_examples, config.n_curve_points)
    result = kp.train_students(batch, torch.arange(2), steps, config, scenario, checkpoints)
    for r, (task, eta) in enumerate(zip(tasks, etas, strict=True)):
        params, eps_g = fixed_step_by_hand(config, task, eta, scenario, checkpoints)
        assert_close(result.params[r], params, **EXACT)
        assert result.eps_g[r].tolist() == eps_g
        assert (result.eta[r] == eta).all()


@pytest.mark.parametrize("scenario", kp.SCENARIOS)
def test_the_teacher_agrees_with_itself(scenario):
    tasks = [kp.make_task(TINY, scenario, seed, TINY.n_test) for seed in range(3)]
    batch = kp.stack_tasks(tasks, CPU)
    task_of = torch.arange(3)
    eps_g = kp.generalisation_error(batch.teacher, batch, task_of, TINY, scenario)
    assert eps_g.tolist() == [0.0, 0.0, 0.0]
    for task in tasks:
        weights = kp.effective_weights(task.teacher, task.synapses, scenario)
        assert torch.equal(respond(weights, task.train, task.threshold).fires, task.train_labels)
        assert 0.3 < task.evaluation_labels.double().mean() < 0.7  # the threshold balances
    # A student that starts elsewhere disagrees with the teacher.
    assert (kp.generalisation_error(batch.student, batch, task_of, TINY, scenario) > 0).all()


# -- the experiment: replicas, determinism, behaviour ----------------------------------------


def test_a_batch_of_seeds_equals_single_seed_runs_exactly():
    """Bit for bit on the CPU: each replica's arithmetic depends on its own row only."""
    seeds = [0, 1, 2]
    batched = kp.run_batch(TINY, seeds, context())
    singles = [kp.run(TINY, seed, context()) for seed in seeds]
    for together, alone in zip(batched, singles, strict=True):
        assert together.metrics == alone.metrics
        assert together.curves == alone.curves
        assert together.curve_x_label == "examples"
    tuned = batched[0].hyperparameters
    assert "eta" in tuned["fixed-synaptic"] and "tau_0" in tuned["accelerated-dendritic"]
    for result in batched[1:]:  # tuning depends on the config only, not on the seed
        assert result.hyperparameters == tuned


def test_same_seed_same_metrics_and_tuning_is_deterministic():
    first = kp.run(TINY, 5, context())
    second = kp.run(TINY, 5, context())
    assert first.metrics == second.metrics and first.curves == second.curves
    assert kp.run(TINY, 6, context()).metrics != first.metrics
    once, again = (kp.tuned_steps(TINY, "synaptic", context()) for _ in range(2))  # two contexts
    assert all(once[m].trials == again[m].trials for m in kp.METHODS)


def test_studies_share_budget_and_draws_and_batch_size_changes_nothing():
    """One study per method and scenario, the same budget; all trials of a study in one replica
    batch give bit for bit what trials run one at a time give (rows never mix)."""
    fixed, accelerated = (kp.step_study(TINY, m, "dendritic") for m in kp.METHODS)
    assert [s.method for s in kp.EXPERIMENT.studies(TINY)][2:] == [
        "fixed-dendritic",
        "accelerated-dendritic",
    ]
    assert (fixed.method, accelerated.method) == ("fixed-dendritic", "accelerated-dendritic")
    assert fixed.trials == accelerated.trials == TINY.tuning_trials == fixed.round_size
    assert fixed.sampler == accelerated.sampler == "random"
    assert list(accelerated.space) == ["eta_0", "delta", "tau_0"]
    tasks = kp.tuning_batch(TINY, "dendritic", CPU)
    objective = kp.validation_error(TINY, "accelerated", "dendritic", lambda: tasks)
    together = tune(accelerated, batch_objective=objective)
    one_by_one = tune(dataclasses.replace(accelerated, round_size=1), batch_objective=objective)
    assert together.trials == one_by_one.trials
    assert [t.params["eta_0"] for t in together.trials] == [
        t.params["eta"] for t in tune(fixed, batch_objective=lambda b: [0.0] * len(b)).trials
    ]  # the same draws in the shared range: a paired search


def test_the_tune_hook_runs_every_study_and_runs_record_the_choice():
    recorder, started = MemoryRecorder(), []
    start = recorder.start_trial
    recorder.start_trial = lambda *args: started.append(args[:2]) or start(*args)
    kp.tune(TINY, RunContext(device=CPU, recorder_for=lambda config: recorder))
    names = [f"{m}-{s}" for s in kp.SCENARIOS for m in kp.METHODS]
    assert sorted(started) == sorted((n, k) for n in names for k in range(TINY.tuning_trials))
    result = kp.run(TINY, 0, RunContext(device=CPU, recorder_for=lambda config: recorder))
    assert len(started) == len(names) * TINY.tuning_trials  # a seed runs no trial again
    assert list(result.hyperparameters) == names
    for name, params in result.hyperparameters.items():
        best = min(recorder.finished_trials(name), key=lambda t: (t.value, t.number))
        assert best.params == params


def test_students_learn_with_both_steps_in_both_scenarios():
    results = kp.run_batch(SMALL, [0, 1], context())
    for scenario in kp.SCENARIOS:
        for method in kp.METHODS:
            key = functools.partial(Key, method, setting=scenario)
            final = sum(r.metrics[key("eps_g_final")] for r in results) / len(results)
            initial = sum(r.metrics[key("eps_g_initial")] for r in results) / len(results)
            best = min(r.metrics[key("eps_g_final")] for r in results)
            assert best < 0.15, (key, best)  # the fixed synaptic step stalls on seed 1 (0.45)
            assert final < initial - 0.1, (key, initial, final)
            curve = results[0].curves[key("eps_g")]
            assert curve["x"][0] == 0 and curve["x"][-1] == SMALL.n_examples


def test_non_finite_weights_raise_divergence_error():
    config = dataclasses.replace(TINY, eta_range=(1e308, 1.5e308))
    with pytest.raises(DivergenceError, match="diverged"):
        kp.run(config, 0, context())


def test_a_diverging_replica_fails_its_seed_only_with_a_hint(monkeypatch):
    def chosen(params):
        return SimpleNamespace(params=params, best=SimpleNamespace(value=0.0))

    huge = {
        "fixed": chosen({"eta": 1.5e308}),
        "accelerated": chosen({"eta_0": 0.1, "delta": 0.0, "tau_0": 10.0}),
    }
    monkeypatch.setattr(kp, "tuned_steps", lambda *args: huge)
    outcomes = kp.run_batch(TINY, [0, 1], context())
    assert all(isinstance(outcome, DivergenceError) for outcome in outcomes)
    assert "fixed-synaptic" in outcomes[0].message and outcomes[0].hint
    with pytest.raises(DivergenceError, match="non-finite"):
        kp.run(TINY, 0, context())


# -- config, quick, verdict --------------------------------------------------------------------


def test_config_is_documented_and_quick_is_shorter():
    specs = config_fields(kp.Config)
    assert [spec.name for spec in specs if not spec.help] == []
    default, quick = kp.Config(), kp.quick(kp.Config())
    assert default.dataset == quick.dataset == "teacher-student"
    assert quick.n_examples < default.n_examples
    assert quick.tuning_trials <= default.tuning_trials
    assert kp.EXPERIMENT.command == "neuroplastic run kanter2020-perceptron --seeds 20"
    with pytest.raises(ValueError, match="multiple"):
        kp.Config(n_inputs=10, n_dendrites=3)
    with pytest.raises(ValueError, match="eta_range"):
        kp.Config(eta_range=(1.0,))
    with pytest.raises(ValueError, match="0 < low < high"):
        kp.Config(tau_0_range=(10.0, 10.0))
    assert kp.curve_points(5000, 12)[:2] == [0, 10] and kp.curve_points(5000, 12)[-1] == 5000
    assert kp.curve_points(5, 4) == [0, 5]


def record(seed, metrics, *, quick=False, config=None, status="finished"):
    return recorded_run(kp.NAME, config or kp.Config(), seed, metrics, id=seed + 1, quick=quick,
                        status=status, curve_x_label="examples")  # fmt: skip


def records(synaptic, dendritic, n=20):
    """n records whose final eps_g are (accelerated, fixed) per scenario, with a small spread."""
    out = []
    for seed in range(n):
        jitter = 0.002 * (seed % 5 - 2)
        metrics = {}
        for scenario, (accelerated, fixed) in (("synaptic", synaptic), ("dendritic", dendritic)):
            metrics[Key("accelerated", "eps_g_final", setting=scenario)] = accelerated + jitter
            metrics[Key("fixed", "eps_g_final", setting=scenario)] = fixed + jitter
        out.append(record(seed, metrics))
    return out


def test_verdict():
    assert kp.verdict([]).status == "not run"
    assert kp.verdict(records((0.05, 0.10), (0.01, 0.02), n=19)).status == "not run"
    holds = kp.verdict(records((0.05, 0.10), (0.01, 0.02)))
    assert holds.status == "holds"
    assert "synaptic: eps_g 0.050" in holds.headline and "n=20" in holds.headline
    assert kp.verdict(records((0.05, 0.10), (0.02, 0.02))).status == "partly holds"
    assert kp.verdict(records((0.10, 0.10), (0.03, 0.02))).status == "does not hold"
    # Quick runs, other configs and unfinished runs are not counted.
    good = records((0.05, 0.10), (0.01, 0.02))
    quick = [dataclasses.replace(r, quick=True) for r in good]
    assert kp.verdict(quick).status == "not run"
    other = [record(r.seed, r.metrics, config=kp.Config(n_examples=10)) for r in good]
    assert kp.verdict(other).status == "not run"


def test_tpe_studies_ask_in_rounds():
    config = dataclasses.replace(TINY, sampler="tpe", tuning_trials=12)
    study = kp.step_study(config, "accelerated", "synaptic")
    assert (study.sampler, study.round_size, study.startup_trials) == ("tpe", 4, 8)
    with pytest.raises(ValueError, match="sampler"):
        kp.Config(sampler="grid")
