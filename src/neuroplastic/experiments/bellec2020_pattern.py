"""bellec2020-pattern: e-prop against BPTT on pattern generation (Bellec et al. 2020, Fig. 2).

Claim tested: a recurrent network of 100 LIF neurons driven by a frozen Poisson input pattern
learns to produce a target curve (a sum of four sines over 1 s) with e-prop nearly as well as with
BPTT, random feedback included. The authors' tutorial trains 2,000 iterations of batch 1.

Set-up (the authors' pattern-generation tutorial, ``tasks.pattern``): 100 inputs at 50 Hz, 100 LIF
neurons, tau_m = tau_out = 30 ms, no refractoriness, one leaky readout; loss = 1/2 sum_t (y - y*)^2
plus the rate penalty 1/2 * 300 * sum_j (rate_j - 10 Hz)^2 (here ``regularisation`` 150 in
``EProp``'s form ``reg sum_j (rate_j - f0)^2``). The authors scale the input current by
(1 - alpha) with threshold 0.03; our step does not scale it, so the same dynamics need the
threshold 0.03 / (1 - alpha) = 0.915 (the pseudo-derivative is unchanged, it is normalised by the
threshold).

Methods: ``bptt`` (differentiating the reset, as the authors' baseline), ``eprop-symmetric``,
``eprop-random``, ``eprop-adaptive``. Every method learns with Adam at a learning rate tuned by the
one tuner, the same number of trials each, every trial on its own pattern instances (drawn from
tuning seeds, never those of the final runs). Each seed then draws one instance (inputs and target)
and trains every method on it from the same network; the score is the normalised mean squared
error ``sum (y - y*)^2 / sum (y* - mean y*)^2`` after ``iterations``.

Verdict criterion (fixed before any run): over >= 5 seeds of the default config,
1. the pattern is learnt: BPTT and symmetric e-prop each average a normalised MSE <= 0.2, and
2. e-prop is close: for symmetric and for random e-prop the paired difference (e-prop - BPTT,
   same seed) of the normalised MSE has an upper 95 % bound <= 0.1.
Holds when all three checks pass, partly holds when some do, does not hold when none do.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neuroplastic.experiments import eprop_protocol as protocol
from neuroplastic.experiments.base import (
    Experiment,
    ReportTable,
    RunContext,
    RunResult,
    Verdict,
    finished_by_config,
)
from neuroplastic.experiments.eprop_protocol import (
    METHODS,
    MIN_SEEDS,
    check_finite,
    optimizer_for,
    rate_penalty,
    study,
)
from neuroplastic.models.rsnn import RecurrentLIF
from neuroplastic.results import Key
from neuroplastic.seeding import generator
from neuroplastic.stats import mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.tasks.pattern import PatternTask, normalised_mse
from neuroplastic.tuning import Objective, Trial, TrialOutcome

NAME = "bellec2020-pattern"
LEARNT = 0.2
CLOSE = 0.1
TASK = PatternTask()


@dataclass(frozen=True)
class Config:
    dataset: str = "pattern-generation"
    """Generated instances (``tasks.pattern``; no files): one per seed, others for tuning."""
    methods: tuple[str, ...] = METHODS
    """Learning rules compared: ``bptt`` and e-prop with ``symmetric``, ``random`` or ``adaptive``
    feedback."""
    n_rec: int = 100
    """LIF neurons."""
    tau: float = 30.0
    """Membrane and readout time constant (ms)."""
    v_th: float = 0.915
    """Threshold: the authors' 0.03 for a current scaled by (1 - alpha) (module docstring)."""
    iterations: int = 1000
    """Adam steps (each one trial of the frozen pattern) per final run."""
    eval_every: int = 50
    """Iterations between two measurements of the normalised MSE (the curve)."""
    regularisation: float = 150.0
    """Rate penalty in ``EProp``'s form (the authors' 300 with their factor 1/2)."""
    target_rate: float = 0.01
    """The penalty's target in spikes per ms (10 Hz)."""
    lr: tuple[float, float] = (1e-5, 1e-1)
    """Adam learning-rate range every method tunes in (log-uniform)."""
    feedback_decay: tuple[float, float] = (1e-3, 10.0)
    """Weight-decay range of the adaptive variant's readout and feedback (Kolen-Pollack)."""
    trials: int = 8
    """Tuning trials per method (the same for all), each on its own pattern instance."""
    tune_iterations: int = 500
    """Adam steps per tuning trial."""
    tuning_seed: int = 0
    """Seed of the tuner's sampler."""

    def __post_init__(self) -> None:
        counts = ("n_rec", "iterations", "eval_every", "trials", "tune_iterations")
        protocol.check_config(self, counts)


def quick(config: Config) -> Config:
    """100 steps and two short tuning trials: a smoke test that still learns visibly."""
    return dataclasses.replace(
        config, iterations=min(config.iterations, 100), eval_every=20, trials=2, tune_iterations=20
    )


def build(config: Config, method: str, seed: int, device: torch.device):
    """The network from ``seed`` (the same for every method) and, for e-prop, the rule."""
    model = RecurrentLIF(
        TASK.n_inputs, config.n_rec, 1, tau_m=config.tau, tau_out=config.tau, v_th=config.v_th,
        generator=generator(NAME, "init", seed), detach_reset=method != "bptt",
    ).to(device)  # fmt: skip
    return model, protocol.rule_for(model, method, NAME, seed, config, "mse", TASK.steps)


