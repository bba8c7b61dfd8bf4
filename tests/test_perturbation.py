"""Weight and node perturbation: exact identities, statistical unbiasedness, the variance laws.

Statistical tests compare a mean over many draws with its target to within ``k`` standard errors,
``k`` chosen by Bonferroni for a family-wise false-failure probability ``ALPHA`` over all the
coordinates compared (the draws are seeded, so a passing test stays passing).

The algebra behind the exact tests. Let ``C(xi)`` be the cost as a function of the perturbed
variables (the weights for weight perturbation, the pre-activations for node perturbation), with
``C(xi) = C(0) + g.xi + xi^T H xi / 2`` exactly (a quadratic cost). Then the central difference
is ``(C(xi) - C(-xi)) / 2 = g.xi`` and the estimate ``(g.xi) xi / sigma^2`` has mean
``E[xi xi^T] g / sigma^2 = g`` for *every* sigma; the forward difference adds
``(xi^T H xi / 2) xi / sigma^2``, whose mean is a third Gaussian moment, zero. The cost is
quadratic in the weights for a one-layer linear network with the square loss (the output is
affine in ``W``), and quadratic in the node perturbations for a linear network of *any* depth
with the square loss (the output is affine in every layer's added noise). The variance of the
central estimate is ``E[(g.xi)^2 xi_i^2] / sigma^4 - g_i^2 = |g|^2 + g_i^2``, so
``E|g_hat - g|^2 = (P + 1)|g|^2`` over ``P`` perturbed variables.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn
from torch.testing import assert_close

from neuroplastic.credit import Backprop, loss_per_example
from neuroplastic.credit import node_perturbation as node_module
from neuroplastic.credit import weight_perturbation as weight_module
from neuroplastic.credit.node_perturbation import NodePerturbation, node_perturbation_reference
from neuroplastic.credit.weight_perturbation import (
    VectorizeError,
    WeightPerturbation,
    loss_closure,
    weight_perturbation_reference,
)
from neuroplastic.models.mlp import MLP

F64 = torch.float64
ALPHA = 1e-4
"""Family-wise probability of a false failure of one statistical assertion."""
RULES = (WeightPerturbation, NodePerturbation)
REFERENCES = {
    WeightPerturbation: weight_perturbation_reference,
    NodePerturbation: node_perturbation_reference,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are small: one intra-op thread is faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bonferroni_k(n_comparisons: int, alpha: float = ALPHA) -> float:
    """Two-sided normal quantile so that all ``n_comparisons`` pass with probability 1 - alpha."""
    return float(stats.norm.ppf(1 - alpha / (2 * n_comparisons)))


def network(sizes, activation="tanh", seed=0, linear=False) -> MLP:
    model = MLP(sizes, activation, torch.Generator().manual_seed(seed)).to(F64)
    if linear:
        model.activation = nn.Identity()  # a deep linear network: no ACTIVATIONS entry for it
    return model


def data(n_in: int, n_out: int, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_in, generator=generator, dtype=F64)
    return x, torch.randint(0, n_out, (batch,), generator=generator)


def backprop_gradient(model: MLP, x, y, loss: str) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    Backprop(model).backward(x, y, loss)
    grads = [p.grad.clone() for layer in model.layers for p in (layer.weight, layer.bias)]
    model.zero_grad(set_to_none=True)
    return grads


def flat(tensors: list[torch.Tensor], draws: bool = False) -> torch.Tensor:
    """Concatenate parameters: ``(P,)``, or ``(draws, P)`` for per-draw estimates."""
    if draws:
        return torch.cat([t.flatten(1) for t in tensors], dim=1)
    return torch.cat([t.flatten() for t in tensors])


def rule(cls, model, seed=0, **hyper):
    return cls(model, generator=torch.Generator().manual_seed(seed), **hyper)


def noise_for(r, draws: int, batch: int):
    return r.draw_noise(draws, batch) if isinstance(r, NodePerturbation) else r.draw_noise(draws)


def assert_mean_within(samples: torch.Tensor, target: torch.Tensor) -> None:
    """Per coordinate, |mean - target| < k SE, k Bonferroni over all coordinates."""
    n = samples.shape[0]
    mean = samples.mean(dim=0)
    se = samples.std(dim=0) / math.sqrt(n)
    k = bonferroni_k(target.numel())
    z = (mean - target).abs() / se
    assert (z < k).all(), f"max |z| = {z.max():.2f} >= k = {k:.2f}"


def assert_resolves(samples: torch.Tensor, target: torch.Tensor, share: float = 0.25) -> None:
    """The test has power: it would detect a bias of ``share`` of the largest coordinate."""
    se = samples.std(dim=0) / math.sqrt(samples.shape[0])
    assert bonferroni_k(target.numel()) * se.max() < share * target.abs().max()


# -- exact identities -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", RULES)
@pytest.mark.parametrize("difference", ["forward", "central"])
def test_batched_estimates_equal_the_reference_loop(cls, difference):
    model = network((5, 4, 3, 2))
    x, y = data(5, 2, 6)
    r = rule(cls, model, sigma=0.1, difference=difference)
    noise = noise_for(r, 7, len(y))
    fast = r.estimates(x, y, "cross_entropy", noise=noise).grads
    reference = REFERENCES[cls](model, loss_closure(x, y, "cross_entropy"), noise, 0.1, difference)
    for a, b in zip(fast, reference, strict=True):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", RULES)
def test_forward_differences_averaged_over_plus_and_minus_noise_are_the_central_difference(cls):
    """((C(xi) - C(0)) xi + (C(-xi) - C(0)) (-xi)) / 2 = (C(xi) - C(-xi)) xi / 2, so with
    symmetric noise both differences have the same mean, for any cost."""
    model = network((4, 6, 3))
    x, y = data(4, 3, 5)
    forward = rule(cls, model, sigma=0.3, difference="forward")
    central = rule(cls, model, sigma=0.3, difference="central")
    noise = noise_for(forward, 5, len(y))
    plus = forward.estimates(x, y, "cross_entropy", noise=noise).grads
    minus = forward.estimates(x, y, "cross_entropy", noise=[-n for n in noise]).grads
    both = central.estimates(x, y, "cross_entropy", noise=noise).grads
    for p, m, c in zip(plus, minus, both, strict=True):
        assert_close((p + m) / 2, c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", RULES)
def test_the_estimate_does_not_depend_on_chunking(cls, monkeypatch):
    model = network((5, 4, 3))
    x, y = data(5, 3, 4)
    whole = rule(cls, model, seed=3).estimates(x, y, draws=6).grads
    monkeypatch.setattr(weight_module, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(node_module, "CHUNK_ELEMENTS", 1)
    chunked = rule(cls, model, seed=3)
    pieces = chunked.estimates(x, y, draws=6).grads
    for a, b in zip(whole, pieces, strict=True):
        assert_close(a, b, rtol=0, atol=0)
    model.zero_grad()
    chunked = rule(cls, model, seed=3, samples=6)
    chunked.backward(x, y)
    for a, p in zip(whole, chunked.params, strict=True):
        assert_close(p.grad, a.mean(dim=0), rtol=1e-12, atol=1e-14)


# -- exact unbiasedness on quadratic costs --------------------------------------------------------


@pytest.mark.parametrize("difference", ["forward", "central"])
def test_weight_perturbation_is_exactly_unbiased_on_a_one_layer_linear_network(difference):
    """Square loss, one linear layer: C is quadratic in (W, b); unbiased even at sigma = 0.5."""
    model = network((6, 3))
    x, y = data(6, 3, 5)
    grad = flat(backprop_gradient(model, x, y, "square"))
    r = rule(WeightPerturbation, model, sigma=0.5, difference=difference)
    samples = flat(r.estimates(x, y, "square", draws=20_000).grads, draws=True)
    assert_mean_within(samples, grad)
    assert_resolves(samples, grad)


@pytest.mark.parametrize("difference", ["forward", "central"])
def test_node_perturbation_is_exactly_unbiased_on_a_deep_linear_network(difference):
    """Square loss, three linear layers: each example's cost is quadratic in the node noise."""
    model = network((5, 4, 3, 2), linear=True)
    x, y = data(5, 2, 3)
    grad = flat(backprop_gradient(model, x, y, "square"))
    r = rule(NodePerturbation, model, sigma=0.5, difference=difference)
    samples = flat(r.estimates(x, y, "square", draws=20_000).grads, draws=True)
    assert_mean_within(samples, grad)
    assert_resolves(samples, grad)


