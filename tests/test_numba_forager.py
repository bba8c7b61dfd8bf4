"""The compiled forager cycle (``kernels.numba_forager``) against the reference:
``Forager.simulate_cycle`` then ``RewardSTDP.block`` and ``skip``. Without release noise the
spikes are the same and the eligibility equal to float32 rounding; with it, the same
distribution of output spike counts."""

import dataclasses

import pytest
import torch

pytest.importorskip("numba")

from neuroplastic.envs import ForagingWorlds  # noqa: E402
from neuroplastic.kernels.numba_forager import run_cycle  # noqa: E402
from neuroplastic.models.forager import Forager, ForagerParameters  # noqa: E402
from neuroplastic.plasticity import RewardSTDP, RewardSTDPParameters  # noqa: E402


def agents(noise: float, seed: int = 0) -> Forager:
    agent = Forager(3, ForagerParameters(release_noise=noise), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    agent.w_in = agent.w_in * 1.6  # more hidden activity than at the start
    agent.w_out = 0.1 + torch.rand(agent.w_out.shape, generator=gen)  # outputs that fire
    return agent


def rule(agent: Forager) -> RewardSTDP:
    params = RewardSTDPParameters(cycle=agent.params.cycle, offset=float(agent.params.cycle))
    return RewardSTDP(torch.nn.Parameter(agent.w_out.clone()), params)


def test_the_compiled_cycle_equals_the_reference_without_noise():
    agent = agents(noise=0.0)
    worlds = ForagingWorlds(3, "task1", seed=4)
    reference, fast = rule(agent), rule(agent)
    spiked = 0
    for _ in range(4):
        view = worlds.observe()
        record = agent.simulate_cycle(view, torch.Generator())
        reference.block(record.hidden, record.output)
        reference.skip(agent.params.cycle - record.hidden.shape[0])
        counts, fired, hidden = run_cycle(agent, view, torch.Generator(), fast)
        torch.testing.assert_close(counts, record.counts, rtol=0, atol=0)
        torch.testing.assert_close(fired, record.output.sum(0), rtol=0, atol=0)
        torch.testing.assert_close(hidden, record.hidden_spikes, rtol=0, atol=0)
        torch.testing.assert_close(fast.state.pending, reference.state.pending,
                                   rtol=1e-5, atol=1e-9)  # fmt: skip
        assert fast.state.stdp.step == reference.state.stdp.step
        spiked += int(fired.sum())
        rewards = torch.tensor([1.0, -0.001, 0.0])
        torch.testing.assert_close(fast.reward(rewards), reference.reward(rewards),
                                   rtol=1e-5, atol=1e-9)  # fmt: skip
        worlds.step(counts.argmax(1))
    assert spiked > 20  # the outputs fired, so pairs were formed


def test_a_test_cycle_without_a_rule_gives_the_same_counts():
    agent = agents(noise=0.0, seed=1)
    view = ForagingWorlds(3, "task1", seed=2).observe()
    record = agent.simulate_cycle(view, torch.Generator())
    counts, _, _ = run_cycle(agent, view, torch.Generator())
    torch.testing.assert_close(counts, record.counts, rtol=0, atol=0)


def test_with_release_noise_the_counts_follow_the_same_distribution():
    agent = agents(noise=0.12, seed=2)
    view = ForagingWorlds(3, "task1", seed=3).observe()
    many = agent.repeat(200)
    views = view.repeat_interleave(200, 0)
    reference = many.simulate_cycle(views, torch.Generator().manual_seed(0)).counts
    fast, _, _ = run_cycle(many, views, torch.Generator().manual_seed(1))
    for replica in range(3):
        ours = fast[replica * 200:(replica + 1) * 200].mean(0)
        theirs = reference[replica * 200:(replica + 1) * 200].mean(0)
        spread = reference[replica * 200:(replica + 1) * 200].std(0) / 200**0.5 + 0.05
        assert ((ours - theirs).abs() <= 4 * spread).all()


def test_activity_too_long_for_a_cycle_is_refused():
    agent = agents(noise=0.0)
    short = dataclasses.replace(agent.params, cycle=40, decision=20)
    agent.params = short
    fast = rule(agent)
    with pytest.raises(ValueError, match="pair across cycles"):
        run_cycle(agent, ForagingWorlds(3, "task1", seed=4).observe(), torch.Generator(), fast)


def test_a_training_phase_on_the_compiled_cycle_ends_with_the_reference_weights():
    """``task_phase(backend="numba")`` against the torch path without release noise: the same
    meals, the same weights (to float32 rounding), the same waking rates."""
    from neuroplastic.experiments import foraging_protocol as protocol

    outcomes = {}
    for backend in protocol.BACKENDS:
        agent = agents(noise=0.0, seed=5)
        foragers = protocol.Foragers(agent, ForagingWorlds(3, "task1", seed=6),
                                     torch.Generator().manual_seed(7))  # fmt: skip
        learning = protocol.output_rule(foragers, gain=300.0)
        meals = protocol.task_phase(foragers, "task1", 6, learning,
                                    protocol.Scaling(3.0, 0.01), backend=backend)  # fmt: skip
        tested = protocol.test_phase(foragers, "task1", 5, 2, seed=8, backend=backend)
        outcomes[backend] = (meals, foragers.agent.w_out, foragers.waking_rates(), tested)
    (meals, weights, rates, tested), (fast_meals, fast_weights, fast_rates, fast_tested) = (
        outcomes["torch"], outcomes["numba"])  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(meals, fast_meals, strict=True))
    torch.testing.assert_close(fast_weights, weights, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fast_rates, rates)
    assert all(torch.equal(a, b) for a, b in zip(tested, fast_tested, strict=True))
    assert not torch.equal(weights, agents(noise=0.0, seed=5).w_out)  # it learnt something
