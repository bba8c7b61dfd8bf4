"""The contract every credit-assignment rule in ``neuroplastic.credit.RULES`` keeps.

Parametrised over ``RULES`` (a rule joins by being registered), over depths of 1, 2 and 3 hidden
layers, and over the losses a rule supports. Class attributes a rule may declare:

* ``supported_losses``: a subset of ``LOSSES`` (default: all of them);
* ``learns_quickly = False``: opt out of the few-steps learning check, for rules whose single
  estimate is too noisy to lower the loss reliably in a handful of steps (say why in the rule's
  docstring). Default: ``True``.

Stochastic rules keep their random stream in ``torch.Generator`` attributes (e.g.
``rule.generator``); the accumulation check rewinds them between calls.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from neuroplastic.credit import LOSSES, RULES, CreditRule, loss_per_example
from neuroplastic.models.mlp import MLP

N_IN, WIDTH, N_OUT, BATCH = 4, 6, 3, 8
DEPTHS = (1, 2, 3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread avoids oversubscribing a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _losses(rule_cls: type[CreditRule]) -> tuple[str, ...]:
    return tuple(getattr(rule_cls, "supported_losses", LOSSES))


CASES = [
    pytest.param(rule_cls, depth, loss, id=f"{name}-{depth}h-{loss}")
    for name, rule_cls in RULES.items()
    for depth in DEPTHS
    for loss in _losses(rule_cls)
]
RULE_CASES = [pytest.param(rule_cls, id=name) for name, rule_cls in RULES.items()]


def make_model(depth: int, seed: int = 0, activation: str = "tanh") -> MLP:
    sizes = [N_IN, *([WIDTH] * depth), N_OUT]
    return MLP(sizes, activation, generator=torch.Generator().manual_seed(seed))


def make_rule(rule_cls: type[CreditRule], model: MLP, seed: int = 1) -> CreditRule:
    """``rule_cls(model, generator=...)``; a rule without the keyword is still built (without
    it) so that the other checks run, and ``test_constructor_takes_generator`` flags it."""
    generator = torch.Generator().manual_seed(seed)
    if "generator" in inspect.signature(rule_cls).parameters:
        return rule_cls(model, generator=generator)
    return rule_cls(model)


def make_batch(seed: int = 2, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, N_IN, generator=generator).to(dtype)
    y = torch.randint(0, N_OUT, (BATCH,), generator=generator)
    return x, y


def grads(model: MLP) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def generator_states(rule: CreditRule) -> list[tuple[torch.Generator, torch.Tensor]]:
    found = []
    for value in vars(rule).values():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, torch.Generator):
                found.append((item, item.get_state()))
    return found


def rewind(states: list[tuple[torch.Generator, torch.Tensor]]) -> None:
    for generator, state in states:
        generator.set_state(state)


@pytest.mark.parametrize("rule_cls", RULE_CASES)
def test_constructor_takes_generator(rule_cls):
    """Every rule is built as ``Rule(model, generator=...)``, default ``None``."""
    parameters = inspect.signature(rule_cls).parameters
    assert "generator" in parameters, f"{rule_cls.__name__} lacks the generator= keyword"
    assert parameters["generator"].default is None
    assert parameters["generator"].kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


@pytest.mark.parametrize(("rule_cls", "depth", "loss"), CASES)
def test_every_parameter_gets_a_grad_of_its_shape(rule_cls, depth, loss):
    model = make_model(depth)
    rule = make_rule(rule_cls, model)
    x, y = make_batch()
    rule.backward(x, y, loss)
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.shape == param.shape, name
        assert param.grad.dtype == param.dtype, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize(("rule_cls", "depth", "loss"), CASES)
def test_no_graph_left_behind(rule_cls, depth, loss):
    model = make_model(depth)
    rule = make_rule(rule_cls, model)
    x, y = make_batch()
    mean_loss = rule.backward(x, y, loss)
    assert mean_loss.ndim == 0
    assert mean_loss.grad_fn is None and not mean_loss.requires_grad
    # the loss of the network as the rule computes it (settled, for equilibrium propagation)
    expected = loss_per_example(rule.predict(x), y, loss).mean()
    torch.testing.assert_close(mean_loss, expected)
    for name, param in model.named_parameters():
        assert param.grad.grad_fn is None and not param.grad.requires_grad, name


@pytest.mark.parametrize(("rule_cls", "depth", "loss"), CASES)
def test_backward_accumulates(rule_cls, depth, loss):
    """Two calls (from the same generator state, for stochastic rules) add up to twice one."""
    model = make_model(depth)
    rule = make_rule(rule_cls, model)
    x, y = make_batch()
    states = generator_states(rule)
    rule.backward(x, y, loss)
    once = grads(model)
    model.zero_grad(set_to_none=True)
    rewind(states)
    rule.backward(x, y, loss)
    rewind(states)
    rule.backward(x, y, loss)
    for single, double in zip(once, grads(model), strict=True):
        torch.testing.assert_close(double, 2 * single)


@pytest.mark.parametrize(("rule_cls", "depth", "loss"), CASES)
def test_same_seed_same_update(rule_cls, depth, loss):
    x, y = make_batch()
    updates = []
    for _ in range(2):
        model = make_model(depth, seed=3)
        make_rule(rule_cls, model, seed=4).backward(x, y, loss)
        updates.append(grads(model))
    for first, second in zip(*updates, strict=True):
        assert torch.equal(first, second)


@pytest.mark.parametrize(("rule_cls", "depth", "loss"), CASES)
def test_global_random_state_untouched(rule_cls, depth, loss):
    model = make_model(depth)
    x, y = make_batch()
    before = torch.random.get_rng_state()
    rule = make_rule(rule_cls, model)
    assert torch.equal(torch.random.get_rng_state(), before), "construction drew global noise"
    rule.backward(x, y, loss)
    rule.backward(x, y, loss)
    assert torch.equal(torch.random.get_rng_state(), before), "backward drew global noise"


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("rule_cls", RULE_CASES)
def test_predict_shape(rule_cls, depth):
    model = make_model(depth)
    rule = make_rule(rule_cls, model)
    x, _ = make_batch()
    out = rule.predict(x)
    assert out.shape == (BATCH, N_OUT)
    assert out.grad_fn is None
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("rule_cls", "depth", "loss"), CASES)
def test_float64(rule_cls, depth, loss):
    model = make_model(depth).double()
    rule = make_rule(rule_cls, model)
    x, y = make_batch(dtype=torch.float64)
    mean_loss = rule.backward(x, y, loss)
    assert mean_loss.dtype == torch.float64
    for name, param in model.named_parameters():
        assert param.grad.dtype == torch.float64, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("rule_cls", "depth", "loss"), CASES)
def test_cuda_matches_cpu(rule_cls, depth, loss):
    """Same seed, same update on the GPU as on the CPU (float64, so no TF32 in the way)."""
    x, y = make_batch(dtype=torch.float64)
    updates = []
    for device in ("cpu", "cuda"):
        model = make_model(depth).double().to(device)
        make_rule(rule_cls, model).backward(x.to(device), y.to(device), loss)
        assert all(p.grad.device.type == device for p in model.parameters())
        updates.append([g.cpu() for g in grads(model)])
    for cpu, cuda in zip(*updates, strict=True):
        torch.testing.assert_close(cuda, cpu, rtol=1e-6, atol=1e-9)


def separable_problem(n: int = 48):
    """Three well separated Gaussian blobs in ``N_IN`` dimensions."""
    generator = torch.Generator().manual_seed(5)
    centres = 2.0 * torch.eye(N_OUT, N_IN)
    y = torch.arange(n) % N_OUT
    x = centres[y] + 0.3 * torch.randn(n, N_IN, generator=generator)
    return x, y


@pytest.mark.parametrize(("rule_cls", "depth", "loss"), CASES)
def test_a_few_sgd_steps_lower_the_loss(rule_cls, depth, loss):
    if not getattr(rule_cls, "learns_quickly", True):
        pytest.skip(f"{rule_cls.__name__} declares learns_quickly = False")
    model = make_model(depth)
    rule = make_rule(rule_cls, model)
    x, y = separable_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    start = loss_per_example(rule.predict(x), y, loss).mean().item()  # the rule's own network
    for _ in range(40):
        optimizer.zero_grad()
        rule.backward(x, y, loss)
        optimizer.step()
    end = loss_per_example(rule.predict(x), y, loss).mean().item()
    assert end < 0.9 * start, (start, end)
