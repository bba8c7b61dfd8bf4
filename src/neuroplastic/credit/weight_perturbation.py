"""Parallel weight perturbation: the gradient from the change of the cost under random weight noise.

Marblestone, Wayne & Kording (2016), "Toward an integration of deep learning and neuroscience",
Front. Comput. Neurosci. 10:94, section 2 (how the brain could assign credit: "parallel weight
perturbation"); Werfel, Xie & Seung (2005), "Learning curves for stochastic gradient descent in
linear feedforward networks", Neural Computation 17(12) (the learning rate of weight
perturbation falls with the number of weights).

On any ``nn.Module``. The rule covers some of the model's layers (every ``Linear``, ``Conv1d``,
``Conv2d`` by default, see :func:`~neuroplastic.credit.layers.select_layers`); ``W`` below is
the list of their weights and biases, in module order. The cost is given as a *closure*
``closure(m) -> (B,)`` per-example losses, where ``m`` is called like the model; ``C`` is their
mean. Perturb every covered weight and bias at once by Gaussian noise ``xi ~ N(0, sigma^2 I)``
and take::

    forward:  g_hat = (C(W + xi) - C(W)) xi / sigma^2
    central:  g_hat = (C(W + xi) - C(W - xi)) xi / (2 sigma^2)

averaged over ``samples`` independent draws. A convolution's weight is perturbed like any other
tensor (every kernel entry its own noise), so the same equations hold for ``Linear`` and
``Conv``. To first order ``C(W + xi) - C(W) = g . xi`` and ``E[(g . xi) xi] = sigma^2 g``, so
``g_hat`` is an unbiased estimate of the gradient ``g`` up to ``O(sigma^2)``. When ``C`` is
quadratic in the perturbed weights (the square cost and a model that is affine in them: one
covered layer of a linear model, convolutional or not) both forms are *exactly* unbiased for
every sigma: the central difference is then exactly ``2 g . xi``, and the forward difference's
extra term ``xi^T H xi / 2`` times ``xi`` has zero mean (odd Gaussian moments). The variance is
the price: for small sigma each coordinate has ``Var g_hat_i = |g|^2 + g_i^2`` per draw, so
``E|g_hat - g|^2 = (P + 1) |g|^2`` for ``P`` perturbed parameters: it grows with the number of
synapses.

Parameters outside the covered layers that require a gradient receive their *true* gradient,
by autograd through the clean pass (as under the feedback-alignment rules, where everything
that is not a covered layer keeps its true gradient).

Counting. ``forward_passes`` counts evaluations of the closure: each estimate costs one clean
pass (which gives the returned loss and, for forward differences, ``C(W)``) plus one perturbed
pass per draw (two for central differences), i.e. ``1 + samples`` or ``1 + 2 samples`` per
:meth:`~WeightPerturbation.backward`.

Randomness. The noise comes only from the rule's ``generator`` (``None``: a fresh
``torch.Generator()`` seeded 0), never from torch's global generator. It is drawn draw by draw,
and within a draw layer by layer in module order, weight then bias, so a given seed gives the
same estimate whatever the chunking or batching of the computation.

Implementation. A chunk of draws is evaluated as one batched computation:
``torch.func.vmap`` over the draws of a function that calls the closure on
``torch.func.functional_call(model, W + xi)``. ``vectorize=False`` evaluates the draws one by
one instead (for models ``vmap`` cannot batch); a model that ``vmap`` cannot batch raises
:class:`VectorizeError`, never a silent fallback. :func:`weight_perturbation_reference` is the
plain loop over draws that a test proves the batched path equal to.

Buffers. Perturbed passes never change the model's buffers: they run through ``functional_call``
on copies of the buffers taken before the clean pass (so every pass of an estimate sees the same
buffers). The clean pass is an ordinary call of the model, with an ordinary forward's side
effects (a ``BatchNorm`` in training mode updates its running statistics once per estimate, as
it would under backprop). Under ``vmap`` a module that updates a buffer in place (``BatchNorm`` in
training mode) or draws random numbers (``Dropout`` in training mode) cannot be batched: use
``model.eval()`` for the estimate or ``vectorize=False``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from neuroplastic.credit.base import LOSSES, CreditRule, attached_rules, loss_per_example
from neuroplastic.credit.layers import LayerSelection, select_layers

DIFFERENCES = ("forward", "central")
Difference = Literal["forward", "central"]
CHUNK_ELEMENTS = 1 << 24
"""Largest number of perturbed parameter values (draws x parameters) held at once."""

Closure = Callable[[Callable[..., Any]], Tensor]
"""``closure(m) -> (B,)`` per-example losses, ``m`` called like the model (``m(x)``)."""


class VectorizeError(RuntimeError):
    """``torch.func.vmap`` could not batch the perturbed passes of the user's model."""


