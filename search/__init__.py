"""Offline plan search of Sparse-vDiT: the greedy search along the trajectory with measured costs.

    from search import search_plan, PlanSearch, DEFAULT_CANDIDATES
"""

from search.candidates import DEFAULT_CANDIDATES
from search.greedy import PlanSearch
from search.run import search_plan

__all__ = ["DEFAULT_CANDIDATES", "PlanSearch", "search_plan"]
