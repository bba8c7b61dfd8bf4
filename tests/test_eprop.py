"""e-prop against BPTT (autograd through the same dynamics): exact where the paper says it is.

The identities of Bellec et al. 2020 (and of their reference code's numerical check), in float64:
without recurrence e-prop *is* BPTT for input and readout weights; with recurrence, the exact
factorisation ``dE/dW = sum_t dE/dz^t e^t`` with the true total derivative reproduces BPTT; the
eligibility traces equal autograd through each neuron's local dynamics, step by step.
"""

import pytest
import torch

from neuroplastic.credit.eprop import (
    EProp,
    StepwiseEProp,
    initial_traces,
    network_dynamics,
    trace_step,
)
from neuroplastic.models.rsnn import RecurrentLIF
from neuroplastic.neurons.lif import LIFParameters, decay, initial_state, lif_step

F64 = torch.float64


def network(recurrent: bool, seed: int = 0, refractory: int = 0, n_adaptive: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = RecurrentLIF(6, 10, 2, n_adaptive=n_adaptive, tau_m=10.0, tau_a=30.0, beta=0.4,
                         tau_out=15.0, v_th=0.3, refractory=refractory,
                         generator=gen).double()  # fmt: skip
    with torch.no_grad():
        model.w_in.mul_(2.0)  # enough drive for spikes in a short trial
        if not recurrent:
            model.w_rec.zero_()
    return model


def task(seed: int = 1, batch: int = 3, steps: int = 40):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, steps, 6, generator=gen) < 0.3).to(F64)
    target = torch.randn(batch, steps, 2, generator=gen, dtype=F64)
    return x, target


def bptt_gradients(model, x, target, loss="mse", mask=None, reg=0.0, f0=0.01):
    model.zero_grad()
    y, z = model(x)
    mask = torch.ones(x.shape[1], dtype=F64) if mask is None else mask
    if loss == "mse":
        per_step = 0.5 * (y - target).pow(2).sum(2)
    else:
        per_step = -torch.log_softmax(y, 2).gather(
            2, target[:, None, None].expand(-1, y.shape[1], 1)
        )[..., 0]
    total = (per_step * mask).sum() / x.shape[0]
    total = total + reg * (z.mean((0, 1)) - f0).pow(2).sum()
    total.backward()
    assert z.sum() > 0, "the test network must spike"
    return {n: p.grad.clone() for n, p in model.named_parameters()}, total.detach()


def assert_close(actual, expected, names, rtol=1e-10):
    for name in names:
        assert torch.allclose(actual[name], expected[name], rtol=rtol, atol=1e-12), name
        assert expected[name].abs().sum() > 0, name  # a gradient that is really there


@pytest.mark.parametrize("refractory", [0, 3])
@pytest.mark.parametrize("n_adaptive", [0, 5])
def test_without_recurrence_eprop_equals_bptt_for_input_and_readout_weights(refractory, n_adaptive):
    model = network(recurrent=False, refractory=refractory, n_adaptive=n_adaptive)
    x, target = task()
    expected, loss = bptt_gradients(model, x, target)
    grads, eprop_loss = EProp(model).gradients(x, target)
    assert eprop_loss == pytest.approx(loss.item(), rel=1e-12)
    assert_close(grads, expected, ("w_in", "w_out", "b_out"))


def test_without_recurrence_cross_entropy_mask_and_rate_penalty_match_bptt():
    model = network(recurrent=False, n_adaptive=4)
    x, _ = task()
    labels = torch.tensor([0, 1, 1])
    mask = torch.zeros(x.shape[1], dtype=F64)
    mask[-10:] = 0.1  # the loss on the last 10 steps, averaged over them
    expected, loss = bptt_gradients(model, x, labels, "cross_entropy", mask, reg=0.5, f0=0.02)
    rule = EProp(model, loss="cross_entropy", regularisation=0.5, target_rate=0.02)
    grads, eprop_loss = rule.gradients(x, labels, mask)
    assert eprop_loss == pytest.approx(loss.item(), rel=1e-12)
    assert_close(grads, expected, ("w_in", "w_out", "b_out"))


