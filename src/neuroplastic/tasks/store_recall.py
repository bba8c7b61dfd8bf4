"""Store-recall (Bellec et al. 2020, Fig. S7; the authors' store-recall tutorial): hold a bit in
working memory from a *store* cue until a *recall* cue, over seconds, with distractors between.

A trial is a sentence of ``length`` characters (12), each shown for ``char_ms`` (200 ms, dt = 1 ms)
on four groups of Poisson channels (25 each at the default 100 inputs, firing at ``rate``, 50 Hz,
while their character is shown, silent otherwise): *value 0*, *value 1*, *store*, *recall*. The
characters are random bits into which store and recall cues are placed, alternating and starting
with a store: at each position, a store follows a recall (or the start) with probability ``p`` and
a recall follows a store with probability ``p``, ``p = 1 / (1 + delay)`` (so the expected delay is
``delay`` characters). A sentence is kept only when it has a store, ends with a recall after its
last store, and shows a bit right after every store (others are redrawn).

The bit to remember is shown *together with* the store cue: the value channels during a store
repeat the next character's bit, and that next character is then flipped with probability 1/2, a
distractor. At each recall character the network must report the bit shown with the last store;
the loss is the cross-entropy averaged over every step of every recall character in the batch, and
a recall counts as wrong when the readout, averaged over the character, picks the other bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

VALUE_0, VALUE_1, STORE, RECALL = range(4)
NOT_SCORED = -1
"""The label of a character that is not a recall."""


@dataclass(frozen=True)
class StoreRecallTask:
    """The task's shape (the authors' tutorial defaults)."""

    n_inputs: int = 100
    """Input channels, split evenly into the four groups."""
    length: int = 12
    """Characters per sentence."""
    char_ms: int = 200
    """Duration of one character (steps of 1 ms)."""
    delay: int = 6
    """Expected number of characters from a store to its recall (``p = 1 / (1 + delay)``)."""
    rate: float = 0.05
    """Firing rate of an active group, in spikes per ms (50 Hz)."""

    def __post_init__(self) -> None:
        if self.n_inputs % 4 or self.n_inputs < 4:
            raise ValueError(f"n_inputs must be a positive multiple of 4, got {self.n_inputs}")
        if self.length < 3:
            raise ValueError(f"length must be >= 3 (store, bit, recall), got {self.length}")
        if self.delay < 1 or self.char_ms < 1:
            raise ValueError(f"delay and char_ms must be >= 1, got {self.delay}, {self.char_ms}")

    @property
    def steps(self) -> int:
        """Trial length in steps of 1 ms."""
        return self.length * self.char_ms

    def sentences(self, batch: int, generator: torch.Generator) -> Tensor:
        """``(batch, length)`` characters (``VALUE_0 .. RECALL``), valid ones only."""
        p = 1.0 / (1 + self.delay)
        result = torch.empty(batch, self.length, dtype=torch.long)
        todo = torch.arange(batch)
        while len(todo):
            n = len(todo)
            sentence = torch.randint(0, 2, (n, self.length), generator=generator)
            cue = torch.rand(n, self.length, generator=generator) < p
            storing = torch.zeros(n, dtype=torch.bool)  # last cue was a store (start: "recall")
            for t in range(self.length):
                place = cue[:, t]
                cue_here = torch.where(storing, RECALL, STORE)
                sentence[:, t] = torch.where(place, cue_here, sentence[:, t])
                storing = storing ^ place
            store = sentence == STORE
            recall_right_after = store[:, :-1] & (sentence[:, 1:] == RECALL)
            valid = store.any(1) & ~storing & ~recall_right_after.any(1)
            result[todo[valid]] = sentence[valid]
            todo = todo[~valid]
        return result

    def sample(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor]:
        """``(spikes (batch, steps, n_inputs), labels (batch, length))``: new trials from
        ``generator`` (on the CPU). ``labels`` holds the bit to report at each recall character
        and ``NOT_SCORED`` elsewhere."""
        sentence = self.sentences(batch, generator)
        store = sentence == STORE
        bit_after = torch.roll(sentence, -1, 1)  # the character after each position
        labels = torch.full_like(sentence, NOT_SCORED)
        remembered = torch.full((batch,), NOT_SCORED, dtype=torch.long)
        for t in range(self.length):
            remembered = torch.where(store[:, t], bit_after[:, t], remembered)
            labels[:, t] = torch.where(sentence[:, t] == RECALL, remembered, NOT_SCORED)
        shown = torch.where(store, bit_after, sentence)  # the bit shown with each store
        channels = F.one_hot(sentence, 4).bool()
        flip = torch.roll(store, 1, 1) & (torch.rand(batch, self.length, generator=generator) < 0.5)
        shown = torch.where(flip, 1 - shown, shown)  # the distractor after a store
        is_bit = store | (sentence <= VALUE_1)
        channels[..., VALUE_0] = is_bit & (shown == VALUE_0)
        channels[..., VALUE_1] = is_bit & (shown == VALUE_1)
        group = self.n_inputs // 4
        spikes = torch.zeros(batch, self.length, self.char_ms, 4, group, dtype=dtype)
        shown_groups = channels.nonzero()  # (b, character, group) for each group shown
        draws = torch.rand(len(shown_groups), self.char_ms, group, generator=generator)
        b, c, g = shown_groups.unbind(1)
        spikes[b, c, :, g] = (draws < self.rate).to(dtype)  # silent groups draw nothing
        spikes = spikes.reshape(batch, self.steps, self.n_inputs)
        return spikes, labels

    def step_labels(self, labels: Tensor) -> Tensor:
        """``(batch, steps)``: each character's label held over its steps (0 where not scored,
        which the weights then ignore)."""
        return labels.clamp(min=0).repeat_interleave(self.char_ms, 1)

    def loss_weights(self, labels: Tensor) -> Tensor:
        """``(batch, steps)``: ``batch / (recall steps in the batch)`` on recall steps, 0
        elsewhere, so that ``sum(weights * loss) / batch`` is the mean over recall steps."""
        scored = (labels != NOT_SCORED).repeat_interleave(self.char_ms, 1).float()
        return scored * (len(labels) / scored.sum().clamp(min=1))

    def loss(self, y: Tensor, labels: Tensor) -> Tensor:
        """Readouts ``(batch, steps, 2)`` -> the mean cross-entropy over recall steps."""
        per_step = F.cross_entropy(y.transpose(1, 2), self.step_labels(labels), reduction="none")
        return (per_step * self.loss_weights(labels).to(y)).sum() / len(labels)

    def eprop_targets(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(step labels, weights)``: the same loss in ``EProp``'s terms."""
        return self.step_labels(labels), self.loss_weights(labels)

    def wrong(self, y: Tensor, labels: Tensor) -> tuple[int, int]:
        """``(wrong recalls, recalls)``: a recall is right when the readout averaged over its
        character picks the remembered bit."""
        per_char = y.reshape(len(labels), self.length, self.char_ms, -1).mean(2).argmax(-1)
        scored = labels != NOT_SCORED
        return int((per_char != labels)[scored].sum()), int(scored.sum())
