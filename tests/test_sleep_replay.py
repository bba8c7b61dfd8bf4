"""Sleep replay consolidation (``plasticity.sleep_replay``, Tadros et al. 2022) against values
computed by hand."""

import copy
import math

import pytest
import torch
from torch import nn

from neuroplastic.plasticity.sleep_replay import (
    SRC_MNIST,
    RunawaySleep,
    SleepReplay,
    SRCParameters,
    initial_state,
    input_spike_train,
    input_spikes,
    layer_scales,
    sleep_step,
    sleep_steps,
    weight_factor,
)


def test_the_weight_factor_moves_small_and_negative_weights():
    w = torch.tensor([-0.5, 0.0, 0.001, 0.5], dtype=torch.float64)
    expected = [2 * (1 - 1 / (1 + math.exp(-x / 0.001))) for x in w.tolist()]
    torch.testing.assert_close(weight_factor(w), torch.tensor(expected, dtype=torch.float64))
    assert weight_factor(w)[0] == pytest.approx(2.0) and weight_factor(w)[1] == 1.0
    assert weight_factor(w)[3] < 1e-100


def test_layer_scales_carry_the_applied_factor_forward():
    """s = (2, 4, 8) from the largest activations (weights smaller): the third layer's scale
    is s2 / (s1 s3), as in the authors' code, not s2 / s3."""
    weights = [torch.full((3, 3), 0.5), torch.full((3, 3), 0.5), torch.full((2, 3), -1.0)]
    scales = layer_scales(weights, [2.0, 4.0, 8.0])
    assert scales == pytest.approx([1 / 2, 2 / 4, 4 / (2 * 8)])
    # a weight larger than the activation sets the layer's s
    assert layer_scales([torch.tensor([[3.0]])], [1.0]) == pytest.approx([1 / 3])
    with pytest.raises(ValueError, match="one largest activation per layer"):
        layer_scales(weights, [1.0])


def test_one_step_through_two_layers_by_hand():
    """2 inputs -> 2 -> 1. Input 0 spikes. Hidden neuron 0 crosses its threshold, 1 does not;
    the output crosses its threshold from hidden 0's spike in the same step."""
    params = SRCParameters(thresholds=(1.0, 0.5), increment=0.1, decrement=0.01, window=0)
    w1 = torch.tensor([[2.0, -1.0], [0.5, 0.0]], dtype=torch.float64)
    w2 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    state = initial_state([w1, w2])
    state.potentials[0][1] = 0.2
    alphas = [1.0, 0.8]
    (n1, n2), new_state, (s1, s2) = sleep_step([w1, w2], state, torch.tensor(
        [1.0, 0.0], dtype=torch.float64), alphas, params)  # fmt: skip
    assert s1.tolist() == [1.0, 0.0] and s2.tolist() == [1.0]
    # hidden 1: 0.999 * 0.2 + 0.5, below 1, kept; hidden 0 reset
    assert new_state.potentials[0].tolist() == pytest.approx([0.0, 0.999 * 0.2 + 0.5])
    f = weight_factor(w1)
    expected_w1 = w1.clone()
    expected_w1[0, 0] += 0.1 * f[0, 0]  # pre 0 spiked with post 0
    expected_w1[0, 1] -= 0.01 * f[0, 1]  # pre 1 silent while post 0 spiked
    torch.testing.assert_close(n1, expected_w1)  # row 1 (no post spike) unchanged
    f2 = weight_factor(w2)
    expected_w2 = w2 + torch.tensor([[0.1 * f2[0, 0], -0.01 * f2[0, 1]]], dtype=torch.float64)
    torch.testing.assert_close(n2, expected_w2)
    assert new_state.potentials[1].tolist() == [0.0]


