"""Check a credit-assignment rule against the contract every rule of this library keeps.

In the spirit of scikit-learn's ``check_estimator``: :func:`check_rule` builds a rule on a small
model (the library's MLP by default, or any model you give), runs the named checks of
:data:`CHECKS` on it, raises ``AssertionError`` naming the check that failed and why, and
otherwise returns a :class:`RuleReport` of what passed, what the rule declared exempt (with its
reasons) and what was not run (with the reasons)::

    import torch
    from neuroplastic.credit import FeedbackAlignment
    from neuroplastic.models.lenet import LeNet5
    from neuroplastic.testing import check_rule

    report = check_rule(lambda model, generator: FeedbackAlignment(model, generator=generator))
    print(report)                     # on the default MLP 4-6-6-3
    report = check_rule(
        lambda model, generator: FeedbackAlignment(model, generator=generator),
        model_factory=lambda generator: LeNet5(), input_shape=(1, 28, 28),
    )
    assert "identity[square]" in report.passed

What a rule may declare (all optional, read from the rule object):

``as_backprop()``
    A context manager within which the rule's update *is* autograd's gradient (feedback
    alignment: ``B = W``; sign symmetry: magnitudes ``|W|``; DFA with one hidden layer:
    ``D = W_out^T``). The ``identity`` check compares the two to ``rtol = 1e-12`` in float64,
    over three SGD steps (so views that follow the weights are exercised), and checks that the
    rule's own update is back, bit for bit, after the block. A rule whose identity does not hold
    on the model at hand raises ``NotImplementedError(reason)`` on entry: the check is reported
    as not run, with that reason. ``check_rule(..., identity=fn)`` supplies the context manager
    from outside (``fn(rule)``) for a rule that has no such method.
``conformance_exemptions = {"check name": "reason"}``
    Checks the rule cannot meet, with the reason; reported as exempt, never silently skipped. A
    name is a check of :data:`CHECKS` (every loss) or ``"check[loss]"`` (one loss).
``learns_quickly = False``
    The same as exempting ``"learns"`` (a ``conformance_exemptions["learns"]`` entry gives the
    reason; otherwise the report says the rule declares ``learns_quickly = False``).
``supported_losses``
    The built-in losses (:data:`neuroplastic.credit.LOSSES`) the rule's ``backward`` accepts;
    the others are reported as not run.

The rule is driven through ``rule.backward(x, y, loss)`` (which every rule has) and compared with
plain autograd on an identical copy of the model, so the checks hold for hook-based rules and for
rules that write ``.grad`` themselves alike. Everything runs on copies of one model built by
``model_factory`` (never the same object twice), under a forked global random state: a model that
draws from torch's global generator (dropout) sees the same draws in the runs compared, and the
caller's global random state is left as it was.

:func:`recorded_run` builds a finished run as the store would return it, for testing an
experiment's ``verdict`` (or a report) on synthetic runs with chosen metrics, without training.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import neuroplastic
from neuroplastic.config import config_to_dict
from neuroplastic.credit.base import LOSSES, CreditRule, loss_per_example
from neuroplastic.models.mlp import MLP
from neuroplastic.results import Key
from neuroplastic.store import RUN_STATUSES, RunRecord, config_hash

RuleFactory = Callable[[nn.Module, torch.Generator], CreditRule]
ModelFactory = Callable[[torch.Generator], nn.Module]

CHECKS: dict[str, str] = {
    "gradients": "every parameter gets a finite .grad of its shape, dtype and device; predict() "
    "gives one finite, detached row per example",
    "accumulates": "two backward calls (from the same generator state) add up to twice one",
    "no_graph": "backward returns the detached scalar loss of the rule's own prediction and "
    "leaves no graph in .grad",
    "deterministic": "same seeds, same update, bit for bit",
    "global_rng": "neither construction nor backward draws from torch's global generator (beyond "
    "what the model's own forward pass draws)",
    "float64": "a float64 model gets float64, finite updates and a float64 loss",
    "cuda": "the update on the GPU matches the CPU's (float64, rtol 1e-6)",
    "learns": "a few SGD steps lower the loss on a separable toy problem (by 10%)",
    "remove": "attached, the forward output is unchanged; after remove() (and after a with "
    "block) the model's forward output, gradients (plain autograd), state_dict keys and hooks "
    "are exactly as before",
    "identity": "within rule.as_backprop() the update equals autograd's gradient (float64, rtol "
    "1e-12, over three SGD steps), and the rule's own update is back after the block",
}
"""The checks :func:`check_rule` runs, by name, with what each asserts."""

PER_LOSS = ("gradients", "accumulates", "no_graph", "deterministic", "global_rng", "float64",
            "cuda", "learns", "identity")  # fmt: skip
"""Checks run once per loss (``"name[loss]"`` in the report); ``remove`` runs once."""

BATCH = 8
IDENTITY_TOLERANCE = {"rtol": 1e-12, "atol": 1e-14}
CUDA_TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}
GLOBAL_SEED = 12345  # the global generator's seed for every run (models that draw: dropout)


class CheckFailed(AssertionError):
    """A check failed; the message names the check, the rule and the model."""


class NotRun(Exception):
    """Raised inside a check that cannot run here (no GPU, no identity declared): the reason."""


@dataclass
class RuleReport:
    """What :func:`check_rule` found: every check (per loss where it applies) is in exactly one
    of ``passed``, ``exempt`` (declared by the rule, ``{check: reason}``) and ``not_run``
    (``{check: reason}``). A failed check raises instead."""

    rule: str
    model: str
    passed: list[str] = field(default_factory=list)
    exempt: dict[str, str] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"check_rule: {self.rule} on {self.model}: {len(self.passed)} passed, "
            f"{len(self.exempt)} exempt, {len(self.not_run)} not run"
        ]
        if self.passed:
            lines.append("  passed: " + ", ".join(self.passed))
        for title, entries in (("exempt", self.exempt), ("not run", self.not_run)):
            for name, reason in entries.items():
                lines.append(f"  {title}: {name}: {reason}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The subject: one model (copied for every run), the rule's factory, data
# ---------------------------------------------------------------------------------------------


@dataclass
class Subject:
    """What the checks share: the rule factory, a template model (never attached to), the data
    shapes, and where CUDA runs (``None``: nowhere)."""

    factory: RuleFactory
    template: nn.Module
    input_shape: tuple[int, ...]
    n_classes: int
    cuda: torch.device | None
    identity: Callable[[CreditRule], contextlib.AbstractContextManager] | None = None

    def model(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        return copy.deepcopy(self.template).to(device=device, dtype=dtype)

    def rule(self, model: nn.Module, seed: int = 1) -> CreditRule:
        return self.factory(model, torch.Generator().manual_seed(seed))

    def batch(self, dtype=torch.float32, device="cpu", seed: int = 2) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(BATCH, *self.input_shape, generator=generator).to(dtype)
        y = torch.randint(0, self.n_classes, (BATCH,), generator=generator)
        return x.to(device), y.to(device)


def seed_global() -> None:
    """The same global random state before every run that is compared with another."""
    torch.manual_seed(GLOBAL_SEED)


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {
        name: p.grad.detach().clone()
        for name, p in model.named_parameters()
        if p.requires_grad and p.grad is not None
    }


def autograd_update(model: nn.Module, x: Tensor, y: Tensor, loss: str) -> dict[str, Tensor]:
    """Plain autograd's gradient of the mean built-in loss (``.grad`` zeroed before and after)."""
    model.zero_grad(set_to_none=True)
    seed_global()
    loss_per_example(model(x), y, loss).mean().backward()
    out = grads(model)
    model.zero_grad(set_to_none=True)
    return out


