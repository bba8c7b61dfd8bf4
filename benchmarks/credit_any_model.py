"""Step time of FA, DFA and sign symmetry attached to a user's model, against plain backprop.

    python benchmarks/credit_any_model.py [--models lenet mlp] [--batches 64 256] [--threads 1 2]
        [--rounds 60] [--inner 5] [--warmup 10] [--device cpu|cuda] [--no-biotorch] [--markdown]

One step is what a user's training loop does: ``optimizer.zero_grad()``, forward, mean
cross-entropy, ``loss.backward()``, ``SGD.step()``, on random data of MNIST shape (784 inputs, 10
classes; no download). The models are ``neuroplastic.models.lenet.LeNet5`` (a CNN: two
convolutions, three linear layers) and ``neuroplastic.models.mlp.MLP((784, 500, 500, 10),
"tanh")``. Methods, each on its own copy of the model (same initial weights, same batch):

* ``backprop``: the plain model, no rule attached (the reference of every ratio);
* ``fa``, ``dfa``, ``sign-symmetry``: ``FeedbackAlignment``, ``DirectFeedbackAlignment`` and
  ``SignSymmetry(variant="usf")`` attached by their forward hooks;
* ``biotorch:<mode>``: the same model converted by ``biotorch.module.biomodule.BioModule(model,
  mode=...)`` (modes ``backpropagation``, ``fa``, ``dfa``, ``usf``), when biotorch imports; its
  DFA forward takes ``targets`` and ``loss_function`` (it computes the loss gradient itself).

After ``--warmup`` steps of every method, ``--rounds`` rounds each time ``--inner`` consecutive
steps of every method, the methods in a fresh random order each round (so slow spells of a shared
machine fall on all of them). Reported per (model, batch, threads): the median milliseconds per
step, the ratio of that median to backprop's, and the quartiles of the per-round ratio (the method's
time over backprop's in the same round) as the noise band. The goal is every neuroplastic rule
within 1.3x of backprop. The figures in docs/rules/speed.md come from here.

biotorch is not a dependency of this project: install it with ``pip install biotorch --no-deps``
into a separate environment that sees this one (``python -m venv --system-site-packages``) and run
the script with that environment's python; without it those rows are skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import os
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from neuroplastic.credit import DirectFeedbackAlignment, FeedbackAlignment, SignSymmetry
from neuroplastic.models.lenet import LeNet5
from neuroplastic.models.mlp import MLP

MODELS = {"lenet": "LeNet-5 (CNN)", "mlp": "MLP 784-500-500-10"}
RULES = {
    "fa": lambda model: FeedbackAlignment(model, generator=torch.Generator().manual_seed(1)),
    "dfa": lambda model: DirectFeedbackAlignment(model, generator=torch.Generator().manual_seed(1)),
    "sign-symmetry": lambda model: SignSymmetry(model, variant="usf"),
}
BIOTORCH_MODES = ("backpropagation", "fa", "dfa", "usf")
GOAL = 1.3


def build_model(name: str) -> nn.Module:
    """The same initial weights every time (LeNet5 draws from torch's global generator)."""
    torch.manual_seed(0)
    if name == "lenet":
        return LeNet5(activation="tanh")
    if name == "mlp":
        return MLP((784, 500, 500, 10), "tanh", generator=torch.Generator().manual_seed(0))
    raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_biotorch():
    """``BioModule``, or the reason it cannot be used."""
    try:
        from biotorch.module.biomodule import BioModule
    except Exception as error:  # ImportError, or a missing dependency failing at import
        return None, f"{type(error).__name__}: {error}"
    return BioModule, None


def make_step(method: str, model_name: str, x: torch.Tensor, y: torch.Tensor, device,
              bio_module=None) -> Callable[[], None]:  # fmt: skip
    """A closure taking one training step of ``method`` on its own model."""
    model = build_model(model_name)
    keep = None  # the attached rule lives as long as the closure
    forward = model
    if method in RULES:
        model = model.to(device)
        keep = RULES[method](model)
        forward = model
    elif method.startswith("biotorch:"):
        mode = method.split(":", 1)[1]
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a conversion report
            forward = bio_module(model, mode=mode, output_dim=10 if mode == "dfa" else None)
        forward = forward.to(device)
        model = forward
    elif method == "backprop":
        model = model.to(device)
        forward = model
    else:
        raise ValueError(f"unknown method {method!r}")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    biotorch_dfa = method == "biotorch:dfa"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if biotorch_dfa:
            logits = forward(x, targets=y, loss_function=F.cross_entropy)
        else:
            logits = forward(x)
        F.cross_entropy(logits, y).backward()
        optimizer.step()

    step.rule = keep
    return step


def measure(steps: dict[str, Callable[[], None]], rounds: int, inner: int, warmup: int,
            device) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per step of every method, one figure per round, methods interleaved."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            step = steps[name]
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                step()
            sync()
            times[name].append((time.perf_counter() - start) / inner)
    return times


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch.set_num_threads values (CPU); ignored on cuda")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--inner", type=int, default=5, help="consecutive steps timed together")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-biotorch", action="store_true", help="skip biotorch's rows")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available to this torch")

    methods = ["backprop", *RULES]
    bio_module, reason = (None, "--no-biotorch") if args.no_biotorch else load_biotorch()
    if bio_module is not None:
        import biotorch

        methods += [f"biotorch:{mode}" for mode in BIOTORCH_MODES]
        bio_note = f"biotorch {importlib.metadata.version('biotorch')} from {biotorch.__file__}"
    else:
        bio_note = f"biotorch rows skipped ({reason})"
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    print(f"machine: {name}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, device "
          f"{device}; {bio_note}")  # fmt: skip
    print(f"{args.rounds} rounds x {args.inner} steps per method, after {args.warmup} warm-up "
          "steps; methods shuffled each round")  # fmt: skip

    thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    if args.markdown:
        print("\n| model | batch | threads | method | ms/step (median) | x backprop "
              "| per-round ratio q1-q3 |")  # fmt: skip
        print("|---|---:|---:|---|---:|---:|---|")
    else:
        print(f"\n{'model':<20}{'batch':>6}{'thr':>4}  {'method':<26}{'ms/step':>9}"
              f"{'x backprop':>11}  {'ratio q1-q3':<12}")  # fmt: skip
    verdict: list[tuple[str, float]] = []
    for model_name in args.models:
        for batch in args.batches:
            g = torch.Generator().manual_seed(2)
            x = torch.rand(batch, 784, generator=g).to(device)
            y = torch.randint(0, 10, (batch,), generator=g).to(device)
            with warnings.catch_warnings():
                # biotorch's DFA layers use the deprecated Module.register_backward_hook
                warnings.simplefilter("ignore")
                steps = {m: make_step(m, model_name, x, y, device, bio_module) for m in methods}
                for threads in thread_counts:
                    if device.type == "cpu":
                        torch.set_num_threads(threads)
                    times = measure(steps, args.rounds, args.inner, args.warmup, device)
                    base = statistics.median(times["backprop"])
                    for method in methods:
                        median = statistics.median(times[method])
                        paired = [t / b for t, b in zip(times[method], times["backprop"],
                                                        strict=True)]  # fmt: skip
                        q1, q3 = quartiles(paired)
                        ratio = median / base
                        if method in RULES:
                            verdict.append((f"{model_name} b{batch} t{threads} {method}", ratio))
                        row = (MODELS[model_name], batch, threads, method, 1e3 * median, ratio)
                        if args.markdown:
                            print("| {} | {} | {} | {} | {:.2f} | {:.2f} | ".format(*row)
                                  + f"{q1:.2f}-{q3:.2f} |")  # fmt: skip
                        else:
                            print("{:<20}{:>6}{:>4}  {:<26}{:>9.2f}{:>10.2f}x  ".format(*row)
                                  + f"{q1:.2f}-{q3:.2f}")  # fmt: skip
    over = [(label, r) for label, r in verdict if r > GOAL]
    worst = max(verdict, key=lambda item: item[1])
    print(f"\ngoal: every neuroplastic rule within {GOAL}x of backprop: "
          f"{'met' if not over else 'NOT met'} (worst {worst[0]}: {worst[1]:.2f}x)")  # fmt: skip
    for label, r in over:
        print(f"  over: {label}: {r:.2f}x")


if __name__ == "__main__":
    main()
