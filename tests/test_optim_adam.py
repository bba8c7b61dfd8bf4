"""Tests of neuroplastic.optim.ReplicaAdam: Adam with per-replica hyper-parameters.

The reference is ``torch.optim.Adam(..., foreach=False)``, the single-tensor code that
``torch.optim.Adam`` runs by default on the CPU. In float32 and float64 the comparisons are exact
(bit for bit): with float hyper-parameters ReplicaAdam performs torch's operations, and with
per-replica tensors it computes each replica's scalars with torch's float64 formulas and feeds
them to operations that round alike. Below float32 they are compared to a tolerance: there torch's
own kernels round differently in their vectorised and scalar loops, so results depend on the
tensor's layout even within torch.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from neuroplastic.optim import ReplicaAdam

EXACT = {"rtol": 0.0, "atol": 0.0}
R = 4


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is many times faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Hand-computed example
# --------------------------------------------------------------------------------------------


def test_two_steps_by_hand():
    # lr = 0.75, beta1 = 0.5, beta2 = 0.75, eps = 2, weight_decay = 0.5, W0 = 2. A large eps makes
    # its place visible: it is added to sqrt(v_hat), after the bias correction (Algorithm 1).
    # step 1: g = 1 + 0.5*2 = 2;     m = 0.5*0 + 0.5*2 = 1;     v = 0.75*0 + 0.25*4 = 1
    #         m_hat = 1/0.5 = 2;     v_hat = 1/0.25 = 4;        W1 = 2 - 0.75*2/(2 + 2) = 1.625
    # step 2: g = 4.1875 + 0.5*1.625 = 5;  m = 0.5*1 + 0.5*5 = 3;  v = 0.75*1 + 0.25*25 = 7
    #         m_hat = 3/0.75 = 4;    v_hat = 7/0.4375 = 16;     W2 = 1.625 - 0.75*4/(4 + 2) = 1.125
    # (with eps before the bias correction, as in the paper's "efficient version", W1 would be
    #  2 - 1.5*1/(1 + 2) = 1.5 instead.)
    hyper = {"lr": 0.75, "betas": (0.5, 0.75), "eps": 2.0, "weight_decay": 0.5}
    expected = {"W": [1.625, 1.125], "exp_avg": [1.0, 3.0], "exp_avg_sq": [1.0, 7.0]}
    for opt_class in (ReplicaAdam, torch.optim.Adam):  # torch agrees with the pencil
        w = nn.Parameter(t64([2.0]))
        opt = opt_class([w], **hyper)
        for t, raw_grad in enumerate([1.0, 4.1875]):
            w.grad = t64([raw_grad])
            opt.step()
            assert_close(w.detach(), t64([expected["W"][t]]), **EXACT)
            assert_close(opt.state[w]["exp_avg"], t64([expected["exp_avg"][t]]), **EXACT)
            assert_close(opt.state[w]["exp_avg_sq"], t64([expected["exp_avg_sq"][t]]), **EXACT)
        assert int(opt.state[w]["step"]) == 2


def test_two_replicas_by_hand():
    # Replica 0 is the example above; replica 1 has lr = 0.5, beta1 = 0, beta2 = 0.5, eps = 0,
    # weight_decay = 0, W0 = 1 and raw gradients 4, -1:
    # step 1: m = 4, v = 0.5*16 = 8, v_hat = 8/0.5 = 16;   W1 = 1 - 0.5*4/4 = 0.5
    # step 2: m = -1, v = 0.5*8 + 0.5*1 = 4.5, v_hat = 4.5/0.75 = 6, W2 = 0.5 + 0.5/sqrt(6)
    w = nn.Parameter(t64([2.0, 1.0]))
    opt = ReplicaAdam(
        [w],
        lr=t64([0.75, 0.5]),
        betas=(t64([0.5, 0.0]), t64([0.75, 0.5])),
        eps=t64([2.0, 0.0]),
        weight_decay=t64([0.5, 0.0]),
    )
    w.grad = t64([1.0, 4.0])
    opt.step()
    # replica 1's sqrt(v) / sqrt(1 - beta2) = sqrt(8) / sqrt(0.5) is 4 only up to rounding
    assert_close(w.detach(), t64([1.625, 0.5]), rtol=1e-15, atol=0.0)
    w.grad = t64([4.1875, -1.0])
    opt.step()
    # sqrt(4.5) / sqrt(0.75) is sqrt(6) up to rounding: compared to a float64 tolerance
    assert_close(w.detach(), t64([1.125, 0.5 + 0.5 / 6**0.5]), rtol=1e-15, atol=0.0)
    assert_close(opt.state[w]["exp_avg"], t64([3.0, -1.0]), **EXACT)
    assert_close(opt.state[w]["exp_avg_sq"], t64([7.0, 4.5]), **EXACT)


# --------------------------------------------------------------------------------------------
# Per-replica hyper-parameters: one batched optimiser equals R separate torch.optim.Adam
# --------------------------------------------------------------------------------------------

BATCHED_CONFIGS = [
    pytest.param(
        {
            "lr": [1e-3, 3e-2, 0.1, 7e-3],
            "beta1": [0.9, 0.0, 0.5, 0.99],
            "beta2": [0.999, 0.9, 0.75, 0.0],
            "eps": [1e-8, 1e-3, 0.0, 0.3],
            "weight_decay": [0.0, 0.01, 0.5, 1e-4],
        },
        id="all-per-replica",
    ),
    pytest.param({"lr": [1e-3, 3e-2, 0.1, 7e-3]}, id="lr-only"),
    pytest.param(
        {"beta1": [0.8, 0.9, 0.95, 0.5], "beta2": 0.99, "weight_decay": 1e-2, "eps": 1e-6},
        id="beta1-only",
    ),
    pytest.param(
        {"lr": 0.01, "beta2": [0.9, 0.99, 0.999, 0.5], "eps": [1e-8, 1e-6, 1e-4, 1e-2]},
        id="beta2-and-eps",
    ),
    pytest.param({"weight_decay": [0.0, 0.1, 0.0, 1.0], "lr": 0.05}, id="weight-decay-only"),
]


def _settings(config, r):
    """Replica r's float hyper-parameters, as keyword arguments of torch.optim.Adam."""

    def pick(name, default):
        v = config.get(name, default)
        return v[r] if isinstance(v, list) else v

    return {
        "lr": pick("lr", 1e-3),
        "betas": (pick("beta1", 0.9), pick("beta2", 0.999)),
        "eps": pick("eps", 1e-8),
        "weight_decay": pick("weight_decay", 0.0),
    }


