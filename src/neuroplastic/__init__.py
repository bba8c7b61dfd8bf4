"""neuroplastic: brain-inspired learning rules in PyTorch.

Three orthogonal axes (see docs/architecture.md): dynamics (``neurons``, ``models``), credit
assignment (``credit``, ``plasticity``: who writes ``param.grad``), and step-size dynamics
(``optim``: any ``torch.optim.Optimizer``). Experiments (``experiments``) compose them with a task
(``tasks``) and are run, recorded and reported by ``runner``, ``store`` and ``report``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuroplastic")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