class Estimates(NamedTuple):
    """Per-draw gradient estimates of a perturbation rule and the clean pass's mean loss."""

    grads: list[Tensor]
    """One tensor ``(draws, *param.shape)`` per parameter, in the order of ``rule.params``
    (weight then bias of each covered layer); each slice is the single-draw estimate."""
    loss: Tensor
    """Mean loss of the batch under the unperturbed network (detached scalar)."""


def loss_closure(x: Tensor, y: Tensor, loss: str = "cross_entropy") -> Closure:
    """The closure of ``rule.backward(x, y, loss)``: ``m -> loss_per_example(m(x), y, loss)``."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")

    def closure(m: Callable[..., Any]) -> Tensor:
        return loss_per_example(m(x), y, loss)

    return closure


class FunctionalModel:
    """The model called with some parameters and buffers replaced (``functional_call``): what a
    closure receives as ``m`` in a perturbed pass."""

    def __init__(self, model: nn.Module, tensors: dict[str, Tensor]):
        self.model, self.tensors = model, tensors

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self.model, self.tensors, args, kwargs)


def check_losses(values: Any, leading: tuple[int, ...] = ()) -> Tensor:
    """The closure's output must be per-example losses ``(*leading, B)``: say so if not."""
    if not isinstance(values, Tensor):
        raise TypeError(
            f"the closure must return a tensor of per-example losses (B,), got "
            f"{type(values).__name__}"
        )
    if values.dim() != len(leading) + 1 or tuple(values.shape[: len(leading)]) != leading:
        shape = tuple(values.shape[len(leading) :]) if values.dim() > len(leading) else ()
        raise ValueError(
            f"the closure must return per-example losses of shape (B,), got shape {shape}; "
            "use reduction='none' (the rule needs each example's loss)"
        )
    if not values.is_floating_point():
        raise ValueError(f"the closure's losses must be floating point, got {values.dtype}")
    return values


