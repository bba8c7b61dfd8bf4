"""The tuner: deterministic asks, resumption without repeats, rounds, grids, edges, failures."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiments.base import RunContext
from neuroplastic.tuning import (
    REPORTED,
    Batch,
    Choice,
    IntRange,
    LogUniform,
    MemoryRecorder,
    Study,
    Trial,
    TrialOutcome,
    TrialPruned,
    Uniform,
    ask,
    evaluate,
    on_edge,
    pending_round,
    record_outcome,
    suggest,
    trial_seed,
    tune,
)


def bowl(params, trial) -> float:
    """Smallest at lr = 1e-2, momentum 0.9, any width."""
    return (math.log10(params["lr"]) + 2) ** 2 + (params["momentum"] - 0.9) ** 2


SPACE = {"lr": LogUniform(1e-5, 1.0), "momentum": Uniform(0.0, 0.99)}


def study(**changes) -> Study:
    settings = {"method": "sgd", "space": SPACE, "trials": 12, "seed": 3} | changes
    return Study(**settings)


def test_the_same_study_asks_the_same_trials():
    first, second = tune(study(), bowl), tune(study(), bowl)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.number for t in first.trials] == list(range(12))
    assert first.best == second.best
    other_seed = tune(study(seed=4), bowl)
    assert [t.params for t in other_seed.trials] != [t.params for t in first.trials]


def test_every_method_gets_the_same_draws_and_training_seeds():
    """Paired comparisons: two methods with the same space and seed try the same first round and
    train from the same seeds."""
    a, b = study(method="a"), study(method="b")
    assert suggest(a, [], 0) == suggest(b, [], 0)
    assert trial_seed(a, 5) == trial_seed(b, 5) != trial_seed(a, 6)


def test_a_stopped_study_resumes_without_repeating_and_asks_what_it_would_have():
    uninterrupted = tune(study(), bowl)
    recorder, calls = MemoryRecorder(), []

    def stops_at_seven(params, trial):
        if trial.number == 7:
            raise KeyboardInterrupt
        calls.append(trial.number)
        return bowl(params, trial)

    with pytest.raises(KeyboardInterrupt):
        tune(study(), stops_at_seven, recorder)
    assert calls == list(range(7))
    assert [t.number for t in recorder.finished_trials("sgd")] == list(range(7))

    def counts(params, trial):
        calls.append(trial.number)
        return bowl(params, trial)

    resumed = tune(study(), counts, recorder)
    assert calls == list(range(12))  # 0-6 once, then 7-11: nothing ran twice
    assert [t.params for t in resumed.trials] == [t.params for t in uninterrupted.trials]
    assert resumed.best == uninterrupted.best


def test_a_round_depends_only_on_earlier_rounds():
    """The trials of one round can run in parallel: no trial's params depend on a score of its
    own round."""
    s = study(round_size=4, startup_trials=0)  # TPE models the scores from the first round on
    history = tune(s, bowl).trials
    changed = [t if t.number != 4 else type(t)(4, t.params, t.seed, "finished", -99.0)
               for t in history]  # fmt: skip
    for number in (5, 6, 7):  # same round as trial 4
        assert suggest(s, changed, number) == suggest(s, history, number)
    assert suggest(s, changed, 8) != suggest(s, history, 8)  # the next round sees it


def test_tpe_finds_the_bowl_better_than_its_random_start():
    result = tune(study(trials=32, round_size=4, startup_trials=8), bowl)
    random_start = min(t.value for t in result.trials[:8])
    assert result.best.value < random_start
    assert abs(math.log10(result.params["lr"]) + 2) < 0.5


def test_grid_visits_distinct_points_in_a_seeded_order():
    space = {"lr": Choice((0.1, 0.01, 0.001)), "width": Choice((10, 20))}
    s = Study("m", space, trials=6, sampler="grid", seed=1)
    result = tune(s, lambda p, t: p["lr"] * p["width"])
    points = [tuple(t.params.values()) for t in result.trials]
    assert len(set(points)) == 6
    assert result.params == {"lr": 0.001, "width": 10}
    assert result.on_edge == {"lr": "low", "width": "low"}
    with pytest.raises(ValueError, match="7 trials asked of a grid of 6"):
        Study("m", space, trials=7, sampler="grid")
    with pytest.raises(ValueError, match="every dimension to be a Choice"):
        Study("m", SPACE, trials=2, sampler="grid")


def test_a_best_value_on_the_edge_of_its_range_is_flagged():
    result = tune(study(trials=16), lambda p, t: -math.log10(p["lr"]))  # best: the largest lr
    assert result.on_edge.get("lr") == "high"
    assert "lr at the high edge of its range" in result.describe()
    inside = tune(study(trials=16), bowl)
    assert "lr" not in inside.on_edge
    counts = tune(Study("m", {"n": IntRange(1, 5)}, trials=16), lambda p, t: p["n"])
    assert counts.on_edge == {"n": "low"}
    # an integer range is on its edge near an end too (here 294 of 1-300, log scale)
    near = [Trial(0, {"order": 294}, 0, value=0.1), Trial(1, {"order": 20}, 0, value=0.5)]
    orders = Study("m", {"order": IntRange(1, 300, log=True)}, trials=2)
    assert on_edge(orders, near) == {"order": "high"}
    assert on_edge(orders, near[1:]) == {}


def test_failed_trials_use_their_budget_and_all_failing_is_an_error():
    def diverges_above(params, trial):
        if params["lr"] > 1e-2:
            raise NeuroplasticError("diverged", "lower the learning rate")
        return bowl(params, trial)

    result = tune(study(), diverges_above)
    statuses = [t.status for t in result.trials]
    assert len(statuses) == 12 and "failed" in statuses
    assert result.best.params["lr"] <= 1e-2

    def always(params, trial):
        raise NeuroplasticError("diverged", "lower the learning rate")

    with pytest.raises(NeuroplasticError, match="every one of the 4 trials"):
        tune(study(trials=4), always)


def test_non_finite_scores_never_win_and_outcomes_keep_their_curves():
    def objective(params, trial):
        value = math.nan if trial.number % 2 else bowl(params, trial)
        return TrialOutcome(value, {"val_error": [value]})

    result = tune(study(trials=6), objective)
    assert math.isfinite(result.best.value) and result.best.number % 2 == 0
    assert result.trials[1].curves["val_error"][0] != result.trials[1].curves["val_error"][0]


def test_maximize():
    result = tune(study(direction="maximize", trials=16), lambda p, t: -bowl(p, t))
    assert result.best.value == max(t.value for t in result.trials)


# -- the batched form --------------------------------------------------------------------------


def batched(objective, calls=None):
    """A batch objective that evaluates ``objective`` on each trial (and logs the batches)."""

    def evaluate(batch):
        if calls is not None:
            calls.append([trial.number for _, trial in batch])
        return [objective(params, trial) for params, trial in batch]

    return evaluate


@pytest.mark.parametrize(
    "changes",
    [
        {"round_size": 4, "startup_trials": 4},  # TPE models the first round from round two on
        {"sampler": "random", "round_size": 12},
        {"sampler": "random", "round_size": 5},  # a last round of 2
    ],
)
def test_the_batched_form_equals_the_sequential_form(changes):
    s, calls = study(**changes), []
    sequential = tune(s, bowl)
    together = tune(s, batch_objective=batched(bowl, calls))
    assert together.trials == sequential.trials
    assert together.best == sequential.best and together.on_edge == sequential.on_edge
    size = s.round_size
    assert calls == [list(range(k, min(k + size, 12))) for k in range(0, 12, size)]


@pytest.mark.parametrize("batch", [False, True])
def test_rounds_asked_and_evaluated_elsewhere_equal_tune(batch):
    """What the runner does with an executor (runner.tune_through): ask a round here, evaluate
    it anywhere (``evaluate``), record the outcomes here; round after round, the same trials."""
    s = study(round_size=4, startup_trials=4)
    reference = tune(s, bowl)
    objective = Batch(batched(bowl)) if batch else bowl
    recorder, finished, rounds = MemoryRecorder(), {}, []
    while numbers := pending_round(s, finished):
        rounds.append(numbers)
        asked = ask(s, finished, numbers)
        outcomes = evaluate(objective, asked)  # in a worker, from the round's trials alone
        for trial, outcome in zip(asked, outcomes, strict=True):
            trial_id = recorder.start_trial(s.method, trial.number, trial.params, trial.seed)
            finished[trial.number] = record_outcome(recorder, trial_id, trial, outcome)
    assert rounds == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert [finished[n] for n in range(12)] == reference.trials
    assert recorder.finished_trials(s.method) == reference.trials
    assert pending_round(s, {n: t for n, t in finished.items() if n != 5}) == [5]


def test_evaluate_fails_a_trial_or_a_batch_and_propagates_bugs():
    trials = ask(study(), {}, [0, 1])

    def diverges(params, trial):
        if trial.number == 1:
            raise NeuroplasticError("diverged")
        return 0.5

    first, second = evaluate(diverges, trials)
    assert first == TrialOutcome(0.5) and isinstance(second, NeuroplasticError)

    def batch_diverges(batch):
        raise NeuroplasticError("diverged")

    assert all(isinstance(o, NeuroplasticError) for o in evaluate(Batch(batch_diverges), trials))
    with pytest.raises(ValueError, match="outcomes"):
        evaluate(Batch(lambda batch: [0.1]), trials)
    with pytest.raises(ZeroDivisionError):
        evaluate(lambda params, trial: 1 / 0, trials)


def test_random_search_asks_the_same_whatever_the_round_size():
    """Random draws ignore the history, so one round of every trial (one batch) asks what
    rounds of one would."""
    one_by_one = tune(study(sampler="random", round_size=1), bowl)
    all_at_once = tune(study(sampler="random", round_size=12), batch_objective=batched(bowl))
    assert all_at_once.trials == one_by_one.trials


def test_a_stopped_batched_study_resumes_at_its_unfinished_round():
    s = study(round_size=4, startup_trials=4)
    uninterrupted = tune(s, bowl)
    recorder, calls = MemoryRecorder(), []

    def stops_in_the_second_round(batch):
        if batch[0][1].number == 4:
            raise KeyboardInterrupt
        return batched(bowl, calls)(batch)

    with pytest.raises(KeyboardInterrupt):
        tune(s, batch_objective=stops_in_the_second_round, recorder=recorder)
    assert calls == [[0, 1, 2, 3]]
    assert [t.number for t in recorder.finished_trials("sgd")] == [0, 1, 2, 3]
    assert all(t.status == "finished" for t in recorder.finished_trials("sgd"))
    resumed = tune(s, batch_objective=batched(bowl, calls), recorder=recorder)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # nothing ran twice
    assert resumed.trials == uninterrupted.trials


def test_a_batch_resumes_only_its_unfinished_trials():
    """Trials finished by a sequential run are not run again by a batched one (same record)."""
    s, recorder = study(round_size=4, startup_trials=4), MemoryRecorder()

    def first_two(params, trial):
        if trial.number == 2:
            raise KeyboardInterrupt
        return bowl(params, trial)

    with pytest.raises(KeyboardInterrupt):
        tune(s, first_two, recorder)
    calls = []
    resumed = tune(s, batch_objective=batched(bowl, calls), recorder=recorder)
    assert calls == [[2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert resumed.trials == tune(s, bowl).trials


def test_batched_failures_one_trial_or_the_whole_batch():
    s = study(sampler="random", round_size=6)

    def diverges_above(batch):
        return [
            NeuroplasticError("diverged", "lower it") if p["lr"] > 1e-2 else bowl(p, t)
            for p, t in batch
        ]

    result = tune(s, batch_objective=diverges_above)
    statuses = {t.number: t.status for t in result.trials}
    assert {n for n, st in statuses.items() if st == "failed"} == {
        t.number for t in result.trials if t.params["lr"] > 1e-2
    }
    assert 0 < list(statuses.values()).count("failed") < 12

    def raises_on_the_second_round(batch):
        if batch[0][1].number >= 6:
            raise NeuroplasticError("diverged", "lower it")
        return [bowl(p, t) for p, t in batch]

    result = tune(s, batch_objective=raises_on_the_second_round)
    assert [t.status for t in result.trials] == ["finished"] * 6 + ["failed"] * 6
    with pytest.raises(ValueError, match="returned 1 outcomes for 6 trials"):
        tune(s, batch_objective=lambda batch: [0.0])
    with pytest.raises(TypeError, match="exactly one of"):
        tune(s)
    with pytest.raises(TypeError, match="exactly one of"):
        tune(s, bowl, batch_objective=batched(bowl))


@dataclasses.dataclass(frozen=True)
class SomeConfig:
    a: int = 1


def test_run_context_tunes_a_batched_study_once():
    context, calls = RunContext(device=torch.device("cpu")), []
    s = study(sampler="random", round_size=12)
    first = context.tune(SomeConfig(), s, batch_objective=batched(bowl, calls))
    again = context.tune(SomeConfig(), s, batch_objective=batched(bowl, calls))
    assert first is again and calls == [list(range(12))]
    assert first.trials == tune(s, bowl).trials


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LogUniform(0.0, 1.0), "0 < low < high"),
        (lambda: Uniform(1.0, 1.0), "finite low < high"),
        (lambda: IntRange(0, 4, log=True), "low >= 1"),
        (lambda: Choice(()), "distinct values"),
        (lambda: study(trials=0), "positive integer"),
        (lambda: study(sampler="bayes"), "sampler must be one of"),
        (lambda: study(direction="down"), "direction must be one of"),
        (lambda: study(pruner="hyperband"), "pruner must be one of"),
        (lambda: study(pruner="median", pruning_startup=0), "pruning_startup must be"),
        (lambda: Study("m", {}, trials=2), "search space is empty"),
        (lambda: Study("m", {"lr": (0.1, 1.0)}, trials=2), "not a search-space dimension"),
    ],
)
def test_bad_declarations_are_refused(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_the_training_seed_a_study_declares_is_the_one_recorded_and_handed_on():
    seen = []

    def objective(params, trial):
        seen.append(trial.seed)
        return bowl(params, trial)

    fixed = tune(study(trials=4, training_seed=123), objective)
    assert seen == [123] * 4 and {t.seed for t in fixed.trials} == {123}
    seen.clear()
    by_value = study(trials=4, training_seed=lambda number, params: 7 * number)
    assert [t.seed for t in tune(by_value, objective).trials] == [0, 7, 14, 21] == seen
    assert study(training_seed=5) == study()  # not part of the study's identity


# -- pruning ------------------------------------------------------------------------------------


def descending(params, trial) -> TrialOutcome:
    """Five epochs whose validation error is lr / epoch, each reported (lower lr is better)."""
    errors = []
    for epoch in range(1, 6):
        errors.append(params["lr"] / epoch)
        trial.report(epoch, errors[-1])
    return TrialOutcome(errors[-1], {"val_error": {"x": [1, 2, 3, 4, 5], "y": errors}})


def pruned_study(**changes) -> Study:
    settings = {
        "method": "m",
        "space": {"lr": LogUniform(1e-3, 1.0)},
        "trials": 16,
        "sampler": "random",
        "round_size": 4,
        "pruner": "median",
    } | changes
    return Study(**settings)  # fmt: skip


def test_the_median_pruner_stops_trials_worse_than_earlier_rounds_at_the_same_step():
    s = pruned_study()
    result = tune(s, descending)
    unpruned = tune(dataclasses.replace(s, pruner=None), descending)
    assert [t.params for t in result.trials] == [t.params for t in unpruned.trials]  # random
    first_round = result.trials[:4]
    assert all(t.status == "finished" for t in first_round)  # nothing to compare with yet
    for trial in result.trials[4:]:
        reference = [t for t in result.trials[: trial.number - trial.number % 4]
                     if t.status == "finished"]  # fmt: skip
        # descending() ranks trials alike at every step: the median decides at step 2 (warmup 1)
        median = sorted(t.params["lr"] for t in reference)
        middle = len(median) // 2
        cut = median[middle] if len(median) % 2 else (median[middle - 1] + median[middle]) / 2
        assert (trial.status == "failed") == (trial.params["lr"] > cut), trial
    assert any(t.status == "failed" for t in result.trials)
    assert result.best == unpruned.best  # the best trial is never pruned
    assert result.trials[0].curves[REPORTED] == {
        "x": [1, 2, 3, 4, 5], "y": result.trials[0].curves["val_error"]["y"]
    }  # fmt: skip


def test_pruned_trials_are_recorded_failed_with_the_reason():
    recorder = MemoryRecorder()
    messages = []
    recorder.mark_trial = lambda trial_id, status, error=None, mark=recorder.mark_trial: (
        messages.append((status, error)) or mark(trial_id, status, error)
    )
    tune(pruned_study(), descending, recorder)
    assert messages and all(status == "failed" for status, _ in messages)
    assert all("pruned after step 2" in error for _, error in messages)


def test_pruning_is_the_same_in_rounds_evaluated_elsewhere_and_in_batches():
    s = pruned_study()
    reference = tune(s, descending)
    finished = {}
    recorder = MemoryRecorder()
    while numbers := pending_round(s, finished):
        asked = ask(s, finished, numbers)
        shipped = [dataclasses.replace(t, reported=[]) for t in asked]  # a worker's copies
        for trial, outcome in zip(asked, evaluate(descending, shipped), strict=True):
            trial_id = recorder.start_trial(s.method, trial.number, trial.params, trial.seed)
            finished[trial.number] = record_outcome(recorder, trial_id, trial, outcome)
    assert [finished[n] for n in range(16)] == reference.trials

    def each(pairs):
        outcomes = []
        for params, trial in pairs:
            try:
                outcomes.append(descending(params, trial))
            except TrialPruned as error:
                outcomes.append(error)
        return outcomes

    assert tune(s, batch_objective=each).trials == reference.trials


def test_objectives_that_never_report_are_never_pruned():
    result = tune(pruned_study(), lambda params, trial: params["lr"])
    assert all(t.status == "finished" and REPORTED not in t.curves for t in result.trials)
