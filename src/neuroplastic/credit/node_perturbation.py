"""Node perturbation: each neuron correlates its own noise with the scalar change of the cost.

Marblestone, Wayne & Kording (2016), "Toward an integration of deep learning and neuroscience",
Front. Comput. Neurosci. 10:94, section 2 ("node perturbation": perturb the neurons' activities
rather than the synapses; each neuron then needs only the global change of the cost); Werfel, Xie
& Seung (2005), "Learning curves for stochastic gradient descent in linear feedforward networks",
Neural Computation 17(12) (node perturbation learns faster than weight perturbation because its
noise grows with the number of neurons, not of synapses).

On any ``nn.Module``. Every output ``o_l = W_l * x_l + b_l`` of every covered layer ``l`` (a
``Linear``'s pre-activation, a convolution's feature map: ``*`` a matrix product or a
convolution) receives its own noise ``xi_l ~ N(0, sigma^2 I)`` of the output's shape,
independent across examples, units (for a convolution: channels *and* positions) and layers; the
perturbed activity flows on through the rest of the model. The cost is a closure
``closure(m) -> (B,)`` of per-example losses ``C_b`` (``m`` called like the model), and each
covered layer's output must have the batch as its first dimension. Then::

    forward:  dC_b = C_b(xi) - C_b(0)
    central:  dC_b = (C_b(xi) - C_b(-xi)) / 2
    e_{l,b} = dC_b xi_{l,b} / (B sigma^2)          # estimated error dC/do_l of example b
    Linear:  dW_l = sum_b e_{l,b}^T x_{l,b}        (summed over any further leading dims)
             db_l = sum_b e_{l,b}
    Conv:    dW_l = conv_weight_grad(x_l, e_l)     (the gradient of <e_l, W * x_l> in W)
             db_l = e_l summed over every dimension but the channel

with ``x_l`` the layer's input in the clean (unperturbed) pass: the layer's *local* gradients
(:func:`~neuroplastic.credit.layers.local_gradients`) with the estimated error in place of
backprop's. ``dC_b xi_{l,b} / sigma^2`` estimates ``delta_{l,b} = dC_b/do_{l,b}`` (the backprop
error of that layer) because ``E[(delta_b . xi_b) xi_{l,b}] = sigma^2 delta_{l,b}``, so ``dW_l``
estimates ``dC/dW_l`` up to ``O(sigma^2)``. In a model that is *affine* in its covered layers'
outputs (a linear network of any depth, convolutional or not) with the square cost, each ``C_b``
is quadratic in the node perturbations, and the estimate is exactly unbiased for every sigma,
with either difference. Per example the estimate of the error vector has covariance
``|delta_b|^2 I + delta_b delta_b^T`` over all ``N`` perturbed units, so its variance grows with
the number of neurons ``N``, not with the number of synapses as weight perturbation's does.

Using the clean ``x_l`` (available from the clean pass that the forward difference needs anyway)
rather than the perturbed presynaptic activity keeps the estimator's leading term exact; in a
linear network the two choices have the same mean. Parameters outside the covered layers that
require a gradient receive their true gradient (autograd through the clean pass).

Counting, randomness and buffers as for
:class:`~neuroplastic.credit.weight_perturbation.WeightPerturbation`: ``forward_passes`` grows by
``1 + samples`` (forward) or ``1 + 2 samples`` (central) per :meth:`~NodePerturbation.backward`;
noise comes only from the rule's generator (``None``: a fresh ``torch.Generator()`` seeded 0),
drawn draw by draw, layer by layer in module order, each block of the layer output's shape;
perturbed passes run through ``functional_call`` on copies of the buffers.

Implementation. A forward hook on each covered layer, on only during the rule's own passes,
records the layer's input in the clean pass and, in a perturbed pass, adds the draw's noise to
its output. A chunk of draws is one ``torch.func.vmap``
over the noise (the clean part of the computation before the first covered layer, e.g. its drive
``W_1 x + b_1``, is not batched by ``vmap`` and is computed once); ``vectorize=False`` loops over
the draws. :func:`node_perturbation_reference` is the plain loop over draws and examples that a
test proves the batched path equal to. A covered layer must be called exactly once per forward
pass (its noise and its input are per call); a second call is an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from neuroplastic.credit.layers import LayerSelection, local_gradients, select_layers
from neuroplastic.credit.weight_perturbation import (
    CHUNK_ELEMENTS,
    Closure,
    Difference,
    Estimates,
    FunctionalModel,
    PerturbationRule,
    buffer_copies,
    check_losses,
    run_draws,
)

Shapes = Mapping[str, Sequence[int]] | int


def _layer_input(name: str, args, kwargs) -> Tensor:
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected the layer's input tensor, got {type(x).__name__}")
    return x


def weight_gradients(module: nn.Module, x: Tensor, error: Tensor) -> list[Tensor]:
    """``[dW, db]`` (``[dW]`` without a bias): the layer's local gradients for ``error`` at its
    output and input ``x``."""
    has_bias = module.bias is not None
    _, grad_weight, grad_bias = local_gradients(
        module, x, error, module.weight.detach(), None, (False, True, has_bias)
    )
    return [grad_weight, grad_bias] if has_bias else [grad_weight]


class NodePerturbation(PerturbationRule):
    """Node perturbation of the covered layers' outputs (Marblestone et al. 2016 sec. 2), on any
    model.

    For each of ``samples`` draws (``o_l`` the output of covered layer ``l``, ``x_l`` its clean
    input, ``C_b`` the closure's loss of example ``b``)::

        xi_l ~ N(0, sigma^2 I)                       # of o_l's shape: every example and unit
        o~_l = W_l * x~_l + b_l + xi_l               # the rest of the model runs on as usual
        dC_b = C_b(xi) - C_b(0)               (forward)
        dC_b = (C_b(xi) - C_b(-xi)) / 2       (central)
        e_l = dC_b xi_{l,b} / (B sigma^2)            # per example b
        dW_l, db_l = local gradients of layer l for error e_l at input x_l

    and ``.grad += mean over draws``; other parameters that require a gradient get their true
    gradient (autograd, clean pass). Arguments as for
    :class:`~neuroplastic.credit.weight_perturbation.WeightPerturbation`.
    """

    name = "node-perturbation"

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
        super().__init__(
            model,
            layers=layers,
            generator=generator,
            sigma=sigma,
            samples=samples,
            difference=difference,
            vectorize=vectorize,
        )
        self._mode: str | None = None  # "record" (clean pass) or "perturb", while hooks are on
        self._inputs: dict[str, Tensor] = {}
        self._shapes: dict[str, torch.Size] = {}
        self._noise: dict[str, Tensor] = {}

    @contextlib.contextmanager
    def _hooked(self, mode: str) -> Iterator[None]:
        """The rule's hooks on the covered layers, for the duration of one of its passes."""
        self._mode = mode
        handles = [
            module.register_forward_hook(partial(self._node_hook, name), with_kwargs=True)
            for name, module in self.layers.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._mode, self._noise = None, {}

    def _node_hook(self, name: str, module: nn.Module, args, kwargs, output):
        if not isinstance(output, Tensor):
            raise TypeError(f"{name}: expected a tensor output, got {type(output).__name__}")
        if self._mode == "record":
            if name in self._inputs:
                raise ValueError(
                    f"{name} was called more than once in one forward pass; node perturbation "
                    "needs one call per covered layer (leave it out with layers=)"
                )
            self._inputs[name] = _layer_input(name, args, kwargs).detach()
            self._shapes[name] = output.shape
            return None
        xi = self._noise[name]
        if xi.shape != output.shape:
            raise ValueError(f"noise for {name} has shape {tuple(xi.shape)} per draw, but the "
                             f"layer's output has shape {tuple(output.shape)}")  # fmt: skip
        return output + xi

    def _record(self, run):
        self._inputs, self._shapes = {}, {}
        with self._hooked("record"):
            losses = run()
        missing = [name for name in self.layers if name not in self._inputs]
        if missing:
            self._inputs, self._shapes = {}, {}
            raise ValueError(
                f"covered layers {missing} were not called by the closure; leave them out "
                "with layers="
            )
        return losses

    def _clean_pass(self, closure: Closure, true_gradients: bool) -> tuple[Tensor, list]:
        """As for weight perturbation, and records every covered layer's input and output
        shape; each output must have the batch as its first dimension."""
        clean, others = self._record(lambda: super(NodePerturbation, self)._clean_pass(
            closure, true_gradients))  # fmt: skip
        for name, shape in self._shapes.items():
            if len(shape) < 2 or shape[0] != len(clean):
                raise ValueError(
                    f"{name}'s output has shape {tuple(shape)}, but the closure returned "
                    f"{len(clean)} per-example losses: node perturbation needs every covered "
                    "layer's output to have the batch as its first dimension"
                )
        return clean, others

    @torch.no_grad()
    def output_shapes(self, closure: Closure | Tensor, y: Tensor | None = None,
                      loss: str | None = None) -> dict[str, torch.Size]:  # fmt: skip
        """``{layer name: output shape}`` of the covered layers on this batch: the shapes
        :meth:`draw_noise` takes. One pass on copies of the buffers, not counted."""
        closure = self._closure(closure, y, loss)
        self._record(lambda: closure(FunctionalModel(self.model, buffer_copies(self.model))))
        return dict(self._shapes)

    def _noise_shapes(self, shapes: Shapes) -> dict[str, tuple[int, ...]]:
        if isinstance(shapes, int) and not isinstance(shapes, bool):
            if not all(isinstance(m, nn.Linear) for m in self.layers.values()):
                raise TypeError(
                    "draw_noise(draws, batch_size) only knows the output shapes of Linear layers "
                    "fed (batch, features); pass the shapes, rule.output_shapes(closure)"
                )
            return {name: (shapes, m.out_features) for name, m in self.layers.items()}
        if not isinstance(shapes, Mapping) or set(shapes) != set(self.layers):
            raise ValueError(f"shapes must be a batch size or {{layer name: output shape}} for "
                             f"the covered layers {list(self.layers)}")  # fmt: skip
        return {name: tuple(shapes[name]) for name in self.layers}

    def draw_noise(self, draws: int, shapes: Shapes) -> list[Tensor]:
        """``draws`` perturbations, one tensor ``(draws, *output shape)`` per covered layer, drawn
        draw by draw, layer by layer, from the rule's generator. ``shapes`` is
        :meth:`output_shapes`'s dict, or a batch size ``B`` when every covered layer is a
        ``Linear`` fed ``(B, in_features)`` (shapes ``(B, out_features)``)."""
        shapes = self._noise_shapes(shapes)
        layers = list(self.layers.items())
        per_draw = [
            [self._randn(shapes[name], layer.weight) for name, layer in layers]
            for _ in range(draws)
        ]
        return [torch.stack([d[i] for d in per_draw]) for i in range(len(layers))]

    def _check_noise(self, noise: list[Tensor]) -> list[Tensor]:
        if not isinstance(noise, list | tuple) or len(noise) != len(self.layers):
            raise ValueError(f"noise must be a list of {len(self.layers)} tensors, one per "
                             f"covered layer ({list(self.layers)})")  # fmt: skip
        draws = noise[0].shape[0] if noise[0].dim() else 0
        for (name, shape), xi in zip(self._shapes.items(), noise, strict=True):
            if tuple(xi.shape) != (draws, *shape) or draws < 1:
                raise ValueError(
                    f"noise for {name} has shape {tuple(xi.shape)}, expected "
                    f"(draws, *{tuple(shape)}) with the same draws for every layer"
                )
        return list(noise)

    def _chunk(self, per_draw_estimates: bool) -> int:
        units = sum(shape.numel() for shape in self._shapes.values())
        widest = max(x.numel() for x in self._inputs.values())
        per_draw = (units + widest) * self.passes_per_draw()
        if per_draw_estimates:
            per_draw += sum(p.numel() for p in self.params)
        return max(1, CHUNK_ELEMENTS // per_draw)

    def _perturbed_losses(
        self, closure: Closure, noise: list[Tensor], buffers: dict[str, Tensor], batch: int
    ) -> Tensor:
        """Per-example losses ``(k, B)`` of ``k`` perturbed passes: ``vmap`` over the noise of
        the closure, the hooks adding each layer's noise to its output."""
        names = list(self.layers)

        def one_draw(*xis: Tensor) -> Tensor:
            self._noise = dict(zip(names, xis, strict=True))
            own = buffers if self.vectorize else {n: b.clone() for n, b in buffers.items()}
            return check_losses(closure(FunctionalModel(self.model, own)))

        with self._hooked("perturb"):
            per_example = run_draws(one_draw, noise, self.vectorize, type(self).__name__)
        draws = noise[0].shape[0]
        if tuple(per_example.shape) != (draws, batch):
            raise ValueError(f"the closure returned {tuple(per_example.shape[1:])} losses in a "
                             f"perturbed pass and ({batch},) in the clean pass")  # fmt: skip
        self.forward_passes += draws
        return per_example

    def _coefficients(
        self, closure: Closure, noise: list[Tensor], clean: Tensor, buffers: dict[str, Tensor]
    ) -> Tensor:
        """``dC_b / (B sigma^2)`` per draw and example ``(k, B)``."""
        batch = len(clean)
        plus = self._perturbed_losses(closure, noise, buffers, batch)
        if self.difference == "forward":
            change = plus - clean
        else:
            minus = self._perturbed_losses(closure, [-xi for xi in noise], buffers, batch)
            change = (plus - minus) / 2
        self.draws += change.shape[0]
        return change / (change.shape[1] * self.sigma**2)

    @staticmethod
    def _errors(coefficient: Tensor, xi: Tensor) -> Tensor:
        """``e = dC_b xi_b / (B sigma^2)``, ``(k, *output shape)``."""
        return coefficient.view(*coefficient.shape, *([1] * (xi.dim() - 2))) * xi

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
        if noise is None:
            draws = self._check_draws(self.samples if draws is None else draws)
        buffers = buffer_copies(self.model)
        clean, _ = self._clean_pass(closure, true_gradients=False)
        if noise is not None:
            chunks = [self._check_noise(noise)]
        else:
            chunk = self._chunk(per_draw_estimates=True)
            chunks = (
                self.draw_noise(min(chunk, draws - start), self._shapes)
                for start in range(0, draws, chunk)
            )
        parts = []
        for part in chunks:
            coefficient = self._coefficients(closure, part, clean, buffers)  # (k, B)
            grads = []
            for (name, layer), xi in zip(self.layers.items(), part, strict=True):
                error = self._errors(coefficient, xi)  # (k, *o_l): estimated delta_l / B
                x = self._inputs[name]
                if isinstance(layer, nn.Linear):
                    g = error.reshape(len(error), -1, error.shape[-1])  # (k, N, n_l)
                    grads.append(g.transpose(1, 2) @ x.reshape(-1, x.shape[-1]))  # (k, n_l, n_in)
                    if layer.bias is not None:
                        grads.append(g.sum(dim=1))  # (k, n_l)
                else:
                    per_draw = [weight_gradients(layer, x, e) for e in error]
                    grads.extend(torch.stack(list(ds)) for ds in zip(*per_draw, strict=True))
            parts.append(grads)
        grads = [torch.cat(pieces) for pieces in zip(*parts, strict=True)]
        return Estimates(grads, clean.mean())

    def _estimate_sum(self, closure: Closure, draws: int) -> tuple[list[Tensor], Tensor, list]:
        buffers = buffer_copies(self.model)
        clean, others = self._clean_pass(closure, true_gradients=True)
        chunk = self._chunk(per_draw_estimates=False)
        errors = {
            name: torch.zeros(shape, dtype=layer.weight.dtype, device=self._inputs[name].device)
            for (name, layer), shape in zip(self.layers.items(), self._shapes.values(), strict=True)
        }
        for start in range(0, draws, chunk):
            noise = self.draw_noise(min(chunk, draws - start), self._shapes)
            coefficient = self._coefficients(closure, noise, clean, buffers)  # (k, B)
            for acc, xi in zip(errors.values(), noise, strict=True):
                acc.add_(self._errors(coefficient, xi).sum(dim=0))  # (*o_l)
        # the local gradients are linear in the error: one product for the sum over draws
        total = [
            grad
            for name, layer in self.layers.items()
            for grad in weight_gradients(layer, self._inputs[name], errors[name])
        ]
        return total, clean.mean(), others


@torch.no_grad()
def node_perturbation_reference(
    model: nn.Module,
    closure: Closure,
    noise: list[Tensor],
    sigma: float,
    difference: Difference = "forward",
    *,
    layers: LayerSelection = None,
) -> list[Tensor]:
    """The plain loop: per draw, evaluate ``closure`` with temporary hooks adding ``+-xi_l`` to
    each covered layer's output (on copies of the buffers), then per example ``b`` add the
    layer's local gradients of ``dC_b xi_{l,b} / (B sigma^2)`` at its clean input ``x_{l,b}``
    (for a ``Linear`` fed ``(B, in)``: the outer product with ``x_{l,b}``). ``noise`` as
    :meth:`NodePerturbation.draw_noise` returns it. Returns per-draw estimates
    ``(draws, *shape)`` per parameter (weight then bias, layer by layer)."""
    covered = select_layers(model, layers)
    buffers = buffer_copies(model)
    inputs: dict[str, Tensor] = {}

    def run(perturbation: list[Tensor] | None) -> Tensor:
        def hook(name, index):
            def add(module, args, kwargs, output):
                if perturbation is None:
                    inputs[name] = _layer_input(name, args, kwargs)
                    return None
                return output + perturbation[index]

            return add

        handles = [
            module.register_forward_hook(hook(name, index), with_kwargs=True)
            for index, (name, module) in enumerate(covered.items())
        ]
        try:
            copies = {n: b.clone() for n, b in buffers.items()}
            return closure(FunctionalModel(model, copies))
        finally:
            for handle in handles:
                handle.remove()

    clean = run(None)
    batch = len(clean)
    estimates: list[list[Tensor]] = [[] for _ in range(sum(2 if m.bias is not None else 1
                                                         for m in covered.values()))]  # fmt: skip
    for draw in range(noise[0].shape[0]):
        xi = [n[draw] for n in noise]
        if difference == "forward":
            change = run(xi) - clean
        else:
            change = (run(xi) - run([-n for n in xi])) / 2
        column = 0
        for index, (name, layer) in enumerate(covered.items()):
            sums = [torch.zeros_like(layer.weight)]
            if layer.bias is not None:
                sums.append(torch.zeros_like(layer.bias))
            for b in range(batch):
                factor = change[b] / (batch * sigma**2)
                example = inputs[name][b : b + 1]
                for total, grad in zip(
                    sums, weight_gradients(layer, example, factor * xi[index][b : b + 1]),
                    strict=True,
                ):  # fmt: skip
                    total += grad
            for grad in sums:
                estimates[column].append(grad)
                column += 1
    return [torch.stack(out) for out in estimates]
