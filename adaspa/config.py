"""``AdaSpaAttention``: AdaSpa as an attention method, with its settings (``AdaSpaConfig`` is its
old name, kept as an alias: the object is the method itself, not only its configuration).

    from adaspa import AdaSpaAttention
    from pipelines import apply_sparse_attention
    handle = apply_sparse_attention(pipe, AdaSpaAttention(sparsity=0.8))   # or pipe.transformer
    video = pipe(prompt, num_inference_steps=50, ...).frames
    handle.remove()

The config is a frozen dataclass, checked when it is made (and again by ``validate`` when it is
applied), and a method of ``sparse_vdit.protocol``: ``new_state`` gives each generation and CFG
branch its ``AdaSpaState``, ``begin_forward`` decides the step's phase (``adaspa.schedule``) and
``__call__`` runs it for one layer (``adaspa.runtime.attend``). No diffusers import.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterable

import torch

from adaspa.runtime import StepPlan, attend
from adaspa.schedule import DENSE, StepSchedule, scaled_schedule
from adaspa.search import BlockGeometry
from adaspa.state import AdaSpaState
from kernels.helpers import warn_once
from kernels.limits import KV_BLOCK_SIZES, MASS_BLOCK_SIZES, Q_BLOCK_SIZES, head_dim_error, head_dim_supported
from sparse_vdit.guards import check_kernel_dtype, steps_or_assumed
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo

__all__ = ["AdaSpaAttention", "AdaSpaConfig", "BLOCK_SIZES", "TUNED_BLOCK_SIZES"]

# Square blocks serve the mass kernel (query and key blocks) and the block-sparse kernel alike.
BLOCK_SIZES = tuple(sorted(set(MASS_BLOCK_SIZES) & set(Q_BLOCK_SIZES) & set(KV_BLOCK_SIZES)))
TUNED_BLOCK_SIZES = (64, 128)  # the others serve tiny test models
PAPER_STEPS = 50

_warned: set = set()  # warnings given once per process (sparse_vdit's warn_once registry)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclass(frozen=True)
class AdaSpaAttention(AttentionMethod):
    """AdaSpa (arXiv 2502.21079): blockified top-k sparse attention found online, per generation.

    Args:
        sparsity: s in [0, 1), the fraction of (video) key blocks each query block skips, averaged
            over heads: 0.8 keeps 20%. At 0 every block is kept (output = dense).
        block_size: tokens per square block: 64 (default) or 128; 16 and 32 serve tiny test models.
        warmup_steps: steps before this one run dense (stock attention).
        search_steps: steps that search (ascending after normalisation); the first must equal
            ``warmup_steps`` (it ends the warm-up). The first search runs dense attention with the
            row LSE, then the block mass; later ones reuse that LSE (one mass pass each).
        schedule_steps: the number of denoising steps ``warmup_steps`` and ``search_steps`` are
            written for (50, as in the paper); a generation of N steps scales them by N / 50
            (``adaspa.schedule``). None: use the steps as given for every N.
        recall_threshold: in [0, 1]; heads whose recall at sparsity s exceeds it count toward n,
            the size of the sparser and the denser tier (``adaspa.search``).
        tiers: head-adaptive three tiers; False keeps every head at sparsity s.

    Defaults for 50 steps: dense before step 10, search at steps 10 and 30, sparsity 0.8, 64-token
    blocks. When a forward does not say how many steps the generation has (the transformer called
    without a pipeline or ``cache_context``), ``schedule_steps`` is assumed and a warning says so
    once. Text rows and columns are always computed (HunyuanVideo, CogVideoX), on top of the
    sparsity budget.
    """

    sparsity: float = 0.8
    block_size: int = 64
    warmup_steps: int = 10
    search_steps: tuple[int, ...] = (10, 30)
    schedule_steps: int | None = PAPER_STEPS
    recall_threshold: float = 0.8
    tiers: bool = True

    def __post_init__(self) -> None:
        # Numbers are stored as Python floats and ints (a Fraction or a numpy scalar would pass the
        # checks and then fail inside the first search's tensor arithmetic).
        for name, kind, convert in (("sparsity", _is_real, float), ("recall_threshold", _is_real, float),
                                    ("block_size", _is_int, int), ("warmup_steps", _is_int, int),
                                    ("schedule_steps", _is_int, int)):
            if kind(getattr(self, name)):
                object.__setattr__(self, name, convert(getattr(self, name)))
        if _is_int(self.search_steps):
            object.__setattr__(self, "search_steps", (self.search_steps,))
        if isinstance(self.search_steps, Iterable) and not isinstance(self.search_steps, (str, bytes)):
            steps = tuple(self.search_steps)
            if all(_is_int(s) for s in steps):
                object.__setattr__(self, "search_steps", tuple(sorted({int(s) for s in steps})))
        self.check()

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Raise ``ValueError`` / ``TypeError`` naming the first setting AdaSpa cannot run."""
        s = self.sparsity
        if not _is_real(s) or not 0.0 <= float(s) < 1.0:
            raise ValueError(
                f"{type(self).__name__}(sparsity={s!r}): sparsity must be a number in [0, 1), the fraction of key "
                "blocks each query block skips (0.8 keeps 20%; 0 keeps all)"
            )
        if not _is_int(self.block_size) or self.block_size not in BLOCK_SIZES:
            raise ValueError(
                f"{type(self).__name__}(block_size={self.block_size!r}) is not served by the kernels: use "
                f"{' or '.join(map(str, TUNED_BLOCK_SIZES))} ({', '.join(map(str, BLOCK_SIZES))} work; the small "
                "ones are for tiny test models)"
            )
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"{type(self).__name__}(warmup_steps={self.warmup_steps!r}): give a step count >= 0")
        steps = self.search_steps
        if not isinstance(steps, tuple) or not steps or not all(_is_int(t) and t >= 0 for t in steps):
            raise ValueError(
                f"{type(self).__name__}(search_steps={steps!r}): give one or more step indices >= 0, e.g. (10, 30); "
                "for dense attention at every step use FullAttention()"
            )
        if steps[0] < self.warmup_steps:
            raise ValueError(
                f"AdaSpaAttention: search step {steps[0]} comes before the end of warm-up (warmup_steps="
                f"{self.warmup_steps}); AdaSpa searches once warm-up is over: use search steps >= {self.warmup_steps} "
                f"or warmup_steps={steps[0]}"
            )
        if steps[0] > self.warmup_steps:
            raise ValueError(
                f"AdaSpaAttention: the first search step ({steps[0]}) must end the warm-up (warmup_steps="
                f"{self.warmup_steps}), or the steps in between would have no selection: set "
                f"warmup_steps={steps[0]}, or add search step {self.warmup_steps}"
            )
        n = self.schedule_steps
        if n is not None and (not _is_int(n) or n < 1):
            raise ValueError(f"{type(self).__name__}(schedule_steps={n!r}): give the step count the schedule is written for, or None")
        if n is not None and steps[-1] >= n:
            raise ValueError(
                f"AdaSpaAttention: search step {steps[-1]} is past the schedule's {n} steps (steps are 0-based); "
                "raise schedule_steps, or set schedule_steps=None to use the steps as given"
            )
        t = self.recall_threshold
        if not _is_real(t) or not 0.0 <= float(t) <= 1.0:
            raise ValueError(
                f"{type(self).__name__}(recall_threshold={t!r}): the tiers' threshold is a recall, a number in [0, 1] "
                "(the paper uses 0.8)"
            )
        if not isinstance(self.tiers, bool):
            raise TypeError(f"{type(self).__name__}(tiers={self.tiers!r}): give True (three head tiers) or False (every head at s)")

    # ------------------------------------------------------------------ schedule
    def schedule(self, num_steps: int | None) -> StepSchedule:
        """The warm-up and search steps of a generation of ``num_steps`` steps (``adaspa.schedule``)."""
        return scaled_schedule(self.warmup_steps, self.search_steps, self.schedule_steps, num_steps)

    def plan(self, step: int, num_steps: int | None, geometry: BlockGeometry) -> StepPlan:
        """What the attention calls of 0-based ``step`` do."""
        schedule = self.schedule(num_steps)
        return StepPlan(schedule.phase(step), not schedule.is_last_search(step), geometry)

    # ------------------------------------------------------------------ method protocol
    def validate(self, model: ModelInfo) -> None:
        self.check()
        if not head_dim_supported(model.head_dim):
            raise ValueError(
                f"{model.family}: " + head_dim_error(model.head_dim) + "; AdaSpa runs on those kernels: use "
                "FullAttention() for this model"
            )

    def new_state(self) -> AdaSpaState:
        return AdaSpaState()

    def begin_forward(self, forward: ForwardContext) -> StepPlan:
        num_steps = forward.num_steps
        if num_steps is None and self.schedule_steps is not None:
            num_steps = steps_or_assumed(
                forward, self.schedule_steps, "AdaSpa", "the number its schedule is written for (or set "
                "schedule_steps=None and give the steps explicitly)", _warned,
            )
        if num_steps is not None and not self.schedule(num_steps).search_steps:
            warn_once(
                _warned, ("all dense", self, num_steps),
                f"AdaSpa: a {num_steps}-step generation with {self!r} has no search step: every step runs dense "
                f"(its search steps {list(self.search_steps)} fall past the generation). Give search steps below "
                f"{num_steps}, or keep schedule_steps set so the schedule scales to the step count",
                stacklevel=3,
            )
        layout = forward.token_layout
        plan = self.plan(forward.step_index, num_steps, BlockGeometry.of(layout.seq_len, self.block_size, layout))
        if plan.phase != DENSE:
            check_kernel_dtype(forward.dtype, "AdaSpa (its search and sparse steps)")
        return plan

    def __call__(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        return attend(self, call.prepared, call.state, call.layer_index, q, k, v, call, call.forward.head_shard)


AdaSpaConfig = AdaSpaAttention  # the old name: the settings *are* the method
