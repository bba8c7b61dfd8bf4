"""Echo state networks and readouts (``models.reservoir``) and the Mackey-Glass series."""

import pytest
import torch

from neuroplastic.models.reservoir import (
    EchoStateNetwork,
    ESNParameters,
    fit_ridge,
    nrmse,
    readout,
    spectral_radius,
)
from neuroplastic.tasks.mackey_glass import mackey_glass


def test_the_reservoir_has_the_asked_spectral_radius_and_sparsity_per_replica():
    params = ESNParameters(units=80, spectral_radius=0.7, connectivity=0.2)
    esn = EchoStateNetwork(2, params, replicas=3, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(spectral_radius(esn.w), torch.full((3,), 0.7, dtype=torch.float64))
    assert 0.15 < (esn.w != 0).double().mean() < 0.25
    assert not torch.equal(esn.w[0], esn.w[1])  # independent replicas
    assert esn.w_in.abs().max() <= 1.0


def test_run_equals_stepping_and_a_leak_slows_the_state():
    gen = torch.Generator().manual_seed(1)
    params = ESNParameters(units=30, leak=0.3, bias_scaling=0.2)
    esn = EchoStateNetwork(2, params, replicas=2, generator=gen, dtype=torch.float64)
    inputs = torch.randn(15, 2, 4, 2, generator=gen, dtype=torch.float64)
    states = esn.run(inputs)
    state = esn.initial_state(4)
    for t in range(15):
        state = esn.step(state, inputs[t])
        torch.testing.assert_close(states[t], state)
    # x_1 = a tanh(W_in u_1 + b) from a zero state
    first = 0.3 * torch.tanh(inputs[0] @ esn.w_in.transpose(1, 2) + esn.bias)
    torch.testing.assert_close(states[0], first)
    with pytest.raises(ValueError, match="inputs must be"):
        esn.run(torch.zeros(3, 2, 1, 5))


@pytest.mark.parametrize("replicas", [1, 3])
def test_the_sparse_recurrent_product_gives_the_dense_states(replicas):
    gen = torch.Generator().manual_seed(4)
    params = ESNParameters(units=40, connectivity=0.05, leak=0.6, bias_scaling=0.3)
    dense = EchoStateNetwork(2, params, replicas=replicas, generator=gen, dtype=torch.float64,
                             recurrent_product="dense")  # fmt: skip
    sparse = EchoStateNetwork.from_weights(dense.w, dense.w_in, dense.bias[:, 0], leak=0.6,
                                           recurrent_product="sparse")  # fmt: skip
    assert sparse.uses_sparse_product() and not dense.uses_sparse_product()
    inputs = torch.randn(25, replicas, 3, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(sparse.run(inputs), dense.run(inputs), rtol=1e-12, atol=1e-12)
    # the cached CSR matrix follows a change of W
    sparse.w.mul_(0.5)
    dense.w.mul_(0.5)
    torch.testing.assert_close(sparse.run(inputs), dense.run(inputs), rtol=1e-12, atol=1e-12)
    # "auto" goes sparse at this connectivity on the CPU
    assert EchoStateNetwork(2, params).uses_sparse_product()
    with pytest.raises(ValueError, match="recurrent_product"):
        EchoStateNetwork(2, params, recurrent_product="csr")


def test_bernoulli_input_weights_are_plus_or_minus_the_scaling():
    params = ESNParameters(units=300, input_scaling=0.4, input_distribution="bernoulli")
    w_in = EchoStateNetwork(2, params, generator=torch.Generator().manual_seed(5)).w_in
    torch.testing.assert_close(w_in.abs(), torch.full_like(w_in, 0.4))
    assert 0.4 < (w_in > 0).float().mean() < 0.6
    with pytest.raises(ValueError, match="input_distribution"):
        ESNParameters(input_distribution="normal")


def test_from_weights_loads_a_reservoir_drawn_elsewhere():
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(20, 20, generator=gen, dtype=torch.float64) * 0.1
    w_in = torch.randn(20, 1, generator=gen, dtype=torch.float64)
    esn = EchoStateNetwork.from_weights(w, w_in, leak=0.5)
    u = torch.randn(8, 1, 1, generator=gen, dtype=torch.float64)
    x = torch.zeros(20, dtype=torch.float64)
    for t in range(8):  # x_t = (1 - a) x_{t-1} + a tanh(W_in u_t + W x_{t-1})
        x = 0.5 * x + 0.5 * torch.tanh(w_in @ u[t, 0] + w @ x)
    torch.testing.assert_close(esn.run(u)[-1, 0], x)
    assert esn.params.spectral_radius == pytest.approx(float(spectral_radius(w)))
    with pytest.raises(ValueError, match="w must be"):
        EchoStateNetwork.from_weights(w, w_in[:5])


def test_ridge_readout_is_the_regularised_least_squares_solution():
    gen = torch.Generator().manual_seed(2)
    states = torch.randn(200, 10, generator=gen, dtype=torch.float64)
    targets = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    w_out = fit_ridge(states, targets, ridge=0.5)
    x = torch.cat([states, torch.ones(200, 1, dtype=torch.float64)], 1)
    # the normal equations of the penalised problem hold
    residual = (x @ w_out.T - targets).T @ x + 0.5 * w_out
    assert residual.abs().max() < 1e-9
    exact = torch.linalg.lstsq(x, targets).solution.T
    torch.testing.assert_close(fit_ridge(states, targets, ridge=0.0), exact)
    # replicas in the middle dimension fit independently
    both = fit_ridge(torch.stack([states, 2 * states], 1), torch.stack([targets, targets], 1), 0.5)
    torch.testing.assert_close(both[0], w_out)
    torch.testing.assert_close(readout(torch.stack([states, 2 * states], 1), both)[:, 0],
                               readout(states, w_out))  # fmt: skip


def test_mackey_glass_is_bounded_and_chaotic_at_tau_17():
    series = mackey_glass(600)
    assert series.shape == (600,) and 0.2 < series.min() < series.max() < 1.5
    # sensitive dependence: a 1e-8 difference in the history grows more than 10,000-fold
    start, nearby = mackey_glass(3000, transient=0), mackey_glass(3000, transient=0, x0=1.2 + 1e-8)
    gap = (start - nearby).abs()
    assert gap[:50].max() < 1e-7 and gap[-100:].max() > 1e-3
    assert torch.equal(series, mackey_glass(600))
    with pytest.raises(ValueError, match="multiples of dt"):
        mackey_glass(10, tau=17.05)


def test_an_esn_predicts_mackey_glass_one_step_ahead():
    series = mackey_glass(2200).float()
    inputs, targets = series[:-1, None, None], series[1:, None]
    esn = EchoStateNetwork(1, ESNParameters(units=200, spectral_radius=0.9, leak=0.5,
                                            input_scaling=0.5, bias_scaling=0.2),
                           generator=torch.Generator().manual_seed(3))  # fmt: skip
    states = esn.run(inputs)[:, 0]  # (T, units)
    washout, split = 100, 1700
    w_out = fit_ridge(states[washout:split], targets[washout:split], ridge=1e-6)
    error = nrmse(readout(states[split:], w_out), targets[split:])
    assert error.item() < 0.02


def test_force_learns_a_sine_from_a_chaotic_network_and_keeps_it_without_learning():
    from neuroplastic.models.reservoir import ForceNetwork, ForceParameters, run_force
    from neuroplastic.optim import RLS

    params = ForceParameters(units=200)
    network = ForceNetwork(params, replicas=2, generator=torch.Generator().manual_seed(4))
    time = torch.arange(2500, dtype=torch.float32)
    target = torch.sin(2 * torch.pi * time / 100.0)[:, None, None].expand(-1, 2, 1)
    free, _ = run_force(network, 200)  # before training: the readout is zero
    assert free.abs().max() == 0
    optimizer = RLS([network.w_out], alpha=1.0)
    _, state = run_force(network, 2000, target, optimizer)
    after, _ = run_force(network, 500, state=state)  # learning off, feedback loop closed
    error = (after - target[2000:]).abs().mean()
    assert error < 0.1
    with pytest.raises(ValueError, match="both"):
        run_force(network, 10, target)


def test_a_spiking_liquid_keeps_a_fading_memory_of_its_input():
    """A readout of the liquid's spike traces recalls the input of 5 steps ago better than any
    linear function of the present input can (a memoryless readout), and the liquid obeys
    Dale's law."""
    from neuroplastic.models.reservoir import LiquidParameters, SpikingLiquid

    gen = torch.Generator().manual_seed(5)
    liquid = SpikingLiquid(1, LiquidParameters(units=200), generator=gen, dtype=torch.float64)
    excitatory = round(0.8 * 200)
    assert (liquid.w[0, :, :excitatory] >= 0).all() and (liquid.w[0, :, excitatory:] <= 0).all()
    assert (torch.diagonal(liquid.w[0]) == 0).all()
    smooth = torch.randn(3000, generator=gen, dtype=torch.float64)
    for _ in range(3):  # a slowly varying input
        smooth = torch.nn.functional.avg_pool1d(smooth[None, None], 5, 1, 2)[0, 0]
    u = smooth / smooth.std()
    traces = liquid.run(u[:, None, None])[:, 0]
    assert 0 < traces.mean()  # the liquid spikes
    delayed = u[:-5, None]
    w_out = fit_ridge(traces[100:2000], delayed[95:1995], ridge=1e-3)
    error = nrmse(readout(traces[2000:], w_out), delayed[1995:])
    memoryless = fit_ridge(u[100:2000, None], delayed[95:1995], ridge=1e-3)
    present_only = nrmse(readout(u[2000:, None], memoryless), delayed[1995:])
    assert error.item() < 0.8 * present_only.item()
