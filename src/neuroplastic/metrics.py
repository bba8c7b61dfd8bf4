"""Metrics shared by experiments."""

from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def error_rate(
    predict: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 10_000,
) -> float:
    """Fraction of ``inputs`` whose arg-max output differs from ``labels`` (nan if empty)."""
    if len(labels) == 0:
        return float("nan")
    wrong = 0
    for start in range(0, len(labels), batch_size):
        outputs = predict(inputs[start : start + batch_size])
        wrong += (outputs.argmax(dim=-1) != labels[start : start + batch_size]).sum().item()
    return wrong / len(labels)
