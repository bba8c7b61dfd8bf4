"""The FA family's exact identities on a zoo of models a user might bring, in float64.

Zoo: the MLP; LeNet-5; nested ``Sequential``s with a residual block; convolutions and linear
layers with ``BatchNorm1d/2d`` and dropout between them (training mode, the same dropout masks in
the two runs compared); a model that calls one layer twice; a model trained with a hand-written
loss (multi-class hinge); a ``Conv1d`` net with ``padding='same'``.

* FA with ``B = W`` (views that follow the weights) and sign symmetry with magnitudes ``|W|``
  give autograd's gradient for every parameter (rtol 1e-12), also over SGD steps; DFA with one
  hidden layer and ``D = W_out^T`` likewise.
* The tests have teeth: FA with its random ``B``, with ``B = 2 W`` and with ``B = W^T`` (square
  layers) differ from backprop.
* ``remove()`` and the ``with`` block give back a plain model; misuse fails with a clear error.
Everything goes through the user's path, ``my_loss(model(x), y).backward()``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuroplastic.credit import (
    DirectFeedbackAlignment,
    EquilibriumPropagation,
    FeedbackAlignment,
    SignSymmetry,
    loss_per_example,
)
from neuroplastic.models.lenet import LeNet5
from neuroplastic.models.mlp import MLP

TIGHT = {"rtol": 1e-12, "atol": 1e-14}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread avoids oversubscribing a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the zoo ----------------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Reused(nn.Module):
    """One hidden layer applied twice (weight sharing through time, as in an unrolled RNN)."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.out(h)


def cross_entropy(z, y):
    return F.cross_entropy(z, y)


def hinge(z, y):
    """Multi-class hinge (Crammer & Singer), by hand: mean of max_{j != y} (1 + z_j - z_y)_+."""
    margins = 1.0 + z - z.gather(1, y[:, None])  # (N, K)
    margins = margins.scatter(1, y[:, None], 0.0)
    return margins.clamp(min=0).amax(dim=1).mean()


def label_smoothed(z, y, smoothing: float = 0.1):
    """Cross-entropy against ``(1 - s) onehot + s / K``, by hand."""
    target = F.one_hot(y, z.shape[1]).to(z) * (1 - smoothing) + smoothing / z.shape[1]
    return -(target * z.log_softmax(dim=1)).sum(dim=1).mean()


@dataclass
class Case:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    n_classes: int = 4
    loss: Callable = cross_entropy
    batch: int = 6


ZOO = {
    "mlp": Case(
        lambda: MLP([5, 7, 7, 4], "tanh", generator=torch.Generator().manual_seed(0)), (5,)
    ),
    "lenet5": Case(lambda: LeNet5(n_classes=10), (1, 28, 28), n_classes=10, batch=3),
    "nested-residual": Case(
        lambda: nn.Sequential(
            nn.Linear(5, 8),
            nn.Tanh(),
            nn.Sequential(
                Residual(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))), nn.Tanh()
            ),
            nn.Sequential(nn.Linear(8, 4)),
        ),
        (5,),
    ),
    "batchnorm-dropout": Case(
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Flatten(),
            nn.Linear(4 * 5 * 5, 9),
            nn.BatchNorm1d(9),
            nn.Tanh(),
            nn.Dropout(0.2),
            nn.Linear(9, 4),
        ),
        (2, 5, 5),
    ),
    "reused-layer": Case(Reused, (5,)),
    "hinge-loss": Case(
        lambda: nn.Sequential(
            nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4)
        ),
        (5,),
        loss=hinge,
    ),
    "conv1d-same": Case(
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, padding="same"),
            nn.Tanh(),
            nn.Conv1d(4, 3, 5, padding="same", dilation=2),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(3 * 7, 4),
        ),
        (2, 7),
    ),
}
ZOO_IDS = list(ZOO)


