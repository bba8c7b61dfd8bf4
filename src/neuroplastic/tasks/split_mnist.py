"""Class-incremental Split MNIST: MNIST cut into tasks of two digits each, (0, 1), (2, 3), ...,
(8, 9), learnt one after another, and tested on all digits seen so far (van de Ven, Tuytelaars &
Tolias 2022; Tadros et al. 2022 use the same five tasks).

Each task keeps its digits' training images split three ways: a validation part carved by its
own seed (``tasks.splits``), the first ``per_task`` of the rest as the images trained on (the SRC
authors' code trains on the first 5,000 of each task), and the remainder as ``extra`` images,
never trained on (the authors' code still computes its sleep's input and scales from every
training image of the tasks seen, these included). The test part is the digits' test images; it
is never used for tuning.
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
    extra_x: Tensor
    extra_y: Tensor
    validation_x: Tensor
    validation_y: Tensor
    test_x: Tensor
    test_y: Tensor


def split_tasks(
    dataset: Dataset, classes: Sequence[Sequence[int]] = DIGIT_PAIRS, per_task: int | None = None,
    validation_fraction: float = 0.1, split_seed: int = 0,
) -> list[Task]:  # fmt: skip
    """The tasks of ``classes`` (disjoint groups of labels), in order. ``validation_fraction``
    of each task's training images are held out for validation; of the rest, the first
    ``per_task`` are trained on (``None``: all) and the others are the task's ``extra`` images."""
    flat = [c for group in classes for c in group]
    if len(set(flat)) != len(flat):
        raise ValueError(f"the tasks' classes must be disjoint, got {classes}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    tasks = []
    for index, group in enumerate(classes):
        group = tuple(int(c) for c in group)
        labels = torch.tensor(group, device=dataset.train_y.device)
        images = torch.isin(dataset.train_y, labels).nonzero(as_tuple=True)[0]
        keep, held_out = validation_split(
            len(images), int(validation_fraction * len(images)), split_seed + index
        )
        # the kept images in their dataset order, so "the first per_task" means what it says
        keep = images[keep.sort().values.to(images.device)]
        held_out = images[held_out.to(images.device)]
        train, extra = keep[:per_task], keep[len(keep) if per_task is None else per_task :]
        if len(train) < 2:
            raise ValueError(f"task {index} (classes {group}) has {len(train)} training images")
        test = torch.isin(dataset.test_y, labels).nonzero(as_tuple=True)[0]
        tasks.append(Task(group, dataset.train_x[train], dataset.train_y[train],
                          dataset.train_x[extra], dataset.train_y[extra],
                          dataset.train_x[held_out], dataset.train_y[held_out],
                          dataset.test_x[test], dataset.test_y[test]))  # fmt: skip
    return tasks


PARTS = ("train", "extra", "seen", "validation", "test")


def seen_so_far(tasks: Sequence[Task], upto: int, part: str = "test") -> tuple[Tensor, Tensor]:
    """The ``part`` images and labels of tasks ``0 .. upto``, concatenated: ``train``,
    ``extra``, ``validation``, ``test``, or ``seen`` (every training image of those tasks, trained
    on or extra). Class-incremental evaluation is on every digit seen so far."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    names = ("train", "extra") if part == "seen" else (part,)
    xs = [getattr(t, f"{name}_x") for t in tasks[: upto + 1] for name in names]
    ys = [getattr(t, f"{name}_y") for t in tasks[: upto + 1] for name in names]
    return torch.cat(xs), torch.cat(ys)
