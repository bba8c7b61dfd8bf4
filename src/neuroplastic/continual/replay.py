"""Experience replay with a small class-balanced buffer (as in van de Ven et al. 2022: a fixed
number of stored examples per class). Each class keeps a uniform sample of the examples offered
to it so far, by reservoir sampling (Vitter 1985): the ``n``-th example of a class replaces a
random stored one with probability ``per_class / n``."""

from __future__ import annotations

import torch
from torch import Tensor


class ReplayBuffer:
    def __init__(self, per_class: int, generator: torch.Generator | None = None):
        if per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {per_class}")
        self.per_class, self.generator = per_class, generator
        self.stored: dict[int, list[Tensor]] = {}
        self.seen: dict[int, int] = {}

    def add(self, inputs: Tensor, labels: Tensor) -> None:
        for x, y in zip(inputs, labels.tolist(), strict=True):
            kept = self.stored.setdefault(y, [])
            self.seen[y] = self.seen.get(y, 0) + 1
            if len(kept) < self.per_class:
                kept.append(x.detach().clone())
            else:
                slot = int(torch.randint(0, self.seen[y], (1,), generator=self.generator))
                if slot < self.per_class:
                    kept[slot] = x.detach().clone()

    def __len__(self) -> int:
        return sum(len(v) for v in self.stored.values())

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` stored examples drawn uniformly with replacement, and their labels."""
        if not len(self):
            raise ValueError("the replay buffer is empty")
        inputs = [x for xs in self.stored.values() for x in xs]
        labels = [y for y, xs in self.stored.items() for _ in xs]
        picks = torch.randint(0, len(inputs), (n,), generator=self.generator)
        return torch.stack([inputs[i] for i in picks]), torch.tensor([labels[i] for i in picks])
