"""Reward-modulated STDP with eligibility over movement cycles (``plasticity.reward_stdp``),
against the paper's sum over stored traces computed by hand."""

import math

import pytest
import torch

from neuroplastic.plasticity import RewardSTDP, RewardSTDPParameters, STDPParameters

STDP = STDPParameters(potentiation=0.04, depression=-0.04, tau=80.0, window=120)
PARAMS = RewardSTDPParameters(stdp=STDP, cycle=100, cycles_kept=3, offset=100.0)


def run(pre_times, post_times, rewards, weight=None, balance=True):
    """A (2 post x 1 pre) synapse pair, spikes on post neuron 0; a reward at every cycle end.
    Returns the change each reward event wrote."""
    w = torch.nn.Parameter(
        torch.tensor([[0.5], [0.25]], dtype=torch.float64) if weight is None else weight
    )
    rule = RewardSTDP(w, PARAMS, balance_outputs=balance)
    changes = []
    for cycle, reward in enumerate(rewards):
        for t in range(cycle * 100, (cycle + 1) * 100):
            pre = torch.tensor([float(t in pre_times)], dtype=torch.float64)
            post = torch.tensor([float(t in post_times), 0.0], dtype=torch.float64)
            rule.step(pre, post)
        changes.append(rule.reward(reward).clone())
    return w, changes


def test_a_trace_meets_the_next_reward_events_then_is_erased():
    """One pair (pre 10, post 30) in cycle 0; rewards 1, 2, -1, 5: the trace meets the ends of
    cycles 0, 1, 2 (steps 99, 199, 299) and no more."""
    w, changes = run({10}, {30}, [1.0, 2.0, -1.0, 5.0])
    trace = 0.04 * math.exp(-20 / 80)
    for cycle, reward in enumerate([1.0, 2.0, -1.0]):
        t = (cycle + 1) * 100 - 1
        expected = 0.5 * reward * trace / (t - 30 + 100)  # balance 1: weights unchanged
        assert changes[cycle][0, 0].item() == pytest.approx(expected, rel=1e-12)
        assert changes[cycle][1, 0].item() == 0.0  # no pairs on post neuron 1
    assert changes[3].abs().max().item() == 0.0
    assert torch.equal(w.grad, -sum(changes))


def test_traces_of_different_cycles_add_with_their_own_ages():
    """Pairs in cycle 0 (pre 10, post 30) and cycle 1 (post 150, pre 170: depression)."""
    _, changes = run({10, 170}, {30, 150}, [0.0, 1.0, 1.0])
    potentiation, depression = 0.04 * math.exp(-20 / 80), -0.04 * math.exp(-20 / 80)
    for cycle in (1, 2):
        t = (cycle + 1) * 100 - 1
        expected = 0.5 * (potentiation / (t - 30 + 100) + depression / (t - 170 + 100))
        assert changes[cycle][0, 0].item() == pytest.approx(expected, rel=1e-12)
    assert changes[0].abs().max().item() == 0.0  # reward 0


def test_output_balancing_scales_by_the_presynaptic_total_at_the_start():
    w = torch.tensor([[0.5], [0.25]], dtype=torch.float64)
    rule_weight = torch.nn.Parameter(w.clone())
    rule = RewardSTDP(rule_weight, PARAMS)
    with torch.no_grad():
        rule_weight.mul_(0.5)  # the neuron's outputs have halved since: factor 2
    for t in range(100):
        rule.step(torch.tensor([float(t == 10)], dtype=torch.float64),
                  torch.tensor([float(t == 30), 0.0], dtype=torch.float64))  # fmt: skip
    change = rule.reward(1.0)
    expected = 0.25 * 2.0 * 0.04 * math.exp(-20 / 80) / (99 - 30 + 100)
    assert change[0, 0].item() == pytest.approx(expected, rel=1e-12)
    _, unbalanced = run({10}, {30}, [1.0], balance=False)
    assert unbalanced[0][0, 0].item() == pytest.approx(
        0.5 * 0.04 * math.exp(-20 / 80) / 169, rel=1e-12
    )


