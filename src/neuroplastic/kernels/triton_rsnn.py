"""GPU kernels for recurrent spiking networks (Triton, the ``triton`` extra): the whole time loop
of ``neurons.lif_step`` in one kernel launch, with the recurrent weights held on chip, its BPTT
adjoint the same way, and the linear recursions over time that e-prop's segmented path needs.

Why fused: at the evidence-accumulation size (batch 64, 100 neurons, 2,250 steps) one step is a
few thousand multiply-adds, far less than the cost of launching the ~30 kernels an eager PyTorch
step needs, so every SNN library written as a Python time loop is bound by launches, not
arithmetic. The input projection ``W_in x^t`` has no recurrence and stays one matrix product
before the loop; everything recurrent runs inside one program per block of batch rows, which
keeps ``W_rec`` (and the neurons' state) in registers for all ``T`` steps. Networks wider than
``RESIDENT_WIDTH`` cannot hold ``W_rec`` on chip; their kernels stream it in tiles every step
(from the L2 cache) and keep the state in global memory, still one launch for the whole loop.

Equations (those of ``neurons.lif`` and ``kernels.numba_rsnn``)::

    a^t = rho a^{t-1} + z^{t-1}
    v^t = alpha v^{t-1} + I^t + W_rec z^{t-1} - z^{t-1} v_th
    x^t = (v^t - v_th - beta a^t) / v_th;  z^t = [x^t > 0] and not refractory
    psi^t = (gamma max(0, 1 - |x^t|)) / v_th, 0 when refractory

and the adjoint of ``kernels.rsnn_functions``. Widths and batch sizes need not be powers of two:
blocks are padded and masked (a padded neuron has no input, no weights and never spikes).
Matrix products use IEEE float32 (not TF32) so that spikes match the PyTorch reference.

Without a GPU, Triton runs these kernels on the CPU when ``TRITON_INTERPRET=1`` is set before
this module is imported: that is how the tests check them against the reference
(``tests/test_triton_kernels.py``), at small sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS_PER_PROGRAM = 16
"""Batch rows per program: the smallest side ``tl.dot`` accepts."""
RESIDENT_WIDTH = 128
"""Up to this many neurons (padded to a power of two) ``W_rec`` and the state stay in
registers for the whole loop: 64 KiB of float32 weights per program."""
TILE_WIDTH = 64
"""Block width of the wide-network kernels, which stream ``W_rec`` from the L2 cache."""


def _width(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@triton.jit
def _lif_forward_kernel(
    current, w_rec_t, beta_ptr, v_ptr, z_ptr, a_ptr, refractory_ptr, spikes_ptr, psi_ptr,
    constants, steps, batch, n,
    RECURRENT: tl.constexpr, ROWS: tl.constexpr, WIDTH: tl.constexpr,
):  # fmt: skip
    alpha, v_th, n_refractory = tl.load(constants), tl.load(constants + 1), tl.load(constants + 2)
    rho, dampening = tl.load(constants + 3), tl.load(constants + 4)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * WIDTH + tl.arange(0, WIDTH)  # one block of neurons if RECURRENT
    neuron = cols < n
    mask = (rows < batch)[:, None] & neuron[None, :]
    at = rows[:, None] * n + cols[None, :]  # (ROWS, WIDTH) offsets into a (batch, n) plane
    if RECURRENT:
        w = tl.load(  # w[i, j]: what a spike of neuron i adds to neuron j
            w_rec_t + cols[:, None] * n + cols[None, :],
            mask=neuron[:, None] & neuron[None, :], other=0.0,
        )  # fmt: skip
    beta = tl.load(beta_ptr + cols, mask=neuron, other=0.0)[None, :]
    v = tl.load(v_ptr + at, mask=mask, other=0.0)
    z = tl.load(z_ptr + at, mask=mask, other=0.0)
    a = tl.load(a_ptr + at, mask=mask, other=0.0)
    refractory = tl.load(refractory_ptr + at, mask=mask, other=0.0)
    plane = batch * n
    zero, one = tl.zeros_like(v), tl.full(v.shape, 1.0, v.dtype)
    for t in range(steps):
        drive = tl.load(current + t * plane + at, mask=mask, other=0.0)
        if RECURRENT:
            drive += tl.dot(z, w, input_precision="ieee")
        a = rho * a + z
        v = alpha * v + drive - z * v_th
        distance = (v - (v_th + beta * a)) / v_th
        ready = refractory <= zero
        z = tl.where((distance > 0.0) & ready, one, zero)
        psi = tl.where(ready, (dampening * tl.maximum(zero, one - tl.abs(distance))) / v_th, zero)
        refractory = tl.where(z > zero, n_refractory, tl.maximum(refractory - one, zero))
        tl.store(spikes_ptr + t * plane + at, z, mask=mask)
        tl.store(psi_ptr + t * plane + at, psi, mask=mask)
    tl.store(v_ptr + at, v, mask=mask)
    tl.store(z_ptr + at, z, mask=mask)
    tl.store(a_ptr + at, a, mask=mask)
    tl.store(refractory_ptr + at, refractory, mask=mask)


@triton.jit
def _lif_adjoint_kernel(
    grad_spikes, psi_ptr, w_rec, beta_ptr, grad_current, constants, steps, batch, n,
    RECURRENT: tl.constexpr, ADAPTIVE: tl.constexpr, DETACH_RESET: tl.constexpr,
    ROWS: tl.constexpr, WIDTH: tl.constexpr,
):  # fmt: skip
    alpha, v_th, rho = tl.load(constants), tl.load(constants + 1), tl.load(constants + 3)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * WIDTH + tl.arange(0, WIDTH)  # one block of neurons if RECURRENT
    neuron = cols < n
    mask = (rows < batch)[:, None] & neuron[None, :]
    at = rows[:, None] * n + cols[None, :]
    if RECURRENT:
        w = tl.load(  # w[j, i] = W_rec[j, i]: gv @ w sends the adjoint to the presynaptic side
            w_rec + cols[:, None] * n + cols[None, :],
            mask=neuron[:, None] & neuron[None, :], other=0.0,
        )  # fmt: skip
    beta = tl.load(beta_ptr + cols, mask=neuron, other=0.0)[None, :]
    plane = batch * n
    gv = tl.zeros((ROWS, WIDTH), dtype=beta.dtype)
    ga = tl.zeros((ROWS, WIDTH), dtype=beta.dtype)
    for step in range(steps):
        t = steps - 1 - step
        gz = tl.load(grad_spikes + t * plane + at, mask=mask, other=0.0)
        if RECURRENT:
            gz += tl.dot(gv, w, input_precision="ieee")
        if ADAPTIVE:
            gz += ga
        if not DETACH_RESET:
            gz -= v_th * gv
        through = tl.load(psi_ptr + t * plane + at, mask=mask, other=0.0) * gz
        gv = through + alpha * gv
        if ADAPTIVE:
            ga = rho * ga - beta * through
        tl.store(grad_current + t * plane + at, gv, mask=mask)


@triton.jit
def _lif_forward_tiled_kernel(
    current, w_rec_t, beta_ptr, v_ptr, a_ptr, refractory_ptr, z_history, psi_ptr,
    constants, steps, batch, n,
    RECURRENT: tl.constexpr, ROWS: tl.constexpr, TILE: tl.constexpr,
):  # fmt: skip
    """The wide-network form of ``_lif_forward_kernel``: ``W_rec`` is streamed tile by tile
    each step (from the L2 cache) and the state lives in global memory. ``z_history``
    ``(k + 1, batch, n)`` holds the spikes before the segment in its first plane, so step ``t``
    reads plane ``t`` and writes plane ``t + 1``."""
    alpha, v_th, n_refractory = tl.load(constants), tl.load(constants + 1), tl.load(constants + 2)
    rho, dampening = tl.load(constants + 3), tl.load(constants + 4)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < batch
    plane = batch * n
    for t in range(steps):
        for j0 in range(0, n, TILE):
            cols = j0 + tl.arange(0, TILE)
            col_ok = cols < n
            mask = row_ok[:, None] & col_ok[None, :]
            at = rows[:, None] * n + cols[None, :]
            drive = tl.load(current + t * plane + at, mask=mask, other=0.0)
            if RECURRENT:
                recurrent = tl.zeros((ROWS, TILE), dtype=drive.dtype)
                for i0 in range(0, n, TILE):
                    pre = i0 + tl.arange(0, TILE)
                    pre_ok = pre < n
                    z_pre = tl.load(
                        z_history + t * plane + rows[:, None] * n + pre[None, :],
                        mask=row_ok[:, None] & pre_ok[None, :], other=0.0,
                    )  # fmt: skip
                    w = tl.load(
                        w_rec_t + pre[:, None] * n + cols[None, :],
                        mask=pre_ok[:, None] & col_ok[None, :], other=0.0,
                    )  # fmt: skip
                    recurrent += tl.dot(z_pre, w, input_precision="ieee")
                drive += recurrent
            z = tl.load(z_history + t * plane + at, mask=mask, other=0.0)
            v = tl.load(v_ptr + at, mask=mask, other=0.0)
            a = tl.load(a_ptr + at, mask=mask, other=0.0)
            refractory = tl.load(refractory_ptr + at, mask=mask, other=0.0)
            beta = tl.load(beta_ptr + cols, mask=col_ok, other=0.0)[None, :]
            zero, one = tl.zeros_like(v), tl.full(v.shape, 1.0, v.dtype)
            a = rho * a + z
            v = alpha * v + drive - z * v_th
            distance = (v - (v_th + beta * a)) / v_th
            ready = refractory <= zero
            z = tl.where((distance > zero) & ready, one, zero)
            psi = tl.where(
                ready, (dampening * tl.maximum(zero, one - tl.abs(distance))) / v_th, zero
            )
            refractory = tl.where(z > zero, n_refractory, tl.maximum(refractory - one, zero))
            tl.store(z_history + (t + 1) * plane + at, z, mask=mask)
            tl.store(psi_ptr + t * plane + at, psi, mask=mask)
            tl.store(v_ptr + at, v, mask=mask)
            tl.store(a_ptr + at, a, mask=mask)
            tl.store(refractory_ptr + at, refractory, mask=mask)
        tl.debug_barrier()  # this step's spikes, written by all threads, before the next reads


@triton.jit
def _lif_adjoint_tiled_kernel(
    grad_spikes, psi_ptr, w_rec, beta_ptr, gv_history, ga_ptr, constants, steps, batch, n,
    RECURRENT: tl.constexpr, ADAPTIVE: tl.constexpr, DETACH_RESET: tl.constexpr,
    ROWS: tl.constexpr, TILE: tl.constexpr,
):  # fmt: skip
    """The wide-network form of ``_lif_adjoint_kernel``: ``gv_history`` ``(k + 1, batch, n)``,
    zero in its last plane, receives ``gv^t`` in plane ``t``; ``ga`` ``(batch, n)`` is scratch
    (each element only ever needs its own previous value)."""
    alpha, v_th, rho = tl.load(constants), tl.load(constants + 1), tl.load(constants + 3)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < batch
    plane = batch * n
    for step in range(steps):
        t = steps - 1 - step
        for j0 in range(0, n, TILE):
            cols = j0 + tl.arange(0, TILE)
            col_ok = cols < n
            mask = row_ok[:, None] & col_ok[None, :]
            at = rows[:, None] * n + cols[None, :]
            gz = tl.load(grad_spikes + t * plane + at, mask=mask, other=0.0)
            if RECURRENT:
                for i0 in range(0, n, TILE):
                    post = i0 + tl.arange(0, TILE)
                    post_ok = post < n
                    gv_post = tl.load(
                        gv_history + (t + 1) * plane + rows[:, None] * n + post[None, :],
                        mask=row_ok[:, None] & post_ok[None, :], other=0.0,
                    )  # fmt: skip
                    w = tl.load(
                        w_rec + post[:, None] * n + cols[None, :],
                        mask=post_ok[:, None] & col_ok[None, :], other=0.0,
                    )  # fmt: skip
                    gz += tl.dot(gv_post, w, input_precision="ieee")
            gv = tl.load(gv_history + (t + 1) * plane + at, mask=mask, other=0.0)
            if ADAPTIVE:
                ga = tl.load(ga_ptr + at, mask=mask, other=0.0)
                gz += ga
            if not DETACH_RESET:
                gz -= v_th * gv
            through = tl.load(psi_ptr + t * plane + at, mask=mask, other=0.0) * gz
            tl.store(gv_history + t * plane + at, through + alpha * gv, mask=mask)
            if ADAPTIVE:
                beta = tl.load(beta_ptr + cols, mask=col_ok, other=0.0)[None, :]
                tl.store(ga_ptr + at, rho * ga - beta * through, mask=mask)
        tl.debug_barrier()


@triton.jit
def _scan_kernel(
    signal, factor_ptr, initial, out, last, steps, columns,
    REVERSE: tl.constexpr, SHIFTED: tl.constexpr, FACTOR_PER_STEP: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < columns
    acc = tl.load(initial + cols, mask=mask, other=0.0)
    for step in range(steps):
        t = steps - 1 - step if REVERSE else step
        s = tl.load(signal + t * columns + cols, mask=mask, other=0.0)
        if FACTOR_PER_STEP:
            f = tl.load(factor_ptr + t * columns + cols, mask=mask, other=0.0)
        else:
            f = tl.load(factor_ptr)
        if SHIFTED:
            tl.store(out + t * columns + cols, acc, mask=mask)
            acc = s + f * acc
        else:
            acc = f * acc + s
            tl.store(out + t * columns + cols, acc, mask=mask)
    tl.store(last + cols, acc, mask=mask)


def _constants(like: torch.Tensor, *values: float) -> torch.Tensor:
    """Scalars as a tensor of the data's dtype: a float argument would reach the kernel as
    float32, which float64 references would notice."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _grid(batch: int, n: int = 1, width: int = 1) -> tuple[int, int]:
    return (triton.cdiv(batch, ROWS_PER_PROGRAM), triton.cdiv(n, width))


