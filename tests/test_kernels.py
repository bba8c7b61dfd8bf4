"""The compiled CPU loops (``kernels.numba_rsnn``) against the PyTorch code they replace, and the
choice of backend."""

import pytest
import torch

from neuroplastic.credit.eprop import adaptation_weights, reverse_leaky_sum
from neuroplastic.kernels import resolve_backend
from neuroplastic.models.rsnn import RecurrentLIF

numba_rsnn = pytest.importorskip("neuroplastic.kernels.numba_rsnn")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_compiled_time_loop_equals_the_step_functions(dtype):
    """Recurrent LIF and ALIF neurons with refractoriness over 300 steps: the same spikes, and
    the same pseudo-derivatives and final state to rounding."""
    gen = torch.Generator().manual_seed(0)
    model = RecurrentLIF(12, 30, 2, n_adaptive=10, tau_a=50.0, refractory=3, v_th=0.4,
                         generator=gen).to(dtype)  # fmt: skip
    x = (torch.rand(5, 300, 12, generator=gen) < 0.2).to(dtype)
    state = model.initial_state(5)
    spikes, psis = [], []
    with torch.no_grad():
        from neuroplastic.neurons.lif import pseudo_derivative_of

        for t in range(300):
            before = state
            z, state, _ = model.step(x[:, t], state, torch.zeros(5, 2, dtype=dtype))
            spikes.append(z)
            psis.append(pseudo_derivative_of(before, state, model.neuron, model.dampening))
    expected_spikes, expected_psi = torch.stack(spikes), torch.stack(psis)
    assert expected_spikes.sum() > 100 and (state.refractory > 0).any()

    current = (x.transpose(0, 1) @ model.w_in.detach().T).contiguous().numpy()
    start = model.initial_state(5)
    v, z, a, refractory = (t.numpy().copy() for t in start)
    got_spikes, got_psi = numba_rsnn.lif_segment(
        current, model.recurrent_weights().detach().T.contiguous().numpy(), v, z, a, refractory,
        model.alpha, model.v_th, float(model.refractory), model.beta.numpy(), model.rho,
        model.dampening,
    )  # fmt: skip
    assert torch.equal(torch.from_numpy(got_spikes), expected_spikes)
    tolerance = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"atol": 1e-5}
    assert torch.allclose(torch.from_numpy(got_psi), expected_psi, **tolerance)
    for got, expected in zip((v, z, a, refractory), state, strict=True):
        assert torch.allclose(torch.from_numpy(got), expected, **tolerance)


def test_the_compiled_leaky_sums_equal_the_loops():
    gen = torch.Generator().manual_seed(1)
    signal = torch.randn(40, 3, 7, generator=gen, dtype=torch.float64)
    factor = torch.rand(40, 3, 7, generator=gen, dtype=torch.float64)
    initial = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    expected, acc = [], initial
    for t in range(40):
        acc = 0.9 * acc + signal[t]
        expected.append(acc)
    forward = numba_rsnn.leaky_sum(signal.numpy(), 0.9, initial.numpy())
    assert torch.allclose(torch.from_numpy(forward), torch.stack(expected), rtol=1e-14)
    torch_path = reverse_leaky_sum(signal, 0.8, "torch")
    assert torch.allclose(reverse_leaky_sum(signal, 0.8, "numba"), torch_path, rtol=1e-14)
    assert torch_path[-1].equal(signal[-1])
    assert torch.allclose(torch_path[-2], signal[-2] + 0.8 * signal[-1])
    at_steps, before = adaptation_weights(signal, factor, "torch")
    assert at_steps[-1].abs().sum() == 0  # G^{t1-1} = 0
    assert torch.allclose(at_steps[-2], signal[-1])
    assert torch.allclose(before, signal[0] + factor[0] * at_steps[0])
    compiled = adaptation_weights(signal, factor, "numba")
    for got, expected in zip(compiled, (at_steps, before), strict=True):
        assert torch.allclose(got, expected, rtol=1e-14)


def test_the_backend_is_chosen_by_device_and_asked_for_clearly(monkeypatch):
    import neuroplastic.kernels as kernels

    assert resolve_backend("auto", "cpu") == "numba"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_backend("numba", "cuda:0")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cupy", "cpu")
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    assert kernels.resolve_backend("auto", "cuda:0") == "torch"
    with pytest.raises(ValueError, match=r"neuroplastic\[triton\]"):
        kernels.resolve_backend("triton", "cuda:0")
    with pytest.raises(ValueError, match=r"neuroplastic\[triton\]"):
        RecurrentLIF(2, 3, 1, backend="triton")


def test_without_numba_auto_falls_back_and_asking_for_it_says_how_to_install(monkeypatch):
    import neuroplastic.kernels as kernels

    monkeypatch.setattr(kernels, "numba_available", lambda: False)
    assert kernels.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match=r"neuroplastic\[fast\]"):
        kernels.resolve_backend("numba", "cpu")


@pytest.mark.parametrize("detach_reset", [True, False])
def test_the_fast_forward_and_its_written_out_backward_equal_autograd_through_the_steps(
    detach_reset,
):
    """BPTT by the compiled loop and the adjoint recursion against autograd through the step
    functions, float64: recurrence, LIF and ALIF neurons, refractoriness, the reset's gradient
    dropped or kept, a loss on the readout and on the spikes."""
    gen = torch.Generator().manual_seed(2)
    options = {"n_adaptive": 6, "tau_a": 40.0, "beta": 0.3, "refractory": 2, "v_th": 0.4,
               "tau_out": 15.0, "detach_reset": detach_reset}  # fmt: skip
    reference = RecurrentLIF(10, 16, 3, generator=gen, backend="torch", **options).double()
    fast = RecurrentLIF(10, 16, 3, backend="numba", **options).double()
    fast.load_state_dict(reference.state_dict())
    x = (torch.rand(4, 120, 10, generator=gen, dtype=torch.float64) < 0.3).double()
    target = torch.randn(4, 120, 3, generator=gen, dtype=torch.float64)
    gradients = []
    for model in (reference, fast):
        y, z = model(x)
        loss = (y - target).pow(2).sum() + 0.7 * (z.mean((0, 1)) - 0.05).pow(2).sum()
        loss.backward()
        gradients.append({n: p.grad for n, p in model.named_parameters()})
        outputs = (y.detach(), z.detach())
        if model is reference:
            expected_outputs = outputs
            assert z.sum() > 50
    assert torch.equal(outputs[1], expected_outputs[1])
    assert torch.allclose(outputs[0], expected_outputs[0], rtol=1e-12)
    for name, expected in gradients[0].items():
        assert expected.abs().sum() > 0, name
        assert torch.allclose(gradients[1][name], expected, rtol=1e-10, atol=1e-12), name
