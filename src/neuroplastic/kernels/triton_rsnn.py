"""GPU kernels for recurrent spiking networks (Triton, the ``triton`` extra): the whole time loop
of ``neurons.lif_step`` in one kernel launch, with the recurrent weights held on chip, its BPTT
adjoint the same way, and the linear recursions over time that e-prop's segmented path needs.

Why fused: at the evidence-accumulation size (batch 64, 100 neurons, 2,250 steps) one step is a
few thousand multiply-adds, far less than the cost of launching the ~30 kernels an eager PyTorch
step needs, so every SNN library written as a Python time loop is bound by launches, not
arithmetic. The input projection ``W_in x^t`` has no recurrence and stays one matrix product
before the loop; everything recurrent runs inside one program per block of batch rows, which
keeps ``W_rec`` on chip (in shared memory, read into registers each step) and the neurons' state
in registers for all ``T`` steps. Networks wider than ``RESIDENT_WIDTH`` cannot hold ``W_rec`` on
chip; their kernels stream it in tiles every step (from the L2 cache) and keep the state in
global memory, still one launch for the whole loop.

Equations (those of ``neurons.lif`` and ``kernels.numba_rsnn``)::

    a^t = rho a^{t-1} + z^{t-1}
    v^t = alpha v^{t-1} + I^t + W_rec z^{t-1} - z^{t-1} v_th
    x^t = (v^t - v_th - beta a^t) / v_th;  z^t = [x^t > 0] and not refractory
    psi^t = (gamma max(0, 1 - |x^t|)) / v_th, 0 when refractory

and the adjoint of ``kernels.rsnn_functions``. Widths and batch sizes need not be powers of two:
blocks are padded and masked (a padded neuron has no input, no weights and never spikes).
Matrix products use IEEE float32 (not TF32), and the kernels are compiled without fusing
multiplies and adds (``enable_fp_fusion=False``), so that the arithmetic is the PyTorch
reference's, operation for operation (float32 division on the GPU may still differ from IEEE by
an ulp: spike decisions, a sign, are unaffected; ``psi`` may differ in its last bits).
Offsets into the ``(T, batch, n)`` arrays are 64-bit, for trials past 2**31 elements.

Without a GPU, Triton runs these kernels on the CPU when ``TRITON_INTERPRET=1`` is set before
this module is imported: that is how the tests check them against the reference
(``tests/test_triton_kernels.py``), at small sizes.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

ROWS_PER_PROGRAM = 16
"""Batch rows per program (a ``tl.dot`` operand's row count)."""
RESIDENT_WIDTH = 128
"""Up to this many neurons (padded to a power of two) ``W_rec`` stays on chip for the whole
loop: 64 KiB of float32 weights (128 KiB of float64) in a program's shared memory, which fits
an H100's or A100's."""
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
        t64 = tl.cast(t, tl.int64)  # offsets past 2**31 elements at long trials
        drive = tl.load(current + t64 * plane + at, mask=mask, other=0.0)
        if RECURRENT:
            drive += tl.dot(z, w, input_precision="ieee")
        a = rho * a + z
        v = alpha * v + drive - z * v_th
        distance = (v - (v_th + beta * a)) / v_th
        ready = refractory <= zero
        z = tl.where((distance > 0.0) & ready, one, zero)
        psi = tl.where(ready, (dampening * tl.maximum(zero, one - tl.abs(distance))) / v_th, zero)
        refractory = tl.where(z > zero, n_refractory, tl.maximum(refractory - one, zero))
        tl.store(spikes_ptr + t64 * plane + at, z, mask=mask)
        tl.store(psi_ptr + t64 * plane + at, psi, mask=mask)
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
        t64 = tl.cast(t, tl.int64)
        gz = tl.load(grad_spikes + t64 * plane + at, mask=mask, other=0.0)
        if RECURRENT:
            gz += tl.dot(gv, w, input_precision="ieee")
        if ADAPTIVE:
            gz += ga
        if not DETACH_RESET:
            gz -= v_th * gv
        through = tl.load(psi_ptr + t64 * plane + at, mask=mask, other=0.0) * gz
        gv = through + alpha * gv
        if ADAPTIVE:
            ga = rho * ga - beta * through
        tl.store(grad_current + t64 * plane + at, gv, mask=mask)


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
        t64 = tl.cast(t, tl.int64)
        for j0 in range(0, n, TILE):
            cols = j0 + tl.arange(0, TILE)
            col_ok = cols < n
            mask = row_ok[:, None] & col_ok[None, :]
            at = rows[:, None] * n + cols[None, :]
            drive = tl.load(current + t64 * plane + at, mask=mask, other=0.0)
            if RECURRENT:
                recurrent = tl.zeros((ROWS, TILE), dtype=drive.dtype)
                for i0 in range(0, n, TILE):
                    pre = i0 + tl.arange(0, TILE)
                    pre_ok = pre < n
                    z_pre = tl.load(
                        z_history + t64 * plane + rows[:, None] * n + pre[None, :],
                        mask=row_ok[:, None] & pre_ok[None, :], other=0.0,
                    )  # fmt: skip
                    w = tl.load(
                        w_rec_t + pre[:, None] * n + cols[None, :],
                        mask=pre_ok[:, None] & col_ok[None, :], other=0.0,
                    )  # fmt: skip
                    recurrent += tl.dot(z_pre, w, input_precision="ieee")
                drive += recurrent
            z = tl.load(z_history + t64 * plane + at, mask=mask, other=0.0)
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
            tl.store(z_history + (t64 + 1) * plane + at, z, mask=mask)
            tl.store(psi_ptr + t64 * plane + at, psi, mask=mask)
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
        t64 = tl.cast(t, tl.int64)
        for j0 in range(0, n, TILE):
            cols = j0 + tl.arange(0, TILE)
            col_ok = cols < n
            mask = row_ok[:, None] & col_ok[None, :]
            at = rows[:, None] * n + cols[None, :]
            gz = tl.load(grad_spikes + t64 * plane + at, mask=mask, other=0.0)
            if RECURRENT:
                for i0 in range(0, n, TILE):
                    post = i0 + tl.arange(0, TILE)
                    post_ok = post < n
                    gv_post = tl.load(
                        gv_history + (t64 + 1) * plane + rows[:, None] * n + post[None, :],
                        mask=row_ok[:, None] & post_ok[None, :], other=0.0,
                    )  # fmt: skip
                    w = tl.load(
                        w_rec + post[:, None] * n + cols[None, :],
                        mask=post_ok[:, None] & col_ok[None, :], other=0.0,
                    )  # fmt: skip
                    gz += tl.dot(gv_post, w, input_precision="ieee")
            gv = tl.load(gv_history + (t64 + 1) * plane + at, mask=mask, other=0.0)
            if ADAPTIVE:
                ga = tl.load(ga_ptr + at, mask=mask, other=0.0)
                gz += ga
            if not DETACH_RESET:
                gz -= v_th * gv
            through = tl.load(psi_ptr + t64 * plane + at, mask=mask, other=0.0) * gz
            tl.store(gv_history + t64 * plane + at, through + alpha * gv, mask=mask)
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
        t64 = tl.cast(t, tl.int64)
        s = tl.load(signal + t64 * columns + cols, mask=mask, other=0.0)
        if FACTOR_PER_STEP:
            f = tl.load(factor_ptr + t64 * columns + cols, mask=mask, other=0.0)
        else:
            f = tl.load(factor_ptr)
        if SHIFTED:
            tl.store(out + t64 * columns + cols, acc, mask=mask)
            acc = s + f * acc
        else:
            acc = f * acc + s
            tl.store(out + t64 * columns + cols, acc, mask=mask)
    tl.store(last + cols, acc, mask=mask)


def _constants(like: torch.Tensor, *values: float) -> torch.Tensor:
    """Scalars as a tensor of the data's dtype: a float argument would reach the kernel as
    float32, which float64 references would notice."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _warps(width: int, dtype: torch.dtype) -> int:
    """Warps per program for a resident block of ``width`` neurons: enough threads that the
    per-step product does not spill registers (checked by compiling for sm_90 with ptxas:
    float32 at 128 spills below 32 warps, float64 at 128 not from 8)."""
    if width <= 32:
        return 4
    if width == 64 or dtype == torch.float64:
        return 8
    return 32


TILED_WARPS = 8
"""Warps per program of the tiled kernels (no spills at 64-wide tiles, by the same check)."""


def _on_device(tensor: torch.Tensor):
    """Triton launches on the current CUDA device, not the tensors': make it theirs."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def _check_state(current: torch.Tensor, *state: torch.Tensor) -> None:
    """The kernels write the state in place through raw pointers: it must match exactly."""
    k, batch, n = current.shape
    for tensor in state:
        if tensor.shape != (batch, n) or tensor.dtype != current.dtype:
            raise ValueError(
                f"state tensors must be ({batch}, {n}) {current.dtype}, got "
                f"{tuple(tensor.shape)} {tensor.dtype}"
            )
        if not tensor.is_contiguous() or tensor.device != current.device:
            raise ValueError("state tensors must be contiguous and on the currents' device")


def _grid(batch: int, n: int = 1, width: int = 1) -> tuple[int, int]:
    return (triton.cdiv(batch, ROWS_PER_PROGRAM), triton.cdiv(n, width))


def _resident_width(n: int, recurrent: bool, tile: int | None) -> int | None:
    """The block width of the resident kernels, or None where the network is too
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
    ``RESIDENT_WIDTH`` neurons the weights stay on chip; wider networks (or a given ``tile``)
    stream ``W_rec`` in ``tile``-wide blocks."""
    k, batch, n = current.shape
    current = current.contiguous()
    _check_state(current, v, z, a, refractory)
    constants = _constants(current, alpha, v_th, n_refractory, rho, dampening)
    beta = beta.to(current).contiguous()
    if beta.shape != (n,):
        raise ValueError(f"beta must be ({n},), got {tuple(beta.shape)}")
    psi = torch.empty_like(current)
    recurrent = w_rec is not None
    # not read without recurrence
    w_rec_t = w_rec.to(current).T.contiguous() if recurrent else current
    width = _resident_width(n, recurrent, tile)
    with _on_device(current):
        if width is not None:
            spikes = torch.empty_like(current)
            _lif_forward_kernel[_grid(batch, n, width)](
                current, w_rec_t, beta, v, z, a, refractory, spikes, psi, constants,
                k, batch, n, RECURRENT=recurrent, ROWS=ROWS_PER_PROGRAM, WIDTH=width,
                num_warps=_warps(width, current.dtype), enable_fp_fusion=False,
            )  # fmt: skip
            return spikes, psi
        z_history = torch.empty((k + 1, batch, n), dtype=current.dtype, device=current.device)
        z_history[0] = z
        _lif_forward_tiled_kernel[_grid(batch)](
            current, w_rec_t, beta, v, a, refractory, z_history, psi, constants,
            k, batch, n, RECURRENT=recurrent, ROWS=ROWS_PER_PROGRAM, TILE=tile or TILE_WIDTH,
            num_warps=TILED_WARPS, enable_fp_fusion=False,
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
    grad_spikes, psi = grad_spikes.to(psi).contiguous(), psi.contiguous()
    w_rec = psi if w_rec is None else w_rec.to(psi).contiguous()  # not read without recurrence
    width = _resident_width(n, flags["RECURRENT"], tile)
    with _on_device(psi):
        if width is not None:
            grad_current = torch.empty_like(psi)
            _lif_adjoint_kernel[_grid(batch, n, width)](
                grad_spikes, psi, w_rec, beta, grad_current, constants, k, batch, n, **flags,
                ROWS=ROWS_PER_PROGRAM, WIDTH=width, num_warps=_warps(width, psi.dtype),
                enable_fp_fusion=False,
            )  # fmt: skip
            return grad_current
        gv_history = torch.zeros((k + 1, batch, n), dtype=psi.dtype, device=psi.device)
        ga = torch.zeros((batch, n), dtype=psi.dtype, device=psi.device)
        _lif_adjoint_tiled_kernel[_grid(batch)](
            grad_spikes, psi, w_rec, beta, gv_history, ga, constants, k, batch, n, **flags,
            ROWS=ROWS_PER_PROGRAM, TILE=tile or TILE_WIDTH, num_warps=TILED_WARPS,
            enable_fp_fusion=False,
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
    if initial.shape != signal.shape[1:]:
        raise ValueError(f"initial must be {tuple(signal.shape[1:])}, got {tuple(initial.shape)}")
    per_step = isinstance(factor, torch.Tensor)
    if per_step and factor.shape != signal.shape:
        raise ValueError(f"factor must be a number or {tuple(signal.shape)}")
    factors = factor.to(signal).contiguous() if per_step else _constants(signal, factor)
    out, last = torch.empty_like(signal), torch.empty_like(signal[0])
    block = min(1024, _width(columns))
    with _on_device(signal):
        _scan_kernel[(triton.cdiv(columns, block),)](
            signal, factors, initial.to(signal).contiguous(), out, last, k, columns,
            REVERSE=reverse, SHIFTED=shifted, FACTOR_PER_STEP=per_step, BLOCK=block,
            enable_fp_fusion=False,
        )  # fmt: skip
    return out, last