def build(case: Case, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return case.build().double().train()


def batch(case: Case, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch, *case.input_shape, generator=generator, dtype=torch.float64)
    y = torch.randint(0, case.n_classes, (case.batch,), generator=generator)
    return x, y


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output, with the same dropout masks in every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        return model(x)


def update(model: nn.Module, case: Case, x, y) -> dict[str, torch.Tensor]:
    """What ``my_loss(model(x), y).backward()`` writes into every ``.grad``."""
    model.zero_grad(set_to_none=True)
    case.loss(forward(model, x), y).backward()
    out = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def assert_same(got: dict, expected: dict, **tolerance) -> None:
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **(tolerance or TIGHT), msg=name)


def pair(case: Case):
    """Two identical models (the second for the rule) and a batch."""
    plain = build(case)
    return plain, copy.deepcopy(plain), *batch(case)


def b_equals_w(rule: FeedbackAlignment) -> None:
    for name, layer in rule.layers.items():
        rule.feedback[name] = layer.weight.detach()  # a view: follows the weight as it trains


def magnitudes_equal_abs_w(rule: SignSymmetry) -> None:
    for name, layer in rule.layers.items():
        rule.magnitudes[name] = layer.weight.detach().abs()  # a copy: reassign after each step


# -- identities -------------------------------------------------------------------------------


@pytest.mark.parametrize("zoo", ZOO_IDS)
def test_fa_with_b_equal_to_w_is_backprop(zoo):
    case = ZOO[zoo]
    plain, model, x, y = pair(case)
    rule = FeedbackAlignment(model, generator=torch.Generator().manual_seed(3))
    b_equals_w(rule)
    assert_same(update(model, case, x, y), update(plain, case, x, y))


@pytest.mark.parametrize("zoo", ZOO_IDS)
def test_sign_symmetry_with_magnitudes_abs_w_is_backprop(zoo):
    case = ZOO[zoo]
    plain, model, x, y = pair(case)
    rule = SignSymmetry(model, generator=torch.Generator().manual_seed(3), variant="frsf")
    magnitudes_equal_abs_w(rule)
    assert_same(update(model, case, x, y), update(plain, case, x, y))


@pytest.mark.parametrize("rule_name", ["fa", "frsf", "fa-as_backprop", "usf-as_backprop"])
@pytest.mark.parametrize("zoo", ["mlp", "nested-residual", "batchnorm-dropout", "reused-layer"])
def test_identities_hold_while_training(zoo, rule_name):
    """Three SGD steps on both models: the rule's update is backprop's at every step (FA's ``B``
    views follow the weights; sign symmetry's magnitudes are reassigned; ``as_backprop()``)."""
    case = ZOO[zoo]
    plain, model, x, y = pair(case)
    generator = torch.Generator().manual_seed(3)
    if rule_name.startswith("fa"):
        rule = FeedbackAlignment(model, generator=generator)
    else:
        rule = SignSymmetry(model, generator=generator, variant=rule_name.split("-")[0])
    context = rule.as_backprop() if rule_name.endswith("as_backprop") else contextlib.nullcontext()
    if rule_name == "fa":
        b_equals_w(rule)
    start = [p.detach().clone() for p in plain.parameters()]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.2) for m in (plain, model)]
    with context:
        for _ in range(3):
            if rule_name == "frsf":
                magnitudes_equal_abs_w(rule)
            expected, got = update(plain, case, x, y), update(model, case, x, y)
            assert_same(got, expected)
            for m, grads, opt in zip((plain, model), (expected, got), optimizers, strict=True):
                for name, p in m.named_parameters():
                    p.grad = grads[name]
                opt.step()
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, **TIGHT)
    # they did train (a bias just before a batch norm has no gradient, so not every parameter)
    moved = [not torch.equal(a, b) for a, b in zip(plain.parameters(), start, strict=True)]
    assert sum(moved) > 2


def one_hidden_layer(generator_seed: int = 0) -> nn.Module:
    return MLP([5, 7, 4], "tanh", generator=torch.Generator().manual_seed(generator_seed)).double()


