"""Learning without forgetting (Li & Hoiem 2017, TPAMI): while training a new task, the model's
outputs on the new task's inputs are kept close to those of the model as it was before the task,
by distillation at temperature ``T`` (Hinton et al. 2015)::

    L_distill = T^2 * mean_x sum_c -softmax(z_old / T)_c log softmax(z_new / T)_c

(the ``T^2`` keeps its gradients' scale independent of ``T``). In the class-incremental setting
the old model's outputs cover the classes seen so far (``classes``)."""

from __future__ import annotations

import torch
from torch import Tensor


def distillation_loss(new_logits: Tensor, old_logits: Tensor, temperature: float = 2.0,
                      classes: int | None = None) -> Tensor:  # fmt: skip
    """The loss above over the first ``classes`` outputs (all if None)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if classes is not None:
        new_logits, old_logits = new_logits[:, :classes], old_logits[:, :classes]
    targets = torch.softmax(old_logits.detach() / temperature, -1)
    log_predictions = torch.log_softmax(new_logits / temperature, -1)
    return -(targets * log_predictions).sum(-1).mean() * temperature**2
