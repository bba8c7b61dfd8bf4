"""Hebbian rules (``plasticity.hebbian``) on data whose principal components are known."""

import pytest
import torch
from torch import nn

from neuroplastic.plasticity.hebbian import (
    HebbianRule,
    SimilarityMatching,
    hebb_change,
    oja_change,
    principal_filters,
    sanger_change,
    similarity_matching_change,
    subspace_cosines,
)

EIGENVALUES = torch.tensor([6.0, 4.0, 2.5, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1],
                           dtype=torch.float64)  # fmt: skip


def components(seed=0):
    """Random orthonormal eigenvectors (rows) for ``EIGENVALUES``."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))
    return q.T


def samples(eigenvectors, count, gen):
    z = torch.randn(count, 10, generator=gen, dtype=torch.float64)
    return (z * EIGENVALUES.sqrt()) @ eigenvectors


def train(rule, parameters, eigenvectors, steps=4000, batch=20, seed=1):
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(parameters, lr=1.0)
    for _ in range(steps):
        optimizer.zero_grad()
        rule.observe(samples(eigenvectors, batch, gen))
        rule.write()
        optimizer.step()


def layer(k, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return nn.Parameter(0.1 * torch.randn(k, 10, generator=gen, dtype=torch.float64))


def test_the_changes_follow_their_equations_on_one_input():
    w = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    x = torch.tensor([2.0, 1.0], dtype=torch.float64)
    y = w @ x  # (2, 1.5)
    outer = torch.outer(y, x)
    torch.testing.assert_close(oja_change(w, x, 0.1), 0.1 * (outer - torch.outer(y, y) @ w))
    lower = torch.tensor([[y[0] * y[0], 0.0], [y[1] * y[0], y[1] * y[1]]], dtype=torch.float64)
    torch.testing.assert_close(sanger_change(w, x, 0.1), 0.1 * (outer - lower @ w))
    grown = w + 0.1 * outer
    torch.testing.assert_close(hebb_change(w, x, 0.1) + w,
                               grown / grown.norm(dim=1, keepdim=True))  # fmt: skip
    m = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    d_w, d_m = similarity_matching_change(w, m, x, 0.1, tau=0.5)
    y_sm = torch.linalg.solve(m, w @ x)
    torch.testing.assert_close(d_w, 0.1 * (torch.outer(y_sm, x) - w))
    torch.testing.assert_close(d_m, 0.2 * (torch.outer(y_sm, y_sm) - m))
    # a batch averages the single-input changes
    xs = torch.stack([x, -0.5 * x + 1])
    separately = (oja_change(w, xs[0], 0.1) + oja_change(w, xs[1], 0.1)) / 2
    torch.testing.assert_close(oja_change(w, xs, 0.1), separately)


@pytest.mark.parametrize("rule", ["hebb", "oja"])
def test_one_output_converges_to_the_top_eigenvector(rule):
    eigenvectors = components()
    weight = layer(1)
    train(HebbianRule(weight, rule, lr=0.005), [weight], eigenvectors)
    cosine = (weight.detach()[0] @ eigenvectors[0]).abs() / weight.detach()[0].norm()
    assert cosine > 0.99
    assert weight.detach().norm() == pytest.approx(1.0, abs=0.05)


def test_sanger_finds_the_leading_eigenvectors_in_order():
    eigenvectors = components()
    weight = layer(3)
    train(HebbianRule(weight, "sanger", lr=0.005), [weight], eigenvectors, steps=6000)
    for i in range(3):
        row = weight.detach()[i]
        assert (row @ eigenvectors[i]).abs() / row.norm() > 0.99


@pytest.mark.parametrize("kind", ["oja", "similarity-matching"])
def test_several_outputs_span_the_principal_subspace(kind):
    eigenvectors = components()
    weight = layer(3)
    if kind == "oja":
        rule, parameters = HebbianRule(weight, "oja", lr=0.005), [weight]
    else:
        rule = SimilarityMatching(weight, lr=0.005)
        parameters = rule.parameters()
    train(rule, parameters, eigenvectors, steps=6000)
    filters = principal_filters(rule)
    assert subspace_cosines(filters, eigenvectors[:3]).min() > 0.99
    # orthonormal filters: the outputs reconstruct the input's projection
    torch.testing.assert_close(filters @ filters.T, torch.eye(3, dtype=torch.float64), atol=0.06,
                               rtol=0)  # fmt: skip


def test_subspace_cosines_and_bad_input():
    eigenvectors = components()
    assert subspace_cosines(eigenvectors[:2], eigenvectors[[1, 0]] * 3).min() == pytest.approx(1.0)
    assert subspace_cosines(eigenvectors[:1], eigenvectors[1:2]).max() < 1e-12
    with pytest.raises(ValueError, match="unknown Hebbian rule"):
        HebbianRule(layer(1), "bcm")
    with pytest.raises(ValueError, match="inputs must end"):
        HebbianRule(layer(1)).observe(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="lateral"):
        SimilarityMatching(layer(3), nn.Parameter(torch.eye(2, dtype=torch.float64)))
