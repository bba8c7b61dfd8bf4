"""Seconds per training step of a recurrent spiking network: our BPTT and e-prop on each backend,
and the peers' BPTT where they are installed in the benchmark's environment (never dependencies):
snnTorch, SpikingJelly, Norse, and on a GPU our plain PyTorch loop captured as a CUDA graph.

    python benchmarks/rsnn_step.py [--size evidence|pattern|pattern-600|speech|wide]
                                   [--device cpu|cuda] [--repeats 5] [--threads 2]
                                   [--backends torch,numba] [--steps T] [--batch B]

Sizes: ``evidence`` 40 inputs, 100 neurons (50 ALIF), 2 outputs, T 2250, batch 64 (the e-prop
sheet's evidence accumulation); ``pattern`` 100-100-1, T 1000, batch 1 (our pattern-generation
experiment); and the sheet's speed anchors ``pattern-600`` 100-600-3, T 1000, batch 1;
``speech`` 39-800-61, T 700, batch 32; ``wide`` 200-2048-10, T 1000, batch 256. ``--steps`` and
``--batch`` shrink a size for a smoke test. A step is the gradient of one batch (forward and
backward, or e-prop's forward pass with its traces, the trial as one segment as the experiments
run it; online: an update every 250 steps) plus an Adam step; the median of ``--repeats`` after
one warm-up, synchronised on a GPU. Our rows run once per backend: ``torch`` (the step functions
in a plain Python loop; BPTT by autograd), ``numba`` (CPU: the compiled time loop of
``kernels``; BPTT's backward as its adjoint recursion), ``triton`` (GPU: the fused kernels).

The peers, each as its tutorials write a recurrent layer, with a leaky readout, in a plain time
loop and BPTT by autograd: snnTorch's ``RLeaky`` (all-to-all recurrence, subtractive reset);
SpikingJelly's ``LIFNode`` (tau 20, subtractive reset) with a recurrent ``Linear`` (its
``LinearRecurrentContainer`` in multi-step mode slices a sequence that requires grad step by
step, which makes the backward pass quadratic in T, about 60 s per step at evidence size on the
CPU, so the loop is written out); Norse's ``LIFRecurrentCell``. ``cuda-graph``: our ``torch``
BPTT step (forward, backward and Adam) captured once as a CUDA graph and replayed, what graph
capture alone buys. The figures in docs/rules/eprop.md and docs/kernels.md come from here.
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
    "pattern-600": {"n_in": 100, "n_rec": 600, "n_ad": 0, "n_out": 3, "steps": 1000, "batch": 1},
    "speech": {"n_in": 39, "n_rec": 800, "n_ad": 0, "n_out": 61, "steps": 700, "batch": 32},
    "wide": {"n_in": 200, "n_rec": 2048, "n_ad": 0, "n_out": 10, "steps": 1000, "batch": 256},
}


def inputs(size: dict, device: str, time_first: bool = False):
    """The same Poisson inputs and Gaussian targets for every contestant."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(size["batch"], size["steps"], size["n_in"], generator=gen) < 0.02).float()
    target = torch.randn(size["batch"], size["steps"], size["n_out"], generator=gen)
    if time_first:
        x, target = x.transpose(0, 1).contiguous(), target.transpose(0, 1).contiguous()
    return x.to(device), target.to(device)


def network(size: dict, rule: str, backend: str, device: str) -> RecurrentLIF:
    return RecurrentLIF(size["n_in"], size["n_rec"], size["n_out"], n_adaptive=size["n_ad"],
                        refractory=5, detach_reset=rule != "bptt", backend=backend,
                        generator=torch.Generator().manual_seed(0)).to(device)  # fmt: skip


