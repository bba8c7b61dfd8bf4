"""The FA family against the identities of papers/credit-assignment.md, and the diagnostics.

* FA with ``B_l = W_l^T`` is backprop; DFA with one hidden layer and ``D = W_out^T`` is backprop;
  sign symmetry is backprop when the weights above the first layer are their own signs.
* Feedback matrices are fixed; angles are 0 for backprop, match a hand computation, and FA's
  forward weights come to align with ``B`` (Lillicrap et al. 2016, Fig. 2).
"""

from __future__ import annotations

import math

import pytest
import torch

from neuroplastic.credit import (
    LOSSES,
    Backprop,
    DirectFeedbackAlignment,
    FeedbackAlignment,
    SignSymmetry,
    feedback_weight_angles,
    update_angles,
)
from neuroplastic.credit.diagnostics import angle_degrees
from neuroplastic.models.mlp import ACTIVATIONS, MLP

TIGHT = {"rtol": 1e-12, "atol": 1e-14}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread avoids oversubscribing a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_model(depth: int, activation: str = "tanh", seed: int = 0, width: int = 7) -> MLP:
    return MLP([5, *([width] * depth), 4], activation, generator=gen(seed)).double()


def make_batch(seed: int = 1, n: int = 9):
    generator = gen(seed)
    x = torch.randn(n, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=generator)
    return x, y


def update(rule, x, y, loss) -> list[torch.Tensor]:
    rule.model.zero_grad(set_to_none=True)
    rule.backward(x, y, loss)
    out = [p.grad.clone() for p in rule.model.parameters()]
    rule.model.zero_grad(set_to_none=True)
    return out


def assert_same(first: list[torch.Tensor], second: list[torch.Tensor], **tolerance) -> None:
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, **(tolerance or TIGHT))


# ------------------------------------------------------------------ identities with backprop


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_fa_with_transposed_weights_is_backprop(depth, activation, loss):
    model = make_model(depth, activation)
    x, y = make_batch()
    expected = update(Backprop(model), x, y, loss)
    fa = FeedbackAlignment(model, generator=gen(2))
    fa.feedback = [layer.weight.detach().T.clone() for layer in model.layers[1:]]
    assert_same(update(fa, x, y, loss), expected)


def test_fa_with_views_of_the_weights_stays_backprop_while_training():
    """``B = W^T`` as views follows the weights: FA is backprop at every step."""
    model = make_model(2)
    x, y = make_batch()
    fa = FeedbackAlignment(model, generator=gen(2))
    fa.feedback = [layer.weight.detach().T for layer in model.layers[1:]]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        expected = update(Backprop(model), x, y, "cross_entropy")
        got = update(fa, x, y, "cross_entropy")
        assert_same(got, expected)
        for param, grad in zip(model.parameters(), got, strict=True):
            param.grad = grad
        optimizer.step()


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_dfa_one_hidden_layer_with_output_weights_is_backprop(activation, loss):
    model = make_model(1, activation)
    x, y = make_batch()
    expected = update(Backprop(model), x, y, loss)
    dfa = DirectFeedbackAlignment(model, generator=gen(2))
    dfa.feedback = [model.layers[1].weight.detach().T.clone()]
    assert_same(update(dfa, x, y, loss), expected)


@pytest.mark.parametrize("loss", LOSSES)
def test_dfa_last_hidden_layer_with_output_weights_gets_its_gradient(loss):
    """At any depth, the last hidden layer's error is backprop's when ``D_{L-2} = W_{L-1}^T``."""
    model = make_model(3)
    x, y = make_batch()
    expected = update(Backprop(model), x, y, loss)
    dfa = DirectFeedbackAlignment(model, generator=gen(2))
    dfa.feedback[-1] = model.layers[-1].weight.detach().T.clone()
    got = update(dfa, x, y, loss)
    assert_same(got[-4:], expected[-4:])  # the last hidden layer and the output layer
    assert angle_degrees(got[0], expected[0]) > 1.0  # the first layer still differs


