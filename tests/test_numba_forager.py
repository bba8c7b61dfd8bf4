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


def agents(noise: float, seed: int = 0, gained: bool = False) -> Forager:
    agent = Forager(3, ForagerParameters(release_noise=noise), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    agent.w_in = agent.w_in * 1.6  # more hidden activity than at the start
    agent.w_out = 0.1 + torch.rand(agent.w_out.shape, generator=gen)  # outputs that fire
    if gained:  # outputs' input gains (gain homeostasis), some above 1 and some below
        agent.output_gain = 0.5 + torch.rand(agent.replicas, agent.params.n_moves, generator=gen)
    return agent


def rule(agent: Forager) -> RewardSTDP:
    params = RewardSTDPParameters(cycle=agent.params.cycle, offset=float(agent.params.cycle))
    return RewardSTDP(torch.nn.Parameter(agent.w_out.clone()), params)


@pytest.mark.parametrize("gained", [False, True])
def test_the_compiled_cycle_equals_the_reference_without_noise(gained):
    agent = agents(noise=0.0, gained=gained)
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
    # the noise itself: the counts vary as much as the reference's (a kernel that dropped the
    # noise would give the same counts in every copy)
    ours_spread = fast.reshape(3, 200, -1).std(1)
    their_spread = reference.reshape(3, 200, -1).std(1)
    assert their_spread.sum() > 1.0
    assert (ours_spread - their_spread).abs().sum() <= 0.25 * their_spread.sum()


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


def sleep_rates(agent: Forager, seed: int = 0) -> torch.Tensor:
    """Waking-like rates, some neurons silent, a few busy (spikes per step)."""
    gen = torch.Generator().manual_seed(seed)
    rates = 0.01 * torch.rand(agent.replicas, agent.n_hidden, generator=gen)
    return rates * (torch.rand(rates.shape, generator=gen) < 0.7)


@pytest.mark.parametrize("gained", [False, True])
def test_sleep_cycles_on_the_same_spikes_equal_the_reference_across_cycles(gained):
    """Three sleep cycles, then a waking one, on the reference's own hidden spikes and without
    release noise: the same output spikes, eligibility, reward changes and STDP state (ring and
    traces), so pairs across the cycles' boundaries are counted as the reference counts them."""
    from neuroplastic.kernels.numba_forager import carries_pairs, run_sleep_cycle

    agent = agents(noise=0.0, seed=3, gained=gained)
    agent.w_out = agent.w_out * 0.5  # outputs that fire some of the time, not all
    rates = sleep_rates(agent)
    reference, fast = rule(agent), rule(agent)
    gen = torch.Generator().manual_seed(9)
    fired_total = 0
    crossing = 0
    for cycle in range(3):
        trains = agent.sleep_spikes(rates, gen)
        record = agent.simulate_sleep(trains, torch.Generator())
        reference.block(record.hidden, record.output)
        fired = run_sleep_cycle(agent, rates, torch.Generator(), fast, hidden_trains=trains)
        torch.testing.assert_close(fired, record.output.sum(0), rtol=0, atol=0)
        # float32 sums of ~1e-4 terms in another order: absolute tolerance at 1e-4 of the scale
        scale = reference.state.pending.abs().max()
        torch.testing.assert_close(fast.state.pending, reference.state.pending,
                                   rtol=1e-4, atol=1e-4 * float(scale))  # fmt: skip
        ours, theirs = fast.state.stdp, reference.state.stdp
        assert ours.step == theirs.step
        assert torch.equal(ours.pre_history, theirs.pre_history)
        assert torch.equal(ours.post_history, theirs.post_history)
        torch.testing.assert_close(ours.pre_trace, theirs.pre_trace, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.post_trace, theirs.post_trace, rtol=1e-5, atol=1e-6)
        ours_change, their_change = fast.reward(0.5), reference.reward(0.5)
        torch.testing.assert_close(ours_change, their_change, rtol=1e-4,
                                   atol=1e-4 * float(their_change.abs().max()))  # fmt: skip
        fired_total += int(fired.sum())
        crossing += int(record.output[-120:].sum()) * (cycle < 2)
    assert fired_total > 30 and crossing > 0  # pairs formed, some across the boundaries
    # a waking cycle after sleep: the protocol computes it on the reference path
    from neuroplastic.experiments import foraging_protocol as protocol

    with pytest.raises(ValueError, match="pair with this one"):
        run_cycle(agent, ForagingWorlds(3, "task1", seed=4).observe(), torch.Generator(), fast)
    for learning, backend in ((reference, "torch"), (fast, "numba")):
        foragers = protocol.Foragers(agent, ForagingWorlds(3, "task1", seed=4),
                                     torch.Generator())  # fmt: skip
        protocol._cycle(foragers, learning, backend)
    scale = float(reference.state.pending.abs().max())
    torch.testing.assert_close(fast.state.pending, reference.state.pending, rtol=1e-4,
                               atol=1e-4 * scale)  # fmt: skip
    assert not carries_pairs(fast)  # the waking cycle's quiet end left nothing to pair


def test_sleep_spikes_follow_the_reference_process():
    """The kernel's hidden spikes: per neuron a count with the binomial's mean and variance over
    the cycle's steps, on distinct steps spread evenly over the cycle."""
    from neuroplastic.kernels import numba_forager as kernel

    rates = torch.tensor([[0.0, 0.002, 0.02, 0.2, 1.0]], dtype=torch.float64).repeat(400, 1)
    kernel._seed(3)
    starts, times, neurons = kernel.sleep_spikes(rates.numpy(), 600)
    counts = torch.zeros(400, 5)
    for r in range(400):
        who = torch.from_numpy(neurons[starts[r]:starts[r + 1]])
        when = torch.from_numpy(times[starts[r]:starts[r + 1]])
        counts[r] = torch.bincount(who, minlength=5).float()
        for h in range(5):  # distinct steps
            assert when[who == h].unique().numel() == int(counts[r, h])
    p = rates[0].float()
    mean, var = 600 * p, 600 * p * (1 - p)
    assert counts[:, 0].sum() == 0 and (counts[:, 4] == 600).all()
    assert ((counts.mean(0) - mean).abs() <= 4 * (var / 400).sqrt() + 1e-6).all()
    middle = counts[:, 1:4].var(0)
    assert ((middle / var[1:4]) - 1).abs().max() < 0.3
    late = torch.from_numpy(times)[(torch.from_numpy(neurons) == 3)]
    assert abs((late < 300).float().mean() - 0.5) < 0.02  # uniform over the cycle


def test_a_sleep_phase_on_the_compiled_cycle_moves_the_weights_like_the_reference():
    """``sleep_phase(backend="numba")`` against the torch path from the same networks: different
    draws of the same processes, so the same mean weight change within the spread over
    replicas."""
    from neuroplastic.experiments import foraging_protocol as protocol

    changes = {}
    for backend in protocol.BACKENDS:
        agent = agents(noise=0.12, seed=5).repeat(16)
        agent.w_out = agent.w_out * 0.5
        foragers = protocol.Foragers(agent, ForagingWorlds(48, "task1", seed=6),
                                     torch.Generator().manual_seed(7))  # fmt: skip
        foragers.waking["task1"] = (sleep_rates(agent) * 600, 1)
        learning = protocol.output_rule(foragers, gain=300.0)
        before = foragers.agent.w_out.clone()
        protocol.sleep_phase(foragers, protocol.Sleep(cycles=4), learning, backend=backend)
        changes[backend] = (foragers.agent.w_out - before).abs().sum((1, 2))
    torch_change, fast_change = changes["torch"], changes["numba"]
    assert torch_change.mean() > 0
    spread = (torch_change.std() + fast_change.std()) / 48**0.5
    assert (fast_change.mean() - torch_change.mean()).abs() <= 4 * spread
