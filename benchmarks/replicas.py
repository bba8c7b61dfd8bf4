"""Replicas as a batch dimension: R seeds of a 784-30-10 net, batched against one by one.

    python benchmarks/replicas.py [--replicas 20] [--steps 300] [--method accelerated-sign]

Trains R replicas online (one example per step each) as one batched computation, then the same R
replicas one after another, checks that both give the same accuracies, and prints the wall time
of each and their ratio. The figures quoted in docs/experiments/kanter2020-mnist.md come from here.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from neuroplastic.experiments import kanter2020_mnist as experiment
from neuroplastic.experiments.base import RunContext


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
    g = torch.Generator().manual_seed(0)
    hyper = experiment.sample_settings(experiment.SEARCH_SPACES[args.method], args.replicas, g)
    config = experiment.Config()
    evaluate = (data.test_x, data.test_y, [args.steps])

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
    if not torch.equal(batched, single):
        raise SystemExit("batched and one-by-one accuracies differ: the fast path is wrong")

    examples = args.replicas * args.steps
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}")  # fmt: skip
    print(f"{args.method}, {args.replicas} replicas x {args.steps} online steps (+ test eval)")
    print(f"batched    : {batched_seconds:7.2f} s  ({examples / batched_seconds:8.0f} examples/s)")
    print(f"one by one : {single_seconds:7.2f} s  ({examples / single_seconds:8.0f} examples/s)")
    print(f"speed-up   : {single_seconds / batched_seconds:7.1f}x  (identical accuracies)")


if __name__ == "__main__":
    main()
