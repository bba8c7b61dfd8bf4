"""Reports show the tuning trials of each configuration, and flag best values on an edge."""

from __future__ import annotations

import math

import torch

import neuroplastic.experiments
from neuroplastic.experiments import perturbation_scaling as ps
from neuroplastic.report import experiment_report, study_summaries, tuning_rows
from neuroplastic.runner import run_experiment
from neuroplastic.store import Store

TINY = ps.Config(
    widths=(4, 8), input_sides=(7,), input_sweep_width=4, batch_size=20, variance_draws=8,
    train_widths=(4,), budget=40, curve_points=4, n_train_eval=200, lrs=(1e-2, 1e-1, 1.0),
    speed_inputs=(4, 8), speed_outputs=(2, 3), speed_lrs=(0.125, 0.03125), speed_max_passes=8000,
)  # fmt: skip


def test_the_report_lists_what_was_tried_and_flags_edges(tmp_path, monkeypatch):
    monkeypatch.setitem(neuroplastic.experiments.EXPERIMENTS, ps.NAME, ps.EXPERIMENT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Store(tmp_path / "runs.db") as store:
            run_experiment(ps.EXPERIMENT, TINY, [0], store, device="cpu")
            records, trials = store.runs(ps.NAME), store.trials(ps.NAME)
    finally:
        torch.set_num_threads(threads)
    every = study_summaries(ps.EXPERIMENT, records[0].config, trials)
    summaries = [s for s in every if "@w" in s.name]  # the learning-rate studies of (b)
    assert [s.name for s in summaries] == [ps.study_name(m, 4) for m in ps.METHODS]
    assert len(every) == len(summaries) + len(ps.speed_cells(TINY))
    for summary in summaries:
        assert summary.study == ps.learning_rate_study(TINY, summary.name.split("@")[0], 4)
        best = summary.best()
        finite = [t.value for t in summary.trials if t.value is not None and math.isfinite(t.value)]
        assert best.value == min(finite)
        assert best.params == records[0].hyperparameters[summary.name]
        expected = {"lr": "low"} if best.params["lr"] == 1e-2 else {}
        expected = {"lr": "high"} if best.params["lr"] == 1.0 else expected
        assert summary.edges() == expected
    rows = tuning_rows(summaries)
    assert [row[0] for row in rows] == [s.name for s in summaries]
    # a config recorded under a key the experiment has since dropped: trials, no declarations
    older = study_summaries(ps.EXPERIMENT, {**records[0].config, "dropped_key": 1}, trials)
    assert [s.name for s in older] == [s.name for s in every]
    assert all(s.study is None and s.trials for s in older)
    path = experiment_report(ps.EXPERIMENT, records, tmp_path / "out", "md", trials)
    text = path.read_text()
    assert "### Tuning: what was tried" in text
    assert (tmp_path / "out" / f"{ps.NAME}-{records[0].config_hash}-tuning.png").exists()
    html = experiment_report(ps.EXPERIMENT, records, tmp_path / "out", "html", trials)
    assert "Tuning: what was tried" in html.read_text()
    plain = experiment_report(ps.EXPERIMENT, records, tmp_path / "plain", "md")
    assert "Tuning" not in plain.read_text()  # no trials given: no section

    # what `neuroplastic run` prints after the results: the chosen values and their edges
    from neuroplastic.cli import edge_flags, hyperparameter_table

    edges = edge_flags(ps.EXPERIMENT, records, trials)
    assert edges == {s.name: s.edges() for s in every if s.edges()}
    table = hyperparameter_table(records, edges)
    assert table.row_count == len(ps.METHODS) + len(ps.speed_cells(TINY))
