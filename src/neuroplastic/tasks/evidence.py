"""Evidence accumulation (Morcos & Harvey 2016's "towers" task as Bellec et al. 2020 set it up for
spiking networks, Fig. 3): count left and right cues, remember the count through a delay, report
the side that had more when a recall cue comes.

A trial of ``steps`` ms (dt = 1 ms) on four groups of Poisson input channels (10 each at the
default 40 inputs): left cues, right cues, the recall cue, background noise. Cue ``k`` (of
``n_cues``, 7) drives the left or the right group at ``rate`` (40 Hz) for ``cue_ms`` (100 ms),
starting at ``gap + k * spacing`` (gap = spacing - cue_ms: 50 ms of silence before each cue).
Each trial draws a side bias: its cues go left with probability 0.3, or with 0.7. The recall group
fires at ``rate`` for the last ``recall_ms`` (150 ms); the noise group fires at ``rate / 4`` (10 Hz)
throughout. The label is 1 (right) when more than half the cues went right. With the defaults a
trial lasts 7 x 150 + 1200 = 2250 ms; the network is scored on the recall window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class EvidenceTask:
    """The task's shape (Bellec et al. 2020's defaults)."""

    n_inputs: int = 40
    """Input channels, split evenly into the four groups."""
    n_cues: int = 7
    cue_ms: int = 100
    spacing: int = 150
    """From one cue's start to the next's."""
    delay: int = 1200
    """From the end of the cue period to the end of the trial (the recall window included)."""
    recall_ms: int = 150
    rate: float = 0.04
    """Cue and recall rate in spikes per ms (40 Hz)."""
    bias: float = 0.3
    """A trial's cues go left with probability ``bias`` or ``1 - bias`` (each half the trials)."""

    def __post_init__(self) -> None:
        if self.n_inputs % 4 or self.n_inputs < 4:
            raise ValueError(f"n_inputs must be a positive multiple of 4, got {self.n_inputs}")
        if not 0 < self.cue_ms <= self.spacing:
            raise ValueError(f"need 0 < cue_ms <= spacing, got {self.cue_ms} and {self.spacing}")
        if not 0 < self.recall_ms <= self.delay:
            raise ValueError(f"need 0 < recall_ms <= delay, got {self.recall_ms}, {self.delay}")
        if self.n_cues < 1 or self.n_cues % 2 == 0:
            raise ValueError(f"n_cues must be odd (no ties), got {self.n_cues}")

    @property
    def steps(self) -> int:
        """Trial length in steps of 1 ms."""
        return self.n_cues * self.spacing + self.delay

    def recall_mask(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(steps,)``: 1 / recall_ms on the recall window, 0 elsewhere: the loss averaged over
        the window, as the authors score it."""
        mask = torch.zeros(self.steps, dtype=dtype)
        mask[-self.recall_ms :] = 1.0 / self.recall_ms
        return mask

    def sample(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``(spikes (batch, steps, n_inputs), labels (batch,))``: new trials from
        ``generator`` (on the CPU; move them where the network lives)."""
        group = self.n_inputs // 4
        p_left = torch.where(torch.rand(batch, generator=generator) < 0.5, self.bias, 1 - self.bias)
        right = torch.rand(batch, self.n_cues, generator=generator) >= p_left[:, None]
        labels = (right.sum(1) > self.n_cues // 2).long()
        rates = torch.zeros(batch, self.steps, self.n_inputs)  # (batch, T, channels)
        gap = self.spacing - self.cue_ms
        for k in range(self.n_cues):
            start = gap + k * self.spacing
            window = slice(start, start + self.cue_ms)
            rates[:, window, :group] = (~right[:, k, None, None]) * self.rate
            rates[:, window, group : 2 * group] = right[:, k, None, None] * self.rate
        rates[:, -self.recall_ms :, 2 * group : 3 * group] = self.rate
        rates[:, :, 3 * group :] = self.rate / 4
        spikes = (torch.rand(rates.shape, generator=generator) < rates).to(dtype)
        return spikes, labels

    def loss(self, y: Tensor, labels: Tensor) -> Tensor:
        """Readouts ``(batch, steps, 2)`` -> the cross-entropy averaged over the recall window."""
        window = y[:, -self.recall_ms :]
        return F.cross_entropy(window.flatten(0, 1), labels.repeat_interleave(self.recall_ms))

    def eprop_targets(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(labels, recall_mask)``: the same loss in ``EProp``'s terms."""
        return labels, self.recall_mask()

    def wrong(self, y: Tensor, labels: Tensor) -> tuple[int, int]:
        """``(wrong trials, trials)``: a trial is wrong when the readout averaged over the recall
        window picks the other side."""
        wrong = (y[:, -self.recall_ms :].mean(1).argmax(1) != labels).sum().item()
        return int(wrong), len(labels)
