"""Tests of neuroplastic.optim: AcceleratedSGD (Eq. 1 variants), MomentumSGD (Eq. 2), DeltaBarDelta.

The hand-computed sequences use numbers that are exact in binary (halves, quarters, ...), so that
every line can be checked with pencil and paper; the weights are float64.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from neuroplastic.optim import AcceleratedSGD, DeltaBarDelta, MomentumSGD, update_eta

EXACT = {"rtol": 0.0, "atol": 0.0}


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is many times faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_by_hand(opt_factory, w0, grads):
    """Start from ``w0``, write each gradient of ``grads`` into ``.grad``, step; return (W, opt)."""
    w = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = opt_factory([w])
    trajectory = []
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        trajectory.append(w.detach().clone())
    return trajectory, opt, w


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Hand-computed sequences
# --------------------------------------------------------------------------------------------


def test_every_step_by_hand():
    # A1, Eq. 1 literally: eta_t = eta_{t-1} * decay + delta; lr = 0.25, delta = 0.5, decay = 0.5.
    # eta: 0.25, 0.25*0.5+0.5 = 0.625, 0.625*0.5+0.5 = 0.8125, 0.8125*0.5+0.5 = 0.90625
    grads = [[1.0, 2.0], [-1.0, 1.0], [2.0, 0.0], [1.0, -1.0]]
    traj, opt, w = run_by_hand(
        lambda p: AcceleratedSGD(p, lr=0.25, delta=0.5, decay=0.5, variant="every_step"),
        [1.0, -1.0],
        grads,
    )
    # W1 = [1 - 0.25*1,      -1 - 0.25*2]      = [0.75, -1.5]
    # W2 = [0.75 - 0.625*-1, -1.5 - 0.625*1]   = [1.375, -2.125]
    # W3 = [1.375 - 0.8125*2, -2.125 - 0]      = [-0.25, -2.125]
    # W4 = [-0.25 - 0.90625, -2.125 + 0.90625] = [-1.15625, -1.21875]
    expected = [[0.75, -1.5], [1.375, -2.125], [-0.25, -2.125], [-1.15625, -1.21875]]
    for got, want in zip(traj, expected, strict=True):
        assert_close(got, t64(want), **EXACT)
    assert_close(opt.state[w]["eta"], t64([0.90625, 0.90625]), **EXACT)
    assert opt.state[w]["step"] == 4


def test_sign_agreement_decay_by_hand():
    # A2: lr = 0.25, delta = 0.5, decay = 0.5. Coherence = sign(g_t) * sign(g_{t-1}).
    grads = [[1.0, 1.0], [2.0, -1.0], [1.0, -1.0], [-1.0, 0.0]]
    traj, opt, w = run_by_hand(
        lambda p: AcceleratedSGD(p, lr=0.25, delta=0.5, decay=0.5, variant="sign_agreement"),
        [1.0, -1.0],
        grads,
    )
    # step 1: eta = [0.25, 0.25]                       W1 = [0.75, -1.25]
    # step 2: coherence [+, -]: eta = [0.625, 0.125]   W2 = [0.75 - 1.25, -1.25 + 0.125]
    # step 3: coherence [+, +]: eta = [0.8125, 0.5625] W3 = [-0.5 - 0.8125, -1.125 + 0.5625]
    # step 4: coherence [-, 0]: eta = [0.40625, 0.28125] (decay only)
    #                                                  W4 = [-1.3125 + 0.40625, -0.5625 - 0]
    expected = [[0.75, -1.25], [-0.5, -1.125], [-1.3125, -0.5625], [-0.90625, -0.5625]]
    for got, want in zip(traj, expected, strict=True):
        assert_close(got, t64(want), **EXACT)
    assert_close(opt.state[w]["eta"], t64([0.40625, 0.28125]), **EXACT)


def test_sign_agreement_reset_by_hand():
    # Same as above with on_disagreement="reset": eta <- lr where the signs disagree.
    grads = [[1.0, 1.0], [2.0, -1.0], [1.0, -1.0], [-1.0, 0.0]]
    traj, opt, w = run_by_hand(
        lambda p: AcceleratedSGD(
            p, lr=0.25, delta=0.5, decay=0.5, variant="sign_agreement", on_disagreement="reset"
        ),
        [1.0, -1.0],
        grads,
    )
    # step 1: eta = [0.25, 0.25]                      W1 = [0.75, -1.25]
    # step 2: coherence [+, -]: eta = [0.625, 0.25]   W2 = [0.75 - 1.25, -1.25 + 0.25]
    # step 3: coherence [+, +]: eta = [0.8125, 0.625] W3 = [-0.5 - 0.8125, -1.0 + 0.625]
    # step 4: coherence [-, 0]: eta = [0.25, 0.3125]  (reset; no information: decay only)
    #                                                 W4 = [-1.3125 + 0.25, -0.375 - 0]
    expected = [[0.75, -1.25], [-0.5, -1.0], [-1.3125, -0.375], [-1.0625, -0.375]]
    for got, want in zip(traj, expected, strict=True):
        assert_close(got, t64(want), **EXACT)
    assert_close(opt.state[w]["eta"], t64([0.25, 0.3125]), **EXACT)


def test_graded_by_hand():
    # A3: eta_t = max(0, eta_{t-1} * decay + delta * tanh(beta * g_t * g_{t-1})),
    # lr = 0.25, delta = 0.5, decay = 0.5, beta = 0.5.
    grads = [[1.0, 1.0], [2.0, -1.0], [1.0, -1.0], [-3.0, 0.0]]
    traj, opt, w = run_by_hand(
        lambda p: AcceleratedSGD(p, lr=0.25, delta=0.5, decay=0.5, beta=0.5, variant="graded"),
        [1.0, -1.0],
        grads,
    )
    th = math.tanh
    eta1 = [0.25, 0.25]
    w1 = [1.0 - 0.25 * 1.0, -1.0 - 0.25 * 1.0]  # [0.75, -1.25]
    # products g2 * g1 = [2, -1]; the second entry would be 0.125 + 0.5 * tanh(-0.5) < 0 -> 0
    eta2 = [0.125 + 0.5 * th(1.0), max(0.0, 0.125 + 0.5 * th(-0.5))]
    assert eta2[1] == 0.0
    w2 = [w1[0] - eta2[0] * 2.0, w1[1] - eta2[1] * -1.0]
    # products g3 * g2 = [2, 1]
    eta3 = [eta2[0] * 0.5 + 0.5 * th(1.0), eta2[1] * 0.5 + 0.5 * th(0.5)]
    w3 = [w2[0] - eta3[0] * 1.0, w2[1] - eta3[1] * -1.0]
    # products g4 * g3 = [-3, 0]; the first entry is about 0.317 - 0.453 < 0 -> 0
    eta4 = [max(0.0, eta3[0] * 0.5 + 0.5 * th(-1.5)), eta3[1] * 0.5 + 0.0]
    assert eta4[0] == 0.0
    w4 = [w3[0] - eta4[0] * -3.0, w3[1] - 0.0]
    for got, want in zip(traj, [w1, w2, w3, w4], strict=True):
        assert_close(got, t64(want))
    assert_close(opt.state[w]["eta"], t64(eta4))
    assert eta1 == [0.25, 0.25]


def test_accelerated_with_momentum_and_regularisation_by_hand():
    # A1 inside Eq. 2: dW <- mu*dW - eta*g - alpha*W; W <- W + dW.
    # lr = 0.5, delta = 0.5, decay = 0.5, mu = 0.5, alpha = 0.25, W0 = 1.
    traj, opt, w = run_by_hand(
        lambda p: AcceleratedSGD(
            p,
            lr=0.5,
            delta=0.5,
            decay=0.5,
            variant="every_step",
            momentum=0.5,
            weight_regularisation=0.25,
        ),
        [1.0],
        [[1.0], [1.0], [-1.0]],
    )
    # step 1: eta = 0.5;   dW = 0 - 0.5*1 - 0.25*1 = -0.75;                  W = 0.25
    # step 2: eta = 0.75;  dW = 0.5*-0.75 - 0.75*1 - 0.25*0.25 = -1.1875;    W = -0.9375
    # step 3: eta = 0.875; dW = 0.5*-1.1875 + 0.875 + 0.25*0.9375 = 0.515625; W = -0.421875
    for got, want in zip(traj, [[0.25], [-0.9375], [-0.421875]], strict=True):
        assert_close(got, t64(want), **EXACT)
    assert_close(opt.state[w]["momentum_buffer"], t64([0.515625]), **EXACT)


def test_momentum_sgd_by_hand():
    # Eq. 2: lr (eta_0) = 0.5, mu = 0.5, alpha = 0.25, W0 = 1.
    traj, opt, w = run_by_hand(
        lambda p: MomentumSGD(p, lr=0.5, momentum=0.5, weight_regularisation=0.25),
        [1.0],
        [[1.0], [1.0], [-1.0], [0.0]],
    )
    # dW1 = 0.5*0 - 0.5*1 - 0.25*1               = -0.75      W1 = 0.25
    # dW2 = 0.5*-0.75 - 0.5*1 - 0.25*0.25        = -0.9375    W2 = -0.6875
    # dW3 = 0.5*-0.9375 + 0.5 + 0.25*0.6875      = 0.203125   W3 = -0.484375
    # dW4 = 0.5*0.203125 - 0 + 0.25*0.484375     = 0.22265625 W4 = -0.26171875
    expected = [[0.25], [-0.6875], [-0.484375], [-0.26171875]]
    for got, want in zip(traj, expected, strict=True):
        assert_close(got, t64(want), **EXACT)


def test_delta_bar_delta_by_hand():
    # lr = 0.5, kappa = 0.25, phi = 0.5, theta = 0.5; bar-delta starts at 0.
    grads = [[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [0.0, 1.0]]
    traj, opt, w = run_by_hand(
        lambda p: DeltaBarDelta(p, lr=0.5, kappa=0.25, phi=0.5, theta=0.5),
        [1.0, 1.0],
        grads,
    )
    # step 1: g*bar = 0 -> rate [0.5, 0.5];   W1 = [0.5, 0.5];    bar1 = [0.5, 0.5]
    # step 2: g*bar [+, -] -> rate [0.75, 0.25];  W2 = [0.5 - 0.75, 0.5 + 0.25] = [-0.25, 0.75]
    #         bar2 = 0.5*[1, -1] + 0.5*[0.5, 0.5] = [0.75, -0.25]
    # step 3: g*bar [-, +] -> rate [0.375, 0.5];  W3 = [-0.25 + 0.375, 0.75 + 0.5] = [0.125, 1.25]
    #         bar3 = 0.5*[-1, -1] + 0.5*[0.75, -0.25] = [-0.125, -0.625]
    # step 4: g*bar [0, -] -> rate [0.375, 0.25]; W4 = [0.125 - 0, 1.25 - 0.25] = [0.125, 1.0]
    #         bar4 = 0.5*[0, 1] + 0.5*[-0.125, -0.625] = [-0.0625, 0.1875]
    expected = [[0.5, 0.5], [-0.25, 0.75], [0.125, 1.25], [0.125, 1.0]]
    for got, want in zip(traj, expected, strict=True):
        assert_close(got, t64(want), **EXACT)
    assert_close(opt.state[w]["rate"], t64([0.375, 0.25]), **EXACT)
    assert_close(opt.state[w]["bar_delta"], t64([-0.0625, 0.1875]), **EXACT)


# --------------------------------------------------------------------------------------------
# Dynamics of eta
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["every_step", "sign_agreement"])
def test_eta_accumulates_towards_delta_over_one_minus_decay(variant):
    lr, delta, decay = 0.01, 0.02, 0.9
    w = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = AcceleratedSGD([w], lr=lr, delta=delta, decay=decay, variant=variant)
    gen = torch.Generator().manual_seed(0)
    signs = t64([1.0, -1.0, 1.0, 1.0, -1.0])
    for t in range(1, 301):
        # constant sign, random magnitude
        w.grad = signs * (0.1 + torch.rand(5, generator=gen, dtype=torch.float64))
        opt.step()
        closed_form = lr * decay ** (t - 1) + delta * (1 - decay ** (t - 1)) / (1 - decay)
        assert_close(opt.state[w]["eta"], torch.full_like(w, closed_form))
    assert_close(opt.state[w]["eta"], torch.full_like(w, delta / (1 - decay)))


def test_tau_and_tau_0_give_decay():
    w = nn.Parameter(torch.zeros(1))
    opt = AcceleratedSGD([w], lr=0.1, delta=0.1, tau=2.0, tau_0=8.0)
    assert opt.param_groups[0]["decay"] == math.exp(-0.25)
    assert "tau" not in opt.param_groups[0]


def test_sign_agreement_on_sign_flips():
    lr, delta, decay = 0.1, 0.1, 0.5  # eta tends to delta / (1 - decay) = 0.2 > lr

    def eta_after(grads, on_disagreement):
        w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = AcceleratedSGD([w], lr=lr, delta=delta, decay=decay, on_disagreement=on_disagreement)
        etas = []
        for g in grads:
            w.grad = t64([g])
            opt.step()
            etas.append(opt.state[w]["eta"].item())
        return etas

    alternating = [1.0, -1.0] * 5
    # decay: no increment ever, eta_t = lr * decay**(t-1) -> 0
    assert eta_after(alternating, "decay") == pytest.approx(
        [lr * decay**t for t in range(10)], rel=1e-15
    )
    # reset: every step disagrees with the previous one, eta stays at lr
    assert eta_after(alternating, "reset") == [lr] * 10
    # a coherent run grows eta; one flip resets it to lr, or only decays it
    run = [1.0, 1.0, 1.0, 1.0, -1.0]
    grown = eta_after(run, "reset")[3]
    assert grown > lr
    assert eta_after(run, "reset")[4] == lr
    assert eta_after(run, "decay")[4] == pytest.approx(grown * decay, rel=1e-15)


def test_graded_eta_never_negative():
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = AcceleratedSGD([w], lr=0.01, delta=1.0, decay=0.5, beta=10.0, variant="graded")
    for t in range(20):
        w.grad = t64([1.0, -2.0, 0.5]) * (-1.0) ** t
        opt.step()
        assert (opt.state[w]["eta"] >= 0).all()
    assert (opt.state[w]["eta"] == 0).all()


def test_update_eta_function_matches_equation_1():
    eta = t64([1.0, 1.0, 1.0])
    g, g_prev = t64([1.0, -1.0, 0.0]), t64([2.0, 3.0, 1.0])
    kwargs = {"lr": 0.5, "delta": 0.25, "decay": 0.5, "beta": 1.0}
    out = update_eta(
        eta.clone(), g, g_prev, variant="every_step", on_disagreement="decay", **kwargs
    )
    assert_close(out, t64([0.75, 0.75, 0.75]), **EXACT)
    out = update_eta(
        eta.clone(), g, g_prev, variant="sign_agreement", on_disagreement="reset", **kwargs
    )
    assert_close(out, t64([0.75, 0.5, 0.5]), **EXACT)


# --------------------------------------------------------------------------------------------
# Reductions to SGD and to torch.optim.SGD
# --------------------------------------------------------------------------------------------


def tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def tiny_data(seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=gen, dtype=dtype)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.5 * x[:, :1]
    return x, y


def train(model, opt, steps, data=None):
    x, y = data if data is not None else tiny_data(dtype=next(model.parameters()).dtype)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    ("variant", "on_disagreement"),
    [
        ("every_step", "decay"),
        ("sign_agreement", "decay"),
        ("sign_agreement", "reset"),
        ("graded", "decay"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accelerated_reduces_to_torch_sgd_exactly(variant, on_disagreement, dtype):
    reference, model = tiny_model(dtype=dtype), tiny_model(dtype=dtype)
    train(reference, torch.optim.SGD(reference.parameters(), lr=0.05, foreach=False), 30)
    opt = AcceleratedSGD(
        model.parameters(),
        lr=0.05,
        delta=0.0,
        decay=1.0,
        momentum=0.0,
        variant=variant,
        on_disagreement=on_disagreement,
        beta=3.0,
    )
    train(model, opt, 30)
    for a, b in zip(params_of(model), params_of(reference), strict=True):
        assert_close(a, b, **EXACT)


def test_momentum_sgd_without_momentum_is_torch_sgd_exactly():
    reference, model = tiny_model(), tiny_model()
    train(reference, torch.optim.SGD(reference.parameters(), lr=0.05), 30)
    train(model, MomentumSGD(model.parameters(), lr=0.05), 30)
    for a, b in zip(params_of(model), params_of(reference), strict=True):
        assert_close(a, b, **EXACT)


def test_accelerated_without_adaptation_is_momentum_sgd_exactly():
    a_model, m_model = tiny_model(), tiny_model()
    hyper = {"lr": 0.03, "momentum": 0.8, "weight_regularisation": 0.01}
    train(a_model, AcceleratedSGD(a_model.parameters(), delta=0.0, decay=1.0, **hyper), 40)
    train(m_model, MomentumSGD(m_model.parameters(), **hyper), 40)
    for a, b in zip(params_of(a_model), params_of(m_model), strict=True):
        assert_close(a, b, **EXACT)


@pytest.mark.parametrize(("mu", "eta_0", "alpha"), [(0.9, 0.05, 0.01), (0.5, 0.2, 0.3)])
def test_eq2_equals_torch_sgd_with_weight_decay_alpha_over_eta0(mu, eta_0, alpha):
    # Eq. 2: dW <- mu*dW - eta_0*g - alpha*W.  torch: buf <- mu*buf + (g + wd*W), W <- W - lr*buf.
    # By induction dW = -lr*buf when lr = eta_0 and wd = alpha/eta_0 (dampening 0, no Nesterov):
    #   -lr*buf_{t+1} = mu*(-lr*buf_t) - lr*g - lr*wd*W = mu*dW_t - eta_0*g - alpha*W.
    eq2, torch_sgd = tiny_model(dtype=torch.float64), tiny_model(dtype=torch.float64)
    train(
        eq2, MomentumSGD(eq2.parameters(), lr=eta_0, momentum=mu, weight_regularisation=alpha), 300
    )
    train(
        torch_sgd,
        torch.optim.SGD(
            torch_sgd.parameters(), lr=eta_0, momentum=mu, weight_decay=alpha / eta_0, dampening=0.0
        ),
        300,
    )
    for a, b in zip(params_of(eq2), params_of(torch_sgd), strict=True):
        assert_close(a, b, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------
# torch.optim conventions: state_dict, param groups, grads from anywhere, maximize
# --------------------------------------------------------------------------------------------

CONFIGS = [
    pytest.param(
        AcceleratedSGD, {"lr": 0.02, "delta": 0.01, "decay": 0.8, "variant": "every_step"}, id="A1"
    ),
    pytest.param(
        AcceleratedSGD,
        {"lr": 0.02, "delta": 0.01, "decay": 0.8, "variant": "sign_agreement", "momentum": 0.5},
        id="A2-decay",
    ),
    pytest.param(
        AcceleratedSGD,
        {
            "lr": 0.02,
            "delta": 0.01,
            "decay": 0.8,
            "variant": "sign_agreement",
            "on_disagreement": "reset",
            "weight_regularisation": 1e-3,
        },
        id="A2-reset",
    ),
    pytest.param(
        AcceleratedSGD,
        {"lr": 0.02, "delta": 0.01, "decay": 0.8, "beta": 50.0, "variant": "graded"},
        id="A3",
    ),
    pytest.param(
        MomentumSGD, {"lr": 0.05, "momentum": 0.9, "weight_regularisation": 1e-3}, id="momentum"
    ),
    pytest.param(
        DeltaBarDelta, {"lr": 0.02, "kappa": 0.002, "phi": 0.2, "theta": 0.7}, id="delta-bar-delta"
    ),
]


@pytest.mark.parametrize(("cls", "kwargs"), CONFIGS)
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    model = tiny_model()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, 10)

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = tiny_model(seed=123)  # other weights and a fresh optimiser, then load
    resumed.load_state_dict(saved["model"])
    resumed_opt = cls(resumed.parameters(), **kwargs)
    resumed_opt.load_state_dict(saved["opt"])

    train(model, opt, 10)
    train(resumed, resumed_opt, 10)
    for a, b in zip(params_of(model), params_of(resumed), strict=True):
        assert_close(a, b, **EXACT)


@pytest.mark.parametrize(("cls", "kwargs"), CONFIGS)
def test_trains_a_tiny_module(cls, kwargs):
    model = tiny_model()
    losses = train(model, cls(model.parameters(), **kwargs), 300)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(("cls", "kwargs"), CONFIGS)
def test_maximize_is_descent_on_the_negated_gradient(cls, kwargs):
    w_max = nn.Parameter(torch.ones(3, dtype=torch.float64))
    w_min = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt_max = cls([w_max], maximize=True, **kwargs)
    opt_min = cls([w_min], **kwargs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        g = torch.randn(3, generator=gen, dtype=torch.float64)
        w_max.grad, w_min.grad = g.clone(), -g
        opt_max.step()
        opt_min.step()
    assert_close(w_max, w_min, **EXACT)


@pytest.mark.parametrize(("cls", "kwargs"), CONFIGS)
def test_parameters_without_grad_are_left_alone(cls, kwargs):
    a = nn.Parameter(torch.ones(2))
    b = nn.Parameter(torch.ones(2))
    opt = cls([a, b], **kwargs)
    a.grad = torch.ones(2)
    opt.step()
    assert_close(b, torch.ones(2), **EXACT)
    assert len(opt.state[b]) == 0


def test_closure_is_called_and_its_loss_returned():
    model = tiny_model()
    x, y = tiny_data()
    opt = AcceleratedSGD(model.parameters(), lr=0.01)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), torch.Tensor)


def test_param_groups_behave_like_separate_optimisers():
    def two_layer():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))

    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 3, generator=gen), torch.randn(32, 1, generator=gen)
    first = {"lr": 0.05, "variant": "every_step", "tau": 1.0, "tau_0": 5.0}
    second = {
        "lr": 0.01,
        "delta": 0.002,
        "decay": 0.7,
        "variant": "sign_agreement",
        "on_disagreement": "reset",
        "momentum": 0.5,
    }

    grouped = two_layer()
    opt = AcceleratedSGD(
        [
            {"params": grouped[0].parameters(), **first},
            {"params": grouped[2].parameters(), **second},
        ],
        delta=0.01,
    )
    assert opt.param_groups[0]["decay"] == math.exp(-0.2)
    assert opt.param_groups[1]["momentum"] == 0.5
    assert opt.param_groups[0]["momentum"] == 0.0  # from the defaults

    separate = two_layer()
    first_only = {k: v for k, v in first.items() if k not in ("tau", "tau_0")}
    opts = [
        AcceleratedSGD(separate[0].parameters(), delta=0.01, decay=math.exp(-0.2), **first_only),
        AcceleratedSGD(separate[2].parameters(), **second),
    ]
    for _ in range(25):
        for m in (grouped, separate):
            m.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        for o in opts:
            o.step()
    for a, b in zip(params_of(grouped), params_of(separate), strict=True):
        assert_close(a, b, **EXACT)


def test_an_invalid_param_group_is_rejected_and_not_added():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = AcceleratedSGD([a], lr=0.1)
    with pytest.raises(ValueError, match="param group 1: decay"):
        opt.add_param_group({"params": [b], "decay": 1.5})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b], "decay": 0.5})
    assert len(opt.param_groups) == 2


def test_grad_written_by_another_rule_is_used_as_is():
    # A credit-assignment rule writes .grad without autograd (here: a Hebbian-like outer product).
    layer = nn.Linear(3, 2, bias=False)
    opt = AcceleratedSGD(layer.parameters(), lr=0.1, delta=0.0, decay=1.0)
    pre, post = torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.5, -0.5])
    before = layer.weight.detach().clone()
    layer.weight.grad = -torch.outer(post, pre)  # minus the desired step
    opt.step()
    assert_close(layer.weight.detach(), before + 0.1 * torch.outer(post, pre), **EXACT)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (AcceleratedSGD, {"lr": -0.1}, "lr"),
        (AcceleratedSGD, {"lr": float("nan")}, "lr"),
        (AcceleratedSGD, {"delta": -1.0}, "delta"),
        (AcceleratedSGD, {"decay": 1.5}, "decay"),
        (AcceleratedSGD, {"decay": -0.1}, "decay"),
        (AcceleratedSGD, {"decay": 0.5, "tau": 1.0, "tau_0": 2.0}, "not both"),
        (AcceleratedSGD, {"tau": 1.0}, "together"),
        (AcceleratedSGD, {"tau": -1.0, "tau_0": 2.0}, "tau"),
        (AcceleratedSGD, {"tau": 1.0, "tau_0": 0.0}, "tau_0"),
        (AcceleratedSGD, {"variant": "A4"}, "variant"),
        (AcceleratedSGD, {"on_disagreement": "ignore"}, "on_disagreement"),
        (AcceleratedSGD, {"variant": "graded", "on_disagreement": "reset"}, "reset"),
        (AcceleratedSGD, {"beta": -1.0}, "beta"),
        (AcceleratedSGD, {"momentum": 1.1}, "momentum"),
        (AcceleratedSGD, {"weight_regularisation": -0.1}, "weight_regularisation"),
        (AcceleratedSGD, {"maximize": "yes"}, "maximize"),
        (AcceleratedSGD, {"lr": "0.1"}, "lr"),
        (AcceleratedSGD, {"lr": torch.tensor([[0.1]])}, "1-D"),
        (AcceleratedSGD, {"decay": torch.tensor([0.5, 1.5])}, r"decay\[1\]"),
        (MomentumSGD, {"lr": -1.0}, "lr"),
        (MomentumSGD, {"momentum": -0.5}, "momentum"),
        (MomentumSGD, {"weight_regularisation": 2.0}, "weight_regularisation"),
        (DeltaBarDelta, {"lr": -1.0}, "lr"),
        (DeltaBarDelta, {"kappa": -1.0}, "kappa"),
        (DeltaBarDelta, {"phi": 1.5}, "phi"),
        (DeltaBarDelta, {"theta": 1.0}, "theta"),
        (DeltaBarDelta, {"theta": float("inf")}, "theta"),
    ],
)
def test_invalid_hyper_parameters_raise_value_error(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([nn.Parameter(torch.ones(2, 2))], **kwargs)


def test_replica_hyper_parameters_must_fit_the_parameters():
    with pytest.raises(ValueError, match="leading replica dimension"):
        AcceleratedSGD([nn.Parameter(torch.ones(3, 2))], lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="same length"):
        AcceleratedSGD(
            [nn.Parameter(torch.ones(2, 2))],
            lr=torch.tensor([0.1, 0.2]),
            delta=torch.tensor([0.1, 0.2, 0.3]),
        )
    with pytest.raises(ValueError, match="floating-point"):
        MomentumSGD([nn.Parameter(torch.ones(2, dtype=torch.int64), requires_grad=False)])


# --------------------------------------------------------------------------------------------
# Replicas: a batched optimiser equals R separate ones
# --------------------------------------------------------------------------------------------

R = 4
BATCHED_CONFIGS = [
    pytest.param(
        AcceleratedSGD,
        {
            "lr": [0.05, 0.1, 0.02, 0.3],
            "delta": [0.0, 0.01, 0.05, 0.02],
            "decay": [1.0, 0.9, 0.5, 0.75],
            "momentum": [0.0, 0.5, 0.9, 0.0],
            "weight_regularisation": [0.0, 0.01, 0.0, 0.1],
            "variant": "every_step",
        },
        id="A1",
    ),
    pytest.param(
        AcceleratedSGD,
        {
            "lr": [0.05, 0.1, 0.02, 0.3],
            "delta": [0.0, 0.01, 0.05, 0.02],
            "decay": [1.0, 0.9, 0.5, 0.75],
            "momentum": [0.0, 0.5, 0.9, 0.0],
            "variant": "sign_agreement",
        },
        id="A2-decay",
    ),
    pytest.param(
        AcceleratedSGD,
        {
            "lr": [0.05, 0.1, 0.02, 0.3],
            "delta": [0.0, 0.01, 0.05, 0.02],
            "tau": [1.0, 2.0, 0.5, 1.0],
            "tau_0": 3.0,
            "weight_regularisation": [0.0, 0.01, 0.0, 0.1],
            "variant": "sign_agreement",
            "on_disagreement": "reset",
        },
        id="A2-reset-tau",
    ),
    pytest.param(
        AcceleratedSGD,
        {
            "lr": [0.05, 0.1, 0.02, 0.3],
            "delta": 0.02,
            "decay": [1.0, 0.9, 0.5, 0.75],
            "beta": [0.0, 1.0, 10.0, 100.0],
            "momentum": [0.0, 0.5, 0.9, 0.0],
            "variant": "graded",
        },
        id="A3",
    ),
    pytest.param(
        MomentumSGD,
        {
            "lr": [0.05, 0.1, 0.02, 0.3],
            "momentum": [0.0, 0.5, 0.9, 0.0],
            "weight_regularisation": [0.0, 0.01, 0.0, 0.1],
        },
        id="momentum",
    ),
    pytest.param(MomentumSGD, {"lr": [0.05, 0.1, 0.02, 0.3]}, id="momentum-lr-only"),
    pytest.param(
        DeltaBarDelta,
        {
            "lr": [0.05, 0.1, 0.02, 0.3],
            "kappa": [0.0, 0.01, 0.05, 0.02],
            "phi": [0.0, 0.1, 0.5, 1.0],
            "theta": [0.0, 0.3, 0.7, 0.9],
        },
        id="delta-bar-delta",
    ),
]


def _replica(kwargs, r, as_tensor):
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, list):
            out[k] = torch.tensor(v, dtype=torch.float64) if as_tensor else v[r]
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cls", "kwargs"), BATCHED_CONFIGS)
def test_batched_replicas_equal_separate_optimisers_exactly(cls, kwargs, dtype):
    # A quadratic cost with a different curvature per element; large steps make gradients change
    # sign, so every branch of every rule is exercised. The gradient is elementwise, so batched
    # and separate gradients are bit-identical and any difference would come from the optimiser.
    gen = torch.Generator().manual_seed(0)
    shapes = [(R, 3, 2), (R, 3)]
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    curvature = [torch.rand(s, generator=gen, dtype=dtype) * 20 for s in shapes]
    target = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]

    batched = [nn.Parameter(x.clone()) for x in init]
    batched_opt = cls(batched, **_replica(kwargs, None, as_tensor=True))
    separate = [[nn.Parameter(x[r].clone()) for x in init] for r in range(R)]
    separate_opts = [cls(separate[r], **_replica(kwargs, r, as_tensor=False)) for r in range(R)]

    for _ in range(40):
        for p, a, c in zip(batched, curvature, target, strict=True):
            p.grad = a * (p.detach() - c)
        batched_opt.step()
        for r in range(R):
            for p, a, c in zip(separate[r], curvature, target, strict=True):
                p.grad = a[r] * (p.detach() - c[r])
            separate_opts[r].step()

    for i in range(len(shapes)):
        stacked = torch.stack([separate[r][i].detach() for r in range(R)])
        assert_close(batched[i].detach(), stacked, **EXACT)
        for key, value in batched_opt.state[batched[i]].items():
            if isinstance(value, torch.Tensor) and all(
                key in separate_opts[r].state[separate[r][i]] for r in range(R)
            ):
                stacked_state = torch.stack(
                    [separate_opts[r].state[separate[r][i]][key] for r in range(R)]
                )
                assert_close(value, stacked_state, **EXACT)


def test_batched_state_dict_round_trip():
    w = nn.Parameter(torch.randn(3, 4))
    kwargs = {
        "lr": torch.tensor([0.1, 0.2, 0.3]),
        "delta": torch.tensor([0.0, 0.1, 0.2]),
        "decay": 0.5,
        "momentum": torch.tensor([0.0, 0.5, 0.9]),
    }
    opt = AcceleratedSGD([w], **kwargs)
    w.grad = torch.randn(3, 4)
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    w2 = nn.Parameter(w.detach().clone())
    opt2 = AcceleratedSGD([w2], lr=0.0)  # the loaded groups carry the per-replica values
    opt2.load_state_dict(state)
    assert_close(opt2.param_groups[0]["lr"], kwargs["lr"], **EXACT)
    for _ in range(3):
        g = torch.randn(3, 4)
        w.grad, w2.grad = g, g.clone()
        opt.step()
        opt2.step()
    assert_close(w, w2, **EXACT)


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs"), BATCHED_CONFIGS)
def test_state_lives_on_the_parameters_device(cls, kwargs):
    # The meta device has no data but runs every op: a CPU-only tensor in the code would fail here.
    w = nn.Parameter(torch.randn(R, 3, device="meta"))
    opt = cls([w], **_replica(kwargs, None, as_tensor=True))  # hyper-parameters on the CPU
    for _ in range(3):
        w.grad = torch.randn(R, 3, device="meta")
        opt.step()
    for value in opt.state[w].values():
        if isinstance(value, torch.Tensor):
            assert value.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("cls", "kwargs"), BATCHED_CONFIGS)
def test_cuda_matches_cpu(cls, kwargs):
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(R, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(R, 5, generator=gen, dtype=torch.float64) for _ in range(20)]
    results = []
    for device in ("cpu", "cuda"):
        w = nn.Parameter(init.clone().to(device))
        opt = cls([w], **_replica(kwargs, None, as_tensor=True))
        for g in grads:
            w.grad = g.to(device)
            opt.step()
        results.append(w.detach().cpu())
    assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)