def true_learning_signals(model, x, target):
    """``dE/dz^t`` through the other neurons and the readout (not through the neuron's own
    adaptation, which its eligibility trace carries), by autograd on a zero added to the spikes
    where they leave the neuron."""
    batch, steps, _ = x.shape
    state = model.initial_state(batch)
    y = torch.zeros(batch, model.n_out, dtype=F64)
    sent = torch.zeros(batch, model.n_rec, dtype=F64)
    probes, loss = [], 0.0
    for t in range(steps):
        current = x[:, t] @ model.w_in.T + sent @ model.recurrent_weights().T
        z, state = lif_step(current, state, model.neuron, model.spike)
        probe = torch.zeros_like(z, requires_grad=True)
        sent = z + probe
        y = model.kappa * y + sent @ model.w_out.T + model.b_out
        loss = loss + 0.5 * (y - target[:, t]).pow(2).sum() / batch
        probes.append(probe)
    return torch.autograd.grad(loss, probes)


@pytest.mark.parametrize("n_adaptive", [0, 5])
def test_exact_factorisation_with_the_true_learning_signal_reproduces_bptt(n_adaptive):
    model = network(recurrent=True, n_adaptive=n_adaptive, refractory=2)
    x, target = task()
    expected, _ = bptt_gradients(model, x, target)
    signals = true_learning_signals(model, x, target)
    with torch.no_grad():
        state, y = model.initial_state(x.shape[0]), torch.zeros(x.shape[0], 2, dtype=F64)
        traces = initial_traces(model, x.shape[0], F64, None)
        grad_in, grad_rec = torch.zeros_like(model.w_in), torch.zeros_like(model.w_rec)
        for t in range(x.shape[1]):
            before = state
            _, state, y = model.step(x[:, t], state, y)
            traces, e_in, e_rec = trace_step(traces, model, x[:, t], before, state)
            grad_in += torch.einsum("bj,bji->ji", signals[t], e_in)
            grad_rec += torch.einsum("bj,bji->ji", signals[t], e_rec)
    assert_close({"w_in": grad_in, "w_rec": grad_rec * model.no_self}, expected,
                 ("w_in", "w_rec"), rtol=1e-11)  # fmt: skip


def test_alif_eligibility_traces_equal_autograd_through_the_local_dynamics_step_by_step():
    """``e_ji^t = dz_j^t / dW_ji`` with the other neurons' spikes held as given inputs."""
    model = network(recurrent=True, n_adaptive=6, refractory=1, seed=2)
    x, _ = task(batch=2, steps=25)
    with torch.no_grad():
        _, spikes = model(x)  # the recurrent inputs, then held fixed
    previous = torch.cat([torch.zeros_like(spikes[:, :1]), spikes[:, :-1]], 1)
    state = model.initial_state(2)
    traces = initial_traces(model, 2, F64, None)
    for t in range(x.shape[1]):
        before = state
        current = x[:, t] @ model.w_in.T + previous[:, t] @ model.recurrent_weights().T
        z, state = lif_step(current, state, model.neuron, model.spike)
        with torch.no_grad():
            traces, e_in, e_rec = trace_step(traces, model, x[:, t], before, state)
        for b in range(2):
            d_in, d_rec = torch.autograd.grad(z[b].sum(), (model.w_in, model.w_rec),
                                              retain_graph=True)  # fmt: skip
            assert torch.allclose(e_in[b], d_in, rtol=1e-10, atol=1e-14), t
            assert torch.allclose(e_rec[b] * model.no_self, d_rec, rtol=1e-10, atol=1e-14), t
    assert traces.eps_a_in.abs().sum() > 0  # the adaptation path was exercised


