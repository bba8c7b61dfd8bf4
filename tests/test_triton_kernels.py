"""The fused Triton kernels (``kernels.triton_rsnn``) against the PyTorch reference: in Triton's
interpreter on the CPU (small sizes), on the GPU where there is one. Sizes are deliberately not
powers of two, so the padding and masking are exercised."""

import pytest
import torch

pytest.importorskip("triton")

from neuroplastic.credit.eprop import EProp, adaptation_weights, reverse_leaky_sum  # noqa: E402
from neuroplastic.kernels import resolve_backend, triton_rsnn  # noqa: E402
from neuroplastic.models.rsnn import RecurrentLIF  # noqa: E402
from neuroplastic.neurons.lif import pseudo_derivative_of  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference_loop(model, x):
    """Spikes, pseudo-derivatives and final state of the step functions, ``(T, batch, n)``."""
    batch, steps, _ = x.shape
    state, y = model.initial_state(batch), torch.zeros(batch, model.n_out, dtype=x.dtype)
    spikes, psis = [], []
    with torch.no_grad():
        for t in range(steps):
            before = state
            z, state, y = model.step(x[:, t], state, y)
            spikes.append(z)
            psis.append(pseudo_derivative_of(before, state, model.neuron, model.dampening))
    return torch.stack(spikes), torch.stack(psis), state


@pytest.mark.parametrize("tile", [None, 16])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_fused_time_loop_equals_the_step_functions(dtype, tile):
    """LIF and ALIF neurons with refractoriness, batch 19 over two programs, 23 neurons in a
    block of 32 (``tile`` None: resident in registers) or in two tiles of 16 (the wide-network
    kernel): the same spikes, and pseudo-derivatives and state to rounding."""
    gen = torch.Generator().manual_seed(0)
    model = RecurrentLIF(7, 23, 2, n_adaptive=9, tau_a=50.0, refractory=3, v_th=0.4,
                         generator=gen, backend="torch").to(dtype)  # fmt: skip
    x = (torch.rand(19, 60, 7, generator=gen) < 0.25).to(dtype)
    expected_spikes, expected_psi, expected_state = reference_loop(model, x)
    assert expected_spikes.sum() > 100 and (expected_state.refractory > 0).any()

    current = (x.transpose(0, 1) @ model.w_in.detach().T).to(DEVICE)
    state = [t.to(DEVICE) for t in model.initial_state(19)]
    spikes, psi = triton_rsnn.lif_segment(
        current, model.recurrent_weights().detach().to(DEVICE), *state, model.alpha,
        model.v_th, float(model.refractory), model.beta.to(DEVICE), model.rho, model.dampening,
        tile=tile,
    )  # fmt: skip
    assert torch.equal(spikes.cpu(), expected_spikes)
    tolerance = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"atol": 1e-5}
    assert torch.allclose(psi.cpu(), expected_psi, **tolerance)
    for got, expected in zip(state, expected_state, strict=True):
        assert torch.allclose(got.cpu(), expected, **tolerance)


