"""Offline plan search of Sparse-vDiT: the greedy search along the trajectory with measured costs.

    from search import search_plan, PlanSearch, DEFAULT_CANDIDATES

The names load from their modules on first use (``import search`` imports no torch).
"""

from kernels.helpers import lazy_exports

_EXPORTS = {"DEFAULT_CANDIDATES": "search.candidates", "PlanSearch": "search.greedy", "search_plan": "search.run"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