def _resident_width(n: int, recurrent: bool, tile: int | None) -> int | None:
    """The block width of the register-resident kernels, or None where the network is too
    wide for them. Without recurrence neurons are independent: any width, blocks side by side."""
    if not recurrent:
        return tile or min(_width(n), RESIDENT_WIDTH)
    return _width(n) if tile is None and _width(n) <= RESIDENT_WIDTH else None


def lif_segment(
    current: torch.Tensor, w_rec: torch.Tensor | None, v: torch.Tensor, z: torch.Tensor,
    a: torch.Tensor, refractory: torch.Tensor, alpha: float, v_th: float, n_refractory: float,
    beta: torch.Tensor, rho: float, dampening: float, tile: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Advance the network over ``k`` steps: ``current`` ``(k, batch, n)`` the input currents,
    ``w_rec`` ``(n, n)`` (post, pre), the state ``v, z, a, refractory`` ``(batch, n)`` updated in
    place; ``w_rec`` None: no recurrence (a feed-forward layer of LIF neurons, whose blocks of
    neurons run side by side). Returns spikes and pseudo-derivatives ``(k, batch, n)``. Up to
    ``RESIDENT_WIDTH`` neurons the weights and state stay in registers; wider networks (or a
    given ``tile``) stream ``W_rec`` in ``tile``-wide blocks."""
    k, batch, n = current.shape
    current = current.contiguous()
    constants = _constants(current, alpha, v_th, n_refractory, rho, dampening)
    beta = beta.to(current).contiguous()
    psi = torch.empty_like(current)
    recurrent = w_rec is not None
    w_rec_t = w_rec.T.contiguous() if recurrent else current  # not read without recurrence
    width = _resident_width(n, recurrent, tile)
    if width is not None:
        spikes = torch.empty_like(current)
        _lif_forward_kernel[_grid(batch, n, width)](
            current, w_rec_t, beta, v, z, a, refractory, spikes, psi, constants,
            k, batch, n, RECURRENT=recurrent, ROWS=ROWS_PER_PROGRAM, WIDTH=width,
        )  # fmt: skip
        return spikes, psi
    z_history = torch.empty((k + 1, batch, n), dtype=current.dtype, device=current.device)
    z_history[0] = z
    _lif_forward_tiled_kernel[_grid(batch)](
        current, w_rec_t, beta, v, a, refractory, z_history, psi, constants,
        k, batch, n, RECURRENT=recurrent, ROWS=ROWS_PER_PROGRAM, TILE=tile or TILE_WIDTH,
    )  # fmt: skip
    z.copy_(z_history[-1])
    return z_history[1:], psi


def lif_adjoint(
    grad_spikes: torch.Tensor, psi: torch.Tensor, w_rec: torch.Tensor | None, beta: torch.Tensor,
    alpha: float, v_th: float, rho: float, detach_reset: bool, tile: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """The BPTT adjoint of :func:`lif_segment` from rest: ``dL/dI^t`` ``(k, batch, n)`` from
    ``dL/dz^t`` (the spikes' direct gradients) and the stored pseudo-derivatives."""
    k, batch, n = grad_spikes.shape
    beta = beta.to(psi).contiguous()
    constants = _constants(psi, alpha, v_th, 0.0, rho, 0.0)
    flags = {"RECURRENT": w_rec is not None, "ADAPTIVE": bool((beta != 0).any()),
             "DETACH_RESET": bool(detach_reset)}  # fmt: skip
    grad_spikes, psi = grad_spikes.contiguous(), psi.contiguous()
    w_rec = psi if w_rec is None else w_rec.contiguous()  # not read without recurrence
    width = _resident_width(n, flags["RECURRENT"], tile)
    if width is not None:
        grad_current = torch.empty_like(psi)
        _lif_adjoint_kernel[_grid(batch, n, width)](
            grad_spikes, psi, w_rec, beta, grad_current, constants, k, batch, n, **flags,
            ROWS=ROWS_PER_PROGRAM, WIDTH=width,
        )  # fmt: skip
        return grad_current
    gv_history = torch.zeros((k + 1, batch, n), dtype=psi.dtype, device=psi.device)
    ga = torch.zeros((batch, n), dtype=psi.dtype, device=psi.device)
    _lif_adjoint_tiled_kernel[_grid(batch)](
        grad_spikes, psi, w_rec, beta, gv_history, ga, constants, k, batch, n, **flags,
        ROWS=ROWS_PER_PROGRAM, TILE=tile or TILE_WIDTH,
    )  # fmt: skip
    return gv_history[:-1]


def scan(
    signal: torch.Tensor,
    factor: torch.Tensor | float,
    initial: torch.Tensor | None = None,
    reverse: bool = False,
    shifted: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear recursion over the first axis of ``signal`` ``(k, ...)``: forwards
    ``acc = factor acc + signal^t`` (``out^t = acc``) from ``initial``, or backwards
    ``acc = signal^r + factor acc`` from ``initial`` after the last step. ``factor``: a number
    or one per element ``(k, ...)``. ``shifted``: ``out`` holds ``acc`` before each update
    (one step late). Returns ``(out, acc after the whole sweep)``."""
    signal = signal.contiguous()
    k = signal.shape[0]
    columns = signal[0].numel()
    if initial is None:
        initial = signal.new_zeros(signal.shape[1:])
    per_step = isinstance(factor, torch.Tensor)
    factors = factor.to(signal).contiguous() if per_step else _constants(signal, factor)
    out, last = torch.empty_like(signal), torch.empty_like(signal[0])
    block = min(1024, _width(columns))
    _scan_kernel[(triton.cdiv(columns, block),)](
        signal, factors, initial.to(signal).contiguous(), out, last, k, columns,
        REVERSE=reverse, SHIFTED=shifted, FACTOR_PER_STEP=per_step, BLOCK=block,
    )  # fmt: skip
    return out, last
