"""Every continual-learning method runs the same loop on a tiny class-incremental problem."""

import pytest
import torch

from neuroplastic.continual.methods import METHODS, learn_tasks, src_parameters
from neuroplastic.continual.training import Protocol, accuracy
from neuroplastic.plasticity.sleep_replay import SRCParameters
from neuroplastic.tasks.split_mnist import Task, seen_so_far


def tiny_tasks(n_tasks=3, per_class=40, side=28):
    """Blobs on a 28 x 28 image: class c lights a 4 x 4 square at its own place."""
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for index in range(n_tasks):
        classes = (2 * index, 2 * index + 1)
        parts = []
        for _ in range(4):  # train, extra, validation, test
            xs, ys = [], []
            for c in classes:
                image = torch.zeros(per_class, side, side)
                row, col = 4 * (c // 5) + 2, 4 * (c % 5) + 2
                image[:, row : row + 4, col : col + 4] = 1.0
                xs.append((image + 0.1 * torch.rand(image.shape, generator=gen)).flatten(1))
                ys.append(torch.full((per_class,), c))
            parts += [torch.cat(xs), torch.cat(ys)]
        tasks.append(Task(classes, *parts))
    return tasks


PROTOCOL = Protocol(epochs=5, batch_size=20, lr=0.1, dropout=0.0)
SMALL_SRC = {"beta_1": 2.0, "beta_2": 2.0, "beta_3": 2.0, "alpha_scale": 2.0, "steps": 200,
             "steps_per_task": 100}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_the_newest_task(method):
    tasks = tiny_tasks(2)  # with squared error on ReLU outputs, a tiny network's later outputs die
    hyper = dict(SMALL_SRC) if "src" in method else {}
    scores = []

    def evaluate(model, k):
        scores.append(accuracy(model, tasks[k].test_x, tasks[k].test_y))
        x, y = seen_so_far(tasks, k)
        return accuracy(model, x, y)

    model, seen = learn_tasks(method, tasks, PROTOCOL, hyper, sizes=(784, 200, 200, 6),
                              generator=torch.Generator().manual_seed(1), evaluate=evaluate,
                              init=0.1)  # fmt: skip
    assert len(seen) == (1 if method == "joint" else 2)
    assert all(0.0 <= s <= 1.0 for s in seen)
    if method not in ("src", "src+replay"):  # sleep may trade the newest task for older ones
        assert scores[-1] > 0.9


def test_running_statistics_variant_and_bad_names():
    tasks = tiny_tasks(2)
    _, seen = learn_tasks("src", tasks, PROTOCOL, dict(SMALL_SRC), sizes=(784, 200, 200, 6),
                          generator=torch.Generator().manual_seed(1), scales="running",
                          evaluate=lambda m, k: 0.0, init=0.1)  # fmt: skip
    assert seen == [0.0, 0.0]
    with pytest.raises(ValueError, match="unknown method"):
        learn_tasks("dropout", tasks)
    with pytest.raises(ValueError, match="scales"):
        learn_tasks("src", tasks, scales="peek")
    params = src_parameters({"max_rate": 100, "beta_2": 9.0, "steps": 50.0}, SRCParameters())
    assert params.max_rate == 100.0 and params.thresholds[1] == 9.0 and params.steps == 50
