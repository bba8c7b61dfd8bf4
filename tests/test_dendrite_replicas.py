"""The fixed-shape replica step of the segregated-dendrite network (``kernels.dendrite_replicas``,
the path for GPUs) against the per-example paths on the same counter stream, on the CPU."""

import pytest
import torch

from dendrite_networks import images, make_net
from neuroplastic.credit.plateau import learn_example, learn_examples
from neuroplastic.kernels import counter_random as crandom
from neuroplastic.kernels.counter_random import CounterStream
from neuroplastic.kernels.dendrite_replicas import ReplicaTrainer, learn_example_padded
from neuroplastic.models.segregated_dendrites import (
    DendriticParams,
    phase_lengths,
    poisson_from_uniform,
)

F64 = torch.float64
DYNAMICS = {
    "authors": DendriticParams(),
    "paper": DendriticParams(psp_kernel="paper", integration="exponential"),
}


def assert_states_equal(a, b):
    """Spike histories exactly (counts), somatic potentials to rounding."""
    assert torch.equal(a.input_history, b.input_history)
    for x, y in zip(a.spike_history, b.spike_history, strict=True):
        assert torch.equal(x, y)
    for x, y in zip(a.soma, b.soma, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def assert_nets_equal(a, b):
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    for x, y in zip(a.feedback, b.feedback, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def test_dense_poisson_counts_equal_the_gathered_ones():
    """Rates up to 6 per step (counts well beyond 2) and the MNIST range; the dense counts
    settle every draw as the gathered path settles the few beyond S_2."""
    g = torch.Generator().manual_seed(0)
    for top in (0.2, 6.0):
        rate = top * torch.rand(4, 3, 50, 7, generator=g, dtype=F64)
        uniform = torch.rand(4, 3, 50, 7, generator=g, dtype=F64)
        dense = poisson_from_uniform(rate, uniform, dense=True)
        assert torch.equal(dense, poisson_from_uniform(rate, uniform))
        assert dense.max() >= (5 if top > 1 else 1)
    # a rate broadcast over the steps, as the input's is
    rate = 0.2 * torch.rand(2, 1, 1, 30, generator=g, dtype=F64)
    uniform = torch.rand(2, 1, 40, 30, generator=g, dtype=F64)
    assert torch.equal(
        poisson_from_uniform(rate, uniform, dense=True), poisson_from_uniform(rate, uniform)
    )


@pytest.mark.parametrize("dynamics", list(DYNAMICS))
@pytest.mark.parametrize(
    ("sizes", "feedback"),
    [((30, 5), "random"), ((30, 12, 5), "sparse"), ((30, 12, 8, 5), "symmetric")],
)
def test_padded_examples_equal_the_torch_path(sizes, feedback, dynamics):
    """Four online examples of 3 replicas, each phase padded beyond its length (to 64 steps, and
    the paper's kernel is longer than a phase): the same spikes, state and weights as
    ``learn_example`` on the same counter stream (its phases on ``counter_noise``, the inputs'
    weights applied spike by spike)."""
    params = DYNAMICS[dynamics]
    rates = (0.23, 0.23, 0.12)[-(len(sizes) - 1) :]
    nets = [make_net(sizes, feedback=feedback, params=params) for _ in range(2)]
    x = params.phi_max * images(3, 4, sizes[0])
    y = torch.randint(0, sizes[-1], (3, 4), generator=torch.Generator().manual_seed(3))
    lengths = phase_lengths(params, torch.Generator().manual_seed(0), 4)
    stream = CounterStream.of([7, 8, 9], range(3), example=20)
    keys = crandom.words_tensor(stream.words())
    padded_state = loop_state = nets[0].initial_state()
    for e in range(4):
        xe, ye = x[:, e : e + 1], y[:, e : e + 1]
        key = stream._replace(example=20 + e)
        loop = learn_example(nets[0], loop_state, xe, ye, key, tuple(lengths[e].tolist()), rates)
        padded = learn_example_padded(
            nets[1], padded_state, xe, ye, keys, torch.full((3, 1), 20 + e),
            lengths[e].expand(3, 2), (64, 64), torch.tensor([rates] * 3, dtype=F64),
        )  # fmt: skip
        assert_states_equal(loop[0], padded[0])
        for a, b in zip(loop[1:], padded[1:], strict=True):
            fields = zip((*a.soma, *a.rate, *a.input_psp, *a.apical),
                         (*b.soma, *b.rate, *b.input_psp, *b.apical), strict=True)  # fmt: skip
            for x_a, x_b in fields:
                torch.testing.assert_close(x_a, x_b, rtol=1e-9, atol=1e-12)
        assert_nets_equal(nets[0], nets[1])
        loop_state, padded_state = loop[0], padded[0]
    assert sum(int(h.sum()) for h in loop_state.spike_history) > 0
    assert not torch.equal(nets[1].weights[-1], make_net(sizes, params=params).weights[-1])


def test_each_replica_its_own_phase_lengths_and_learning_rates():
    """Settings as replicas: three networks with their own phase lengths and learning rates in
    one batch, each equal to the same network trained alone through ``learn_examples``."""
    sizes, params = (30, 12, 5), DendriticParams()
    own_rates = torch.tensor([[0.23, 0.12], [0.5, 0.05], [0.1, 0.3]], dtype=F64)
    x = params.phi_max * images(3, 5, 30)
    y = torch.randint(0, 5, (3, 5), generator=torch.Generator().manual_seed(3))
    lengths = torch.stack(
        [phase_lengths(params, torch.Generator().manual_seed(r), 5) for r in range(3)]
    )  # (R, C, 2), different for each replica
    assert not torch.equal(lengths[0], lengths[1])
    seeds = [4, 5, 6]
    batch = make_net(sizes, seeds=seeds)
    stream = CounterStream.of(seeds, example=3)
    trainer = ReplicaTrainer(batch, own_rates, pad=16)
    state, signals = trainer.learn_examples(batch.initial_state(), x, y, stream, lengths)
    for r, seed in enumerate(seeds):
        alone = make_net(sizes, replicas=1, seeds=[seed])
        alone_state, alone_signals = learn_examples(
            alone, alone.initial_state(), x[r : r + 1], y[r : r + 1],
            CounterStream.of([seed], example=3), lengths[r].tolist(), own_rates[r].tolist(),
        )  # fmt: skip
        for a, b in zip(alone.parameters(), batch.parameters(), strict=True):
            torch.testing.assert_close(a[0], b[r], rtol=1e-9, atol=1e-12)
        assert torch.equal(alone_state.spike_history[0][0], state.spike_history[0][r])
        for a, b in zip(alone_signals, signals, strict=True):
            a, b = (a, b) if isinstance(a, torch.Tensor) else (a[0], b[0])
            torch.testing.assert_close(a[0], b[r], rtol=1e-9, atol=1e-12)


def test_the_trainer_follows_learn_examples():
    """A run of six examples through ``ReplicaTrainer`` (eager, on the CPU) and through
    ``credit.plateau.learn_examples``: the same state and per-example signals."""
    sizes, rates = (30, 12, 8, 5), (0.23, 0.23, 0.12)
    nets = [make_net(sizes) for _ in range(2)]
    x = nets[0].params.phi_max * images(3, 6, 30)
    y = torch.randint(0, 5, (3, 6), generator=torch.Generator().manual_seed(4))
    lengths = phase_lengths(nets[0].params, torch.Generator().manual_seed(0), 6).tolist()
    stream = CounterStream.of(range(3), range(3), example=40)
    start = nets[0].initial_state()
    loop_state, loop = learn_examples(nets[0], start, x, y, stream, lengths, rates)
    trainer = ReplicaTrainer(nets[1], rates)
    assert not trainer.graphs  # on the CPU the step runs eagerly
    state, signals = trainer.learn_examples(nets[1].initial_state(), x, y, stream, lengths)
    assert_states_equal(loop_state, state)
    assert_nets_equal(nets[0], nets[1])
    torch.testing.assert_close(loop.output_soma, signals.output_soma, rtol=1e-9, atol=1e-12)
    for field in ("plateau_errors", "backprop_errors"):
        for a, b in zip(getattr(loop, field), getattr(signals, field), strict=True):
            assert a.abs().sum() > 0
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_padding_rounds_up_to_few_shapes():
    trainer = ReplicaTrainer(make_net((30, 5)), (0.2,), pad=16)
    assert trainer.padded(torch.tensor([[50, 51], [52, 64]])) == (64, 64)
    assert trainer.padded(torch.tensor([[65, 50]])) == (80, 64)


def test_bad_arguments_are_refused_with_reasons():
    net = make_net((30, 12, 5))
    with pytest.raises(ValueError, match=r"per replica and layer \(3, 2\)"):
        ReplicaTrainer(net, (0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="pad"):
        ReplicaTrainer(net, (0.1, 0.2), pad=0)
    with pytest.raises(ValueError, match="CUDA device"):
        ReplicaTrainer(net, (0.1, 0.2), graphs=True)
    with pytest.raises(ValueError, match="g_a = 0"):
        ReplicaTrainer(make_net((30, 12, 5), params=DendriticParams(g_a=0.05)), (0.1, 0.2))
    trainer = ReplicaTrainer(net, (0.1, 0.2))
    x, y = images(3, 2, 30), torch.zeros(3, 2, dtype=torch.int64)
    stream = CounterStream.of([0, 1, 2])
    with pytest.raises(ValueError, match="at least the 20 steps"):
        trainer.learn_examples(net.initial_state(), x, y, stream, [(19, 50), (50, 50)])
    with pytest.raises(ValueError, match="phase lengths"):
        trainer.learn_examples(net.initial_state(), x, y, stream, [(50, 50)])
    with pytest.raises(ValueError, match="one key per replica"):
        trainer.learn_examples(net.initial_state(), x, y, CounterStream.of([0]), [(50, 50)] * 2)
