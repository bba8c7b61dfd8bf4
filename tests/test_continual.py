"""Continual-learning baselines (``neuroplastic.continual``) against closed forms."""

import math

import pytest
import torch
from torch import nn

from neuroplastic.continual import EWC, ReplayBuffer, SynapticIntelligence, distillation_loss


def test_ewc_fisher_of_a_softmax_layer_is_p_one_minus_p_times_x_squared():
    """For logits W x, d log p_c / d W_kj = (delta_ck - p_k) x_j, so the true Fisher is
    sum_c p_c (delta_ck - p_k)^2 x_j^2 = p_k (1 - p_k) x_j^2."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3, bias=False).double()
    x = torch.randn(1, 4, dtype=torch.float64)
    ewc = EWC(model, strength=2.0)
    fisher = ewc.fisher([x])["weight"]
    p = torch.softmax(model(x), -1)[0].detach()
    torch.testing.assert_close(fisher, (p * (1 - p))[:, None] * x[0][None, :] ** 2)


def test_the_batched_linear_fisher_equals_the_per_example_reference():
    """A ReLU MLP with biases, dropout (off while estimating) and a layer without bias."""
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.3), nn.Linear(5, 4),
                          nn.ReLU(), nn.Linear(4, 3, bias=False)).double()  # fmt: skip
    for p in model.parameters():
        nn.init.normal_(p, generator=gen)
    batches = [torch.randn(7, 6, generator=gen, dtype=torch.float64) for _ in range(2)]
    ewc = EWC(model, strength=1.0)
    batched, reference = ewc.fisher(batches), ewc.fisher(batches, per_example=True)
    assert batched.keys() == reference.keys() and len(batched) == 5
    for name in reference:
        torch.testing.assert_close(batched[name], reference[name])
    model[3].weight.requires_grad_(False)  # a subset of a layer's parameters is still linear
    frozen = EWC(model, strength=1.0)
    torch.testing.assert_close(frozen.fisher(batches)["3.bias"], reference["3.bias"])


def test_ewc_penalty_and_its_online_accumulation():
    model = nn.Linear(2, 2, bias=False).double()
    data = [torch.randn(5, 2, dtype=torch.float64)]
    ewc = EWC(model, strength=3.0)
    ewc.after_task(data)
    assert ewc.penalty().item() == 0.0  # at the anchor
    fisher, anchor = ewc.terms[0]
    with torch.no_grad():
        model.weight += 0.5
    assert ewc.penalty().item() == pytest.approx(0.5 * 3.0 * (fisher["weight"] * 0.25).sum().item())
    ewc.after_task(data)
    assert len(ewc.terms) == 2  # plain EWC: one term per task
    online = EWC(model, strength=1.0, online=True, gamma=0.5)
    online.after_task(data)
    first = online.terms[0][0]["weight"].clone()
    online.after_task(data)
    assert len(online.terms) == 1
    expected = 0.5 * first + online.fisher(data)["weight"]
    torch.testing.assert_close(online.terms[0][0]["weight"], expected)


def test_si_importance_is_the_path_integral_over_the_squared_change():
    """One parameter, loss theta^2 / 2 from theta = 1, SGD lr 0.1, two steps: omega = sum of
    -g delta = 0.1 * 1 + 0.1 * 0.9^2 ... computed step by step; Omega = omega / (Delta^2 + xi)."""
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
    si = SynapticIntelligence(model, strength=1.0, damping=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected_omega, theta = 0.0, 1.0
    for _ in range(2):
        optimizer.zero_grad()
        (0.5 * model.weight.pow(2).sum()).backward()
        si.before_step()
        optimizer.step()
        si.after_step()
        g, new = theta, theta - 0.1 * theta
        expected_omega += -g * (new - theta)
        theta = new
    si.after_task()
    delta = theta - 1.0
    assert si.importance["weight"].item() == pytest.approx(expected_omega / (delta**2 + 0.1))
    with torch.no_grad():
        model.weight += 1.0
    assert si.penalty().item() == pytest.approx(si.importance["weight"].item() * 1.0)
    with pytest.raises(RuntimeError, match="before_step"):
        si.after_step()


def test_distillation_is_smallest_where_the_new_outputs_match_the_old():
    old = torch.randn(6, 5)
    new = old.clone().requires_grad_()
    loss = distillation_loss(new, old, temperature=2.0)
    loss.backward()
    assert new.grad.abs().max() < 1e-6  # cross-entropy to a fixed target is minimal there
    entropy = -(torch.softmax(old / 2, -1) * torch.log_softmax(old / 2, -1)).sum(-1).mean()
    assert loss.item() == pytest.approx(4.0 * entropy.item(), rel=1e-5)
    only_three = distillation_loss(new, old + torch.tensor([0, 0, 0, 9.0, 9.0]), classes=3)
    assert only_three.item() == pytest.approx(
        distillation_loss(new[:, :3], old[:, :3]).item(), rel=1e-6
    )


def test_the_replay_buffer_keeps_a_uniform_sample_of_each_class():
    kept_counts = torch.zeros(10)
    for trial in range(2000):
        buffer = ReplayBuffer(per_class=2, generator=torch.Generator().manual_seed(trial))
        buffer.add(torch.arange(10.0)[:, None], torch.zeros(10, dtype=torch.long))
        buffer.add(torch.tensor([[99.0]]), torch.tensor([1]))
        assert len(buffer) == 3
        for x in buffer.stored[0]:
            kept_counts[int(x)] += 1
    assert torch.allclose(kept_counts / 2000, torch.full((10,), 0.2), atol=0.03)
    inputs, labels = buffer.sample(50)
    assert inputs.shape == (50, 1) and set(labels.tolist()) <= {0, 1}
    assert math.isclose(float((labels == 1).float().mean()), 1 / 3, abs_tol=0.25)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(3).sample(1)
