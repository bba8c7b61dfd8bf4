"""Thread settings for small-tensor work on the CPU.

The many small ops of a replica-batched simulation gain nothing from intra-op parallelism, and on
a machine shared with other processes OpenMP threads spin-wait for cores: measured here, a
20-seed kanter2020-perceptron run went from 35 s to over 8 min next to another job with two
threads, and kanter2020-mnist's online steps ran 4-8x slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the enclosed code with one intra-op thread on the CPU, then restore the setting.

    The tensors here are small (at most a few times 10^4 elements per op) and the ops many: the
    OpenMP barrier of a parallel op costs more than it saves, and on a machine shared with other
    processes its threads spin-wait for cores (measured: a 20-seed run went from 35 s to over
    8 min next to another job). One thread also makes the results independent of the machine's
    thread count.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