def with_sign_weights(model: MLP, scales: list[float] | None = None) -> MLP:
    """Weights above the first layer replaced by ``c * sign(W)``, a few entries set to 0."""
    with torch.no_grad():
        for index, layer in enumerate(model.layers[1:]):
            signs = layer.weight.sign()
            signs[0, 0] = 0.0
            layer.weight.copy_(signs * (1.0 if scales is None else scales[index]))
    return model


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_sign_symmetry_is_backprop_when_weights_are_their_signs(depth, activation, loss):
    model = with_sign_weights(make_model(depth, activation))
    x, y = make_batch()
    assert_same(update(SignSymmetry(model), x, y, loss), update(Backprop(model), x, y, loss))


@pytest.mark.parametrize("loss", LOSSES)
def test_scaled_sign_symmetry_is_backprop_for_one_magnitude_per_matrix(loss):
    model = make_model(3)
    with torch.no_grad():  # entries +-c_l, no zeros: V = sign(W) ||W|| / ||sign(W)|| = W
        for layer, scale in zip(model.layers[1:], [0.3, 0.7, 0.2], strict=True):
            layer.weight.copy_(layer.weight.sign() * scale)
    x, y = make_batch()
    rule = SignSymmetry(model, scaled=True)
    assert_same(update(rule, x, y, loss), update(Backprop(model), x, y, loss))


def test_sign_symmetry_differs_from_backprop_on_generic_weights():
    model = make_model(2)
    x, y = make_batch()
    got = update(SignSymmetry(model), x, y, "cross_entropy")
    expected = update(Backprop(model), x, y, "cross_entropy")
    assert angle_degrees(got[0], expected[0]) > 1.0
    assert_same(got[-2:], expected[-2:])  # the output layer always gets its true gradient


# ------------------------------------------------------------------ feedback matrices


