"""The class-incremental training loop (``continual.training``)."""

import pytest
import torch
from torch import nn

from neuroplastic.continual.training import (
    Protocol,
    accuracy,
    linear_layers,
    relu_network,
    task_loss,
    train_task,
)


def test_the_authors_network_is_bias_free_relu_with_small_uniform_weights():
    model = relu_network((784, 30, 30, 10), generator=torch.Generator().manual_seed(0))
    layers = linear_layers(model)
    assert [tuple(layer.weight.shape) for layer in layers] == [(30, 784), (30, 30), (10, 30)]
    assert all(layer.bias is None and layer.weight.abs().max() <= 0.01 for layer in layers)
    assert sum(isinstance(m, nn.Dropout) for m in model) == 2
    assert isinstance(model[-1], nn.ReLU)  # the outputs are ReLU units too


def test_squared_error_against_one_hot_and_all_zero_outputs_count_as_digit_0():
    outputs = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    assert task_loss(outputs, labels, Protocol()).item() == pytest.approx(0.5 * (0.25 + 1.0) / 2)
    model = nn.Sequential(nn.Linear(2, 3, bias=False))
    nn.init.zeros_(model[0].weight)
    assert accuracy(model, torch.randn(4, 2), torch.tensor([0, 0, 1, 2])) == 0.5
    with pytest.raises(ValueError, match="squared or cross_entropy"):
        Protocol(loss="hinge")


def test_a_task_is_learnt_and_the_hooks_are_called():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=gen)
    y = (x[:, 0] > 0).long()
    model = relu_network((5, 20, 2), dropout=0.0, generator=gen, init=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    calls = []
    train_task(model, optimizer, x, y, Protocol(epochs=10, batch_size=20), gen,
               extra_loss=lambda m, xb, yb: torch.zeros(()), after_step=lambda: calls.append(1))
    assert accuracy(model, x, y) > 0.9
    assert len(calls) == 10 * 400 // 20
