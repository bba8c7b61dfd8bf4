"""``RecurrentLIF``'s forward pass as autograd Functions with a fast path: the time loop compiled
(``numba_rsnn.lif_segment``), the backward pass through time written out as its adjoint
recursion instead of replayed op by op. Tested equal to autograd through the step functions
(``tests/test_kernels.py``, float64).

The adjoint of the step of ``neurons.lif`` (``psi`` the pseudo-derivative, 0 when refractory;
``gz`` the total derivative of the loss by the spikes ``z^t``, ``gv``, ``ga`` by ``v^t``, ``a^t``)::

    gz^t = dL/dz^t (direct) + W_rec^T gv^{t+1} + ga^{t+1} - v_th gv^{t+1} [reset differentiated]
    gv^t = psi^t gz^t + alpha gv^{t+1}
    ga^t = -beta psi^t gz^t + rho ga^{t+1}

and the input currents get ``gv^t``, the recurrent weights ``sum_t gv^t z^{t-1}``.
"""

from __future__ import annotations

import torch

from neuroplastic.kernels import as_array, numba_rsnn


class RecurrentSpikes(torch.autograd.Function):
    """``(current (k, batch, n), w_rec (n, n), beta (n,), neuron constants) -> spikes (k, batch,
    n)`` from rest; differentiable in ``current`` and ``w_rec``."""

    @staticmethod
    def forward(ctx, current, w_rec, beta, alpha, v_th, refractory, rho, dampening, detach_reset):
        k, batch, n = current.shape
        state = [torch.zeros(batch, n, dtype=current.dtype).numpy() for _ in range(4)]
        numba_rsnn.follow_torch_threads()
        spikes, psi = numba_rsnn.lif_segment(
            as_array(current), as_array(w_rec.T), *state, alpha, v_th, float(refractory),
            as_array(beta.to(current.dtype)), rho, dampening,
        )  # fmt: skip
        spikes, psi = torch.from_numpy(spikes), torch.from_numpy(psi)
        ctx.save_for_backward(spikes, psi, w_rec, beta.to(current.dtype))
        ctx.constants = (alpha, v_th, rho, detach_reset)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        spikes, psi, w_rec, beta = ctx.saved_tensors
        alpha, v_th, rho, detach_reset = ctx.constants
        adaptive = bool((beta != 0).any())
        grad_current = torch.empty_like(grad_spikes)
        gv = torch.zeros_like(grad_spikes[0])
        ga = torch.zeros_like(gv)
        for t in reversed(range(grad_spikes.shape[0])):
            gz = grad_spikes[t] + gv @ w_rec
            if adaptive:
                gz = gz + ga
            if not detach_reset:
                gz = gz - v_th * gv
            through = psi[t] * gz
            gv = through + alpha * gv
            if adaptive:
                ga = rho * ga - beta * through
            grad_current[t] = gv
        previous = torch.cat([torch.zeros_like(spikes[:1]), spikes[:-1]])  # z^{t-1}, from rest
        grad_w_rec = grad_current.flatten(0, 1).T @ previous.flatten(0, 1)
        return grad_current, grad_w_rec, None, None, None, None, None, None, None


class LeakySum(torch.autograd.Function):
    """``y^t = decay y^{t-1} + drive^t`` over the first axis from 0, ``drive`` ``(k, batch, m)``;
    its backward is the same sum run backwards."""

    @staticmethod
    def forward(ctx, drive, decay):
        ctx.decay = decay
        initial = torch.zeros(drive.shape[1:], dtype=drive.dtype).numpy()
        return torch.from_numpy(numba_rsnn.leaky_sum(as_array(drive), decay, initial))

    @staticmethod
    def backward(ctx, grad_y):
        grad = numba_rsnn.reverse_constant_leaky_sum(as_array(grad_y), ctx.decay)
        return torch.from_numpy(grad), None
