"""Each continual-learning method of the class-incremental comparison, run over a sequence of
tasks on the same network, the same data and the same training loop (``continual.training``),
so that the methods differ only in what the method adds:

- ``sequential``: nothing (the lower reference);
- ``joint``: one network trained on all tasks' training images at once (``extra`` ones included,
  as the authors' code; the upper reference, scored only after the last task);
- ``ewc``: online EWC, penalty ``strength`` (``gamma`` its decay), Fisher on ``fisher_examples``
  of each task;
- ``si``: synaptic intelligence, ``strength`` (``damping`` its xi);
- ``lwf``: distillation to the network as it was before the task, on the new task's inputs, over
  the classes seen before, weight ``strength``, temperature ``temperature``;
- ``replay``: ``per_class`` stored examples per class, a replayed batch beside each new one;
- ``src``: sleep replay consolidation after each task (``plasticity.sleep_replay``), its scales
  from all data seen so far (``scales="data"``, the authors' code) or from statistics kept
  without the data (``scales="running"``: the running mean input, and per layer the largest
  activation measured on each task's data at its end);
- ``src+replay``: both.

Hyper-parameters come in one dict (``hyper``); missing ones take the defaults in ``DEFAULTS``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from neuroplastic.continual.ewc import EWC
from neuroplastic.continual.lwf import distillation_loss
from neuroplastic.continual.replay import ReplayBuffer
from neuroplastic.continual.si import SynapticIntelligence
from neuroplastic.continual.training import (
    Protocol,
    linear_layers,
    relu_network,
    task_loss,
    train_task,
)
from neuroplastic.plasticity.sleep_replay import (
    SRC_MNIST,
    SleepReplay,
    SRCParameters,
    max_activations,
    sleep_steps,
)
from neuroplastic.tasks.split_mnist import Task, seen_so_far

AUTHORS = Protocol()
"""The authors' training protocol (``continual.training.Protocol``'s defaults)."""
METHODS = ("sequential", "joint", "ewc", "si", "lwf", "replay", "src", "src+replay")
DEFAULTS: dict[str, dict[str, float]] = {
    "ewc": {"strength": 100.0, "gamma": 1.0, "fisher_examples": 200},
    "si": {"strength": 1.0, "damping": 0.1},
    "lwf": {"strength": 1.0, "temperature": 2.0},
    "replay": {"per_class": 100},
    "src": {},
    "src+replay": {"per_class": 100},
}
SRC_KNOBS = ("max_rate", "increment", "decrement", "alpha_scale", "steps", "steps_per_task")
"""SRC hyper-parameters a ``hyper`` dict may set (and ``beta_1`` ... for the thresholds)."""


def src_parameters(hyper: dict, base: SRCParameters = SRC_MNIST) -> SRCParameters:
    values = {k: type(getattr(base, k))(hyper[k]) for k in SRC_KNOBS if k in hyper}
    betas = [hyper.get(f"beta_{i + 1}", b) for i, b in enumerate(base.thresholds)]
    return replace(base, thresholds=tuple(float(b) for b in betas), **values)


def learn_tasks(
    method: str, tasks: Sequence[Task], protocol: Protocol = AUTHORS,
    hyper: dict | None = None, sizes: Sequence[int] = (784, 1200, 1200, 10),
    generator: torch.Generator | None = None,
    evaluate: Callable[[nn.Module, int], float] | None = None, scales: str = "data",
    init: float = 0.01, max_sleep_activity: float | None = None,
) -> tuple[nn.Module, list[float]]:  # fmt: skip
    """Train a fresh network on ``tasks`` in order with ``method``; returns it and
    ``evaluate(model, k)`` after each task ``k`` (only after the last for ``joint``).
    ``init``: the initial weights' range (the authors' 0.01 suits their 1200-wide layers).
    ``max_sleep_activity``: see ``SleepReplay.sleep`` (a runaway sleep raises)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if scales not in ("data", "running"):
        raise ValueError(f"scales must be 'data' or 'running', got {scales!r}")
    settings = {**DEFAULTS.get(method, {}), **(hyper or {})}
    model = relu_network(sizes, protocol.dropout, generator, init)
    # one optimiser for the whole sequence: its momentum is never reset (the authors' code)
    optimizer = torch.optim.SGD(model.parameters(), lr=protocol.lr, momentum=protocol.momentum)
    scores: list[float] = []

    if method == "joint":
        # the authors' joint network: every training image (trained on or extra), as one task
        x, y = seen_so_far(tasks, len(tasks) - 1, "seen")
        train_task(model, optimizer, x, y, protocol, generator)
        return model, [evaluate(model, len(tasks) - 1)] if evaluate else []

    ewc = si = buffer = None
    if method == "ewc":
        ewc = EWC(model, settings["strength"], online=True, gamma=settings["gamma"])
    if method == "si":
        si = SynapticIntelligence(model, settings["strength"], settings["damping"])
    if method in ("replay", "src+replay"):
        buffer = ReplayBuffer(int(settings["per_class"]), generator)
    src = src_parameters(settings) if method in ("src", "src+replay") else None
    running_mean, running_count, running_max = None, 0, None

    for index, task in enumerate(tasks):
        old = copy.deepcopy(model).eval() if method == "lwf" and index else None
        seen_before = sum(len(t.classes) for t in tasks[:index])

        def extra_loss(net: nn.Module, x, y, old=old, seen_before=seen_before):
            loss = torch.zeros((), dtype=x.dtype, device=x.device)
            if ewc is not None:
                loss = loss + ewc.penalty()
            if si is not None:
                loss = loss + si.penalty()
            if old is not None:
                with torch.no_grad():
                    targets = old(x)
                loss = loss + settings["strength"] * distillation_loss(
                    net(x), targets, settings["temperature"], classes=seen_before
                )
            if buffer is not None and len(buffer):
                replay_x, replay_y = buffer.sample(len(y))
                loss = loss + task_loss(net(replay_x.to(x.device)), replay_y.to(y.device),
                                        protocol)  # fmt: skip
            return loss

        train_task(model, optimizer, task.train_x, task.train_y, protocol, generator,
                   extra_loss=extra_loss,
                   before_step=si.before_step if si else None,
                   after_step=si.after_step if si else None)  # fmt: skip
        if ewc is not None:
            n = int(settings["fisher_examples"])
            ewc.after_task([task.train_x[:n]])
        if si is not None:
            si.after_task()
        if buffer is not None:
            buffer.add(task.train_x, task.train_y)
        if src is not None:
            replay = SleepReplay(linear_layers(model), src)
            if scales == "data":  # the authors': every training image seen so far
                seen_x, _ = seen_so_far(tasks, index, "seen")
                replay.calibrate(seen_x)
                mean = seen_x.mean(0)
            else:  # statistics only: nothing of the old tasks' data is kept
                task_x, _ = seen_so_far(tasks[index : index + 1], 0, "seen")
                count = len(task_x)
                task_mean = task_x.mean(0)
                running_mean = task_mean if running_mean is None else (
                    running_mean * running_count + task_mean * count
                ) / (running_count + count)
                running_count += count
                largest = max_activations(linear_layers(model), task_x)
                running_max = largest if running_max is None else [
                    max(a, b) for a, b in zip(running_max, largest, strict=True)
                ]
                replay.calibrate_from(running_max)
                mean = running_mean
            replay.sleep(mean, sleep_steps(index + 1, src), generator,
                         max_activity=max_sleep_activity)  # fmt: skip
        if evaluate is not None:
            scores.append(evaluate(model, index))
    return model, scores