def test_central_weight_perturbation_variance_is_g_squared_plus_g_i_squared():
    """Var g_hat_i = |g|^2 + g_i^2 on a quadratic cost (central difference), per coordinate."""
    model = network((6, 3))
    x, y = data(6, 3, 5)
    grad = flat(backprop_gradient(model, x, y, "square"))
    r = rule(WeightPerturbation, model, sigma=0.5, difference="central")
    samples = flat(r.estimates(x, y, "square", draws=20_000).grads, draws=True)
    squared_error = (samples - grad).pow(2)
    assert_mean_within(squared_error, grad.pow(2).sum() + grad.pow(2))


# -- nonlinear networks: the bias vanishes as sigma -> 0 ------------------------------------------


@pytest.mark.parametrize("cls", RULES)
def test_bias_on_a_nonlinear_network_shrinks_like_sigma_squared(cls):
    """tanh network, cross-entropy. With common random numbers z, the bias of the estimate at
    sigma is E[g_hat_sigma(z) - g_hat_0(z)] (g_hat_0, the first-order term, has mean g exactly),
    estimated per coordinate with its standard error. It is significant at sigma = 0.4, falls by
    about 4 per halving of sigma, and at small sigma the plain mean of g_hat matches backprop."""
    model = network((4, 5, 3), seed=2)
    x, y = data(4, 3, 4, seed=3)
    grad = flat(backprop_gradient(model, x, y, "cross_entropy"))
    draws = 20_000
    z = noise_for(rule(cls, model, sigma=1.0), draws, len(y))  # N(0, 1)

    def estimates(sigma: float, difference: str = "central") -> torch.Tensor:
        r = rule(cls, model, sigma=sigma, difference=difference)
        grads = r.estimates(x, y, "cross_entropy", noise=[sigma * n for n in z]).grads
        return flat(grads, draws=True)

    first_order = estimates(1e-5)
    sigmas = (0.4, 0.2, 0.1, 0.05)
    biases, errors = [], []
    for sigma in sigmas:
        residual = estimates(sigma) - first_order  # (draws, P), O(sigma^2) per draw
        biases.append(residual.mean(dim=0))
        errors.append(residual.std(dim=0) / math.sqrt(draws))
    k = bonferroni_k(grad.numel())
    assert ((biases[0].abs() / errors[0]) > k).any()  # a real bias at sigma = 0.4
    norms = [float(b.norm()) for b in biases]
    for larger, smaller in zip(norms, norms[1:], strict=False):
        assert 2.5 < larger / smaller < 6.0  # ~ 4: bias = O(sigma^2)
    assert norms[-1] < 0.01 * float(grad.norm())
    assert_mean_within(estimates(1e-3, "forward"), grad)  # unbiased to statistical resolution


