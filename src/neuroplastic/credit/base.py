"""What every credit-assignment rule does: propose an update for each weight, into ``param.grad``.

A rule *attaches* to a model it does not own: any ``nn.Module``, untouched (same module types,
same ``state_dict`` keys). It covers some of the model's layers (see
:mod:`neuroplastic.credit.layers`) and, for the rules of the feedback-alignment family, changes
what ordinary ``loss.backward()`` writes into the covered layers' ``.grad``; every other
parameter keeps its true gradient. ``.grad`` holds minus the desired step direction (the gradient
when the rule is exact), so any ``torch.optim.Optimizer`` takes the step::

    rule = FeedbackAlignment(model, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for x, y in batches:
        optimizer.zero_grad()
        my_loss(model(x), y).backward()     # covered layers: FA's update; the rest: autograd's
        optimizer.step()
    rule.remove()                           # a plain model again (or: ``with Rule(...)``)

Rules that cannot work through autograd (perturbation, equilibrium propagation) write ``.grad``
in :meth:`CreditRule.backward`. ``rule.backward(x, y, loss)`` exists on every rule as the
experiments' convenience: forward pass, one of the built-in per-example losses (:data:`LOSSES`),
mean, backward; it returns the detached mean loss, adds to ``.grad`` as autograd does (so
``optimizer.zero_grad()`` comes first) and never leaves a graph behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuroplastic.credit.layers import (
    SUPPORTED_LAYERS,
    LayerCall,
    LayerSelection,
    LocalGradient,
    select_layers,
)
from neuroplastic.grads import add_to_grad

LOSSES = ("cross_entropy", "square")


def loss_per_example(logits: Tensor, targets: Tensor, loss: str) -> Tensor:
    """Per-example loss ``(B,)``: cross-entropy on softmax, or ``0.5 ||z - onehot||^2`` on the
    linear outputs (the square cost)."""
    if loss == "cross_entropy":
        return F.cross_entropy(logits, targets, reduction="none")
    if loss == "square":
        onehot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
        return 0.5 * (logits - onehot).pow(2).sum(dim=-1)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def output_error(logits: Tensor, targets: Tensor, loss: str) -> Tensor:
    """dL/dz of the *mean* loss over the batch, ``(B, n_out)``: the error every rule starts from."""
    onehot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    if loss == "cross_entropy":
        return (logits.softmax(dim=-1) - onehot) / len(targets)
    if loss == "square":
        return (logits - onehot) / len(targets)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


class _Hook:
    """A forward hook that knows its rule, so a second rule on the same layer is caught."""

    def __init__(self, rule: CreditRule, function: Callable, *args):
        self.rule, self.function, self.args = rule, function, args

    def __call__(self, *hook_args):
        return self.function(*self.args, *hook_args)


def attached_rules(module: nn.Module) -> list[CreditRule]:
    """The rules whose hooks sit on ``module`` now."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return [hook.rule for hook in hooks if isinstance(hook, _Hook)]


