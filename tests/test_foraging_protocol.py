"""The foraging experiment's phases (``experiments.foraging_protocol``) on a small budget: each
phase changes what it should and nothing else."""

import dataclasses
import math

import pytest
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
    assert f.agent.w_in.min() >= 0 and f.agent.w_in.max() <= f.agent.params.input_max
    assert torch.equal(f.agent.w_out, w_out)


def test_input_normalisation_holds_each_hidden_neurons_total_within_bounds():
    f = foragers()
    protocol.unsupervised_phase(f, 5, input_total=0.4)
    w_in, bound = f.agent.w_in, f.agent.params.input_max
    torch.testing.assert_close(w_in.sum(-1), torch.full(w_in.shape[:2], 0.4))
    assert (w_in[f.agent.in_mask == 0] == 0).all()
    assert w_in.min() >= 0 and w_in.max() <= bound + 1e-6
    with pytest.raises(ValueError, match="cannot be reached"):
        protocol.unsupervised_phase(foragers(), 1, input_total=9 * bound + 0.1)


def test_hidden_homeostasis_moves_each_neurons_total_against_its_firing():
    """One cycle, the mean taken from that cycle alone (rate 1), step 0.1, a target below one
    spike: a neuron that fired has its total lowered to 0.36, a silent one raised to 0.44."""
    f = foragers()
    homeostasis = protocol.HiddenHomeostasis(target_spikes=0.5, step=0.1, rate=1.0)
    protocol.unsupervised_phase(f, 1, input_total=0.4, homeostasis=homeostasis)
    totals = f.agent.w_in.sum(-1)
    lowered, raised = torch.isclose(totals, torch.tensor(0.36)), torch.isclose(
        totals, torch.tensor(0.44))
    assert (lowered | raised).all() and lowered.any() and raised.any()
    # the neurons lowered are exactly those that fired in that cycle: replay it
    replay = foragers()
    replay.agent.w_in = protocol._hold_input_totals(replay.agent.w_in, replay.agent.in_mask, 0.4,
                                                    replay.agent.params.input_max)  # fmt: skip
    spikes = replay.agent.simulate_cycle(replay.worlds.observe(), replay.generator).hidden_spikes
    assert torch.equal(lowered, spikes > 0)
    with pytest.raises(ValueError, match="set input_total"):
        protocol.unsupervised_phase(foragers(), 1, homeostasis=homeostasis)
    with pytest.raises(ValueError, match="target spikes"):
        protocol.HiddenHomeostasis(target_spikes=0.0)


def test_the_output_rule_keeps_traces_for_the_cycles_asked():
    f = foragers()
    assert protocol.output_rule(f).params.cycles_kept == 6  # the paper's
    rule = protocol.output_rule(f, cycles_kept=1)
    assert rule.params.cycles_kept == 1 and rule.state.pending.shape[0] == 1


def test_task_and_sleep_phases_move_the_output_synapses_and_keep_each_outputs_total():
    f = foragers(1)
    rule = protocol.output_rule(f, gain=1000.0)
    rewarded, punished = protocol.task_phase(f, "task1", 6, rule)
    assert rewarded.shape == punished.shape == (2,)
    assert f.worlds.task.name == "task1" and f.waking["task1"][1] == 6
    after_task = f.agent.w_out.clone()
    assert not torch.allclose(after_task, torch.full_like(after_task, SMALL.output_weight))
    assert torch.allclose(after_task.sum(-1), f.targets, rtol=1e-5)
    assert f.waking_rates().sum() > 0
    protocol.sleep_phase(f, protocol.Sleep(2), rule)
    assert not torch.equal(f.agent.w_out, after_task)
    assert torch.allclose(f.agent.w_out.sum(-1), f.targets, rtol=1e-5)


