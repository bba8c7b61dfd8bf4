"""Replicas as a batch dimension: R seeds of a 784-30-10 net, batched against one by one.

    python benchmarks/replicas.py [--replicas 20] [--steps 300] [--method accelerated-sign]

Trains R replicas online (one example per step each) as one batched computation, then the same R
replicas one after another, checks that both give the same accuracies (to float rounding), and
prints the wall time of each and their ratio. The figures quoted in
docs/experiments/kanter2020-mnist.md come from here.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from neuroplastic.experiments import kanter2020_mnist as experiment
from neuroplastic.experiments.base import RunContext


def middle(scale: str, low: float, high: float) -> float:
    return math.sqrt(low * high) if scale == "log" else (low + high) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300, help="training-set size = steps")
    parser.add_argument(
        "--method", default="accelerated-sign", choices=list(experiment.SEARCH_SPACES)
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    data = RunContext(device=device).load_dataset("mnist-mini")
    pools, validation = experiment.carve_validation(data.train_y, 100)
    seeds = list(range(args.replicas))
    order = experiment.training_sets(pools, args.steps, seeds)
    # The middle of each search range for every replica: a stable setting, so that float
    # rounding (which differs between batch sizes) cannot grow into different trajectories.
    hyper = {
        name: torch.full((args.replicas,), middle(scale, low, high), dtype=torch.float64)
        for name, (scale, low, high) in experiment.SEARCH_SPACES[args.method].items()
    }
    config = experiment.Config()
    # Scored once at the end on the 1,000 validation images, so the timing is the training's.
    evaluate = (data.train_x[validation], data.train_y[validation], [args.steps])

    def train(replicas: list[int]) -> torch.Tensor:
        chosen = {k: v[replicas] for k, v in hyper.items()}
        scores, _ = experiment.train_replicas(
            config, args.method, "cross_entropy", chosen, [seeds[r] for r in replicas],
            order[replicas], data.train_x, data.train_y, *evaluate,
        )  # fmt: skip
        return scores[:, -1]

    start = time.perf_counter()
    batched = train(seeds)
    batched_seconds = time.perf_counter() - start
    start = time.perf_counter()
    single = torch.cat([train([r]) for r in seeds])
    single_seconds = time.perf_counter() - start
    # Batched matrix products are not batch-size invariant in the last bit, so a replica may
    # end an example or two apart on the 1,000 validation images; anything more is a bug.
    largest_gap = float((batched - single).abs().max())
    if largest_gap > 5 / len(validation):
        raise SystemExit(f"batched and one-by-one accuracies differ by {largest_gap}: a bug")

    examples = args.replicas * args.steps
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}")  # fmt: skip
    print(f"{args.method}, {args.replicas} replicas x {args.steps} online steps, one final score")
    print(f"batched    : {batched_seconds:7.2f} s  ({examples / batched_seconds:8.0f} examples/s)")
    print(f"one by one : {single_seconds:7.2f} s  ({examples / single_seconds:8.0f} examples/s)")
    print(f"speed-up   : {single_seconds / batched_seconds:7.1f}x  "
          f"(largest accuracy gap {largest_gap:.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