@pytest.mark.parametrize("loss", [cross_entropy, label_smoothed, hinge])
def test_dfa_one_hidden_layer_with_d_equal_to_w_out_transposed_is_backprop(loss):
    case = Case(one_hidden_layer, (5,), loss=loss)
    plain, model, x, y = pair(case)
    rule = DirectFeedbackAlignment(model, generator=torch.Generator().manual_seed(3))
    rule.feedback["layers.1"] = model.layers[1].weight.detach().T  # (7, 4): D = W_out^T
    assert_same(update(model, case, x, y), update(plain, case, x, y))
    with DirectFeedbackAlignment(copy.deepcopy(plain)) as other, other.as_backprop():
        assert_same(update(other.model, case, x, y), update(plain, case, x, y))


def test_dfa_as_backprop_refuses_deeper_models():
    rule = DirectFeedbackAlignment(build(ZOO["mlp"]))
    with pytest.raises(NotImplementedError, match="only with one hidden layer"):
        with rule.as_backprop():
            pass


# -- the tests have teeth ---------------------------------------------------------------------


def differs(got: dict, expected: dict) -> list[str]:
    """Parameters whose updates differ by more than 1e-6 relative."""
    return [
        name
        for name in expected
        if not torch.allclose(got[name], expected[name], rtol=1e-6, atol=1e-9)
    ]


@pytest.mark.parametrize("zoo", ZOO_IDS)
def test_fa_with_random_b_is_not_backprop(zoo):
    """Layers below the last covered one get another update; the last covered layer (its error
    comes straight from the loss) and anything above it keep the true gradient."""
    case = ZOO[zoo]
    plain, model, x, y = pair(case)
    rule = FeedbackAlignment(model, generator=torch.Generator().manual_seed(3))
    got, expected = update(model, case, x, y), update(plain, case, x, y)
    wrong = differs(got, expected)
    last = list(rule.layers)[-1]
    assert wrong, "FA with a random B gave backprop's update"
    assert f"{last}.weight" not in wrong and f"{last}.bias" not in wrong
    first = list(rule.layers)[0]
    assert f"{first}.weight" in wrong


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda w: 2 * w, id="scale-2"),
        pytest.param(lambda w: w.T, id="transposed"),
        pytest.param(lambda w: w.flip(0), id="rows-permuted"),
    ],
)
def test_a_broken_fa_does_not_pass_the_identity(broken):
    """A square-layered net, so a wrongly transposed ``B`` fits: the identity test catches it."""
    case = Case(lambda: MLP([6, 6, 6, 4], "tanh", generator=torch.Generator().manual_seed(0)), (6,))
    plain, model, x, y = pair(case)
    rule = FeedbackAlignment(model)
    for name, layer in list(rule.layers.items())[:-1]:
        rule.feedback[name] = broken(layer.weight.detach())
    name, layer = list(rule.layers.items())[-1]
    rule.feedback[name] = layer.weight.detach()
    got, expected = update(model, case, x, y), update(plain, case, x, y)
    with pytest.raises(AssertionError):
        assert_same(got, expected)
    assert "layers.0.weight" in differs(got, expected)


# -- remove() and the with block ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["remove", "with"])
@pytest.mark.parametrize("zoo", ZOO_IDS)
@pytest.mark.parametrize("rule_cls", [FeedbackAlignment, DirectFeedbackAlignment, SignSymmetry])
def test_remove_gives_back_a_plain_model(rule_cls, zoo, how):
    case = ZOO[zoo]
    plain, model, x, y = pair(case)
    keys = list(plain.state_dict())
    output = forward(plain, x).detach()
    expected = update(plain, case, x, y)
    rule = rule_cls(model, generator=torch.Generator().manual_seed(3))
    assert torch.equal(forward(model, x), output)  # attached: the same forward output
    if how == "remove":
        update(model, case, x, y)
        rule.remove()
    else:
        with rule as entered:
            assert entered is rule
            update(model, case, x, y)
    assert not rule.attached
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(forward(model, x), output)
    got = update(model, case, x, y)
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert list(model.state_dict()) == keys
    rule_cls(model)  # the layers are free again


