"""Tests of neuroplastic.credit.equilibrium_propagation (Scellier & Bengio 2017; Laborieux 2021).

The central one is the sheet's identity: at the free fixed point, the EP estimate approaches the
true gradient of ``L(theta) = C(s*(theta))`` as ``beta -> 0``, with an error linear in beta for
one-sided nudging and quadratic for symmetric nudging. The true gradient comes from the implicit
function theorem at the fixed point (Hessian of the energy by autograd, a linear solve), with an
energy written out here again from the paper, independently of the module's.
"""

from __future__ import annotations

import shutil
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian
from torch.testing import assert_close

from neuroplastic.credit.base import loss_per_example
from neuroplastic.credit.equilibrium_propagation import (
    ACTIVATIONS,
    EquilibriumPropagation,
    ep_gradient,
    ep_gradient_reference,
    make_phase,
    settle,
    settle_reference,
    stationarity_residual,
)
from neuroplastic.models.mlp import MLP

F64 = {"rtol": 0.0, "atol": 1e-12}


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is many times faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def problem(sizes, batch=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    model = MLP(sizes, generator=g).to(dtype)
    x = torch.rand(batch, sizes[0], generator=g).to(dtype)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    return model, x, y


def params(model):
    return [m.weight.detach() for m in model.layers], [m.bias.detach() for m in model.layers]


def grads(model):
    return [m.weight.grad.clone() for m in model.layers] + [
        m.bias.grad.clone() for m in model.layers
    ]


# ---------------------------------------------------------------------------------------------
# The fast path is the reference (autograd of the energy), to rounding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("sizes", [(7, 6, 5, 3), (7, 3)])
def test_fast_settling_equals_reference(activation, sizes):
    model, x, y = problem(sizes, batch=9)
    weights, biases = params(model)
    target = F.one_hot(y, sizes[-1]).double()
    start = [x.new_zeros(9, n) for n in sizes[1:]]
    drive = x @ weights[0].T + biases[0]
    free_ref = settle_reference(x, start, weights, biases, None, 0.0, 30, 0.5, activation)
    free = settle(
        start, make_phase(drive, weights, biases, None, 0.0, 0.5, activation), 30, activation
    )
    assert_close(free, free_ref, **F64)
    # nudged from the free point, both signs; beta = -1 makes the output's leak vanish (the paper's
    # code nudges at -1 with its random sign), which the folded step must survive
    for beta in (0.7, -1.0):
        phase = make_phase(drive, weights, biases, target, beta, 0.5, activation)
        ref = settle_reference(x, free_ref, weights, biases, target, beta, 10, 0.5, activation)
        assert_close(settle(free, phase, 10, activation), ref, **F64)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_ep_gradient_equals_autograd_of_the_energy_difference(activation):
    model, x, y = problem((7, 6, 5, 3))
    weights, biases = params(model)
    a = [torch.rand(6, n, dtype=torch.float64) for n in (6, 5, 3)]
    b = [torch.rand(6, n, dtype=torch.float64) for n in (6, 5, 3)]
    fast = ep_gradient(x, a, b, 0.3, -0.3, activation)
    ref = ep_gradient_reference(x, a, b, 0.3, -0.3, weights, biases, activation)
    assert_close(fast, ref, **F64)


@pytest.mark.parametrize("symmetric", [False, True])
def test_backward_writes_the_reference_estimate(symmetric):
    """The rule's ``.grad`` is the reference pipeline: settle_reference for the phases, autograd
    of the energy difference for the update."""
    model, x, y = problem((5, 4, 3))
    weights, biases = params(model)
    beta, dt = 0.3, 0.5
    rule = EquilibriumPropagation(model, beta=beta, symmetric=symmetric, dt=dt)
    model.zero_grad()
    loss = rule.backward(x, y)

    target = F.one_hot(y, 3).double()
    start = [x.new_zeros(6, n) for n in (4, 3)]
    free = settle_reference(x, start, weights, biases, None, 0.0, 20, dt)
    plus = settle_reference(x, free, weights, biases, target, beta, 4, dt)
    if symmetric:
        minus = settle_reference(x, free, weights, biases, target, -beta, 4, dt)
        gw, gb = ep_gradient_reference(x, plus, minus, beta, -beta, weights, biases)
    else:
        gw, gb = ep_gradient_reference(x, plus, free, beta, 0.0, weights, biases)
    assert_close(grads(model), gw + gb, **F64)
    assert_close(loss, loss_per_example(free[-1], y, "square").mean(), **F64)


# ---------------------------------------------------------------------------------------------
# The free fixed point, and the sheet's identity
# ---------------------------------------------------------------------------------------------


def paper_energy(x, states, weights, biases, activation):
    """E = 1/2 sum ||s_l||^2 - sum rho(s_{l+1})^T W_l rho(s_l) - sum b_l^T rho(s_{l+1}), summed
    over the batch, rho(s_0) = x; written here again, independently of the module."""
    if activation == "hard_sigmoid":
        rates = [x] + [s.clamp(0, 1) for s in states]
    else:
        rates = [x] + [torch.sigmoid(4 * s - 2) for s in states]
    e = 0.5 * sum((s * s).sum() for s in states)
    for pre, post, w, b in zip(rates[:-1], rates[1:], weights, biases, strict=True):
        e = e - torch.einsum("bi,ij,bj->", post, w, pre) - (post @ b).sum()
    return e


def implicit_gradient(model, x, y, states, activation):
    """dL/dtheta, L = mean_b C(s*), by the implicit function theorem at the fixed point s*:
    ds*/dtheta = -H^{-1} d(dE/ds)/dtheta on the units strictly inside (0, 1); saturated units of
    the hard sigmoid stay at their bound under small changes of theta (strict complementarity is
    checked by the caller), so their derivative is 0. Returns (gradient, mask of free units)."""
    sizes, batch = model.sizes, x.shape[0]
    weights, biases = params(model)
    theta = torch.cat([t.reshape(-1) for t in weights + biases])
    v = torch.cat([s.reshape(-1) for s in states])

    def unflatten(flat, shapes):
        out, i = [], 0
        for shape in shapes:
            k = torch.Size(shape).numel()
            out.append(flat[i : i + k].reshape(shape))
            i += k
        return out

    state_shapes = [(batch, n) for n in sizes[1:]]
    param_shapes = [w.shape for w in weights] + [b.shape for b in biases]

    def energy_gradient(v, theta):
        v = v if v.requires_grad else v.detach().requires_grad_(True)
        wb = unflatten(theta, param_shapes)
        e = paper_energy(
            x, unflatten(v, state_shapes), wb[: len(weights)], wb[len(weights) :], activation
        )
        return torch.autograd.grad(e, v, create_graph=True)[0]

    hessian = jacobian(lambda v: energy_gradient(v, theta), v)  # (n_s, n_s)
    mixed = jacobian(lambda t: energy_gradient(v.clone(), t), theta)  # (n_s, n_theta)
    inside = (
        (v > 0) & (v < 1) if activation == "hard_sigmoid" else torch.ones_like(v, dtype=torch.bool)
    )
    free = inside.nonzero().squeeze(1)
    ds = torch.zeros(v.numel(), theta.numel(), dtype=v.dtype)
    ds[free] = -torch.linalg.solve(hessian[free][:, free], mixed[free])
    d_cost = torch.zeros_like(v)  # dL/ds: only the output layer, (s_L - d) / B
    d_cost[-batch * sizes[-1] :] = ((states[-1] - F.one_hot(y, sizes[-1])) / batch).reshape(-1)
    return d_cost @ ds, inside


def test_free_fixed_point_is_projected_stationary():
    """Hard sigmoid: the projected condition s = clamp(s - dF/ds, 0, 1), i.e. dF/ds = 0 strictly
    inside the box, >= 0 at 0 and <= 0 at 1; smooth sigmoid: dF/ds = 0."""
    model, x, _ = problem((4, 5, 3))
    weights, biases = params(model)
    for activation in ACTIVATIONS:
        rule = EquilibriumPropagation(model, free_steps=300, dt=0.5, activation=activation)
        states = rule.free_phase(x)
        assert stationarity_residual(x, states, weights, biases, activation=activation) < 1e-12
        s = [t.requires_grad_(True) for t in states]
        d_e = torch.autograd.grad(paper_energy(x, s, weights, biases, activation), s)
        for state, g in zip(states, d_e, strict=True):
            state = state.detach()
            inside = (state > 0) & (state < 1) if activation == "hard_sigmoid" else True
            assert g[inside].abs().max() < 1e-12
            if activation == "hard_sigmoid":
                assert (g[state == 0] >= -1e-12).all() and (g[state == 1] <= 1e-12).all()
    # an unsettled state is not a fixed point: the residual tells
    early = EquilibriumPropagation(model, free_steps=2).free_phase(x)
    assert stationarity_residual(x, early, weights, biases) > 1e-3


BETAS = (0.02, 0.01, 0.005)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_ep_estimate_approaches_the_true_gradient(activation):
    """The sheet's identity on a 4-5-3 float64 network, batch 6. Measured relative errors
    ||g_EP - g|| / ||g|| at beta = 0.02, 0.01, 0.005:
      hard sigmoid  one-sided 2.12e-2 1.07e-2 5.40e-3   symmetric 5.55e-4 1.39e-4 3.46e-5
      sigmoid       one-sided 2.43e-2 1.25e-2 6.36e-3   symmetric 1.61e-3 4.02e-4 1.01e-4
    Halving beta halves the one-sided error (O(beta) bias) and quarters the symmetric one
    (O(beta^2)). Hard sigmoid: 26 of the 48 states sit at 0 at the fixed point; the test
    checks that the nudged phases keep the same active set, where L is smooth."""
    model, x, y = problem((4, 5, 3))
    weights, biases = params(model)
    settling = {"free_steps": 400, "nudged_steps": 400, "dt": 0.5, "activation": activation}
    free = EquilibriumPropagation(model, **settling).free_phase(x)
    assert stationarity_residual(x, free, weights, biases, activation=activation) < 1e-12
    true, inside = implicit_gradient(model, x, y, free, activation)
    if activation == "hard_sigmoid":
        # strict complementarity: inside units away from the bounds, saturated ones pushed out
        flat = torch.cat([s.reshape(-1) for s in free])
        assert 0 < inside.sum() < inside.numel()  # both kinds present
        assert torch.minimum(flat[inside], 1 - flat[inside]).min() > 1e-3

    errors = {}  # (symmetric, beta) -> relative error
    for symmetric in (False, True):
        for beta in BETAS:
            rule = EquilibriumPropagation(model, beta=beta, symmetric=symmetric, **settling)
            if activation == "hard_sigmoid":  # the nudged phases keep the free phase's active set
                for b in (beta, -beta):
                    nudged = rule.nudged_phase(x, y, free, b)
                    flat = torch.cat([s.reshape(-1) for s in nudged])
                    assert torch.equal((flat > 0) & (flat < 1), inside)
            model.zero_grad()
            rule.backward(x, y)
            estimate = torch.cat([g.reshape(-1) for g in grads(model)])
            errors[symmetric, beta] = ((estimate - true).norm() / true.norm()).item()

    one = [errors[False, b] for b in BETAS]
    sym = [errors[True, b] for b in BETAS]
    assert one[1] < 2e-2 and sym[1] < 1e-3 and sym[1] < one[1] / 20  # at beta = 0.01
    for coarse, fine in pairwise(one):
        assert 1.9 < coarse / fine < 2.1  # O(beta)
    for coarse, fine in pairwise(sym):
        assert 3.8 < coarse / fine < 4.2  # O(beta^2)


# ---------------------------------------------------------------------------------------------
# Compiled path, determinism, the contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"
)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_path_equals_eager():
    """compile=True runs the same step through torch.compile; inductor may reorder floating-point
    operations, so equality is to float32 rounding (atol 1e-6 on values of order 1)."""
    model, x, y = problem((6, 8, 3), batch=5, dtype=torch.float32)
    results = []
    for compile in (False, True):
        rule = EquilibriumPropagation(model, symmetric=True, compile=compile)
        model.zero_grad()
        loss = rule.backward(x, y)
        results.append((rule.predict(x), loss, grads(model)))
    assert_close(results[1], results[0], rtol=0.0, atol=1e-6)