def layer_parameters(layers: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """``{'<layer>.weight': W, '<layer>.bias': b, ...}`` of the covered layers, in module order
    (names as ``functional_call`` takes them); a parameter shared by two of them is refused."""
    named: dict[str, nn.Parameter] = {}
    seen: dict[int, str] = {}
    for layer_name, module in layers.items():
        for kind in ("weight", "bias"):
            param = getattr(module, kind, None)
            if param is None:
                continue
            name = f"{layer_name}.{kind}"
            if id(param) in seen:
                raise ValueError(
                    f"{name} is the same parameter as {seen[id(param)]}; perturbation rules do "
                    "not support parameters shared between covered layers (pass layers=)"
                )
            seen[id(param)] = name
            named[name] = param
    return named


def buffer_copies(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the model's buffers, for the perturbed passes' ``functional_call``."""
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


def run_draws(
    function: Callable[..., Tensor], noise: Sequence[Tensor], vectorize: bool, rule_name: str
) -> Tensor:
    """``stack([function(*[xi[d] for xi in noise]) for d in draws])``: one ``vmap`` call, or a
    loop over draws with ``vectorize=False``. A ``vmap`` failure is a :class:`VectorizeError`."""
    if not vectorize:
        draws = noise[0].shape[0]
        return torch.stack([function(*[xi[d] for xi in noise]) for d in range(draws)])
    try:
        return torch.func.vmap(function, randomness="error")(*noise)
    except (RuntimeError, NotImplementedError) as error:
        raise VectorizeError(
            f"{rule_name}: torch.func.vmap could not batch the perturbed passes of this model "
            f"({type(error).__name__}: {error}). Modules that update buffers in place (BatchNorm "
            "in training mode) or draw random numbers (Dropout in training mode) cannot be "
            "batched: call model.eval() around the estimate, or build the rule with "
            "vectorize=False (a loop over draws, same numbers, slower)."
        ) from error


class PerturbationRule(CreditRule):
    """What weight and node perturbation share: hyper-parameters, generator, counters, the
    closure API and the true gradient of parameters outside the covered layers.

    A perturbation rule puts no hook on the model between its calls (node perturbation's hooks
    are on only during its own passes): the model is untouched outside :meth:`backward` and
    :meth:`estimates`, :meth:`remove` has nothing to take off, and several perturbation rules may
    share a model. A covered layer that carries another rule's hooks (feedback alignment, ...)
    is refused when the rule is used: those hooks would change the passes it measures.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: LayerSelection = None,
        generator: torch.Generator | None = None,
        sigma: float = 1e-3,
        samples: int = 1,
        difference: Difference = "forward",
        vectorize: bool = True,
    ):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
        if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        if difference not in DIFFERENCES:
            raise ValueError(f"difference must be one of {DIFFERENCES}, got {difference!r}")
        if not isinstance(vectorize, bool):
            raise TypeError(f"vectorize must be True or False, got {vectorize!r}")
        super().__init__(model, layers=layers)
        self.named_params = layer_parameters(self.layers)
        """``{'<layer>.weight': W, ...}``: the covered layers' parameters, in module order."""
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.sigma = float(sigma)
        self.samples = samples
        self.difference = difference
        self.vectorize = vectorize
        self.forward_passes = 0
        """Evaluations of the closure so far (clean and perturbed passes)."""
        self.draws = 0
        """Perturbation draws so far (a central difference's +xi and -xi are one draw)."""

    average_draws = True
    """:meth:`backward` writes the mean of the draws' estimates (False: their sum, as serial
    perturbation's one-weight-per-draw estimates add up to a gradient)."""

    @property
    def params(self) -> list[nn.Parameter]:
        """The covered layers' weights and biases, layer by layer: ``[W_1, b_1, W_2, ...]``."""
        return list(self.named_params.values())

    def other_params(self) -> list[nn.Parameter]:
        """Parameters outside the covered layers that require a gradient: they get their true
        gradient from autograd through the clean pass."""
        covered = {id(p) for p in self.params}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in covered]

    def passes_per_draw(self) -> int:
        """Perturbed evaluations per draw: 1 (forward difference) or 2 (central)."""
        return 1 if self.difference == "forward" else 2

    def _randn(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """``N(0, sigma^2)`` noise of ``shape`` from the rule's generator, on ``like``'s device."""
        noise = torch.randn(
            tuple(shape), generator=self.generator, device=self.generator.device, dtype=like.dtype
        )
        return noise.to(like.device).mul_(self.sigma)

    # -- the closure -----------------------------------------------------------------------------

    def _closure(self, closure_or_x: Closure | Tensor, y: Tensor | None, loss: str | None):
        for name, module in self.layers.items():
            others = attached_rules(module)
            if others:
                raise ValueError(
                    f"{name} has a {type(others[0]).__name__} attached, whose hooks would change "
                    "the passes this rule measures; call remove() on it first"
                )
        if isinstance(closure_or_x, Tensor):
            if y is None:
                raise TypeError("rule.backward(x, y, loss) needs the labels y (or pass a closure)")
            return loss_closure(closure_or_x, y, "cross_entropy" if loss is None else loss)
        if callable(closure_or_x):
            if y is not None or loss is not None:
                raise TypeError(
                    "pass either a closure (rule.backward(closure)) or tensors "
                    "(rule.backward(x, y, loss)), not both"
                )
            return closure_or_x
        raise TypeError(
            "expected a closure m -> per-example losses (B,) or an input tensor x, got "
            f"{type(closure_or_x).__name__}"
        )

    def _clean_pass(self, closure: Closure, true_gradients: bool) -> tuple[Tensor, list]:
        """Per-example losses ``(B,)`` of the unperturbed model (detached) and, when
        ``true_gradients``, the gradients of the other parameters (``None`` where unused)."""
        others = self.other_params() if true_gradients else []
        updates: list = [None] * len(others)
        with torch.set_grad_enabled(bool(others)):
            losses = check_losses(closure(self.model))
            if others and losses.requires_grad:
                updates = list(torch.autograd.grad(losses.mean(), others, allow_unused=True))
        self.forward_passes += 1
        return losses.detach(), list(zip(others, updates, strict=True))

    @torch.no_grad()
    def backward(
        self, closure: Closure | Tensor, y: Tensor | None = None, loss: str | None = None
    ) -> Tensor:
        """Add the mean of ``samples`` single-draw estimates to the covered parameters' ``.grad``
        (and the true gradient to every other parameter that requires one); return the clean
        pass's mean loss (detached).

        ``rule.backward(closure)`` with ``closure(m) -> (B,)`` per-example losses, ``m`` called
        like the model; or ``rule.backward(x, y, loss="cross_entropy")``, the convenience that
        builds ``closure = lambda m: loss_per_example(m(x), y, loss)``.
        """
        closure = self._closure(closure, y, loss)
        for name, param in self.named_params.items():
            if not param.requires_grad:
                raise ValueError(
                    f"{name} does not require a gradient; leave its layer out with layers="
                )
        total, clean_loss, others = self._estimate_sum(closure, self.samples)
        scale = 1 / self.samples if self.average_draws else 1.0
        for param, update in zip(self.params, total, strict=True):
            self._accumulate(param, update * scale)
        for param, update in others:
            if update is not None:
                self._accumulate(param, update)
        return clean_loss

    @abstractmethod
    def _estimate_sum(self, closure: Closure, draws: int) -> tuple[list[Tensor], Tensor, list]:
        """Sum over ``draws`` single-draw estimates, one tensor per parameter (without
        materialising each draw), the clean loss and the other parameters' true gradients."""

    @staticmethod
    def _check_draws(draws: int) -> int:
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be a positive integer, got {draws!r}")
        return draws

    @abstractmethod
    def estimates(
        self,
        closure: Closure | Tensor,
        y: Tensor | None = None,
        loss: str | None = None,
        *,
        draws: int | None = None,
        noise: list[Tensor] | None = None,
    ) -> Estimates:
        """Single-draw estimates ``(draws, *shape)`` per parameter, without touching ``.grad``."""


class WeightPerturbation(PerturbationRule):
    """Parallel weight perturbation (Marblestone et al. 2016 sec. 2; Werfel et al. 2005) on any
    model: the covered layers' weights and biases ``W``.

    For each of ``samples`` draws (``C`` the mean of the closure's per-example losses)::

        xi ~ N(0, sigma^2 I)                                       # one value per parameter
        dC = C(W + xi) - C(W)                 (forward)
        dC = (C(W + xi) - C(W - xi)) / 2      (central)
        g_hat = dC * xi / sigma^2

    and ``.grad += mean over draws of g_hat``; other parameters that require a gradient get
    ``.grad += dC(W)/dtheta`` (autograd, clean pass). ``E[g_hat] = g + O(sigma^2)`` (exactly
    ``g`` when ``C`` is quadratic in ``W``); ``E|g_hat - g|^2 ~ (P + 1)|g|^2`` per draw for
    ``P`` parameters. ``forward_passes`` grows by ``1 + samples`` (forward) or
    ``1 + 2 samples`` (central) per :meth:`backward`.

    Args:
        model: any ``nn.Module``; not modified (perturbed passes use ``functional_call``).
        layers: layer types or module names to perturb (default: every ``Linear``, ``Conv1d``,
            ``Conv2d``).
        generator: the only source of noise; ``None`` means ``torch.Generator().manual_seed(0)``.
        sigma: standard deviation of the noise.
        samples: draws averaged per :meth:`backward`.
        difference: ``"forward"`` or ``"central"``.
        vectorize: batch a chunk of draws with ``torch.func.vmap`` (default) or loop over them
            (``False``, for models ``vmap`` cannot batch; same numbers).
    """

    name = "weight-perturbation"
    learns_quickly = False
    """One draw's squared error is ``(P + 1)|g|^2``: a few SGD steps at a step size fit for backprop
    (the conformance suite's check) overshoot; the step must shrink like ``1 / P`` (tested in
    ``tests/test_perturbation.py`` and measured by the perturbation-scaling experiment)."""

    def draw_noise(self, draws: int) -> list[Tensor]:
        """``draws`` perturbations, one tensor ``(draws, *param.shape)`` per parameter, drawn
        draw by draw from the rule's generator (so the stream does not depend on chunking)."""
        params = self.params
        per_draw = [[self._randn(p.shape, p) for p in params] for _ in range(draws)]
        return [torch.stack([d[i] for d in per_draw]) for i in range(len(params))]

    def _chunk(self) -> int:
        n_params = sum(p.numel() for p in self.params)
        return max(1, CHUNK_ELEMENTS // (n_params * self.passes_per_draw()))

    def _check_noise(self, noise: list[Tensor]) -> list[Tensor]:
        params = self.named_params
        if not isinstance(noise, list | tuple) or len(noise) != len(params):
            raise ValueError(f"noise must be a list of {len(params)} tensors, one per parameter "
                             f"({list(params)}), as draw_noise returns")  # fmt: skip
        draws = noise[0].shape[0] if noise[0].dim() else 0
        for (name, param), xi in zip(params.items(), noise, strict=True):
            if tuple(xi.shape) != (draws, *param.shape) or draws < 1:
                raise ValueError(
                    f"noise for {name} has shape {tuple(xi.shape)}, expected "
                    f"(draws, *{tuple(param.shape)}) with the same draws for every parameter"
                )
        return list(noise)

    @torch.no_grad()
    def estimates(
        self,
        closure: Closure | Tensor,
        y: Tensor | None = None,
        loss: str | None = None,
        *,
        draws: int | None = None,
        noise: list[Tensor] | None = None,
    ) -> Estimates:
        """Single-draw estimates ``(draws, *shape)`` per parameter, without touching ``.grad``.

        ``estimates(closure, ...)`` or ``estimates(x, y, loss, ...)`` as for :meth:`backward`.
        ``noise`` (as :meth:`draw_noise` returns it, already scaled by sigma) replaces the
        generator's draws; otherwise ``draws`` (default ``samples``) are drawn.
        """
        closure = self._closure(closure, y, loss)
        if noise is not None:
            noise = self._check_noise(noise)
        else:
            draws = self._check_draws(self.samples if draws is None else draws)
        buffers = buffer_copies(self.model)
        clean, _ = self._clean_pass(closure, true_gradients=False)
        if noise is not None:
            return Estimates(self._chunk_estimates(closure, noise, clean, buffers), clean.mean())
        chunk = self._chunk()
        parts = []
        for start in range(0, draws, chunk):
            part = self.draw_noise(min(chunk, draws - start))
            parts.append(self._chunk_estimates(closure, part, clean, buffers))
        grads = [torch.cat(pieces) for pieces in zip(*parts, strict=True)]
        return Estimates(grads, clean.mean())

    def _estimate_sum(self, closure: Closure, draws: int) -> tuple[list[Tensor], Tensor, list]:
        buffers = buffer_copies(self.model)
        clean, others = self._clean_pass(closure, true_gradients=True)
        total = [torch.zeros_like(p) for p in self.params]
        chunk = self._chunk()
        for start in range(0, draws, chunk):
            noise = self.draw_noise(min(chunk, draws - start))
            coefficient = self._coefficients(closure, noise, clean, buffers)  # (k,)
            for acc, xi in zip(total, noise, strict=True):
                acc.add_(torch.tensordot(coefficient, xi, dims=1))  # sum_k c_k xi_k
        return total, clean.mean(), others

    def _perturbed_losses(
        self, closure: Closure, noise: list[Tensor], buffers: dict[str, Tensor], batch: int
    ) -> Tensor:
        """Mean loss ``(k,)`` of ``k`` perturbed copies ``W + noise[k]``: ``vmap`` over draws of
        the closure on ``functional_call(model, W + xi)`` (or a loop, ``vectorize=False``)."""
        names = list(self.named_params)
        base = [p.detach() for p in self.params]

        def one_draw(*xis: Tensor) -> Tensor:
            tensors = {n: p + xi for n, p, xi in zip(names, base, xis, strict=True)}
            own = buffers if self.vectorize else {n: b.clone() for n, b in buffers.items()}
            return check_losses(closure(FunctionalModel(self.model, {**tensors, **own})))

        draws = noise[0].shape[0]
        per_example = run_draws(one_draw, noise, self.vectorize, type(self).__name__)
        if tuple(per_example.shape) != (draws, batch):
            raise ValueError(f"the closure returned {tuple(per_example.shape[1:])} losses in a "
                             f"perturbed pass and ({batch},) in the clean pass")  # fmt: skip
        self.forward_passes += draws
        return per_example.mean(dim=1)  # (k,)

    def _coefficients(
        self, closure: Closure, noise: list[Tensor], clean: Tensor, buffers: dict[str, Tensor]
    ) -> Tensor:
        """``dC / sigma^2`` per draw ``(k,)``: the factor multiplying each draw's noise."""
        batch = len(clean)
        plus = self._perturbed_losses(closure, noise, buffers, batch)
        if self.difference == "forward":
            change = plus - clean.mean()
        else:
            minus = self._perturbed_losses(closure, [-xi for xi in noise], buffers, batch)
            change = (plus - minus) / 2
        self.draws += len(change)
        return change / self.sigma**2

    def _chunk_estimates(
        self, closure: Closure, noise: list[Tensor], clean: Tensor, buffers: dict[str, Tensor]
    ) -> list[Tensor]:
        coefficient = self._coefficients(closure, noise, clean, buffers)  # (k,)
        return [coefficient.view(-1, *([1] * (xi.dim() - 1))) * xi for xi in noise]


@torch.no_grad()
def weight_perturbation_reference(
    model: nn.Module,
    closure: Closure,
    noise: list[Tensor],
    sigma: float,
    difference: Difference = "forward",
    *,
    layers: LayerSelection = None,
) -> list[Tensor]:
    """The plain loop: per draw, evaluate ``closure`` on ``model`` with ``W +- xi`` through
    ``functional_call`` (on copies of the buffers) and form ``dC xi / sigma^2``. ``layers`` as
    for the rule; ``noise`` as :meth:`WeightPerturbation.draw_noise` returns it (one tensor
    ``(draws, *shape)`` per covered parameter, weight then bias, layer by layer). Returns the
    per-draw estimates in the same layout. ``loss_closure(x, y, loss)`` builds the closure of
    ``rule.backward(x, y, loss)``."""
    named = layer_parameters(select_layers(model, layers))
    names, base = list(named), [p.detach() for p in named.values()]
    buffers = buffer_copies(model)

    def cost(tensors: dict[str, Tensor]) -> Tensor:
        copies = {n: b.clone() for n, b in buffers.items()}
        return closure(FunctionalModel(model, {**tensors, **copies})).mean()

    def perturbed(sign: float, draw: int) -> Tensor:
        return cost({n: p + sign * xi[draw] for n, p, xi in zip(names, base, noise, strict=True)})

    clean = cost({})
    estimates: list[list[Tensor]] = [[] for _ in names]
    for draw in range(noise[0].shape[0]):
        if difference == "forward":
            change = perturbed(1.0, draw) - clean
        else:
            change = (perturbed(1.0, draw) - perturbed(-1.0, draw)) / 2
        for out, xi in zip(estimates, noise, strict=True):
            out.append(change * xi[draw] / sigma**2)
    return [torch.stack(out) for out in estimates]