# -- the variance laws ----------------------------------------------------------------------------


def relative_squared_errors(r, x, y, grad: torch.Tensor, draws: int) -> torch.Tensor:
    """|g_hat - g|^2 / |g|^2 of ``draws`` single-draw estimates."""
    samples = flat(r.estimates(x, y, "square", draws=draws).grads, draws=True)
    return (samples - grad).pow(2).sum(dim=1) / grad.pow(2).sum()


def assert_mean_is(values: torch.Tensor, expected: float) -> None:
    se = float(values.std()) / math.sqrt(len(values))
    k = bonferroni_k(12)  # every variance comparison of this section, family-wise
    assert abs(float(values.mean()) - expected) < k * se, (float(values.mean()), expected, se)


@pytest.mark.parametrize(("n_in", "n_out"), [(8, 4), (32, 4), (32, 16)])
def test_variance_is_synapses_plus_one_and_neurons_plus_one_on_one_layer(n_in, n_out):
    """One linear layer, one example, square loss, central differences: exactly
    E|g_hat - g|^2 / |g|^2 = P + 1 for weight perturbation (P = n_out (n_in + 1)) and N + 1 for
    node perturbation (N = n_out). Four times the inputs multiply the first by about four and
    leave the second unchanged; four times the outputs multiply both."""
    model = network((n_in, n_out))
    x, y = data(n_in, n_out, 1)
    grad = flat(backprop_gradient(model, x, y, "square"))
    weight = rule(WeightPerturbation, model, sigma=0.5, difference="central")
    node = rule(NodePerturbation, model, sigma=0.5, difference="central")
    assert_mean_is(relative_squared_errors(weight, x, y, grad, 4000), n_out * (n_in + 1) + 1)
    assert_mean_is(relative_squared_errors(node, x, y, grad, 4000), n_out + 1)