def test_a_reward_event_must_end_a_cycle():
    rule = RewardSTDP(torch.nn.Parameter(torch.ones(2, 1)), PARAMS)
    rule.step(torch.zeros(1), torch.zeros(2))
    with pytest.raises(ValueError, match="ends a movement cycle of 100 steps; 1 steps taken"):
        rule.reward(1.0)


def test_replicas_are_independent_networks_with_their_own_rewards():
    gen = torch.Generator().manual_seed(0)
    pre = (torch.rand(200, 2, 3, generator=gen) < 0.05).double()
    post = (torch.rand(200, 2, 4, generator=gen) < 0.05).double()
    weights = torch.rand(2, 4, 3, generator=gen, dtype=torch.float64) + 0.5
    rewards = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=torch.float64)  # (cycle, replica)
    batched = RewardSTDP(torch.nn.Parameter(weights.clone()), PARAMS)
    alone = [RewardSTDP(torch.nn.Parameter(weights[r].clone()), PARAMS) for r in range(2)]
    for cycle in range(2):
        for t in range(cycle * 100, (cycle + 1) * 100):
            batched.step(pre[t], post[t])
            for r in range(2):
                alone[r].step(pre[t, r], post[t, r])
        change = batched.reward(rewards[cycle])
        for r in range(2):
            expected = alone[r].reward(rewards[cycle, r].item())
            assert torch.allclose(change[r], expected, rtol=1e-12, atol=1e-15)
    assert batched.weight.grad.abs().sum() > 0


def test_a_block_of_steps_equals_stepping_through_it():
    """Random trains over 5 cycles of 100 steps, fed in blocks that cross the cycles' ends
    (kept 3 cycles): every reward event writes what stepping writes."""
    gen = torch.Generator().manual_seed(0)
    pre = (torch.rand(500, 2, 6, generator=gen) < 0.05).double()
    post = (torch.rand(500, 2, 4, generator=gen) < 0.05).double()
    weight = torch.rand(2, 4, 6, generator=gen, dtype=torch.float64) + 0.5
    changes = {}
    for by_block in (False, True):
        rule = RewardSTDP(torch.nn.Parameter(weight.clone()), PARAMS)
        written = []
        for cycle in range(5):
            steps = range(cycle * 100, (cycle + 1) * 100)
            if by_block:  # two uneven blocks per cycle
                cut = steps.start + 37
                rule.block(pre[steps.start : cut], post[steps.start : cut])
                rule.block(pre[cut : steps.stop], post[cut : steps.stop])
            else:
                for t in steps:
                    rule.step(pre[t], post[t])
            written.append(rule.reward(torch.tensor([1.0, -0.5], dtype=torch.float64)).clone())
        changes[by_block] = torch.stack(written)
    assert changes[False].abs().sum() > 0
    torch.testing.assert_close(changes[True], changes[False], rtol=1e-10, atol=1e-15)


def run_normalised(kind, rate=0.25):
    """One pair (pre 10, post 30) per cycle for three cycles, a second (pre 250, post 260) in
    cycle 2; reward 1 at every cycle end; balance off. Returns (changes, the rule)."""
    params = PARAMS._replace(activity_normalisation=kind, activity_rate=rate)
    w = torch.nn.Parameter(torch.tensor([[0.5], [0.25]], dtype=torch.float64))
    rule = RewardSTDP(w, params, balance_outputs=False)
    changes = []
    for cycle in range(3):
        for t in range(cycle * 100, (cycle + 1) * 100):
            pre = float(t % 100 == 10 or t == 250)
            post = float(t % 100 == 30 or t == 260)
            rule.step(torch.tensor([pre], dtype=torch.float64),
                      torch.tensor([post, 0.0], dtype=torch.float64))  # fmt: skip
        changes.append(rule.reward(1.0).clone())
    return changes, rule


