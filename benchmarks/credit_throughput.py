"""Training throughput of every credit-assignment rule against backprop, on the same network.

    python benchmarks/credit_throughput.py [--hidden 500 500] [--batch 100] [--seconds 3]

For each rule in ``neuroplastic.credit.RULES``: examples per second of a full training step
(``zero_grad``, ``rule.backward``, ``SGD.step``) on random MNIST-shaped data, after a warm-up.
Equilibrium propagation runs on ``--ep-hidden`` (its settling loop is the expensive part), so its
ratio is against backprop on that network. The figures in docs/experiments/credit-mnist.md come
from here.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from neuroplastic.credit import RULES, Backprop
from neuroplastic.models.mlp import MLP


def throughput(rule_name: str, sizes: tuple[int, ...], batch: int, seconds: float, device) -> float:
    model = MLP(sizes, "tanh", torch.Generator().manual_seed(0)).to(device)
    rule = RULES[rule_name](model, generator=torch.Generator().manual_seed(1))
    supported = getattr(rule, "supported_losses", ("cross_entropy",))
    loss = "cross_entropy" if "cross_entropy" in supported else supported[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(batch, sizes[0], generator=g).to(device)
    y = torch.randint(0, sizes[-1], (batch,), generator=g).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        rule.backward(x, y, loss)
        optimizer.step()

    for _ in range(3):  # warm-up
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[500, 500])
    parser.add_argument("--ep-hidden", type=int, nargs="+", default=[500])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = (784, *args.hidden, 10)
    ep_sizes = (784, *args.ep_hidden, 10)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch}")  # fmt: skip
    reference = {
        sizes: throughput("backprop", sizes, args.batch, args.seconds, device),
        ep_sizes: throughput("backprop", ep_sizes, args.batch, args.seconds, device),
    }
    print(f"{'rule':<26}{'network':<18}{'examples/s':>12}{'vs backprop':>13}")
    for name in RULES:
        net = ep_sizes if name == "equilibrium-propagation" else sizes
        rate = (
            reference[net]
            if RULES[name] is Backprop
            else throughput(name, net, args.batch, args.seconds, device)
        )
        label = "-".join(map(str, net))
        print(f"{name:<26}{label:<18}{rate:>12.0f}{rate / reference[net]:>12.2f}x")


if __name__ == "__main__":
    main()
