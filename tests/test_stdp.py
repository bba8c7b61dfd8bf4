"""Windowed all-pairs STDP (``plasticity.stdp``) against spike pairs counted by hand."""

import math

import pytest
import torch

from neuroplastic.plasticity import STDP, STDPParameters, initial_state, stdp_step

PARAMS = STDPParameters(potentiation=0.04, depression=-0.04, tau=80.0, window=120)


def total_change(pre_times, post_times, steps, params=PARAMS):
    """Run one synapse through ``steps`` steps with spikes at the given times."""
    state = initial_state((), 1, 1, params, dtype=torch.float64)
    total = torch.zeros(1, 1, dtype=torch.float64)
    for t in range(steps):
        pre = torch.tensor([float(t in pre_times)], dtype=torch.float64)
        post = torch.tensor([float(t in post_times)], dtype=torch.float64)
        change, state = stdp_step(pre, post, state, params)
        total += change
    return total.item()


def test_one_pair_each_way():
    assert total_change({10}, {30}, 40) == pytest.approx(0.04 * math.exp(-20 / 80), rel=1e-12)
    assert total_change({30}, {10}, 40) == pytest.approx(-0.04 * math.exp(-20 / 80), rel=1e-12)


def test_the_window_is_inclusive_and_same_step_spikes_form_no_pair():
    assert total_change({0}, {120}, 130) == pytest.approx(0.04 * math.exp(-120 / 80), rel=1e-12)
    assert total_change({0}, {121}, 130) == pytest.approx(0.0, abs=1e-15)
    assert total_change({5}, {5}, 10) == 0.0


def test_all_pairs_count():
    """Two pre spikes before one post spike, then a pre spike after it."""
    expected = 0.04 * (math.exp(-20 / 80) + math.exp(-10 / 80)) - 0.04 * math.exp(-5 / 80)
    assert total_change({10, 20, 35}, {30}, 50) == pytest.approx(expected, rel=1e-12)


def test_random_trains_match_every_pair_counted_by_brute_force():
    """Batched (2 replicas), 5 pre and 3 post neurons, 400 steps (the ring buffer wraps)."""
    gen = torch.Generator().manual_seed(0)
    pre = (torch.rand(400, 2, 5, generator=gen) < 0.05).double()
    post = (torch.rand(400, 2, 3, generator=gen) < 0.05).double()
    state = initial_state((2,), 5, 3, PARAMS, dtype=torch.float64)
    total = torch.zeros(2, 3, 5, dtype=torch.float64)
    for t in range(400):
        change, state = stdp_step(pre[t], post[t], state, PARAMS)
        total += change
    expected = torch.zeros_like(total)
    for b, j, i in torch.cartesian_prod(torch.arange(2), torch.arange(3), torch.arange(5)):
        for t_post in post[:, b, j].nonzero().flatten().tolist():
            for t_pre in pre[:, b, i].nonzero().flatten().tolist():
                delay = t_post - t_pre
                if 0 < delay <= 120:
                    expected[b, j, i] += 0.04 * math.exp(-delay / 80)
                elif -120 <= delay < 0:
                    expected[b, j, i] += -0.04 * math.exp(delay / 80)
    assert expected.abs().sum() > 0.5
    assert torch.allclose(total, expected, rtol=1e-10, atol=1e-12)


def test_the_rule_writes_minus_the_change_into_grad():
    weight = torch.nn.Parameter(torch.zeros(1, 1, dtype=torch.float64))
    rule = STDP(weight, PARAMS)
    for t in range(40):
        rule.step(torch.tensor([[float(t == 10)]]), torch.tensor([[float(t == 30)]]))
    rule.write()
    torch.optim.SGD([weight], lr=1.0).step()
    assert weight.item() == pytest.approx(0.04 * math.exp(-20 / 80), rel=1e-12)
    with pytest.raises(ValueError, match="n_pre=1 and n_post=1"):
        rule.step(torch.zeros(1, 2), torch.zeros(1, 1))


@pytest.mark.parametrize("gap", [5, 121, 300])
def test_skipping_silent_steps_equals_stepping_through_them(gap):
    """Spikes, a silent gap (inside and beyond the window), then spikes again."""
    from neuroplastic.plasticity.stdp import skip_silent

    gen = torch.Generator().manual_seed(1)
    before = (torch.rand(50, 2, 4, generator=gen) < 0.1).double()
    after = (torch.rand(50, 2, 4, generator=gen) < 0.1).double()
    totals = []
    for skipping in (False, True):
        state = initial_state((2,), 4, 4, PARAMS, dtype=torch.float64)
        total = torch.zeros(2, 4, 4, dtype=torch.float64)
        for s in before:
            change, state = stdp_step(s, s.flip(-1), state, PARAMS)
            total += change
        if skipping:
            state = skip_silent(state, gap, PARAMS)
        else:
            zeros = torch.zeros(2, 4, dtype=torch.float64)
            for _ in range(gap):
                change, state = stdp_step(zeros, zeros, state, PARAMS)
                total += change
        for s in after:
            change, state = stdp_step(s, s.flip(-1), state, PARAMS)
            total += change
        totals.append(total)
    assert torch.allclose(totals[0], totals[1], rtol=1e-12, atol=1e-15)