def _batched_settings(config):
    """The same hyper-parameters for ReplicaAdam: lists become 1-D tensors."""

    def pick(name, default):
        v = config.get(name, default)
        return t64(v) if isinstance(v, list) else v

    return {
        "lr": pick("lr", 1e-3),
        "betas": (pick("beta1", 0.9), pick("beta2", 0.999)),
        "eps": pick("eps", 1e-8),
        "weight_decay": pick("weight_decay", 0.0),
    }


def _run_batched_and_separate(config, dtype, *, steps=50, maximize=False):
    """ReplicaAdam on (R, ...) parameters and R torch.optim.Adam on their slices, same gradients.

    The third parameter gets a gradient only every third step, so that parameters of one group
    are at different step counts (and bias corrections).
    """
    gen = torch.Generator().manual_seed(0)
    shapes = [(R, 3, 2), (R, 5), (R,)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    batched = [nn.Parameter(x.clone()) for x in init]
    batched_opt = ReplicaAdam(batched, maximize=maximize, **_batched_settings(config))
    separate = [[nn.Parameter(x[r].clone()) for x in init] for r in range(R)]
    separate_opts = [
        torch.optim.Adam(separate[r], foreach=False, maximize=maximize, **_settings(config, r))
        for r in range(R)
    ]
    for t in range(steps):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
        grads[2] = grads[2] if t % 3 == 0 else None
        for p, g in zip(batched, grads, strict=True):
            p.grad = None if g is None else g.clone()
        batched_opt.step()
        for r in range(R):
            for p, g in zip(separate[r], grads, strict=True):
                p.grad = None if g is None else g[r].clone()
            separate_opts[r].step()
    return batched, batched_opt, separate, separate_opts


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", BATCHED_CONFIGS)
def test_batched_replicas_equal_separate_torch_adam_exactly(config, dtype, maximize):
    batched, batched_opt, separate, separate_opts = _run_batched_and_separate(
        config, dtype, maximize=maximize
    )
    for i, p in enumerate(batched):
        stacked = torch.stack([separate[r][i].detach() for r in range(R)])
        assert_close(p.detach(), stacked, **EXACT)
        state = batched_opt.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            expected = torch.stack([separate_opts[r].state[separate[r][i]][key] for r in range(R)])
            assert_close(state[key], expected, **EXACT)
        assert state["step"] == int(separate_opts[0].state[separate[0][i]]["step"])
    assert batched_opt.state[batched[2]]["step"] == 17  # steps 0, 3, ..., 48 of 50
    assert batched_opt.state[batched[0]]["step"] == 50


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
def test_low_precision_replicas_are_close_to_separate_torch_adam(dtype, tolerance):
    # Below float32 torch rounds some scalar operations differently in its vectorised and scalar
    # loops (e.g. bfloat16 add(alpha=)); batched and separate tensors take different loops.
    config = BATCHED_CONFIGS[0].values[0]
    batched, _, separate, _ = _run_batched_and_separate(config, dtype)
    for i, p in enumerate(batched):
        assert p.dtype == dtype
        stacked = torch.stack([separate[r][i].detach() for r in range(R)])
        assert_close(p.detach(), stacked, rtol=tolerance, atol=tolerance)


def test_equal_per_replica_values_equal_floats():
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(R, 6, generator=gen)
    as_floats, as_tensors = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    opt_floats = ReplicaAdam([as_floats], lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    opt_tensors = ReplicaAdam(
        [as_tensors],
        lr=t64([0.02] * R),
        betas=(t64([0.8] * R), 0.99),
        eps=t64([1e-6] * R),
        weight_decay=t64([0.1] * R),
    )
    for _ in range(20):
        g = torch.randn(R, 6, generator=gen)
        as_floats.grad, as_tensors.grad = g.clone(), g.clone()
        opt_floats.step()
        opt_tensors.step()
    assert_close(as_tensors.detach(), as_floats.detach(), **EXACT)


# --------------------------------------------------------------------------------------------
# Float hyper-parameters: torch.optim.Adam on an ordinary module
# --------------------------------------------------------------------------------------------


def tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def tiny_data(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=gen).to(dtype)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.5 * x[:, :1]
    return x, y


def train(model, opt, steps):
    x, y = tiny_data(dtype=next(model.parameters()).dtype)
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
    "hyper",
    [
        {},
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05},
        {"lr": 0.1, "betas": (0.0, 0.5), "eps": 0.0},
    ],
    ids=["defaults", "with-decay", "no-momentum"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_hyper_parameters_equal_torch_adam_on_a_module(hyper, dtype):
    reference, model = tiny_model(dtype=dtype), tiny_model(dtype=dtype)
    reference_losses = train(reference, torch.optim.Adam(reference.parameters(), **hyper), 60)
    losses = train(model, ReplicaAdam(model.parameters(), **hyper), 60)
    assert losses == reference_losses
    for a, b in zip(params_of(model), params_of(reference), strict=True):
        assert_close(a, b, **EXACT)
    assert losses[-1] < losses[0]


def test_defaults_are_torch_adams():
    opt = ReplicaAdam([nn.Parameter(torch.ones(2))])
    reference = torch.optim.Adam([nn.Parameter(torch.ones(2))])
    for key in ("lr", "betas", "eps", "weight_decay", "maximize"):
        assert opt.defaults[key] == reference.defaults[key]


# --------------------------------------------------------------------------------------------
# torch.optim conventions: state_dict, param groups, closure, grads from anywhere
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hyper",
    [
        pytest.param({"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 1e-3}, id="floats"),
        pytest.param(
            {
                "lr": t64([0.01, 0.02, 0.05]),
                "betas": (t64([0.8, 0.9, 0.0]), 0.99),
                "eps": t64([1e-8, 1e-4, 1e-2]),
                "weight_decay": t64([0.0, 0.1, 1e-3]),
            },
            id="per-replica",
        ),
    ],
)
def test_state_dict_round_trip_continues_identically(hyper):
    gen = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(3, 4, generator=gen))
    b = nn.Parameter(torch.randn(3, generator=gen))
    opt = ReplicaAdam([w, b], **hyper)
    grads = [(torch.randn(3, 4, generator=gen), torch.randn(3, generator=gen)) for _ in range(20)]
    for gw, gb in grads[:10]:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()

    buffer = io.BytesIO()
    torch.save({"w": w.detach(), "b": b.detach(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    w2, b2 = nn.Parameter(saved["w"].clone()), nn.Parameter(saved["b"].clone())
    resumed = ReplicaAdam([w2, b2], lr=0.5)  # the loaded groups carry the saved values
    resumed.load_state_dict(saved["opt"])
    group, saved_group = resumed.param_groups[0], opt.param_groups[0]
    for key in ("lr", "eps", "weight_decay"):
        assert_close(torch.as_tensor(group[key]), torch.as_tensor(saved_group[key]), **EXACT)
    assert isinstance(group["betas"], tuple)
    assert resumed.state[w2]["step"] == 10

    for gw, gb in grads[10:]:
        w.grad, b.grad = gw.clone(), gb.clone()
        w2.grad, b2.grad = gw.clone(), gb.clone()
        opt.step()
        resumed.step()
    assert_close(w2.detach(), w.detach(), **EXACT)
    assert_close(b2.detach(), b.detach(), **EXACT)
    assert_close(resumed.state[w2]["exp_avg_sq"], opt.state[w]["exp_avg_sq"], **EXACT)


def test_param_groups_behave_like_separate_optimisers():
    gen = torch.Generator().manual_seed(5)
    a0, b0 = torch.randn(R, 3, generator=gen), torch.randn(R, 2, 2, generator=gen)
    first = {"lr": t64([0.01, 0.02, 0.03, 0.04]), "betas": (0.5, t64([0.9, 0.99, 0.5, 0.0]))}
    second = {"eps": 1e-3, "weight_decay": t64([0.0, 0.1, 0.2, 0.3])}

    a, b = nn.Parameter(a0.clone()), nn.Parameter(b0.clone())
    grouped = ReplicaAdam([{"params": [a], **first}, {"params": [b], **second}], lr=0.05)
    assert grouped.param_groups[1]["lr"] == 0.05  # from the defaults
    assert grouped.param_groups[0]["eps"] == 1e-8

    a_alone, b_alone = nn.Parameter(a0.clone()), nn.Parameter(b0.clone())
    separate = [ReplicaAdam([a_alone], **first), ReplicaAdam([b_alone], lr=0.05, **second)]
    for _ in range(25):
        ga, gb = torch.randn(R, 3, generator=gen), torch.randn(R, 2, 2, generator=gen)
        a.grad, b.grad, a_alone.grad, b_alone.grad = ga, gb, ga.clone(), gb.clone()
        grouped.step()
        for opt in separate:
            opt.step()
    assert_close(a.detach(), a_alone.detach(), **EXACT)
    assert_close(b.detach(), b_alone.detach(), **EXACT)


def test_hyper_parameter_tensors_are_copied_and_kept_in_float64_on_the_cpu():
    lr = torch.tensor([0.1, 0.2], dtype=torch.float32)
    w = nn.Parameter(torch.zeros(2, 3))
    opt = ReplicaAdam([w], lr=lr)
    lr.mul_(100.0)  # a later change of the caller's tensor does not reach the optimiser
    group_lr = opt.param_groups[0]["lr"]
    assert group_lr.dtype == torch.float64 and group_lr.device.type == "cpu"
    assert_close(group_lr, torch.tensor([0.1, 0.2], dtype=torch.float32).double(), **EXACT)
    w.grad = torch.ones(2, 3)
    opt.step()  # first step of Adam: exactly -lr * sign(g) up to eps
    assert_close(w.detach()[:, 0], -torch.tensor([0.1, 0.2]), rtol=1e-6, atol=0.0)


def test_parameters_without_grad_are_left_alone():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = ReplicaAdam([a, b], lr=torch.tensor([0.1, 0.2]))
    a.grad = torch.ones(2)
    opt.step()
    assert_close(b.detach(), torch.ones(2), **EXACT)
    assert len(opt.state[b]) == 0
    assert opt.state[a]["step"] == 1


def test_closure_is_called_and_its_loss_returned():
    model = tiny_model()
    x, y = tiny_data()
    opt = ReplicaAdam(model.parameters(), lr=0.01)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), torch.Tensor)


def test_grad_written_by_another_rule_is_used_as_is():
    # A credit-assignment rule writes .grad without autograd; Adam's first step is -lr * sign(g).
    layer = nn.Linear(3, 2, bias=False)
    opt = ReplicaAdam(layer.parameters(), lr=0.1, eps=0.0)
    before = layer.weight.detach().clone()
    layer.weight.grad = torch.tensor([[1.0, -0.25, -2.0], [0.5, -0.5, 3.0]])
    opt.step()
    expected = -0.1 * torch.tensor([[1.0, -1.0, -1.0], [1.0, -1.0, 1.0]])
    assert_close(layer.weight.detach() - before, expected)


def test_sparse_gradients_are_rejected():
    w = nn.Parameter(torch.zeros(3))
    opt = ReplicaAdam([w])
    w.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"lr": torch.tensor([[0.1, 0.2]])}, "1-D"),
        ({"lr": torch.tensor([0.1, -0.2])}, r"lr\[1\]"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\]"),
        ({"betas": (-0.1, 0.999)}, r"betas\[0\]"),
        ({"betas": (0.9, 1.0)}, r"betas\[1\]"),
        ({"betas": (0.9, float("inf"))}, r"betas\[1\]"),
        ({"betas": (0.9, torch.tensor([0.99, 1.0]))}, r"betas\[1\]\[1\]"),
        ({"betas": (0.9,)}, "pair"),
        ({"betas": 0.9}, "pair"),
        ({"betas": torch.tensor([0.9, 0.999])}, "pair"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"weight_decay": torch.tensor([0.1, float("nan")])}, r"weight_decay\[1\]"),
        ({"maximize": "yes"}, "maximize"),
        ({"maximize": 1}, "maximize"),
    ],
)
def test_invalid_hyper_parameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReplicaAdam([nn.Parameter(torch.ones(2, 2))], **kwargs)


