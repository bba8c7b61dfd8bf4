"""Covered layers: which modules of a user's model a rule takes over, and their local gradients.

A rule does not own the model. It *covers* some of its layers (``nn.Linear``, ``nn.Conv1d``,
``nn.Conv2d``, found anywhere in the module tree, or named explicitly) and changes one thing about
each: the error that a covered layer sends back to its input. Everything else is torch autograd
as usual: activations, normalisation, pooling, residual sums, dropout and the user's loss
backpropagate exactly, and so do parameters outside the covered layers.

For a covered layer with input ``x``, output ``o = W * x + b`` (``*`` a matrix product or a
convolution) and incoming error ``g = dL/do``, every rule keeps the layer's *local* gradients::

    dW = g^T x           (Linear, summed over every leading dimension)
    dW = conv_weight_grad(x, g)   (Conv: the gradient of <g, W * x> with respect to W)
    db = sum of g over every dimension but the channel

and chooses what goes back to ``x``: backprop sends ``g`` through ``W`` (``g W``, or the transposed
convolution with ``W``), feedback alignment through a fixed random ``B`` of ``W``'s shape (``g B``,
or the transposed convolution with ``B``), direct feedback alignment sends a projection of the
model's output error instead, ignoring ``g``.

The mechanism is a forward hook on each covered layer (``register_forward_hook``: no module is
replaced, types and ``state_dict`` keys stay as they were, ``remove()`` takes the hooks off). The
hook keeps the output the module computed and hands it on through :class:`LocalGradient`, an
autograd node whose backward computes the local gradients above and asks the rule for the input's
error. The module's own backward never runs (its graph is dropped with the hook's input), so a
covered layer costs what it costs under backprop: one product forward, two backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""Layer types the rules know the local gradients of."""

LayerSelection = type[nn.Module] | Sequence[type[nn.Module]] | Sequence[str] | None


def select_layers(
    model: nn.Module,
    layers: LayerSelection = None,
    supported: tuple[type[nn.Module], ...] = SUPPORTED_LAYERS,
) -> dict[str, nn.Module]:
    """The covered layers, ``{module name: module}`` in the model's module order.

    ``layers`` is ``None`` (every module of a supported type), layer types (every module of those
    types), or module names as ``model.named_modules()`` spells them. A named module or type the
    rule does not support, an unknown name, or a selection that covers nothing is an error.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"a credit rule attaches to an nn.Module, got {type(model).__name__}")
    named = dict(model.named_modules())
    if layers is None:
        layers = supported
    if isinstance(layers, type):
        layers = (layers,)
    layers = tuple(layers)
    if all(isinstance(item, type) for item in layers):
        unsupported = [t.__name__ for t in layers if not issubclass(t, supported)]
        if unsupported:
            raise TypeError(
                f"layer types {unsupported} are not supported by this rule; it covers "
                f"{[t.__name__ for t in supported]} (subclasses included)"
            )
        chosen = {
            name: module
            for name, module in named.items()
            if isinstance(module, layers) and name  # the root itself is never a layer
        }
    elif all(isinstance(item, str) for item in layers):
        unknown = [name for name in layers if name not in named or not name]
        if unknown:
            raise KeyError(
                f"no modules named {unknown} in the model; its modules are "
                f"{[name for name in named if name]}"
            )
        chosen = {name: named[name] for name in named if name in set(layers)}
        wrong = {
            name: type(m).__name__ for name, m in chosen.items() if not isinstance(m, supported)
        }
        if wrong:
            raise TypeError(
                f"modules {wrong} are not of a type this rule supports "
                f"({[t.__name__ for t in supported]})"
            )
    else:
        raise TypeError(f"layers must be layer types or module names, got {layers!r}")
    if not chosen:
        raise ValueError(
            f"the rule covers no layer of this {type(model).__name__}: it has no "
            f"{[t.__name__ for t in supported]} (pass layers= to choose them)"
        )
    for name, module in chosen.items():
        check_layer(name, module)
    return chosen


def check_layer(name: str, module: nn.Module) -> None:
    """Refuse a layer whose local gradients this module cannot compute, saying why."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.padding_mode != "zeros":
            raise ValueError(
                f"{name}: padding_mode={module.padding_mode!r} is not supported (only 'zeros'); "
                "pad the input with an explicit F.pad before the layer instead"
            )
        conv_padding(name, module)


