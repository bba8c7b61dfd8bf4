"""LIF and ALIF step functions against hand-computed dynamics; the pseudo-derivative against
autograd; time constants that learn."""

import math

import pytest
import torch

from neuroplastic.neurons import (
    LIFCell,
    LIFParameters,
    alif_step,
    bellec2020_pseudo_derivative,
    decay,
    initial_state,
    lif_step,
    pseudo_derivative,
    pseudo_derivative_of,
)

F64 = torch.float64


def run(current, params, steps, step=lif_step):
    """Spikes and potentials of one neuron under a constant ``current`` for ``steps`` steps."""
    state = initial_state(1, 1, dtype=F64)
    spikes, potentials = [], []
    for _ in range(steps):
        z, state = step(torch.full((1, 1), current, dtype=F64), state, params)
        spikes.append(int(z.item()))
        potentials.append(state.v.item())
    return spikes, potentials


def test_below_threshold_the_potential_follows_the_leaky_sum():
    alpha = decay(20.0)
    spikes, v = run(0.01, LIFParameters(alpha, v_th=0.6), 50)
    assert spikes == [0] * 50
    for t, value in enumerate(v, start=1):  # v_t = I (1 - alpha^t) / (1 - alpha)
        assert value == pytest.approx(0.01 * (1 - alpha**t) / (1 - alpha), rel=1e-12)


def test_a_spike_resets_by_subtraction_on_the_next_step():
    spikes, v = run(0.25, LIFParameters(1.0, v_th=0.6), 6)  # no leak
    assert spikes == [0, 0, 1, 0, 1, 0]
    # 0.75 spikes; the next step subtracts v_th: 0.75 + 0.25 - 0.6 = 0.4, then 0.65 spikes again
    assert v == pytest.approx([0.25, 0.5, 0.75, 0.4, 0.65, 0.3])


def test_refractory_steps_have_no_spike_and_no_pseudo_derivative():
    params = LIFParameters(1.0, v_th=0.6, refractory=2)
    state = initial_state(1, 1, dtype=F64)
    spikes, psis = [], []
    for _ in range(6):
        before = state
        z, state = lif_step(torch.full((1, 1), 0.7, dtype=F64), state, params)
        spikes.append(int(z.item()))
        psis.append(pseudo_derivative_of(before, state, params).item())
    assert spikes == [1, 0, 0, 1, 0, 0]  # spikes at once, then 2 silent steps, again
    assert psis[0] == pytest.approx(0.3 * (1 - 0.1 / 0.6) / 0.6)  # v = 0.7 against 0.6
    # step 2: v = 0.7 + 0.7 - 0.6 = 0.8, near threshold, yet refractory: psi 0, not 0.28
    assert psis[1] == psis[2] == 0.0


def test_the_pseudo_derivative_is_autograds_derivative_of_the_spike():
    spike = bellec2020_pseudo_derivative(0.3)
    x = torch.linspace(-2, 2, 41, dtype=F64, requires_grad=True)
    z = spike(x)
    assert torch.equal(z, (x > 0).to(F64))
    (grad,) = torch.autograd.grad(z.sum(), x)
    assert torch.equal(grad, 0.3 * torch.clamp(1 - x.detach().abs(), min=0))
    assert torch.equal(grad, pseudo_derivative(x.detach(), 0.3))
    with pytest.raises(ValueError, match="dampening"):
        bellec2020_pseudo_derivative(0.0)


def test_dz_dv_through_a_step_is_psi_of_the_paper():
    """Bellec et al. 2020: psi = (gamma / v_th) max(0, 1 - |(v - A) / v_th|), here for ALIF."""
    params = LIFParameters(0.9, v_th=0.6, beta=0.2, rho=0.95)
    before = initial_state(3, 4, dtype=F64)._replace(
        a=torch.rand(3, 4, dtype=F64), v=torch.rand(3, 4, dtype=F64)
    )
    current = torch.rand(3, 4, dtype=F64, requires_grad=True)
    z, after = alif_step(current, before, params)
    (dz_dI,) = torch.autograd.grad(z.sum(), current)  # dv/dI = 1, so this is dz/dv
    assert torch.allclose(dz_dI, pseudo_derivative_of(before, after, params), rtol=0, atol=0)


def test_alif_threshold_adapts_and_beta_zero_is_lif():
    lif = LIFParameters(decay(20.0), v_th=0.6)
    adaptive = lif._replace(beta=0.0, rho=decay(200.0))
    assert run(0.1, lif, 100) == run(0.1, adaptive, 100, alif_step)
    slowed = lif._replace(beta=0.5, rho=decay(200.0))
    plain_spikes, _ = run(0.1, lif, 100)
    adaptive_spikes, _ = run(0.1, slowed, 100, alif_step)
    assert sum(adaptive_spikes) < sum(plain_spikes)  # the threshold climbs with each spike
    state = initial_state(1, 1, dtype=F64)._replace(z=torch.ones(1, 1, dtype=F64))
    _, state = alif_step(torch.zeros(1, 1, dtype=F64), state, slowed)
    assert state.a.item() == pytest.approx(1.0)  # a^t = rho a^{t-1} + z^{t-1}


def test_the_reset_term_is_detached_and_the_adaptation_is_not():
    params = LIFParameters(0.9, v_th=0.6, beta=0.3, rho=0.9)
    z_prev = torch.tensor([[1.0]], dtype=F64, requires_grad=True)
    state = initial_state(1, 1, dtype=F64)._replace(z=z_prev)
    _, after = alif_step(torch.zeros(1, 1, dtype=F64), state, params)
    assert not after.v.requires_grad  # the reset uses z^{t-1} detached
    (through_a,) = torch.autograd.grad(after.a.sum(), z_prev)
    assert through_a.item() == 1.0


def test_per_neuron_time_constants_and_trainable_tau():
    cell = LIFCell(3, tau_m=torch.tensor([5.0, 20.0, 80.0]), train_tau=True).double()
    state = cell.initial_state(2)
    total = 0
    for _ in range(5):
        z, state = cell(torch.full((2, 3), 0.05, dtype=F64), state)
        total = total + state.v.sum()
    total.backward()
    assert cell.log_tau_m.grad is not None and (cell.log_tau_m.grad != 0).all()
    assert state.v[0, 0] < state.v[0, 2]  # the fast neuron leaks more
    alpha = cell.parameters_now().alpha
    assert alpha.tolist() == pytest.approx([math.exp(-1 / 5), math.exp(-1 / 20), math.exp(-1 / 80)])
    fixed = LIFCell(3)
    assert not fixed.log_tau_m.requires_grad


def test_alif_cell_and_bad_arguments():
    cell = LIFCell(4, tau_a=200.0, beta=0.1)
    params = cell.parameters_now()
    assert params.rho.shape == (4,) and params.beta.shape == (4,)
    z, state = cell(torch.ones(2, 4))
    assert z.shape == (2, 4) and state.a.shape == (2, 4)
    with pytest.raises(ValueError, match="v_th > 0"):
        LIFCell(4, v_th=0.0)
