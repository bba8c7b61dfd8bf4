"""Class-incremental Split MNIST (``tasks.split_mnist``) on the bundled mnist-mini."""

import pytest
import torch

from neuroplastic.tasks.datasets import load_dataset
from neuroplastic.tasks.split_mnist import DIGIT_PAIRS, seen_so_far, split_tasks


@pytest.fixture(scope="module")
def mini():
    return load_dataset("mnist-mini")


def test_five_tasks_of_two_digits_with_disjoint_held_out_parts(mini):
    tasks = split_tasks(mini)
    assert [t.classes for t in tasks] == list(DIGIT_PAIRS)
    for task in tasks:
        for y in (task.train_y, task.validation_y, task.test_y):
            assert set(y.unique().tolist()) == set(task.classes)
        assert len(task.extra_y) == 0  # per_task None: every kept image is trained on
        assert len(task.validation_y) == int(0.1 * (len(task.train_y) + len(task.validation_y)))
        rows = {tuple(x.tolist()) for x in task.validation_x}  # no image in both parts
        assert not any(tuple(x.tolist()) in rows for x in task.train_x[:200])
    x, y = seen_so_far(tasks, 2)
    assert set(y.unique().tolist()) == {0, 1, 2, 3, 4, 5} and len(x) == len(y)


def test_the_first_images_of_each_task_and_bad_groups(mini):
    tasks = split_tasks(mini, per_task=100, validation_fraction=0.0)
    assert all(len(t.train_y) == 100 for t in tasks)
    first_zero_one = torch.isin(mini.train_y, torch.tensor([0, 1])).nonzero()[:100, 0]
    assert torch.equal(tasks[0].train_x, mini.train_x[first_zero_one])
    with pytest.raises(ValueError, match="disjoint"):
        split_tasks(mini, classes=((0, 1), (1, 2)))
    with pytest.raises(ValueError, match="part must be"):
        seen_so_far(tasks, 0, "holdout")


def test_per_task_trains_on_the_first_kept_images_and_keeps_the_rest_as_extra(mini):
    tasks = split_tasks(mini, per_task=50, validation_fraction=0.2)
    images = torch.isin(mini.train_y, torch.tensor([0, 1])).nonzero()[:, 0]
    task = tasks[0]
    assert len(task.validation_y) == int(0.2 * len(images))
    assert len(task.train_y) == 50
    assert len(task.train_y) + len(task.extra_y) + len(task.validation_y) == len(images)
    # the 50 trained on come before every extra image in the dataset's order
    position = {tuple(x.tolist()): i for i, x in enumerate(mini.train_x[images])}
    last_trained = max(position[tuple(x.tolist())] for x in task.train_x)
    assert all(position[tuple(x.tolist())] > last_trained for x in task.extra_x)
    seen_x, seen_y = seen_so_far(tasks, 1, "seen")
    assert len(seen_y) == sum(len(t.train_y) + len(t.extra_y) for t in tasks[:2])