def test_replica_hyper_parameters_must_fit_the_parameters():
    with pytest.raises(ValueError, match="leading replica dimension"):
        ReplicaAdam([nn.Parameter(torch.ones(3, 2))], lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="leading replica dimension"):
        ReplicaAdam([nn.Parameter(torch.tensor(1.0))], eps=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="same length"):
        ReplicaAdam(
            [nn.Parameter(torch.ones(2, 2))],
            lr=torch.tensor([0.1, 0.2]),
            betas=(torch.tensor([0.9, 0.8, 0.7]), 0.999),
        )
    with pytest.raises(ValueError, match="floating-point"):
        ReplicaAdam([nn.Parameter(torch.ones(2, dtype=torch.int64), requires_grad=False)])


def test_an_invalid_param_group_is_rejected_and_not_added():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = ReplicaAdam([a], lr=0.1)
    with pytest.raises(ValueError, match=r"param group 1: betas\[1\]"):
        opt.add_param_group({"params": [b], "betas": (0.9, 1.5)})
    with pytest.raises(ValueError, match="param group 1: lr"):
        opt.add_param_group({"params": [b], "lr": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b], "betas": [0.5, 0.9]})
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1]["betas"] == (0.5, 0.9)


def test_an_invalid_loaded_state_dict_is_rejected():
    w = nn.Parameter(torch.ones(2))
    opt = ReplicaAdam([w])
    state = opt.state_dict()
    state["param_groups"][0]["betas"] = (0.9, 2.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        ReplicaAdam([nn.Parameter(torch.ones(2))]).load_state_dict(state)


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


def test_state_lives_on_the_parameters_device():
    # The meta device has no data but runs every op: a CPU-only tensor in the code would fail here.
    w = nn.Parameter(torch.randn(R, 3, device="meta"))
    opt = ReplicaAdam([w], **_batched_settings(BATCHED_CONFIGS[0].values[0]))
    for _ in range(3):
        w.grad = torch.randn(R, 3, device="meta")
        opt.step()
    for key in ("exp_avg", "exp_avg_sq"):
        assert opt.state[w][key].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("config", BATCHED_CONFIGS)
def test_cuda_matches_cpu(config):
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(R, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(R, 5, generator=gen, dtype=torch.float64) for _ in range(30)]
    results = []
    for device in ("cpu", "cuda"):
        w = nn.Parameter(init.clone().to(device))
        opt = ReplicaAdam([w], **_batched_settings(config))
        for g in grads:
            w.grad = g.to(device)
            opt.step()
        assert opt.state[w]["exp_avg"].device.type == device
        results.append(w.detach().cpu())
    assert_close(results[1], results[0], rtol=1e-12, atol=1e-12)
