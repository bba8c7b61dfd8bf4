"""jaeger2004-mackey-glass: an echo state network predicts a chaotic series far ahead, with only its
readout trained.

Sheet: shared/papers/local-rules-and-reservoirs.md (reservoir computing). Jaeger & Haas (2004,
Science 304:78) trained only the linear readout of a fixed random recurrent network on the
Mackey-Glass series (tau 17) and, run freely on its own predictions, it predicted 84 steps ahead
with an error 2,400 times below earlier methods (the sheet's figure).

Protocol (ours; see docs/experiments/jaeger2004-mackey-glass.md):

- One series, ``mackey_glass`` (tau 17, step 1, after a 1,000-step transient), centred by
  subtracting 1; the same for every seed (the seed draws the reservoir).
- Training: teacher forcing on steps ``[0, train_steps)``, ``washout`` steps dropped; the readout
  ``[x_t, 1] -> u_{t+1}`` by ridge regression.
- Free-running prediction from a start ``k``: the reservoir driven by the true series up to
  ``u_k``, then fed its own predictions. NRMSE at horizon ``h`` over the starts: the root mean
  squared error of ``p_{k+h}`` divided by the series' standard deviation.
- Validation starts (for tuning) lie after the training steps; test starts after those.
- Methods: ``esn`` (leaky tanh reservoir of ``units``; spectral radius, input scaling, leak, bias
  scaling and ridge tuned) and ``ar``, a linear autoregressive model on the last ``p`` values
  (order and ridge tuned): the same data, the same number of trials, the same score (log10
  NRMSE at ``horizon`` on the validation starts).

Verdict (fixed before the runs; at least ``MIN_SEEDS`` seeds): with ``E`` the ESN's test NRMSE at
84 steps (mean of log10 over seeds) and ``A`` the AR model's:

- *holds*: ``E`` below ``ACCURATE`` (1e-2) and at least one decade below ``A``;
- *partly holds*: one of the two;
- *does not hold*: neither.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neuroplastic.experiments.base import (
    Experiment,
    ReportTable,
    RunContext,
    RunResult,
    Verdict,
    default_runs,
    finished_by_config,
)
from neuroplastic.models.reservoir import EchoStateNetwork, ESNParameters, fit_ridge, readout
from neuroplastic.results import Key
from neuroplastic.seeding import derive_seed, generator
from neuroplastic.stats import mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.tasks.mackey_glass import mackey_glass
from neuroplastic.tuning import IntRange, LogUniform, Objective, Study, Trial, TrialOutcome, Uniform

NAME = "jaeger2004-mackey-glass"
MIN_SEEDS = 5
HORIZON = 84
ACCURATE = 1e-2
"""The ESN's NRMSE at 84 steps must be below this to count as predicting far ahead."""
METHODS = ("esn", "ar")