def rule_update(rule: CreditRule, x: Tensor, y: Tensor, loss: str) -> dict[str, Tensor]:
    """``rule.backward`` from zeroed ``.grad``; the update it wrote (``.grad`` zeroed after)."""
    rule.model.zero_grad(set_to_none=True)
    seed_global()
    rule.backward(x, y, loss)
    out = grads(rule.model)
    rule.model.zero_grad(set_to_none=True)
    return out


def generator_states(rule: CreditRule) -> list[tuple[torch.Generator, Tensor]]:
    """The rule's ``torch.Generator`` attributes (also inside lists and tuples) and their states."""
    found = []
    for value in vars(rule).values():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, torch.Generator):
                found.append((item, item.get_state()))
    return found


def rewind(states: list[tuple[torch.Generator, Tensor]]) -> None:
    for generator, state in states:
        generator.set_state(state)


def assert_same_updates(got: Mapping[str, Tensor], expected: Mapping[str, Tensor], what: str,
                        **tolerance) -> None:  # fmt: skip
    """Same parameters, equal (``torch.equal`` without a tolerance) update by update."""
    assert list(got) == list(expected), (
        f"{what}: parameters with an update differ: {sorted(got)} vs {sorted(expected)}"
    )
    for name in expected:
        a, b = got[name], expected[name]
        if not tolerance:
            if not torch.equal(a, b):
                diff = (a.double() - b.double()).abs().max().item()
                raise AssertionError(f"{what}: {name} differs (max abs difference {diff:.3g})")
        else:
            try:
                torch.testing.assert_close(a, b, **tolerance)
            except AssertionError as error:
                raise AssertionError(f"{what}: {name}: {error}") from None


