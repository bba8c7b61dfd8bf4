"""NIR export and import (``interop.nir_graph``): a trained evidence-accumulation network
round-trips exactly through a NIR file, the export says what NIR cannot express, and the graph
with its recorded reset describes our network exactly to an independent reader."""

import warnings

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from neuroplastic.experiments import bellec2020_evidence as evidence  # noqa: E402
from neuroplastic.experiments import eprop_protocol as protocol  # noqa: E402
from neuroplastic.interop import BeyondNIRWarning, from_nir, to_nir  # noqa: E402
from neuroplastic.models.rsnn import RecurrentLIF  # noqa: E402


def trained_evidence_network():
    """The evidence experiment's network after a few e-prop steps at a small batch."""
    config = evidence.Config(batch_size=8)
    model, rule = evidence.build(config, "eprop-symmetric", 0, torch.device("cpu"))
    optimizer = protocol.optimizer_for(model, rule, {"lr": 0.01})
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, labels = evidence.TASK.sample(8, gen)
        targets, mask = evidence.TASK.eprop_targets(labels)
        optimizer.zero_grad()
        rule.backward(x, targets, mask)
        optimizer.step()
    return model, evidence.TASK.sample(4, gen)[0]


def test_a_trained_evidence_network_round_trips_through_a_nir_file(tmp_path):
    model, x = trained_evidence_network()
    with pytest.warns(BeyondNIRWarning, match="threshold adaptation of the last 50 neurons"):
        graph = to_nir(model)
    nir.write(tmp_path / "evidence.nir", graph)
    restored = from_nir(nir.read(tmp_path / "evidence.nir"))
    for name, value in model.state_dict().items():
        if name != "w_rec":  # its diagonal is unused (held at zero) and exported as zero
            assert torch.equal(restored.state_dict()[name], value), name
    assert torch.equal(restored.recurrent_weights(), model.recurrent_weights())
    for attribute in ("alpha", "kappa", "rho", "v_th", "refractory", "dampening", "n_adaptive"):
        assert getattr(restored, attribute) == getattr(model, attribute), attribute
    with torch.no_grad():
        expected, restored_out = model(x), restored(x)
    assert torch.equal(restored_out[1], expected[1]) and expected[1].sum() > 0
    assert torch.equal(restored_out[0], expected[0])


def test_strict_export_refuses_what_nir_cannot_express():
    model = RecurrentLIF(3, 5, 2, n_adaptive=2, refractory=2)
    with pytest.raises(ValueError, match="reset by subtraction.*refractory period of 2 steps"):
        to_nir(model, strict=True)


def test_the_graph_is_plain_nir_with_euler_constants():
    model = RecurrentLIF(3, 5, 2, tau_m=20.0, tau_out=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BeyondNIRWarning)
        graph = to_nir(model, dt=1e-3)
    lif, readout = graph.nodes["lif"], graph.nodes["readout"]
    assert isinstance(lif, nir.LIF) and isinstance(readout, nir.LI)
    assert np.allclose(1 - 1e-3 / lif.tau, model.alpha) and np.allclose(lif.r * 1e-3 / lif.tau, 1)
    assert np.allclose(1 - 1e-3 / readout.tau, model.kappa)
    assert np.array_equal(graph.nodes["w_rec"].weight.diagonal(), np.zeros(5, np.float32))
    assert ("w_rec", "lif") in graph.edges and ("lif", "w_rec") in graph.edges


def read_graph(graph, x, dt, reset):
    """A reader of the graph: forward Euler with step ``dt``, the recurrent edge one step late,
    and after a spike either NIR's reset to ``v_reset`` (``"zero"``) or the reset by subtraction
    that the graph's metadata records (``"subtract"``). ``x`` ``(T, n_in)``; spikes ``(T, n)``."""
    lif = graph.nodes["lif"]
    w_in, w_rec = (graph.nodes[name].weight.astype(np.float64) for name in ("w_in", "w_rec"))
    tau, r, v_th = (np.asarray(a, np.float64) for a in (lif.tau, lif.r, lif.v_threshold))
    v_th = graph.metadata["neuroplastic"]["v_th"] if reset == "subtract" else v_th
    v, z, out = np.zeros(len(tau)), np.zeros(len(tau)), []
    for x_t in x:
        current = w_in @ x_t + w_rec @ z
        if reset == "subtract":  # folded into the step, as the extension defines it
            current = current - v_th * z / r * tau / dt
        v = v + dt / tau * (lif.v_leak - v + r * current)
        z = (v > v_th).astype(float)
        if reset == "zero":
            v = np.where(z > 0, lif.v_reset, v)
        out.append(z)
    return np.stack(out)


def test_the_graph_with_its_reset_extension_describes_our_network_exactly():
    """A reader that honours the recorded subtractive reset reproduces our spikes from the graph
    alone (Euler constants, weight orientation, the recurrent delay); NIR's own reset to zero
    gives a different network, which is what the export's warning says."""
    gen = torch.Generator().manual_seed(1)
    model = RecurrentLIF(6, 10, 2, v_th=0.5, generator=gen, backend="torch")
    with torch.no_grad():  # weights that float32 holds exactly, then float64 throughout
        for p in model.parameters():
            p.copy_(p.to(torch.float32))
    model = model.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BeyondNIRWarning)
        graph = to_nir(model, dt=1e-3)
    x = (torch.rand(60, 6, generator=gen) < 0.4).double()
    with torch.no_grad():
        _, spikes = model(x[None])
    ours = spikes[0].numpy()
    assert ours.sum() > 30
    assert np.array_equal(read_graph(graph, x.numpy(), 1e-3, "subtract"), ours)
    assert not np.array_equal(read_graph(graph, x.numpy(), 1e-3, "zero"), ours)