def node_variance_formula(model: MLP, x: torch.Tensor, y: torch.Tensor) -> float:
    """E|g_hat - g|^2 / |g|^2 of central node perturbation on a linear network, square loss:
    per example the estimated error vector over all N units has covariance
    ``|delta_b|^2 I + delta_b delta_b^T``, independent across examples, so ``E|g_hat - g|^2``
    is ``sum_b sum_l (n_l |delta_b|^2 + |delta_{l,b}|^2) (|h_{l-1,b}|^2 + 1) / B^2``."""
    layers = model.layers
    inputs, h = [], x
    with torch.no_grad():
        for layer in layers:
            inputs.append(h)
            h = layer(h)
    deltas = [h - nn.functional.one_hot(y, h.shape[-1]).to(h.dtype)]  # output delta per example
    for layer in reversed(layers[1:]):
        deltas.insert(0, deltas[0] @ layer.weight.detach())
    total_delta = sum(d.pow(2).sum(dim=1) for d in deltas)  # |delta_b|^2, (B,)
    batch = len(y)
    error = 0.0
    for layer, d, h_in in zip(layers, deltas, inputs, strict=True):
        h_norm = h_in.pow(2).sum(dim=1) + 1  # the bias is a weight from a constant 1
        error += float(((layer.out_features * total_delta + d.pow(2).sum(dim=1)) * h_norm).sum())
    grad = flat(backprop_gradient(model, x, y, "square"))
    return error / batch**2 / float(grad.pow(2).sum())


@pytest.mark.parametrize("width", [4, 32])
def test_variance_grows_with_synapses_for_weights_and_with_units_for_nodes(width):
    """A 20-H-3 linear network, batch of 4, at two widths and equal sigma and samples: weight
    perturbation's relative variance is P + 1 (P synapses); node perturbation's is the formula
    above, whose only size factor is the number of units n_l of each layer; node perturbation's
    is far smaller."""
    model = network((20, width, 3), linear=True)
    x, y = data(20, 3, 4)
    grad = flat(backprop_gradient(model, x, y, "square"))
    n_synapses = grad.numel()
    weight = rule(WeightPerturbation, model, sigma=1e-3, difference="central")
    node = rule(NodePerturbation, model, sigma=1e-3, difference="central")
    weight_errors = relative_squared_errors(weight, x, y, grad, 3000)
    node_errors = relative_squared_errors(node, x, y, grad, 3000)
    assert_mean_is(weight_errors, n_synapses + 1)
    assert_mean_is(node_errors, node_variance_formula(model, x, y))
    assert float(node_errors.mean()) < 0.25 * float(weight_errors.mean())


