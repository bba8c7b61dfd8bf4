"""The foraging network's homeostatic rules (``plasticity.homeostasis``), by hand."""

import pytest
import torch

from neuroplastic.plasticity import (
    balanced_inhibition,
    normalise_inputs,
    scale_gains,
    scale_targets,
)


def test_normalisation_rescales_each_neurons_inputs_to_its_target():
    weight = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    out = normalise_inputs(weight, torch.tensor([2.0, 8.0]))
    assert torch.allclose(out, torch.tensor([[0.5, 1.5], [4.0, 4.0]]))
    replicas = normalise_inputs(torch.stack([weight, 2 * weight]), torch.ones(2, 2))
    assert torch.allclose(replicas.sum(-1), torch.ones(2, 2))
    with pytest.raises(ValueError, match="positive input totals"):
        normalise_inputs(torch.tensor([[1.0, -1.0]]), torch.ones(1))


def test_targets_move_against_the_firing_rate():
    targets = torch.tensor([1.0, 1.0, 1.0])
    out = scale_targets(targets, torch.tensor([0.5, 2.0, 1.0]), target_rate=1.0, delta=0.1)
    assert torch.allclose(out, torch.tensor([1.1, 0.9, 1.0]))


def test_inhibition_cancels_a_uniform_pattern():
    weight = torch.tensor([[1.0, 0.2], [3.0, 0.2]])  # (n_post 2, n_pre 2)
    inhibition = balanced_inhibition(weight)
    assert torch.allclose(inhibition, torch.tensor([[-2.0, -0.2], [-2.0, -0.2]]))
    net = weight + inhibition
    assert torch.allclose(net[:, 1], torch.zeros(2))  # neuron 1 drives both outputs alike
    assert torch.allclose(net.sum(0), torch.zeros(2))


def test_gains_follow_the_authors_resistance_against_the_firing_rate():
    """The resistance ``R`` grows by ``1 + d`` above the target and shrinks by ``1 - d`` below;
    the gain is ``1 / R``: 2 / 1.1, 2 / 0.9 and unchanged at the target."""
    gains = scale_gains(torch.full((3,), 2.0), torch.tensor([0.9, 0.1, 0.5]), 0.5, 0.1)
    assert torch.allclose(gains, torch.tensor([2.0 / 1.1, 2.0 / 0.9, 2.0]))