def train(
    config: Config, method: str, params: dict, seed: int, instance: int, iterations: int,
    device: torch.device, progress=None, report=None,
) -> dict[str, list[float]]:  # fmt: skip
    """Train ``method`` from network ``seed`` on pattern ``instance`` (a seed too) for
    ``iterations`` Adam steps; the normalised MSE every ``eval_every`` steps."""
    model, rule = build(config, method, seed, device)
    optimizer = optimizer_for(model, rule, params)
    x, target = (t.to(device) for t in TASK.sample(generator(NAME, "pattern", instance)))
    curves: dict[str, list[float]] = {"iteration": [], "nmse": []}
    for iteration in range(1, iterations + 1):
        optimizer.zero_grad(set_to_none=True)
        if rule is None:
            y, z = model(x)
            loss = 0.5 * (y - target).pow(2).sum() + rate_penalty(z, config)
            loss.backward()
        else:
            loss = rule.backward(x, target)
        check_finite(loss, method, iteration, seed, params)
        optimizer.step()
        if progress is not None:
            progress.advance(loss=loss.item())
        if iteration % config.eval_every == 0 or iteration == iterations:
            with torch.no_grad():
                y, _ = model(x)
            curves["iteration"].append(iteration)
            curves["nmse"].append(normalised_mse(y, target))
            if report is not None:
                report(iteration // config.eval_every, curves["nmse"][-1])
    return curves


TUNING_INSTANCES = 1_000_000
"""Tuning trials draw their pattern instances from here on, never a final run's (a seed's)."""


def objective(config: Config, method: str, context: RunContext) -> Objective:
    """A trial: ``tune_iterations`` steps on an instance of its own, scored by the final
    normalised MSE (reported along the way for the pruner)."""

    def evaluate(params: dict, trial: Trial) -> TrialOutcome:
        curves = train(config, method, params, trial.seed, TUNING_INSTANCES + trial.seed,
                       config.tune_iterations, context.device, report=trial.report)  # fmt: skip
        values = curves["nmse"]
        value = values[-1] if math.isfinite(values[-1]) else math.inf
        return TrialOutcome(value, {"nmse": {"x": curves["iteration"], "y": values}})

    return evaluate


def tune(config: Config, context: RunContext) -> None:
    for method in config.methods:
        context.tune(config, study(config, method), objective(config, method, context))


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    """Every method on the pattern instance of ``seed``, from the network of ``seed``."""
    metrics: dict[Key, float] = {}
    curves: dict[Key, dict[str, list[float]]] = {}
    chosen: dict[str, dict] = {}
    context.progress.start(len(config.methods) * config.iterations, f"{NAME} seed {seed}")
    for method in config.methods:
        params = dict(context.tune(config, study(config, method),
                                   objective(config, method, context)).params)  # fmt: skip
        chosen[method] = params
        result = train(config, method, params, seed, seed, config.iterations, context.device,
                       progress=context.progress)  # fmt: skip
        curves[Key(method, "nmse")] = {"x": result["iteration"], "y": result["nmse"]}
        metrics[Key(method, "nmse")] = result["nmse"][-1]
    return RunResult(metrics, curves, "iteration", chosen)


def show(value: float, signed: bool = False) -> str:
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def verdict(records: Sequence[RunRecord]) -> Verdict:
    """The criterion of the module docstring, on the default config's runs."""
    return protocol.verdict(records, Config, "nmse", LEARNT, CLOSE, show, "pattern")


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    """Normalised MSE and the tuned rate, per config."""
    result = []
    for digest, runs in finished_by_config(records).items():
        methods = runs[0].config.get("methods", METHODS)
        rows = []
        for method in methods:
            nmse = mean_ci([r.metrics[Key(method, "nmse")] for r in runs])
            gap = ""
            if method != "bptt" and "bptt" in methods:
                difference = protocol.paired_gap(runs, method, "nmse")
                gap = f"{difference.mean:+.3f}"
                if len(runs) > 1:  # one seed has no interval
                    gap += f" ± {difference.ci95:.3f}"
            tuned = runs[0].hyperparameters.get(method, {})
            rows.append([method, f"{nmse.mean:.3f} ± {nmse.ci95:.3f}", gap,
                         ", ".join(f"{k}={v:.3g}" for k, v in tuned.items())])  # fmt: skip
        kind = "quick" if runs[0].quick else "full"
        result.append(ReportTable(
            f"Pattern generation, {kind} config {digest[:8]}, n={len(runs)} seeds",
            ["method", "normalised MSE (mean ± 95 % CI)", "- BPTT (paired)", "tuned"], rows,
        ))  # fmt: skip
    return result


EXPERIMENT = Experiment(
    name=NAME,
    paper="Bellec et al. 2020, Nat. Commun. 11:3625 (e-prop), Fig. 2",
    claim=(
        "e-prop, with symmetric or random feedback, trains a LIF network to generate a target "
        "pattern nearly as well as BPTT."
    ),
    config_cls=Config,
    run=run,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS} --workers 2",
    tables=tables,
    studies=protocol.studies,
    tune=tune,
    objective=objective,
)
