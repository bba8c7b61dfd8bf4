"""mnist-backprop: the reference every brain-inspired rule is compared with.

Claim tested: a one-hidden-layer MLP (784-500-10) trained by backprop with mini-batch SGD reaches at
most 2.0 % test error on MNIST, the regime of the classic results (LeCun et al. 1998 list 1.6 % for
784-800-10 without distortions, Simard et al. 2003 likewise).

The protocol is the one later rules reuse: a fixed validation split carved from the 60,000 training
images (never the test set) for any tuning, the test error read once per epoch for the curves, all
randomness from explicit generators seeded by the run's seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from neuroplastic.errors import DivergenceError
from neuroplastic.experiments.base import Experiment, RunContext, RunResult, Verdict, default_runs
from neuroplastic.metrics import error_rate
from neuroplastic.models.mlp import MLP
from neuroplastic.results import Key
from neuroplastic.stats import mean_ci
from neuroplastic.store import RunRecord
from neuroplastic.tasks.splits import validation_split

NAME = "mnist-backprop"
METHOD = "backprop"
TARGET_TEST_ERROR = 0.020
MIN_SEEDS = 3


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    """Dataset: ``mnist`` (60,000 training images) or ``mnist-mini`` (the bundled 6,000)."""
    hidden: tuple[int, ...] = (500,)
    """Widths of the hidden layers."""
    activation: Literal["relu", "tanh", "sigmoid"] = "relu"
    """Non-linearity of the hidden layers."""
    epochs: int = 30
    """Passes over the training split."""
    batch_size: int = 100
    """Examples per SGD step."""
    lr: float = 0.05
    """Initial learning rate of SGD."""
    momentum: float = 0.9
    """Heavy-ball momentum of torch.optim.SGD (0 for plain SGD)."""
    weight_decay: float = 0.0
    """L2 penalty coefficient as torch.optim.SGD applies it."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """Learning-rate schedule over all steps: constant or cosine annealing to zero."""
    validation_fraction: float = 0.1
    """Share of the training images held out for validation (a fixed split, the same for every
    seed): 6,000 of MNIST's 60,000, 600 of mnist-mini's 6,000."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )


def quick(config: Config) -> Config:
    """Two epochs instead of thirty: a smoke test that still learns visibly."""
    return dataclasses.replace(config, epochs=min(config.epochs, 2))


def run(config: Config, seed: int, context: RunContext) -> RunResult:
    """Train one network from ``seed`` and return its final metrics and per-epoch curves."""
    device = context.device
    data = context.load_dataset(config.dataset)
    n_validation = round(config.validation_fraction * len(data.train_y))
    train_index, validation_index = validation_split(len(data.train_y), n_validation)
    train_x, train_y = data.train_x[train_index.to(device)], data.train_y[train_index.to(device)]
    val_x, val_y = (
        data.train_x[validation_index.to(device)],
        data.train_y[validation_index.to(device)],
    )

    generator = torch.Generator().manual_seed(seed)
    model = MLP((train_x.shape[1], *config.hidden, 10), config.activation, generator).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
        if config.lr_schedule == "cosine"
        else None
    )

    curves: dict[str, list[float]] = {"train_loss": [], "val_error": [], "test_error": []}
    context.progress.start(config.epochs, f"{NAME} seed {seed}")
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(train_y), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * len(batch)
        train_loss = loss_sum.item() / len(train_y)
        if not math.isfinite(train_loss):
            raise DivergenceError(
                f"training loss became {train_loss} in epoch {epoch} (seed {seed})",
                hint=f"lower the learning rate (now lr={config.lr}) with --set lr=...",
            )
        model.eval()
        curves["train_loss"].append(train_loss)
        curves["val_error"].append(error_rate(model, val_x, val_y))
        curves["test_error"].append(error_rate(model, data.test_x, data.test_y))
        context.progress.advance(loss=train_loss, test_error=curves["test_error"][-1])

    epochs = list(range(1, config.epochs + 1))
    return RunResult(
        metrics={Key(METHOD, name): values[-1] for name, values in curves.items()},
        curves={Key(METHOD, name): {"x": epochs, "y": values} for name, values in curves.items()},
        curve_x_label="epoch",
    )


def verdict(records: Sequence[RunRecord]) -> Verdict:
    """Holds when the default full configuration averages <= 2.0 % test error over >= 3 seeds."""
    errors = [r.metrics[Key(METHOD, "test_error")] for r in default_runs(records, Config)]
    if len(errors) < MIN_SEEDS:
        return Verdict("not run", f"{len(errors)} of {MIN_SEEDS} seeds of the default config")
    summary = mean_ci(errors)
    status = "holds" if summary.mean <= TARGET_TEST_ERROR else "does not hold"
    return Verdict(status, f"test error {summary.format(scale=100, unit=' %')}")


EXPERIMENT = Experiment(
    name=NAME,
    paper="Backprop reference (LeCun et al. 1998)",
    claim="A 784-500-10 MLP trained by backprop with SGD reaches <= 2.0 % MNIST test error.",
    config_cls=Config,
    run=run,
    verdict=verdict,
    quick=quick,
    command=f"neuroplastic run {NAME} --seeds {MIN_SEEDS}",
)