def test_with_recurrence_eprop_approximates_bptt():
    model = network(recurrent=True)
    x, target = task()
    expected, _ = bptt_gradients(model, x, target)
    grads, _ = EProp(model).gradients(x, target)
    assert torch.allclose(grads["w_out"], expected["w_out"], rtol=1e-10, atol=1e-12)  # exact
    for name in ("w_in", "w_rec"):
        cosine = torch.nn.functional.cosine_similarity(
            grads[name].flatten(), expected[name].flatten(), dim=0
        )
        assert 0.5 < cosine < 1 - 1e-9, (name, cosine)  # close, not equal
    assert (grads["w_rec"].diagonal() == 0).all()  # no self-connections learn


def test_updates_every_step_sum_to_the_trial_update_when_the_weights_are_frozen():
    model = network(recurrent=True, n_adaptive=3)
    x, target = task()
    rule = EProp(model)
    trial, trial_loss = rule.gradients(x, target)
    online = {name: torch.zeros_like(g) for name, g in trial.items()}
    losses = 0.0
    for grads, loss in rule.chunks(x, target, every=1):
        for name in online:
            online[name] += grads[name]
        losses += loss
    assert_close(online, trial, trial.keys(), rtol=1e-12)
    assert losses == pytest.approx(trial_loss.item(), rel=1e-12)


