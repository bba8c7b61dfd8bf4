"""hebbian-pca: local Hebbian rules find the principal subspace of MNIST.

Sheet: shared/papers/local-rules-and-reservoirs.md. Oja's rule and its relatives extract principal
components with purely local changes, and so minimise reconstruction error (Oja 1982, 1989;
Sanger 1989; Pehlevan & Chklovskii's similarity matching). The reference: the top ``k`` right
singular vectors of the centred training images (``torch.linalg.svd``).

Protocol (ours; see docs/experiments/hebbian-pca.md):

- MNIST training images scaled to [0, 1], centred by the training mean; a fixed validation split
  (never the test images) for tuning.
- ``k`` outputs, weights from ``N(0, 0.01^2)`` drawn from the seed; one pass over the training
  split in shuffled mini-batches, learning rate ``lr / (1 + t / decay_steps)`` with ``lr`` tuned
  per rule (the same number of trials each, scored by the validation reconstruction error).
- Rules: ``oja`` (Oja's subspace rule), ``sanger`` (GHA), ``similarity-matching``.
- Measured after each of ``checkpoints`` images: the subspace overlap ``|U^T V|_F^2 / k`` (1 when
  the two span the same subspace; ``U`` the SVD's, ``V`` the rule's filters orthonormalised), the
  smallest principal-angle cosine, and the test reconstruction error of the projection onto the
  filters' span, relative to the SVD's (1 is optimal).

Verdict (fixed before the runs; at least ``MIN_SEEDS`` seeds): after one pass, every rule's test
reconstruction error within ``RECONSTRUCTION_MARGIN`` (5 %) of the SVD's and its overlap above
``OVERLAP`` (0.9): *holds*; some rules: *partly holds*; none: *does not hold*.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from neuroplastic.errors import DivergenceError
from neuroplastic.experiments.base import (
    Experiment,
    ReportTable,
    RunContext,
    RunResult,
    Verdict,
    default_runs,
    finished_by_config,
)
from neuroplastic.plasticity.hebbian import (
    HebbianRule,
    SimilarityMatching,
    principal_filters,
    subspace_cosines,
)
from neuroplastic.results import Key
from neuroplastic.seeding import generator
from neuroplastic.stats import mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.tasks.splits import validation_split
from neuroplastic.tuning import LogUniform, Objective, Study, Trial, TrialOutcome

NAME = "hebbian-pca"
MIN_SEEDS = 5
RECONSTRUCTION_MARGIN = 0.05
OVERLAP = 0.9
RULES = ("oja", "sanger", "similarity-matching")


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    """Images: ``mnist`` or the bundled ``mnist-mini``."""
    components: int = 16
    """``k``: outputs, and principal components of the reference."""
    batch_size: int = 10
    """Images per update (their changes averaged)."""
    decay_steps: int = 1000
    """The learning rate halves after this many steps."""
    checkpoints: tuple[int, ...] = (1000, 3000, 10000, 30000, 54000)
    """Training images seen at which the subspace is measured (the last: one pass)."""
    trials: int = 8
    """Tuning trials per rule (the learning rate)."""
    lr: tuple[float, float] = (1e-4, 0.3)
    """Log range of the initial learning rate."""
    tau: float = 0.5
    """Similarity matching's ratio of lateral to feed-forward learning rates."""
    validation_fraction: float = 0.1
    """Share of the training images held out to score the learning rates."""
    tuning_seed: int = 0
    """Seed of the tuner."""

    def __post_init__(self) -> None:
        if self.components < 1 or self.batch_size < 1 or self.trials < 1:
            raise ValueError("components, batch_size and trials must be at least 1")
        if not self.checkpoints or list(self.checkpoints) != sorted(self.checkpoints):
            raise ValueError(f"checkpoints must be increasing, got {self.checkpoints}")


def quick(config: Config) -> Config:
    return dataclasses.replace(config, checkpoints=(1000, 5000), trials=2)