def test_input_spikes_come_from_one_window_at_the_doubled_rate():
    params = SRCParameters(max_rate=100.0)  # probability 2 * 0.001 * 100 * x = 0.2 x
    image = torch.full((784,), 1.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([input_spikes(image, params, gen) for _ in range(2000)])
    for spikes in draws[:50]:
        rows, cols = spikes.reshape(28, 28).nonzero(as_tuple=True)
        if len(rows):
            assert rows.max() - rows.min() < 11 and cols.max() - cols.min() < 11
    inside = draws.sum(1) / 121  # every step: 121 pixels of the window, each at 0.2
    assert inside.mean().item() == pytest.approx(0.2, rel=0.05)
    whole = SRCParameters(max_rate=100.0, window=0)
    assert input_spikes(torch.zeros(5), whole, gen).sum() == 0
    with pytest.raises(ValueError, match="window=0"):
        input_spikes(torch.ones(10), params, gen)


def test_sleep_changes_a_relu_networks_weights_in_place_and_needs_calibration():
    gen = torch.Generator().manual_seed(1)
    layers = [nn.Linear(784, 50, bias=False), nn.Linear(50, 10, bias=False)]
    for layer in layers:
        nn.init.uniform_(layer.weight, -0.1, 0.1, generator=gen)
    params = SRCParameters(thresholds=(1.0, 1.0), alpha_scale=5.0)
    replay = SleepReplay(layers, params)
    with pytest.raises(RuntimeError, match="calibrate"):
        replay.sleep(torch.rand(784), 10)
    data = torch.rand(100, 784, generator=gen)
    replay.calibrate(data)
    before = [layer.weight.clone() for layer in layers]
    counts = replay.sleep(data.mean(0), 200, gen)
    assert counts[0].sum() > 0
    assert not torch.equal(layers[0].weight, before[0])
    with pytest.raises(ValueError, match="bias-free"):
        SleepReplay([nn.Linear(3, 2)], SRCParameters(thresholds=(1.0,)))


def test_the_authors_schedule_and_values():
    assert sleep_steps(1) == 15000 and sleep_steps(5) == 35000
    assert SRC_MNIST.thresholds == (14.55, 44.56, 38.05) and SRC_MNIST.max_rate == 239.5
    with pytest.raises(ValueError, match="count from 1"):
        sleep_steps(0)


def test_a_stretch_of_input_spikes_keeps_one_window_per_step():
    params = SRCParameters(max_rate=100.0)
    train = input_spike_train(torch.ones(784, dtype=torch.float64), params, 500,
                              torch.Generator().manual_seed(2))  # fmt: skip
    assert train.shape == (500, 784)
    for spikes in train[:50]:
        rows, cols = spikes.reshape(28, 28).nonzero(as_tuple=True)
        if len(rows):
            assert rows.max() - rows.min() < 11 and cols.max() - cols.min() < 11
    assert (train.sum(1) / 121).mean().item() == pytest.approx(0.2, rel=0.05)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_compiled_sleep_equals_the_reference_step(dtype):
    """Same input spikes, same network: the Numba loop changes the weights as ``sleep_step``
    does, spike for spike (float64: to rounding; float32: the spike counts agree and the weights
    to single precision)."""
    pytest.importorskip("numba")
    gen = torch.Generator().manual_seed(0)
    layers = [nn.Linear(784, 120, bias=False), nn.Linear(120, 60, bias=False),
              nn.Linear(60, 10, bias=False)]  # fmt: skip
    for layer in layers:
        nn.init.uniform_(layer.weight, -0.05, 0.1, generator=gen)
        layer.to(dtype)
    data = torch.rand(100, 784, generator=gen, dtype=dtype)
    params = SRCParameters(thresholds=(4.0, 6.0, 5.0), alpha_scale=8.0)
    outcome = {}
    for backend in ("torch", "numba"):
        copies = [copy.deepcopy(layer) for layer in layers]
        replay = SleepReplay(copies, params)
        replay.calibrate(data)
        counts = replay.sleep(data.mean(0), 400, torch.Generator().manual_seed(3),
                              backend=backend, chunk=150)  # fmt: skip
        outcome[backend] = ([c.weight for c in copies], counts)
    assert all(c.sum() > 0 for c in outcome["torch"][1])  # every layer spiked
    assert not torch.equal(outcome["torch"][0][0], layers[0].weight)  # and learnt
    for reference, compiled in zip(*(outcome[b][1] for b in ("torch", "numba")), strict=True):
        assert torch.equal(reference, compiled)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    for reference, compiled in zip(*(outcome[b][0] for b in ("torch", "numba")), strict=True):
        torch.testing.assert_close(compiled, reference, atol=tolerance, rtol=0)
    with pytest.raises(ValueError, match="backend"):
        SleepReplay(layers, params).sleep(data.mean(0), 1, backend="cuda")


def test_a_runaway_sleep_stops_with_a_clear_error():
    gen = torch.Generator().manual_seed(4)
    layers = [nn.Linear(784, 40, bias=False), nn.Linear(40, 10, bias=False)]
    for layer in layers:
        nn.init.uniform_(layer.weight, 0.0, 0.1, generator=gen)
    replay = SleepReplay(layers, SRCParameters(thresholds=(0.01, 0.01), alpha_scale=100.0))
    replay.calibrate(torch.rand(50, 784, generator=gen))
    with pytest.raises(RunawaySleep, match="layer 1's neurons fired"):
        replay.sleep(torch.full((784,), 0.5), 3000, gen, chunk=500, max_activity=0.3)
