"""``AdaSpaConfig``: AdaSpa's settings, and the attention method that runs them in diffusers.

    from adaspa import AdaSpaConfig
    from pipelines import apply_sparse_attention
    handle = apply_sparse_attention(pipe, AdaSpaConfig(sparsity=0.8))   # or pipe.transformer
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
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch

from adaspa.runtime import StepPlan, attend
from adaspa.schedule import DENSE, StepSchedule, scaled_schedule
from adaspa.search import BlockGeometry
from adaspa.state import AdaSpaState
from kernels.limits import (
    KV_BLOCK_SIZES,
    MASS_BLOCK_SIZES,
    Q_BLOCK_SIZES,
    dtype_names,
    dtype_supported,
    head_dim_error,
    head_dim_supported,
)
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo

__all__ = ["AdaSpaConfig", "BLOCK_SIZES", "TUNED_BLOCK_SIZES"]

# Square blocks serve the mass kernel (query and key blocks) and the block-sparse kernel alike.
BLOCK_SIZES = tuple(sorted(set(MASS_BLOCK_SIZES) & set(Q_BLOCK_SIZES) & set(KV_BLOCK_SIZES)))
TUNED_BLOCK_SIZES = (64, 128)  # the others serve tiny test models
PAPER_STEPS = 50

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclass(frozen=True)
class AdaSpaConfig(AttentionMethod):
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
                f"AdaSpaConfig(sparsity={s!r}): sparsity must be a number in [0, 1), the fraction of key "
                "blocks each query block skips (0.8 keeps 20%; 0 keeps all)"
            )
        if not _is_int(self.block_size) or self.block_size not in BLOCK_SIZES:
            raise ValueError(
                f"AdaSpaConfig(block_size={self.block_size!r}) is not served by the kernels: use "
                f"{' or '.join(map(str, TUNED_BLOCK_SIZES))} ({', '.join(map(str, BLOCK_SIZES))} work; the small "
                "ones are for tiny test models)"
            )
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"AdaSpaConfig(warmup_steps={self.warmup_steps!r}): give a step count >= 0")
        steps = self.search_steps
        if not isinstance(steps, tuple) or not steps or not all(_is_int(t) and t >= 0 for t in steps):
            raise ValueError(
                f"AdaSpaConfig(search_steps={steps!r}): give one or more step indices >= 0, e.g. (10, 30); "
                "for dense attention at every step use FullAttention()"
            )
        if steps[0] < self.warmup_steps:
            raise ValueError(
                f"AdaSpaConfig: search step {steps[0]} comes before the end of warm-up (warmup_steps="
                f"{self.warmup_steps}); AdaSpa searches once warm-up is over: use search steps >= {self.warmup_steps} "
                f"or warmup_steps={steps[0]}"
            )
        if steps[0] > self.warmup_steps:
            raise ValueError(
                f"AdaSpaConfig: the first search step ({steps[0]}) must end the warm-up (warmup_steps="
                f"{self.warmup_steps}), or the steps in between would have no selection: set "
                f"warmup_steps={steps[0]}, or add search step {self.warmup_steps}"
            )
        n = self.schedule_steps
        if n is not None and (not _is_int(n) or n < 1):
            raise ValueError(f"AdaSpaConfig(schedule_steps={n!r}): give the step count the schedule is written for, or None")
        if n is not None and steps[-1] >= n:
            raise ValueError(
                f"AdaSpaConfig: search step {steps[-1]} is past the schedule's {n} steps (steps are 0-based); "
                "raise schedule_steps, or set schedule_steps=None to use the steps as given"
            )
        t = self.recall_threshold
        if not _is_real(t) or not 0.0 <= float(t) <= 1.0:
            raise ValueError(
                f"AdaSpaConfig(recall_threshold={t!r}): the tiers' threshold is a recall, a number in [0, 1] "
                "(the paper uses 0.8)"
            )
        if not isinstance(self.tiers, bool):
            raise TypeError(f"AdaSpaConfig(tiers={self.tiers!r}): give True (three head tiers) or False (every head at s)")

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
            _warn_once(
                f"AdaSpa: this forward does not say how many denoising steps the generation has (no pipeline "
                f"schedule, no cache_context(num_inference_steps=...)): assuming {self.schedule_steps}. Apply it "
                "to the pipeline, or set schedule_steps=None and give the steps explicitly"
            )
            num_steps = self.schedule_steps
        layout = forward.token_layout
        plan = self.plan(forward.step_index, num_steps, BlockGeometry.of(layout.seq_len, self.block_size, layout))
        if plan.phase != DENSE and not dtype_supported(forward.dtype):
            raise ValueError(
                f"AdaSpa runs its search and sparse steps in {dtype_names()}, but this model computes in "
                f"{str(forward.dtype).replace('torch.', '')}: cast the pipeline or transformer first "
                "(e.g. pipe.to(torch.bfloat16))"
            )
        return plan

    def __call__(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        return attend(self, call.prepared, call.state, call.layer_index, q, k, v, call, call.forward.head_shard)