@pytest.mark.parametrize("detach_reset", [True, False])
def test_the_fused_bptt_equals_autograd_through_the_steps(detach_reset):
    """The fused forward and adjoint kernels behind ``RecurrentLIF(backend="triton")`` against
    autograd through the step functions, float64: outputs, and every weight's gradient."""
    gen = torch.Generator().manual_seed(2)
    options = {"n_adaptive": 6, "tau_a": 40.0, "beta": 0.3, "refractory": 2, "v_th": 0.4,
               "tau_out": 15.0, "detach_reset": detach_reset}  # fmt: skip
    reference = RecurrentLIF(10, 17, 3, generator=gen, backend="torch", **options).double()
    fused = RecurrentLIF(10, 17, 3, backend="triton", **options).double().to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    x = (torch.rand(5, 50, 10, generator=gen, dtype=torch.float64) < 0.3).double()
    target = torch.randn(5, 50, 3, generator=gen, dtype=torch.float64)
    results = []
    for model in (reference, fused):
        device = next(model.parameters()).device
        y, z = model(x.to(device))
        loss = (y - target.to(device)).pow(2).sum() + 0.7 * (z.mean((0, 1)) - 0.05).pow(2).sum()
        loss.backward()
        grads = {n: p.grad.cpu() for n, p in model.named_parameters()}
        results.append((y.detach().cpu(), z.detach().cpu(), grads))
    (y_ref, z_ref, expected), (y, z, grads) = results
    assert z_ref.sum() > 30
    assert torch.equal(z, z_ref)
    assert torch.allclose(y, y_ref, rtol=1e-12)
    for name, value in expected.items():
        assert value.abs().sum() > 0, name
        assert torch.allclose(grads[name], value, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("detach_reset", [True, False])
def test_the_wide_adjoint_kernel_equals_the_recursion_in_torch(detach_reset):
    """The adjoint over tiles of 16 (23 neurons) and resident, against the recursion written in
    PyTorch that the Numba path uses, float64, with adaptation and refractory zeros in psi."""
    from neuroplastic.kernels.rsnn_functions import _adjoint_in_torch

    gen = torch.Generator().manual_seed(4)
    grad_spikes = torch.randn(30, 19, 23, generator=gen, dtype=torch.float64)
    psi = torch.rand(30, 19, 23, generator=gen, dtype=torch.float64) * (
        torch.rand(30, 19, 23, generator=gen) < 0.7
    )
    w_rec = torch.randn(23, 23, generator=gen, dtype=torch.float64) / 5
    beta = torch.cat([torch.zeros(13), torch.full((10,), 0.4)]).double()
    constants = (0.9, 0.5, 0.97, detach_reset)
    expected = _adjoint_in_torch(grad_spikes, psi, w_rec, beta, *constants)
    for tile in (16, None):
        got = triton_rsnn.lif_adjoint(
            grad_spikes.to(DEVICE), psi.to(DEVICE), w_rec.to(DEVICE), beta.to(DEVICE),
            *constants, tile=tile,
        )  # fmt: skip
        assert torch.allclose(got.cpu(), expected, rtol=1e-12, atol=1e-13), tile


@pytest.mark.parametrize("tile", [None, 16])
def test_without_recurrent_weights_the_kernels_run_a_feed_forward_layer(tile):
    """``w_rec`` None: the same spikes and adjoint as a zero recurrent matrix."""
    gen = torch.Generator().manual_seed(5)
    current = (torch.randn(25, 19, 23, generator=gen, dtype=torch.float64) * 0.5).to(DEVICE)
    beta = torch.zeros(23, dtype=torch.float64, device=DEVICE)
    constants = (0.9, 0.5, 2.0, beta, 0.97, 0.3)
    results = []
    for w_rec in (None, torch.zeros(23, 23, dtype=torch.float64, device=DEVICE)):
        state = [torch.zeros(19, 23, dtype=torch.float64, device=DEVICE) for _ in range(4)]
        spikes, psi = triton_rsnn.lif_segment(current, w_rec, *state, *constants, tile=tile)
        grad = triton_rsnn.lif_adjoint(
            torch.ones_like(psi), psi, w_rec, beta, 0.9, 0.5, 0.97, True, tile=tile
        )
        results.append((spikes, psi, grad))
    assert results[0][0].sum() > 50
    for got, expected in zip(*results, strict=True):
        assert torch.allclose(got, expected, rtol=1e-14, atol=0)


def test_the_scan_kernel_equals_the_loops():
    """Forwards from an initial value, backwards, and backwards one step late with a factor per
    element: the three linear recursions the e-prop and readout paths use."""
    gen = torch.Generator().manual_seed(1)
    signal = torch.randn(30, 3, 7, generator=gen, dtype=torch.float64)
    factor = torch.rand(30, 3, 7, generator=gen, dtype=torch.float64)
    initial = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    expected, acc = [], initial
    for t in range(30):
        acc = 0.9 * acc + signal[t]
        expected.append(acc)
    forward, last = triton_rsnn.scan(signal.to(DEVICE), 0.9, initial.to(DEVICE))
    assert torch.allclose(forward.cpu(), torch.stack(expected), rtol=1e-14)
    assert torch.allclose(last.cpu(), expected[-1], rtol=1e-14)
    backward = reverse_leaky_sum(signal.to(DEVICE), 0.8, "triton").cpu()
    assert torch.allclose(backward, reverse_leaky_sum(signal, 0.8, "torch"), rtol=1e-14)
    fused = adaptation_weights(signal.to(DEVICE), factor.to(DEVICE), "triton")
    for got, want in zip(fused, adaptation_weights(signal, factor, "torch"), strict=True):
        assert torch.allclose(got.cpu(), want, rtol=1e-14)


@pytest.mark.parametrize("segment", [1, 9, 500])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_eprop_with_the_fused_kernels_equals_the_reference_loop(segment, loss):
    """e-prop's segmented path on the fused kernels against the reference loop (every trace
    advanced every step): recurrence, ALIF, refractoriness, the rate penalty, float64."""
    gen = torch.Generator().manual_seed(3)
    model = RecurrentLIF(6, 11, 2, n_adaptive=4, tau_a=30.0, refractory=2, v_th=0.3,
                         generator=gen).double()  # fmt: skip
    x = (torch.rand(3, 40, 6, generator=gen) < 0.3).double()
    target = torch.randn(3, 40, 2, generator=gen, dtype=torch.float64)
    if loss == "cross_entropy":
        target = torch.tensor([1, 0, 1])
    options = {"loss": loss, "regularisation": 0.3, "target_rate": 0.05}
    expected, expected_loss = EProp(model, implementation="reference", **options).gradients(
        x, target
    )
    fused_model = model.to(DEVICE)
    rule = EProp(fused_model, segment=segment, backend="triton", **options)
    grads, fused_loss = rule.gradients(x.to(DEVICE), target.to(DEVICE))
    assert fused_loss.item() == pytest.approx(expected_loss.item(), rel=1e-12)
    for name, value in expected.items():
        assert value.abs().sum() > 0, name
        assert torch.allclose(grads[name].cpu(), value.cpu(), rtol=1e-10, atol=1e-13), name


def test_triton_is_chosen_on_a_gpu_and_refused_on_a_cpu_without_the_interpreter(monkeypatch):
    assert resolve_backend("auto", "cuda:0") == "triton"
    assert resolve_backend("triton", "cuda:0") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="runs on a CUDA GPU"):
        resolve_backend("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", "cpu") == "triton"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="full sizes need a GPU")