def test_online_learning_changes_the_weights_during_the_trial_and_learns():
    model = network(recurrent=True, seed=4)
    x, target = task(seed=5, batch=4, steps=30)
    target = target * 0.2
    rule = EProp(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    start = model.w_in.detach().clone()
    losses = [rule.online(x, target, optimizer, every=10).item() for _ in range(40)]
    assert optimizer.state[model.w_in]["step"] == 40 * 3  # three updates per trial
    assert not torch.equal(model.w_in, start)
    assert losses[-1] < 0.5 * losses[0]


def test_adaptive_feedback_follows_the_readout_kolen_pollack():
    """Same gradient and the same decay for ``B`` and ``W_out^T``: their difference shrinks by
    exactly ``1 - lr * weight_decay`` per SGD step."""
    model = network(recurrent=True)
    x, target = task()
    rule = EProp(model, "adaptive", torch.Generator().manual_seed(3))
    (feedback,) = rule.parameters()
    optimizer = torch.optim.SGD([*model.parameters(), feedback], lr=1e-3, weight_decay=20.0)
    gap = (feedback - model.w_out.T).detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        rule.backward(x, target)
        assert torch.equal(feedback.grad, model.w_out.grad.T)
        optimizer.step()
        gap = gap * (1 - 1e-3 * 20.0)
        assert torch.allclose(feedback - model.w_out.T, gap, rtol=1e-9, atol=1e-12)
    assert EProp(model, "random").parameters() == []


def test_backward_writes_grad_for_any_optimiser_and_random_feedback_differs():
    model = network(recurrent=True)
    x, target = task()
    EProp(model).backward(x, target)
    symmetric = model.w_in.grad.clone()
    model.zero_grad(set_to_none=True)
    EProp(model, "random", torch.Generator().manual_seed(3)).backward(x, target)
    assert not torch.allclose(model.w_in.grad, symmetric)
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # a plain optimiser takes the step


def test_bad_arguments_are_clear_errors():
    model = network(recurrent=True)
    x, target = task()
    with pytest.raises(ValueError, match="feedback must be one of"):
        EProp(model, "adaptive-later")
    with pytest.raises(ValueError, match="loss must be one of"):
        EProp(model, loss="hinge")
    with pytest.raises(ValueError, match="integer labels"):
        EProp(model, loss="cross_entropy").gradients(x, target)
    with pytest.raises(ValueError, match=r"\(batch, T, n_out\)"):
        EProp(model).gradients(x, target[:, :5])
    with pytest.raises(ValueError, match="every must be"):
        next(EProp(model).chunks(x, target, every=0))


def test_eprop_training_lowers_the_loss():
    model = network(recurrent=True, seed=4, n_adaptive=5)
    x, target = task(seed=5, batch=4, steps=30)
    target = target * 0.2
    rule, optimizer = EProp(model), torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        losses.append(rule.backward(x, target).item())
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("segment", [1, 7, 40, 500])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_segmented_path_equals_the_reference_loop(segment, loss, backend):
    """The fast path (per-neuron history of a segment, matrix products; its time loop in PyTorch
    or compiled by Numba) against the reference (every trace advanced every step): recurrence,
    ALIF, refractoriness, the rate penalty."""
    if backend == "numba":
        pytest.importorskip("numba")
    model = network(recurrent=True, n_adaptive=4, refractory=2, seed=3)
    x, target = task(seed=7)
    if loss == "cross_entropy":
        target = torch.tensor([1, 0, 1])
    mask = torch.linspace(0, 1, x.shape[1], dtype=F64)
    options = {"loss": loss, "regularisation": 0.3, "target_rate": 0.05}
    reference = EProp(model, implementation="reference", **options)
    segmented = EProp(model, implementation="segmented", segment=segment, backend=backend,
                      **options)  # fmt: skip
    expected, expected_loss = reference.gradients(x, target, mask)
    grads, segmented_loss = segmented.gradients(x, target, mask)
    assert segmented_loss.item() == pytest.approx(expected_loss.item(), rel=1e-12)
    assert_close(grads, expected, expected.keys(), rtol=1e-10)
    every = min(segment, 13)  # online chunks: the same yields, one by one
    pairs = list(zip(reference.chunks(x, target, mask, every),
                     segmented.chunks(x, target, mask, every), strict=True))  # fmt: skip
    assert len(pairs) == -(-x.shape[1] // every)
    for (expected, expected_loss), (grads, segmented_loss) in pairs:
        assert segmented_loss.item() == pytest.approx(expected_loss.item(), rel=1e-12, abs=1e-15)
        for name in expected:
            assert torch.allclose(grads[name], expected[name], rtol=1e-10, atol=1e-13), name


def test_differentiating_the_reset_changes_bptt_but_not_eprop():
    """e-prop's traces ignore the reset's derivative; BPTT follows ``detach_reset``."""
    detached = network(recurrent=False)
    differentiated = network(recurrent=False)
    differentiated.detach_reset = False
    x, target = task()
    expected, _ = bptt_gradients(detached, x, target)
    with_reset, _ = bptt_gradients(differentiated, x, target)
    assert not torch.allclose(with_reset["w_in"], expected["w_in"], rtol=1e-3)
    assert torch.allclose(with_reset["w_out"], expected["w_out"], rtol=1e-12)  # forward unchanged
    grads, _ = EProp(differentiated).gradients(x, target)
    assert_close(grads, expected, ("w_in", "w_out"))


class OwnNetwork(torch.nn.Module):
    """A network a user might write: nn.Linear layers, ``lif_step``, a readout without memory,
    adaptive neurons scattered among plain ones."""

    def __init__(self, recurrent: bool):
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.inp = torch.nn.Linear(6, 8, bias=False).double()
        self.rec = torch.nn.Linear(8, 8, bias=False).double()
        self.out = torch.nn.Linear(8, 2).double()
        with torch.no_grad():
            for layer in (self.inp, self.rec, self.out):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=F64))
            self.rec.weight.fill_diagonal_(0.0)
            if not recurrent:
                self.rec.weight.zero_()
        beta = torch.tensor([0.0, 0.375, 0.0, 0.0, 0.375, 0.375, 0.0, 0.375], dtype=F64)
        self.neuron = LIFParameters(alpha=decay(10.0), v_th=0.5, beta=beta, rho=decay(30.0))

    def step(self, x, state):
        z, state = lif_step(self.inp(x) + self.rec(state.z), state, self.neuron)
        return z, state, self.out(z)


