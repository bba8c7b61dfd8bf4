"""The contract every credit-assignment rule in ``neuroplastic.credit.RULES`` keeps, checked with
the public :func:`neuroplastic.testing.check_rule` (what a user runs on their own rule).

Every rule of ``RULES`` (a rule joins by being registered) on the MLP with 1, 2 and 3 hidden
layers; the rules that work through autograd (and backprop) also on LeNet-5. The report is
asserted in full: every check passed, except what the rule declares exempt (with its reason),
losses it does not support, the GPU comparison where there is no GPU, and the identity where the
rule has none on that model (DFA beyond one hidden layer, the perturbation rules). Then tests
that ``check_rule`` itself has teeth: broken rules fail, with the check's name in the message.
"""

from __future__ import annotations

import contextlib
import inspect

import pytest
import torch

from neuroplastic.credit import (
    LOSSES,
    RULES,
    Backprop,
    FeedbackAlignment,
    LayerLocalRule,
    SignSymmetry,
    loss_per_example,
)
from neuroplastic.models.lenet import LeNet5
from neuroplastic.models.mlp import MLP
from neuroplastic.results import Key
from neuroplastic.store import RunRecord, config_hash
from neuroplastic.testing import (
    CHECKS,
    PER_LOSS,
    CheckFailed,
    RuleReport,
    check_rule,
    recorded_run,
)

DEPTHS = (1, 2, 3)
CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread avoids oversubscribing a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def factory_of(rule_cls, **kwargs):
    def factory(model, generator):
        return rule_cls(model, generator=generator, **kwargs)

    return factory


def mlp(depth: int, activation: str = "tanh"):
    def model_factory(generator):
        return MLP([4, *([6] * depth), 3], activation, generator=generator)

    return model_factory


def lenet(generator):
    return LeNet5(n_classes=10)  # initialised from the global generator, which check_rule seeds


def has_identity(rule_cls, depth: int | None) -> bool:
    """Where the rule's identity exists: ``as_backprop()`` declared, and for DFA one hidden
    layer (``depth`` None: LeNet-5)."""
    if not hasattr(rule_cls, "as_backprop"):
        return False
    if rule_cls is RULES["dfa"]:
        return depth == 1
    return True


def assert_report(report: RuleReport, rule_cls, depth: int | None) -> None:
    """Every check accounted for: passed, or exempt/not run for exactly the expected reasons."""
    supported = tuple(getattr(rule_cls, "supported_losses", LOSSES))
    declared = dict(getattr(rule_cls, "conformance_exemptions", {}))
    if not getattr(rule_cls, "learns_quickly", True):
        declared.setdefault("learns", "declares learns_quickly = False")
    expected_exempt, expected_not_run, expected_passed = {}, set(), []
    for loss in LOSSES:
        if loss not in supported:
            expected_not_run.add(f"*[{loss}]")
    losses = [loss for loss in LOSSES if loss in supported]
    for check in CHECKS:
        for loss in losses if check in PER_LOSS else losses[:1]:
            key = f"{check}[{loss}]" if check in PER_LOSS else check
            if check in declared:
                expected_exempt[key] = declared[check]
            elif (check == "cuda" and not CUDA) or (
                check == "identity" and not has_identity(rule_cls, depth)
            ):
                expected_not_run.add(key)
            else:
                expected_passed.append(key)
    assert report.passed == expected_passed, str(report)
    assert report.exempt == expected_exempt, str(report)
    assert set(report.not_run) == expected_not_run, str(report)
    assert all(reason.strip() for reason in [*report.exempt.values(), *report.not_run.values()])
    if not CUDA:
        assert all(report.not_run[k] == "no CUDA device available" for k in report.not_run
                   if k.startswith("cuda["))  # fmt: skip


@pytest.mark.parametrize("rule_cls", [pytest.param(c, id=n) for n, c in RULES.items()])
def test_constructor_takes_generator(rule_cls):
    """Every rule is built as ``Rule(model, generator=...)``, default ``None``."""
    parameters = inspect.signature(rule_cls).parameters
    assert "generator" in parameters, f"{rule_cls.__name__} lacks the generator= keyword"
    assert parameters["generator"].default is None
    assert parameters["generator"].kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("rule_cls", [pytest.param(c, id=n) for n, c in RULES.items()])
def test_check_rule_on_the_mlp(rule_cls, depth):
    report = check_rule(factory_of(rule_cls), model_factory=mlp(depth))
    assert report.model == "MLP"
    assert_report(report, rule_cls, depth)


AUTOGRAD_RULES = {name: c for name, c in RULES.items() if issubclass(c, LayerLocalRule | Backprop)}
LENET_OPTIONS = {
    # uniform sign feedback (V = sign W, entries of magnitude 1) multiplies the error by about
    # 1/|W| per layer; on five layers without batch normalisation (which Liao et al. relied on)
    # no step size learns in a few steps. The rescaled variant keeps backprop's magnitudes.
    "sign-symmetry": {"scaled": True},
}


