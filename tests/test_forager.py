"""The foraging agent (``models.forager``): the paper's wiring and move policy, and a first
check that a view drives the network."""

import torch

from neuroplastic.envs import ForagingWorlds
from neuroplastic.models.forager import Forager, ForagerParameters, choose_moves
from neuroplastic.plasticity import balanced_inhibition

PARAMS = ForagerParameters()


def test_each_hidden_neuron_has_nine_inputs_none_from_the_agents_own_square():
    agent = Forager(3, seed=0)
    per_neuron = agent.in_mask.sum(-1)
    assert torch.equal(per_neuron, torch.full_like(per_neuron, 9.0))
    assert agent.in_mask[..., 24].sum() == 0  # the centre of the 7 x 7 window
    assert (agent.w_in[agent.in_mask == 0] == 0).all() and (agent.w_in >= 0).all()
    assert not torch.equal(agent.in_mask[0], agent.in_mask[1])  # replicas differ
    assert torch.equal(agent.w_out, torch.full_like(agent.w_out, PARAMS.output_weight))


def test_the_policy_follows_the_most_active_output_and_breaks_ties_at_random():
    gen = torch.Generator().manual_seed(0)
    quiet = ForagerParameters(exploration=0.0, exploration_step=0.0)
    counts = torch.tensor([[0.0, 3, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
    last = torch.tensor([5, 6])
    moves = choose_moves(counts, last, torch.zeros(2), quiet, gen)
    assert moves.tolist() == [1, 6]  # the winner; no spikes: the last move again
    tied = torch.tensor([[2.0, 0, 2, 0, 0, 0, 0, 0]]).repeat(4000, 1)
    picks = choose_moves(tied, torch.zeros(4000, dtype=torch.long), torch.zeros(4000), quiet, gen)
    assert set(picks.tolist()) == {0, 2}
    assert abs((picks == 0).float().mean().item() - 0.5) < 0.03


def test_exploration_grows_with_the_cycles_since_the_last_meal():
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(20000, 8)
    counts[:, 3] = 5.0  # the network always says 3
    last = torch.zeros(20000, dtype=torch.long)
    for hungry, expected in ((0, 0.01), (9, 0.10)):
        moves = choose_moves(counts, last, torch.full((20000,), float(hungry)), PARAMS, gen)
        changed = (moves != 3).float().mean().item()  # a random move is 3 one time in 8
        assert abs(changed - expected * 7 / 8) < 0.01


def test_a_view_drives_hidden_and_output_spikes_within_the_cycle():
    worlds = ForagingWorlds(2, "unsupervised", seed=0)
    agent = Forager(2, ForagerParameters(cycle=60, decision=30, output_weight=0.5), seed=0)
    window = torch.zeros(2, 7, 7)
    window[:, 2, 1:5] = 1.0  # a row of lit squares
    seen = []
    gen = torch.Generator().manual_seed(0)

    class Recorder:
        def step(self, pre, post):
            seen.append(post)

        def skip(self, steps):
            seen.extend([None] * steps)

    record = agent.run_cycle(window, gen, output_rule=Recorder())
    assert len(seen) == 60
    assert record.hidden_spikes.sum() > 0
    # equal weights and balanced inhibition: only the release noise makes outputs fire
    assert record.counts.sum() > 0
    agent.params = ForagerParameters(cycle=60, decision=30, output_weight=0.5, release_noise=0)
    assert agent.run_cycle(window, gen).counts.sum() == 0
    blank = agent.run_cycle(torch.zeros(2, 7, 7))
    assert blank.hidden_spikes.sum() == 0 and blank.counts.sum() == 0  # no input, no activity
    assert worlds.observe().shape == (2, 7, 7)


def test_skipping_a_cycles_quiet_rest_changes_nothing():
    """Once no neuron can reach threshold the cycle's rest is skipped; the records, and the
    state of a reward-modulated STDP rule told to skip, equal stepping through all 600 steps."""
    from neuroplastic.plasticity import RewardSTDP

    worlds = ForagingWorlds(3, "unsupervised", seed=2)
    agent = Forager(3, ForagerParameters(output_weight=0.3), seed=1)
    window = worlds.observe()

    class Stepping(RewardSTDP):  # never skips: steps through the quiet rest with zeros
        def skip(self, steps):
            zeros_pre = torch.zeros(3, agent.n_hidden)
            zeros_post = torch.zeros(3, 8)
            for _ in range(steps):
                self.step(zeros_pre, zeros_post)

    results = []
    for cls in (RewardSTDP, Stepping):
        weight = torch.nn.Parameter(agent.w_out.clone())
        rule = cls(weight)
        record = agent.run_cycle(window, torch.Generator().manual_seed(5), output_rule=rule)
        change = rule.reward(torch.ones(3))
        results.append((record, change, rule.state.stdp.step))
    (fast, fast_change, fast_steps), (full, full_change, full_steps) = results
    assert fast_steps == full_steps == 600
    assert full.hidden_spikes.sum() > 0 and full.counts.sum() > 0
    assert torch.equal(fast.counts, full.counts)
    assert torch.equal(fast.hidden_spikes, full.hidden_spikes)
    assert fast_change.abs().sum() > 0
    assert torch.allclose(fast_change, full_change, rtol=1e-5, atol=1e-12)


def test_in_sleep_hidden_neurons_fire_at_their_waking_rates_and_drive_the_outputs():
    from neuroplastic.plasticity import RewardSTDP

    agent = Forager(2, ForagerParameters(output_weight=0.3), seed=0)
    gen = torch.Generator().manual_seed(3)
    rates = torch.full((2, agent.n_hidden), 0.01)
    rates[1, :392] = 0.03  # replica 1: half its neurons three times as active
    rule = RewardSTDP(torch.nn.Parameter(agent.w_out.clone()))
    record = agent.sleep_cycle(rates, gen, output_rule=rule)
    per_step = record.hidden_spikes / 600
    assert abs(per_step[0].mean().item() - 0.01) < 0.001
    assert abs(per_step[1, :392].mean().item() - 0.03) < 0.002
    assert record.counts.sum() > 0 and rule.state.stdp.step == 600
    assert rule.reward(torch.full((2,), 0.5)).abs().sum() > 0  # sleep's constant reward
    silent = agent.sleep_cycle(torch.zeros(2, agent.n_hidden), gen)
    assert silent.hidden_spikes.sum() == 0 and silent.counts.sum() == 0


def test_a_cycle_simulated_layer_by_layer_equals_the_stepped_reference():
    """Without release noise, ``simulate_cycle`` plus the rules' blocks equals ``run_cycle``
    with the rules stepped: the records, the active length and both rules' changes."""
    from neuroplastic.plasticity import STDP, RewardSTDP

    params = ForagerParameters(output_weight=0.3, release_noise=0.0)
    agent = Forager(3, params, seed=1, dtype=torch.float64)
    agent.w_out = agent.w_out * (1 + torch.rand(agent.w_out.shape, dtype=torch.float64))
    agent.output_gain = 0.5 + torch.rand(3, params.n_moves, dtype=torch.float64)
    worlds = ForagingWorlds(3, "unsupervised", seed=2)
    outcomes = []
    for layered in (False, True):
        input_rule = STDP(torch.nn.Parameter(agent.w_in.clone()))
        output_rule = RewardSTDP(torch.nn.Parameter(agent.w_out.clone()))
        if layered:
            trains = agent.simulate_cycle(worlds.observe())
            input_rule.block(trains.inputs, trains.hidden)
            output_rule.block(trains.hidden, trains.output)
            for rule in (input_rule, output_rule):
                rule.skip(params.cycle - trains.hidden.shape[0])
            record = trains
        else:
            record = agent.run_cycle(worlds.observe(), input_rule=input_rule,
                                     output_rule=output_rule)  # fmt: skip
        input_rule.write()
        change = output_rule.reward(torch.ones(3))
        outcomes.append((record, input_rule.weight.grad, change, output_rule.state.stdp.step))
    (reference, ref_in, ref_out, ref_steps), (layered, in_grad, out_change, steps) = outcomes
    assert ref_steps == steps == params.cycle
    assert reference.counts.sum() > 0 and ref_in.abs().sum() > 0 and ref_out.abs().sum() > 0
    assert torch.equal(layered.counts, reference.counts)
    assert torch.equal(layered.hidden_spikes, reference.hidden_spikes)
    torch.testing.assert_close(in_grad, ref_in, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(out_change, ref_out, rtol=1e-10, atol=1e-16)


def test_a_sleep_cycle_simulated_at_once_equals_the_stepped_reference():
    from neuroplastic.plasticity import RewardSTDP

    params = ForagerParameters(output_weight=0.3, release_noise=0.0)
    agent = Forager(2, params, seed=0, dtype=torch.float64)
    agent.w_out = agent.w_out * (1 + torch.rand(agent.w_out.shape, dtype=torch.float64))
    rates = torch.full((2, agent.n_hidden), 0.01)
    changes, counts = [], []
    for at_once in (False, True):
        gen = torch.Generator().manual_seed(3)
        rule = RewardSTDP(torch.nn.Parameter(agent.w_out.clone()))
        if at_once:
            trains = agent.simulate_sleep(agent.sleep_spikes(rates, gen), gen)
            rule.block(trains.hidden, trains.output)
            counts.append(trains.counts)
        else:
            counts.append(agent.sleep_cycle(rates, gen, output_rule=rule).counts)
        changes.append(rule.reward(torch.full((2,), 0.5)))
    assert counts[0].sum() > 0
    assert torch.equal(counts[1], counts[0])
    torch.testing.assert_close(changes[1], changes[0], rtol=1e-10, atol=1e-16)


def test_release_noise_scales_each_spikes_release_within_its_range():
    """With noise, each output's drive from one hidden spike lies between (1 - r) and (1 + r)
    times its excitation, plus the same for its inhibition, and varies between spikes."""
    params = ForagerParameters(output_weight=0.3, release_noise=0.12)
    agent = Forager(1, params, seed=0, dtype=torch.float64)
    agent.w_out = agent.w_out * (1 + torch.rand(agent.w_out.shape, dtype=torch.float64))
    spikes = torch.zeros(50, 1, agent.n_hidden, dtype=torch.float64)
    spikes[:, 0, 7] = 1.0  # one neuron, every step
    drive = agent._drive(spikes, torch.Generator().manual_seed(0))[:, 0]
    excitation = agent.w_out[0, :, 7]
    inhibition = -agent.w_out[0, :, 7].mean()
    low = 0.88 * excitation + 1.12 * inhibition
    high = 1.12 * excitation + 0.88 * inhibition
    assert ((drive >= low - 1e-12) & (drive <= high + 1e-12)).all()
    assert drive.std(0).min() > 0


def test_the_agents_neuron_step_is_the_libraries_lif_step():
    from neuroplastic.models.forager import _step
    from neuroplastic.neurons.lif import initial_state, lif_step

    agent = Forager(1, PARAMS, seed=0)
    gen = torch.Generator().manual_seed(0)
    ours = theirs = initial_state(4, 30)
    spikes = 0
    for _ in range(100):
        current = torch.rand(4, 30, generator=gen) * 0.4
        z_ours, ours = _step(current, ours, agent.neuron)
        z_theirs, theirs = lif_step(current, theirs, agent.neuron)
        assert torch.equal(z_ours, z_theirs) and torch.allclose(ours.v, theirs.v)
        spikes += z_ours.sum()
    assert spikes > 0


def test_sleep_spikes_are_bernoulli_per_step_at_each_neurons_rate():
    """Drawn sparsely (binomial counts on distinct steps), the trains must match Bernoulli
    draws per step: the mean count, its variance (binomial, not Poisson), and uniform steps."""
    agent = Forager(1, PARAMS, seed=0)
    rates = torch.tensor([[0.002, 0.05, 0.5, 1.0]]).expand(1, 4)
    agent_rates = torch.zeros(1, agent.n_hidden)
    agent_rates[0, :4] = rates[0]
    gen = torch.Generator().manual_seed(0)
    trains = torch.stack([agent.sleep_spikes(agent_rates, gen)[:, 0, :4] for _ in range(400)])
    counts = trains.sum(1)  # (draws, 4)
    expected = 600 * rates[0]
    assert torch.allclose(counts.mean(0), expected, rtol=0.05)
    assert torch.allclose(counts.var(0)[:3], (expected * (1 - rates[0]))[:3], rtol=0.2)
    assert (counts[:, 3] == 600).all() and trains.max() == 1.0
    per_step = trains[:, :, 2].mean(0)  # rate 0.5: every step equally likely
    assert (per_step - 0.5).abs().max() < 0.1
    assert agent.sleep_spikes(torch.zeros(1, agent.n_hidden), gen).sum() == 0



def test_an_output_gain_scales_each_outputs_whole_input_and_travels_with_its_replicas():
    """``output_gain`` multiplies an output's drive, excitation and inhibition together (the
    authors' resistance): with release noise (the same draws) in the layered cycle's drive,
    without it in the stepped cycle's; ``repeat`` and ``select`` keep each replica's gains."""
    params = ForagerParameters(output_weight=0.3, release_noise=0.12)
    agent = Forager(2, params, seed=0, dtype=torch.float64)
    agent.w_out = agent.w_out * (1 + torch.rand(agent.w_out.shape, dtype=torch.float64))
    spikes = (torch.rand(30, 2, agent.n_hidden, dtype=torch.float64) < 0.02).double()
    plain = agent._drive(spikes, torch.Generator().manual_seed(4))
    stepped_plain = agent._output_drive(spikes[0], balanced_inhibition(agent.w_out),
                                        torch.Generator().manual_seed(5))  # fmt: skip
    gain = torch.tensor([[0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0],
                         [2.0, 0.5, 0.0, 1.0, 1.0, 1.0, 4.0, 0.75]], dtype=torch.float64)
    agent.output_gain = gain
    assert plain.abs().sum() > 0
    torch.testing.assert_close(agent._drive(spikes, torch.Generator().manual_seed(4)),
                               plain * gain, rtol=1e-12, atol=1e-14)  # fmt: skip
    torch.testing.assert_close(agent._output_drive(spikes[0], balanced_inhibition(agent.w_out),
                                                   torch.Generator().manual_seed(5)),
                               stepped_plain * gain, rtol=1e-12, atol=1e-14)  # fmt: skip
    assert torch.equal(agent.repeat(3).output_gain, gain.repeat_interleave(3, 0))
    assert torch.equal(agent.select(1).output_gain, gain[1:])
