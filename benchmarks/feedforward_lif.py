"""The open-neuromorphic SNN library benchmark: one Linear layer into a layer of LIF neurons,
forward and backward, seconds per step. Our fused kernels against the peers installed in the
benchmark's environment (never dependencies).

    python benchmarks/feedforward_lif.py [--neurons 16384] [--batch 16] [--steps 500]
                                         [--device cuda] [--repeats 5]

The set-up as the sheet reports it: 16k neurons, batch 16, T 500, forward and backward (the
loss is the sum of the spikes, so that every time step's gradient is used). Input width = the
number of neurons, inputs Poisson at 5 %. Published on a GPU (the sheet): Spyx (JAX) 0.077 s,
Norse with torch.compile 0.110 s, SpikingJelly CuPy 0.118 s, snnTorch 3.08 s.

Rows: ``neuroplastic`` (the input projection as one matrix product, then the LIF loop as one
fused Triton kernel on a GPU or compiled Numba loop on the CPU, its backward the written-out
adjoint), ``plain loop`` (our step functions in a Python loop, autograd), snnTorch ``Leaky``,
SpikingJelly's multi-step ``LIFNode`` (its ``torch`` backend, and ``cupy`` where it installs),
Norse's ``LIF`` module. The neurons: tau 20 steps, threshold 1, subtractive reset where the
library offers it.
"""

from __future__ import annotations

import argparse

import torch
from rsnn_step import median_seconds  # the same timing as the recurrent benchmark

from neuroplastic.kernels import resolve_backend
from neuroplastic.kernels.rsnn_functions import RecurrentSpikes
from neuroplastic.neurons.lif import LIFParameters, initial_state, lif_step
from neuroplastic.neurons.surrogate import bellec2020_pseudo_derivative

ALPHA = float(torch.exp(torch.tensor(-1 / 20)))


def setup(args):
    torch.manual_seed(0)
    layer = torch.nn.Linear(args.neurons, args.neurons, bias=False).to(args.device)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(args.steps, args.batch, args.neurons, generator=gen) < 0.05).float()
    return layer, x.to(args.device)


def ours(args):
    layer, x = setup(args)
    backend = resolve_backend("auto", args.device)
    beta = torch.zeros(args.neurons, device=args.device)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        current = x @ layer.weight.T  # (T, batch, n): one product for all steps
        spikes = RecurrentSpikes.apply(
            current, None, beta, ALPHA, 1.0, 0, 0.0, 0.3, True, backend
        )
        spikes.sum().backward()

    return step


def plain_loop(args):
    layer, x = setup(args)
    params = LIFParameters(ALPHA, 1.0, 0, 0.0, 0.0, True)
    spike = bellec2020_pseudo_derivative(0.3)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        state = initial_state(args.batch, args.neurons, device=args.device)
        total = 0.0
        for x_t in x:
            z, state = lif_step(layer(x_t), state, params, spike)
            total = total + z.sum()
        total.backward()

    return step


def snntorch_step(args):
    import snntorch as snn

    layer, x = setup(args)
    lif = snn.Leaky(beta=ALPHA, reset_mechanism="subtract").to(args.device)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        mem = lif.init_leaky()
        total = 0.0
        for x_t in x:
            spk, mem = lif(layer(x_t), mem)
            total = total + spk.sum()
        total.backward()

    return step


def spikingjelly_step(backend: str):
    def build(args):
        from spikingjelly.activation_based import functional, neuron

        layer, x = setup(args)
        options = {} if backend == "torch" else {"backend": backend}
        try:
            lif = neuron.LIFNode(tau=20.0, decay_input=False, v_reset=None, step_mode="m",
                                 **options).to(args.device)  # fmt: skip
        except TypeError as error:  # versions without a backend choice
            raise ImportError(f"this SpikingJelly has no {backend} backend") from error

        def step() -> None:
            layer.zero_grad(set_to_none=True)
            functional.reset_net(lif)
            lif(layer(x)).sum().backward()

        return step

    return build


def norse_step(args):
    import norse.torch as norse

    layer, x = setup(args)
    lif = norse.LIF(norse.LIFParameters(tau_mem_inv=torch.tensor(1 / 20 / 1e-3))).to(args.device)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        spikes, _ = lif(layer(x))
        spikes.sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"# Linear + LIF, {args.neurons} neurons, batch {args.batch}, T {args.steps}; "
          f"{machine}, torch {torch.__version__}; median of {args.repeats}")  # fmt: skip
    print("| library | seconds per forward + backward |")
    print("| --- | --- |")
    rows = {
        "neuroplastic (fused kernel)": (ours, "neuroplastic"),
        "neuroplastic step functions, plain loop": (plain_loop, "neuroplastic"),
        "snnTorch Leaky": (snntorch_step, "snntorch"),
        "SpikingJelly LIFNode (torch)": (spikingjelly_step("torch"), "spikingjelly"),
        "Norse LIF": (norse_step, "norse"),
    }
    if args.device.startswith("cuda"):
        rows["SpikingJelly LIFNode (cupy)"] = (spikingjelly_step("cupy"), "spikingjelly cupy")
    for label, (build, package) in rows.items():
        try:
            seconds = median_seconds(build(args), args.repeats, args.device)
        except ImportError as error:
            print(f"| {label} | not installed ({package}): {error} |")
            continue
        print(f"| {label} | {seconds:.4f} |", flush=True)


if __name__ == "__main__":
    main()