def test_disabled_gives_autograd_and_comes_back():
    case = ZOO["nested-residual"]
    plain, model, x, y = pair(case)
    rule = FeedbackAlignment(model, generator=torch.Generator().manual_seed(3))
    own = update(model, case, x, y)
    with rule.disabled():
        assert_same(update(model, case, x, y), update(plain, case, x, y))
    assert_same(update(model, case, x, y), own)


# -- clear errors ---------------------------------------------------------------------------


def test_a_second_rule_on_a_layer_is_refused():
    model = build(ZOO["nested-residual"])
    FeedbackAlignment(model)
    with pytest.raises(ValueError, match=r"0 already has a FeedbackAlignment attached.*remove\(\)"):
        SignSymmetry(model)
    other = build(ZOO["nested-residual"])
    SignSymmetry(other, layers=["0"])
    FeedbackAlignment(other, layers=["3.0"])  # other layers: fine
    with pytest.raises(ValueError, match="already has a SignSymmetry attached"):
        DirectFeedbackAlignment(other, layers=["0", "2.0.body.0"])


def test_a_feedback_matrix_of_the_wrong_shape_is_refused():
    rule = FeedbackAlignment(build(ZOO["mlp"]))
    with pytest.raises(
        ValueError,
        match=r"feedback\['layers.1'\] has shape \(7, 6\), expected "
        r"\(7, 7\)",
    ):
        rule.feedback["layers.1"] = torch.zeros(7, 6)
    sign = SignSymmetry(build(ZOO["lenet5"]), variant="frsf")
    with pytest.raises(ValueError, match=r"magnitudes\['features.0'\] has shape"):
        sign.magnitudes["features.0"] = torch.ones(6, 1, 3, 3)
    dfa = DirectFeedbackAlignment(build(ZOO["mlp"]))
    x, y = batch(ZOO["mlp"])
    F.cross_entropy(dfa.model(x), y).backward()  # D drawn: (7, 4)
    with pytest.raises(ValueError, match=r"has shape \(4, 7\), expected \(7, 4\)"):
        dfa.feedback["layers.1"] = torch.zeros(4, 7)
    with pytest.raises(TypeError, match="cannot be deleted"):
        del rule.feedback["layers.1"]


