"""``RecurrentLIF``'s forward pass as autograd Functions with a fast path: the time loop compiled
(``numba_rsnn.lif_segment`` on the CPU, ``triton_rsnn.lif_segment`` on a GPU), the backward pass
through time written out as its adjoint recursion instead of replayed op by op (in PyTorch after
the Numba forward, as one more fused kernel after the Triton one). Tested equal to autograd
through the step functions (``tests/test_kernels.py``, ``tests/test_triton_kernels.py``, float64).

The adjoint of the step of ``neurons.lif`` (``psi`` the pseudo-derivative, 0 when refractory;
``gz`` the total derivative of the loss by the spikes ``z^t``, ``gv``, ``ga`` by ``v^t``, ``a^t``)::

    gz^t = dL/dz^t (direct) + W_rec^T gv^{t+1} + ga^{t+1} - v_th gv^{t+1} [reset differentiated]
    gv^t = psi^t gz^t + alpha gv^{t+1}
    ga^t = -beta psi^t gz^t + rho ga^{t+1}

and the input currents get ``gv^t``, the recurrent weights ``sum_t gv^t z^{t-1}``. What the
backward pass keeps of the forward: the spikes and the pseudo-derivatives, ``(T, batch, n)``
each, nothing else.
"""

from __future__ import annotations

import torch

from neuroplastic.kernels import as_array


def _adjoint_in_torch(grad_spikes, psi, w_rec, beta, alpha, v_th, rho, detach_reset):
    adaptive = bool((beta != 0).any())
    grad_current = torch.empty_like(grad_spikes)
    gv = torch.zeros_like(grad_spikes[0])
    ga = torch.zeros_like(gv)
    for t in reversed(range(grad_spikes.shape[0])):
        gz = grad_spikes[t] if w_rec is None else grad_spikes[t] + gv @ w_rec
        if adaptive:
            gz = gz + ga
        if not detach_reset:
            gz = gz - v_th * gv
        through = psi[t] * gz
        gv = through + alpha * gv
        if adaptive:
            ga = rho * ga - beta * through
        grad_current[t] = gv
    return grad_current


class RecurrentSpikes(torch.autograd.Function):
    """``(current (k, batch, n), w_rec (n, n), beta (n,), neuron constants, backend) -> spikes
    (k, batch, n)`` from rest; differentiable in ``current`` and ``w_rec``. ``backend``:
    ``numba`` or ``triton``. ``w_rec`` None: a feed-forward layer (no recurrence)."""

    @staticmethod
    def forward(
        ctx, current, w_rec, beta, alpha, v_th, refractory, rho, dampening, detach_reset, backend
    ):
        k, batch, n = current.shape
        beta = beta.to(current)
        if backend == "triton":
            from neuroplastic.kernels import triton_rsnn

            state = [current.new_zeros(batch, n) for _ in range(4)]
            spikes, psi = triton_rsnn.lif_segment(
                current, w_rec, *state, alpha, v_th, float(refractory), beta, rho, dampening
            )
        else:
            from neuroplastic.kernels import numba_rsnn

            state = [torch.zeros(batch, n, dtype=current.dtype).numpy() for _ in range(4)]
            numba_rsnn.follow_torch_threads()
            w_rec_t = torch.zeros(n, n, dtype=current.dtype) if w_rec is None else w_rec.T
            spikes, psi = numba_rsnn.lif_segment(
                as_array(current), as_array(w_rec_t), *state, alpha, v_th, float(refractory),
                as_array(beta), rho, dampening,
            )  # fmt: skip
            spikes, psi = torch.from_numpy(spikes), torch.from_numpy(psi)
        ctx.save_for_backward(spikes, psi, w_rec, beta)
        ctx.constants = (alpha, v_th, rho, detach_reset, backend)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        spikes, psi, w_rec, beta = ctx.saved_tensors
        alpha, v_th, rho, detach_reset, backend = ctx.constants
        if backend == "triton":
            from neuroplastic.kernels import triton_rsnn

            adjoint = triton_rsnn.lif_adjoint
        else:
            adjoint = _adjoint_in_torch
        grad_current = adjoint(grad_spikes, psi, w_rec, beta, alpha, v_th, rho, detach_reset)
        grad_w_rec = None
        if w_rec is not None and ctx.needs_input_grad[1]:
            previous = torch.cat([torch.zeros_like(spikes[:1]), spikes[:-1]])  # z^{t-1}
            grad_w_rec = grad_current.flatten(0, 1).T @ previous.flatten(0, 1)
        return grad_current, grad_w_rec, None, None, None, None, None, None, None, None


def leaky_sum(signal, decay, initial, backend, reverse=False):
    """``out^t = decay out^{t-1} + signal^t`` over the first axis from ``initial`` (or, with
    ``reverse``, ``out^t = signal^t + decay out^{t+1}`` from 0 after the last step) by the
    backend's compiled loop."""
    if backend == "triton":
        from neuroplastic.kernels import triton_rsnn

        return triton_rsnn.scan(signal, decay, initial, reverse=reverse)[0]
    from neuroplastic.kernels import numba_rsnn

    if reverse:
        return torch.from_numpy(numba_rsnn.reverse_constant_leaky_sum(as_array(signal), decay))
    if initial is None:
        initial = torch.zeros_like(signal[0])
    return torch.from_numpy(numba_rsnn.leaky_sum(as_array(signal), decay, as_array(initial)))


class LeakySum(torch.autograd.Function):
    """``y^t = decay y^{t-1} + drive^t`` over the first axis from 0, ``drive`` ``(k, batch, m)``;
    its backward is the same sum run backwards."""

    @staticmethod
    def forward(ctx, drive, decay, backend):
        ctx.decay, ctx.backend = decay, backend
        return leaky_sum(drive, decay, None, backend)

    @staticmethod
    def backward(ctx, grad_y):
        return leaky_sum(grad_y, ctx.decay, None, ctx.backend, reverse=True), None, None