def hook_census(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Hooks on every module (forward, pre-forward, backward), to see that none are left."""
    return {
        name: (
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            len(m._backward_pre_hooks),
        )  # fmt: skip
        for name, m in model.named_modules()
    }


# ---------------------------------------------------------------------------------------------
# The checks: each ``check_<name>(subject, loss)``; AssertionError on failure, NotRun if it cannot
# ---------------------------------------------------------------------------------------------


def check_gradients(s: Subject, loss: str) -> None:
    model = s.model()
    rule = s.rule(model)
    x, y = s.batch()
    seed_global()
    rule.backward(x, y, loss)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        assert param.grad is not None, f"{name} got no .grad"
        assert param.grad.shape == param.shape, (
            f"{name}: .grad has shape {tuple(param.grad.shape)}, the parameter {tuple(param.shape)}"
        )
        assert param.grad.dtype == param.dtype, f"{name}: .grad is {param.grad.dtype}"
        assert param.grad.device == param.device, f"{name}: .grad is on {param.grad.device}"
        assert torch.isfinite(param.grad).all(), f"{name}: .grad is not finite"
    seed_global()
    out = rule.predict(x)
    assert isinstance(out, Tensor) and out.shape[0] == BATCH, (
        f"predict() should give one row per example, got {getattr(out, 'shape', type(out))}"
    )
    assert out.grad_fn is None and not out.requires_grad, "predict() left a graph"
    assert torch.isfinite(out).all(), "predict() is not finite"


def check_accumulates(s: Subject, loss: str) -> None:
    model = s.model()
    rule = s.rule(model)
    x, y = s.batch()
    states = generator_states(rule)
    once = rule_update(rule, x, y, loss)
    for _ in range(2):
        rewind(states)
        seed_global()
        rule.backward(x, y, loss)
    twice = grads(model)
    assert_same_updates(twice, {n: 2 * g for n, g in once.items()},
                        "two calls vs twice one call", rtol=1.3e-6, atol=1e-5)  # fmt: skip


def check_no_graph(s: Subject, loss: str) -> None:
    model = s.model()
    rule = s.rule(model)
    x, y = s.batch()
    seed_global()
    mean_loss = rule.backward(x, y, loss)
    assert isinstance(mean_loss, Tensor) and mean_loss.ndim == 0, (
        f"backward should return the scalar mean loss, got {mean_loss!r}"
    )
    assert mean_loss.grad_fn is None and not mean_loss.requires_grad, (
        "the returned loss is attached to a graph (return loss.detach())"
    )
    seed_global()
    expected = loss_per_example(rule.predict(x), y, loss).mean()
    try:
        torch.testing.assert_close(mean_loss, expected)
    except AssertionError as error:
        raise AssertionError(f"the returned loss is not the loss of predict(x): {error}") from None
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert param.grad.grad_fn is None and not param.grad.requires_grad, (
                f"{name}.grad is attached to a graph"
            )


def check_deterministic(s: Subject, loss: str) -> None:
    x, y = s.batch()
    first, second = (rule_update(s.rule(s.model(), seed=4), x, y, loss) for _ in range(2))
    assert_same_updates(second, first, "two runs from the same seeds")


def check_global_rng(s: Subject, loss: str) -> None:
    x, y = s.batch()
    plain = s.model()
    seed_global()
    for _ in range(2):
        loss_per_example(plain(x), y, loss).mean().backward()
    after_plain = torch.random.get_rng_state()
    model = s.model()
    seed_global()
    before = torch.random.get_rng_state()
    rule = s.rule(model)
    assert torch.equal(torch.random.get_rng_state(), before), (
        "constructing the rule drew from torch's global generator (draw from `generator`)"
    )
    rule.backward(x, y, loss)
    rule.backward(x, y, loss)
    assert torch.equal(torch.random.get_rng_state(), after_plain), (
        "backward drew from torch's global generator, beyond what the model's own forward pass "
        "draws (draw from the rule's generator)"
    )


def check_float64(s: Subject, loss: str) -> None:
    model = s.model(torch.float64)
    rule = s.rule(model)
    x, y = s.batch(torch.float64)
    seed_global()
    mean_loss = rule.backward(x, y, loss)
    assert mean_loss.dtype == torch.float64, f"the loss is {mean_loss.dtype}"
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"{name} got no .grad"
            assert param.grad.dtype == torch.float64, f"{name}: .grad is {param.grad.dtype}"
            assert torch.isfinite(param.grad).all(), f"{name}: .grad is not finite"


def check_cuda(s: Subject, loss: str) -> None:
    if s.cuda is None:
        raise NotRun("no CUDA device available")
    updates = []
    for device in ("cpu", s.cuda):
        x, y = s.batch(torch.float64, device)
        rule = s.rule(s.model(torch.float64, device))
        update = rule_update(rule, x, y, loss)
        for name, g in update.items():
            assert g.device.type == torch.device(device).type, f"{name}: .grad is on {g.device}"
        updates.append({name: g.cpu() for name, g in update.items()})
    assert_same_updates(updates[1], updates[0], f"{s.cuda} vs cpu", **CUDA_TOLERANCE)


def separable_problem(s: Subject) -> tuple[Tensor, Tensor]:
    """``16 K`` examples around ``K`` well separated centres, noise 0.3 per coordinate. Small
    inputs (fewer than ``4 K`` coordinates): centre ``k`` is 2 in coordinate ``k mod d``,
    rotated by a random orthogonal matrix when ``d < K``; larger inputs (images): random
    +-1 patterns, which a convolutional net tells apart in a few steps."""
    generator = torch.Generator().manual_seed(5)
    k, d = s.n_classes, math.prod(s.input_shape)
    if d >= 4 * k:
        centres = torch.randint(0, 2, (k, d), generator=generator).mul(2.0).sub(1.0)
    elif d >= k:
        centres = 2.0 * torch.eye(k, d)
    else:
        centres = torch.randn(k, d, generator=generator)
        centres = 2.0 * centres / centres.norm(dim=1, keepdim=True)
    y = torch.arange(16 * k) % k
    x = centres[y] + 0.3 * torch.randn(len(y), d, generator=generator)
    return x.view(len(y), *s.input_shape), y


LEARNING_RATES = (0.3, 0.1, 0.03)
"""The step sizes the ``learns`` check tries, in order (the rule passes at the first that works:
it checks that the update is a descent direction, not that one step size suits every rule)."""


def check_learns(s: Subject, loss: str, steps: int = 40) -> None:
    x, y = separable_problem(s)
    results = []
    for lr in LEARNING_RATES:
        model = s.model()
        rule = s.rule(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        seed_global()
        start = loss_per_example(rule.predict(x), y, loss).mean().item()
        for _ in range(steps):
            optimizer.zero_grad()
            rule.backward(x, y, loss)
            optimizer.step()
        end = loss_per_example(rule.predict(x), y, loss).mean().item()
        if end < 0.9 * start:
            return
        results.append(f"lr {lr}: {start:.4g} -> {end:.4g}")
    raise AssertionError(
        f"{steps} SGD steps did not take the loss below 90% of its start at any step size "
        f"({'; '.join(results)}); declare learns_quickly = False, with a reason, if the rule "
        "is not meant to"
    )


def check_remove(s: Subject, loss: str) -> None:
    x, y = s.batch()
    plain = s.model()
    seed_global()
    with torch.no_grad():
        expected_output = plain(x)
    expected_update = autograd_update(plain, x, y, loss)
    expected_keys = list(plain.state_dict())
    for how in ("remove()", "with block"):
        model = s.model()
        hooks = hook_census(model)
        rule = s.rule(model)
        seed_global()
        with torch.no_grad():
            attached_output = model(x)
        assert torch.equal(attached_output, expected_output), (
            "with the rule attached, the model's forward output differs from the plain model's"
        )
        if how == "remove()":
            rule_update(rule, x, y, loss)  # lazily drawn state exists before removal
            rule.remove()
            rule.remove()  # idempotent
        else:
            with rule as entered:
                assert entered is rule, "`with rule as r` should give the rule itself"
                rule_update(rule, x, y, loss)
        what = f"after {how}"
        assert hook_census(model) == hooks, f"{what}: hooks are left on the model"
        seed_global()
        with torch.no_grad():
            output = model(x)
        assert torch.equal(output, expected_output), f"{what}: the forward output differs"
        assert_same_updates(autograd_update(model, x, y, loss), expected_update,
                            f"{what}: loss.backward() vs the plain model's")  # fmt: skip
        assert list(model.state_dict()) == expected_keys, f"{what}: state_dict keys differ"


def check_identity(s: Subject, loss: str, steps: int = 3, lr: float = 0.1) -> None:
    model = s.model(torch.float64)
    plain = s.model(torch.float64)
    rule = s.rule(model)
    identity = s.identity or getattr(rule, "as_backprop", None)
    if identity is None:
        raise NotRun(
            "the rule declares no identity (define as_backprop(), pass identity= to check_rule, "
            "or exempt 'identity' with a reason)"
        )
    context = identity(rule) if s.identity is not None else identity()
    x, y = s.batch(torch.float64)
    start = copy.deepcopy(model.state_dict())
    states = generator_states(rule)
    own = rule_update(rule, x, y, loss)
    try:
        context.__enter__()
    except NotImplementedError as error:
        raise NotRun(f"no identity on this model: {error}") from None
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        for step in range(steps):
            plain.load_state_dict(model.state_dict())  # in place: the same weights, bit for bit
            update = rule_update(rule, x, y, loss)
            assert_same_updates(update, autograd_update(plain, x, y, loss),
                                f"as_backprop(), step {step}: the rule vs autograd",
                                **IDENTITY_TOLERANCE)  # fmt: skip
            for name, param in model.named_parameters():
                if name in update:
                    param.grad = update[name]
            optimizer.step()
            model.zero_grad(set_to_none=True)
    finally:
        context.__exit__(None, None, None)
    model.load_state_dict(start)
    rewind(states)
    assert_same_updates(rule_update(rule, x, y, loss), own,
                        "after the as_backprop() block, the rule's own update")  # fmt: skip


CHECK_FUNCTIONS: dict[str, Callable[[Subject, str], None]] = {
    "gradients": check_gradients,
    "accumulates": check_accumulates,
    "no_graph": check_no_graph,
    "deterministic": check_deterministic,
    "global_rng": check_global_rng,
    "float64": check_float64,
    "cuda": check_cuda,
    "learns": check_learns,
    "remove": check_remove,
    "identity": check_identity,
}


# ---------------------------------------------------------------------------------------------
# check_rule
# ---------------------------------------------------------------------------------------------


def default_model(generator: torch.Generator) -> nn.Module:
    """The library's MLP 4-6-6-3 (tanh), drawn from ``generator``."""
    return MLP([4, 6, 6, 3], "tanh", generator=generator)


def infer_input_shape(model: nn.Module) -> tuple[int, ...]:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return (module.in_features,)
        if isinstance(module, nn.modules.conv._ConvNd | nn.RNNBase):
            break
    raise ValueError(
        f"cannot tell the input shape of this {type(model).__name__} (its first layer is not a "
        "Linear); pass input_shape= (one example's shape)"
    )


def _named(entries: Mapping[str, str] | Iterable[str] | None, default_reason: str,
           what: str) -> dict[str, str]:  # fmt: skip
    """``{check name: reason}`` from a mapping or names; names validated against CHECKS."""
    if entries is None:
        return {}
    if isinstance(entries, str):
        entries = (entries,)
    if isinstance(entries, Mapping):
        named = dict(entries)
    else:
        named = dict.fromkeys(entries, default_reason)
    for name, reason in named.items():
        base = name.split("[", 1)[0]
        if base not in CHECKS:
            raise ValueError(f"{what}: unknown check {name!r}; the checks are {list(CHECKS)}")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{what}: {name!r} needs a reason (a non-empty string)")
    return named


def _lookup(named: Mapping[str, str], check: str, key: str) -> str | None:
    return named.get(key, named.get(check))


def check_rule(
    factory: RuleFactory,
    *,
    model_factory: ModelFactory | None = None,
    input_shape: tuple[int, ...] | None = None,
    losses: Iterable[str] = LOSSES,
    device: str | torch.device | None = None,
    identity: Callable[[CreditRule], contextlib.AbstractContextManager] | None = None,
    skip: Mapping[str, str] | Iterable[str] | None = None,
) -> RuleReport:
    """Run every check of :data:`CHECKS` on the rule ``factory`` builds; raise on the first
    failure, return a :class:`RuleReport` otherwise.

    Args:
        factory: ``factory(model, generator) -> rule``, a rule attached to ``model`` that draws
            any randomness from ``generator`` (a seeded CPU ``torch.Generator``). Called many
            times, on fresh copies of one model.
        model_factory: ``model_factory(generator) -> nn.Module`` (called once, under a fixed
            global seed; the checks use copies). Default: the MLP 4-6-6-3 with tanh. The model
            maps a batch ``(N, *input_shape)`` to logits ``(N, K)``.
        input_shape: one example's shape; default: ``(in_features,)`` of the first module if it
            is a ``Linear``.
        losses: the built-in losses to check with (``"cross_entropy"``, ``"square"``); those the
            rule does not support (its ``supported_losses``) are reported as not run.
        device: where the ``cuda`` check runs; default ``"cuda"`` when available. Without one
            the check is reported as not run (no CUDA), never passed.
        identity: ``identity(rule) -> context manager`` within which the rule is backprop, in
            place of the rule's own ``as_backprop()``.
        skip: checks not to run, as names or ``{name: reason}``; reported as not run.

    Raises:
        CheckFailed (an AssertionError): ``"check 'name[loss]' failed for <rule> on <model>:
        why"``, from the first check that fails.
        ValueError: an unknown check named in ``skip`` or in the rule's exemptions, or an
        exemption without a reason.

    Example::

        >>> import torch
        >>> from neuroplastic.credit import FeedbackAlignment
        >>> from neuroplastic.testing import check_rule
        >>> report = check_rule(lambda m, g: FeedbackAlignment(m, generator=g))
        >>> report.exempt
        {}
        >>> "identity[cross_entropy]" in report.passed
        True
    """
    losses = tuple(losses)
    unknown = [loss for loss in losses if loss not in LOSSES]
    if unknown or not losses:
        raise ValueError(f"losses must be some of {LOSSES}, got {losses}")
    skipped = _named(skip, "skipped by the caller", "skip")
    if device is None:
        cuda = torch.device("cuda") if torch.cuda.is_available() else None
    else:
        cuda = torch.device(device)
        if cuda.type == "cuda" and not torch.cuda.is_available():
            cuda = None
    cuda_devices = [cuda.index or 0] if cuda is not None and cuda.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        seed_global()
        template = (model_factory or default_model)(torch.Generator().manual_seed(0))
        if not isinstance(template, nn.Module):
            raise TypeError(f"model_factory must return an nn.Module, got {type(template)}")
        shape = tuple(input_shape) if input_shape is not None else infer_input_shape(template)
        with torch.no_grad():
            seed_global()
            probe_out = copy.deepcopy(template)(torch.zeros(2, *shape))
        if not (isinstance(probe_out, Tensor) and probe_out.ndim == 2):
            raise ValueError(
                "the model must map (N, *input_shape) to logits (N, K); got "
                f"{getattr(probe_out, 'shape', type(probe_out))}"
            )
        subject = Subject(factory, template, shape, probe_out.shape[1], cuda, identity)
        probe = subject.rule(subject.model())
        rule_name, model_name = type(probe).__name__, type(template).__name__
        declared = getattr(probe, "conformance_exemptions", None)
        exemptions = _named(declared, "", f"{rule_name}.conformance_exemptions")
        if not getattr(probe, "learns_quickly", True) and "learns" not in exemptions:
            exemptions["learns"] = "declares learns_quickly = False"
        supported = tuple(getattr(probe, "supported_losses", LOSSES))
        probe.remove()
        report = RuleReport(rule_name, model_name)
        for loss in losses:
            if loss not in supported:
                report.not_run[f"*[{loss}]"] = f"the rule supports only the losses {supported}"
        checked = [loss for loss in losses if loss in supported]
        for check, function in CHECK_FUNCTIONS.items():
            runs = checked if check in PER_LOSS else checked[:1]
            for loss in runs:
                key = f"{check}[{loss}]" if check in PER_LOSS else check
                reason = _lookup(exemptions, check, key)
                if reason is not None:
                    report.exempt[key] = reason
                    continue
                reason = _lookup(skipped, check, key)
                if reason is not None:
                    report.not_run[key] = reason
                    continue
                try:
                    function(subject, loss)
                except NotRun as why:
                    report.not_run[key] = str(why)
                except AssertionError as error:
                    raise CheckFailed(
                        f"check {key!r} failed for {rule_name} on {model_name}: {error}"
                    ) from error
                except Exception as error:
                    raise CheckFailed(
                        f"check {key!r} failed for {rule_name} on {model_name}: it raised "
                        f"{type(error).__name__}: {error}"
                    ) from error
                else:
                    report.passed.append(key)
    return report


# ---------------------------------------------------------------------------------------------
# recorded_run: a synthetic run, to test a verdict or a report without training
# ---------------------------------------------------------------------------------------------

RECORDED_STARTED_AT = "2000-01-01T00:00:00.000+00:00"
RECORDED_ENDED_AT = "2000-01-01T00:01:00.000+00:00"


def recorded_run(experiment: str, config: Any, seed: int, metrics: Mapping[Key, float],
                 **fields: Any) -> RunRecord:  # fmt: skip
    """A run of ``experiment`` as :class:`~neuroplastic.store.Store` returns it, with the given
    metrics: for testing an experiment's ``verdict`` (or its report) on synthetic runs, in this
    library or in your own experiment, without training anything.

    Args:
        experiment: the experiment's name (its ``NAME``), as recorded.
        config: the config the run used: a config dataclass instance (stored through
            :func:`neuroplastic.config.config_to_dict`, as the runner stores it) or a dict.
            ``config_hash`` is computed from it, so the run counts as a run of exactly this
            config (a verdict that reads the default config's runs finds it when this is
            ``Config()``); ``dataset`` is the config's ``dataset`` field (``"none"`` if it has
            none), as the runner records it.
        seed: the run's seed.
        metrics: ``{Key: value}``, what the run measured (copied).
        **fields: any other :class:`~neuroplastic.store.RunRecord` field, to override the
            defaults of a finished full run: ``id=seed``, ``quick=False``, ``device="cpu"``,
            ``version=neuroplastic.__version__``, ``git_rev=None``, ``status="finished"``,
            fixed ``started_at`` / ``ended_at`` timestamps (``ended_at=None`` when ``status`` is
            ``"running"``), ``curves={}``, ``curve_x_label=None``, ``error=None``,
            ``hyperparameters={}``. ``config_hash`` and ``dataset`` can be overridden too.

    Raises:
        TypeError: a keyword that is not a ``RunRecord`` field.
        ValueError: a ``status`` that is not one of ``neuroplastic.store.RUN_STATUSES``.

    Example::

        >>> from neuroplastic.experiments import hebbian_pca as hp
        >>> from neuroplastic.results import Key
        >>> from neuroplastic.testing import recorded_run
        >>> runs = [recorded_run(hp.NAME, hp.Config(), seed, {Key("oja", "overlap"): 0.99})
        ...         for seed in range(5)]
        >>> runs[0].status, runs[0].dataset, runs[4].id
        ('finished', 'mnist', 4)
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        stored = config_to_dict(config)
    elif isinstance(config, Mapping):
        stored = copy.deepcopy(dict(config))
    else:
        raise TypeError(f"config must be a config dataclass instance or a dict, got {config!r}")
    known = {f.name for f in dataclasses.fields(RunRecord)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"recorded_run: {unknown} are not RunRecord fields ({sorted(known)})")
    status = fields.get("status", "finished")
    if status not in RUN_STATUSES:
        raise ValueError(f"recorded_run: status must be one of {RUN_STATUSES}, got {status!r}")
    values: dict[str, Any] = {
        "id": seed,
        "experiment": experiment,
        "config": stored,
        "config_hash": config_hash(stored),
        "seed": seed,
        "quick": False,
        "dataset": stored.get("dataset", "none"),
        "device": "cpu",
        "version": neuroplastic.__version__,
        "git_rev": None,
        "status": status,
        "started_at": RECORDED_STARTED_AT,
        "ended_at": None if status == "running" else RECORDED_ENDED_AT,
        "metrics": dict(metrics),
        "curves": {},
        "curve_x_label": None,
        "error": None,
        "hyperparameters": {},
    }
    values.update(fields)
    return RunRecord(**values)
