"""A trained ``RecurrentLIF`` to and from NIR, the neuromorphic intermediate representation
(Pedersen et al. 2024; the ``nir`` extra), the format that Loihi's, SpiNNaker's and other
neuromorphic tool chains read, as do snnTorch, Norse, SpikingJelly and others.

The graph::

    input -> w_in (Linear) -> lif (LIF) -> w_out (Affine) -> readout (LI) -> output
                               ^      |
                               +- w_rec (Linear) <-+      (the recurrent loop, one step late)

NIR describes neurons in continuous time, ``tau dv/dt = (v_leak - v) + r I``. Our networks run
in steps of ``dt``: ``v^t = alpha v^{t-1} + I^t``. The export picks ``tau = dt / (1 - alpha)``
and ``r = tau / dt``, so that a forward-Euler simulation with step ``dt`` (what snnTorch's and
Norse's importers do) gives our decay and our input scaling exactly. The readout's
``kappa`` maps to an ``LI`` node the same way.

What NIR 1.0's ``LIF`` cannot express: reset by subtraction (NIR resets to ``v_reset``), a
refractory period, and threshold adaptation (ALIF). The export records them, with the
pseudo-derivative's settings, in the graph's metadata under ``"neuroplastic"``, so that
:func:`from_nir` rebuilds the network exactly; any other reader simulates plain LIF neurons
with reset to zero, which is a different network. :func:`to_nir` therefore warns, naming what
the other reader will miss, or refuses with ``strict=True``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from neuroplastic.models.rsnn import RecurrentLIF

NODES = ("input", "w_in", "lif", "w_rec", "w_out", "readout", "output")
EDGES = (
    ("input", "w_in"), ("w_in", "lif"), ("lif", "w_rec"), ("w_rec", "lif"),
    ("lif", "w_out"), ("w_out", "readout"), ("readout", "output"),
)  # fmt: skip


class BeyondNIRWarning(UserWarning):
    """The exported network uses features NIR's neuron models cannot express."""


def _nir():
    try:
        import nir
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "NIR export needs the nir package: pip install 'neuroplastic[nir]'"
        ) from error
    return nir


def beyond_nir(model: RecurrentLIF) -> list[str]:
    """What of ``model`` a reader of plain NIR will not simulate."""
    missing = ["reset by subtraction (NIR's LIF resets to v_reset = 0)"]
    if model.refractory:
        missing.append(f"a refractory period of {model.refractory} steps")
    if model.n_adaptive:
        missing.append(f"threshold adaptation of the last {model.n_adaptive} neurons (ALIF)")
    return missing


def _euler(decay: float, dt: float) -> tuple[float, float]:
    """``(tau, r)`` whose forward-Euler step ``dt`` is ``v <- decay v + I``."""
    tau = dt / (1.0 - decay)
    return tau, tau / dt


