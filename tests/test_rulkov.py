"""Rulkov's map neuron: each branch against numbers computed by hand, the resting point, a
scalar transcription of the paper's equations step for step, and its excitability."""

import pytest
import torch

from neuroplastic.neurons.rulkov import (
    RulkovParameters,
    RulkovState,
    rulkov_resting_state,
    rulkov_step,
)

PAPER = RulkovParameters()
F64 = torch.float64


def state_of(v, v_before, slow):
    as_tensor = lambda x: torch.tensor([[x]], dtype=F64)  # noqa: E731
    return RulkovState(as_tensor(v), as_tensor(v_before), as_tensor(slow), as_tensor(0.0))


@pytest.mark.parametrize(
    ("v", "v_before", "slow", "external", "v_next"),
    [
        (-0.5, -0.6, -2.9, 0.0, 3.65 / 1.5 - 2.9),  # below zero: alpha / (1 - V) + u
        (-0.5, -0.6, -2.9, 2.0, 3.65 / 1.5 - 2.9 + 0.133 * 2.0),  # the input enters u
        (0.3, -0.2, -2.9, 0.0, 3.65 - 2.9),  # the spike's top: alpha + u
        (0.3, 0.1, -2.9, 0.0, -1.0),  # positive twice in a row: reset
        (0.8, -0.2, -2.9, 0.0, -1.0),  # at or above alpha + u: reset
    ],
)
def test_each_branch_of_the_map_against_hand_computed_values(v, v_before, slow, external, v_next):
    spikes, new = rulkov_step(external, state_of(v, v_before, slow), PAPER)
    assert new.v.item() == pytest.approx(v_next, abs=1e-12)
    assert new.v_before.item() == v
    expected_slow = slow - 0.0005 * (v + 1) + 0.0005 * 0.06 + 0.0005 * 1.0 * external
    assert new.slow.item() == pytest.approx(expected_slow, abs=1e-15)
    assert spikes.item() == float(v_next > 0 and v <= 0)


def test_the_resting_point_is_a_fixed_point_without_spikes():
    state = rulkov_resting_state(3, 4, PAPER, dtype=F64)
    assert torch.allclose(state.v, torch.full((3, 4), 0.06 - 1, dtype=F64))
    start = state
    for _ in range(2000):
        spikes, state = rulkov_step(0.0, state, PAPER)
        assert not spikes.any()
    assert torch.allclose(state.v, start.v, atol=1e-12)
    assert torch.allclose(state.slow, start.slow, atol=1e-12)


def scalar_reference(sigma: float, inputs: list[float]) -> list[int]:
    """The paper's equations transcribed for one neuron in plain floats."""
    alpha, mu, beta_e, sigma_e = 3.65, 0.0005, 0.133, 1.0
    v = v_before = sigma - 1
    slow = v - alpha / (1 - v)
    spikes = []
    for external in inputs:
        u = slow + beta_e * external
        if v <= 0:
            v_next = alpha / (1 - v) + u
        elif v < alpha + u and v_before <= 0:
            v_next = alpha + u
        else:
            v_next = -1.0
        slow = slow - mu * (v + 1) + mu * sigma + mu * sigma_e * external
        spikes.append(int(v_next > 0 and v <= 0))
        v_before, v = v, v_next
    return spikes


def test_a_batch_of_neurons_follows_the_scalar_equations_step_for_step():
    """Different sigma per neuron (a replica dimension) and random input pulses: every spike
    of 3,000 steps agrees with the scalar transcription."""
    sigmas = torch.tensor([0.0, 0.06, 0.1, 0.2], dtype=F64)
    generator = torch.Generator().manual_seed(3)
    pulses = (torch.rand(3000, len(sigmas), generator=generator, dtype=F64) < 0.01).to(F64) * 1.5
    params = PAPER._replace(sigma=sigmas)
    state = rulkov_resting_state(1, len(sigmas), params, dtype=F64)
    trains = []
    for step in range(len(pulses)):
        spikes, state = rulkov_step(pulses[step], state, params)
        trains.append(spikes[0])
    trains = torch.stack(trains)
    for neuron, sigma in enumerate(sigmas.tolist()):
        expected = scalar_reference(sigma, pulses[:, neuron].tolist())
        assert trains[:, neuron].long().tolist() == expected
    assert trains.sum() > 0


def test_at_the_papers_values_it_is_excitable_not_spontaneously_active():
    params = PAPER._replace(sigma=torch.tensor([0.06, 0.2], dtype=F64))
    state = rulkov_resting_state(1, 2, params, dtype=F64)
    counts = torch.zeros(2, dtype=F64)
    for step in range(8000):
        drive = 2.0 if 1000 <= step < 1010 else 0.0  # one brief pulse
        spikes, state = rulkov_step(drive, state, params)
        counts += spikes[0]
        if step == 1500:
            assert counts[0] > 0  # the pulse made the resting neuron fire
            after_pulse = counts.clone()
    assert counts[0] == after_pulse[0]  # and then it fell silent again
    assert counts[1] - after_pulse[1] > 50  # sigma = 0.2 fires on its own: about 110 here
