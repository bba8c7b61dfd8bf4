"""Mean and 95 % confidence interval over seeds."""

import math

import pytest

from neuroplastic.results import Key
from neuroplastic.stats import mean_ci, summarise


def test_student_t_interval_matches_the_textbook_value():
    # n = 3, s = 1: half-width = t_{0.975, 2} / sqrt(3) = 4.302653 / 1.732051
    summary = mean_ci([1.0, 2.0, 3.0])
    assert summary.mean == 2.0
    assert summary.ci95 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert summary.n == 3


def test_identical_values_have_an_exact_zero_interval():
    summary = mean_ci([0.1] * 7)  # np.mean would give 0.09999999999999999
    assert summary.mean == 0.1 and summary.ci95 == 0.0


def test_degenerate_inputs():
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    single = mean_ci([0.5])
    assert single.mean == 0.5 and math.isnan(single.ci95)
    diverged = mean_ci([0.1, float("nan")])
    assert math.isnan(diverged.mean)  # a diverged seed is never averaged away


def test_summarise_groups_by_key():
    small, large = Key("bp", "err", size=1), Key("bp", "err", size=2)
    rows = summarise([{small: 0.1, large: 0.2}, {small: 0.3}])
    assert [(r.key, r.summary.n) for r in rows] == [(small, 2), (large, 1)]
    assert rows[0].summary.mean == pytest.approx(0.2)
    assert rows[0].to_dict() == {
        "method": "bp", "metric": "err", "size": 1, "mean": rows[0].summary.mean,
        "ci95": rows[0].summary.ci95, "n": 2,
    }  # fmt: skip
