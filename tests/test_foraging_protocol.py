"""The foraging experiment's phases (``experiments.foraging_protocol``) on a small budget: each
phase changes what it should and nothing else."""

import math

import torch

from neuroplastic.envs import ForagingWorlds
from neuroplastic.experiments import foraging_protocol as protocol
from neuroplastic.models.forager import Forager, ForagerParameters

SMALL = ForagerParameters(cycle=80, decision=40, output_weight=0.3)


def foragers(seed=0):
    return protocol.Foragers(Forager(2, SMALL, seed=seed), ForagingWorlds(2, "unsupervised",
                             seed=seed), torch.Generator().manual_seed(seed))  # fmt: skip


def test_the_unsupervised_phase_shapes_only_the_input_synapses_within_bounds():
    f = foragers()
    w_in, w_out = f.agent.w_in.clone(), f.agent.w_out.clone()
    protocol.unsupervised_phase(f, 5)
    assert not torch.equal(f.agent.w_in, w_in)
    assert (f.agent.w_in[f.agent.in_mask == 0] == 0).all()
    assert f.agent.w_in.min() >= 0 and f.agent.w_in.max() <= f.input_max
    assert torch.equal(f.agent.w_out, w_out)


def test_task_and_sleep_phases_move_the_output_synapses_and_keep_each_outputs_total():
    f = foragers(1)
    rule = protocol.output_rule(f)
    protocol.task_phase(f, "task1", 6, rule)
    assert f.worlds.task.name == "task1" and f.waking_cycles == 6
    after_task = f.agent.w_out.clone()
    assert not torch.allclose(after_task, torch.full_like(after_task, SMALL.output_weight))
    assert torch.allclose(after_task.sum(-1), f.targets, rtol=1e-5)
    assert f.waking_rates().sum() > 0
    protocol.sleep_phase(f, 2, rule)
    assert not torch.equal(f.agent.w_out, after_task)
    assert torch.allclose(f.agent.w_out.sum(-1), f.targets, rtol=1e-5)


def test_the_test_phase_learns_nothing_and_counts_meals_by_task():
    f = foragers(2)
    w_in, w_out = f.agent.w_in.clone(), f.agent.w_out.clone()
    rewarded, punished = protocol.test_phase(f, "task2", 30)
    assert torch.equal(f.agent.w_in, w_in) and torch.equal(f.agent.w_out, w_out)
    assert f.worlds.task.name == "task2" and rewarded.shape == (2,)
    d = protocol.discriminability(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert d[0].item() == 0.75 and math.isnan(d[1].item())
