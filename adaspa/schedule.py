"""AdaSpa's step schedule: which denoising steps run dense, search, or reuse a selection.

The paper's schedule is written for 50 steps: steps 0-9 dense (warm-up), a search at steps 10
and 30, the block selection of the latest search reused on every other step. For a generation of
N steps the schedule scales (``scaled_schedule``):

    step' = round_half_up(step * N / schedule_steps)      for the warm-up end and every search step

then search steps at or past N are dropped and duplicates merged. The warm-up end and the first
search step are the same step before scaling, so they stay the same step after it. Examples
(default 10 / {10, 30} for 50): N=25 -> warm-up 5, search {5, 15}; N=100 -> 20, {20, 60};
N=4 -> 1, {1, 2}; N=1 -> 0, {0} (step 0 is the first search, its output dense).
``schedule_steps=None`` takes the steps as given for every N (explicit step lists).

Phases of a step:

    DENSE          step < warm-up end: the stock dense attention.
    FIRST_SEARCH   the first search step: dense attention that also returns the row LSE (this
                   step's output *is* dense), then the block mass from that LSE, then the selection.
    CACHED_SEARCH  a later search step: one block-mass pass with the LSE cached at the first search
                   (not refreshed), a new selection, and this step's output sparse on it.
    SPARSE         every other step after warm-up: block-sparse attention on the latest selection.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DENSE", "FIRST_SEARCH", "CACHED_SEARCH", "SPARSE", "PHASES", "StepSchedule", "round_half_up", "scaled_schedule"]

DENSE = "dense"
FIRST_SEARCH = "first_search"
CACHED_SEARCH = "cached_search"
SPARSE = "sparse"
PHASES = (DENSE, FIRST_SEARCH, CACHED_SEARCH, SPARSE)


def round_half_up(numerator: int, denominator: int) -> int:
    """floor(numerator / denominator + 1/2) in integers (no float rounding, no banker's rounding)."""
    return (2 * numerator + denominator) // (2 * denominator)


@dataclass(frozen=True)
class StepSchedule:
    """The schedule of one generation: warm-up end and sorted, unique search steps.

    Attributes:
        warmup_steps: steps 0 .. warmup_steps - 1 run dense.
        search_steps: ascending; the first equals ``warmup_steps`` (when any step is searched).
        num_steps: the generation's number of steps (None: open-ended).
    """

    warmup_steps: int
    search_steps: tuple[int, ...]
    num_steps: int | None = None

    def phase(self, step: int) -> str:
        """The phase of 0-based ``step`` (see the module docstring)."""
        if step < self.warmup_steps or not self.search_steps:
            return DENSE
        if step == self.search_steps[0]:
            return FIRST_SEARCH
        if step in self.search_steps:
            return CACHED_SEARCH
        return SPARSE

    def is_last_search(self, step: int) -> bool:
        """No search step comes after ``step`` (the cached LSE is no longer needed)."""
        return not any(s > step for s in self.search_steps)


def scaled_schedule(warmup_steps: int, search_steps: tuple[int, ...], schedule_steps: int | None,
                    num_steps: int | None) -> StepSchedule:
    """The schedule for a generation of ``num_steps`` steps, from one written for ``schedule_steps``.

    ``schedule_steps`` None, or ``num_steps`` None: the steps as given. Otherwise every step s
    becomes ``round_half_up(s * num_steps, schedule_steps)``; search steps >= num_steps are dropped.
    """
    if schedule_steps is None or num_steps is None or num_steps == schedule_steps:
        kept = tuple(s for s in search_steps if num_steps is None or s < num_steps)
        return StepSchedule(warmup_steps, kept, num_steps)
    warmup = round_half_up(warmup_steps * num_steps, schedule_steps)
    scaled = sorted({round_half_up(s * num_steps, schedule_steps) for s in search_steps})
    return StepSchedule(warmup, tuple(s for s in scaled if s < num_steps), num_steps)
