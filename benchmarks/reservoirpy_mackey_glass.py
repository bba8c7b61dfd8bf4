"""Our echo state network against ReservoirPy's on the same Mackey-Glass task: free-running NRMSE at
84 steps and wall time, side by side, same reservoir size and hyper-parameters.

    python benchmarks/reservoirpy_mackey_glass.py [--units 500] [--seeds 5] [--starts 20]
                                                  [--device cpu|cuda]

ReservoirPy is installed in the benchmark's environment only (``pip install reservoirpy``), never
a dependency of neuroplastic.

The task, identical for both: our ``tasks.mackey_glass`` series (tau 17, step 1) minus 1;
teacher-forced training on the first 3,000 steps (100 washout steps dropped), ridge readout with
a bias; then for each of ``--starts`` start points after the training part, the reservoir is
reset, driven by the 500 true values up to the start, and run freely on its own predictions for
84 steps. NRMSE = root mean squared error at step 84 over the starts / the series' standard
deviation. Both reservoirs: leak, spectral radius, input scaling, ridge as given; every unit
receives the input (ReservoirPy's ``input_connectivity=1``); recurrent connectivity as given; no
bias. Four rows:

- ``neuroplastic (uniform)``: our default draw, uniform input weights (Jaeger's);
- ``neuroplastic (bernoulli)``: input weights +-scaling, as ReservoirPy draws them; the NRMSEs of
  this row and ReservoirPy's are compared over seeds (the draws differ), not seed for seed;
- ``neuroplastic (their weights)``: our network and readout run on ReservoirPy's own matrices,
  seed for seed: the equations are the same iff this row's NRMSE equals ReservoirPy's to rounding
  (its time excludes ReservoirPy's draw);
- ``reservoirpy``.

Timing: the whole procedure (reservoir construction, training, all starts), median of the seeds.
Ours runs the starts as one batch; ReservoirPy one after another, as its API does.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from neuroplastic.models.reservoir import EchoStateNetwork, ESNParameters, fit_ridge, readout
from neuroplastic.tasks.mackey_glass import mackey_glass

TRAIN, WASHOUT, WARMUP, HORIZON = 3000, 100, 500, 84


def task(starts: int) -> tuple[np.ndarray, list[int]]:
    at = [TRAIN + WARMUP + 40 * i for i in range(starts)]
    return (mackey_glass(at[-1] + HORIZON + 2) - 1.0).numpy(), at


def nrmse_84(predicted: np.ndarray, u: np.ndarray, at: list[int]) -> float:
    truth = np.array([u[k + HORIZON] for k in at])
    return float(np.sqrt(np.mean((predicted - truth) ** 2)) / u.std())


def ours(u: np.ndarray, at: list[int], args, seed: int, inputs: str = "uniform") -> np.ndarray:
    params = ESNParameters(args.units, args.spectral_radius, args.input_scaling, args.leak,
                           args.connectivity, input_distribution=inputs)  # fmt: skip
    esn = EchoStateNetwork(1, params, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64).to(args.device)  # fmt: skip
    return predict(esn, u, at, args)


def reservoirpy_reservoir(u: np.ndarray, args, seed: int):
    from reservoirpy.nodes import Reservoir

    reservoir = Reservoir(args.units, lr=args.leak, sr=args.spectral_radius,
                          input_scaling=args.input_scaling, input_connectivity=1.0,
                          rc_connectivity=args.connectivity, seed=seed)  # fmt: skip
    reservoir.initialize(u[:1, None])
    return reservoir


def ours_on_their_weights(u: np.ndarray, at: list[int], args, reservoir) -> np.ndarray:
    def dense(matrix):
        matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
        return torch.as_tensor(matrix, dtype=torch.float64)

    bias = dense(reservoir.bias) * torch.ones(args.units, dtype=torch.float64)
    esn = EchoStateNetwork.from_weights(
        dense(reservoir.W), dense(reservoir.Win), bias.reshape(-1), leak=args.leak
    ).to(args.device)
    return predict(esn, u, at, args)


def predict(esn: EchoStateNetwork, u: np.ndarray, at: list[int], args) -> np.ndarray:
    device = esn.w.device
    series = torch.as_tensor(u, device=device)
    states = esn.run(series[:TRAIN, None, None])[:, 0]
    w_out = fit_ridge(states[WASHOUT : TRAIN - 1], series[WASHOUT + 1 : TRAIN, None], args.ridge)
    warm = torch.stack([series[k - WARMUP + 1 : k + 1] for k in at], 1)  # (WARMUP, starts)
    state = esn.run(warm[:, None, :, None])[-1]  # (1, starts, units)
    prediction = readout(state, w_out)
    for _ in range(HORIZON - 1):
        state = esn.step(state, prediction)
        prediction = readout(state, w_out)
    return prediction[0, :, 0].cpu().numpy()


def reservoirpy(u: np.ndarray, at: list[int], args, seed: int) -> np.ndarray:
    from reservoirpy.nodes import Ridge

    esn = reservoirpy_reservoir(u, args, seed) >> Ridge(ridge=args.ridge)
    esn.fit(u[: TRAIN - 1, None], u[1:TRAIN, None], warmup=WASHOUT)
    out = []
    for k in at:
        esn.reset()
        prediction = esn.run(u[k - WARMUP + 1 : k + 1, None])[-1]
        for _ in range(HORIZON - 1):
            prediction = esn.step(prediction)
        out.append(float(np.asarray(prediction).ravel()[0]))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spectral-radius", type=float, default=0.9)
    parser.add_argument("--input-scaling", type=float, default=0.5)
    parser.add_argument("--leak", type=float, default=0.5)
    parser.add_argument("--connectivity", type=float, default=0.02)
    parser.add_argument("--ridge", type=float, default=1e-8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    u, at = task(args.starts)
    def timed(method):  # (seconds, prediction) of one seed
        def run(seed):
            start = time.perf_counter()
            predicted = method(seed)
            return time.perf_counter() - start, predicted
        return run

    def on_their_weights(seed):  # ReservoirPy's draw is made before the clock starts
        reservoir = reservoirpy_reservoir(u, args, seed)
        return timed(lambda _: ours_on_their_weights(u, at, args, reservoir))(seed)

    methods = {
        "neuroplastic (uniform)": timed(lambda seed: ours(u, at, args, seed)),
        "neuroplastic (bernoulli)": timed(lambda seed: ours(u, at, args, seed, "bernoulli")),
        "neuroplastic (their weights)": on_their_weights,
        "reservoirpy": timed(lambda seed: reservoirpy(u, at, args, seed)),
    }
    rows, per_seed = [], {}
    for name, method in methods.items():
        errors, seconds = [], []
        for seed in range(args.seeds):
            elapsed, predicted = method(seed)
            seconds.append(elapsed)
            errors.append(nrmse_84(predicted, u, at))
        per_seed[name] = np.array(errors)
        logs = np.log10(errors)
        rows.append((name, logs.mean(), logs.std(ddof=1) if len(logs) > 1 else float("nan"),
                     statistics.median(seconds)))  # fmt: skip
    print(f"Mackey-Glass, {args.units} units, {args.starts} starts, NRMSE at {HORIZON} steps, "
          f"{args.seeds} seeds, device {args.device} (ours), one thread")  # fmt: skip
    print(f"{'library':<30} {'log10 NRMSE84 (mean ± sd)':<28} {'median seconds':>14}")
    for name, mean, sd, secs in rows:
        print(f"{name:<30} {mean:>8.2f} ± {sd:<17.2f} {secs:>14.2f}")
    same = per_seed["neuroplastic (their weights)"], per_seed["reservoirpy"]
    gap = np.abs(np.log10(same[0]) - np.log10(same[1])).max()
    print(f"same weights, seed for seed: largest |log10 NRMSE difference| = {gap:.2e}")


if __name__ == "__main__":
    main()
