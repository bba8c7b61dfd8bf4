"""e-prop against BPTT (autograd through the same dynamics): exact where the paper says it is."""

import pytest
import torch

from neuroplastic.credit.eprop import EProp
from neuroplastic.models.rsnn import RecurrentLIF

F64 = torch.float64


def network(recurrent: bool, seed: int = 0, refractory: int = 0) -> RecurrentLIF:
    gen = torch.Generator().manual_seed(seed)
    model = RecurrentLIF(6, 10, 2, tau_m=10.0, tau_out=15.0, v_th=0.3, refractory=refractory,
                         generator=gen).double()  # fmt: skip
    with torch.no_grad():
        model.w_in.mul_(2.0)  # enough drive for spikes in a short trial
        if not recurrent:
            model.w_rec.zero_()
    return model


def task(seed: int = 1, batch: int = 3, steps: int = 40):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, steps, 6, generator=gen) < 0.3).to(F64)
    target = torch.randn(batch, steps, 2, generator=gen, dtype=F64)
    return x, target


def bptt_gradients(model, x, target):
    model.zero_grad()
    y, z = model(x)
    loss = 0.5 * (y - target).pow(2).sum() / x.shape[0]
    loss.backward()
    assert z.sum() > 0, "the test network must spike"
    return {n: p.grad.clone() for n, p in model.named_parameters()}, loss.detach()


@pytest.mark.parametrize("refractory", [0, 3])
def test_without_recurrence_eprop_equals_bptt_for_input_and_readout_weights(refractory):
    model = network(recurrent=False, refractory=refractory)
    x, target = task()
    expected, loss = bptt_gradients(model, x, target)
    grads, eprop_loss = EProp(model).gradients(x, target)
    assert eprop_loss == pytest.approx(loss.item(), rel=1e-12)
    for name in ("w_in", "w_out", "b_out"):
        assert torch.allclose(grads[name], expected[name], rtol=1e-10, atol=1e-12), name
    assert expected["w_in"].abs().sum() > 0  # a gradient that is really there


def test_with_recurrence_eprop_approximates_bptt():
    model = network(recurrent=True)
    x, target = task()
    expected, _ = bptt_gradients(model, x, target)
    grads, _ = EProp(model).gradients(x, target)
    assert torch.allclose(grads["w_out"], expected["w_out"], rtol=1e-10, atol=1e-12)  # exact
    for name in ("w_in", "w_rec"):
        cosine = torch.nn.functional.cosine_similarity(
            grads[name].flatten(), expected[name].flatten(), dim=0
        )
        assert 0.5 < cosine < 1 - 1e-9, (name, cosine)  # close, not equal
    assert (grads["w_rec"].diagonal() == 0).all()  # no self-connections learn


def test_backward_writes_grad_for_any_optimiser_and_random_feedback_differs():
    model = network(recurrent=True)
    x, target = task()
    EProp(model).backward(x, target)
    symmetric = model.w_in.grad.clone()
    model.zero_grad(set_to_none=True)
    EProp(model, "random", torch.Generator().manual_seed(3)).backward(x, target)
    assert not torch.allclose(model.w_in.grad, symmetric)
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # a plain optimiser takes the step
    with pytest.raises(ValueError, match="feedback must be one of"):
        EProp(model, "adaptive-later")


def test_eprop_training_lowers_the_loss():
    model = network(recurrent=True, seed=4)
    x, target = task(seed=5, batch=4, steps=30)
    target = target * 0.2
    rule, optimizer = EProp(model), torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        losses.append(rule.backward(x, target).item())
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
