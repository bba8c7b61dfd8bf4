"""The exploratory Hebbian readout rule (``plasticity.exploratory_hebbian``; Hoerzer 2014)."""

import pytest
import torch
from torch import nn

from neuroplastic.plasticity.exploratory_hebbian import (
    EHState,
    ExploratoryHebbian,
    exploratory_hebbian_step,
)


def test_one_step_by_hand():
    r = torch.tensor([1.0, -2.0], dtype=torch.float64)
    z = torch.tensor([0.5], dtype=torch.float64)
    f = torch.tensor([0.4], dtype=torch.float64)
    as64 = {"dtype": torch.float64}
    state = EHState(torch.tensor([0.2], **as64), torch.tensor(-0.1, **as64))
    change, new = exploratory_hebbian_step(r, z, f, state, lr=0.1, smoothing=0.5)
    # P = -0.01 beats P_bar = -0.1: M = 1, dW = 0.1 * (0.5 - 0.2) * r
    torch.testing.assert_close(change, torch.tensor([[0.03, -0.06]], dtype=torch.float64))
    torch.testing.assert_close(new.output_average, torch.tensor([0.35], dtype=torch.float64))
    torch.testing.assert_close(new.reward_average, torch.tensor(-0.055, dtype=torch.float64))
    worse = EHState(state.output_average, torch.tensor(0.0, dtype=torch.float64))
    assert exploratory_hebbian_step(r, z, f, worse, 0.1, 0.5)[0].abs().max() == 0  # M = 0


def test_reward_alone_teaches_a_readout_of_slowly_varying_rates():
    """Slow rates (as a reservoir's), a target that is a linear function of them: exploring the
    output and keeping what the reward favours lowers the output error several-fold (with a
    constant learning rate it then fluctuates, at 5-30 % of the start over seeds)."""
    gen = torch.Generator().manual_seed(0)
    steps = 4000
    periods = 200 + 800 * torch.rand(20, generator=gen, dtype=torch.float64)
    phases = 6.283 * torch.rand(20, generator=gen, dtype=torch.float64)
    time = torch.arange(steps, dtype=torch.float64)[:, None]
    rates = torch.sin(6.283 * time / periods + phases)
    teacher = torch.randn(1, 20, generator=gen, dtype=torch.float64) / 20**0.5
    targets = rates @ teacher.T
    weight = nn.Parameter(torch.zeros(1, 20, dtype=torch.float64))
    rule = ExploratoryHebbian(weight, lr=0.01, smoothing=0.2)
    optimizer = torch.optim.SGD([weight], lr=1.0)
    noise = 0.4 * (torch.rand(steps, 1, generator=gen, dtype=torch.float64) - 0.5)
    for t in range(steps):
        output = weight.detach() @ rates[t] + noise[t]
        rule.step(rates[t], output, targets[t])
        rule.write()
        optimizer.step()
        optimizer.zero_grad()
    before = (targets[-1000:] ** 2).mean()  # the zero readout's error
    after = ((rates[-1000:] @ weight.detach().T - targets[-1000:]) ** 2).mean()
    assert after < 0.3 * before
    with pytest.raises(ValueError, match="smoothing"):
        ExploratoryHebbian(weight, smoothing=0.0)
