"""The FA family on the MLP: identities of papers/credit-assignment.md, the frozen pre-refactor
reference, feedback matrices, and the alignment diagnostics.

* FA with ``B = W`` is backprop; DFA with one hidden layer and ``D = W_out^T`` is backprop;
  sign symmetry is backprop when the weights are their own signs.
* The hook-based rules give the updates of the explicit implementation they replaced
  (``legacy_fa_family.py``), and DFA and sign symmetry draw the same matrices from the same seed.
* Feedback matrices are fixed; angles are 0 for backprop, match a hand computation, and FA's
  forward weights come to align with ``B`` (Lillicrap et al. 2016, Fig. 2).
The same identities on other architectures: ``test_credit_zoo.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from legacy_fa_family import legacy_update
from neuroplastic.credit import (
    LOSSES,
    Backprop,
    DirectFeedbackAlignment,
    FeedbackAlignment,
    SignSymmetry,
    feedback_weight_angles,
    loss_per_example,
    update_angles,
)
from neuroplastic.credit.diagnostics import angle_degrees
from neuroplastic.credit.layers import draw_uniform
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


def update(model, x, y, loss) -> list[torch.Tensor]:
    """What ``loss.backward()`` writes into every ``.grad`` (through whatever rule is attached)."""
    model.zero_grad(set_to_none=True)
    loss_per_example(model(x), y, loss).mean().backward()
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def assert_same(first: list[torch.Tensor], second: list[torch.Tensor], **tolerance) -> None:
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, **(tolerance or TIGHT))


def upper(model: MLP) -> dict[str, torch.nn.Linear]:
    """The layers above the first, by name: the ones whose input carries an error."""
    return {f"layers.{i}": layer for i, layer in enumerate(model.layers) if i > 0}


# ------------------------------------------------------------------ identities with backprop


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_fa_with_the_forward_weights_is_backprop(depth, activation, loss):
    model = make_model(depth, activation)
    x, y = make_batch()
    expected = update(model, x, y, loss)
    with FeedbackAlignment(model, generator=gen(2)) as fa:
        for name, layer in fa.layers.items():
            fa.feedback[name] = layer.weight.detach().clone()
        assert_same(update(model, x, y, loss), expected)
        model.zero_grad()  # the convenience says the same
        fa.backward(x, y, loss)
        assert_same([p.grad for p in model.parameters()], expected)
    with FeedbackAlignment(model, generator=gen(2)):  # and a random B is not backprop
        assert angle_degrees(update(model, x, y, loss)[0], expected[0]) > 1.0


def test_fa_with_views_of_the_weights_stays_backprop_while_training():
    """``B = W`` as views follows the weights: FA is backprop at every step."""
    model = make_model(2)
    x, y = make_batch()
    fa = FeedbackAlignment(model, generator=gen(2))
    for name, layer in fa.layers.items():
        fa.feedback[name] = layer.weight.detach()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        with fa.disabled():
            expected = update(model, x, y, "cross_entropy")
        got = update(model, x, y, "cross_entropy")
        assert_same(got, expected)
        for param, grad in zip(model.parameters(), got, strict=True):
            param.grad = grad
        optimizer.step()


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_dfa_one_hidden_layer_with_output_weights_is_backprop(activation, loss):
    model = make_model(1, activation)
    x, y = make_batch()
    expected = update(model, x, y, loss)
    with DirectFeedbackAlignment(model, generator=gen(2)) as dfa:
        dfa.feedback["layers.1"] = model.layers[1].weight.detach().T.clone()
        assert_same(update(model, x, y, loss), expected)


@pytest.mark.parametrize("loss", LOSSES)
def test_dfa_last_hidden_layer_with_output_weights_gets_its_gradient(loss):
    """At any depth, the last hidden layer's error is backprop's when its ``D = W_out^T``."""
    model = make_model(3)
    x, y = make_batch()
    expected = update(model, x, y, loss)
    with DirectFeedbackAlignment(model, generator=gen(2)) as dfa:
        dfa.feedback["layers.3"] = model.layers[-1].weight.detach().T.clone()
        got = update(model, x, y, loss)
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
    expected = update(model, x, y, loss)
    with SignSymmetry(model):
        assert_same(update(model, x, y, loss), expected)


@pytest.mark.parametrize("loss", LOSSES)
def test_scaled_sign_symmetry_is_backprop_for_one_magnitude_per_matrix(loss):
    model = make_model(3)
    with torch.no_grad():  # entries +-c_l, no zeros: V = sign(W) ||W|| / ||sign(W)|| = W
        for layer, scale in zip(model.layers[1:], [0.3, 0.7, 0.2], strict=True):
            layer.weight.copy_(layer.weight.sign() * scale)
    x, y = make_batch()
    expected = update(model, x, y, loss)
    with SignSymmetry(model, scaled=True):
        assert_same(update(model, x, y, loss), expected)


def test_sign_symmetry_differs_from_backprop_on_generic_weights():
    model = make_model(2)
    x, y = make_batch()
    expected = update(model, x, y, "cross_entropy")
    with SignSymmetry(model):
        got = update(model, x, y, "cross_entropy")
    assert angle_degrees(got[0], expected[0]) > 1.0
    assert_same(got[-2:], expected[-2:])  # the output layer always gets its true gradient


# ------------------------------------------------------------------ as before the refactor


def legacy_fa_matrices(model: MLP, seed: int) -> list[torch.Tensor]:
    """FA's matrices as the old rule drew them: ``B_{l+1}`` in ``W_{l+1}^T``'s layout."""
    generator = gen(seed)
    return [
        draw_uniform(
            (layer.in_features, layer.out_features), layer.in_features**-0.5, generator
        ).double()
        for layer in model.layers[1:]
    ]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_the_rules_give_the_updates_of_the_explicit_implementation(depth, activation, loss):
    """credit-mnist's rules are the algorithms they were: same matrices, same updates (FA), and
    the same matrices from the same seed too (DFA, sign symmetry)."""
    model = make_model(depth, activation)
    x, y = make_batch()
    old_b = legacy_fa_matrices(model, seed=2)
    with FeedbackAlignment(model, generator=gen(2)) as fa:
        for (name, _), b in zip(upper(model).items(), old_b, strict=True):
            fa.feedback[name] = b.T
        assert_same(update(model, x, y, loss), legacy_update(model, x, y, loss, "fa", old_b))
    with DirectFeedbackAlignment(model, generator=gen(2)) as dfa:
        got = update(model, x, y, loss)
        old_d = [  # the old rule's draws: (n_l, n_out) for every hidden layer, in order
            draw_uniform((layer.out_features, 4), layer.out_features**-0.5, generator).double()
            for generator in [gen(2)]
            for layer in model.layers[:-1]
        ]
        assert all(torch.equal(dfa.feedback[name], d.float()) for name, d in zip(
            upper(model), old_d, strict=True))  # fmt: skip
        assert_same(got, legacy_update(model, x, y, loss, "dfa", old_d))
    with SignSymmetry(model):
        signs = [layer.weight.detach().T.sign() for layer in model.layers[1:]]
        assert_same(update(model, x, y, loss), legacy_update(model, x, y, loss, "sign", signs))


# ------------------------------------------------------------------ feedback matrices


def test_fa_feedback_is_fixed_and_independent_of_the_weights():
    model = make_model(2)
    fa = FeedbackAlignment(model, generator=gen(2))
    before = {name: b.clone() for name, b in fa.feedback.items()}
    assert {name: tuple(b.shape) for name, b in fa.feedback.items()} == {
        "layers.0": (7, 5), "layers.1": (7, 7), "layers.2": (4, 7)}  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = make_batch()
    for _ in range(3):
        optimizer.zero_grad()
        fa.backward(x, y)
        optimizer.step()
    assert all(torch.equal(fa.feedback[name], b0) for name, b0 in before.items())
    weights = {name: layer.weight.detach() for name, layer in fa.layers.items()}
    assert not any(torch.equal(fa.feedback[name], w) for name, w in weights.items())


def test_feedback_scaling_and_seeding():
    """FA: ``B`` ~ scale x the law of ``W`` at init; DFA: ``D`` ~ scale x U(+-1/sqrt(n_in));
    seeded; DFA draws on the first forward pass that needs its matrices."""
    model = MLP([50, 40, 30, 10], generator=gen(0))
    x = torch.randn(3, 50)
    for scale in (1.0, 2.5):
        with FeedbackAlignment(model, generator=gen(2), scale=scale) as fa:
            for name, layer in fa.layers.items():
                b, bound = fa.feedback[name], scale / math.sqrt(layer.in_features)
                assert b.shape == layer.weight.shape
                assert b.abs().max() <= bound and b.abs().max() > 0.9 * bound
                assert b.dtype == torch.get_default_dtype()
        with DirectFeedbackAlignment(model, generator=gen(2), scale=scale) as dfa:
            assert len(dfa.feedback) == 0
            with pytest.raises(KeyError, match="not drawn yet"):
                dfa.feedback["layers.1"]
            with torch.no_grad():
                model(x)  # no gradient needed: nothing drawn
            assert len(dfa.feedback) == 0
            model(x)
            assert {n: tuple(d.shape) for n, d in dfa.feedback.items()} == {
                "layers.1": (40, 10), "layers.2": (30, 10)}  # fmt: skip
            for name, width in (("layers.1", 40), ("layers.2", 30)):
                d, bound = dfa.feedback[name], scale / math.sqrt(width)
                assert d.abs().max() <= bound and d.abs().max() > 0.9 * bound
    with FeedbackAlignment(model, generator=gen(2)) as fa, pytest.raises(ValueError, match="scale"):
        FeedbackAlignment(MLP([2, 2]), scale=0.0)
    again = FeedbackAlignment(MLP([50, 40, 30, 10]), generator=gen(2))
    assert all(torch.equal(fa.feedback[n], again.feedback[n]) for n in fa.feedback)


@pytest.mark.parametrize("rule_cls", [FeedbackAlignment, DirectFeedbackAlignment])
def test_misshaped_or_unknown_feedback_is_refused(rule_cls):
    model = make_model(2)
    rule = rule_cls(model, generator=gen(2))
    x, y = make_batch()
    rule.backward(x, y)  # DFA learns its shapes here
    with pytest.raises(ValueError, match=r"feedback\['layers.1'\] has shape \(3, 3\), expected"):
        rule.feedback["layers.1"] = torch.zeros(3, 3)
    with pytest.raises(KeyError, match="covered layers"):
        rule.feedback["layers.9"] = torch.zeros(3, 3)
    with pytest.raises(TypeError, match="cannot be deleted"):
        del rule.feedback["layers.1"]


def test_sign_symmetry_variants():
    model = make_model(2)
    x, y = make_batch()
    for variant in ("usf", "frsf", "brsf"):
        with SignSymmetry(model, generator=gen(3), variant=variant) as rule:
            for name, v in rule.feedback.items():
                assert torch.equal(v.sign(), rule.layers[name].weight.detach().sign())
    with SignSymmetry(model) as usf:
        assert all(set(v.unique().tolist()) <= {-1.0, 0.0, 1.0} for v in usf.feedback.values())
        assert usf.magnitudes is None
    with SignSymmetry(model, generator=gen(3), variant="frsf") as frsf:
        before = {n: v.clone() for n, v in frsf.feedback.items()}
        frsf.backward(x, y)
        assert all(torch.equal(frsf.feedback[n], v) for n, v in before.items())
    with SignSymmetry(model, generator=gen(3), variant="brsf") as brsf:
        before = {n: v.clone() for n, v in brsf.feedback.items()}
        brsf.backward(x, y)
        # redrawn where an error goes back; the first layer's input is the data: nothing drawn
        assert torch.equal(brsf.feedback["layers.0"], before.pop("layers.0"))
        assert not any(torch.equal(brsf.feedback[n], v) for n, v in before.items())
    with pytest.raises(ValueError, match="variant"):
        SignSymmetry(model, variant="sign")


def test_sign_symmetry_follows_the_current_weights():
    model = make_model(1)
    with SignSymmetry(model) as rule:
        with torch.no_grad():
            model.layers[1].weight.neg_()
        assert torch.equal(rule.feedback["layers.1"], model.layers[1].weight.detach().sign())


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
    assert list(angles) == [f"layers.{i}.{kind}" for i in range(4) for kind in ("weight", "bias")]
    assert max(angles.values()) < 1e-6
    assert feedback_weight_angles(Backprop(model)) == {}
    fa = FeedbackAlignment(model, generator=gen(2))
    for name, layer in fa.layers.items():
        fa.feedback[name] = layer.weight.detach().clone()
    assert max(update_angles(fa, x, y, loss).values()) < 1e-6
    fb_angles = feedback_weight_angles(fa)
    assert list(fb_angles) == [f"layers.{i}" for i in range(4)]
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
    rule = rule_cls(model, generator=gen(0), layers=["layers.1"])
    column = torch.tensor([[1.0], [math.sqrt(3.0)]], dtype=torch.float64)
    rule.feedback["layers.1"] = column if rule_cls is DirectFeedbackAlignment else column.T
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    angles = update_angles(rule, x, y, "square")
    assert angles["layers.0.weight"] == pytest.approx(60.0, abs=1e-9)
    assert angles["layers.0.bias"] == pytest.approx(60.0, abs=1e-9)
    assert angles["layers.1.weight"] == pytest.approx(0.0, abs=1e-9)
    assert angles["layers.1.bias"] == pytest.approx(0.0, abs=1e-9)
    assert feedback_weight_angles(rule) == {"layers.1": pytest.approx(60.0, abs=1e-9)}


def test_sign_symmetry_feedback_angle_by_hand():
    """W1 = (3, -1, 0, 2): V = sign(W1)^T = (1, -1, 0, 1); cos = 6 / (sqrt 14 sqrt 3)."""
    model = MLP([2, 4, 1], generator=gen(0))
    with torch.no_grad():
        model.layers[1].weight.copy_(torch.tensor([[3.0, -1.0, 0.0, 2.0]]))
    expected = math.degrees(math.acos(6 / (math.sqrt(14) * math.sqrt(3))))
    angles = feedback_weight_angles(SignSymmetry(model, layers=["layers.1"]))
    assert angles == {"layers.1": pytest.approx(expected, abs=1e-4)}


def test_dfa_feedback_angle_compares_with_the_product_of_weights():
    model = make_model(2)
    dfa = DirectFeedbackAlignment(model, generator=gen(2))
    w1, w2 = (layer.weight.detach() for layer in model.layers[1:])
    dfa.feedback["layers.1"] = (w2 @ w1).T.clone()  # W1^T W2^T
    dfa.feedback["layers.2"] = w2.T.clone()
    angles = feedback_weight_angles(dfa)
    assert list(angles) == ["layers.1", "layers.2"]
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
    start = feedback_weight_angles(fa)["layers.1"]
    loss_before = fa.backward(x, y).item()
    train(fa, x, y, steps=200)
    end = feedback_weight_angles(fa)["layers.1"]
    assert start > 80.0
    assert end < 65.0, (start, end)
    assert update_angles(fa, x, y)["layers.0.weight"] < 70.0
    assert fa.backward(x, y).item() < 0.5 * loss_before


def test_dfa_forward_weights_align_with_feedback():
    x, y = teacher_task()
    model = MLP([10, 20, 20, 4], "tanh", generator=gen(0))
    dfa = DirectFeedbackAlignment(model, generator=gen(100))
    dfa.backward(x[:1], y[:1])  # draws the matrices (their shapes come from the data)
    model.zero_grad()
    start = feedback_weight_angles(dfa)
    assert list(start) == ["layers.1", "layers.2"]
    train(dfa, x, y, steps=300)
    end = feedback_weight_angles(dfa)
    for name in start:
        assert end[name] < start[name] - 15.0, (name, start[name], end[name])
        assert end[name] < 70.0, (name, end[name])


def test_feedback_matrices_convert_once_and_follow_replacements():
    """A matrix drawn on the CPU in float32 is converted once per device and dtype, and a
    replacement is picked up at once."""
    model = make_model(1)
    with FeedbackAlignment(model, generator=gen(2)) as fa:
        like = torch.zeros((), dtype=torch.float64)
        first = fa.feedback.on("layers.1", like)
        assert first.dtype == torch.float64 and fa.feedback["layers.1"].dtype == torch.float32
        assert fa.feedback.on("layers.1", like) is first
        view = model.layers[1].weight.detach()  # already float64: used as is, no copy
        fa.feedback["layers.1"] = view
        assert fa.feedback.on("layers.1", like) is view
