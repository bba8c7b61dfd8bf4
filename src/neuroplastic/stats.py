"""Summaries over seeds: mean with a 95 % Student-t confidence interval."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from neuroplastic.results import Key


@dataclass(frozen=True)
class Summary:
    """Mean of ``n`` values and the half-width of its confidence interval (nan when n < 2)."""

    mean: float
    ci95: float
    n: int

    def format(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        if self.n == 0:
            return "n/a"
        spread = "" if math.isnan(self.ci95) else f" ± {self.ci95 * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f}{spread}{unit} (n={self.n})"


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean and Student-t half-width ``t_{(1+c)/2, n-1} * s / sqrt(n)`` of finite values.

    Non-finite values (a diverged seed) are not silently averaged: they make the mean nan.
    """
    array = np.asarray(list(values), dtype=float)
    n = int(array.size)
    if n == 0:
        return Summary(float("nan"), float("nan"), 0)
    mean = float(array.mean())
    if n < 2 or not np.isfinite(array).all():
        return Summary(mean, float("nan"), n)
    if (array == array[0]).all():  # e.g. a tuned setting shared by all seeds: no rounding noise
        return Summary(float(array[0]), 0.0, n)
    sem = float(array.std(ddof=1)) / math.sqrt(n)
    t_quantile = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    return Summary(mean, t_quantile * sem, n)


@dataclass(frozen=True)
class SummaryRow:
    """One measured quantity over seeds."""

    key: Key
    summary: Summary

    @property
    def method(self) -> str:
        return self.key.method

    @property
    def metric(self) -> str:
        return self.key.metric

    def to_dict(self) -> dict:
        return {
            **self.key.to_dict(),
            "mean": self.summary.mean,
            "ci95": self.summary.ci95,
            "n": self.summary.n,
        }


def summarise(metrics_per_seed: Sequence[Mapping[Key, float]]) -> list[SummaryRow]:
    """One row per key over the seeds that reported it, in first-seen order."""
    keys: dict[Key, None] = {}
    for metrics in metrics_per_seed:
        keys.update(dict.fromkeys(metrics))
    rows = []
    for key in keys:
        values = [metrics[key] for metrics in metrics_per_seed if key in metrics]
        rows.append(SummaryRow(key, mean_ci(values)))
    return rows
