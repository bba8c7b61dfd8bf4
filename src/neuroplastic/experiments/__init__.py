"""The registered experiments, one readable file per paper claim.

To add one: write ``experiments/<name>.py`` ending in an ``EXPERIMENT = Experiment(...)`` value
(see ``base.py``) and list its module here.
"""

from __future__ import annotations

from neuroplastic.errors import ConfigError
from neuroplastic.experiments import (
    bellec2020_evidence,
    bellec2020_pattern,
    bellec2020_store_recall,
    credit_lenet,
    credit_mnist,
    golden2022_foraging,
    guerguiev2017_mnist,
    hebbian_pca,
    jaeger2004_mackey_glass,
    kanter2020_mnist,
    kanter2020_perceptron,
    mnist_backprop,
    perturbation_scaling,
    sussillo2009_force,
    tadros2022_split_mnist,
)
from neuroplastic.experiments.base import Experiment, RunContext, RunResult, Verdict

EXPERIMENTS: dict[str, Experiment] = {
    module.EXPERIMENT.name: module.EXPERIMENT
    for module in (
        mnist_backprop,
        kanter2020_mnist,
        kanter2020_perceptron,
        credit_mnist,
        credit_lenet,
        perturbation_scaling,
        guerguiev2017_mnist,
        bellec2020_evidence,
        bellec2020_pattern,
        bellec2020_store_recall,
        golden2022_foraging,
        tadros2022_split_mnist,
        hebbian_pca,
        jaeger2004_mackey_glass,
        sussillo2009_force,
    )
}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; a ConfigError listing the valid names otherwise."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown experiment '{name}'",
            hint=f"choose one of: {', '.join(EXPERIMENTS)} (see `neuroplastic list`)",
        ) from None


__all__ = ["EXPERIMENTS", "Experiment", "RunContext", "RunResult", "Verdict", "get_experiment"]