def conv_padding(name: str, module: nn.modules.conv._ConvNd) -> tuple[int, ...]:
    """The module's padding as numbers (``'valid'`` is 0; ``'same'`` when it is symmetric)."""
    padding = module.padding
    if padding == "valid":
        return (0,) * len(module.kernel_size)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise ValueError(
                f"{name}: padding='same' with an even receptive field pads asymmetrically, which "
                "is not supported; give the padding as numbers"
            )
        return tuple(t // 2 for t in total)
    return tuple(padding)


def fan_in(module: nn.Module) -> int:
    """Inputs per output unit: ``in_features``, or ``in_channels / groups * kernel size``."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.weight[0].numel()


def init_bound(fan: int) -> float:
    """``1/sqrt(fan)``, the half-width of PyTorch's default weight init for Linear and Conv."""
    return 1.0 / math.sqrt(fan)


def draw_uniform(shape: Sequence[int], bound: float, generator: torch.Generator | None) -> Tensor:
    """``U(-bound, bound)`` drawn on the CPU in the default dtype (as the MLP draws its weights),
    so one seed gives one matrix on every device and dtype; ``None``: torch's global generator."""
    return torch.empty(tuple(shape)).uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def local_gradients(
    module: nn.Module,
    x: Tensor,
    grad_output: Tensor,
    weight: Tensor,
    feedback: Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(error into x, dW, db)`` of a covered layer, the error sent back through ``feedback``.

    ``feedback`` has ``weight``'s shape (``W`` itself gives backprop); ``None`` skips the input's
    error. ``needs`` says which of the three are wanted (others come back as ``None``).
    """
    need_input = needs[0] and feedback is not None
    if isinstance(module, nn.Linear):
        g = grad_output.reshape(-1, grad_output.shape[-1])  # (N, out): every leading dim folded
        grad_input = grad_weight = grad_bias = None
        if need_input:
            grad_input = (grad_output @ feedback.to(grad_output)).to(x.dtype)  # (..., in)
        if needs[1]:
            grad_weight = (g.T @ x.reshape(-1, x.shape[-1]).to(g)).to(weight.dtype)  # (out, in)
        if needs[2]:
            grad_bias = g.sum(dim=0).to(weight.dtype)  # (out,)
        return grad_input, grad_weight, grad_bias
    # convolutions: one aten call gives the three (the weight passed in only shapes the input's
    # error; dW and db depend on x and g alone)
    kernel = feedback.to(grad_output) if need_input else weight.to(grad_output)
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_output,
        x.to(grad_output),
        kernel,
        [weight.shape[0]] if needs[2] else None,
        list(module.stride),
        list(conv_padding("", module)),
        list(module.dilation),
        False,
        [0] * len(module.kernel_size),
        module.groups,
        [need_input, needs[1], needs[2]],
    )
    return (
        grad_input.to(x.dtype) if need_input else None,
        grad_weight.to(weight.dtype) if needs[1] else None,
        grad_bias.to(weight.dtype) if needs[2] else None,
    )


@dataclass
class LayerCall:
    """One call of a covered layer, as its hook saw it: what the layer's backward needs."""

    name: str
    module: nn.Module
    weight: Tensor
    """The weight the forward used (detached), for rules that read it on the way back."""
    output: Tensor | None = None
    """Handed from the hook to :class:`LocalGradient`'s forward, then dropped."""
    feedback: Tensor | None = None
    """A matrix the rule fixed for this call in the forward pass (sign symmetry's ``V``)."""
    forward_pass: object = None
    """The model-level forward pass this call belongs to (direct feedback alignment)."""


InputError = Callable[[LayerCall, Tensor, Tensor], Tensor | None]
"""``(call, x, g) -> error into x`` (or ``None``): the one thing a rule decides per layer."""


class LocalGradient(torch.autograd.Function):
    """Identity on the covered layer's output; backward: local ``dW``, ``db``, and the rule's
    error for the input (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, call: LayerCall,
                input_error: InputError) -> Tensor:  # fmt: skip
        output, call.output = call.output, None
        ctx.save_for_backward(x)
        ctx.call, ctx.input_error = call, input_error
        ctx.has_bias = bias is not None
        return output.detach()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        call: LayerCall = ctx.call
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        _, grad_weight, grad_bias = local_gradients(
            call.module, x, grad_output, call.weight, None, (False, need_w, need_b and ctx.has_bias)
        )
        grad_input = ctx.input_error(call, x, grad_output) if need_x else None
        return grad_input, grad_weight, grad_bias, None, None


def feedback_error(call: LayerCall, x: Tensor, g: Tensor, feedback: Tensor) -> Tensor:
    """The error ``g`` sends to ``x`` through ``feedback`` (of the weight's shape)."""
    grad_input, _, _ = local_gradients(
        call.module, x, g, call.weight, feedback, (True, False, False)
    )
    return grad_input