def test_the_test_phase_learns_nothing_touches_no_training_state_and_counts_meals():
    f = foragers(2)
    w_in, w_out = f.agent.w_in.clone(), f.agent.w_out.clone()
    positions, random_state = f.worlds.agent.copy(), f.generator.get_state()
    rewarded, punished = protocol.test_phase(f, "task2", 30, worlds_per_network=3, seed=1)
    assert torch.equal(f.agent.w_in, w_in) and torch.equal(f.agent.w_out, w_out)
    assert (f.worlds.agent == positions).all()
    assert torch.equal(f.generator.get_state(), random_state)
    assert rewarded.shape == (2,) and (rewarded + punished).sum() > 0
    d = protocol.discriminability(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert d[0].item() == 0.75 and math.isnan(d[1].item())


def test_sleep_noise_follows_each_tasks_waking_rate_or_the_population_mean():
    f = foragers(3)
    f.record_waking("task1", torch.full((2, f.agent.n_hidden), 80.0))
    f.record_waking("task2", torch.full((2, f.agent.n_hidden), 0.0))
    f.record_waking("task2", torch.full((2, f.agent.n_hidden), 40.0))
    per_step = f.waking_rates() * SMALL.cycle  # spikes per cycle: mean of 80 and 20
    assert torch.allclose(per_step, torch.full_like(per_step, 50.0))
    f.waking["task1"][0][0, 0] += 80.0  # one neuron twice as active in task 1
    waking = protocol.Sleep(noise="waking").rates(f)
    uniform = protocol.Sleep(noise="uniform").rates(f)
    assert waking[0, 0] > waking[0, 1] and uniform[0, 0] == uniform[0, 1]
    assert torch.allclose(uniform.mean(-1), waking.mean(-1))


def test_top_synapses_marks_each_networks_strongest_tenth():
    weight = torch.arange(40.0).reshape(2, 4, 5)
    weight[1] = weight[1].flip(-1)
    top = protocol.top_synapses(weight)
    assert top.sum() == 4 and top[0].flatten()[-2:].all() and top[1, 3, :2].all()


def test_a_copy_is_an_independent_branch():
    f = foragers(4)
    branch = f.copy()
    protocol.task_phase(branch, "task1", 3, protocol.output_rule(branch))
    assert not torch.equal(branch.agent.w_out, f.agent.w_out)
    assert f.worlds.task.name == "unsupervised" and not f.waking


def test_a_network_in_several_worlds_keeps_identical_copies_that_share_their_changes():
    networks = Forager(2, SMALL, seed=5)
    f = protocol.Foragers(networks.repeat(3), ForagingWorlds(6, "unsupervised", seed=5),
                          torch.Generator().manual_seed(5), copies=3)  # fmt: skip
    protocol.unsupervised_phase(f, 3)
    rule = protocol.output_rule(f, gain=1000.0)
    protocol.task_phase(f, "task1", 4, rule)
    for weights in (f.agent.w_in, f.agent.w_out):
        copies = weights.reshape(2, 3, *weights.shape[1:])
        assert torch.equal(copies[:, 0], copies[:, 1]) and torch.equal(copies[:, 0], copies[:, 2])
    assert not torch.equal(f.networks.w_out[0], f.networks.w_out[1])
    assert f.networks.replicas == 2
    change = torch.arange(6.0).reshape(6, 1)
    assert f.shared(change).flatten().tolist() == [3.0, 3.0, 3.0, 12.0, 12.0, 12.0]
    with pytest.raises(ValueError, match="whole networks"):
        protocol.Foragers(networks.repeat(3), ForagingWorlds(6, "task1"), torch.Generator(),
                          copies=4)  # fmt: skip


@pytest.mark.parametrize("shape", [1, 2, 3, 4])
def test_lone_particle_views_put_one_whole_particle_next_to_the_agent(shape):
    from neuroplastic.envs.foraging import MOVES, SECOND_PIXEL

    views = protocol.lone_particle_views(shape)
    for move, (dr, dc) in enumerate(MOVES):
        pixels = {tuple(p) for p in views[move].nonzero().tolist()}
        assert len(pixels) == 2 and (3, 3) not in pixels and (3 + dr, 3 + dc) in pixels
        (r1, c1), (r2, c2) = sorted(pixels)
        assert {(r2 - r1, c2 - c1), (r1 - r2, c1 - c2)} & {SECOND_PIXEL[shape]}


def test_lone_particle_counts_read_a_wired_network_move_by_move():
    """A network wired by hand, hidden neuron k detecting the particle on move k's square and
    driving output k, answers each lone particle with its own move, and only that one."""
    shape = 1
    agent = Forager(1, seed=0)
    views = protocol.lone_particle_views(shape).reshape(8, -1)
    agent.in_mask.zero_()
    agent.w_in.zero_()
    agent.w_in[0, :8] = 0.17 * views  # hidden k: the two pixels of the particle on square k
    agent.in_mask[0, :8] = views
    agent.w_out.fill_(0.01)
    agent.w_out[0, torch.arange(8), torch.arange(8)] = 2.0
    foragers = protocol.Foragers(agent, ForagingWorlds(1, "task1"), torch.Generator())
    counts = protocol.lone_particle_counts(foragers, shape, repeats=3)[0]
    assert counts.shape == (8, 8)
    assert (counts.diagonal() > 0).all()
    assert (counts - torch.diag(counts.diagonal())).sum() == 0


def test_gain_homeostasis_moves_each_outputs_gain_against_its_running_rate():
    """``Scaling(mode="gain")``: each output's running mean of spikes per cycle starts at the
    target and moves by ``rate`` towards the cycle's count; the gain is divided by 1.1 where
    the mean is above the target and by 0.9 where below; the weights' totals stay put."""
    f = foragers(1)
    totals = f.targets.clone()
    rule = protocol.output_rule(f, gain=1000.0)
    scaling = protocol.Scaling(target_spikes=0.5, step=0.1, mode="gain", rate=0.5)
    gains, rates = torch.ones(2, SMALL.n_moves), torch.full((2, SMALL.n_moves), 0.5)
    for _ in range(4):
        protocol.task_phase(f, "task1", 1, rule, scaling)
        fired = (f.output_rates - 0.5 * rates) / 0.5  # the cycle's count, read back
        torch.testing.assert_close(fired, fired.round())
        rates = f.output_rates
        gains = gains / torch.where(rates > 0.5, 1.1, torch.where(rates < 0.5, 0.9, 1.0))
        torch.testing.assert_close(f.agent.output_gain, gains)
    assert (gains < 1).any() and (gains > 1).any()  # outputs that fired, and silent ones
    torch.testing.assert_close(f.targets, totals)
    torch.testing.assert_close(f.agent.w_out.sum(-1), totals)
    protocol.sleep_phase(f, protocol.Sleep(2), rule, scaling=scaling)  # it goes on in sleep
    assert not torch.equal(f.agent.output_gain, gains)
    assert not torch.equal(f.output_rates, rates)
    with pytest.raises(ValueError, match="scaling mode"):
        protocol.Scaling(mode="resistance")
    with pytest.raises(ValueError, match="scaling rate"):
        protocol.Scaling(rate=0.0)


def test_output_weights_are_bounded_before_they_are_normalised():
    """A synapse pushed from 0.3 to 10.3 is cut to the bound 0.5, then the output's inputs are
    rescaled to their total: 0.5 T / (T + 0.2), as the authors' code orders the two."""
    params = dataclasses.replace(SMALL, output_max=0.5)
    f = protocol.Foragers(Forager(1, params, seed=0), ForagingWorlds(1, "task1", seed=0),
                          torch.Generator().manual_seed(0))  # fmt: skip
    weight = torch.nn.Parameter(f.agent.w_out.clone())
    weight.grad = torch.zeros_like(weight)
    weight.grad[0, 2, 5] = -10.0  # the rule's convention: minus the change
    total = float(f.targets[0, 2])
    protocol._apply(f, weight)
    assert math.isclose(float(f.agent.w_out[0, 2, 5]), 0.5 * total / (total + 0.2), rel_tol=1e-5)
    torch.testing.assert_close(f.agent.w_out.sum(-1), f.targets)