def test_a_replica_weight_keeps_one_change_per_replica():
    weight = torch.nn.Parameter(torch.zeros(2, 1, 1, dtype=torch.float64))
    rule = STDP(weight, PARAMS)
    for t in range(40):  # replica 0: pre then post; replica 1: post then pre
        pre = torch.tensor([[float(t == 10)], [float(t == 30)]], dtype=torch.float64)
        post = torch.tensor([[float(t == 30)], [float(t == 10)]], dtype=torch.float64)
        rule.step(pre, post)
    rule.write()
    expected = 0.04 * math.exp(-20 / 80)
    assert weight.grad.flatten().tolist() == pytest.approx([-expected, expected], rel=1e-12)


@pytest.mark.parametrize("n_pre,n_post", [(7, 3), (3, 9)])  # the kernel on either side
@pytest.mark.parametrize("density", [0.01, 0.2])  # spikes summed one by one, or dense products
def test_a_block_equals_stepping_through_it_and_mixes_with_steps(n_pre, n_post, density):
    """Steps, then a weighted block, a plain block and steps again: every change, the traces
    and the ring equal stepping through all 700 steps (pairs span the blocks' edges)."""
    from neuroplastic.plasticity.stdp import stdp_block

    gen = torch.Generator().manual_seed(1)
    pre = (torch.rand(700, 2, n_pre, generator=gen) < density).double()
    post = (torch.rand(700, 2, n_post, generator=gen) < density).double()
    reference = initial_state((2,), n_pre, n_post, PARAMS, dtype=torch.float64)
    changes = []
    for t in range(700):
        change, reference = stdp_step(pre[t], post[t], reference, PARAMS)
        changes.append(change)
    changes = torch.stack(changes)
    state = initial_state((2,), n_pre, n_post, PARAMS, dtype=torch.float64)
    traces = []  # each step's state, to check the traces a block leaves
    for t in range(700):
        traces.append(stdp_step(pre[t], post[t], initial_state((2,), n_pre, n_post, PARAMS,
                                dtype=torch.float64) if t == 0 else traces[-1][1], PARAMS))
    for t in range(250):
        _, state = stdp_step(pre[t], post[t], state, PARAMS)
    weights = torch.rand(2, 300, generator=gen, dtype=torch.float64)
    weighted, state = stdp_block(pre[250:550], post[250:550], state, PARAMS, weights)
    after = traces[549][1]  # the state after step 549: the traces of the block's last step
    torch.testing.assert_close(state.pre_trace, after.pre_trace, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(state.post_trace, after.post_trace, rtol=1e-12, atol=1e-14)
    expected = torch.einsum("at,t...->a...", weights, changes[250:550])
    assert expected.abs().sum() > 0
    torch.testing.assert_close(weighted, expected, rtol=1e-12, atol=1e-14)
    plain, state = stdp_block(pre[550:600], post[550:600], state, PARAMS)
    torch.testing.assert_close(plain, changes[550:600].sum(0), rtol=1e-12, atol=1e-14)
    for t in range(600, 700):
        change, state = stdp_step(pre[t], post[t], state, PARAMS)
        torch.testing.assert_close(change, changes[t], rtol=1e-12, atol=1e-14)
    assert state.step == reference.step == 700
    torch.testing.assert_close(state.pre_trace, reference.pre_trace)
    assert torch.equal(state.post_history, reference.post_history)


def test_the_rule_takes_a_block_as_its_steps():
    gen = torch.Generator().manual_seed(2)
    pre = (torch.rand(300, 4, 5, generator=gen) < 0.1).double()
    post = (torch.rand(300, 4, 3, generator=gen) < 0.1).double()
    grads = []
    for by_block in (False, True):
        weight = torch.nn.Parameter(torch.zeros(3, 5, dtype=torch.float64))
        rule = STDP(weight, PARAMS)
        if by_block:
            rule.block(pre[:200], post[:200])
            rule.block(pre[200:], post[200:])
        else:
            for t in range(300):
                rule.step(pre[t], post[t])
        rule.write()
        grads.append(weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)
