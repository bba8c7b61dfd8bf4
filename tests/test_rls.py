"""Recursive least squares (``optim.rls``): the ridge solution, online."""

import pytest
import torch

from neuroplastic.optim.rls import RLS, rls_step


def stream(count=60, n=6, outputs=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, n, generator=gen, dtype=torch.float64)
    targets = torch.randn(count, outputs, generator=gen, dtype=torch.float64)
    return inputs, targets


def ridge(inputs, targets, alpha):
    gram = inputs.T @ inputs + alpha * torch.eye(inputs.shape[1], dtype=inputs.dtype)
    return torch.linalg.solve(gram, inputs.T @ targets).T


def test_rls_after_t_inputs_is_the_ridge_solution_of_those_inputs():
    inputs, targets = stream()
    alpha = 0.7
    weight = torch.zeros(2, 6, dtype=torch.float64)
    p = torch.eye(6, dtype=torch.float64) / alpha
    for t in range(len(inputs)):
        error = weight @ inputs[t] - targets[t]
        weight, p = rls_step(weight, p, inputs[t], error)
        if t in (3, 20, 59):
            torch.testing.assert_close(weight, ridge(inputs[: t + 1], targets[: t + 1], alpha))
            gram = inputs[: t + 1].T @ inputs[: t + 1] + alpha * torch.eye(6, dtype=torch.float64)
            torch.testing.assert_close(p, torch.linalg.inv(gram))


def test_the_optimiser_reads_the_error_from_the_gradient_and_batches_replicas():
    inputs, targets = stream()
    other_inputs, other_targets = stream(seed=1)
    weight = torch.nn.Parameter(torch.zeros(2, 2, 6, dtype=torch.float64))  # two replicas
    optimizer = RLS([weight], alpha=0.7)
    for t in range(len(inputs)):
        r = torch.stack([inputs[t], other_inputs[t]])
        f = torch.stack([targets[t], other_targets[t]])
        optimizer.zero_grad()
        loss = 0.5 * (((weight @ r[..., None])[..., 0] - f) ** 2).sum()
        loss.backward()
        optimizer.step(inputs=r)
    torch.testing.assert_close(weight.detach()[0], ridge(inputs, targets, 0.7))
    torch.testing.assert_close(weight.detach()[1], ridge(other_inputs, other_targets, 0.7))
    with pytest.raises(TypeError, match="inputs"):
        optimizer.step()
    with pytest.raises(ValueError, match="inputs must be"):
        optimizer.step(inputs=torch.zeros(6))
    with pytest.raises(ValueError, match="alpha"):
        RLS([weight], alpha=0.0)