def test_activity_normalisation_divides_or_multiplies_by_the_running_average():
    """By hand: each event's eligibility E (one synapse here), Sum = |E|, Avg starts at the
    first Sum and moves by Avg <- (1 - d) Avg + d Sum; the change is 0.5 E Avg / Sum
    (divide) or 0.5 E Sum / Avg (multiply)."""
    plain, _ = run_normalised("off")
    eligibility = [c[0, 0].item() / 0.5 for c in plain]
    assert eligibility[0] < eligibility[1] < eligibility[2]  # traces pile up across cycles
    for kind in ("divide", "multiply"):
        changes, rule = run_normalised(kind)
        average = 0.0
        for event, e in enumerate(eligibility):
            total = abs(e)
            average = total if average == 0 else 0.75 * average + 0.25 * total
            ratio = average / total if kind == "divide" else total / average
            assert changes[event][0, 0].item() == pytest.approx(0.5 * e * ratio, rel=1e-12)
            assert changes[event][1, 0].item() == 0.0
        assert rule.state.average_activity.item() == pytest.approx(average, rel=1e-12)
    # divide: every event's total absolute eligibility becomes the running average
    divided, rule = run_normalised("divide")
    assert abs(divided[-1][0, 0].item() / 0.5) == pytest.approx(
        rule.state.average_activity.item(), rel=1e-12)


def test_an_unknown_normalisation_is_refused():
    changes = pytest.raises(ValueError, match="activity_normalisation")
    with changes:
        run_normalised("sqrt")


def code_reference(pairs, rewards, rate, cap, weight=0.5, cycle=100, kept=3, offset=100.0):
    """A scalar transcription of the authors' per-synapse rule for one synapse, over stored
    traces (the pairs' spikes lie more than the STDP window from any other pair's, so each pair
    is one trace): at each event, drop traces older than ``kept`` cycles, move the signed running
    average of the trace sum first (floored at 1e-10 in magnitude), then multiply the weight by
    ``1 + D_k`` for each trace, ``D_k`` its share times the reward times Sum / Avg, clipped.
    ``pairs`` are (pre, post) step pairs. Returns the change each event makes to a fixed
    ``weight`` (no balancing), and a bound on its terms beyond the first order."""
    traces = []  # (step of the later spike, STDP change)
    for pre, post in pairs:
        later = max(pre, post)
        sign = 1.0 if post > pre else -1.0
        traces.append((later, sign * 0.04 * math.exp(-abs(post - pre) / 80)))
    average, changes, second_order = 0.0, [], []
    for event, reward in enumerate(rewards):
        now = (event + 1) * cycle - 1
        alive = [(t, m) for t, m in traces if t <= now and now - t < kept * cycle]
        shares = [m / (now - t + offset) for t, m in alive]
        total = sum(shares)
        average = (1 - rate) * average + rate * total
        if 0 <= average < 1e-10:
            average = 1e-10
        elif -1e-10 < average < 0:
            average = -1e-10
        factor, size = 1.0, 0.0
        for share in shares:
            relative = min(cap, max(-cap, share * reward * total / average))
            factor *= 1 + relative
            size += abs(relative)
        changes.append(weight * (factor - 1))
        # a product of (1 + D_k) differs from 1 + sum D_k by at most this
        second_order.append(weight * (math.exp(size) - 1 - size))
    return changes, second_order


def run_per_synapse(pairs, rewards, rate, cap=math.inf):
    """The rule on the same synapse (post neuron 0 of ``run``'s pair), balance off."""
    params = PARAMS._replace(activity_normalisation="per_synapse", activity_rate=rate,
                             change_cap=cap)  # fmt: skip
    w = torch.nn.Parameter(torch.tensor([[0.5], [0.25]], dtype=torch.float64))
    rule = RewardSTDP(w, params, balance_outputs=False)
    pre_times = {pre for pre, _ in pairs}
    post_times = {post for _, post in pairs}
    changes = []
    for event, reward in enumerate(rewards):
        for t in range(event * 100, (event + 1) * 100):
            rule.step(torch.tensor([float(t in pre_times)], dtype=torch.float64),
                      torch.tensor([float(t in post_times), 0.0], dtype=torch.float64))  # fmt: skip
        changes.append(rule.reward(reward).clone())
    return changes, rule