def bptt_loss(model: RecurrentLIF, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    y, z = model(x)
    return 0.5 * (y - target).pow(2).sum() / x.shape[0] + (z.mean((0, 1)) - 0.01).pow(2).sum()


def ours(rule: str, size: dict, backend: str, device: str = "cpu"):
    model = network(size, rule, backend, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, target = inputs(size, device)
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
            bptt_loss(model, x, target).backward()
        optimizer.step()

    return step


def cuda_graph_step(size: dict, device: str):
    """Our ``torch`` BPTT step captured whole (forward, backward, Adam) as one CUDA graph."""
    model = network(size, "bptt", "torch", device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    x, target = inputs(size, device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, as capture requires
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            bptt_loss(model, x, target).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        bptt_loss(model, x, target).backward()
        optimizer.step()
    return graph.replay


def snntorch_step(size: dict, device: str):
    import snntorch as snn

    torch.manual_seed(0)
    fc_in = torch.nn.Linear(size["n_in"], size["n_rec"]).to(device)
    lif = snn.RLeaky(beta=0.95, linear_features=size["n_rec"], reset_mechanism="subtract")
    lif = lif.to(device)
    readout = torch.nn.Linear(size["n_rec"], size["n_out"]).to(device)
    params = [*fc_in.parameters(), *lif.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x, target = inputs(size, device, time_first=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        spk, mem = lif.init_rleaky()
        y = torch.zeros(size["batch"], size["n_out"], device=device)
        loss = 0.0
        for t in range(size["steps"]):
            spk, mem = lif(fc_in(x[t]), spk, mem)
            y = 0.95 * y + readout(spk)
            loss = loss + 0.5 * (y - target[t]).pow(2).sum() / size["batch"]
        loss.backward()
        optimizer.step()

    return step


def spikingjelly_step(size: dict, device: str):
    from spikingjelly.activation_based import functional, neuron

    torch.manual_seed(0)
    fc_in = torch.nn.Linear(size["n_in"], size["n_rec"]).to(device)
    fc_rec = torch.nn.Linear(size["n_rec"], size["n_rec"], bias=False).to(device)
    lif = neuron.LIFNode(tau=20.0, decay_input=False, v_reset=None)
    readout = torch.nn.Linear(size["n_rec"], size["n_out"]).to(device)
    params = [*fc_in.parameters(), *fc_rec.parameters(), *readout.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x, target = inputs(size, device, time_first=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        functional.reset_net(lif)
        spk = torch.zeros(size["batch"], size["n_rec"], device=device)
        y = torch.zeros(size["batch"], size["n_out"], device=device)
        loss = 0.0
        for t in range(size["steps"]):
            spk = lif(fc_in(x[t]) + fc_rec(spk))
            y = 0.95 * y + readout(spk)
            loss = loss + 0.5 * (y - target[t]).pow(2).sum() / size["batch"]
        loss.backward()
        optimizer.step()

    return step


def norse_step(size: dict, device: str):
    import norse.torch as norse

    torch.manual_seed(0)
    cell = norse.LIFRecurrentCell(size["n_in"], size["n_rec"]).to(device)
    readout = torch.nn.Linear(size["n_rec"], size["n_out"]).to(device)
    optimizer = torch.optim.Adam([*cell.parameters(), *readout.parameters()], lr=1e-3)
    x, target = inputs(size, device, time_first=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        state, loss = None, 0.0
        y = torch.zeros(size["batch"], size["n_out"], device=device)
        for t in range(size["steps"]):
            spikes, state = cell(x[t], state)
            y = 0.95 * y + readout(spikes)
            loss = loss + 0.5 * (y - target[t]).pow(2).sum() / size["batch"]
        loss.backward()
        optimizer.step()

    return step


def median_seconds(step, repeats: int, device: str = "cpu") -> float:
    def synchronise() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up
    synchronise()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronise()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="evidence")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backends", default=None, help="comma-separated; default by device")
    parser.add_argument("--steps", type=int, default=None, help="override T (smoke tests)")
    parser.add_argument("--batch", type=int, default=None, help="override the batch size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    on_gpu = args.device.startswith("cuda")
    backends = args.backends or ("torch,triton" if on_gpu else "torch,numba")
    size = dict(SIZES[args.size])
    size.update({k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v})
    machine = f"{platform.machine()}, {args.threads} threads"
    if on_gpu:
        machine = torch.cuda.get_device_name()
    print(f"# {args.size} size {size}; {machine}, torch {torch.__version__}; "
          f"median of {args.repeats}")  # fmt: skip
    print("| step | seconds |")
    print("| --- | --- |")
    for backend in backends.split(","):
        for rule in ("bptt", "eprop", "eprop-online"):
            seconds = median_seconds(ours(rule, size, backend, args.device), args.repeats,
                                     args.device)  # fmt: skip
            print(f"| neuroplastic {rule} ({backend}) | {seconds:.4f} |", flush=True)
    peers = {
        "snnTorch RLeaky BPTT": (snntorch_step, "snntorch"),
        "SpikingJelly LIFNode BPTT": (spikingjelly_step, "spikingjelly"),
        "Norse LIFRecurrentCell BPTT": (norse_step, "norse"),
    }
    if on_gpu:
        peers["plain PyTorch loop as a CUDA graph, BPTT"] = (cuda_graph_step, "torch")
    for label, (build, package) in peers.items():
        try:
            step = build(size, args.device)
        except ImportError:
            print(f"| {label} | not installed (pip install {package} in a bench venv) |")
            continue
        print(f"| {label} | {median_seconds(step, args.repeats, args.device):.4f} |", flush=True)


if __name__ == "__main__":
    main()