def own_network_gradients(net, x, target, rule=None):
    """BPTT through the user's loop (``rule`` None), or the stepwise e-prop learner in it."""
    batch = x.shape[0]
    state, total = initial_state(batch, 8, dtype=F64), 0.0
    if rule is not None:
        rule.start(batch)
    with torch.set_grad_enabled(rule is None):
        for t in range(x.shape[1]):
            before = state
            z, state, y = net.step(x[:, t], state)
            total = total + 0.5 * (y - target[:, t]).pow(2).sum() / batch
            if rule is not None:
                rule.step(x[:, t], before, state, (y - target[:, t]) / batch)
    net.zero_grad()
    if rule is None:
        total.backward()
    else:
        rule.write()
    return {"w_in": net.inp.weight.grad, "w_rec": net.rec.weight.grad,
            "w_out": net.out.weight.grad, "b_out": net.out.bias.grad}  # fmt: skip


def stepwise_rule(net):
    dynamics = network_dynamics(net.neuron, n_in=6, n_rec=8)
    return StepwiseEProp(net.inp.weight, net.rec.weight, net.out.weight, net.out.bias, dynamics)


def test_stepwise_eprop_in_a_users_own_loop_equals_bptt_without_recurrence():
    net = OwnNetwork(recurrent=False)
    x, target = task(steps=30)
    x = x * 2.0
    expected = {n: g.clone() for n, g in own_network_gradients(net, x, target).items()}
    grads = own_network_gradients(net, x, target, stepwise_rule(net))
    assert_close(grads, expected, ("w_in", "w_out", "b_out"))


def test_stepwise_eprop_in_a_users_own_loop_equals_eprop_on_the_library_network():
    net = OwnNetwork(recurrent=True)
    order = torch.tensor([0, 2, 3, 6, 1, 4, 5, 7])  # plain neurons first, as RecurrentLIF wants
    # (beta 0.375 is exact in the float32 buffer RecurrentLIF keeps it in before .double())
    library = RecurrentLIF(6, 8, 2, n_adaptive=4, tau_m=10.0, tau_a=30.0, beta=0.375, tau_out=1e-9,
                           v_th=0.5).double()  # fmt: skip
    with torch.no_grad():
        library.w_in.copy_(net.inp.weight[order])
        library.w_rec.copy_(net.rec.weight[order][:, order])
        library.w_out.copy_(net.out.weight[:, order])
        library.b_out.copy_(net.out.bias)
    assert library.kappa == 0.0  # a readout without memory, as the user's
    x, target = task(steps=30)
    x = x * 2.0
    grads = own_network_gradients(net, x, target, stepwise_rule(net))
    expected, _ = EProp(library, implementation="reference").gradients(x, target)
    inverse = torch.argsort(order)
    assert torch.allclose(grads["w_in"], expected["w_in"][inverse], rtol=1e-10, atol=1e-13)
    off_diagonal = 1 - torch.eye(8, dtype=F64)  # the user's rule leaves the diagonal to the user
    assert torch.allclose(grads["w_rec"] * off_diagonal, expected["w_rec"][inverse][:, inverse],
                          rtol=1e-10, atol=1e-13)  # fmt: skip
    assert torch.allclose(grads["w_out"], expected["w_out"][:, inverse], rtol=1e-10, atol=1e-13)
    assert grads["w_rec"].abs().sum() > 0


def test_stepwise_eprop_refuses_per_neuron_membrane_decays_and_wrong_shapes():
    neuron = LIFParameters(alpha=torch.tensor([0.9, 0.8]))
    with pytest.raises(ValueError, match="one alpha shared"):
        network_dynamics(neuron, n_in=3, n_rec=2)
    dynamics = network_dynamics(LIFParameters(alpha=0.9), n_in=3, n_rec=2)
    with pytest.raises(ValueError, match="w_rec must be"):
        StepwiseEProp(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(1, 2), None, dynamics)
    rule = StepwiseEProp(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(1, 2), None, dynamics)
    state = initial_state(1, 2)
    with pytest.raises(RuntimeError, match="start"):
        rule.step(torch.zeros(1, 3), state, state, torch.zeros(1, 1))
