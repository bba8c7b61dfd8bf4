"""Fast paths: compiled loops that replace a readable PyTorch reference, each tested equal to it.
``numba_rsnn``: the recurrent spiking network's time loop on the CPU (the ``fast`` extra);
``triton_rsnn``: the same loop fused into one GPU kernel (the ``triton`` extra);
``numba_dendrites``: a phase of the segregated-dendrite network on the CPU, or a whole training
example on the counter-based random stream of ``counter_random`` (the ``fast`` extra), its
tensors in and out in ``dendrite_example``;
``numba_forager``: a movement cycle of the foraging agent with its reward-modulated STDP
eligibility (the ``fast`` extra);
``rsnn_functions``: both as autograd Functions."""

from __future__ import annotations

import importlib.util
import os

BACKENDS = ("auto", "torch", "numba", "triton")


def as_array(tensor):
    """A C-contiguous NumPy view (or copy) of a CPU tensor, detached: what the kernels take."""
    return tensor.detach().contiguous().numpy()


def numba_available() -> bool:
    """Whether the ``fast`` extra (Numba) is installed."""
    return importlib.util.find_spec("numba") is not None


def triton_available() -> bool:
    """Whether the ``triton`` extra is installed."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Whether Triton runs its kernels on the CPU (``TRITON_INTERPRET=1``, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def check_backend(backend: str) -> None:
    """Fail early, when a model is built, on an unknown backend name or a missing extra; the
    device is checked when the tensors arrive (:func:`resolve_backend`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    resolve_backend(backend, "cuda" if backend == "triton" else "cpu")


def resolve_backend(backend: str, device) -> str:
    """``torch``, ``numba`` or ``triton`` for ``backend`` on ``device``. ``auto`` picks Numba on
    the CPU and Triton on a CUDA GPU when they are installed, PyTorch otherwise; asking for a
    backend that is missing or does not run on ``device`` is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cpu = str(device).startswith("cpu")
    on_cuda = str(device).startswith("cuda")
    if backend == "auto":
        if on_cpu and numba_available():
            return "numba"
        if on_cuda and triton_available():
            return "triton"
        return "torch"
    if backend == "numba":
        if not numba_available():
            raise ValueError(
                "backend='numba' needs Numba: pip install 'neuroplastic[fast]' (or use 'torch')"
            )
        if not on_cpu:
            raise ValueError(f"backend='numba' runs on the CPU, the tensors are on {device}")
    if backend == "triton":
        if not triton_available():
            raise ValueError(
                "backend='triton' needs Triton: pip install 'neuroplastic[triton]' (or use 'torch')"
            )
        if not (on_cuda or (on_cpu and triton_interpreted())):
            raise ValueError(
                f"backend='triton' runs on a CUDA GPU (or on the CPU with TRITON_INTERPRET=1, "
                f"slowly, for tests); the tensors are on {device}"
            )
    return backend