def estimates(seed=0, steps=6, **hyper):
    """``steps`` successive EP estimates (``.grad`` zeroed before each) on one fixed problem."""
    model, x, y = problem((5, 4, 3))
    rule = EquilibriumPropagation(model, generator=torch.Generator().manual_seed(seed), **hyper)
    out = []
    for _ in range(steps):
        model.zero_grad()
        rule.backward(x, y)
        out.append(grads(model))
    return out


def identical(runs, others):
    return all(
        torch.equal(a, b)
        for run, other in zip(runs, others, strict=True)
        for a, b in zip(run, other, strict=True)
    )


def test_deterministic():
    assert identical(estimates(), estimates())
    assert identical(estimates(symmetric=True), estimates(symmetric=True))


def test_random_sign_is_reproducible_and_draws_both_signs():
    drawn = estimates(seed=3, steps=8, random_sign=True)
    assert identical(drawn, estimates(seed=3, steps=8, random_sign=True))
    # each estimate is the one-sided estimate at +beta or at -beta, and both occur
    model, x, y = problem((5, 4, 3))
    rule = EquilibriumPropagation(model, beta=0.5)
    free = rule.free_phase(x)
    one_sided = {}
    for beta in (0.5, -0.5):
        gw, gb = ep_gradient(x, rule.nudged_phase(x, y, free, beta), free, beta, 0.0)
        one_sided[beta] = gw + gb
    kinds = set()
    for estimate in drawn:
        matches = [b for b, ref in one_sided.items() if identical([estimate], [ref])]
        assert len(matches) == 1, "a random-sign estimate is neither the +beta nor the -beta one"
        kinds.add(matches[0])
    assert kinds == {0.5, -0.5}


