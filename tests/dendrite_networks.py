"""Small segregated-dendrite networks and sparse images for the tests of its simulation paths
(``test_numba_dendrites.py``, ``test_dendrite_replicas.py``)."""

import torch

from neuroplastic.models.segregated_dendrites import SegregatedDendriteNet

F64 = torch.float64


def make_net(sizes, replicas=3, feedback="random", params=None, dtype=F64, seed=0, seeds=None):
    """``replicas`` networks, replica ``r`` initialised from seed ``seed + r`` (or ``seeds[r]``)."""
    seeds = range(seed, seed + replicas) if seeds is None else seeds
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return SegregatedDendriteNet(sizes, replicas, feedback, params, gens, dtype=dtype)


def images(replicas, examples, n, dtype=F64, seed=1):
    """Pixel intensities in [0, 1), about 70 % of them 0 (as MNIST's background)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(replicas, examples, n, generator=g, dtype=dtype)
    return pixels * (torch.rand(replicas, examples, n, generator=g, dtype=dtype) < 0.3)
