"""Without a GPU, Triton's kernels run in its interpreter on the CPU (``TRITON_INTERPRET=1``,
read when a kernel is defined, so it is set before any test imports one)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
