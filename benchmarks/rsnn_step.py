"""Seconds per training step of a recurrent spiking network: our BPTT and e-prop, and snnTorch's
and SpikingJelly's BPTT when they are installed in the benchmark's environment (never
dependencies).

    python benchmarks/rsnn_step.py [--size evidence|pattern] [--repeats 5] [--threads 2]
                                   [--backends torch,numba]

Sizes (the e-prop sheet's): ``evidence`` 40 inputs, 100 neurons (50 ALIF), 2 outputs, T 2250,
batch 64; ``pattern`` 100 inputs, 100 LIF, 1 output, T 1000, batch 1. A step is the gradient of
one batch (forward and backward, or e-prop's forward pass with its traces, the trial as one
segment as the experiments run it; online: an update every 250 steps) plus an Adam step;
the median of ``--repeats`` after one warm-up. snnTorch's step is an ``RLeaky`` recurrent layer
(all-to-all recurrence, subtractive reset) and a leaky readout in a plain time loop, BPTT by
autograd, as its tutorials write it. SpikingJelly's is its ``LIFNode`` (tau 20, subtractive
reset) with a recurrent ``Linear`` in the same loop. (Its ``LinearRecurrentContainer`` in
multi-step mode slices a sequence that requires grad step by step, which makes the backward pass
quadratic in T: about 60 s per step here, so the loop is written out.) Our rows run once per
backend: ``torch`` (the step functions in a Python loop; BPTT by autograd), ``numba`` (the
compiled time loop of ``kernels``; BPTT's backward as its adjoint recursion) and ``triton`` (the
fused GPU kernels; pass ``--device cuda``). The figures in docs/rules/eprop.md come from here.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from neuroplastic.credit.eprop import EProp
from neuroplastic.models.rsnn import RecurrentLIF

SIZES = {
    "evidence": {"n_in": 40, "n_rec": 100, "n_ad": 50, "n_out": 2, "steps": 2250, "batch": 64},
    "pattern": {"n_in": 100, "n_rec": 100, "n_ad": 0, "n_out": 1, "steps": 1000, "batch": 1},
}


def ours(rule: str, size: dict, backend: str):
    model = RecurrentLIF(size["n_in"], size["n_rec"], size["n_out"], n_adaptive=size["n_ad"],
                         refractory=5, detach_reset=rule != "bptt", backend=backend,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(size["batch"], size["steps"], size["n_in"], generator=gen) < 0.02).float()
    target = torch.randn(size["batch"], size["steps"], size["n_out"], generator=gen)
    eprop = None
    if rule.startswith("eprop"):  # the trial as one segment, as the experiments run it
        eprop = EProp(model, regularisation=1.0, backend=backend, segment=size["steps"])
    if rule == "eprop-online":
        return lambda: eprop.online(x, target, optimizer, every=250)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if eprop is not None:
            eprop.backward(x, target)
        else:
            y, z = model(x)
            loss = (
                0.5 * (y - target).pow(2).sum() / size["batch"]
                + (z.mean((0, 1)) - 0.01).pow(2).sum()
            )
            loss.backward()
        optimizer.step()

    return step


def snntorch_step(size: dict):
    import snntorch as snn

    torch.manual_seed(0)
    fc_in = torch.nn.Linear(size["n_in"], size["n_rec"])
    lif = snn.RLeaky(beta=0.95, linear_features=size["n_rec"], reset_mechanism="subtract")
    readout = torch.nn.Linear(size["n_rec"], size["n_out"])
    params = [*fc_in.parameters(), *lif.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(size["steps"], size["batch"], size["n_in"], generator=gen) < 0.02).float()
    target = torch.randn(size["steps"], size["batch"], size["n_out"], generator=gen)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        spk, mem = lif.init_rleaky()
        y = torch.zeros(size["batch"], size["n_out"])
        loss = 0.0
        for t in range(size["steps"]):
            spk, mem = lif(fc_in(x[t]), spk, mem)
            y = 0.95 * y + readout(spk)
            loss = loss + 0.5 * (y - target[t]).pow(2).sum() / size["batch"]
        loss.backward()
        optimizer.step()

    return step


def spikingjelly_step(size: dict):
    from spikingjelly.activation_based import functional, neuron

    torch.manual_seed(0)
    fc_in = torch.nn.Linear(size["n_in"], size["n_rec"])
    fc_rec = torch.nn.Linear(size["n_rec"], size["n_rec"], bias=False)
    lif = neuron.LIFNode(tau=20.0, decay_input=False, v_reset=None)
    readout = torch.nn.Linear(size["n_rec"], size["n_out"])
    params = [*fc_in.parameters(), *fc_rec.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(size["steps"], size["batch"], size["n_in"], generator=gen) < 0.02).float()
    target = torch.randn(size["steps"], size["batch"], size["n_out"], generator=gen)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        functional.reset_net(lif)
        spk = torch.zeros(size["batch"], size["n_rec"])
        y = torch.zeros(size["batch"], size["n_out"])
        loss = 0.0
        for t in range(size["steps"]):
            spk = lif(fc_in(x[t]) + fc_rec(spk))
            y = 0.95 * y + readout(spk)
            loss = loss + 0.5 * (y - target[t]).pow(2).sum() / size["batch"]
        loss.backward()
        optimizer.step()

    return step


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="evidence")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backends", default="torch,numba", help="comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    print(f"# {args.size} size {size}; {platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads; median of {args.repeats}")  # fmt: skip
    print("| step | seconds |")
    print("| --- | --- |")
    for backend in args.backends.split(","):
        for rule in ("bptt", "eprop", "eprop-online"):
            seconds = median_seconds(ours(rule, size, backend), args.repeats)
            print(f"| neuroplastic {rule} ({backend}) | {seconds:.3f} |", flush=True)
    peers = {
        "snnTorch RLeaky BPTT": (snntorch_step, "snntorch"),
        "SpikingJelly LIFNode BPTT": (spikingjelly_step, "spikingjelly"),
    }
    for label, (build, package) in peers.items():
        try:
            seconds = median_seconds(build(size), args.repeats)
        except ImportError:
            print(f"| {label} | not installed (pip install {package} in a bench venv) |")
            continue
        print(f"| {label} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