def test_fa_feedback_is_fixed_and_independent_of_the_weights():
    model = make_model(2)
    fa = FeedbackAlignment(model, generator=gen(2))
    before = [b.clone() for b in fa.feedback]
    assert [tuple(b.shape) for b in fa.feedback] == [(7, 7), (7, 4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = make_batch()
    for _ in range(3):
        optimizer.zero_grad()
        fa.backward(x, y)
        optimizer.step()
    assert all(torch.equal(b, b0) for b, b0 in zip(fa.feedback, before, strict=True))
    assert not any(
        torch.equal(b, layer.weight.detach().T)
        for b, layer in zip(fa.feedback, model.layers[1:], strict=True)
    )


def test_feedback_scaling_and_seeding():
    """FA: ``B_l`` ~ the law of ``W_l^T`` at init; DFA: ``D_l`` ~ U(+-1/sqrt(n_l)); seeded."""
    model = MLP([50, 40, 30, 10], generator=gen(0))
    fa = FeedbackAlignment(model, generator=gen(2))
    for b, layer in zip(fa.feedback, model.layers[1:], strict=True):
        bound = 1 / math.sqrt(layer.in_features)
        assert b.abs().max() <= bound and b.abs().max() > 0.9 * bound
        assert b.dtype == torch.get_default_dtype()
    dfa = DirectFeedbackAlignment(model, generator=gen(2))
    assert [tuple(d.shape) for d in dfa.feedback] == [(40, 10), (30, 10)]
    for d, width in zip(dfa.feedback, (40, 30), strict=True):
        bound = 1 / math.sqrt(width)
        assert d.abs().max() <= bound and d.abs().max() > 0.9 * bound
    again = FeedbackAlignment(model, generator=gen(2))
    assert all(torch.equal(a, b) for a, b in zip(fa.feedback, again.feedback, strict=True))


@pytest.mark.parametrize("rule_cls", [FeedbackAlignment, DirectFeedbackAlignment])
def test_misshaped_feedback_is_refused(rule_cls):
    model = make_model(2)
    rule = rule_cls(model, generator=gen(2))
    rule.feedback[0] = torch.zeros(3, 3)
    x, y = make_batch()
    with pytest.raises(ValueError, match=r"feedback\[0\] has shape"):
        rule.backward(x, y)
    rule.feedback = rule.feedback[:1]
    with pytest.raises(ValueError, match="expected 2 matrices"):
        rule.backward(x, y)


def test_sign_symmetry_variants():
    model = make_model(2)
    x, y = make_batch()
    for variant in ("usf", "frsf", "brsf"):
        rule = SignSymmetry(model, generator=gen(3), variant=variant)
        for v, layer in zip(rule.feedback, model.layers[1:], strict=True):
            assert torch.equal(v.sign(), layer.weight.detach().T.sign())
    usf = SignSymmetry(model)
    assert all(set(v.unique().tolist()) <= {-1.0, 0.0, 1.0} for v in usf.feedback)
    frsf = SignSymmetry(model, generator=gen(3), variant="frsf")
    before = [v.clone() for v in frsf.feedback]
    frsf.backward(x, y)
    assert all(torch.equal(a, b) for a, b in zip(frsf.feedback, before, strict=True))
    brsf = SignSymmetry(model, generator=gen(3), variant="brsf")
    before = [v.clone() for v in brsf.feedback]
    brsf.backward(x, y)
    assert not any(torch.equal(a, b) for a, b in zip(brsf.feedback, before, strict=True))
    with pytest.raises(ValueError, match="variant"):
        SignSymmetry(model, variant="sign")


def test_sign_symmetry_follows_the_current_weights():
    model = make_model(1)
    rule = SignSymmetry(model)
    with torch.no_grad():
        model.layers[1].weight.neg_()
    assert torch.equal(rule.feedback[0], model.layers[1].weight.detach().T.sign())


# ------------------------------------------------------------------ diagnostics


def test_angle_degrees():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert angle_degrees(e1, e1 * 3) == 0.0
    assert angle_degrees(e1, e2) == pytest.approx(90.0)
    assert angle_degrees(e1, -e1) == pytest.approx(180.0)
    assert angle_degrees(e1, torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert math.isnan(angle_degrees(e1, torch.zeros(2)))


@pytest.mark.parametrize("loss", LOSSES)
def test_angles_vanish_for_backprop_and_fa_with_transposed_weights(loss):
    model = make_model(3)
    x, y = make_batch()
    angles = update_angles(Backprop(model), x, y, loss)
    assert list(angles) == [f"layer{i}.{kind}" for i in range(4) for kind in ("weight", "bias")]
    assert max(angles.values()) < 1e-6
    assert feedback_weight_angles(Backprop(model)) == {}
    fa = FeedbackAlignment(model, generator=gen(2))
    fa.feedback = [layer.weight.detach().T.clone() for layer in model.layers[1:]]
    assert max(update_angles(fa, x, y, loss).values()) < 1e-6
    fb_angles = feedback_weight_angles(fa)
    assert list(fb_angles) == ["layer0.feedback", "layer1.feedback", "layer2.feedback"]
    assert max(fb_angles.values()) < 1e-6


def tiny_net() -> MLP:
    """1 -> 2 -> 1, ReLU: W0 = [1, 1]^T, b0 = 0, W1 = [1, 0], b1 = 1."""
    model = MLP([1, 2, 1], "relu").double()
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[1.0], [1.0]]))
        model.layers[0].bias.zero_()
        model.layers[1].weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.layers[1].bias.fill_(1.0)
    return model


@pytest.mark.parametrize("rule_cls", [FeedbackAlignment, DirectFeedbackAlignment])
def test_hand_computed_angles(rule_cls):
    """x = 1, label 0, square loss: h = (1, 1), z = 2, e = z - 1 = 1. Backprop sends e through
    W1^T = (1, 0); the rule sends it through (1, sqrt 3), so dW0 = (1, sqrt 3)^T against
    (1, 0)^T and db0 likewise: 60 degrees; the output layer is exact: 0 degrees."""
    model = tiny_net()
    rule = rule_cls(model, generator=gen(0))
    rule.feedback = [torch.tensor([[1.0], [math.sqrt(3.0)]], dtype=torch.float64)]
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    angles = update_angles(rule, x, y, "square")
    assert angles["layer0.weight"] == pytest.approx(60.0, abs=1e-9)
    assert angles["layer0.bias"] == pytest.approx(60.0, abs=1e-9)
    assert angles["layer1.weight"] == pytest.approx(0.0, abs=1e-9)
    assert angles["layer1.bias"] == pytest.approx(0.0, abs=1e-9)
    assert feedback_weight_angles(rule) == {"layer0.feedback": pytest.approx(60.0, abs=1e-9)}


