"""Does the foraging paper's map neuron fire on its own? Golden et al. (2022, Methods, "Neuron
models") use Rulkov's map with a fast variable V and a slow one I, one step per 0.5 ms:

    V_{n+1} = f(V_n, I_n + beta_n),  I_{n+1} = I_n - mu (V_n + 1) + mu sigma + mu sigma_n
    f(V, u) = alpha / (1 - V) + u    if V <= 0
              alpha + u              if 0 < V < alpha + u and V_{n-1} <= 0   (the spike)
              -1                     otherwise

with alpha = 3.65, sigma = 0.06, mu = 0.0005, and the external input entering as
beta_n = 0.133 I_ext and sigma_n = I_ext. This script counts the spikes in 100 s without input,
from next to the resting point (V* = sigma - 1) and from a displaced slow variable, for several
sigma:

    python benchmarks/rulkov_excitability.py

A neuron that stays silent at rest is excitable, not spontaneously active: its firing must
come from input. Not a timed benchmark.
"""

from __future__ import annotations

ALPHA, MU, STEPS = 3.65, 0.0005, 200_000  # 200,000 steps of 0.5 ms: 100 s


def fast_map(v: float, v_before: float, u: float) -> float:
    if v <= 0:
        return ALPHA / (1 - v) + u
    if v < ALPHA + u and v_before <= 0:
        return ALPHA + u
    return -1.0


def spikes_without_input(sigma: float, slow_start: float | None = None) -> int:
    """Spikes in ``STEPS`` steps with no input, starting at ``slow_start`` or at rest with V
    nudged by 0.001 (exactly at an unstable rest point the map would stay there)."""
    rest = sigma - 1
    slow = ALPHA / (sigma - 2) + rest if slow_start is None else slow_start  # V* = f(V*, I*)
    v = v_before = rest + 0.001
    spikes = 0
    for _ in range(STEPS):
        v_next = fast_map(v, v_before, slow)
        slow = slow - MU * (v + 1) + MU * sigma
        spikes += v_next > 0 >= v
        v_before, v = v, v_next
    return spikes


def main() -> None:
    print("sigma  spikes in 100 s from near rest  from I = -2 (a displaced start)")
    for sigma in (0.0, 0.06, 0.08, 0.09, 0.1, 0.12, 0.2):
        at_rest, displaced = spikes_without_input(sigma), spikes_without_input(sigma, -2.0)
        print(f"{sigma:5.2f}  {at_rest:30d}  {displaced:8d}")


if __name__ == "__main__":
    main()