def to_nir(model: RecurrentLIF, dt: float = 1e-3, strict: bool = False):
    """``model`` as a ``nir.NIRGraph`` (weights as float32 NumPy arrays, ``dt`` in seconds per
    step). Warns (:class:`BeyondNIRWarning`) about what only :func:`from_nir` restores, or with
    ``strict`` raises ``ValueError`` instead."""
    nir = _nir()
    missing = beyond_nir(model)
    message = (
        "NIR cannot express " + "; ".join(missing) + ". They are kept in the graph's metadata "
        "for neuroplastic.interop.from_nir; other NIR readers will simulate plain LIF neurons "
        "with reset to zero."
    )
    if strict:
        raise ValueError(message + " (strict=True: not exported)")
    warnings.warn(message, BeyondNIRWarning, stacklevel=2)

    def array(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().to(torch.float32).numpy()

    n = model.n_rec
    tau_m, r_m = _euler(model.alpha, dt)
    tau_out, r_out = _euler(model.kappa, dt)
    nodes = {
        "input": nir.Input({"input": np.array([model.n_in])}),
        "w_in": nir.Linear(array(model.w_in)),
        "lif": nir.LIF(
            tau=np.full(n, tau_m, np.float32), r=np.full(n, r_m, np.float32),
            v_leak=np.zeros(n, np.float32), v_threshold=np.full(n, model.v_th, np.float32),
            v_reset=np.zeros(n, np.float32),
        ),  # fmt: skip
        "w_rec": nir.Linear(array(model.recurrent_weights())),
        "w_out": nir.Affine(array(model.w_out), array(model.b_out)),
        "readout": nir.LI(
            tau=np.full(model.n_out, tau_out, np.float32),
            r=np.full(model.n_out, r_out, np.float32),
            v_leak=np.zeros(model.n_out, np.float32),
        ),
        "output": nir.Output({"output": np.array([model.n_out])}),
    }
    extensions = {
        "model": "RecurrentLIF", "dt": dt, "reset": "subtract", "v_th": model.v_th,
        "alpha": model.alpha, "kappa": model.kappa, "rho": model.rho,
        "refractory": int(model.refractory), "n_adaptive": int(model.n_adaptive),
        "beta": array(model.beta), "dampening": model.dampening,
        "detach_reset": bool(model.detach_reset), "beyond_nir": missing,
    }  # fmt: skip
    return nir.NIRGraph(nodes=nodes, edges=list(EDGES), metadata={"neuroplastic": extensions})


def from_nir(graph, dt: float = 1e-3, backend: str = "auto") -> RecurrentLIF:
    """The ``RecurrentLIF`` of a graph of :func:`to_nir`'s shape (float32 weights). With the
    ``"neuroplastic"`` metadata the network is the exported one exactly; without it (a graph
    from another tool) the neurons are taken as LIF with subtractive reset, no refractoriness
    and no adaptation, which is refused unless the graph's LIF nodes reset to 0 and their
    decay is the same for all neurons (``dt`` in seconds per step, as exported)."""
    nir = _nir()
    missing = [name for name in NODES if name not in graph.nodes]
    if missing or sorted(graph.edges) != sorted(EDGES):
        raise ValueError(
            f"from_nir reads graphs shaped like to_nir's: nodes {NODES} and edges {EDGES}; "
            f"this one has nodes {sorted(graph.nodes)} and edges {sorted(graph.edges)}"
        )
    lif, readout = graph.nodes["lif"], graph.nodes["readout"]
    if not isinstance(lif, nir.LIF) or not isinstance(readout, nir.LI):
        raise ValueError(
            f"node 'lif' must be nir.LIF and 'readout' nir.LI, got {type(lif).__name__} and "
            f"{type(readout).__name__}"
        )
    w_in = torch.from_numpy(np.asarray(graph.nodes["w_in"].weight, np.float32))
    w_rec = torch.from_numpy(np.asarray(graph.nodes["w_rec"].weight, np.float32))
    w_out_node = graph.nodes["w_out"]
    w_out = torch.from_numpy(np.asarray(w_out_node.weight, np.float32))
    bias = getattr(w_out_node, "bias", None)
    b_out = torch.zeros(w_out.shape[0]) if bias is None else torch.from_numpy(np.asarray(bias))
    n_rec, n_in = w_in.shape
    extensions = graph.metadata.get("neuroplastic") if graph.metadata else None
    if extensions is None:
        for name, value in (("v_leak", lif.v_leak), ("v_reset", lif.v_reset)):
            if not np.allclose(value, 0.0):
                raise ValueError(f"LIF nodes with nonzero {name} have no RecurrentLIF equivalent")
        decays = 1.0 - dt / np.asarray(lif.tau, np.float64)
        scales = np.asarray(lif.r) * dt / np.asarray(lif.tau)
        if np.ptp(decays) > 1e-6 or np.ptp(lif.v_threshold) > 0 or not np.allclose(scales, 1.0):
            raise ValueError(
                "RecurrentLIF has one decay and one threshold for all neurons and unit input "
                "scaling (r = tau / dt); this graph's LIF node differs"
            )
        extensions = {
            "alpha": float(decays[0]), "kappa": float(1.0 - dt / float(readout.tau[0])),
            "rho": 1.0, "refractory": 0, "n_adaptive": 0, "beta": np.zeros(n_rec),
            "dampening": 0.3, "detach_reset": True,
        }  # fmt: skip
    n_adaptive = int(extensions["n_adaptive"])
    model = RecurrentLIF(
        n_in, n_rec, w_out.shape[0], n_adaptive=n_adaptive,
        v_th=float(extensions.get("v_th", np.asarray(lif.v_threshold).flat[0])),
        refractory=int(extensions["refractory"]), dampening=float(extensions["dampening"]),
        detach_reset=bool(extensions["detach_reset"]), backend=backend,
    )  # fmt: skip
    model.alpha, model.kappa = float(extensions["alpha"]), float(extensions["kappa"])
    model.rho = float(extensions["rho"])
    with torch.no_grad():
        model.beta.copy_(torch.as_tensor(np.asarray(extensions["beta"], np.float32)))
        model.w_in.copy_(w_in)
        model.w_rec.copy_(w_rec)
        model.w_out.copy_(w_out)
        model.b_out.copy_(b_out.to(torch.float32))
    return model
