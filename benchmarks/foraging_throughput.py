"""Throughput of the foraging agents (``models.forager``) in their worlds: agents x movement
cycles per second, for a range of agent counts, in the three kinds of cycle the experiment runs
(training with reward-modulated STDP, sleep, and testing without plasticity).

    python benchmarks/foraging_throughput.py                      # CPU, 10 to 80 agents
    python benchmarks/foraging_throughput.py --device cuda --agents 80 640 5120
    python benchmarks/foraging_throughput.py --backend torch numba   # the compiled CPU cycle

A cycle is 600 steps of 0.5 ms; steps per second = cycles per second x 600. The worlds step in
NumPy on the CPU whatever the device (one move per agent per cycle).
"""

from __future__ import annotations

import argparse
import time

import torch

from neuroplastic.envs import ForagingWorlds
from neuroplastic.experiments import foraging_protocol as protocol
from neuroplastic.models.forager import Forager, ForagerParameters


def measure(agents: int, cycles: int, device: str, backend: str = "torch") -> dict[str, float]:
    params = ForagerParameters()
    agent = Forager(agents, params, seed=0, device=device)
    worlds = ForagingWorlds(agents, "unsupervised", seed=0)
    foragers = protocol.Foragers(agent, worlds, torch.Generator().manual_seed(0))
    protocol.unsupervised_phase(foragers, 20)  # shapes the hidden layer's activity first
    rule = protocol.output_rule(foragers, gain=300.0)
    protocol.task_phase(foragers, "task1", 5, rule, backend=backend)  # warm-up (and compile)
    protocol.sleep_phase(foragers, protocol.Sleep(1), rule, backend=backend)
    rates = {}
    for kind in ("training", "sleep", "test"):
        _sync(device)
        start = time.perf_counter()
        if kind == "training":
            protocol.task_phase(foragers, "task1", cycles, rule, backend=backend)
        elif kind == "sleep":
            protocol.sleep_phase(foragers, protocol.Sleep(cycles), rule, backend=backend)
        else:
            protocol.test_phase(foragers, "task1", cycles, seed=1, backend=backend)
        _sync(device)
        rates[kind] = agents * cycles / (time.perf_counter() - start)
    return rates


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--agents", type=int, nargs="+", default=[10, 20, 40, 80])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--backend", nargs="+", default=["torch"], choices=protocol.BACKENDS,
                        help="numba: the compiled cycles (training, sleep and tests)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"foraging throughput on {args.device}: agents x cycles per second (600 steps each)")
    print("| backend | agents | training | sleep | test |")
    print("|---|---|---|---|---|")
    for backend in args.backend:
        for agents in args.agents:
            rates = measure(agents, args.cycles, args.device, backend)
            cells = " | ".join(f"{rates[kind]:.0f}" for kind in ("training", "sleep", "test"))
            print(f"| {backend} | {agents} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