def data(config: Config, context: RunContext):
    """Centred training split, validation split and test images, and the SVD's components."""
    dataset = context.load_dataset(config.dataset)
    train_x = dataset.train_x.double().flatten(1)
    keep, held_out = validation_split(len(train_x), int(config.validation_fraction * len(train_x)))
    mean = train_x[keep].mean(0)
    train, validation = train_x[keep] - mean, train_x[held_out] - mean
    test = dataset.test_x.double().flatten(1) - mean
    # the top right singular vectors of the centred images: eigenvectors of X^T X
    _, vectors = torch.linalg.eigh(train.T @ train)
    components = vectors.flip(1)[:, : config.components].T
    return train, validation, test, components


def reconstruction_error(images: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean squared error of projecting ``images`` onto the span of ``rows``."""
    basis = torch.linalg.qr(rows.T).Q  # (n, k)
    return float(((images - images @ basis @ basis.T) ** 2).sum(1).mean())


def overlap(rows: torch.Tensor, reference: torch.Tensor) -> float:
    """``|U^T V|_F^2 / k``: the mean squared cosine of the principal angles."""
    return float((subspace_cosines(rows, reference) ** 2).mean())


def learn(config: Config, rule_name: str, lr: float, train: torch.Tensor, seed: int,
          at: Sequence[int], measure) -> None:  # fmt: skip
    """``rule_name`` over ``train`` (shuffled from ``seed``) up to the last checkpoint of ``at``
    (images seen; at most one pass), calling ``measure(filters, seen)`` at each."""
    gen = generator(NAME, "init", seed)
    weight = nn.Parameter(0.01 * torch.randn(config.components, train.shape[1], generator=gen,
                                             dtype=train.dtype))  # fmt: skip
    if rule_name == "similarity-matching":
        rule = SimilarityMatching(weight, lr=lr, tau=config.tau)
    else:
        rule = HebbianRule(weight, rule_name, lr=lr)
    parameters = rule.parameters() if isinstance(rule, SimilarityMatching) else [weight]
    optimizer = torch.optim.SGD(parameters, lr=1.0)
    order = torch.randperm(len(train), generator=generator(NAME, "order", seed))
    pending = [a for a in at if a <= len(train)]
    for step, start in enumerate(range(0, len(train), config.batch_size)):
        rule.lr = lr / (1 + step / config.decay_steps)
        optimizer.zero_grad()
        rule.observe(train[order[start : start + config.batch_size]])
        rule.write()
        optimizer.step()
        seen = min(start + config.batch_size, len(train))
        filters = principal_filters(rule)
        if not torch.isfinite(filters).all():
            raise_diverged(rule_name, lr)
        while pending and seen >= pending[0]:
            measure(filters, pending.pop(0))
        if not pending:
            return  # the last checkpoint: the rest of the pass is not measured


def raise_diverged(rule: str, lr: float):
    raise DivergenceError(f"{rule} diverged at learning rate {lr:.3g}",
                          "lower the range of lr (--set lr=...)")  # fmt: skip


def study(config: Config, rule: str) -> Study:
    return Study(rule, {"lr": LogUniform(*config.lr)}, trials=config.trials,
                 seed=config.tuning_seed, round_size=2, startup_trials=4)  # fmt: skip


def studies(config: Config) -> list[Study]:
    return [study(config, r) for r in RULES]


def validation_error(config: Config, rule: str, parts) -> Objective:
    """``parts``: :func:`data`'s outcome, computed once per process by the caller."""
    train, validation, _, components = parts
    best = reconstruction_error(validation, components)

    def objective(params: dict, trial: Trial) -> TrialOutcome:
        result = {}
        learn(config, rule, params["lr"], train, trial.seed, [config.checkpoints[-1]],
              lambda filters, seen: result.update(error=reconstruction_error(validation,
                                                                             filters)))  # fmt: skip
        return TrialOutcome(result["error"] / best)

    return objective


def objective(config: Config, name: str, context: RunContext) -> Objective:
    if name not in RULES:
        raise KeyError(f"{NAME} has no study {name!r}")
    return validation_error(config, name, data(config, context))


def tune(config: Config, context: RunContext) -> None:
    parts = data(config, context)
    for rule in RULES:
        context.tune(config, study(config, rule), validation_error(config, rule, parts))


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    parts = data(config, context)
    train, _, test, components = parts
    best = reconstruction_error(test, components)
    metrics: dict[Key, float] = {Key("svd", "test_reconstruction_error"): best}
    curves: dict[Key, dict[str, list[float]]] = {}
    chosen = {}
    for rule in RULES:
        lr = context.tune(config, study(config, rule), validation_error(config, rule, parts))
        chosen[rule] = dict(lr.params)
        measured = {"seen": [], "overlap": [], "min_cosine": [], "relative_error": []}

        def measure(filters, seen, measured=measured):
            measured["seen"].append(seen)
            measured["overlap"].append(overlap(filters, components))
            measured["min_cosine"].append(float(subspace_cosines(filters, components).min()))
            measured["relative_error"].append(reconstruction_error(test, filters) / best)

        learn(config, rule, chosen[rule]["lr"], train, seed, config.checkpoints, measure)
        for metric in ("overlap", "min_cosine", "relative_error"):
            curves[Key(rule, metric)] = {"x": measured["seen"], "y": measured[metric]}
            metrics[Key(rule, metric)] = measured[metric][-1]
    return RunResult(metrics, curves, "training images seen", chosen)


def verdict(records: Sequence[RunRecord]) -> Verdict:
    runs = default_runs(records, Config)
    if len(runs) < MIN_SEEDS:
        return Verdict("not run", f"{len(runs)} of {MIN_SEEDS} seeds of the default config")
    parts, passed = [], 0
    for rule in RULES:
        error = mean_ci(r.metrics[Key(rule, "relative_error")] for r in runs)
        shared = mean_ci(r.metrics[Key(rule, "overlap")] for r in runs)
        ok = error.mean + error.ci95 <= 1 + RECONSTRUCTION_MARGIN and shared.mean > OVERLAP
        passed += ok
        parts.append(f"{rule}: error {error.mean:.3f} x SVD's, overlap {shared.mean:.3f} "
                     f"({'yes' if ok else 'no'})")  # fmt: skip
    status = {len(RULES): "holds", 0: "does not hold"}.get(passed, "partly holds")
    k = Config().components
    return Verdict(status, "; ".join(parts) + f" after one pass, k={k} (n={len(runs)})")


def tables(records: Sequence[RunRecord]) -> list[ReportTable]:
    out = []
    for digest, runs in finished_by_config(records).items():
        rows = []
        for rule in RULES:
            cells = [mean_ci(r.metrics[Key(rule, m)] for r in runs).format(digits=3)
                     for m in ("relative_error", "overlap", "min_cosine")]  # fmt: skip
            lr = runs[0].hyperparameters.get(rule, {}).get("lr")
            rows.append([rule, *cells, "" if lr is None else f"{lr:.3g}"])
        kind = "quick" if runs[0].quick else "full"
        out.append(ReportTable(
            f"After the last checkpoint, {kind} config {digest[:8]}, n={len(runs)}",
            ["rule", "test reconstruction error / SVD's", "subspace overlap",
             "smallest cosine", "tuned lr"], rows,
        ))  # fmt: skip
    return out


EXPERIMENT = Experiment(
    name=NAME,
    paper="Oja 1982/1989; Sanger 1989; Pehlevan, Sengupta & Chklovskii 2018",
    claim=(
        "Local Hebbian rules (Oja's subspace rule, Sanger's GHA, similarity matching) find the "
        "principal subspace of MNIST: reconstruction within 5 % of the SVD's after one pass."
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
