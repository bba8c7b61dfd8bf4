"""sussillo2009-force: FORCE learning tames a chaotic network into producing a periodic target, and
the reward-modulated exploratory Hebbian rule learns the same readout from a scalar reward.

Sheet: shared/papers/local-rules-and-reservoirs.md. Sussillo & Abbott (2009, Neuron 63:544): a
rate network with gain ``g = 1.5`` is chaotic; its readout ``z = w . r`` is fed back into the
network, and recursive least squares (RLS) on ``w`` keeps ``z`` close to the target from the
first steps, so the fed-back signal suppresses the chaos and the network settles into producing
the target on its own once learning stops (their Fig. 2: a sum of sines). Hoerzer, Legenstein &
Maass (2014) learn such readouts from a reward alone (``plasticity.exploratory_hebbian``).

Protocol (ours where the papers' exact values are not in the sheet; see
docs/experiments/sussillo2009-force.md):

- Network ``models.reservoir.ForceNetwork``: N = 1000, p = 0.1, g = 1.5, tau 10 ms, Euler steps
  of 1 ms; feedback weights uniform on [-1, 1]; readout from zero. The seed draws the network.
- Target: ``f(t) = (A / 1.5) (sin wt + sin(2 wt) / 2 + sin(3 wt) / 6 + sin(4 wt) / 3)``, A 1.3,
  period ``period`` ms: the sum-of-sines form of their Fig. 2.
- FORCE: RLS (alpha 1) every 2 steps for ``train_periods`` periods, then learning off for
  ``test_periods`` periods. EH: the same network with exploration noise uniform on
  ``+-noise`` added to the readout, the rule's learning rate ``eh_lr`` decaying as
  ``eh_lr / (1 + t / eh_decay)``, for ``eh_periods`` periods, then learning off.
- Scores, learning off: the mean absolute error ``|z - f|`` over the test periods, and a
  periodicity index of the network's rates, ``mean |r(t + T) - r(t)| / mean |r(t)|`` (0 for
  activity that repeats with the target's period), before training and after.

Verdict (fixed before the runs; at least ``MIN_SEEDS`` networks): FORCE's test error below
``ACCURATE`` (0.1, against a target of peak about 1.3) in every network, and its periodicity
index below ``PERIODIC`` (0.1) after training where it is above ``CHAOTIC`` (0.5) before:
*holds*; the error criterion alone: *partly holds*; else *does not hold*. EH's error is
reported beside it, not in the status.
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
from neuroplastic.models.reservoir import ForceNetwork, ForceParameters, run_force
from neuroplastic.optim import RLS
from neuroplastic.plasticity.exploratory_hebbian import ExploratoryHebbian
from neuroplastic.results import Key
from neuroplastic.seeding import generator
from neuroplastic.stats import mean_ci
from neuroplastic.store import RunRecord

NAME = "sussillo2009-force"
MIN_SEEDS = 5
ACCURATE = 0.1
PERIODIC = 0.1
CHAOTIC = 0.5
METHODS = ("force", "eh")


@dataclass(frozen=True)
class Config:
    dataset: str = "sum-of-sines"
    """The periodic target (``target``), generated, no files."""
    units: int = 1000
    """Network size N."""
    gain: float = 1.5
    """``g``: the recurrent gain (chaotic above 1)."""
    connectivity: float = 0.1
    """``p``: share of non-zero recurrent weights."""
    tau: float = 10.0
    """Membrane time constant (ms)."""
    dt: float = 1.0
    """Euler step (ms)."""
    period: int = 600
    """Target period (ms = steps at dt 1)."""
    amplitude: float = 1.3
    """The target's amplitude factor (its peak is about this)."""
    train_periods: int = 10
    """FORCE training, in target periods."""
    test_periods: int = 5
    """Periods with learning off that are scored."""
    alpha: float = 1.0
    """RLS: P(0) = I / alpha."""
    learn_every: int = 2
    """RLS updates every this many steps."""
    eh_periods: int = 100
    """Training periods of the reward-modulated rule (it learns far more slowly)."""
    eh_lr: float = 5e-4
    """EH's initial learning rate."""
    eh_decay: float = 20000.0
    """Steps over which EH's learning rate halves."""
    noise: float = 0.5
    """EH's exploration noise: uniform on [-noise, noise]."""
    smoothing: float = 0.2
    """EH's running averages: new = (1 - s) old + s value."""

    def __post_init__(self) -> None:
        for name in ("units", "period", "train_periods", "test_periods", "learn_every",
                     "eh_periods"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dt != 1.0 and abs(self.period * self.dt - round(self.period * self.dt)) > 1e-9:
            raise ValueError("the period must be a whole number of steps")


def quick(config: Config) -> Config:
    """A 300-unit network, short training; EH barely starts."""
    return dataclasses.replace(config, units=300, train_periods=4, test_periods=2, eh_periods=4)


def target(config: Config, steps: int) -> torch.Tensor:
    t = torch.arange(1, steps + 1, dtype=torch.float64) * config.dt
    w = 2 * math.pi / (config.period * config.dt)
    wave = (torch.sin(w * t) + torch.sin(2 * w * t) / 2 + torch.sin(3 * w * t) / 6
            + torch.sin(4 * w * t) / 3)  # fmt: skip
    return (config.amplitude / 1.5) * wave


def network(config: Config, seed: int) -> ForceNetwork:
    params = ForceParameters(config.units, config.gain, config.connectivity, config.tau, config.dt)
    return ForceNetwork(params, generator=generator(NAME, "network", seed), dtype=torch.float64)


def periodicity(rates: torch.Tensor, period: int) -> float:
    """``mean |r(t + T) - r(t)| / mean |r(t)|`` over a stretch of rates ``(steps, units)``."""
    return float((rates[period:] - rates[:-period]).abs().mean() / rates.abs().mean())


@torch.no_grad()
def free_rates(net: ForceNetwork, steps: int, state) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Outputs ``(steps,)`` and rates ``(steps, units)`` with learning off."""
    x, z = state
    outputs, rates = [], []
    for _ in range(steps):
        x, r, z = net.step(x, z)
        outputs.append(z[0, 0])
        rates.append(r[0])
    return torch.stack(outputs), torch.stack(rates), (x, z)


def train_eh(config: Config, net: ForceNetwork, f: torch.Tensor, seed: int):
    """The reward-modulated readout: noisy output fed back, reward against its average."""
    rule = ExploratoryHebbian(net.w_out, lr=config.eh_lr, smoothing=config.smoothing)
    optimizer = torch.optim.SGD([net.w_out], lr=1.0)
    noise_gen = generator(NAME, "exploration", seed)
    x, z = net.initial_state()
    for t in range(len(f)):
        x, rates, clean = net.step(x, z)
        xi = (torch.rand(clean.shape, generator=noise_gen, dtype=clean.dtype) * 2 - 1)
        z = clean + config.noise * xi
        rule.lr = config.eh_lr / (1 + t / config.eh_decay)
        rule.step(rates, z, f[t].reshape(1, 1))
        rule.write()
        optimizer.step()
        optimizer.zero_grad()
    return x, net.output(torch.tanh(x))


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    period = config.period
    test_steps = config.test_periods * period
    metrics: dict[Key, float] = {}
    curves: dict[Key, dict[str, list[float]]] = {}
    context.progress.start(2, f"{NAME} seed {seed}")

    # before training: the readout is zero, the network runs on its own (chaotic for g > 1)
    net = network(config, seed)
    _, before_rates, _ = free_rates(net, 3 * period, net.initial_state())
    metrics[Key("force", "periodicity_before")] = periodicity(before_rates, period)

    train_steps = config.train_periods * period
    f = target(config, train_steps + test_steps)
    _, state = run_force(net, train_steps, f[:train_steps, None, None], RLS([net.w_out],
                         alpha=config.alpha), config.learn_every)  # fmt: skip
    outputs, rates, _ = free_rates(net, test_steps, state)
    error = (outputs - f[train_steps:]).abs()
    metrics[Key("force", "test_error")] = float(error.mean())
    metrics[Key("force", "periodicity_after")] = periodicity(rates, period)
    curves[Key("force", "test_output")] = {"x": list(range(1, period + 1)),
                                           "y": outputs[-period:].tolist()}  # fmt: skip
    context.progress.advance()

    net = network(config, seed)
    eh_steps = config.eh_periods * period
    f = target(config, eh_steps + test_steps)
    state = train_eh(config, net, f[:eh_steps], seed)
    outputs, rates, _ = free_rates(net, test_steps, state)
    metrics[Key("eh", "test_error")] = float((outputs - f[eh_steps:]).abs().mean())
    metrics[Key("eh", "periodicity_after")] = periodicity(rates, period)
    curves[Key("eh", "test_output")] = {"x": list(range(1, period + 1)),
                                        "y": outputs[-period:].tolist()}  # fmt: skip
    curves[Key("target", "test_output")] = {"x": list(range(1, period + 1)),
                                            "y": f[-period:].tolist()}  # fmt: skip
    context.progress.advance()
    return RunResult(metrics, curves, "ms (last test period)")


def verdict(records: Sequence[RunRecord]) -> Verdict:
    runs = default_runs(records, Config)
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")
    errors = [r.metrics[Key("force", "test_error")] for r in runs]
    before = [r.metrics[Key("force", "periodicity_before")] for r in runs]
    after = [r.metrics[Key("force", "periodicity_after")] for r in runs]
    eh = mean_ci(r.metrics[Key("eh", "test_error")] for r in runs)
    accurate = max(errors) < ACCURATE
    tamed = max(after) < PERIODIC and min(before) > CHAOTIC
    status = "holds" if accurate and tamed else "partly holds" if accurate else "does not hold"
    headline = (
        f"FORCE test error {mean_ci(errors).format(digits=3)} (worst {max(errors):.3f}, needs < "
        f"{ACCURATE}); periodicity of the rates {mean_ci(before).mean:.2f} before, "
        f"{mean_ci(after).mean:.3f} after (needs > {CHAOTIC} and < {PERIODIC}); EH (reward only) "
        f"test error {eh.format(digits=3)} after {Config().eh_periods} periods"
    )
    return Verdict(status, headline)


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    out = []
    for digest, runs in finished_by_config(records).items():
        rows = []
        for method in METHODS:
            error = mean_ci(r.metrics[Key(method, "test_error")] for r in runs)
            after = mean_ci(r.metrics[Key(method, "periodicity_after")] for r in runs)
            rows.append([method, error.format(digits=3), after.format(digits=3)])
        before = mean_ci(r.metrics[Key("force", "periodicity_before")] for r in runs)
        rows.append(["(before training)", "", before.format(digits=3)])
        kind = "quick" if runs[0].quick else "full"
        header = ["readout", "mean absolute error", "periodicity of the rates"]
        out.append(ReportTable(f"Learning off, {kind} config {digest[:8]}, n={len(runs)}",
                               header, rows))  # fmt: skip
    return out


def plot_panel(key: Key) -> tuple[str, str] | None:
    if key.metric != "test_output":
        return None
    return "output over the last test period (learning off)", key.method


EXPERIMENT = Experiment(
    name=NAME,
    paper="Sussillo & Abbott 2009, Neuron 63:544 (FORCE); Hoerzer, Legenstein & Maass 2014",
    claim=(
        "FORCE learning (RLS on a fed-back readout) turns a chaotic rate network into one that "
        "produces a periodic target on its own, with its chaotic activity suppressed."
    ),
    config_cls=Config,
    run=run,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS}",
    tables=tables,
    plot_panel=plot_panel,
)