@pytest.mark.parametrize("name", list(AUTOGRAD_RULES))
def test_check_rule_on_lenet5(name):
    rule_cls = AUTOGRAD_RULES[name]
    report = check_rule(
        factory_of(rule_cls, **LENET_OPTIONS.get(name, {})),
        model_factory=lenet,
        input_shape=(1, 28, 28),
    )
    assert report.model == "LeNet5"
    assert_report(report, rule_cls, None)


PERTURBATION_RULES = {
    n: c for n, c in RULES.items() if n not in AUTOGRAD_RULES and n != "equilibrium-propagation"
}
NOISY_ON_LENET = "one perturbation draw on 61k parameters is too noisy to learn in 40 steps"


@pytest.mark.parametrize("name", list(PERTURBATION_RULES))
def test_check_rule_perturbation_on_lenet5(name):
    """The perturbation rules work on any model too: every check but learning, which a single
    draw on LeNet-5's 61k parameters is too noisy for (reported as not run, with the reason)."""
    rule_cls = PERTURBATION_RULES[name]
    report = check_rule(
        factory_of(rule_cls),
        model_factory=lenet,
        input_shape=(1, 28, 28),
        skip={"learns": NOISY_ON_LENET},
    )
    for loss in LOSSES:
        reason = report.exempt.get(f"learns[{loss}]") or report.not_run[f"learns[{loss}]"]
        assert reason in (NOISY_ON_LENET, "declares learns_quickly = False")
        assert f"gradients[{loss}]" in report.passed and f"global_rng[{loss}]" in report.passed
    assert "remove" in report.passed
    assert len(report.passed) == 13, str(report)


@pytest.mark.parametrize("variant", ["frsf", "brsf"])
def test_check_rule_sign_symmetry_variants(variant):
    report = check_rule(factory_of(SignSymmetry, variant=variant), model_factory=mlp(2))
    assert_report(report, SignSymmetry, 2)


def test_report_reads_well():
    report = check_rule(factory_of(RULES["equilibrium-propagation"]), model_factory=mlp(1))
    text = str(report)
    assert text.startswith("check_rule: EquilibriumPropagation on MLP: 8 passed, 1 exempt")
    assert "exempt: identity[square]: the EP estimate equals the gradient only" in text
    assert "not run: *[cross_entropy]: the rule supports only the losses ('square',)" in text


# -- check_rule has teeth: broken rules fail, naming the check -------------------------------


class DoubledFeedback(FeedbackAlignment):
    """A broken identity: B = 2 W is not backprop."""

    def as_backprop(self):
        views = {name: 2 * m.weight.detach() for name, m in self.layers.items()}
        return self.feedback.replaced(views)


class StaleFeedback(FeedbackAlignment):
    """A broken identity: B = W copied once, not a view, goes stale when the weights train."""

    def as_backprop(self):
        copies = {name: m.weight.detach().clone() for name, m in self.layers.items()}
        return self.feedback.replaced(copies)


class GlobalNoise(Backprop):
    """Draws from torch's global generator in backward."""

    def backward(self, x, y, loss="cross_entropy"):
        out = super().backward(x, y, loss)
        for p in self.model.parameters():
            p.grad.add_(1e-3 * torch.randn(p.shape))
        return out


class LeavesGraph(Backprop):
    def backward(self, x, y, loss="cross_entropy"):
        super().backward(x, y, loss)
        return loss_per_example(self.model(x), y, loss).mean()


class Overwrites(Backprop):
    """Writes .grad instead of adding to it."""

    def backward(self, x, y, loss="cross_entropy"):
        self.model.zero_grad(set_to_none=True)
        return super().backward(x, y, loss)


class Sticky(FeedbackAlignment):
    """remove() forgets a hook."""

    def remove(self):
        self._handles.pop()
        super().remove()


class WrongSign(Backprop):
    """Ascends: .grad holds plus the desired step (it accumulates, is detached, deterministic)."""

    def backward(self, x, y, loss="cross_entropy"):
        mean_loss = loss_per_example(self.model(x), y, loss).mean()
        (-mean_loss).backward()
        return mean_loss.detach()


@pytest.mark.parametrize(
    ("rule_cls", "check"),
    [
        (DoubledFeedback, "identity"),
        (StaleFeedback, "identity"),
        (GlobalNoise, "global_rng"),
        (LeavesGraph, "no_graph"),
        (Overwrites, "accumulates"),
        (Sticky, "remove"),
        (WrongSign, "learns"),
    ],
)
def test_check_rule_catches_broken_rules(rule_cls, check):
    with pytest.raises(CheckFailed, match=rf"check '{check}(\[cross_entropy\])?' failed for "
                       rf"{rule_cls.__name__} on MLP"):  # fmt: skip
        check_rule(factory_of(rule_cls), model_factory=mlp(1))


