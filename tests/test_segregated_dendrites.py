"""The segregated-dendrite network (Guerguiev et al. 2017): its dynamics, the fast path against the
reference, and the plateau rule against hand-written equations."""

import math

import pytest
import torch

from neuroplastic.credit.plateau import (
    backprop_signals,
    hidden_errors,
    output_error,
    plateau_gradients,
    plateau_step,
)
from neuroplastic.models.segregated_dendrites import (
    PAPER_KERNEL_TAIL,
    DendriticParams,
    PhaseAverages,
    SegregatedDendriteNet,
    phase_lengths,
    poisson_from_uniform,
    predict,
    simulate_phase,
    simulate_phase_reference,
    wald,
)

F64 = torch.float64


def make_net(sizes, replicas=3, feedback="random", params=None, seed=0):
    gens = [torch.Generator().manual_seed(seed + r) for r in range(replicas)]
    return SegregatedDendriteNet(sizes, replicas, feedback, params, gens, dtype=F64)


def images(replicas, examples, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(replicas, examples, n, generator=g, dtype=F64)
    return pixels * (torch.rand(replicas, examples, n, generator=g, dtype=F64) < 0.3)


def assert_fast_phases_equal_reference(net, x, labels, g, lengths):
    """Forward and target phases in turn (state carried), both simulations on the same noise:
    the same spikes in every layer, the same averages and end states."""
    ref_state = fast_state = net.initial_state(2)
    for phase, steps in enumerate(lengths):
        noise = net.draw_noise(steps, g, examples=2)
        target = labels if phase % 2 else None
        ref = simulate_phase_reference(net, ref_state, x, noise, 20, target, keep_spikes=True)
        fast = simulate_phase(net, fast_state, x, noise, 20, target, keep_spikes=True)
        assert sum(s.sum() for s in ref.spikes[1:]) > 0  # the network does spike
        for a, b in zip(ref.spikes, fast.spikes, strict=True):
            assert torch.equal(a, b)
        for field in PhaseAverages._fields:
            for a, b in zip(
                getattr(ref.averages, field), getattr(fast.averages, field), strict=True
            ):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(ref.state, fast.state, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        ref_state, fast_state = ref.state, fast.state


@pytest.mark.parametrize(
    ("sizes", "feedback"),
    [
        ((30, 5), "random"),
        ((30, 12, 5), "random"),
        ((30, 12, 5), "sparse"),
        ((30, 12, 5), "symmetric"),
        ((30, 12, 8, 5), "random"),
        ((30, 12, 8, 5), "symmetric"),
    ],
)
def test_fast_phase_equals_reference_for_the_same_noise(sizes, feedback):
    """Same uniforms -> the same spikes in every layer and the same averages, over forward and
    target phases that carry state from one to the next."""
    net = make_net(sizes, feedback=feedback)
    p = net.params
    x = p.phi_max * images(3, 2, sizes[0])
    labels = torch.tensor([[0, 3], [4, 1], [2, 2]])
    g = torch.Generator().manual_seed(7)
    assert_fast_phases_equal_reference(net, x, labels, g, [53, 50, 61, 52])


@pytest.mark.parametrize("feedback", ["random", "symmetric"])
def test_training_paths_agree_after_several_examples(feedback):
    """Reference phases + plateau_gradients + SGD against fast phases + the fused in-place step:
    the same spikes throughout and the same weights after eight examples."""
    sizes, rates = (30, 12, 8, 5), (0.23, 0.23, 0.12)
    nets = [make_net(sizes, feedback=feedback) for _ in range(2)]
    reference, fast = nets
    sgd = torch.optim.SGD(
        [
            {"params": [w, b], "lr": lr}
            for w, b, lr in zip(reference.weights, reference.biases, rates, strict=True)
        ]
    )
    x = reference.params.phi_max * images(3, 8, sizes[0])
    labels = torch.randint(0, 5, (3, 8), generator=torch.Generator().manual_seed(3))
    states = [net.initial_state() for net in nets]
    g = torch.Generator().manual_seed(11)
    lengths = phase_lengths(reference.params, torch.Generator().manual_seed(0), 8).tolist()
    for example, (f_steps, t_steps) in enumerate(lengths):
        xi, yi = x[:, example : example + 1], labels[:, example : example + 1]
        noise_f, noise_t = reference.draw_noise(f_steps, g), reference.draw_noise(t_steps, g)
        f = simulate_phase_reference(reference, states[0], xi, noise_f, 20, keep_spikes=True)
        t = simulate_phase_reference(reference, f.state, xi, noise_t, 20, yi, keep_spikes=True)
        sgd.zero_grad()
        plateau_gradients(reference, f.averages, t.averages)
        sgd.step()
        reference.sync_feedback()
        states[0] = t.state
        f2 = simulate_phase(fast, states[1], xi, noise_f, 20, keep_spikes=True)
        t2 = simulate_phase(fast, f2.state, xi, noise_t, 20, yi, keep_spikes=True)
        plateau_step(fast, f2.averages, t2.averages, rates)
        fast.sync_feedback()
        states[1] = t2.state
        for a, b in zip(f.spikes + t.spikes, f2.spikes + t2.spikes, strict=True):
            assert torch.equal(a, b)
    for a, b in zip(reference.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not torch.equal(reference.weights[0], make_net(sizes, feedback=feedback).weights[0])


def test_apical_conductance_path_equals_reference():
    params = DendriticParams(g_a=0.05)
    net = make_net((30, 12, 5), params=params)
    x = params.phi_max * images(3, 1, 30)
    noise = net.draw_noise(55, torch.Generator().manual_seed(2))
    state = net.initial_state()
    ref = simulate_phase_reference(net, state, x, noise, 20, keep_spikes=True)
    fast = simulate_phase(net, state, x, noise, 20, keep_spikes=True)
    for a, b in zip(ref.spikes, fast.spikes, strict=True):
        assert torch.equal(a, b)
    assert params.k_b == pytest.approx(0.6 / 0.75)


def test_a_replica_does_not_depend_on_its_batch():
    """With a generator per replica, replica r of a batch follows the same trajectory as the same
    network simulated alone."""
    batch = make_net((30, 12, 5), replicas=3)
    alone = make_net((30, 12, 5), replicas=1, seed=1)  # replica 1 of the batch
    x = batch.params.phi_max * images(3, 1, 30)
    gens = [torch.Generator().manual_seed(100 + r) for r in range(3)]
    one = [torch.Generator().manual_seed(101)]
    batch_state, alone_state = batch.initial_state(), alone.initial_state()
    for steps in (52, 51):
        b = simulate_phase(
            batch, batch_state, x, batch.draw_noise(steps, gens), 20, keep_spikes=True
        )
        a = simulate_phase(
            alone, alone_state, x[1:2], alone.draw_noise(steps, one), 20, keep_spikes=True
        )
        for sb, sa in zip(b.spikes, a.spikes, strict=True):
            assert torch.equal(sb[1:2], sa)
        batch_state, alone_state = b.state, a.state


def test_soma_settles_at_the_steady_state_of_its_compartments():
    """No spikes in, bias V_b = 2: the soma tends to g_b V_b / (g_l + g_b) = k_b V_b (hidden) and
    g_d V_b / (g_l + g_d) = k_d V_b (output); with the teaching current the output tends to
    (g_d V_b + g_E E_E + g_I E_I) / (g_l + g_d + g_E + g_I)."""
    net = make_net((4, 3, 2), replicas=1)
    p = net.params
    with torch.no_grad():
        for w, b in zip(net.weights, net.biases, strict=True):
            w.zero_()
            b.fill_(2.0)
    zero_input = torch.zeros(1, 1, 4, dtype=F64)
    for simulate in (simulate_phase_reference, simulate_phase):
        forward = simulate(
            net, net.initial_state(), zero_input, net.draw_noise(200, torch.Generator()), 20
        )
        torch.testing.assert_close(
            forward.averages.soma[0], torch.full((1, 1, 3), p.k_b * 2.0, dtype=F64)
        )
        torch.testing.assert_close(
            forward.averages.soma[1], torch.full((1, 1, 2), p.k_d * 2.0, dtype=F64)
        )
        noise = net.draw_noise(200, torch.Generator())
        target = simulate(net, forward.state, zero_input, noise, 20, torch.tensor([[1]]))
        expected = torch.tensor([[[p.g_d * 2 + p.E_I, p.g_d * 2 + p.E_E]]], dtype=F64) / (
            p.g_l + p.g_d + 1
        )
        torch.testing.assert_close(target.averages.soma[1], expected)


def test_kernel_is_the_difference_of_exponentials():
    p = DendriticParams()
    kernel = p.kernel(F64)
    assert kernel.shape == (10,)
    assert kernel[-1].item() == pytest.approx((math.exp(-1 / 10) - math.exp(-1 / 3)) / 7)
    assert kernel[0].item() == pytest.approx((math.exp(-10 / 10) - math.exp(-10 / 3)) / 7)


def test_the_papers_kernel_keeps_the_mass_the_authors_truncation_drops():
    """sum_{i>=1} kappa(i dt) = sum of two geometric series, 0.997 with Table 1's constants; the
    authors' 10 taps hold about 51 % of it, the paper's kernel all but PAPER_KERNEL_TAIL."""
    a_long, a_short = math.exp(-1 / 10), math.exp(-1 / 3)
    whole = (a_long / (1 - a_long) - a_short / (1 - a_short)) / (10 - 3)
    assert DendriticParams().kernel_tail(0) == pytest.approx(whole, rel=1e-12)
    assert whole == pytest.approx(0.9972, abs=1e-4)
    authors = DendriticParams().kernel(F64)
    paper = DendriticParams(psp_kernel="paper").kernel(F64)
    assert authors.sum().item() / whole == pytest.approx(0.51, abs=0.005)
    assert 1 - PAPER_KERNEL_TAIL <= paper.sum().item() / whole < 1
    # the paper's kernel is the same function, only longer: its newest taps are the authors'
    assert len(paper) == DendriticParams(psp_kernel="paper").kernel_length > 10
    torch.testing.assert_close(paper[-10:], authors, rtol=0, atol=0)
    # and as short as the tolerance allows: one tap fewer would leave out too much
    shorter = DendriticParams(psp_kernel="paper").kernel_length - 1
    assert DendriticParams().kernel_tail(shorter) >= PAPER_KERNEL_TAIL * whole


def bias_driven_net(params):
    """No input, zero weights, biases 2: every compartment sees a constant drive."""
    net = make_net((4, 3, 2), replicas=1, params=params)
    with torch.no_grad():
        for w, b in zip(net.weights, net.biases, strict=True):
            w.zero_()
            b.fill_(2.0)
    return net


@pytest.mark.parametrize("simulate", [simulate_phase_reference, simulate_phase])
@pytest.mark.parametrize("dt", [1.0, 0.25])
def test_exponential_integration_is_the_exact_solution_for_a_constant_drive(simulate, dt):
    """dC/dt = drive - g C with constant drive: C(t) = C_inf + (C(0) - C_inf) exp(-g t),
    C_inf = drive / g, at every step and in the window averages: hidden g = g_l + g_b, output
    g = g_l + g_d (forward) and g_l + g_d + g_E + g_I (target)."""
    params = DendriticParams(integration="exponential", dt=dt)
    p = params
    net = bias_driven_net(params)
    zero_input = torch.zeros(1, 1, 4, dtype=F64)

    def exact(c0, c_inf, g, steps):  # (steps,) values at steps 1..steps
        t = dt * torch.arange(1, steps + 1, dtype=F64)
        return c_inf + (c0 - c_inf) * torch.exp(-g * t)[:, None]

    window = 5
    hidden_inf, out_inf = p.g_b * 2.0 / (p.g_l + p.g_b), p.g_d * 2.0 / (p.g_l + p.g_d)
    for steps in (5, 9, 20):
        noise = net.draw_noise(steps, torch.Generator())
        result = simulate(net, net.initial_state(), zero_input, noise, window)
        hidden = exact(torch.zeros(3, dtype=F64), hidden_inf, p.g_l + p.g_b, steps)
        output = exact(torch.zeros(2, dtype=F64), out_inf, p.g_l + p.g_d, steps)
        torch.testing.assert_close(result.state.soma[0][0, 0], hidden[-1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(result.state.soma[1][0, 0], output[-1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            result.averages.soma[0][0, 0], hidden[-window:].mean(0), rtol=1e-12, atol=1e-12
        )
    # target phase, label 1, from the forward phase's end state
    start = result.state
    target = simulate(net, start, zero_input, net.draw_noise(7, torch.Generator()), window,
                      torch.tensor([[1]]))  # fmt: skip
    conductance = p.g_l + p.g_d + 1.0  # g_E + g_I = 1 for every output unit
    target_inf = torch.tensor([p.g_d * 2 + p.E_I, p.g_d * 2 + p.E_E], dtype=F64) / conductance
    output = exact(start.soma[1][0, 0], target_inf, conductance, 7)
    torch.testing.assert_close(target.state.soma[1][0, 0], output[-1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        target.averages.soma[1][0, 0], output[-window:].mean(0), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("simulate", [simulate_phase_reference, simulate_phase])
def test_euler_target_phase_transient_alternates_in_sign(simulate):
    """The authors' Euler step with g_total dt = 1.7: C - C_inf is multiplied by 1 - 1.7 = -0.7
    each step (the exact factor is exp(-1.7) = 0.18), so it changes sign every step."""
    net = bias_driven_net(DendriticParams())
    p = net.params
    zero_input = torch.zeros(1, 1, 4, dtype=F64)
    state = net.initial_state()  # output soma at rest (0), far from the target fixed point
    target_inf = torch.tensor([p.g_d * 2 + p.E_I, p.g_d * 2 + p.E_E], dtype=F64) / 1.7
    deviations = []
    for _ in range(4):
        noise = net.draw_noise(1, torch.Generator())
        state = simulate(net, state, zero_input, noise, 1, torch.tensor([[1]])).state
        deviations.append(state.soma[1][0, 0] - target_inf)
    for before, after in zip(deviations, deviations[1:], strict=False):
        torch.testing.assert_close(after, -0.7 * before, rtol=1e-12, atol=1e-12)
        assert (torch.sign(after) == -torch.sign(before)).all()
    assert p.soma_step(1.7) == pytest.approx((-0.7, 1.0))
    exponential = DendriticParams(integration="exponential").soma_step(1.7)
    assert exponential == pytest.approx((math.exp(-1.7), (1 - math.exp(-1.7)) / 1.7))


@pytest.mark.parametrize("sizes", [(30, 5), (30, 12, 8, 5)])
def test_fast_phase_equals_reference_with_the_papers_dynamics(sizes):
    """The paper's kernel (96 taps) and exact integration through both simulations."""
    params = DendriticParams(psp_kernel="paper", integration="exponential")
    net = make_net(sizes, params=params)
    x = params.phi_max * images(3, 2, sizes[0])
    labels = torch.tensor([[0, 3], [4, 1], [2, 2]])
    g = torch.Generator().manual_seed(7)
    assert net.initial_state(2).input_history.shape[2] == params.kernel_length
    assert_fast_phases_equal_reference(net, x, labels, g, [53, 61, 50, 52])


def test_dynamics_options_are_checked():
    with pytest.raises(ValueError, match="psp_kernel"):
        DendriticParams(psp_kernel="long")
    with pytest.raises(ValueError, match="integration"):
        DendriticParams(integration="rk4")


def test_poisson_from_uniform_inverts_the_cdf():
    rate = torch.tensor([0.2, 0.2, 0.2, 0.0], dtype=F64)
    p0 = math.exp(-0.2)
    p1 = p0 + 0.2 * p0
    uniform = torch.tensor([p0 - 1e-9, p0 + 1e-9, p1 + 1e-9, 0.99], dtype=F64)
    assert poisson_from_uniform(rate, uniform).tolist() == [0, 1, 2, 0]


def test_poisson_counts_have_the_poisson_mean_and_variance():
    n, lam = 400_000, 0.2
    counts = poisson_from_uniform(
        torch.full((n,), lam, dtype=F64),
        torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=F64),
    )
    # 5 standard errors: the mean's is sqrt(lam / n), the variance estimate's about
    # sqrt((lam + 2 lam^2) / n) for a Poisson variable
    assert abs(counts.mean().item() - lam) < 5 * math.sqrt(lam / n)
    assert abs(counts.var().item() - lam) < 5 * math.sqrt((lam + 2 * lam**2) / n)


def test_wald_extra_phase_length_has_its_mean_and_variance():
    n, mean, scale = 200_000, 2.0, 1.0
    x = wald(torch.Generator().manual_seed(0), mean, scale, n)
    variance = mean**3 / scale  # 8
    assert (x > 0).all()
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(variance / n)
    lengths = phase_lengths(DendriticParams(), torch.Generator().manual_seed(1), 1000)
    assert lengths.shape == (1000, 2) and lengths.min() >= 50


def hand_averages(net, seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=F64)

    sizes = net.sizes
    return PhaseAverages(
        soma=tuple(rand(net.replicas, 1, n, scale=2.0) for n in sizes[1:]),
        rate=tuple(0.2 * torch.sigmoid(rand(net.replicas, 1, n)) for n in sizes[1:]),
        input_psp=tuple(rand(net.replicas, 1, n).abs() * 0.1 for n in sizes[:-1]),
        apical=tuple(rand(net.replicas, 1, n) for n in sizes[1:-1]),
    )


def test_plateau_gradients_follow_the_papers_equations_elementwise():
    net = make_net((6, 4, 3), replicas=2)
    p = net.params
    forward, target = hand_averages(net, 0), hand_averages(net, 1)
    plateau_gradients(net, forward, target)

    def sig(x):
        return 1 / (1 + math.exp(-x))

    for r in range(2):
        for i in range(3):  # output unit i, input j from the hidden layer
            c_f = forward.soma[1][r, 0, i].item()
            e = (
                -(target.rate[1][r, 0, i].item() - p.phi_max * sig(c_f))
                * p.k_d
                * p.phi_max
                * sig(c_f)
                * (1 - sig(c_f))
            )
            for j in range(4):
                expected = p.p_output * e * forward.input_psp[1][r, 0, j].item()
                assert net.weights[1].grad[r, j, i].item() == pytest.approx(expected, rel=1e-12)
            assert net.biases[1].grad[r, i].item() == pytest.approx(p.p_output * e, rel=1e-12)
        for i in range(4):  # hidden unit i, input pixel j
            c_f = forward.soma[0][r, 0, i].item()
            alpha_f, alpha_t = (
                sig(forward.apical[0][r, 0, i].item()),
                sig(target.apical[0][r, 0, i].item()),
            )
            e = -(alpha_t - alpha_f) * p.k_b * p.phi_max * sig(c_f) * (1 - sig(c_f))
            for j in range(6):
                expected = p.p_hidden * e * forward.input_psp[0][r, 0, j].item()
                assert net.weights[0].grad[r, j, i].item() == pytest.approx(expected, rel=1e-12)


def test_fused_step_equals_gradients_then_sgd():
    rates = (0.23, 0.23, 0.12)
    a, b = make_net((6, 4, 5, 3)), make_net((6, 4, 5, 3))
    forward, target = hand_averages(a, 0), hand_averages(a, 1)
    forward = forward._replace(
        input_psp=(forward.input_psp[0] * (torch.arange(6) % 2), *forward.input_psp[1:])
    )
    sgd = torch.optim.SGD(
        [
            {"params": [w, bias], "lr": lr}
            for w, bias, lr in zip(a.weights, a.biases, rates, strict=True)
        ]
    )
    plateau_gradients(a, forward, target)
    sgd.step()
    plateau_step(b, forward, target, rates)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="one learning rate per layer"):
        plateau_step(b, forward, target, rates[:2])


def test_symmetric_feedback_makes_the_plateau_signal_backprops_sign():
    """With Y = W^T the apical input is what backprop would route down; the sign of each hidden
    error then agrees with backprop's for small plateau differences (the paper's symmetric case)."""
    net = make_net((6, 4, 3), replicas=1, feedback="symmetric")
    torch.testing.assert_close(net.feedback[0], net.weights[1].transpose(1, 2))
    deep = make_net((6, 5, 4, 3), replicas=1, feedback="symmetric")
    torch.testing.assert_close(deep.feedback[0], deep.feedback[1] @ deep.weights[1].transpose(1, 2))
    forward = hand_averages(net, 0)
    # target phase: the output rate moves by a small delta; the apical average follows Y delta
    delta = 1e-4 * torch.randn(1, 1, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    target = forward._replace(
        rate=(forward.rate[0], 0.2 * torch.sigmoid(forward.soma[1]) + delta),
        apical=(forward.apical[0] + delta @ net.feedback[0],),
    )
    plateau, exact = (
        hidden_errors(net, forward, target)[0],
        backprop_signals(net, forward, target)[0],
    )
    assert output_error(net, forward, target).shape == (1, 1, 3)
    cosine = (plateau * exact).sum() / (plateau.norm() * exact.norm())
    assert cosine > 0


def test_sparse_feedback_zeroes_eighty_percent_and_scales_the_rest():
    dense = make_net((6, 50, 10), replicas=2)
    sparse = make_net((6, 50, 10), replicas=2, feedback="sparse")
    zero = (sparse.feedback[0] == 0).double().mean().item()
    assert zero == pytest.approx(0.8, abs=0.01)
    kept = sparse.feedback[0] != 0
    assert sparse.feedback[0][kept].abs().mean() > 3 * dense.feedback[0].abs().mean()


def test_initialisation_puts_dendritic_potentials_near_the_authors_targets():
    """The code's weight optimisation: mean potential 3 when every input carries the linearised
    rate nu V_avg = (phi_max / 4) 3 of a unit whose own potential is at the target mean."""
    net = make_net((784, 500, 10), replicas=1)
    psp = torch.full((1, 784), 0.25 * net.params.phi_max * 3.0, dtype=F64)
    basal = psp @ net.weights[0][0] + net.biases[0][0]
    assert basal.mean().item() == pytest.approx(3.0, abs=0.5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="feedback"):
        SegregatedDendriteNet((4, 3, 2), feedback="mirror")
    with pytest.raises(ValueError, match="sizes"):
        SegregatedDendriteNet((4,))
    with pytest.raises(ValueError, match="generator"):
        SegregatedDendriteNet((4, 3, 2), replicas=2, generators=[torch.Generator()])


def test_prediction_reads_the_output_soma_and_the_reference_agrees():
    net = make_net((30, 12, 5), replicas=2)
    x = images(2, 5, 30)
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    fast = predict(net, x, gens, chunk=2)
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    ref = predict(net, x, gens, chunk=2, reference=True)
    assert fast.shape == (2, 5)
    assert torch.equal(fast, ref)
