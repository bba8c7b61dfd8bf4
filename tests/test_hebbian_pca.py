"""hebbian-pca (``experiments.hebbian_pca``) on the bundled mnist-mini."""

import dataclasses

import torch

from neuroplastic.experiments import EXPERIMENTS
from neuroplastic.experiments import hebbian_pca as hp
from neuroplastic.experiments.base import RunContext
from neuroplastic.results import Key
from neuroplastic.testing import recorded_run

TINY = dataclasses.replace(hp.Config(dataset="mnist-mini"), components=4, checkpoints=(300, 2000),
                           trials=2, lr=(0.01, 0.1))  # fmt: skip


def test_every_rule_approaches_the_svd_on_mnist_mini():
    outcome = hp.run(TINY, 0, RunContext(device=torch.device("cpu")))
    for rule in hp.RULES:
        relative = outcome.curves[Key(rule, "relative_error")]
        assert relative["x"] == [300, 2000]
        assert relative["y"][-1] < relative["y"][0] and relative["y"][-1] < 1.2
        assert all(y >= 1 - 1e-9 for y in relative["y"])  # never better than the SVD
        assert 0 < outcome.metrics[Key(rule, "overlap")] <= 1


def test_the_measures_on_known_subspaces():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(10, 3, generator=gen, dtype=torch.float64)).Q.T
    images = torch.randn(50, 3, generator=gen, dtype=torch.float64) @ basis
    assert hp.reconstruction_error(images, basis) < 1e-20
    assert hp.overlap(2 * basis, basis) > 1 - 1e-12
    assert hp.overlap(basis[:1], basis[1:2]) < 1e-12


def records(errors, overlaps, n=5):
    metrics = {
        **{Key(r, "relative_error"): e for r, e in zip(hp.RULES, errors, strict=True)},
        **{Key(r, "overlap"): o for r, o in zip(hp.RULES, overlaps, strict=True)},
    }
    return [recorded_run(hp.NAME, hp.Config(), i, metrics) for i in range(n)]


def test_registered_and_the_verdict_follows_the_criterion():
    assert EXPERIMENTS[hp.NAME] is hp.EXPERIMENT
    assert hp.verdict(records([1.01, 1.02, 1.0], [0.99, 0.98, 0.99])).status == "holds"
    assert hp.verdict(records([1.01, 1.2, 1.0], [0.99, 0.98, 0.99])).status == "partly holds"
    assert hp.verdict(records([1.3, 1.2, 1.1], [0.5, 0.5, 0.5])).status == "does not hold"
    assert hp.verdict(records([1.0] * 3, [1.0] * 3, n=2)).status == "not run"
