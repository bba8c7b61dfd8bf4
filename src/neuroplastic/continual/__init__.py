"""Continual-learning baselines, the methods every continual-learning reader expects beside sleep
replay (van de Ven, Tuytelaars & Tolias 2022, "Three types of incremental learning"): weight
regularisation (EWC, SI), distillation (LwF) and experience replay. Each is a small object with
explicit state that a plain training loop calls: ``penalty()`` added to the loss, a hook after
each optimiser step where the method needs one, and ``after_task(...)`` at a task's end."""

from neuroplastic.continual.ewc import EWC
from neuroplastic.continual.lwf import distillation_loss
from neuroplastic.continual.replay import ReplayBuffer
from neuroplastic.continual.si import SynapticIntelligence

__all__ = ["EWC", "ReplayBuffer", "SynapticIntelligence", "distillation_loss"]
