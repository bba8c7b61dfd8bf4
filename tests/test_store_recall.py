"""The store-recall task (its sentences, inputs, labels and loss) and the bellec2020-store-recall
experiment on the shared e-prop protocol."""

import dataclasses

import pytest
import torch

from neuroplastic.credit.eprop import EProp
from neuroplastic.experiments import EXPERIMENTS
from neuroplastic.experiments import bellec2020_store_recall as store_recall
from neuroplastic.experiments.base import RunContext
from neuroplastic.models.rsnn import RecurrentLIF
from neuroplastic.results import Key
from neuroplastic.tasks.evidence import EvidenceTask
from neuroplastic.tasks.store_recall import NOT_SCORED, RECALL, STORE, StoreRecallTask

SMALL = StoreRecallTask(length=8, char_ms=5, delay=2)


def test_sentences_alternate_store_and_recall_and_follow_every_store_with_a_bit():
    task = StoreRecallTask()
    sentences = task.sentences(500, torch.Generator().manual_seed(0))
    assert sentences.shape == (500, 12)
    for sentence in sentences.tolist():
        cues = [c for c in sentence if c in (STORE, RECALL)]
        assert cues and cues[0] == STORE and cues[-1] == RECALL
        assert all(a != b for a, b in zip(cues, cues[1:], strict=False))  # alternating
        for t, c in enumerate(sentence):
            if c == STORE:
                assert sentence[t + 1] in (0, 1)
    stores = (sentences == STORE).sum(1).float()
    assert 1 <= stores.mean() < 2  # one store in most sentences at p = 1/7


def test_the_label_of_a_recall_is_the_bit_shown_with_the_last_store():
    task = StoreRecallTask()
    x, labels = task.sample(64, torch.Generator().manual_seed(1))
    assert x.shape == (64, 2400, 100) and labels.shape == (64, 12)
    characters = x.reshape(64, 12, 200, 4, 25).mean((2, 4))  # (batch, char, group) rates
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    on = characters > 0.02
    assert (on.sum(2) >= 1).all()  # something is shown at every character
    shown_bit = characters[:, :, 1] > characters[:, :, 0]
    for b in range(64):
        stored = None
        for c in range(12):
            if on[b, c, 2]:  # store: shown together with a bit
                assert on[b, c, :2].sum() == 1
                stored = int(shown_bit[b, c])
            if on[b, c, 3]:
                assert labels[b, c] == stored
            else:
                assert labels[b, c] == NOT_SCORED
    active = x.reshape(64, 12, 200, 4, 25).transpose(2, 3)[on]  # (shown groups, 200, 25)
    assert active.mean().item() == pytest.approx(0.05, rel=0.05)


def test_the_distractor_after_a_store_is_flipped_half_the_time():
    task = StoreRecallTask()
    x, labels = task.sample(2000, torch.Generator().manual_seed(3))
    characters = x.reshape(2000, 12, 200, 4, 25).mean((2, 4))
    store = characters[:, :, 2] > 0.02
    bit = characters[:, :, 1] > characters[:, :, 0]
    after = torch.roll(store, 1, 1)
    same = (bit == torch.roll(bit, 1, 1))[after].float().mean().item()
    assert same == pytest.approx(0.5, abs=0.04)
    assert (labels != NOT_SCORED).any(1).all()


@pytest.mark.parametrize("task", [SMALL, EvidenceTask(n_cues=1, spacing=5, cue_ms=3,
                                                      delay=10, recall_ms=4)])  # fmt: skip
def test_eprop_targets_give_the_tasks_loss_and_its_gradient(task):
    """Without recurrence e-prop is BPTT: so the gradient from ``eprop_targets`` equals autograd
    through ``task.loss``, which ties the two descriptions of the loss together."""
    gen = torch.Generator().manual_seed(4)
    model = RecurrentLIF(task.n_inputs, 6, 2, n_adaptive=3, tau_a=30.0, v_th=0.3,
                         generator=gen).double()  # fmt: skip
    with torch.no_grad():
        model.w_rec.zero_()
        model.w_in.mul_(3.0)
    x, labels = task.sample(5, gen, dtype=torch.float64)
    y, z = model(x)
    loss = task.loss(y, labels)
    loss.backward()
    assert z.sum() > 0
    targets, mask = task.eprop_targets(labels)
    grads, eprop_loss = EProp(model, loss="cross_entropy").gradients(x, targets, mask)
    assert eprop_loss.item() == pytest.approx(loss.item(), rel=1e-12)
    for name in ("w_in", "w_out", "b_out"):
        assert torch.allclose(grads[name], getattr(model, name).grad, rtol=1e-10, atol=1e-13)


def test_the_loss_is_the_mean_cross_entropy_over_recall_steps_and_wrong_counts_recalls():
    x, labels = SMALL.sample(4, torch.Generator().manual_seed(5))
    steps = labels.repeat_interleave(5, 1)
    y = torch.randn(4, SMALL.steps, 2, generator=torch.Generator().manual_seed(6))
    scored = steps != NOT_SCORED
    expected = torch.nn.functional.cross_entropy(y[scored], steps[scored])
    assert SMALL.loss(y, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    perfect = torch.nn.functional.one_hot(labels.clamp(min=0), 2).float()
    perfect = perfect.repeat_interleave(5, 1)
    assert SMALL.wrong(perfect, labels) == (0, int((labels != NOT_SCORED).sum()))
    assert SMALL.wrong(1 - perfect, labels)[0] == int((labels != NOT_SCORED).sum())


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        StoreRecallTask(n_inputs=10)
    with pytest.raises(ValueError, match="length"):
        StoreRecallTask(length=2)


TINY = store_recall.Config(
    methods=("bptt", "eprop-random"), n_lif=6, n_alif=4, batch_size=2, iterations=2,
    eval_every=1, validation_trials=2, test_trials=3, trials=1, tune_iterations=1,
)  # fmt: skip


def test_the_experiment_is_registered_with_the_authors_set_up_and_runs():
    assert EXPERIMENTS["bellec2020-store-recall"] is store_recall.EXPERIMENT
    default = store_recall.Config()
    assert (default.n_lif, default.n_alif, default.tau_a) == (60, 40, 1200.0)
    assert (default.batch_size, default.iterations) == (128, 300)
    assert default.v_th == pytest.approx(0.03 / (1 - torch.exp(torch.tensor(-1 / 20)).item()))
    network, _ = store_recall.build(default, "eprop-symmetric", 0, torch.device("cpu"))
    assert network.n_adaptive == 40 and network.refractory == 0
    outcome = store_recall.EXPERIMENT.run(TINY, 0, RunContext(device=torch.device("cpu")))
    for method in TINY.methods:
        assert 0 <= outcome.metrics[Key(method, "test_error")] <= 1
        assert outcome.curves[Key(method, "validation_error")]["x"] == [1, 2]
    with pytest.raises(ValueError, match="unknown methods"):
        dataclasses.replace(TINY, methods=("bptt", "hebb"))
