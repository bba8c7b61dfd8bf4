"""The evidence-accumulation task: its layout in time and channels, and labels that follow the
cues."""

import pytest
import torch

from neuroplastic.tasks.evidence import EvidenceTask


def test_trials_have_the_papers_layout_and_labels_follow_the_majority_of_cues():
    task = EvidenceTask()
    assert task.steps == 2250
    x, labels = task.sample(400, torch.Generator().manual_seed(0))
    assert x.shape == (400, 2250, 40) and labels.shape == (400,)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    left, right, recall, noise = (x[:, :, 10 * g : 10 * (g + 1)] for g in range(4))
    assert recall[:, :-150].sum() == 0 and recall[:, -150:].mean() == pytest.approx(0.04, rel=0.1)
    assert noise.mean() == pytest.approx(0.01, rel=0.05)
    assert left[:, :50].sum() == 0 and right[:, 1050:].sum() == 0  # silence before, delay after
    windows = [slice(50 + 150 * k, 150 + 150 * k) for k in range(7)]
    cue_spikes = torch.stack([right[:, w].sum((1, 2)) > left[:, w].sum((1, 2)) for w in windows], 1)
    agreement = ((cue_spikes.sum(1) > 3).long() == labels).float().mean()
    assert agreement > 0.9  # the label is the side with more cues (cue windows can be silent)
    assert 0.35 < labels.float().mean() < 0.65
    mask = task.recall_mask()
    assert mask.sum() == pytest.approx(1.0) and (mask[:-150] == 0).all()


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        EvidenceTask(n_inputs=42)
    with pytest.raises(ValueError, match="odd"):
        EvidenceTask(n_cues=6)
