"""Equilibrium propagation's training step against backprop's, in examples per second.

    python benchmarks/equilibrium_settling.py [--batches 1 20 100] [--seconds 2] [--threads N]

One training step on a 784-500-10 MLP (``zero_grad``, ``rule.backward``, ``SGD.step``) for:
backprop (square loss, the same network read feed-forward); equilibrium propagation with the
paper's one-hidden-layer settling (20 free steps, 4 nudged, dt 0.5), eager and with
``compile=True``; and its symmetric variant (one more nudged phase). Inputs are random pixels in
[0, 1] (speed does not depend on the data). Each configuration is warmed up (compilation included)
and then timed for about ``--seconds`` in five blocks, taken round-robin with the others, of which
the fastest counts; the table gives examples per second and the ratio to backprop at the same
batch size. Before timing, the compiled path is checked equal to the eager one on the benchmark's
own network (to float32 rounding). On a shared machine, ``--threads 1`` gives steadier figures.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from neuroplastic.credit import Backprop
from neuroplastic.credit.equilibrium_propagation import EquilibriumPropagation
from neuroplastic.models.mlp import MLP

SIZES = (784, 500, 10)


def step_fn(method: str, batch: int) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    model = MLP(SIZES, generator=g)
    x = torch.rand(batch, SIZES[0], generator=g)
    y = torch.randint(0, SIZES[-1], (batch,), generator=g)
    if method == "backprop":
        rule = Backprop(model)
    else:
        rule = EquilibriumPropagation(
            model, compile="compiled" in method, symmetric="symmetric" in method
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        rule.backward(x, y, "square")
        optimizer.step()

    return step


def best_rates(steps: dict, seconds: float, rounds: int = 5) -> dict:
    """Examples per second of each configuration: warmed up (compilation included), then timed in
    ``rounds`` rounds that visit every configuration in turn for ``seconds / rounds`` each; the
    fastest block counts (the least disturbed by other work on the machine, as ``timeit``
    recommends, and round-robin so that a busy spell does not fall on one configuration only)."""
    for step, _ in steps.values():
        for _ in range(3):
            step()
    best = dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for key, (step, batch) in steps.items():
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / rounds:
                step()
                count += 1
            best[key] = max(best[key], count * batch / elapsed)
    return best


def check_compiled_equals_eager() -> float:
    g = torch.Generator().manual_seed(1)
    model = MLP(SIZES, generator=g)
    x = torch.rand(20, SIZES[0], generator=g)
    y = torch.randint(0, SIZES[-1], (20,), generator=g)
    grads = []
    for compile in (False, True):
        model.zero_grad()
        EquilibriumPropagation(model, compile=compile).backward(x, y)
        grads.append([p.grad.clone() for p in model.parameters()])
    worst = max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))
    if worst > 1e-4:
        raise SystemExit(f"compiled and eager EP gradients differ by {worst:.2e}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per configuration")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    worst = check_compiled_equals_eager()
    methods = ["backprop", "ep", "ep compiled", "ep symmetric", "ep symmetric compiled"]
    steps = {(m, b): (step_fn(m, b), b) for b in args.batches for m in methods}
    rates = best_rates(steps, args.seconds)

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32, CPU")  # fmt: skip
    print(f"784-500-10, one training step (zero_grad + backward + SGD step); EP: 20 free + 4 "
          f"nudged steps, dt 0.5; compiled == eager to {worst:.1e}")  # fmt: skip
    print()
    print("| method | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("| --- |" + " --- |" * len(args.batches))
    for m in methods:
        cells = []
        for b in args.batches:
            rate = rates[(m, b)]
            ratio = rate / rates[("backprop", b)]
            cells.append(f"{rate:9.0f} ex/s" + ("" if m == "backprop" else f" ({ratio:.2f}x)"))
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
