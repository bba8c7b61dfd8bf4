"""The compiled phase of the segregated-dendrite network (``kernels.numba_dendrites``, the ``fast``
extra) against the readable reference loop, for the same uniforms."""

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from dendrite_networks import images, make_net  # noqa: E402
from neuroplastic.credit.plateau import learn_example, learn_examples, plateau_step  # noqa: E402
from neuroplastic.kernels.counter_random import FORWARD, TARGET, TEST, CounterStream  # noqa: E402
from neuroplastic.models.segregated_dendrites import (  # noqa: E402
    CounterPhase,
    DendriticParams,
    PhaseAverages,
    phase_lengths,
    predict,
    simulate_phase,
    simulate_phase_reference,
)

F64 = torch.float64

DYNAMICS = {
    "authors": DendriticParams(),
    "paper": DendriticParams(psp_kernel="paper", integration="exponential"),
    "apical": DendriticParams(g_a=0.05),  # the apical compartment drives the soma
    "apical-paper": DendriticParams(g_a=0.05, psp_kernel="paper", integration="exponential"),
}


def assert_phases_equal(ref, fast, rtol, atol):
    """The same spikes in every layer (exactly), the same averages and state (to ``rtol``)."""
    for a, b in zip(ref.spikes, fast.spikes, strict=True):
        assert torch.equal(a, b)
    for field in PhaseAverages._fields:
        for a, b in zip(getattr(ref.averages, field), getattr(fast.averages, field), strict=True):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    for a, b in zip(ref.state, fast.state, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def run_phases(net, lengths, window=20, examples=2, dtype=F64, rtol=1e-10, atol=1e-12):
    """Forward and target phases in turn, each carrying its state into the next, through both
    simulations; returns the number of hidden and output spikes seen."""
    x = net.params.phi_max * images(net.replicas, examples, net.sizes[0], dtype)
    labels = torch.randint(
        0, net.sizes[-1], (net.replicas, examples), generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(7)
    ref_state = fast_state = net.initial_state(examples)
    fired = 0
    for phase, steps in enumerate(lengths):
        noise = net.draw_noise(steps, g, examples=examples)
        target = labels if phase % 2 else None
        ref = simulate_phase_reference(net, ref_state, x, noise, window, target, keep_spikes=True)
        fast = simulate_phase(
            net, fast_state, x, noise, window, target, keep_spikes=True, backend="numba"
        )
        assert_phases_equal(ref, fast, rtol, atol)
        fired += sum(int(s.sum()) for s in ref.spikes[1:])
        ref_state, fast_state = ref.state, fast.state
    return fired


@pytest.mark.parametrize("dynamics", list(DYNAMICS))
@pytest.mark.parametrize("sizes", [(30, 5), (30, 12, 5), (30, 12, 8, 5)])
def test_compiled_phase_equals_reference_for_the_same_noise(sizes, dynamics):
    """0, 1 and 2 hidden layers, 3 replicas x 2 examples, forward and target phases in turn, with
    the authors' and the paper's kernel and integration, and with apical drive (g_a != 0)."""
    net = make_net(sizes, params=DYNAMICS[dynamics])
    assert run_phases(net, [53, 50, 61, 52]) > 0  # the network does spike


@pytest.mark.parametrize("feedback", ["sparse", "symmetric"])
def test_compiled_phase_with_other_feedback(feedback):
    net = make_net((30, 12, 8, 5), feedback=feedback)
    assert run_phases(net, [53, 52]) > 0


def test_phases_shorter_than_the_kernel_carry_the_history_over():
    """With the paper's 96-tap kernel, phases of a few steps keep most of the history rows of the
    phase before (and a window longer than the phase averages over all its steps)."""
    net = make_net((30, 12, 5), params=DYNAMICS["paper"])
    assert run_phases(net, [120, 3, 7, 1, 40], window=20) > 0


def test_compiled_phase_in_single_precision():
    """float32 all through: averages to single-precision rounding, spikes still equal."""
    dtype = torch.float32
    for sizes, params in [((30, 12, 5), DYNAMICS["authors"]), ((30, 12, 8, 5), DYNAMICS["paper"])]:
        net = make_net(sizes, params=params, dtype=dtype)
        assert run_phases(net, [53, 50, 61, 52], dtype=dtype, rtol=1e-5, atol=1e-6) > 0


@pytest.mark.parametrize("feedback", ["random", "symmetric"])
def test_training_with_the_compiled_phases_follows_the_torch_path(feedback):
    """``learn_example`` with each backend: the same weights after eight online examples (the
    phases give the same spikes, so the plateau updates agree to rounding)."""
    sizes, rates = (30, 12, 8, 5), (0.23, 0.23, 0.12)
    nets = [make_net(sizes, feedback=feedback) for _ in range(2)]
    x = nets[0].params.phi_max * images(3, 8, sizes[0])
    labels = torch.randint(0, 5, (3, 8), generator=torch.Generator().manual_seed(3))
    lengths = phase_lengths(nets[0].params, torch.Generator().manual_seed(0), 8).tolist()
    for net, backend in zip(nets, ["torch", "numba"], strict=True):
        gens = [torch.Generator().manual_seed(20 + r) for r in range(3)]
        state = net.initial_state()
        for example, steps in enumerate(lengths):
            xi, yi = x[:, example : example + 1], labels[:, example : example + 1]
            state, _, _ = learn_example(net, state, xi, yi, gens, steps, rates, backend=backend)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not torch.equal(nets[0].weights[0], make_net(sizes, feedback=feedback).weights[0])


def test_prediction_with_the_compiled_phase_agrees_with_the_reference():
    net = make_net((30, 12, 5), replicas=2)
    x = images(2, 7, 30)
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    fast = predict(net, x, gens, chunk=4, backend="numba")
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    ref = predict(net, x, gens, chunk=4, reference=True)
    assert torch.equal(fast, ref)


def test_backend_choice():
    """``auto`` takes Numba on the CPU; ``triton`` and unknown names are refused; a dtype the
    kernel does not take (bfloat16) runs through PyTorch."""
    net = make_net((30, 12, 5), replicas=1)
    x = net.params.phi_max * images(1, 1, 30)
    noise = net.draw_noise(52, torch.Generator().manual_seed(0))
    state = net.initial_state()
    auto = simulate_phase(net, state, x, noise, 20, keep_spikes=True, backend="auto")
    ref = simulate_phase_reference(net, state, x, noise, 20, keep_spikes=True)
    assert_phases_equal(ref, auto, 1e-10, 1e-12)
    for backend in ("triton", "jax"):
        with pytest.raises(ValueError, match="backend"):
            simulate_phase(net, state, x, noise, 20, backend=backend)
    half = make_net((30, 12, 5), replicas=1, dtype=torch.bfloat16)
    noise = half.draw_noise(52, torch.Generator().manual_seed(0))
    x = x.to(torch.bfloat16)
    result = simulate_phase(half, half.initial_state(), x, noise, 20, backend="numba")
    assert result.averages.soma[-1].dtype == torch.bfloat16


# ---------------------------------------------------------------- the counter-based stream


def reference_example(net, state, x, y, stream, steps, rates):
    """``learn_example``'s math spelled out on the reference loop: the two phases fed the
    counter stream's uniforms as ``PhaseNoise`` (``counter_noise``), then the plateau step."""
    window = net.params.integration_steps
    noise = net.counter_noise(steps[0], stream, FORWARD, input_rates=x)
    forward = simulate_phase_reference(net, state, x, noise, window)
    noise = net.counter_noise(steps[1], stream, TARGET, input_rates=x)
    target = simulate_phase_reference(net, forward.state, x, noise, window, y)
    plateau_step(net, forward.averages, target.averages, rates)
    net.sync_feedback()
    return target.state, forward.averages, target.averages


def assert_examples_equal(ref, fast, rtol, atol):
    """The same state (spike histories exactly: counts), averages to ``rtol``."""
    (ref_state, *ref_averages), (fast_state, *fast_averages) = ref, fast
    for a, b in zip(ref_state.spike_history, fast_state.spike_history, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(ref_state.input_history, fast_state.input_history)
    for a, b in zip(ref_state.soma, fast_state.soma, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    for ref_phase, fast_phase in zip(ref_averages, fast_averages, strict=True):
        for field in PhaseAverages._fields:
            pairs = zip(getattr(ref_phase, field), getattr(fast_phase, field), strict=True)
            for a, b in pairs:
                torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def train_both(sizes, params, replicas, examples=4, dtype=F64, feedback="random", rtol=1e-10,
               atol=1e-12):  # fmt: skip
    """``examples`` online examples through the compiled whole-example path and through the
    reference, weights and state carried across; returns the hidden and output spikes seen."""
    rates = (0.23, 0.23, 0.12)[-(len(sizes) - 1) :]
    nets = [make_net(sizes, replicas, feedback, params, dtype) for _ in range(2)]
    x = nets[0].params.phi_max * images(replicas, examples, sizes[0], dtype)
    labels = torch.randint(0, sizes[-1], (replicas, examples),
                           generator=torch.Generator().manual_seed(3))  # fmt: skip
    lengths = phase_lengths(nets[0].params, torch.Generator().manual_seed(0), examples).tolist()
    stream = CounterStream.of(range(11, 11 + replicas), range(replicas))
    fast_state = ref_state = nets[0].initial_state()
    fired = 0
    for example, steps in enumerate(lengths):
        xi, yi = x[:, example : example + 1], labels[:, example : example + 1]
        key = stream._replace(example=100 + example)
        fast = learn_example(nets[0], fast_state, xi, yi, key, steps, rates, backend="numba")
        ref = reference_example(nets[1], ref_state, xi, yi, key, steps, rates)
        assert_examples_equal(ref, fast, rtol, atol)
        for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
        fast_state, ref_state = fast[0], ref[0]
        fired += sum(int(h.sum()) for h in ref_state.spike_history)
    assert not torch.equal(nets[0].weights[0], make_net(sizes, replicas, dtype=dtype).weights[0])
    return fired


@pytest.mark.parametrize("dynamics", ["authors", "paper", "apical"])
@pytest.mark.parametrize("sizes", [(30, 5), (30, 12, 5), (30, 12, 8, 5)])
def test_compiled_example_equals_the_reference_on_the_counter_stream(sizes, dynamics):
    """One compiled call per example (two phases drawing their uniforms inside the loop, and
    the plateau update) against the reference fed the same uniforms: 0, 1 and 2 hidden layers,
    the authors' and the paper's kernel and integration, apical drive; four examples with the
    weights carried; 2 replicas (the parallel loop) and 1 (called directly)."""
    for replicas in (2, 1):
        assert train_both(sizes, DYNAMICS[dynamics], replicas) > 0


def test_compiled_example_in_single_precision_and_with_symmetric_feedback():
    dtype = torch.float32
    for sizes, params in [((30, 12, 5), DYNAMICS["authors"]), ((30, 12, 8, 5), DYNAMICS["paper"])]:
        assert train_both(sizes, params, 2, dtype=dtype, rtol=1e-5, atol=1e-6) > 0
    assert train_both((30, 12, 8, 5), DYNAMICS["authors"], 2, feedback="symmetric") > 0


def test_learn_example_on_the_counter_stream_agrees_across_backends():
    """``torch`` simulates the phases on ``counter_noise``; ``numba`` runs the compiled example;
    the same weights after five examples."""
    sizes, rates = (30, 12, 5), (0.23, 0.12)
    nets = [make_net(sizes) for _ in range(2)]
    x = nets[0].params.phi_max * images(3, 5, sizes[0])
    labels = torch.randint(0, 5, (3, 5), generator=torch.Generator().manual_seed(3))
    lengths = phase_lengths(nets[0].params, torch.Generator().manual_seed(0), 5).tolist()
    stream = CounterStream.of([0, 1, 2])
    for net, backend in zip(nets, ["torch", "numba"], strict=True):
        state = net.initial_state()
        for example, steps in enumerate(lengths):
            xi, yi = x[:, example : example + 1], labels[:, example : example + 1]
            key = stream._replace(example=example)
            state, _, _ = learn_example(net, state, xi, yi, key, steps, rates, backend=backend)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dynamics", ["authors", "apical"])
def test_compiled_phase_on_the_counter_stream_gives_the_same_spikes(dynamics):
    """``simulate_phase(noise=CounterPhase(...), backend="numba")`` draws in the loop: the same
    spikes, averages and state as the reference on ``counter_noise``, for a batch of examples."""
    net = make_net((30, 12, 8, 5), params=DYNAMICS[dynamics])
    x = net.params.phi_max * images(3, 4, 30)
    labels = torch.randint(0, 5, (3, 4), generator=torch.Generator().manual_seed(5))
    stream = CounterStream.of([5, 6, 7], example=40)
    ref_state = fast_state = net.initial_state(4)
    for index, (phase, steps) in enumerate([(FORWARD, 53), (TARGET, 51)]):
        target = labels if index else None
        noise = net.counter_noise(steps, stream, phase, examples=4, input_rates=x)
        ref = simulate_phase_reference(net, ref_state, x, noise, 20, target, keep_spikes=True)
        fast = simulate_phase(net, fast_state, x, CounterPhase(stream, phase, steps), 20, target,
                              keep_spikes=True, backend="numba")  # fmt: skip
        assert_phases_equal(ref, fast, 1e-10, 1e-12)
        ref_state, fast_state = ref.state, fast.state


def test_a_phase_without_rate_averages_keeps_everything_else():
    """``average_rates=False`` (the test phase's setting) computes rates only where a spike can
    come of them: the same spikes, state and somatic means, and no rate means."""
    net = make_net((30, 12, 5))
    x = net.params.phi_max * images(3, 4, 30)
    stream = CounterStream.of([5, 6, 7], example=40)
    noise = CounterPhase(stream, TEST, 80)
    full, lean = (
        simulate_phase(net, net.initial_state(4), x, noise, 60, keep_spikes=True,
                       backend="numba", average_rates=rates)  # fmt: skip
        for rates in (True, False)
    )
    assert lean.averages.rate == () and len(full.averages.rate) == 2
    for a, b in zip(full.spikes, lean.spikes, strict=True):
        assert torch.equal(a, b)
    somas = [(*run.averages.soma, *run.state.soma) for run in (full, lean)]
    for a, b in zip(*somas, strict=True):
        assert torch.equal(a, b)


def test_counter_noise_does_not_depend_on_batching():
    """Example b of a batch starting at example e is example e + b; a replica's uniforms depend
    on its key, not on its place in the batch or on the other replicas."""
    net = make_net((30, 12, 5), replicas=3)
    stream = CounterStream.of([1, 2, 3], example=7)
    batch = net.counter_noise(20, stream, FORWARD, examples=3)
    for b in range(3):
        one = net.counter_noise(20, stream._replace(example=7 + b), FORWARD)
        for a, c in zip((batch.input, *batch.layers), (one.input, *one.layers), strict=True):
            assert torch.equal(a[:, b : b + 1], c)
    alone = make_net((30, 12, 5), replicas=1)
    single = alone.counter_noise(20, CounterStream(stream.keys[1:2], 7), FORWARD, examples=3)
    assert torch.equal(single.layers[0], batch.layers[0][1:2])
    assert not torch.equal(batch.layers[0][0], batch.layers[0][1])


def test_prediction_on_the_counter_stream_does_not_depend_on_chunks():
    net = make_net((30, 12, 5), replicas=2)
    x = images(2, 7, 30)
    stream = CounterStream.of([3, 4])
    ref = predict(net, x, stream, chunk=7, reference=True)
    for chunk in (1, 3):
        assert torch.equal(predict(net, x, stream, chunk=chunk, backend="numba"), ref)
    assert torch.equal(predict(net, x, stream, chunk=2, backend="torch"), ref)


# ---------------------------------------------------------------- runs of examples in one call


@pytest.mark.parametrize("sizes", [(30, 5), (30, 12, 5), (30, 12, 8, 5)])
def test_learn_examples_in_one_call_equals_the_loop_over_examples(sizes):
    """``learn_examples`` compiled (a run of six examples in one call) against the loop over
    ``learn_example`` on the torch backend, for the same counter stream: the same weights, state
    (spike histories exactly) and per-example signals (output potentials, plateau and backprop
    errors of every hidden layer), for one replica (called directly) and two (parallel loop)."""
    rates = (0.23, 0.23, 0.12)[-(len(sizes) - 1) :]
    for replicas in (1, 2):
        nets = [make_net(sizes, replicas) for _ in range(2)]
        x = nets[0].params.phi_max * images(replicas, 6, sizes[0])
        y = torch.randint(0, sizes[-1], (replicas, 6), generator=torch.Generator().manual_seed(4))
        lengths = phase_lengths(nets[0].params, torch.Generator().manual_seed(0), 6).tolist()
        stream = CounterStream.of(range(replicas), range(replicas), example=40)
        (loop_state, loop), (fast_state, fast) = (
            learn_examples(net, net.initial_state(), x, y, stream, lengths, rates, backend=b)
            for net, b in zip(nets, ["torch", "numba"], strict=True)
        )
        for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert torch.equal(loop_state.input_history, fast_state.input_history)
        for a, b in zip(loop_state.spike_history, fast_state.spike_history, strict=True):
            assert torch.equal(a, b)
        for a, b in zip(loop_state.soma, fast_state.soma, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(loop.output_soma, fast.output_soma, rtol=1e-9, atol=1e-12)
        assert len(fast.plateau_errors) == len(fast.backprop_errors) == len(sizes) - 2
        for field in ("plateau_errors", "backprop_errors"):
            for a, b in zip(getattr(loop, field), getattr(fast, field), strict=True):
                assert a.abs().sum() > 0
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_learn_examples_leaves_the_state_it_was_given_unchanged():
    net = make_net((30, 12, 5), 1)
    state = net.initial_state()
    before = [t.clone() for t in (state.input_history, *state.soma, *state.spike_history)]
    x = net.params.phi_max * images(1, 3, 30)
    y = torch.zeros(1, 3, dtype=torch.int64)
    lengths = [(52, 51)] * 3
    new, _ = learn_examples(net, state, x, y, CounterStream.of([0]), lengths, (0.2, 0.1), "numba")
    after = (state.input_history, *state.soma, *state.spike_history)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not torch.equal(new.input_history, state.input_history)


def test_learn_examples_checks_its_arguments():
    net = make_net((30, 12, 5), 1)
    x = net.params.phi_max * images(1, 3, 30)
    y = torch.zeros(1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="phase lengths"):
        learn_examples(net, net.initial_state(), x, y, CounterStream.of([0]), [(50, 50)] * 2,
                       (0.2, 0.1), "numba")  # fmt: skip


def test_the_vectorised_exponential_is_within_an_ulp_of_numpy():
    """``exp64`` (plain arithmetic, so that the kernels' loops vectorise) against NumPy's
    ``exp`` over the range the kernels use and far beyond, and at its clamps."""
    from numba import njit

    from neuroplastic.kernels.numba_dendrites import EXP_HIGH, EXP_LOW, exp64

    @njit
    def exponentials(x, out):
        for i in range(x.shape[0]):
            out[i] = exp64(x[i])

    generator = np.random.default_rng(0)
    x = np.concatenate([
        generator.uniform(-40.0, 40.0, 200_000), generator.uniform(EXP_LOW, EXP_HIGH, 200_000),
        np.linspace(-1.0, 1.0, 20_001), [0.0, EXP_LOW, EXP_HIGH],
    ])  # fmt: skip
    out = np.empty_like(x)
    exponentials(x, out)
    exact = np.exp(x)
    assert (np.abs(out - exact) <= 2 * np.spacing(exact)).all()
    assert out[x == 0.0][0] == 1.0
    beyond = np.array([-1e4, -800.0, 800.0, 1e4, np.inf, -np.inf])
    clamped = np.empty_like(beyond)
    exponentials(beyond, clamped)
    assert np.isfinite(clamped).all() and (clamped > 0).all()
    np.testing.assert_allclose(clamped, np.exp(np.clip(beyond, EXP_LOW, EXP_HIGH)), rtol=1e-15)


def test_the_single_precision_exponential_is_within_two_ulp():
    """``exp32`` against the exact exponential (float64, rounded), over the kernels' range
    (somatic potentials, rates) and the whole float32 range, and the overloaded ``exp_of``
    picks the exponential of its argument's precision."""
    from numba import njit

    from neuroplastic.kernels.numba_dendrites import EXP32_HIGH, EXP32_LOW, exp32, exp_of

    @njit
    def exponentials(x, out, through_dispatch):
        for i in range(x.shape[0]):
            out[i] = exp_of(x[i]) if through_dispatch else exp32(x[i])

    generator = np.random.default_rng(0)
    x = np.concatenate([
        generator.uniform(-40.0, 40.0, 200_000), generator.uniform(EXP32_LOW, EXP32_HIGH, 200_000),
        np.linspace(-1.0, 1.0, 20_001), [0.0, EXP32_LOW, EXP32_HIGH],
    ]).astype(np.float32)  # fmt: skip
    out = np.empty_like(x)
    exponentials(x, out, False)
    assert out.dtype == np.float32
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert (np.abs(out - exact) <= 2 * ulp).all()
    assert out[x == 0.0][0] == 1.0
    dispatched = np.empty_like(x)
    exponentials(x, dispatched, True)
    assert np.array_equal(dispatched, out)
    beyond = np.array([-1e4, -100.0, 100.0, 1e4, np.inf, -np.inf], dtype=np.float32)
    clamped = np.empty_like(beyond)
    exponentials(beyond, clamped, False)
    assert np.isfinite(clamped).all() and (clamped > 0).all()
