"""Serial perturbation (``credit.serial_perturbation``): one weight per draw."""

import pytest
import torch
from torch import nn

from neuroplastic.credit import SerialPerturbation
from neuroplastic.credit.base import loss_per_example


def linear_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    for p in model.parameters():
        nn.init.normal_(p, generator=gen)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    return model, x, y


def true_gradient(model, x, y):
    model.zero_grad()
    loss_per_example(model(x), y, "square").mean().backward()
    return [p.grad.clone() for p in model.parameters()]


def test_central_differences_on_a_quadratic_cost_give_each_weight_its_exact_derivative():
    """Square cost, linear model: C is quadratic in each weight, so the central difference is
    exact; with every weight visited once the estimates add up to the gradient."""
    model, x, y = linear_problem()
    gradient = true_gradient(model, x, y)
    rule = SerialPerturbation(model, sigma=0.3, difference="central")
    params = list(model.parameters())
    count = sum(p.numel() for p in params)
    noise = [torch.zeros(count, *p.shape, dtype=p.dtype) for p in params]
    flat = 0
    for tensor, p in zip(noise, params, strict=True):
        for i in range(p.numel()):
            tensor[flat + i].view(-1)[i] = 0.3
        flat += p.numel()
    estimates = rule.estimates(x, y, "square", noise=noise)
    for per_draw, g in zip(estimates.grads, gradient, strict=True):
        torch.testing.assert_close(per_draw.sum(0), g)
        assert ((per_draw != 0).flatten(1).sum(1) <= 1).all()  # one weight per draw


def test_backward_sums_its_draws_and_counts_passes():
    model, x, y = linear_problem(1)
    gradient = true_gradient(model, x, y)
    model.zero_grad()
    rule = SerialPerturbation(model, sigma=1e-4, samples=200, difference="central",
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
    rule.backward(x, y, "square")
    assert rule.forward_passes == 1 + 2 * 200 and rule.draws == 200
    for p, g in zip(model.parameters(), gradient, strict=True):
        visits = p.grad / g  # each weight's estimate is exact: the sum counts its visits
        torch.testing.assert_close(visits, visits.round())
    pairs = zip(model.parameters(), gradient, strict=True)
    total = sum(int((p.grad / g).round().sum()) for p, g in pairs)
    assert total == 200


def test_greedy_twiddling_keeps_only_changes_that_lower_the_cost():
    model, x, y = linear_problem(2)
    rule = SerialPerturbation(model, sigma=0.05, mode="greedy",
                              generator=torch.Generator().manual_seed(3))  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    losses = []
    for _ in range(60):
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        losses.append(float(rule.backward(x, y, "square")))
        optimizer.step()
        pairs = zip(model.parameters(), before, strict=True)
        moved = torch.cat([(p.detach() - b).flatten() for p, b in pairs])
        assert (moved != 0).sum() <= 1 and moved.abs().max() in (0.0, pytest.approx(0.05))
    assert losses[-1] < losses[0]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False))
    assert rule.forward_passes == 60 * 3
    with pytest.raises(ValueError, match="mode"):
        SerialPerturbation(model, mode="annealing")
