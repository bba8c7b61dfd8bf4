"""The training loop of the class-incremental experiments, as the SRC authors' code runs it
(Tadros et al. 2022; the sleep-replay sheet's notes): a bias-free ReLU network trained task after
task with SGD and momentum, dropout, and, by default, squared error on the ReLU outputs against
one-hot targets; an input whose outputs are all zero counts as digit 0 (argmax's first index).

A method plugs in through two callables: ``extra_loss(model, x, y)`` added to each batch's loss
(a regulariser's penalty, replayed examples, distillation) and ``after_step()`` after each
optimiser step (SI's path integral)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from neuroplastic.errors import DivergenceError


@dataclass(frozen=True)
class Protocol:
    epochs: int = 2
    batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.5
    dropout: float = 0.25
    loss: str = "squared"
    """``squared``: squared error of the ReLU outputs against one-hot targets (the authors');
    ``cross_entropy``: softmax cross-entropy on the same outputs."""

    def __post_init__(self) -> None:
        if self.loss not in ("squared", "cross_entropy"):
            raise ValueError(f"loss must be squared or cross_entropy, got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("need epochs >= 1, batch_size >= 1 and lr > 0")


def relu_network(sizes: Sequence[int] = (784, 1200, 1200, 10), dropout: float = 0.25,
                 generator: torch.Generator | None = None, init: float = 0.01) -> nn.Sequential:
    """Bias-free Linear layers with ReLU after each (the output too, as the authors'), dropout
    before each hidden layer's weights, weights uniform on ``[-init, init]``."""  # fmt: skip
    modules: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if index and dropout:
            modules.append(nn.Dropout(dropout))
        layer = nn.Linear(n_in, n_out, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.rand(n_out, n_in, generator=generator) * 2 * init - init)
        modules += [layer, nn.ReLU()]
    return nn.Sequential(*modules)


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def task_loss(outputs: Tensor, labels: Tensor, protocol: Protocol) -> Tensor:
    if protocol.loss == "squared":
        targets = nn.functional.one_hot(labels, outputs.shape[-1]).to(outputs.dtype)
        return 0.5 * ((outputs - targets) ** 2).sum(-1).mean()
    return nn.functional.cross_entropy(outputs, labels)


def train_task(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, protocol: Protocol,
    generator: torch.Generator | None = None,
    extra_loss: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    before_step: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """``protocol.epochs`` passes over ``(x, y)`` in shuffled batches."""
    model.train()
    for _ in range(protocol.epochs):
        order = torch.randperm(len(y), generator=generator).to(y.device)
        for start in range(0, len(y), protocol.batch_size):
            batch = order[start : start + protocol.batch_size]
            optimizer.zero_grad()
            loss = task_loss(model(x[batch]), y[batch], protocol)
            if extra_loss is not None:
                loss = loss + extra_loss(model, x[batch], y[batch])
            if not torch.isfinite(loss):
                raise DivergenceError(
                    "the training loss diverged (NaN or inf); lower the learning rate or the "
                    "method's strength"
                )
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            if after_step is not None:
                after_step()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, chunk: int = 2000) -> Tensor:
    """The class of each input: its largest output (all-zero outputs: the first class)."""
    model.eval()
    return torch.cat([model(x[start : start + chunk]).argmax(-1)
                      for start in range(0, len(x), chunk)])  # fmt: skip


def accuracy(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 2000) -> float:
    """Share of ``x`` whose largest output is its label (all-zero outputs: digit 0)."""
    return float((predict(model, x, chunk) == y).double().mean())
