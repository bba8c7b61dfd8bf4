"""Reward-based e-prop: exact against autograd of the actor-critic surrogate where it should be,
and it learns a delayed-reward choice."""

import pytest
import torch

from neuroplastic.credit.eprop_reward import RewardEProp
from neuroplastic.models.rsnn import RecurrentLIF

F64 = torch.float64


def network(recurrent: bool, seed: int = 0, n_adaptive: int = 3) -> RecurrentLIF:
    model = RecurrentLIF(6, 10, 3, n_adaptive=n_adaptive, tau_m=10.0, tau_a=30.0, beta=0.4,
                         tau_out=15.0, v_th=0.3, refractory=1,
                         generator=torch.Generator().manual_seed(seed)).double()  # fmt: skip
    with torch.no_grad():
        model.w_in.mul_(2.0)
        if not recurrent:
            model.w_rec.zero_()
    return model


def episode_inputs(seed=1, batch=3, steps=30):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, steps, 6, generator=gen) < 0.3).to(F64)
    actions = torch.randint(0, 2, (batch, steps), generator=gen)
    rewards = torch.randn(batch, steps, generator=gen, dtype=F64)
    return x, actions, rewards


def run_rule(rule, x, actions, rewards):
    episode = rule.start(x.shape[0])
    for t in range(x.shape[1]):
        episode, logits, value = rule.forward(episode, x[:, t])
        episode = rule.act(episode, actions[:, t])
        episode = rule.reward(episode, rewards[:, t])
    return rule.finish(episode)


@pytest.mark.parametrize("gamma", [0.0, 0.9, 1.0])
def test_without_recurrence_it_is_the_gradient_of_the_actor_critic_surrogate(gamma):
    model = network(recurrent=False)
    x, actions, rewards = episode_inputs()
    rule = RewardEProp(model, 2, gamma=gamma, value_weight=0.7)
    grads = run_rule(rule, x, actions, rewards).grads
    y, z = model(x)
    assert z.sum() > 0
    log_pi = torch.log_softmax(y[..., :2], 2).gather(2, actions[..., None])[..., 0]
    value = y[..., 2]
    next_value = torch.cat([value[:, 1:], torch.zeros_like(value[:, :1])], 1)
    delta = (rewards + gamma * next_value - value).detach()
    steps = x.shape[1]
    discount = torch.tensor([[gamma ** (t - s) if t >= s else 0.0 for t in range(steps)]
                             for s in range(steps)], dtype=F64)  # fmt: skip
    returns = delta @ discount.T  # sum_{t >= s} gamma^(t-s) delta^t, per s
    surrogate = ((-log_pi - 0.7 * value) * returns).sum() / x.shape[0]
    surrogate.backward()
    for name in ("w_in", "w_out", "b_out"):
        assert torch.allclose(grads[name], getattr(model, name).grad, rtol=1e-10, atol=1e-12), name
        assert grads[name].abs().sum() > 0


def test_readout_gradients_stay_exact_with_recurrence_and_random_feedback_differs():
    model = network(recurrent=True)
    x, actions, rewards = episode_inputs(seed=2)
    symmetric = run_rule(RewardEProp(model, 2), x, actions, rewards).grads
    random = run_rule(RewardEProp(model, 2, "random", torch.Generator().manual_seed(5)), x,
                      actions, rewards).grads  # fmt: skip
    assert torch.allclose(symmetric["w_out"], random["w_out"], rtol=1e-12)  # no feedback involved
    assert not torch.allclose(symmetric["w_in"], random["w_in"])
    assert (symmetric["w_rec"].diagonal() == 0).all()


def test_errors_are_clear():
    with pytest.raises(ValueError, match="n_actions \\+ 1"):
        RewardEProp(network(True), 3)
    rule = RewardEProp(network(True), 2)
    episode = rule.start(2)
    episode, _, _ = rule.forward(episode, torch.zeros(2, 6, dtype=F64))
    episode = rule.act(episode, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="call reward"):
        rule.forward(episode, torch.zeros(2, 6, dtype=F64))


def test_it_learns_to_choose_the_cued_action_after_a_delay():
    """A cue (input group 0 or 1) for 5 steps, 10 silent steps, then a go signal: the action at
    the go step earns 1 if it matches the cue; the other steps' actions earn nothing."""
    choices = torch.Generator().manual_seed(0)
    model = RecurrentLIF(6, 30, 3, n_adaptive=15, tau_a=200.0, beta=0.5, tau_m=10.0, tau_out=5.0,
                         v_th=0.3, generator=torch.Generator().manual_seed(1))  # fmt: skip
    rule = RewardEProp(model, 2, gamma=0.95)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(2)
    rewards = []
    for _ in range(150):
        cue = torch.randint(0, 2, (32,), generator=gen)
        x = torch.zeros(32, 20, 6)
        x[torch.arange(32), :5, cue] = (torch.rand(32, 5, generator=gen) < 0.8).float()
        x[:, 15:, 4] = 1.0
        episode = rule.start(32)
        for t in range(20):
            episode, logits, _ = rule.forward(episode, x[:, t])
            action = torch.multinomial(torch.softmax(logits, 1), 1, generator=choices)[:, 0]
            episode = rule.act(episode, action)
            reward = (action == cue).float() if t == 19 else torch.zeros(32)
            episode = rule.reward(episode, reward)
        rewards.append(reward.mean().item())
        optimizer.zero_grad()
        rule.backward(episode)
        optimizer.step()
    assert sum(rewards[:20]) / 20 < 0.65 and sum(rewards[-20:]) / 20 > 0.8, rewards[::10]
