"""The candidate modes the search tries for every (step, layer, head), with their parameters.

A small grid per mode, in layout units (latent rows and frames), so the search picks parameters
too and the plan serves any resolution. ``Full()`` is never a candidate: it is what a head keeps
when no candidate is good enough (see ``search.greedy``).
"""

from __future__ import annotations

from typing import Iterable

from sparse_vdit.modes import MODES, Diagonal, Full, Mode, MultiDiagonal, Skip, VerticalStripe

DEFAULT_CANDIDATES: tuple[Mode, ...] = (
    Skip(),
    Diagonal(1),
    Diagonal(2),
    Diagonal(4),
    MultiDiagonal(1, 1),
    MultiDiagonal(1, 4),
    MultiDiagonal(1, None),
    MultiDiagonal(2, None),
    VerticalStripe((0,), 1),
    VerticalStripe((0,), 2),
    VerticalStripe((0, -1), 2),
)


# One candidate per mode kind: a search the CPU fallback finishes in seconds on the proxy.
SMALL_CANDIDATES: tuple[Mode, ...] = (Skip(), Diagonal(1), MultiDiagonal(1, None), VerticalStripe((0,), 1))


def check_candidates(candidates: Iterable[Mode]) -> tuple[Mode, ...]:
    """The candidates as a tuple of distinct modes, Full removed; a clear error for anything else."""
    out = []
    for mode in candidates:
        if isinstance(mode, type):
            raise TypeError(f"candidate {mode.__name__} is a class: pass an instance, e.g. {mode.__name__}()")
        if not isinstance(mode, MODES):
            raise TypeError(
                f"candidate {mode!r} is not a mode: use {', '.join(m.__name__ for m in MODES)} from sparse_vdit.modes"
            )
        if not isinstance(mode, Full) and mode not in out:
            out.append(mode)
    if not out:
        raise ValueError("the search needs at least one candidate mode besides Full()")
    return tuple(out)