@pytest.mark.parametrize("n_rec, n_adaptive", [(100, 50), (600, 0)])
def test_at_full_size_on_a_gpu_the_fused_bptt_equals_the_step_functions(n_rec, n_adaptive):
    """The evidence-accumulation size (resident kernels) and a 600-neuron network (streamed
    tiles), T 2250 / 1000, float64 on the GPU: the same spikes and gradients as autograd
    through the step functions on the same GPU."""
    steps = 2250 if n_rec == 100 else 1000
    gen = torch.Generator().manual_seed(6)
    options = {"n_adaptive": n_adaptive, "refractory": 5, "detach_reset": False}
    reference = RecurrentLIF(40, n_rec, 2, generator=gen, backend="torch", **options)
    reference = reference.double().cuda()
    fused = RecurrentLIF(40, n_rec, 2, backend="triton", **options).double().cuda()
    fused.load_state_dict(reference.state_dict())
    x = (torch.rand(64, steps, 40, generator=gen) < 0.02).double().cuda()
    results = []
    for model in (reference, fused):
        y, z = model(x)
        (y.pow(2).sum() + (z.mean((0, 1)) - 0.01).pow(2).sum()).backward()
        results.append((z.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (z_ref, expected), (z, grads) = results
    assert torch.equal(z, z_ref) and z_ref.sum() > 1000
    for name, value in expected.items():
        assert torch.allclose(grads[name], value, rtol=1e-9, atol=1e-11), name


def test_the_kernels_compile_for_an_h100_without_spilling():
    """Triton's full pipeline for sm_90, down to ptxas (bundled with Triton), in a process
    without the interpreter: the kernels type-check and compile for a GPU, and at the chosen
    warps per program no thread spills more than a few words to its stack."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_compile_check.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5, result.stdout
    for line in lines:
        stack = int(re.search(r"STACK (\d+)", line).group(1))
        assert stack <= 64, line
