"""Fast paths: compiled loops that replace a readable PyTorch reference, each tested equal to it.
``numba_rsnn``: the recurrent spiking network's time loop on the CPU (the ``fast`` extra)."""

from __future__ import annotations

import importlib.util

BACKENDS = ("auto", "torch", "numba")


def as_array(tensor):
    """A C-contiguous NumPy view (or copy) of a CPU tensor, detached: what the kernels take."""
    return tensor.detach().contiguous().numpy()


def numba_available() -> bool:
    """Whether the ``fast`` extra (Numba) is installed."""
    return importlib.util.find_spec("numba") is not None


def resolve_backend(backend: str, device) -> str:
    """``torch`` or ``numba`` for ``backend`` on ``device``: ``auto`` picks Numba on the CPU
    when it is installed; asking for Numba without it, or off the CPU, is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cpu = str(device).startswith("cpu")
    if backend == "auto":
        return "numba" if on_cpu and numba_available() else "torch"
    if backend == "numba":
        if not numba_available():
            raise ValueError(
                "backend='numba' needs Numba: pip install 'neuroplastic[fast]' (or use 'torch')"
            )
        if not on_cpu:
            raise ValueError(f"backend='numba' runs on the CPU, the tensors are on {device}")
    return backend
