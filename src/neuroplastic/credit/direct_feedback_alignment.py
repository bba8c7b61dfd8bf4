"""Direct feedback alignment (DFA): every hidden layer gets the output error directly.

Nøkland (2016), "Direct feedback alignment provides learning in deep neural networks", NeurIPS
(Section 2: the BP, FA and DFA error signals side by side; Fig. 1). In the paper's column form,
for ``h_l = f(a_l)`` and output error ``e = dL/da_L``::

    DFA:   delta a_l = (B_l e) ⊙ f'(a_l)        B_l fixed, random, one per hidden layer
           dW_l = delta a_l h_{l-1}^T;  the output layer gets its true gradient

On any model (as implemented; batch of row vectors): ``e = dL/d(output)`` is taken where the
model's output (or a named module's output) enters the loss, flattened per example to ``(N, K)``.
A covered layer with input ``x`` keeps its local gradients (``dW = g^T x``, ``db = sum g`` with
``g`` whatever reaches its output) and sends to its input, *instead of* ``g W``::

    error into x = (e D^T).view(x.shape)          D: (x.numel() / N, K), fixed, random

so the error reaching a layer's output is ``D e`` carried back through whatever lies between it
and the next covered layer (the activation's ``f'``: Nøkland's ``⊙ f'(a_l)``; pooling,
normalisation and residual sums exactly). No error travels through any forward weight. In an MLP
the ``D`` at the input of layer ``l + 1`` is Nøkland's ``B_l``; the output layer's own update is
exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from neuroplastic.credit.base import FeedbackMatrices, LayerLocalRule
from neuroplastic.credit.feedback_alignment import check_scale
from neuroplastic.credit.layers import LayerCall, LayerSelection, draw_uniform, init_bound


@dataclass
class _ForwardPass:
    """One forward pass of the model: the layers that ran, and (after backward reaches the
    output) the output error."""

    calls: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    output_shape: tuple[int, ...] | None = None
    error: Tensor | None = None


class _CaptureError(torch.autograd.Function):
    """Identity on the output; its backward keeps ``dL/d(output)`` for the covered layers."""

    @staticmethod
    def forward(ctx, output: Tensor, forward_pass: _ForwardPass) -> Tensor:
        ctx.forward_pass = forward_pass
        return output.detach()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        ctx.forward_pass.error = grad_output.reshape(len(grad_output), -1)  # (N, K)
        return grad_output, None


class DirectFeedbackAlignment(LayerLocalRule):
    r"""Direct feedback alignment: each covered layer's input receives the output error through
    its own fixed random matrix ``D`` (Nøkland 2016, Section 2), with no layer-to-layer backward.

    Algorithm (per covered layer ``l``, in autograd's backward; ``e = dL/d(output)`` ``(N, K)``)::

        W_l.grad += g_l^T x_l;  b_l.grad += sum g_l           # local, as backprop
        error into x_l = (e D_l^T).view(x_l.shape)            # backprop: g_l W_l

    With one hidden layer and ``D = W_out^T`` (``rule.feedback["out"] = out.weight.detach().T``)
    this is backprop; with more layers backprop would need ``D_l = W_{l+1}^T diag(f'(a_{l+1}))
    ... W_L^T``, which depends on the example, so no fixed ``D`` reproduces it.

    Attributes:
        feedback: :class:`~neuroplastic.credit.base.FeedbackMatrices`, ``{layer name: D}``, one
            for every covered layer whose input needs a gradient, of shape ``(x.numel() / N, K)``.
            Their shapes depend on the data, so they are drawn at the end of the first forward
            pass that needs them, in the order the layers ran. A matrix set before (e.g. for
            the identity above) is kept and checked against its shape then.

    Scaling: ``D ~ scale * U(-1/sqrt(n), 1/sqrt(n))``, ``n = x.numel() / N``, the law an output
    layer fed directly by ``x`` would have at initialisation (for the last hidden layer of an MLP,
    exactly the law of ``W_out^T``).

    Args:
        model, layers: as :class:`~neuroplastic.credit.feedback_alignment.FeedbackAlignment`.
        generator: draws the matrices (on the CPU, default dtype); ``None``: torch's global one.
            Kept: it draws on the first pass.
        scale: multiplies every drawn ``D``.
        output: name of the module whose output is the error's source (default: the model's
            own output, which must then be a tensor).

    A covered layer whose inputs have different shapes in two calls, a model output that is not
    a tensor, and a covered layer run outside the model's forward pass are refused with an error.
    """

    name = "dfa"

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: LayerSelection = None,
        generator: torch.Generator | None = None,
        scale: float = 1.0,
        output: str | None = None,
    ):
        super().__init__(model, layers=layers)
        self.scale = check_scale(scale)
        self.generator = generator
        modules = dict(model.named_modules())
        if output is not None and (not output or output not in modules):
            raise KeyError(f"no module named {output!r} in the model (output=)")
        self.output = output
        self.feedback = FeedbackMatrices("feedback", {name: None for name in self.layers})
        self._passes: list[_ForwardPass] = []
        self._hook(model, self._begin_pass, pre=True)
        self._hook(model, self._end_pass)
        if output is not None:
            self._hook(modules[output], self._capture)

    def _begin_pass(self, module, args):
        self._passes.append(_ForwardPass())

    def _capture(self, module, args, output):
        if not self._passes:
            return None
        forward_pass = self._passes[-1]
        if not isinstance(output, Tensor):
            if not forward_pass.calls:
                return None  # nothing to train in this pass (no covered layer needs a gradient)
            raise TypeError(
                f"direct feedback alignment needs a tensor output to take the error from; "
                f"{self.output or 'the model'} returned {type(output).__name__} (pass output= "
                "naming the module whose output the loss reads)"
            )
        if forward_pass.output_shape is not None:
            raise RuntimeError(f"the output module {self.output!r} ran twice in one forward pass")
        forward_pass.output_shape = tuple(output.shape)
        if not (self._enabled and torch.is_grad_enabled() and output.requires_grad):
            return None
        return _CaptureError.apply(output, forward_pass)

    def _end_pass(self, module, args, output):
        try:
            result = self._capture(module, args, output) if self.output is None else None
        finally:
            forward_pass = self._passes.pop()  # also when refused: no stale pass left behind
        if forward_pass.calls and forward_pass.output_shape is None:
            raise RuntimeError(f"the output module {self.output!r} did not run in the forward pass")
        self._draw(forward_pass)
        return result

    def _draw(self, forward_pass: _ForwardPass) -> None:
        """Draw (in the order the layers ran) the matrices this pass needs and does not have."""
        if not forward_pass.calls:
            return
        n_out = int(torch.Size(forward_pass.output_shape[1:]).numel())
        for name, input_shape in forward_pass.calls:
            n_in = int(torch.Size(input_shape[1:]).numel())
            expected = self.feedback.shape(name)
            if expected is not None and expected != (n_in, n_out):
                raise ValueError(
                    f"{name} ran with inputs of per-example size {n_in} and an output of size "
                    f"{n_out}; its feedback matrix is {expected}: direct feedback alignment "
                    "needs one input shape per layer"
                )
            self.feedback.expect(name, (n_in, n_out))
            if name not in self.feedback:
                drawn = draw_uniform((n_in, n_out), init_bound(n_in), self.generator)
                self.feedback[name] = self.scale * drawn

    def on_layer_call(self, call: LayerCall, x: Tensor) -> None:
        if not x.requires_grad:
            return
        if not self._passes:
            raise RuntimeError(
                f"{call.name} ran outside the model's forward pass: direct feedback alignment "
                "takes the error from the model's output, so call the model, not the layer"
            )
        call.forward_pass = self._passes[-1]
        call.forward_pass.calls.append((call.name, tuple(x.shape)))

    def input_error(self, call: LayerCall, x: Tensor, g: Tensor) -> Tensor:
        error = call.forward_pass.error
        if error is None:
            raise RuntimeError(
                f"no output error reached {call.name}: the loss must depend on the output of "
                f"{self.output or 'the model'}"
            )
        if len(error) != len(x):
            raise RuntimeError(
                f"{call.name}: its input has {len(x)} examples, the output error {len(error)}; "
                "direct feedback alignment needs the batch as the first dimension throughout"
            )
        d = self.feedback.on(call.name, error)  # (n_in, K)
        return (error @ d.T).view(x.shape).to(x.dtype)  # (N, K) @ (K, n_in)

    @contextlib.contextmanager
    def as_backprop(self) -> Iterator[DirectFeedbackAlignment]:
        """Within the block ``D = W_out^T`` (a view that follows the weight) for the last covered
        layer: backprop's gradient when the model has one hidden layer, i.e. at most two covered
        layers, both ``Linear``, the last one computing the output the error is taken from (only
        its input carries an error). On exit the matrices are as before. Raises
        ``NotImplementedError`` on entry for other models: with more layers backprop's path
        depends on the example (see the class docstring), so no fixed ``D`` reproduces it."""
        modules = list(self.layers.values())
        if len(modules) > 2 or not all(isinstance(m, nn.Linear) for m in modules):
            kinds = [type(m).__name__ for m in modules]
            raise NotImplementedError(
                "direct feedback alignment equals backprop only with one hidden layer (at most "
                f"two covered Linear layers); this model's covered layers are {kinds}"
            )
        name, last = list(self.layers.items())[-1]
        with self.feedback.replaced({name: last.weight.detach().T}):  # (in, K)
            yield self

    def feedback_pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """For a chain of covered ``Linear`` layers (an MLP): ``{name: (W_{l}^T ... W_L^T, D)}``,
        backprop's path from the output error to the input of layer ``l`` with the activation
        slopes left out (``W_out^T`` for the output layer's input); empty otherwise."""
        modules = list(self.layers.values())
        if not all(isinstance(m, nn.Linear) for m in modules):
            return {}
        names = list(self.layers)
        pairs: dict[str, tuple[Tensor, Tensor]] = {}
        path = None
        for name, module in zip(reversed(names), reversed(modules), strict=True):
            weight_t = module.weight.detach().T  # (in, out)
            if path is not None and weight_t.shape[1] != path.shape[0]:
                return {}
            path = weight_t if path is None else weight_t @ path  # (in, K)
            if name in self.feedback:
                pairs[name] = (path, self.feedback[name])
        return dict(reversed(pairs.items()))