def test_per_synapse_normalisation_follows_the_authors_rule_over_stored_traces():
    """Several traces per synapse, of both signs, none clipped (rate 0.25 keeps Sum / Avg
    small): the change is the code's product over traces to within its terms beyond the first
    order (each D_k below 1e-2)."""
    pairs = [(10, 30), (170, 160), (320, 340), (480, 470), (630, 635)]
    rewards = [1.0, -0.5, 1.0, 2.0, 1.0, -1.0, 1.0, 0.5]
    changes, rule = run_per_synapse(pairs, rewards, rate=0.25)
    expected, second_order = code_reference(pairs, rewards, rate=0.25, cap=math.inf)
    assert any(abs(e) > 1e-6 for e in expected)
    for event, (e, bound) in enumerate(zip(expected, second_order, strict=True)):
        assert abs(changes[event][0, 0].item() - e) <= bound + 1e-15
        assert bound <= 0.02 * abs(e)  # the check can tell
        assert changes[event][1, 0].item() == 0.0  # no traces: its average sits at the floor
    assert rule.state.average_activity[1, 0].item() == 1e-10


def test_per_synapse_normalisation_takes_its_sign_from_the_synapse_average():
    """A synapse that has only been depressed (negative average) and then gets a potentiating
    pair is depressed by a reward: the change is S E^2 / Avg, exactly, event by event."""
    pairs = [(30, 10), (180, 160), (330, 310), (910, 930)]  # three post-pre, then a pre-post
    rewards = [1.0] * 10
    changes, rule = run_per_synapse(pairs, rewards, rate=0.25)
    plain, _ = run_per_synapse(pairs, [0.0] * 10, rate=0.25)  # reward 0 leaves E untouched
    eligibility = []
    for event in range(10):  # E by hand: the shares of the traces alive at each event
        now = (event + 1) * 100 - 1
        e = 0.0
        for pre, post in pairs:
            later = max(pre, post)
            if later <= now and now - later < 300:
                sign = 1.0 if post > pre else -1.0
                e += sign * 0.04 * math.exp(-abs(post - pre) / 80) / (now - later + 100)
        eligibility.append(e)
    average = 0.0
    for event, e in enumerate(eligibility):
        average = 0.75 * average + 0.25 * e
        average = max(average, 1e-10) if average >= 0 else min(average, -1e-10)
        assert changes[event][0, 0].item() == pytest.approx(0.5 * e * e / average, rel=1e-12)
    assert eligibility[9] > 0 and changes[9][0, 0].item() < 0  # potentiation, against the average
    assert all(c.abs().max().item() == 0.0 for c in plain)


def test_the_change_cap_clips_each_synapse_at_each_event():
    """At the code's rate (0.001), a first trace meets an average a thousandth of it: its
    relative change is capped at 0.01 (one trace per synapse: equal to the code's per-trace
    clip), then decays below the cap as the trace ages."""
    pairs = [(10, 30)]
    rewards = [1.0, 1.0, 1.0]
    changes, _ = run_per_synapse(pairs, rewards, rate=0.001, cap=0.01)
    expected, _ = code_reference(pairs, rewards, rate=0.001, cap=0.01)
    assert changes[0][0, 0].item() == pytest.approx(0.5 * 0.01, rel=1e-12)
    for event, e in enumerate(expected):
        assert changes[event][0, 0].item() == pytest.approx(e, rel=1e-12)
    uncapped, _ = run_per_synapse(pairs, rewards, rate=0.001)
    assert uncapped[0][0, 0].item() > 10 * changes[0][0, 0].item()
    # the cap leaves smaller changes as they are, in any reading
    w, plain = run({10}, {30}, [1.0, 2.0])
    assert max(c.abs().max().item() for c in plain) < 1e-3