@dataclass(frozen=True)
class Config:
    dataset: str = "mackey-glass"
    """The Mackey-Glass series (``tasks.mackey_glass``, tau 17), generated, no files."""
    units: int = 500
    """Reservoir size."""
    connectivity: float = 0.02
    """Share of non-zero recurrent weights."""
    train_steps: int = 3000
    """Teacher-forced training steps."""
    washout: int = 100
    """Initial training steps whose states are dropped."""
    validation_starts: int = 20
    """Free-running starts scored while tuning."""
    test_starts: int = 50
    """Free-running starts of the final score."""
    max_horizon: int = 200
    """Longest free-running prediction (the NRMSE curve's end)."""
    horizon: int = HORIZON
    """The horizon tuning scores and the verdict reads."""
    trials: int = 24
    """Tuning trials per method."""
    tuning_seed: int = 0
    """Seed of the tuner (the trials' reservoirs come from their own seeds)."""
    spectral_radius: tuple[float, float] = (0.1, 1.5)
    """Range of the ESN's spectral radius."""
    input_scaling: tuple[float, float] = (0.01, 10.0)
    """Log range of the ESN's input scaling."""
    leak: tuple[float, float] = (0.05, 1.0)
    """Range of the ESN's leak rate."""
    bias_scaling: tuple[float, float] = (0.0, 2.0)
    """Range of the ESN's bias scaling."""
    ridge: tuple[float, float] = (1e-12, 1e-1)
    """Log range of the ridge penalty (both methods)."""
    ar_order: tuple[int, int] = (1, 2000)
    """Range of the AR model's order (log-uniform; a first run over 1-300 chose 294)."""

    def __post_init__(self) -> None:
        for name in ("units", "train_steps", "validation_starts", "test_starts", "max_horizon",
                     "trials"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.horizon <= self.max_horizon:
            raise ValueError(f"horizon must lie in [1, max_horizon], got {self.horizon}")
        if self.washout >= self.train_steps:
            raise ValueError("washout must be shorter than train_steps")
        if self.ar_order[1] >= self.train_steps - self.washout:
            raise ValueError("the AR order must be shorter than the training steps")


def quick(config: Config) -> Config:
    """A small reservoir, four trials, fewer starts."""
    return dataclasses.replace(config, units=100, connectivity=0.1, trials=4, validation_starts=8,
                               test_starts=10, max_horizon=100)  # fmt: skip


def series(config: Config) -> torch.Tensor:
    """The centred series, long enough for training, validation and test starts."""
    return mackey_glass(starts(config, "test")[-1] + config.max_horizon + 2) - 1.0


def starts(config: Config, part: str) -> list[int]:
    """Validation or test start points: every 20 steps after the training part."""
    first = config.train_steps + config.max_horizon
    validation = [first + 20 * i for i in range(config.validation_starts)]
    if part == "validation":
        return validation
    after = validation[-1] + config.max_horizon + 20
    return [after + 20 * i for i in range(config.test_starts)]


def nrmse_curve(predictions: torch.Tensor, truth: torch.Tensor, scale: float) -> list[float]:
    """NRMSE at each horizon: predictions and truth ``(starts, horizons)``."""
    return (((predictions - truth) ** 2).mean(0).sqrt() / scale).tolist()


def esn_predictions(config: Config, params: dict, u: torch.Tensor, seed: int,
                    at: Sequence[int]) -> torch.Tensor:  # fmt: skip
    """Free-running ESN predictions ``(starts, max_horizon)`` from the starts ``at``."""
    esn = EchoStateNetwork(
        1, ESNParameters(config.units, params["spectral_radius"], params["input_scaling"],
                         params["leak"], config.connectivity, params["bias_scaling"]),
        generator=generator(NAME, "reservoir", seed), dtype=torch.float64,
    )  # fmt: skip
    states = esn.run(u[:, None, None])[:, 0]  # (T, units): the state after input u_t
    t = slice(config.washout, config.train_steps - 1)
    w_out = fit_ridge(states[t], u[config.washout + 1 : config.train_steps, None], params["ridge"])
    state = states[list(at)][None]  # (1, starts, units)
    out = []
    prediction = readout(state, w_out)
    for _ in range(config.max_horizon):
        out.append(prediction[0, :, 0])
        state = esn.step(state, prediction)
        prediction = readout(state, w_out)
    return torch.stack(out, 1)


def ar_predictions(config: Config, params: dict, u: torch.Tensor,
                   at: Sequence[int]) -> torch.Tensor:  # fmt: skip
    """Free-running AR(p) predictions ``(starts, max_horizon)`` from the starts ``at``."""
    p = int(params["order"])
    begin = max(config.washout, p - 1)
    rows = torch.stack([u[t - p + 1 : t + 1] for t in range(begin, config.train_steps - 1)])
    w = fit_ridge(rows, u[begin + 1 : config.train_steps, None], params["ridge"])
    window = torch.stack([u[k - p + 1 : k + 1] for k in at])
    out = []
    for _ in range(config.max_horizon):
        prediction = readout(window, w)[:, 0]
        out.append(prediction)
        window = torch.cat([window[:, 1:], prediction[:, None]], 1)
    return torch.stack(out, 1)


def predictions(config: Config, method: str, params: dict, u: torch.Tensor, seed: int,
                at: Sequence[int]) -> torch.Tensor:  # fmt: skip
    if method == "esn":
        return esn_predictions(config, params, u, seed, at)
    return ar_predictions(config, params, u, at)


def truth(u: torch.Tensor, at: Sequence[int], horizon: int) -> torch.Tensor:
    return torch.stack([u[k + 1 : k + 1 + horizon] for k in at])


def search_space(config: Config, method: str) -> dict:
    if method == "esn":
        return {
            "spectral_radius": Uniform(*config.spectral_radius),
            "input_scaling": LogUniform(*config.input_scaling),
            "leak": Uniform(*config.leak),
            "bias_scaling": Uniform(*config.bias_scaling),
            "ridge": LogUniform(*config.ridge),
        }
    return {"order": IntRange(*config.ar_order, log=True), "ridge": LogUniform(*config.ridge)}


def study(config: Config, method: str) -> Study:
    return Study(method, search_space(config, method), trials=config.trials,
                 seed=config.tuning_seed, round_size=4, startup_trials=8)  # fmt: skip


def studies(config: Config) -> list[Study]:
    return [study(config, m) for m in METHODS]


def score(curve: Sequence[float], horizon: int) -> float:
    """log10 NRMSE at ``horizon``; a diverged prediction scores 10 (NRMSE 1e10)."""
    value = curve[horizon - 1]
    return min(math.log10(value), 10.0) if math.isfinite(value) and value > 0 else 10.0


def validation_score(config: Config, method: str) -> Objective:
    u = series(config)
    at = starts(config, "validation")
    scale = float(u.std())

    def objective(params: dict, trial: Trial) -> TrialOutcome:
        curve = nrmse_curve(predictions(config, method, params, u, trial.seed, at),
                            truth(u, at, config.max_horizon), scale)  # fmt: skip
        return TrialOutcome(score(curve, config.horizon),
                            {"validation_nrmse": {"x": list(range(1, len(curve) + 1)),
                                                  "y": curve}})  # fmt: skip

    return objective


def objective(config: Config, name: str, context: RunContext) -> Objective:
    if name not in METHODS:
        raise KeyError(f"{NAME} has no study {name!r}")
    return validation_score(config, name)


def tune(config: Config, context: RunContext) -> None:
    for method in METHODS:
        context.tune(config, study(config, method), validation_score(config, method))


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    """Each method with its tuned values; the ESN's reservoir drawn from ``seed``."""
    u = series(config)
    at = starts(config, "test")
    scale = float(u.std())
    metrics, curves, chosen = {}, {}, {}
    for method in METHODS:
        params = dict(context.tune(config, study(config, method),
                                   validation_score(config, method)).params)  # fmt: skip
        chosen[method] = params
        # the reservoir of a final run comes from the run's seed, not the tuning trials'
        curve = nrmse_curve(predictions(config, method, params, u, derive_seed(NAME, seed), at),
                            truth(u, at, config.max_horizon), scale)  # fmt: skip
        curves[Key(method, "test_nrmse")] = {"x": list(range(1, len(curve) + 1)), "y": curve}
        for h in sorted({1, 17, config.horizon, config.max_horizon}):
            metrics[Key(method, "test_nrmse", size=h)] = curve[h - 1]
    return RunResult(metrics, curves, "horizon (steps)", chosen)


def _log_nrmse(runs: Sequence[RunRecord], method: str, horizon: int = HORIZON) -> list[float]:
    values = [r.metrics[Key(method, "test_nrmse", size=horizon)] for r in runs]
    return [math.log10(v) if v > 0 and math.isfinite(v) else 10.0 for v in values]


def verdict(records: Sequence[RunRecord]) -> Verdict:
    runs = default_runs(records, Config)
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")
    esn, ar = mean_ci(_log_nrmse(runs, "esn")), mean_ci(_log_nrmse(runs, "ar"))
    accurate = esn.mean < math.log10(ACCURATE)
    ahead = esn.mean <= ar.mean - 1.0
    status = "holds" if accurate and ahead else "partly holds" if accurate or ahead else (
        "does not hold")
    headline = (
        f"NRMSE at {HORIZON} steps: ESN 10^{esn.mean:.2f} (± {esn.ci95:.2f} decades), AR "
        f"10^{ar.mean:.2f}; ESN below 1e-2: {'yes' if accurate else 'no'}; a decade below AR: "
        f"{'yes' if ahead else 'no'} (n={len(runs)} reservoirs, {Config().units} units, "
        f"{Config().trials} trials per method)"
    )
    return Verdict(status, headline)


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    out = []
    for digest, runs in finished_by_config(records).items():
        config = runs[0].config
        horizons = sorted({1, 17, config["horizon"], config["max_horizon"]})
        rows = []
        for method in METHODS:
            cells = []
            for h in horizons:
                logs = _log_nrmse(runs, method, h)
                cells.append(f"10^{mean_ci(logs).mean:.2f}")
            chosen = runs[0].hyperparameters.get(method, {})
            rows.append([method, *cells, ", ".join(f"{k} {v:.3g}" for k, v in chosen.items())])
        kind = "quick" if runs[0].quick else "full"
        out.append(ReportTable(
            f"Test NRMSE by horizon (mean of log10 over seeds), {kind} config {digest[:8]}, "
            f"n={len(runs)}", ["method", *[f"h={h}" for h in horizons], "tuned"], rows,
        ))  # fmt: skip
    return out


EXPERIMENT = Experiment(
    name=NAME,
    paper="Jaeger & Haas 2004, Science 304:78 (echo state networks)",
    claim=(
        "A fixed random reservoir with only its linear readout trained predicts the chaotic "
        "Mackey-Glass series (tau 17) 84 steps ahead, far better than earlier methods."
    ),
    config_cls=Config,
    run=run,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS}",
    tables=tables,
    studies=studies,
    tune=tune,
    objective=objective,
)