class CreditRule:
    """A rule attached to ``model``, covering ``layers`` (see :func:`~neuroplastic.credit.layers.
    select_layers`): hooks go on at construction and come off with :meth:`remove`.

    Attributes:
        model: the model, as given.
        layers: ``{module name: module}``, the covered layers in module order.

    What :func:`neuroplastic.testing.check_rule` reads, all optional: ``as_backprop()``, a context
    manager within which the rule's update is autograd's gradient (its exact identity, checked
    to 1e-12 in float64; raise ``NotImplementedError(reason)`` on entry where the model admits
    none); ``conformance_exemptions = {check name: reason}`` for checks the rule cannot meet;
    ``learns_quickly = False`` and ``supported_losses`` (a subset of :data:`LOSSES`).
    """

    name: str = "rule"
    supported_layers: tuple[type[nn.Module], ...] = SUPPORTED_LAYERS

    def __init__(self, model: nn.Module, *, layers: LayerSelection = None):
        self.model = model
        self.layers: dict[str, nn.Module] = (
            select_layers(model, layers, self.supported_layers) if self.supported_layers else {}
        )
        for name, module in self.layers.items():
            others = attached_rules(module)
            if others:
                raise ValueError(
                    f"{name} already has a {type(others[0]).__name__} attached; call remove() on "
                    "it first (one rule per layer)"
                )
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._enabled = True

    # -- attaching ---------------------------------------------------------------------------

    def _hook(self, module: nn.Module, function: Callable, *args, pre: bool = False,
              with_kwargs: bool = False) -> None:  # fmt: skip
        hook = _Hook(self, function, *args)
        if pre:
            handle = module.register_forward_pre_hook(hook, with_kwargs=with_kwargs)
        else:
            handle = module.register_forward_hook(hook, with_kwargs=with_kwargs)
        self._handles.append(handle)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Take the rule's hooks off the model: a plain model again (forward, gradients and
        ``state_dict`` as before the rule). Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> CreditRule:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    @contextlib.contextmanager
    def disabled(self) -> Iterator[CreditRule]:
        """Within the block the hooks stand aside: autograd computes the true gradient."""
        previous, self._enabled = self._enabled, False
        try:
            yield self
        finally:
            self._enabled = previous

    # -- the experiments' convenience ----------------------------------------------------------

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The model's output as this rule's network computes it at test time: the feed-forward
        pass, except for rules whose network settles (equilibrium propagation)."""
        return self.model(x)

    def backward(self, x: Tensor, y: Tensor, loss: str = "cross_entropy") -> Tensor:
        """Forward pass on ``x``, the mean of a built-in per-example loss on labels ``y``,
        ``.backward()`` (through the rule's hooks); returns the mean loss, detached."""
        with torch.enable_grad():
            mean_loss = loss_per_example(self.model(x), y, loss).mean()
            mean_loss.backward()
        return mean_loss.detach()

    @staticmethod
    def _accumulate(param: torch.nn.Parameter, update: Tensor) -> None:
        add_to_grad(param, update)


class LayerLocalRule(CreditRule):
    """A rule whose only freedom is the error a covered layer sends back to its input.

    Each covered layer keeps its local gradients (``dW = g^T x``, ``db = sum g``, see
    :mod:`neuroplastic.credit.layers`); subclasses implement :meth:`input_error`. Hooks are
    attached at construction.
    """

    def __init__(self, model: nn.Module, *, layers: LayerSelection = None):
        super().__init__(model, layers=layers)
        for name, module in self.layers.items():
            self._hook(module, self._layer_hook, name, with_kwargs=True)

    def _layer_hook(self, name: str, module: nn.Module, args, kwargs, output):
        if not (self._enabled and torch.is_grad_enabled() and isinstance(output, Tensor)):
            return None
        if not output.requires_grad:
            return None
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected the layer's input tensor, got {type(x).__name__}")
        call = LayerCall(name, module, module.weight.detach(), output)
        self.on_layer_call(call, x)
        return LocalGradient.apply(x, module.weight, module.bias, call, self.input_error)

    def on_layer_call(self, call: LayerCall, x: Tensor) -> None:
        """Called in the forward pass of every covered layer that will get a gradient."""

    def input_error(self, call: LayerCall, x: Tensor, g: Tensor) -> Tensor | None:
        """The error the covered layer ``call`` sends to its input ``x``, given its own ``g``."""
        raise NotImplementedError

    def feedback_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """For the alignment diagnostics: ``{layer name: (the matrix backprop would send the
        error through, the matrix this rule uses instead)}``; empty where undefined."""
        return {}


class FeedbackMatrices(MutableMapping[str, Tensor]):
    """Feedback matrices by covered-layer name; a replaced matrix must keep its shape.

    Values are stored as given (a view of a weight, ``layer.weight.detach()``, follows the
    weight as it trains) and moved to the gradient's device and dtype on use. Matrices are not
    deleted (a layer without one would silently fall back to something else).
    """

    def __init__(self, what: str, shapes: dict[str, tuple[int, ...] | None]):
        self._what = what
        self._shapes = dict(shapes)
        self._values: dict[str, Tensor] = {}
        self._converted: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def expect(self, name: str, shape: tuple[int, ...]) -> None:
        """Fix the shape of ``name``'s matrix (rules that learn shapes on the first pass)."""
        self._shapes[name] = tuple(shape)
        if name in self._values:
            self._check(name, self._values[name])

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self._shapes.get(name)

    def _check(self, name: str, value: Tensor) -> None:
        expected = self._shapes[name]
        if expected is not None and tuple(value.shape) != expected:
            raise ValueError(
                f"{self._what}[{name!r}] has shape {tuple(value.shape)}, expected {expected}"
            )

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._values:
            if name in self._shapes:
                raise KeyError(f"{self._what}[{name!r}] is not drawn yet (it is drawn on the "
                               "first forward pass that needs it)")  # fmt: skip
            raise KeyError(f"no {self._what} for {name!r}; covered layers: {list(self._shapes)}")
        return self._values[name]

    def __setitem__(self, name: str, value: Tensor) -> None:
        if name not in self._shapes:
            raise KeyError(f"no {self._what} for {name!r}; covered layers: {list(self._shapes)}")
        if not isinstance(value, Tensor):
            raise TypeError(f"{self._what}[{name!r}] must be a tensor, got {type(value).__name__}")
        self._check(name, value)
        self._values[name] = value
        self._converted = {k: v for k, v in self._converted.items() if k[0] != name}

    def on(self, name: str, like: Tensor) -> Tensor:
        """``self[name]`` on ``like``'s device and dtype. A converted copy is kept until the
        matrix is replaced, so a CPU-drawn matrix crosses to the GPU once, not every step; a
        matrix already on that device and dtype (e.g. a view of the weight) is used as is."""
        value = self[name]
        if value.device == like.device and value.dtype == like.dtype:
            return value
        key = (name, like.device, like.dtype)
        if key not in self._converted:
            self._converted[key] = value.to(like)
        return self._converted[key]

    @contextlib.contextmanager
    def replaced(self, values: Mapping[str, Tensor]) -> Iterator[FeedbackMatrices]:
        """Within the block, ``values`` replace (or fill in) the matrices of their layers; on exit
        every matrix is as before, including those not drawn yet (the identity checks use it)."""
        saved = dict(self._values)
        try:
            for name, value in values.items():
                self[name] = value
            yield self
        finally:
            self._values = saved
            self._converted.clear()

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"{self._what} matrices cannot be deleted; assign a replacement instead")

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        shapes = {name: tuple(value.shape) for name, value in self._values.items()}
        return f"{type(self).__name__}({self._what}: {shapes})"
