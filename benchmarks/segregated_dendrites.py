"""Speed of the segregated-dendrite simulation, against the authors' NumPy code on the same machine.

    python benchmarks/segregated_dendrites.py [--replicas 1 5 20] [--examples 200]
        [--reference PATH/TO/deep_learning.py] [--device cpu]
        [--backend torch numba numba-counter numba-run replicas] [--repeats 3]

Measures, on MNIST images (``$NEUROPLASTIC_DATA`` or the bundled mnist-mini), 784-500-10 with
random feedback and the paper's phase lengths:

* training: a forward phase, a target phase and the plateau update per image, online;
  network-images per second (R networks simulated as one batch of replicas, each seeing its
  own image, count R images per step), for each ``--replicas``;
* testing: a 250-step forward phase per image from a silent network, network-images per second;

each for every ``--backend`` of ``simulate_phase`` (``torch``: vectorised over time steps;
``numba``: the compiled time loop, the ``fast`` extra), on the same images and random streams.
``numba-counter``: the counter-based random stream (``kernels.counter_random``) instead of
torch generators, so that a training example is one compiled call (both phases and the plateau
update, uniforms drawn in the loop) and a test chunk one compiled phase without pre-drawn noise.
``numba-run``: the same stream and kernel, a run of training examples per compiled call
(``learn_examples``, as the experiment trains): nothing returns to Python between examples.
``replicas``: the fixed-shape step of ``kernels.dendrite_replicas`` (all replicas as one batch,
dense products, padded phases), captured as a CUDA graph on a CUDA device (``replicas-eager``:
not captured); its test phases are ``predict``'s torch backend on the counter stream. It is the
path for many replicas on a GPU; on the CPU it is timed to show what it costs there.

With ``--reference`` (a local copy of ``deep_learning.py`` from
jordan-g/Segregated-Dendrite-Deep-Learning; never committed here) the same two figures for the
authors' code, run in spiking mode: the script switches ``nonspiking_mode`` off in memory before
loading it, gives it the same images, and calls its own ``f_phase``/``t_phase``/``test_weights``.
The figures in docs/experiments/guerguiev2017-mnist.md come from here.

Each of ``--repeats`` rounds times the authors' code and then every configuration, back to back;
the table gives the medians and the ratios to the authors' figure of the same round (median and
range): on a shared machine whose speed drifts, a ratio of figures taken moments apart is the
steadier measure.
"""

from __future__ import annotations

import argparse
import platform
import time
import types
from pathlib import Path

import numpy as np
import torch

from neuroplastic.credit.plateau import learn_example, learn_examples
from neuroplastic.errors import DataError
from neuroplastic.experiments.guerguiev2017_mnist import TRAINING_RUN
from neuroplastic.kernels.counter_random import CounterStream
from neuroplastic.kernels.dendrite_replicas import ReplicaTrainer
from neuroplastic.models.segregated_dendrites import (
    SegregatedDendriteNet,
    phase_lengths,
    predict,
)
from neuroplastic.tasks.datasets import load_dataset

RUN = TRAINING_RUN
"""Training images per ``learn_examples`` call in the ``numba-run`` backend: as many as the
experiment's (``guerguiev2017_mnist.TRAINING_RUN``)."""


def streams(backend: str, replicas: int, device):
    """The random streams of ``backend`` (``numba-counter``, ``numba-run``: keys of the
    counter-based stream) and the backend name ``learn_example``/``predict`` take."""
    if backend in ("numba-counter", "numba-run"):
        return CounterStream.of(range(replicas), range(replicas)), "numba"
    if backend.startswith("replicas"):
        return CounterStream.of(range(replicas), range(replicas)), "torch"
    return [torch.Generator(device=device).manual_seed(r) for r in range(replicas)], backend


def ours_training(data, replicas: int, examples: int, device, backend: str) -> float:
    net = SegregatedDendriteNet((784, 500, 10), replicas, "random").to(device)
    params = net.params
    lengths = phase_lengths(params, torch.Generator().manual_seed(0), examples + 5).tolist()
    lengths[examples:] = [(50, 50), (51, 52), (53, 50), (50, 56), (60, 51)]  # warm-up lengths
    order = torch.randint(
        0,
        len(data.train_y),
        (examples + 5, replicas, 1),
        generator=torch.Generator().manual_seed(1),
    )
    state = net.initial_state()
    run = backend in ("numba-run", "replicas", "replicas-eager")
    trainer = None
    if backend.startswith("replicas"):
        graphs = backend == "replicas" and device.type == "cuda"
        trainer = ReplicaTrainer(net, (0.21, 0.21), graphs=graphs)
    gens, backend = streams(backend, replicas, device)

    def step(i: int, count: int = 1):
        """Examples i .. i + count - 1: one ``learn_examples`` call with ``numba-run``, else
        one ``learn_example`` call each."""
        nonlocal state
        index = order[i : i + count, :, 0].T.to(device)  # (R, count)
        x, y = params.phi_max * data.train_x[index], data.train_y[index]
        if trainer is not None:
            stream = gens._replace(example=i)
            state, _ = trainer.learn_examples(state, x, y, stream, lengths[i : i + count])
            return
        if run:
            state, _ = learn_examples(
                net, state, x, y, gens._replace(example=i), lengths[i : i + count],
                (0.21, 0.21), backend=backend,
            )  # fmt: skip
            return
        for e in range(count):
            stream = gens._replace(example=i + e) if isinstance(gens, CounterStream) else gens
            state, _, _ = learn_example(
                net, state, x[:, e : e + 1], y[:, e : e + 1], stream, lengths[i + e],
                (0.21, 0.21), backend=backend,
            )  # fmt: skip

    step(examples, 5)  # warm-up
    sync(device)
    start = time.perf_counter()
    for i in range(0, examples, RUN):
        step(i, min(RUN, examples - i))
    sync(device)
    return examples / (time.perf_counter() - start)


