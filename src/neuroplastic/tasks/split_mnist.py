"""Class-incremental Split MNIST: MNIST cut into tasks of two digits each, (0, 1), (2, 3), ...,
(8, 9), learnt one after another, and tested on all digits seen so far (van de Ven, Tuytelaars &
Tolias 2022; Tadros et al. 2022 use the same five tasks).

Each task keeps its digits' training images (optionally only the first ``per_task`` of them, as
the SRC authors' code trains on the first 5,000 of each task), a validation part carved from
them by its own seed (``tasks.splits``), and its digits' test images. The test set is never used
for tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from neuroplastic.tasks.datasets import Dataset
from neuroplastic.tasks.splits import validation_split

DIGIT_PAIRS: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


class Task(NamedTuple):
    classes: tuple[int, ...]
    train_x: Tensor
    train_y: Tensor
    validation_x: Tensor
    validation_y: Tensor
    test_x: Tensor
    test_y: Tensor


def split_tasks(
    dataset: Dataset, classes: Sequence[Sequence[int]] = DIGIT_PAIRS, per_task: int | None = None,
    validation_fraction: float = 0.1, split_seed: int = 0,
) -> list[Task]:  # fmt: skip
    """The tasks of ``classes`` (disjoint groups of labels), in order. ``per_task``: the first
    that many training images of each task (before the validation split); ``None``: all."""
    flat = [c for group in classes for c in group]
    if len(set(flat)) != len(flat):
        raise ValueError(f"the tasks' classes must be disjoint, got {classes}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    tasks = []
    for index, group in enumerate(classes):
        group = tuple(int(c) for c in group)
        labels = torch.tensor(group, device=dataset.train_y.device)
        train = torch.isin(dataset.train_y, labels).nonzero(as_tuple=True)[0]
        if per_task is not None:
            train = train[:per_task]
        if len(train) < 2:
            raise ValueError(f"task {index} (classes {group}) has {len(train)} training images")
        keep, held_out = validation_split(
            len(train), int(validation_fraction * len(train)), split_seed + index
        )
        keep, held_out = train[keep.to(train.device)], train[held_out.to(train.device)]
        test = torch.isin(dataset.test_y, labels).nonzero(as_tuple=True)[0]
        tasks.append(Task(group, dataset.train_x[keep], dataset.train_y[keep],
                          dataset.train_x[held_out], dataset.train_y[held_out],
                          dataset.test_x[test], dataset.test_y[test]))  # fmt: skip
    return tasks


def seen_so_far(tasks: Sequence[Task], upto: int, part: str = "test") -> tuple[Tensor, Tensor]:
    """The ``part`` (``train``, ``validation`` or ``test``) images and labels of tasks
    ``0 .. upto``, concatenated: class-incremental evaluation is on every digit seen so far."""
    if part not in ("train", "validation", "test"):
        raise ValueError(f"part must be train, validation or test, got {part!r}")
    xs = [getattr(t, f"{part}_x") for t in tasks[: upto + 1]]
    ys = [getattr(t, f"{part}_y") for t in tasks[: upto + 1]]
    return torch.cat(xs), torch.cat(ys)