# -- conventions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", RULES)
def test_determinism_and_the_global_generator_is_untouched(cls):
    model = network((5, 4, 3))
    x, y = data(5, 3, 4)

    def grads(seed):
        model.zero_grad(set_to_none=True)
        rule(cls, model, seed=seed, samples=3).backward(x, y)
        return [p.grad.clone() for p in model.parameters()]

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first, again, other = grads(7), grads(7), grads(8)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b, c in zip(first, again, other, strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    model.zero_grad(set_to_none=True)
    cls(model, samples=3).backward(x, y)  # generator=None: a fresh generator seeded 0
    default = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(default, grads(0), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", RULES)
@pytest.mark.parametrize(("difference", "per_call"), [("forward", 1 + 3), ("central", 1 + 2 * 3)])
def test_forward_pass_counter(cls, difference, per_call):
    model = network((5, 4, 3))
    x, y = data(5, 3, 4)
    r = rule(cls, model, samples=3, difference=difference)
    assert r.forward_passes == 0
    r.backward(x, y)
    r.backward(x, y)
    assert r.forward_passes == 2 * per_call
    assert r.draws == 6
    r.estimates(x, y, draws=5)
    assert r.forward_passes == 2 * per_call + 1 + 5 * (per_call - 1) // 3
    assert r.draws == 11


@pytest.mark.parametrize("cls", RULES)
def test_backward_accumulates_into_grad_and_returns_the_clean_loss(cls):
    model = network((5, 4, 3))
    x, y = data(5, 3, 4)
    model.zero_grad(set_to_none=True)
    loss = rule(cls, model, seed=4, samples=2).backward(x, y, "square")
    single = [p.grad.clone() for p in model.parameters()]
    clean = Backprop(model).predict(x)
    expected = 0.5 * (clean - nn.functional.one_hot(y, 3).to(F64)).pow(2).sum(dim=1).mean()
    assert_close(loss, expected, rtol=1e-12, atol=0)
    assert not loss.requires_grad
    offsets = [torch.full_like(p, 0.25) for p in model.parameters()]
    for p, offset in zip(model.parameters(), offsets, strict=True):
        p.grad = offset.clone()
    rule(cls, model, seed=4, samples=2).backward(x, y, "square")
    for p, offset, update in zip(model.parameters(), offsets, single, strict=True):
        assert_close(p.grad, offset + update, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", RULES)
def test_training_with_an_optimizer_lowers_the_loss(cls):
    model = network((6, 8, 3))
    x, y = data(6, 3, 32)
    r = rule(cls, model, sigma=1e-3, samples=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    first = float(r.backward(x, y))
    for _ in range(60):
        optimizer.zero_grad()
        last = float(r.backward(x, y))
        optimizer.step()
    assert last < 0.6 * first  # backprop: 1.15 -> 0.56


@pytest.mark.parametrize("cls", RULES)
def test_invalid_hyper_parameters_are_rejected(cls):
    model = network((3, 2))
    for hyper in ({"sigma": 0.0}, {"sigma": math.nan}, {"samples": 0}, {"samples": 1.5}):
        with pytest.raises(ValueError):
            cls(model, **hyper)
    with pytest.raises(ValueError):
        cls(model, difference="backward")
    with pytest.raises(TypeError):
        cls(model, generator=0)
    with pytest.raises(TypeError):
        cls("not a model")
    with pytest.raises(ValueError):  # a model with no covered layer (the root is never one)
        cls(nn.Linear(3, 2))
    with pytest.raises(TypeError):
        cls(model, vectorize=1)


# -- any model: a small CNN and a nested residual network -----------------------------------------


class ConvNet(nn.Module):
    """Conv2d (stride 2, padding 1) then Linear: ``(B, 1, 4, 4) -> (B, 2, 2, 2) -> (B, 3)``."""

    def __init__(self, linear: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)  # restored by the caller's fork_rng
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.act = nn.Identity() if linear else nn.Tanh()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


class Residual(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


def nested_net(linear: bool = False, seed: int = 0) -> nn.Module:
    """``Linear -> x + (Linear -> act)(x) -> act -> Linear`` in nested Sequentials."""
    torch.manual_seed(seed)
    act = nn.Identity if linear else nn.Tanh
    return nn.Sequential(
        nn.Linear(4, 5),
        nn.Sequential(Residual(nn.Sequential(nn.Linear(5, 5), act())), act()),
        nn.Linear(5, 3),
    )


def any_model(kind: str, linear: bool = False, seed: int = 0):
    """A float64 model of ``kind`` and a batch for it (global RNG left as it was)."""
    with torch.random.fork_rng():
        model = (ConvNet(linear, seed) if kind == "conv" else nested_net(linear, seed)).to(F64)
    generator = torch.Generator().manual_seed(seed + 1)
    shape = (4, 1, 4, 4) if kind == "conv" else (4, 4)
    x = torch.randn(shape, generator=generator, dtype=F64)
    return model, x, torch.randint(0, 3, (4,), generator=generator)


MODELS = ("conv", "nested")


def true_gradient(model, params, x, y, loss: str) -> list[torch.Tensor]:
    mean = loss_per_example(model(x), y, loss).mean()
    return list(torch.autograd.grad(mean, params))


def unit_noise(r, draws: int, x, y) -> list[torch.Tensor]:
    """N(0, 1) noise in the rule's layout (divide out sigma)."""
    if isinstance(r, NodePerturbation):
        noise = r.draw_noise(draws, r.output_shapes(x, y, "square"))
    else:
        noise = r.draw_noise(draws)
    return [n / r.sigma for n in noise]


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("cls", RULES)
@pytest.mark.parametrize("difference", ["forward", "central"])
def test_batched_estimates_equal_the_reference_loop_on_any_model(kind, cls, difference):
    """vmap over draws (and ``vectorize=False``'s loop) equal the plain reference loop."""
    model, x, y = any_model(kind)
    closure = loss_closure(x, y, "cross_entropy")
    r = rule(cls, model, sigma=0.1, difference=difference)
    noise = unit_noise(r, 5, x, y)
    noise = [0.1 * n for n in noise]
    fast = r.estimates(closure, noise=noise).grads
    loop = rule(cls, model, sigma=0.1, difference=difference, vectorize=False)
    looped = loop.estimates(closure, noise=noise).grads
    reference = REFERENCES[cls](model, closure, noise, 0.1, difference)
    assert len(fast) == len(reference) == len(list(model.parameters()))
    for a, b, c in zip(fast, looped, reference, strict=True):
        assert_close(a, c, rtol=1e-10, atol=1e-12)
        assert_close(b, c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", MODELS)
def test_a_single_weight_draw_is_the_difference_quotient_by_hand(kind):
    """With the noise given, the estimate is (C(W + xi) - C(W)) xi / sigma^2, C evaluated here
    by hand through functional_call."""
    model, x, y = any_model(kind)
    sigma = 0.2
    r = rule(WeightPerturbation, model, sigma=sigma)
    noise = r.draw_noise(1)
    names = list(r.named_params)
    perturbed = {n: p.detach() + xi[0] for n, p, xi in zip(names, r.params, noise, strict=True)}
    with torch.no_grad():
        plus = loss_per_example(torch.func.functional_call(model, perturbed, (x,)), y,
                                "cross_entropy").mean()  # fmt: skip
        clean = loss_per_example(model(x), y, "cross_entropy").mean()
    grads = r.estimates(x, y, "cross_entropy", noise=noise).grads
    for g, xi in zip(grads, noise, strict=True):
        assert_close(g[0], (plus - clean) * xi[0] / sigma**2, rtol=1e-12, atol=1e-14)


def layer_records(model, layers, x, noise=None):
    """Run ``model(x)`` adding ``noise[l]`` (one draw) to each covered output; returns the
    output and each covered layer's (input, output)."""
    records, handles = {}, []
    for index, (name, module) in enumerate(layers.items()):

        def hook(module, args, output, name=name, index=index):
            if noise is not None:
                output = output + noise[index]
            records[name] = (args[0], output)
            return output

        handles.append(module.register_forward_hook(hook))
    try:
        return model(x), records
    finally:
        for handle in handles:
            handle.remove()


def local_by_autograd(module, x, error) -> list[torch.Tensor]:
    """dW, db of <error, module(x)> by autograd (independent of ``layers.local_gradients``)."""
    with torch.enable_grad():
        params = [module.weight, module.bias]
        return list(torch.autograd.grad((module(x.detach()) * error).sum(), params))


@pytest.mark.parametrize("kind", MODELS)
def test_a_single_node_draw_is_the_difference_quotient_by_hand(kind):
    """With the noise given: e_l = dC_b xi_{l,b} / (B sigma^2) per example, and the estimate is
    the gradient of <e_l, layer(x_l)> in (W_l, b_l) at the clean input (autograd here)."""
    model, x, y = any_model(kind)
    sigma = 0.2
    r = rule(NodePerturbation, model, sigma=sigma)
    noise = r.draw_noise(1, r.output_shapes(x, y, "cross_entropy"))
    grads = r.estimates(x, y, "cross_entropy", noise=noise).grads
    with torch.no_grad():
        out, clean_records = layer_records(model, r.layers, x)
        clean = loss_per_example(out, y, "cross_entropy")
        out, _ = layer_records(model, r.layers, x, [n[0] for n in noise])
        change = loss_per_example(out, y, "cross_entropy") - clean  # (B,)
    expected = []
    for (name, module), xi in zip(r.layers.items(), noise, strict=True):
        coefficient = change.view(-1, *([1] * (xi.dim() - 2))) / (len(y) * sigma**2)
        expected += local_by_autograd(module, clean_records[name][0], coefficient * xi[0])
    for g, e in zip(grads, expected, strict=True):
        assert_close(g[0], e, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", MODELS)
def test_weight_perturbation_tends_to_the_directional_derivative_on_linear_models(kind):
    """Linear model, square cost, central difference: (C(W + s z) - C(W - s z)) / (2 s) =
    g.z + O(s^2), so at sigma = 1e-5 each single-draw estimate is (g.z) z to ~1e-9."""
    model, x, y = any_model(kind, linear=True)
    r = rule(WeightPerturbation, model, sigma=1e-5, difference="central")
    z = unit_noise(r, 6, x, y)
    grads = r.estimates(x, y, "square", noise=[1e-5 * n for n in z]).grads
    g = flat(true_gradient(model, r.params, x, y, "square"))
    directional = flat(z, draws=True) @ g  # (draws,)
    assert_close(flat(grads, draws=True), directional[:, None] * flat(z, draws=True),
                 rtol=1e-7, atol=1e-9)  # fmt: skip


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("sigma", [1e-5, 0.5])
def test_central_node_perturbation_is_exact_on_linear_models(kind, sigma):
    """Linear model, square cost: each C_b is quadratic in the node noise, so the central
    difference is exactly delta_b . xi_b for every sigma, and each single-draw estimate is the
    local gradient of e_{l,b} = (delta_b . z_b) z_{l,b} / B (delta by autograd)."""
    model, x, y = any_model(kind, linear=True)
    r = rule(NodePerturbation, model, sigma=sigma, difference="central")
    z = unit_noise(r, 3, x, y)
    grads = r.estimates(x, y, "square", noise=[sigma * n for n in z]).grads
    with torch.enable_grad():
        out, records = layer_records(model, r.layers, x)
        outputs = [records[name][1] for name in r.layers]
        # d(sum_b C_b)/do_l: per example, since example b's loss depends only on row b
        deltas = torch.autograd.grad(loss_per_example(out, y, "square").sum(), outputs)
    for draw in range(3):
        directional = sum(
            (d * n[draw]).flatten(1).sum(dim=1) for d, n in zip(deltas, z, strict=True)
        )  # (B,): delta_b . z_b over every covered unit
        expected = []
        for (name, module), n in zip(r.layers.items(), z, strict=True):
            e = directional.view(-1, *([1] * (n.dim() - 2))) * n[draw] / len(y)
            expected += local_by_autograd(module, records[name][0], e)
        for g, e in zip(grads, expected, strict=True):
            assert_close(g[draw], e, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("difference", ["forward", "central"])
def test_node_perturbation_is_exactly_unbiased_on_a_linear_conv_model(difference):
    """Conv2d + Linear without nonlinearity, square cost, sigma = 0.5: unbiased (statistical)."""
    model, x, y = any_model("conv", linear=True)
    r = rule(NodePerturbation, model, sigma=0.5, difference=difference)
    grad = flat(true_gradient(model, r.params, x, y, "square"))
    samples = flat(r.estimates(x, y, "square", draws=20_000).grads, draws=True)
    assert_mean_within(samples, grad)
    assert_resolves(samples, grad)


@pytest.mark.parametrize("difference", ["forward", "central"])
def test_weight_perturbation_of_the_conv_layer_is_exactly_unbiased(difference):
    """Only the conv layer covered (layers=["conv"]) of a linear CNN, square cost: C is quadratic
    in the conv's (W, b), so the estimate is unbiased even at sigma = 0.2."""
    model, x, y = any_model("conv", linear=True)
    r = rule(WeightPerturbation, model, layers=["conv"], sigma=0.2, difference=difference)
    grad = flat(true_gradient(model, r.params, x, y, "square"))
    samples = flat(r.estimates(x, y, "square", draws=20_000).grads, draws=True)
    assert_mean_within(samples, grad)
    assert_resolves(samples, grad)


@pytest.mark.parametrize("cls", RULES)
def test_unbiased_at_small_sigma_on_a_nonlinear_conv_model(cls):
    """tanh CNN, cross-entropy, sigma = 1e-3: the O(sigma^2) bias is far below resolution."""
    model, x, y = any_model("conv", seed=2)
    r = rule(cls, model, sigma=1e-3, difference="forward")
    grad = flat(true_gradient(model, r.params, x, y, "cross_entropy"))
    samples = flat(r.estimates(x, y, "cross_entropy", draws=20_000).grads, draws=True)
    assert_mean_within(samples, grad)
    assert_resolves(samples, grad, share=0.5)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("cls", RULES)
def test_backward_is_the_mean_of_the_estimates_and_the_closure_is_the_convenience(kind, cls):
    """``backward(closure)`` == ``backward(x, y, loss)`` == the mean of ``estimates`` from the
    same seed, with the draws chunked one by one (conv: the summed local gradient equals the
    sum of the per-draw ones)."""
    model, x, y = any_model(kind)
    whole = rule(cls, model, seed=3).estimates(x, y, "square", draws=5).grads
    model.zero_grad(set_to_none=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weight_module, "CHUNK_ELEMENTS", 1)
        patch.setattr(node_module, "CHUNK_ELEMENTS", 1)
        loss = rule(cls, model, seed=3, samples=5).backward(loss_closure(x, y, "square"))
    by_closure = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    again = rule(cls, model, seed=3, samples=5).backward(x, y, "square")
    assert torch.equal(loss, again)
    for a, p, c in zip(whole, model.parameters(), by_closure, strict=True):
        assert_close(c, a.mean(dim=0), rtol=1e-12, atol=1e-14)
        assert_close(p.grad, c, rtol=1e-12, atol=1e-14)  # other chunking: other rounding


@pytest.mark.parametrize("cls", RULES)
def test_parameters_outside_the_covered_layers_get_their_true_gradient(cls):
    """layers=["conv"]: the Linear layer is not perturbed and gets autograd's gradient from the
    clean pass; frozen parameters get nothing."""
    model, x, y = any_model("conv")
    model.fc.bias.requires_grad_(False)
    r = rule(cls, model, layers=["conv"], samples=2)
    assert r.other_params() == [model.fc.weight]
    loss = r.backward(x, y, "cross_entropy")
    expected = true_gradient(model, [model.fc.weight], x, y, "cross_entropy")[0]
    assert_close(model.fc.weight.grad, expected, rtol=1e-12, atol=1e-14)
    assert model.fc.bias.grad is None
    assert model.conv.weight.grad is not None and not loss.requires_grad


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


@pytest.mark.parametrize("cls", RULES)
def test_perturbed_passes_leave_the_buffers_alone(cls):
    """BatchNorm in training mode: vmap cannot batch its in-place running-stat update, a clear
    error says to use vectorize=False; the loop then updates the running statistics exactly as
    one ordinary forward pass does (the clean pass), whatever the number of draws; the
    BatchNorm's affine parameters get their true gradient."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, twin = BatchNormNet().to(F64), BatchNormNet().to(F64)
    twin.load_state_dict(model.state_dict())
    x, y = data(4, 3, 6)
    with pytest.raises(VectorizeError, match="vectorize=False"):
        rule(cls, model, samples=3).backward(x, y)
    model.load_state_dict(twin.state_dict())
    rule(cls, model, samples=3, vectorize=False).backward(x, y)
    loss_per_example(twin(x), y, "cross_entropy").mean().backward()
    for (name, a), b in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.equal(a, b), name
    for p, q in zip(model.norm.parameters(), twin.norm.parameters(), strict=True):
        assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)
    model.eval()  # eval semantics: vmap batches it, buffers unchanged
    before = [b.clone() for b in model.buffers()]
    rule(cls, model, samples=3).backward(x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))


@pytest.mark.parametrize("cls", RULES)
def test_a_model_vmap_cannot_batch_is_a_clear_error(cls):
    """Dropout in training mode draws random numbers: vmap refuses (never a silent fallback)."""
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)).to(F64)
    x, y = data(4, 3, 6)
    with pytest.raises(VectorizeError, match="vectorize=False"):
        rule(cls, model).backward(x, y)
    model.eval()
    rule(cls, model).backward(x, y)


@pytest.mark.parametrize("cls", RULES)
def test_closure_errors_are_clear(cls):
    model, x, y = any_model("conv")
    r = rule(cls, model)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        r.backward(lambda m: loss_per_example(m(x), y, "square").mean())  # a scalar
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        r.backward(lambda m: loss_per_example(m(x), y, "square")[:, None])  # (B, 1)
    with pytest.raises(TypeError):
        r.backward(lambda m: 1.0)
    with pytest.raises(TypeError):
        r.backward(loss_closure(x, y, "square"), y)  # a closure and labels
    with pytest.raises(TypeError):
        r.backward(x)  # labels missing
    with pytest.raises(ValueError):
        r.backward(x, y, "hinge")
    assert all(p.grad is None for p in model.parameters())


def test_node_perturbation_errors_are_clear():
    model, x, y = any_model("conv")
    r = rule(NodePerturbation, model)
    with pytest.raises(TypeError, match="output_shapes"):
        r.draw_noise(2, len(y))  # a batch size cannot give a conv's output shape
    shapes = r.output_shapes(x, y)
    assert shapes == {"conv": (4, 2, 2, 2), "fc": (4, 3)}
    with pytest.raises(ValueError, match="noise for conv"):
        r.estimates(x, y, noise=[torch.zeros(2, 4, 2, 2, 3, dtype=F64), torch.zeros(2, 4, 3)])
    with pytest.raises(ValueError, match="not called"):
        r.backward(lambda m: loss_per_example(m.fc(x.flatten(1)[:, :8]), y, "square"))
    shared = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).to(F64)
    twice = rule(NodePerturbation, shared, layers=["0"])
    z = torch.randn(5, 3, dtype=F64)
    with pytest.raises(ValueError, match="more than once"):
        twice.backward(lambda m: m[0](m[0](z)).pow(2).sum(dim=1))
    with pytest.raises(ValueError, match="batch as its first dimension"):
        twice.backward(lambda m: m(z).pow(2).sum(dim=1)[:2])


@pytest.mark.parametrize("cls", RULES)
def test_a_layer_with_another_rule_attached_is_refused(cls):
    from neuroplastic.credit import FeedbackAlignment

    model, x, y = any_model("nested")
    r = rule(cls, model)
    fa = FeedbackAlignment(model, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="FeedbackAlignment"):
        r.backward(x, y)
    fa.remove()
    r.backward(x, y)
    rule(cls, model).backward(x, y)  # two perturbation rules may share a model
