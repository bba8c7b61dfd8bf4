"""Faithfulness of the segregated-dendrite model to the authors' code, on the same random numbers.

    OMP_NUM_THREADS=1 python benchmarks/segregated_dendrites_faithfulness.py \\
        --reference PATH/TO/deep_learning.py [--examples 10] [--hidden 0 1 2] \\
        [--feedback random|sparse|symmetric] [--apical-conductance] \\
        [--backend reference torch numba] [--seed 0]

The authors' code (``deep_learning.py`` of jordan-g/Segregated-Dendrite-Deep-Learning, a local
copy given by ``--reference``, never committed here) is loaded at run time as
benchmarks/segregated_dendrites.py loads it: its source is executed into a fresh module with
``nonspiking_mode`` switched off in memory (the paper's spiking model), ``load_MNIST`` answered
with our copy of MNIST, and, for ``--feedback``, its ``use_sparse_feedback`` /
``use_symmetric_weights`` switches set (``--apical-conductance``: its ``use_apical_conductance``,
``g_a = 0.05``, and ours ``DendriticParams(g_a=0.05)``). Its other settings are its defaults:
10-step spike memory (our ``psp_kernel="authors"``), Euler steps (our ``integration="euler"``),
``g_a = 0``, averages over the last 20 steps of each phase, direct (broadcast) feedback, weight
optimisation, plateaus at the end of each phase (``use_rand_plateau_times`` off). Its constants
(conductances, reversal potentials, time constants, ``k_B``, ``k_D``, ``P``, window, minimum
phase length, the 10 kernel taps) are compared with ours first.

For each network (``--hidden 0``: 784-10, ``1``: 784-500-10, ``2``: 784-500-100-10, at the
paper's learning rates) the script builds the authors' ``Network`` (its own initialisation,
``np.random.seed(--seed)``) and our float64 ``SegregatedDendriteNet`` with the same ``W``, ``b``
and ``Y`` copied in (transposed: ours are input-major), and trains both online on the first
``--examples`` MNIST training images with the same phase lengths (our ``phase_lengths``, set
into the module's ``l_f_phase`` / ``l_t_phase`` before each phase, as its ``train()`` does).

How both see the same spikes. The authors' code draws every spike with ``np.random.poisson``
(the input in ``f_phase`` / ``t_phase``, every layer in ``Layer.spike``), in a fixed order per
time step: input, layer 0, 1, ..., output. The script replaces the module's global ``np`` (in
memory, in that module only) by a proxy that forwards everything to NumPy except
``np.random.poisson``, which answers each call with the next row of *our* ``PhaseNoise``: for
step ``t`` and the layer whose turn it is, the count is ``poisson_from_uniform(rate, u[t])``,
our own inverse-CDF Poisson applied to the rate *their* code computed. Our phases are simulated
first and draw that ``PhaseNoise`` (through ``draw_noise``, as ``learn_example`` does); it is then
handed to their phases. A call out of turn (wrong size, more calls than the phase has steps, a
draw outside a phase) stops the script. Identical spikes then follow unless a rate differs by a
rounding error *and* its uniform lies within that rounding error of a Poisson CDF value
(probability about 1e-16 per draw); the spike counts of both are compared, not assumed.

What is compared, per example and layer (ours from ``PhaseAverages`` and the rule's functions,
theirs read from the layers: after ``f_phase``, and inside ``update_W``, which runs after the
target phase's ``calc_averages`` and before ``t_phase`` zeroes the averages): the spike counts of
the input and every layer in both phases; the mean somatic potential (``average_C_f/t``), mean
rate (``average_lambda_C_f/t``), mean basal input PSP (``average_PSP_B_f``), mean apical
potential and plateau (``average_A_f/t``, ``alpha_f/t``); the error ``E`` of each layer; the
somatic potential carried into the next example; ``W``, ``b`` after each update, and the updates
summed since the start (``W_n - W_0``: a weight's own size would hide an error in its small
updates); for symmetric feedback also ``Y``. Differences are the largest absolute difference over
all examples, and that divided by the largest absolute value of the authors' quantity.

Our side runs once per ``--backend``: ``reference`` (``simulate_phase_reference``), ``torch``
(``simulate_phase``, the default training path) and ``numba`` (the compiled loop, the ``fast``
extra), each as ``learn_example``'s body (two phases, ``plateau_step``, ``sync_feedback``) with
the spikes kept. A last check runs ``learn_example`` itself from the same start and random
stream and compares its weights with the ``torch`` run's.

Tolerance (PASS): no spike count differs, the constants agree, and every relative difference is
below 1e-10. In float64 the two codes sum in different orders (their dense ``np.dot`` of the
PSPs against our weights applied to spike counts and then filtered; their sliding sums against
our window weights), so differences of a few 1e-15 relative are expected, growing slowly with
the examples as updates compound. A modelling difference shows far above that: with our ``g_l``
changed by 1e-8 relative the averages and updates differ by about 1e-9 relative (FAIL); with
``integration="exponential"`` by 1e-2 to 1e-1, and hundreds of spike counts differ.

Not covered: the draws of the initial weights (theirs are copied into ours; their statistics are
tested elsewhere), the phase lengths' random stream (ours, given to both), and the test phase
(``test_weights``: the same phase code from a cleared state, 250 steps).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import types
from pathlib import Path

import numpy as np
import torch

from neuroplastic.credit.plateau import hidden_errors, learn_example, output_error, plateau_step
from neuroplastic.errors import DataError
from neuroplastic.models.segregated_dendrites import (
    DendriticParams,
    PhaseNoise,
    SegregatedDendriteNet,
    phase_lengths,
    poisson_from_uniform,
    simulate_phase,
    simulate_phase_reference,
)
from neuroplastic.tasks.datasets import load_dataset

TOLERANCE = 1e-10
"""Largest relative difference (to the authors' largest value of the quantity) that passes."""

APICAL_G_A = 0.05
"""The apical conductance of the paper's variant (the code's ``use_apical_conductance``)."""

NETWORKS = {
    0: ((784, 10), (0.19,)),
    1: ((784, 500, 10), (0.21, 0.21)),
    2: ((784, 500, 100, 10), (0.23, 0.23, 0.12)),
}
"""Hidden layers -> sizes and the paper's learning rates (as the experiment's ``NETWORKS``)."""


# --------------------------------------------------------------------------- their code, in memory


class SpikeStream:
    """``np.random.poisson`` for the authors' module, answered from our ``PhaseNoise``."""

    def __init__(self) -> None:
        self.uniforms: list[np.ndarray] | None = None
        self.steps = 0
        self.calls = 0
        self.counts: list[list[np.ndarray]] = []

    def arm(self, noise: PhaseNoise) -> None:
        """Serve one phase: per step the input's uniforms, then each layer's, in that order."""
        self.uniforms = [noise.input[0, 0].numpy()] + [u[0, 0].numpy() for u in noise.layers]
        self.steps = noise.steps
        self.calls = 0
        self.counts = [[] for _ in self.uniforms]

    def poisson(self, lam, size=None):
        if self.uniforms is None or size is not None:
            raise RuntimeError("a Poisson draw of the authors' code outside a phase's stream")
        step, which = divmod(self.calls, len(self.uniforms))
        if step >= self.steps:
            raise RuntimeError("the authors' code drew more spikes than the phase has steps")
        uniform = self.uniforms[which][step]
        rate = np.asarray(lam, dtype=np.float64)
        if rate.shape != (len(uniform), 1):
            raise RuntimeError(
                f"draw {self.calls} (step {step}, stream {which}): rates of shape {rate.shape}, "
                f"expected ({len(uniform)}, 1)"
            )
        counts = poisson_from_uniform(
            torch.from_numpy(rate[:, 0].copy()), torch.from_numpy(uniform)
        )
        counts = counts.numpy().astype(np.int64)
        self.calls += 1
        self.counts[which].append(counts)
        return counts[:, None]

    def finish(self) -> list[np.ndarray]:
        """The phase's counts per stream, (T, n) each; checks that every step was drawn."""
        if self.calls != self.steps * len(self.uniforms):
            raise RuntimeError(
                f"the authors' code drew {self.calls} times in a phase of {self.steps} steps "
                f"x {len(self.uniforms)} streams"
            )
        self.uniforms = None
        return [np.stack(c) for c in self.counts]


class _RandomProxy:
    def __init__(self, stream: SpikeStream) -> None:
        self.poisson = stream.poisson

    def __getattr__(self, name: str):
        return getattr(np.random, name)


class _NumpyProxy:
    def __init__(self, stream: SpikeStream) -> None:
        self.random = _RandomProxy(stream)

    def __getattr__(self, name: str):
        return getattr(np, name)


def load_reference(
    path: Path, data, feedback: str, apical: bool, stream: SpikeStream
) -> types.ModuleType:
    """The authors' module in spiking mode, our MNIST, ``feedback``'s and ``apical``'s switches,
    our spikes."""
    source = path.read_text()
    switches = {
        "nonspiking_mode": False,
        "use_sparse_feedback": feedback == "sparse",
        "use_symmetric_weights": feedback == "symmetric",
        "use_apical_conductance": apical,
    }
    for name, value in switches.items():
        line = next((s for s in source.splitlines() if s.startswith(name + " ")), None)
        if line is None:
            raise SystemExit(f"{path}: no line setting {name}; not the expected deep_learning.py")
        setting = line.split("#")[0]
        source = source.replace(setting, f"{setting.split('=')[0]}= {value} ", 1)
    module = types.ModuleType("guerguiev_reference")
    module.__file__ = str(path)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's copy
    x_train = data.train_x.cpu().numpy().T.astype(np.float64)
    t_train = np.eye(10)[data.train_y.cpu().numpy()].T
    module.load_MNIST = lambda n_valid=0: (x_train, t_train, x_train[:, :1], t_train[:, :1])
    module.np = _NumpyProxy(stream)
    return module


def check_constants(module, params: DendriticParams) -> list[tuple[str, float, float]]:
    """(name, theirs, ours) of every constant both codes define."""
    pairs = [
        ("dt", module.dt, params.dt),
        ("lambda_max / phi_max", module.lambda_max, params.phi_max),
        ("tau_s", module.tau_s, params.tau_s),
        ("tau_L", module.tau_L, params.tau_L),
        ("g_B", module.g_B, params.g_b),
        ("g_A", module.g_A, params.g_a),
        ("g_L", module.g_L, params.g_l),
        ("g_D", module.g_D, params.g_d),
        ("E_E", module.E_E, params.E_E),
        ("E_I", module.E_I, params.E_I),
        ("k_B", module.k_B, params.k_b),
        ("k_D", module.k_D, params.k_d),
        ("P_hidden", module.P_hidden, params.p_hidden),
        ("P_final", module.P_final, params.p_output),
        ("mem / kernel taps", module.mem, params.kernel_length),
        ("integration_time", module.integration_time, params.integration_steps),
        ("min phase length", module.min_l_f_phase, params.phase_steps),
    ]
    kernel = params.kernel(torch.float64).numpy()
    pairs += [(f"kappa tap {i + 1}", module.kappas[-1 - i, 0], kernel[-1 - i]) for i in range(10)]
    return pairs


# --------------------------------------------------------------------------- the comparison


class Differences:
    """Largest |ours - theirs| and largest |theirs| per (quantity, layer), over the examples."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[float]] = {}

    def add(self, quantity: str, layer: str, ours, theirs) -> None:
        ours = np.asarray(ours, dtype=np.float64).ravel()
        theirs = np.asarray(theirs, dtype=np.float64).ravel()
        if ours.shape != theirs.shape:
            raise RuntimeError(f"{quantity} {layer}: shapes {ours.shape} and {theirs.shape}")
        row = self.rows.setdefault((quantity, layer), [0.0, 0.0])
        row[0] = max(row[0], float(np.max(np.abs(ours - theirs), initial=0.0)))
        row[1] = max(row[1], float(np.max(np.abs(theirs), initial=0.0)))


def layer_names(n_layers: int) -> list[str]:
    return [f"hidden {i}" for i in range(n_layers - 1)] + ["output"]


def build_pair(module, sizes, feedback: str, params: DendriticParams, seed: int):
    """Their network (their initialisation) and ours with the same weights."""
    np.random.seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = module.Network(n=tuple(sizes[1:]))
    ours = SegregatedDendriteNet(sizes, 1, feedback, params, dtype=torch.float64)
    copy_weights(theirs, ours)
    return theirs, ours


@torch.no_grad()
def copy_weights(theirs, ours: SegregatedDendriteNet) -> None:
    for layer in range(len(ours.weights)):
        ours.weights[layer][0] = torch.from_numpy(theirs.W[layer].T.copy())
        ours.biases[layer][0] = torch.from_numpy(theirs.b[layer][:, 0].copy())
    for layer in range(ours.n_hidden):
        ours.feedback[layer][0] = torch.from_numpy(theirs.Y[layer].T.copy())
    ours.sync_feedback()


def watch_updates(theirs) -> list[dict[str, np.ndarray]]:
    """Wrap each layer's ``update_W`` to keep the target-phase averages and ``E`` it sees."""
    seen: list[dict[str, np.ndarray]] = [{} for _ in theirs.l]

    for index, layer in enumerate(theirs.l):
        original = layer.update_W

        def update_w(layer=layer, original=original, index=index) -> None:
            record = seen[index]
            record["soma_t"] = layer.average_C_t.copy()
            record["rate_t"] = layer.average_lambda_C_t.copy()
            if hasattr(layer, "alpha_t"):
                record["apical_t"] = layer.average_A_t.copy()
                record["alpha_t"] = layer.alpha_t.copy()
            original()
            record["error"] = layer.E.copy()

        layer.update_W = update_w
    return seen


def simulate(backend: str):
    if backend == "reference":
        return simulate_phase_reference
    return lambda *args, **kwargs: simulate_phase(*args, **kwargs, backend=backend)


def compare_network(args, data, hidden: int) -> tuple[bool, list[str]]:
    sizes, etas = NETWORKS[hidden]
    params = DendriticParams(g_a=APICAL_G_A if args.apical_conductance else 0.0)
    stream = SpikeStream()
    module = load_reference(args.reference, data, args.feedback, args.apical_conductance, stream)
    theirs, first = build_pair(module, sizes, args.feedback, params, args.seed)
    theirs.f_etas, theirs.b_etas = etas, None
    names = layer_names(len(sizes) - 1)
    lines, ok = [], True

    constants = check_constants(module, params)
    worst = max(abs(a - b) / max(abs(a), 1e-300) for _, a, b in constants)
    bad = [name for name, a, b in constants if abs(a - b) > 1e-12 * max(abs(a), 1.0)]
    ok &= not bad
    lines.append(
        f"constants ({len(constants)}: conductances, reversal potentials, time constants, "
        f"k_B, k_D, P, window, 10 kernel taps): largest relative difference {worst:.1e}"
        + (f"; DIFFER: {', '.join(bad)}" if bad else "")
    )

    # ours: one network per backend, same start; the noise is drawn once and shared
    nets = {b: SegregatedDendriteNet(sizes, 1, args.feedback, params, dtype=torch.float64)
            for b in args.backend}  # fmt: skip
    for net in nets.values():
        net.load_state_dict(first.state_dict())
    states = {b: net.initial_state() for b, net in nets.items()}
    generator = torch.Generator().manual_seed(args.seed)
    lengths = phase_lengths(params, torch.Generator().manual_seed(args.seed), args.examples)
    start_w = [w.copy() for w in theirs.W]
    start_b = [b.copy() for b in theirs.b]
    diffs = {b: Differences() for b in args.backend}
    spikes = {b: [0, 0] for b in args.backend}  # differing counts, all counts
    seen = watch_updates(theirs)

    for n in range(args.examples):
        f_steps, t_steps = (int(v) for v in lengths[n])
        image = data.train_x[n].cpu().numpy().astype(np.float64)
        x = module.lambda_max * image[:, None]  # (784, 1), as their train() builds it
        rates = torch.from_numpy(x[:, 0].copy()).view(1, 1, -1)
        label = int(data.train_y[n])
        labels = torch.tensor([[label]])
        reference_net = next(iter(nets.values()))
        noise_f = reference_net.draw_noise(f_steps, [generator], input_rates=rates)
        noise_t = reference_net.draw_noise(t_steps, [generator], input_rates=rates)

        ours = {}
        for backend, net in nets.items():
            run = simulate(backend)
            window = params.integration_steps
            forward = run(net, states[backend], rates, noise_f, window, keep_spikes=True)
            target = run(net, forward.state, rates, noise_t, window, labels, keep_spikes=True)
            errors = [
                *hidden_errors(net, forward.averages, target.averages),
                output_error(net, forward.averages, target.averages),
            ]
            plateau_step(net, forward.averages, target.averages, etas)
            net.sync_feedback()
            states[backend] = target.state
            ours[backend] = (forward, target, errors)

        module.l_f_phase, module.l_t_phase = f_steps, t_steps
        theirs.x = x
        theirs.t = np.eye(10)[label][:, None]
        stream.arm(noise_f)
        theirs.f_phase(theirs.x, None, n, training=True)
        their_spikes_f = stream.finish()
        their_forward = [
            {
                "soma_f": layer.average_C_f.copy(),
                "rate_f": layer.average_lambda_C_f.copy(),
                "psp_f": layer.average_PSP_B_f.copy(),
                **(
                    {"apical_f": layer.average_A_f.copy(), "alpha_f": layer.alpha_f.copy()}
                    if hasattr(layer, "alpha_f")
                    else {}
                ),
            }
            for layer in theirs.l
        ]
        stream.arm(noise_t)
        theirs.t_phase(theirs.x, theirs.t, n)
        their_spikes_t = stream.finish()

        for backend, (forward, target, errors) in ours.items():
            d, net = diffs[backend], nets[backend]
            for ours_result, their_counts in ((forward, their_spikes_f), (target, their_spikes_t)):
                for mine, counts in zip(ours_result.spikes, their_counts, strict=True):
                    spikes[backend][0] += int((mine[0, 0].numpy() != counts).sum())
                    spikes[backend][1] += int(counts.sum())
            for i, name in enumerate(names):
                fwd, tgt, mine = forward.averages, target.averages, their_forward[i]
                d.add("soma mean, forward (average_C_f)", name, fwd.soma[i], mine["soma_f"])
                d.add("soma mean, target (average_C_t)", name, tgt.soma[i], seen[i]["soma_t"])
                d.add("rate mean, forward", name, fwd.rate[i], mine["rate_f"])
                d.add("rate mean, target", name, tgt.rate[i], seen[i]["rate_t"])
                d.add("basal input PSP mean, forward", name, fwd.input_psp[i], mine["psp_f"])
                if i < len(names) - 1:
                    d.add("apical mean, forward (average_A_f)", name, fwd.apical[i],
                          mine["apical_f"])  # fmt: skip
                    d.add("apical mean, target (average_A_t)", name, tgt.apical[i],
                          seen[i]["apical_t"])  # fmt: skip
                    d.add("plateau alpha_f", name, torch.sigmoid(fwd.apical[i]), mine["alpha_f"])
                    d.add("plateau alpha_t", name, torch.sigmoid(tgt.apical[i]),
                          seen[i]["alpha_t"])  # fmt: skip
                d.add("error E", name, errors[i], seen[i]["error"])
                d.add("soma at the end of the example", name, target.state.soma[i],
                      theirs.l[i].C)  # fmt: skip
                w_ours = net.weights[i][0].detach().T.numpy()
                b_ours = net.biases[i][0].detach().numpy()
                d.add("W after the update", name, w_ours, theirs.W[i])
                d.add("b after the update", name, b_ours, theirs.b[i][:, 0])
                d.add("W - W_0 (summed updates)", name, w_ours - start_w[i],
                      theirs.W[i] - start_w[i])  # fmt: skip
                d.add("b - b_0 (summed updates)", name, b_ours - start_b[i][:, 0],
                      theirs.b[i][:, 0] - start_b[i][:, 0])  # fmt: skip
                if args.feedback == "symmetric" and i < len(names) - 1:
                    d.add("feedback Y", name, net.feedback[i][0].T.numpy(), theirs.Y[i])

    # learn_example itself, from the same start and random stream, against the torch run
    if "torch" in nets:
        net = SegregatedDendriteNet(sizes, 1, args.feedback, params, dtype=torch.float64)
        net.load_state_dict(first.state_dict())
        state, gens = net.initial_state(), [torch.Generator().manual_seed(args.seed)]
        for n in range(args.examples):
            image = data.train_x[n].to(torch.float64).view(1, 1, -1)
            rates = params.phi_max * image
            labels = data.train_y[n].view(1, 1)
            steps = tuple(int(v) for v in lengths[n])
            state, _, _ = learn_example(net, state, rates, labels, gens, steps, etas)
        pairs = zip(net.parameters(), nets["torch"].parameters(), strict=True)
        gap = max(float((a - b).detach().abs().max()) for a, b in pairs)
        ok &= gap == 0.0
        lines.append(
            f"learn_example (torch) against this script's torch run, weights and biases after "
            f"{args.examples} examples: largest difference {gap:.1e}"
            + ("" if gap == 0.0 else "  <- learn_example is not what this script mirrors")
        )

    header = "| quantity | layer | max abs, authors |"
    rule = "|---|---|---|"
    for backend in args.backend:
        header += f" {backend}: max abs diff | {backend}: relative |"
        rule += "---|---|"
    table = [header, rule]
    for key, (_, scale) in next(iter(diffs.values())).rows.items():
        row = f"| {key[0]} | {key[1]} | {scale:.3g} |"
        for backend in args.backend:
            diff, scale = diffs[backend].rows[key]
            relative = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
            ok &= relative < TOLERANCE
            row += f" {diff:.2e} | {relative:.2e} |"
        table.append(row)
    for backend, (differ, total) in spikes.items():
        ok &= differ == 0
        lines.append(
            f"spike counts ({backend}): {differ} of all counts differ; {total} spikes in the "
            f"input and all layers, both phases, {args.examples} examples"
        )
    return ok, table + [""] + lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference",
        type=Path,
        required=True,
        help="a local copy of the authors' deep_learning.py",
    )
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1], choices=[0, 1, 2])
    parser.add_argument("--feedback", default="random", choices=["random", "sparse", "symmetric"])
    parser.add_argument(
        "--backend", nargs="+", default=["reference", "torch"],
        choices=["reference", "torch", "numba"], help="our simulations of a phase to compare",
    )  # fmt: skip
    parser.add_argument(
        "--apical-conductance", action="store_true",
        help=f"g_a = {APICAL_G_A} (their use_apical_conductance) instead of 0",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        data = load_dataset("mnist", None, device=torch.device("cpu"))
    except DataError:
        data = load_dataset("mnist-mini", None, device=torch.device("cpu"))
    params = DendriticParams(g_a=APICAL_G_A if args.apical_conductance else 0.0)
    print(f"# {args.examples} online training examples (the first MNIST training images), "
          f"{args.feedback} feedback, g_a = {params.g_a}, float64, seed {args.seed}, "
          f"tolerance {TOLERANCE:g} relative")  # fmt: skip
    verdicts = []
    for hidden in args.hidden:
        sizes = "-".join(str(s) for s in NETWORKS[hidden][0])
        print(f"\n## {sizes} ({hidden} hidden), learning rates {NETWORKS[hidden][1]}\n")
        ok, lines = compare_network(args, data, hidden)
        print("\n".join(lines))
        verdict = "PASS" if ok else "FAIL"
        print(f"{verdict}: {sizes}")
        verdicts.append(ok)
    print(f"\n{'PASS' if all(verdicts) else 'FAIL'}: ours against the authors' code, "
          f"{len(verdicts)} network(s)")  # fmt: skip


if __name__ == "__main__":
    main()
