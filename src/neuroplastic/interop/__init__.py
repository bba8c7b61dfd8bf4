"""Exchange with other tools: NIR graphs for neuromorphic tool chains (``nir_graph``)."""

from neuroplastic.interop.nir_graph import BeyondNIRWarning, beyond_nir, from_nir, to_nir

__all__ = ["BeyondNIRWarning", "beyond_nir", "from_nir", "to_nir"]