def test_loss_is_detached_and_is_the_cost_at_the_free_point():
    model, x, y = problem((5, 4, 3))
    rule = EquilibriumPropagation(model)
    loss = rule.backward(x, y)
    assert not loss.requires_grad and loss.grad_fn is None and loss.shape == ()
    assert all(p.grad is not None and p.grad.grad_fn is None for p in model.parameters())
    prediction = rule.predict(x)
    assert prediction.shape == (6, 3) and not prediction.requires_grad
    assert_close(prediction, rule.free_phase(x)[-1], **F64)
    assert_close(loss, loss_per_example(prediction, y, "square").mean(), **F64)


def test_backward_accumulates_into_grad():
    model, x, y = problem((5, 4, 3))
    rule = EquilibriumPropagation(model)
    model.zero_grad()
    rule.backward(x, y)
    once = grads(model)
    rule.backward(x, y)
    assert_close(grads(model), [2 * g for g in once], **F64)


def test_rejects_what_it_does_not_implement():
    model, x, y = problem((5, 4, 3))
    with pytest.raises(ValueError, match="square"):
        EquilibriumPropagation(model).backward(x, y, "cross_entropy")
    for bad in ({"beta": 0.0}, {"beta": float("nan")}, {"free_steps": 0}, {"nudged_steps": 1.5},
                {"dt": -0.1}, {"activation": "relu"}, {"symmetric": True, "random_sign": True},
                {"random_sign": True}):  # fmt: skip
        with pytest.raises(ValueError):
            EquilibriumPropagation(model, **bad)
    with pytest.raises(TypeError):
        EquilibriumPropagation(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("symmetric", [False, True])
def test_sgd_with_ep_learns_a_separable_problem(symmetric):
    """300 SGD steps (minibatches of 16) on two noisy prototypes in [0, 1]^4, a 4-8-2 network with
    the paper's one-hidden-layer settling (beta 0.5, 20 + 4 steps, dt 0.5): the square cost at the
    free fixed point falls from about 0.4 to below 0.02 and every example is classified right."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64,), generator=g)
    prototypes = torch.tensor([[0.9, 0.1, 0.8, 0.2], [0.1, 0.9, 0.2, 0.8]])
    x = (prototypes[y] + 0.15 * torch.randn(64, 4, generator=g)).clamp(0, 1)
    model = MLP([4, 8, 2], generator=torch.Generator().manual_seed(1))
    rule = EquilibriumPropagation(model, symmetric=symmetric)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    before = loss_per_example(rule.predict(x), y, "square").mean()
    for step in range(300):
        batch = torch.arange(step * 16, (step + 1) * 16) % 64
        optimizer.zero_grad()
        rule.backward(x[batch], y[batch])
        optimizer.step()
    after = loss_per_example(rule.predict(x), y, "square").mean()
    assert before > 0.3 and after < 0.02
    assert (rule.predict(x).argmax(dim=1) == y).all()
