"""Memory of one training step against trial length: BPTT against e-prop, on the
evidence-accumulation network (40 inputs, 50 LIF + 50 ALIF, 2 readouts, batch 64).

    python benchmarks/rsnn_memory.py [--steps 2250 4500 9000 22500 100000] [--bptt-max 9000]
                                     [--backend auto|torch|numba|triton]

Each (rule, T) runs in a fresh process, which reports
- its peak resident memory (``ru_maxrss``) minus the process's resident memory before the step
  (PyTorch, the compiled kernels and the inputs loaded, after a 20-step warm-up): what the step
  itself added;
- the learning state in bytes: for BPTT the tensors autograd saved for the backward pass (counted
  through ``saved_tensors_hooks``, each storage once), for e-prop its traces plus the per-neuron
  history of one segment (computed from the shapes).
``--backend triton`` runs on the GPU and reports the peak of ``torch.cuda.max_memory_allocated``
above what was allocated before the step instead of the resident memory. e-prop runs segmented
with ``--segment`` steps (the default 500), so its memory should not grow with T; BPTT's grows
linearly. BPTT is skipped beyond ``--bptt-max`` steps (about 0.4 MB of saved
tensors per step at this size: 22,500 steps would take about 9 GB). The figures in
docs/experiments/bellec2020-evidence.md come from here.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

import torch


def kib_now() -> int:
    """Resident memory now, in KiB (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def one(rule: str, steps: int, segment: int, batch: int, backend: str) -> dict:
    from neuroplastic.credit.eprop import EProp
    from neuroplastic.models.rsnn import RecurrentLIF

    torch.set_num_threads(1)
    device = "cuda" if backend == "triton" else "cpu"
    model = RecurrentLIF(40, 100, 2, n_adaptive=50, refractory=5, detach_reset=rule == "eprop",
                         generator=torch.Generator().manual_seed(0), backend=backend)  # fmt: skip
    model = model.to(device)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(batch, steps, 40, generator=gen) < 0.02).float().to(device)
    labels = torch.randint(0, 2, (batch,), generator=gen).to(device)
    mask = torch.zeros(steps, device=device)
    mask[-150:] = 1 / 150
    # Warm-up on a 20-step trial: loads the compiled kernels (Numba's code, about 100 MiB, is
    # the library's, not the step's) before the baseline is taken.
    short = x[:2, :20]
    if rule == "bptt":
        model(short)[0].sum().backward()
        model.zero_grad()
    else:
        EProp(model, backend=backend).gradients(short, torch.zeros(2, 20, 2, device=device))
    before = kib_now()
    if device == "cuda":  # GPU memory instead: what the step allocates beyond what is held
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 1024
    if rule == "bptt":
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor):
            saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, _ = model(x)
            window = y[:, -150:].flatten(0, 1)
            loss = torch.nn.functional.cross_entropy(window, labels.repeat_interleave(150))
        loss.backward()
        state = sum(saved.values())
    else:
        eprop = EProp(model, loss="cross_entropy", regularisation=1.0, segment=segment,
                      backend=backend)  # fmt: skip
        eprop.backward(x, labels, mask)
        n_pre, n_ad = 40 + 100, 50
        traces = batch * (100 * n_pre + n_ad * n_pre + 2 * 100 + n_pre) * 4
        history = min(segment, steps) * batch * (100 + n_pre + 100 + 2) * 4
        state = traces + history
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1024
    return {"rule": rule, "steps": steps, "added_mib": (peak - before) / 1024,
            "state_mib": state / 2**20}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[2250, 4500, 9000, 22500, 100000])
    parser.add_argument("--bptt-max", type=int, default=9000)
    parser.add_argument("--segment", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rules", nargs="+", default=["bptt", "eprop"], choices=["bptt", "eprop"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "numba", "triton"])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        rule, steps = args.one[0], int(args.one[1])
        print(json.dumps(one(rule, steps, args.segment, args.batch, args.backend)))
        return
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"batch {args.batch}, e-prop segment {args.segment}, backend {args.backend}")  # fmt: skip
    print("| rule | T | memory added by the step (MiB) | learning state (MiB) |")
    print("| --- | --- | --- | --- |")
    for steps in args.steps:
        for rule in args.rules:
            if rule == "bptt" and steps > args.bptt_max:
                print(f"| bptt | {steps} | skipped (> --bptt-max) | |")
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--one", rule, str(steps), "--segment",
                 str(args.segment), "--batch", str(args.batch), "--backend", args.backend],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            r = json.loads(out.strip().splitlines()[-1])
            print(f"| {rule} | {steps} | {r['added_mib']:.0f} | {r['state_mib']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
