"""Seconds per SRC sleep on 784-1200-1200-10 (the authors' values): the compiled event-driven loop
against the step-by-step PyTorch reference, on the same input spikes, one thread.

    python benchmarks/sleep_replay.py [--steps 5000] [--repeats 3]

The network: uniform weights on [-0.01, 0.01] (the authors' initialisation), scales from 200
random images, driven by their mean. Median of ``--repeats`` runs after a warm-up (Numba
compiles on first use).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from neuroplastic.plasticity.sleep_replay import SRC_MNIST, SleepReplay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    layers = [nn.Linear(784, 1200, bias=False), nn.Linear(1200, 1200, bias=False),
              nn.Linear(1200, 10, bias=False)]  # fmt: skip
    for layer in layers:
        nn.init.uniform_(layer.weight, -0.01, 0.01, generator=gen)
    data = torch.rand(200, 784, generator=gen)
    print(f"SRC sleep, 784-1200-1200-10, {args.steps} steps, one thread")
    for backend in ("numba", "torch"):
        seconds = []
        for repeat in range(args.repeats + 1):  # the first: warm-up
            replay = SleepReplay(copy.deepcopy(layers), SRC_MNIST)
            replay.calibrate(data)
            start = time.perf_counter()
            replay.sleep(data.mean(0), args.steps, torch.Generator().manual_seed(5),
                         backend=backend)  # fmt: skip
            if repeat:
                seconds.append(time.perf_counter() - start)
        print(f"{backend:<6} {statistics.median(seconds):7.2f} s")


if __name__ == "__main__":
    main()