def test_identity_from_outside_and_its_teeth():
    """``identity=`` supplies the context manager; a wrong one fails."""

    @contextlib.contextmanager
    def b_equals_w(rule):
        views = {name: m.weight.detach() for name, m in rule.layers.items()}
        with rule.feedback.replaced(views):
            yield rule

    @contextlib.contextmanager
    def b_equals_w_transposed_wrongly(rule):
        # square layers, so the shapes fit: B = W^T is not backprop
        views = {name: m.weight.detach().T for name, m in rule.layers.items()}
        with rule.feedback.replaced(views):
            yield rule

    def square(generator):
        return MLP([5, 5, 5], "tanh", generator=generator)

    factory = factory_of(FeedbackAlignment)
    report = check_rule(factory, model_factory=square, identity=b_equals_w, losses=("square",))
    assert "identity[square]" in report.passed
    with pytest.raises(CheckFailed, match=r"check 'identity\[square\]' failed .* vs autograd"):
        check_rule(factory, model_factory=square, identity=b_equals_w_transposed_wrongly,
                   losses=("square",))  # fmt: skip


def test_exemptions_and_skips_are_reported_and_validated():
    class Exempt(FeedbackAlignment):
        conformance_exemptions = {"float64": "a float32-only rule (for this test)"}

    report = check_rule(factory_of(Exempt), skip={"learns": "slow here"}, losses=("square",))
    assert report.exempt == {"float64[square]": "a float32-only rule (for this test)"}
    assert report.not_run["learns[square]"] == "slow here"
    report = check_rule(factory_of(FeedbackAlignment), skip=["cuda"], losses=("square",))
    assert report.not_run["cuda[square]"] == "skipped by the caller"

    class NoReason(FeedbackAlignment):
        conformance_exemptions = {"float64": ""}

    with pytest.raises(ValueError, match="'float64' needs a reason"):
        check_rule(factory_of(NoReason))
    with pytest.raises(ValueError, match="unknown check 'speed'"):
        check_rule(factory_of(FeedbackAlignment), skip=["speed"])
    with pytest.raises(ValueError, match="pass input_shape="):
        check_rule(factory_of(FeedbackAlignment), model_factory=lenet)


def test_check_rule_leaves_the_global_random_state_alone():
    before = torch.random.get_rng_state()
    check_rule(factory_of(FeedbackAlignment), losses=("square",), skip=["learns"])
    assert torch.equal(torch.random.get_rng_state(), before)


def test_recorded_run_is_a_finished_run_of_its_config_with_overrides():
    from neuroplastic.config import config_to_dict
    from neuroplastic.experiments import hebbian_pca as hp

    metrics = {Key("oja", "overlap"): 0.9}
    run = recorded_run(hp.NAME, hp.Config(), 3, metrics)
    assert isinstance(run, RunRecord)
    assert run.config == config_to_dict(hp.Config())
    assert run.config_hash == config_hash(config_to_dict(hp.Config()))
    assert (run.id, run.seed, run.experiment, run.dataset) == (3, 3, hp.NAME, "mnist")
    assert (run.status, run.quick, run.error, run.curves, run.hyperparameters) == (
        "finished", False, None, {}, {}
    )  # fmt: skip
    assert run.ended_at is not None and run.metrics == metrics and run.metrics is not metrics
    # a dict config: the same hash; no dataset field reads "none"
    plain = recorded_run("mine", {"b": [1, 2], "a": 0.5}, 0, {})
    assert plain.config_hash == config_hash({"a": 0.5, "b": [1, 2]}) and plain.dataset == "none"
    curves = {Key("oja", "overlap"): {"x": [1, 2], "y": [0.5, 0.9]}}
    changed = recorded_run(hp.NAME, hp.Config(), 3, metrics, id=40, quick=True, status="failed",
                           error="diverged", curves=curves, curve_x_label="epoch",
                           hyperparameters={"oja": {"lr": 0.1}}, dataset="other")  # fmt: skip
    assert (changed.id, changed.quick, changed.status) == (40, True, "failed")
    assert changed.error == "diverged" and changed.seed == 3
    assert changed.curves == curves and changed.curve_x_label == "epoch"
    assert changed.hyperparameters == {"oja": {"lr": 0.1}} and changed.dataset == "other"
    assert recorded_run(hp.NAME, hp.Config(), 0, {}, status="running").ended_at is None
    with pytest.raises(TypeError, match="not RunRecord fields"):
        recorded_run(hp.NAME, hp.Config(), 0, {}, colour="red")
    with pytest.raises(ValueError, match="status must be one of"):
        recorded_run(hp.NAME, hp.Config(), 0, {}, status="done")