def test_sign_symmetry_feedback_angle_by_hand():
    """W1 = (3, -1, 0, 2): V = sign(W1)^T = (1, -1, 0, 1); cos = 6 / (sqrt 14 sqrt 3)."""
    model = MLP([2, 4, 1], generator=gen(0))
    with torch.no_grad():
        model.layers[1].weight.copy_(torch.tensor([[3.0, -1.0, 0.0, 2.0]]))
    expected = math.degrees(math.acos(6 / (math.sqrt(14) * math.sqrt(3))))
    angles = feedback_weight_angles(SignSymmetry(model))
    assert angles == {"layer0.feedback": pytest.approx(expected, abs=1e-4)}


def test_dfa_feedback_angle_compares_with_the_product_of_weights():
    model = make_model(2)
    dfa = DirectFeedbackAlignment(model, generator=gen(2))
    w1, w2 = (layer.weight.detach() for layer in model.layers[1:])
    dfa.feedback = [(w2 @ w1).T.clone(), w2.T.clone()]  # W1^T W2^T, and W2^T
    angles = feedback_weight_angles(dfa)
    assert list(angles) == ["layer0.feedback", "layer1.feedback"]
    assert max(angles.values()) < 1e-6


def test_update_angles_leave_grads_and_random_streams_alone():
    model = make_model(2)
    x, y = make_batch()
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for param, value in zip(model.parameters(), sentinel, strict=True):
        param.grad = value.clone()
    model.layers[0].bias.grad = None
    generator = gen(3)
    rule = SignSymmetry(model, generator=generator, variant="brsf")  # draws at every call
    state, global_state = generator.get_state(), torch.random.get_rng_state()
    first = update_angles(rule, x, y)
    assert torch.equal(generator.get_state(), state)
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert update_angles(rule, x, y) == first  # same noise again: the same angles
    assert model.layers[0].bias.grad is None
    for param, value in zip(model.parameters(), sentinel, strict=True):
        if param is not model.layers[0].bias:
            assert torch.equal(param.grad, value)


def test_update_angles_under_no_grad():
    model = make_model(1)
    x, y = make_batch()
    with torch.no_grad():
        angles = update_angles(Backprop(model), x, y)
    assert max(angles.values()) < 1e-6


# ------------------------------------------------------------------ the classic FA behaviour


def teacher_task(n: int = 256, n_in: int = 10, n_out: int = 4):
    generator = gen(11)
    x = torch.randn(n, n_in, generator=generator)
    y = (x @ torch.randn(n_in, n_out, generator=generator)).argmax(dim=1)
    return x, y


def train(rule, x, y, steps: int, lr: float = 0.5) -> None:
    optimizer = torch.optim.SGD(rule.model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        rule.backward(x, y)
        optimizer.step()


def test_fa_forward_weights_align_with_feedback():
    """Lillicrap et al. 2016, Fig. 2: W^T and B start near 90 degrees and align during learning;
    the hidden layer's update then lies within 90 degrees of the gradient."""
    x, y = teacher_task()
    model = MLP([10, 20, 4], "tanh", generator=gen(0))
    fa = FeedbackAlignment(model, generator=gen(100))
    start = feedback_weight_angles(fa)["layer0.feedback"]
    loss_before = fa.backward(x, y).item()
    train(fa, x, y, steps=200)
    end = feedback_weight_angles(fa)["layer0.feedback"]
    assert start > 80.0
    assert end < 65.0, (start, end)
    assert update_angles(fa, x, y)["layer0.weight"] < 70.0
    assert fa.backward(x, y).item() < 0.5 * loss_before


def test_dfa_forward_weights_align_with_feedback():
    x, y = teacher_task()
    model = MLP([10, 20, 20, 4], "tanh", generator=gen(0))
    dfa = DirectFeedbackAlignment(model, generator=gen(100))
    start = feedback_weight_angles(dfa)
    train(dfa, x, y, steps=300)
    end = feedback_weight_angles(dfa)
    for name in start:
        assert end[name] < start[name] - 15.0, (name, start[name], end[name])
        assert end[name] < 70.0, (name, end[name])