def ours_testing(data, replicas: int, examples: int, device, backend: str) -> float:
    net = SegregatedDendriteNet((784, 500, 10), replicas, "random").to(device)
    gens, backend = streams(backend, replicas, device)
    predict(net, data.test_x[:25], gens, backend=backend)
    sync(device)
    start = time.perf_counter()
    predict(net, data.test_x[:examples], gens, backend=backend)
    sync(device)
    return examples / (time.perf_counter() - start)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_reference(path: Path, data) -> types.ModuleType:
    """The authors' module, switched to spiking mode in memory, with our copy of MNIST."""
    source = path.read_text()
    if "nonspiking_mode         = True" in source:
        source = source.replace("nonspiking_mode         = True", "nonspiking_mode         = False")
    module = types.ModuleType("guerguiev_reference")
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own copy
    x_train, x_test = (
        data.train_x.cpu().numpy().T.astype(float),
        data.test_x.cpu().numpy().T.astype(float),
    )
    t_train = np.eye(10)[data.train_y.cpu().numpy()].T
    t_test = np.eye(10)[data.test_y.cpu().numpy()].T
    module.load_MNIST = lambda n_valid=0: (x_train, t_train, x_test, t_test)
    return module


def reference_training(module, examples: int) -> float:
    np.random.seed(0)
    net = module.Network(n=(500, 10))
    net.f_etas, net.b_etas = (0.21, 0.21), None
    extra = np.random.wald(2, 1, (examples, 2)).astype(int)
    start = time.perf_counter()
    for n in range(examples):
        module.l_f_phase, module.l_t_phase = 50 + extra[n, 0], 50 + extra[n, 1]
        net.x = module.lambda_max * net.x_train[:, n][:, np.newaxis]
        net.t = net.t_train[:, n][:, np.newaxis]
        net.f_phase(net.x, None, n, training=True)
        net.t_phase(net.x, net.t, n)
    return examples / (time.perf_counter() - start)


def reference_testing(module, examples: int) -> float:
    np.random.seed(0)
    net = module.Network(n=(500, 10))
    net.f_etas, net.b_etas = (0.21, 0.21), None
    start = time.perf_counter()
    net.test_weights(n_test=examples)
    return examples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--test-examples", type=int, default=100)
    parser.add_argument(
        "--reference", type=Path, help="a local copy of the authors' deep_learning.py"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of measurements (medians are reported)"
    )
    parser.add_argument(
        "--backend", nargs="+", default=["torch"],
        choices=["torch", "numba", "numba-counter", "numba-run", "replicas", "replicas-eager"],
        help="simulate_phase backends to time (numba: the fast extra, CPU only; numba-counter: "
        "numba on the counter-based stream, one compiled call per training example; "
        f"numba-run: the same, {RUN} training examples per call, learn_examples; replicas: "
        "the fixed-shape step, a CUDA graph on CUDA)",
    )  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    try:
        data = load_dataset("mnist", None, device=device)
    except DataError:
        data = load_dataset("mnist-mini", None, device=device)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), device {device}")  # fmt: skip
    # Rounds: in each, the authors' code and then every configuration of ours, back to back, so
    # that a ratio compares figures taken moments apart (this machine's speed drifts by tens of
    # percent between minutes); the table gives medians over the rounds, and the ratios' range.
    module = load_reference(args.reference, data) if args.reference is not None else None
    configurations = [(b, r) for b in args.backend for r in args.replicas]
    figures: dict = {key: [] for key in [None, *configurations]}
    for _ in range(args.repeats):
        if module is not None:
            figures[None].append((
                reference_training(module, max(20, args.examples // 4)),
                reference_testing(module, max(10, args.test_examples // 4)),
            ))  # fmt: skip
        for backend, replicas in configurations:
            n_train = max(10, args.examples // replicas)
            n_test = max(10, args.test_examples // replicas)
            figures[backend, replicas].append((
                replicas * ours_training(data, replicas, n_train, device, backend),
                replicas * ours_testing(data, replicas, n_test, device, backend),
            ))  # fmt: skip
    print(
        "| implementation | backend | networks (replicas) | training: network-images/s, all "
        "| vs authors (range) | test: network-images/s, all | vs authors (range) |"
    )
    print("|---|---|---|---|---|---|---|")

    def ratio(ours: list, column: int) -> str:
        if module is None:
            return ""
        paired = [a[column] / b[column] for a, b in zip(ours, figures[None], strict=True)]
        return f"{np.median(paired):.1f}x ({min(paired):.1f}-{max(paired):.1f})"

    def median(values: list, column: int) -> str:
        return f"{np.median([v[column] for v in values]):.1f}"

    if module is not None:
        ref = figures[None]
        print(f"| authors' NumPy code | | 1 | {median(ref, 0)} | 1x | {median(ref, 1)} | 1x |")
    for backend, replicas in configurations:
        ours = figures[backend, replicas]
        print(f"| neuroplastic | {backend} | {replicas} | {median(ours, 0)} | {ratio(ours, 0)} "
              f"| {median(ours, 1)} | {ratio(ours, 1)} |")  # fmt: skip
    print(f"\n(medians over {args.repeats} rounds; per network, divide by the replicas)")


if __name__ == "__main__":
    main()
