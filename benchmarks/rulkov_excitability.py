"""Does the foraging paper's map neuron fire on its own? Golden et al. (2022, Methods, "Neuron
models") use Rulkov's map (``neurons.rulkov``: the equations and the paper's values, alpha =
3.65, sigma = 0.06, mu = 0.0005). This script counts each neuron's spikes in 100 s (200,000
steps of 0.5 ms) without input, for several sigma at once (one neuron per value), starting next
to the resting point (V nudged by 0.001: exactly at an unstable rest point the map would stay)
and from a displaced slow variable (I = -2):

    python benchmarks/rulkov_excitability.py

A neuron that stays silent at rest is excitable, not spontaneously active: its firing must come
from input. Not a timed benchmark.
"""

from __future__ import annotations

import torch

from neuroplastic.neurons.rulkov import GOLDEN2022, rulkov_resting_state, rulkov_step

SIGMAS = (0.0, 0.06, 0.08, 0.09, 0.1, 0.12, 0.2)
STEPS = 200_000


def main() -> None:
    params = GOLDEN2022._replace(sigma=torch.tensor(SIGMAS, dtype=torch.float64))
    rest = rulkov_resting_state(1, len(SIGMAS), params, dtype=torch.float64)
    starts = {
        "near rest": rest._replace(v=rest.v + 0.001, v_before=rest.v + 0.001),
        "from I = -2": rest._replace(slow=torch.full_like(rest.slow, -2.0)),
    }
    counts = {}
    for name, state in starts.items():
        total = torch.zeros(len(SIGMAS), dtype=torch.float64)
        for _ in range(STEPS):
            spikes, state = rulkov_step(0.0, state, params)
            total += spikes[0]
        counts[name] = total.long().tolist()
    print("sigma  spikes in 100 s without input: " + ", ".join(starts))
    for i, sigma in enumerate(SIGMAS):
        print(f"{sigma:5.2f}  " + "  ".join(f"{counts[name][i]:10d}" for name in starts))


if __name__ == "__main__":
    main()