def test_unsupported_layer_types_and_unknown_names_are_refused():
    lstm = nn.Sequential(nn.LSTM(3, 4))
    with pytest.raises(TypeError, match=r"layer types \['LSTM'\] are not supported"):
        FeedbackAlignment(lstm, layers=(nn.LSTM,))
    with pytest.raises(TypeError, match=r"modules \{'1': 'Tanh'\} are not of a type"):
        FeedbackAlignment(build(ZOO["nested-residual"]), layers=["0", "1"])
    with pytest.raises(KeyError, match=r"no modules named \['layers.9'\]"):
        FeedbackAlignment(build(ZOO["mlp"]), layers=["layers.9"])
    with pytest.raises(ValueError, match="covers no layer"):
        SignSymmetry(lstm)
    with pytest.raises(ValueError, match="padding='same' with an even receptive field"):
        FeedbackAlignment(nn.Sequential(nn.Conv1d(2, 2, 4, padding="same")))
    with pytest.raises(ValueError, match="padding_mode='circular' is not supported"):
        FeedbackAlignment(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")))


class ReusedWithTwoShapes(nn.Module):
    """``shared`` sees per-example inputs of size 12 (as 2 x 6) and 6."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(5, 12), nn.Linear(6, 6), nn.Linear(18, 4)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        a = self.shared(h.view(len(x), 2, 6)).flatten(1)  # (N, 12)
        b = self.shared(h[:, :6])  # (N, 6)
        return self.out(torch.cat([a, b], dim=1))


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(5, 6), nn.Linear(6, 4)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return self.head(h), h


def test_dfa_refuses_a_layer_reused_with_different_input_shapes():
    model = ReusedWithTwoShapes().double()
    rule = DirectFeedbackAlignment(model)
    x, y = batch(ZOO["mlp"])
    with pytest.raises(
        ValueError,
        match="shared ran with inputs of per-example size 6 .* one input shape per layer",
    ):
        F.cross_entropy(model(x), y).backward()
    assert rule.feedback.shape("shared") == (12, 4)
    # FA has no such limit: with B = W it is backprop on this model too
    plain = ReusedWithTwoShapes().double()
    model = copy.deepcopy(plain)
    b_equals_w(FeedbackAlignment(model))
    case = Case(ReusedWithTwoShapes, (5,))
    assert_same(update(model, case, x, y), update(plain, case, x, y))


def test_dfa_needs_output_for_a_tuple_returning_model():
    x, y = batch(ZOO["mlp"])
    model = TupleOut().double()
    DirectFeedbackAlignment(model)
    with pytest.raises(TypeError, match=r"needs a tensor output .*\(pass output="):
        model(x)
    with pytest.raises(RuntimeError, match="head ran outside the model's forward pass"):
        model.head(torch.zeros(2, 6, dtype=torch.float64, requires_grad=True))
    plain = TupleOut().double()
    model = copy.deepcopy(plain)
    rule = DirectFeedbackAlignment(model, output="head")
    rule.feedback["head"] = model.head.weight.detach().T
    got, expected = {}, {}
    for m, out in ((model, got), (plain, expected)):
        F.cross_entropy(m(x)[0], y).backward()
        out.update({n: p.grad.clone() for n, p in m.named_parameters()})
    assert_same(got, expected)
    with pytest.raises(KeyError, match="no module named 'tail'"):
        DirectFeedbackAlignment(TupleOut(), output="tail")


def test_equilibrium_propagation_refuses_other_models():
    with pytest.raises(TypeError, match="equilibrium propagation needs a layered energy model"):
        EquilibriumPropagation(build(ZOO["lenet5"]))


# -- Conv1d and padding='same' --------------------------------------------------------------


def test_conv1d_and_same_padding_are_covered():
    case = ZOO["conv1d-same"]
    plain, model, x, y = pair(case)
    rule = FeedbackAlignment(model, generator=torch.Generator().manual_seed(3))
    assert list(rule.layers) == ["0", "2", "5"]
    assert [type(m) for m in rule.layers.values()] == [nn.Conv1d, nn.Conv1d, nn.Linear]
    assert rule.feedback["2"].shape == (3, 4, 5)
    assert forward(model, x).shape == (case.batch, 4)
    got, expected = update(model, case, x, y), update(plain, case, x, y)
    assert differs(got, expected)  # random B: not backprop
    b_equals_w(rule)
    assert_same(update(model, case, x, y), expected)
    # the same through a Conv2d with padding='same' and a stride-free dilation
    conv2d = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding="same", dilation=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 25, 4),
    ).double()
    case2 = Case(lambda: conv2d, (2, 5, 5))
    plain2, model2 = conv2d, copy.deepcopy(conv2d)
    x2, y2 = batch(case2)
    b_equals_w(FeedbackAlignment(model2))
    x2.requires_grad_(True)  # the first layer's input error goes through B too
    model2.zero_grad()
    F.cross_entropy(model2(x2), y2).backward()
    got_x = x2.grad.clone()
    x2.grad = None
    F.cross_entropy(plain2(x2), y2).backward()
    torch.testing.assert_close(got_x, x2.grad, **TIGHT)
    for a, b in zip(model2.parameters(), plain2.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, **TIGHT)


def test_square_loss_through_loss_per_example_too():
    """The experiments' built-in square loss: FA with B = W is backprop through it as well."""
    case = Case(
        ZOO["batchnorm-dropout"].build,
        (2, 5, 5),
        loss=lambda z, y: loss_per_example(z, y, "square").mean(),
    )
    plain, model, x, y = pair(case)
    b_equals_w(FeedbackAlignment(model))
    assert_same(update(model, case, x, y), update(plain, case, x, y))
