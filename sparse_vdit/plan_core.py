"""The plan itself: ``Plan`` (record and method), its step ranges, cost table and errors. Import
them from ``sparse_vdit.plan``, the plans' public face, which adds the file functions.

Sparse-vDiT plans: one attention mode per (denoising step, layer, head), searched offline.

The offline search (``search``) produces a ``Plan``; ``save_plan`` / ``load_plan`` (in
``sparse_vdit.plan_file``, which imports this module) write and read it as JSON; a loaded plan *is*
an attention method of the runtime protocol (``sparse_vdit.protocol``):

    plan = load_plan("plan.json")                 # or a Hugging Face Hub repo id
    handle = apply_sparse_attention(pipe, plan)   # validates the model, then runs the plan

Steps. A plan stores the steps it was searched at, 0 .. N_s - 1, as ranges of identical steps. A
generation of N steps uses, at its step j, the searched step

    searched_step(j, N) = min(N_s - 1, floor((j + 0.5) * N_s / N))

the searched step whose share of the schedule holds the midpoint of j's share. So a 50-step plan
serves a 30-step generation (step 0 -> 0, step 29 -> 49) and a 50-step generation maps to itself.
When a forward does not know N (``ForwardContext.num_steps`` is None) the plan assumes N = N_s and
warns once.

Run time, per transformer forward (``begin_forward``): map the step, take that step range's modes
and return one entry per layer: None for a layer whose heads are all ``Full()`` (the processor runs
it dense through diffusers' ``dispatch_attention_fn``, so a plan never costs more than dense), else
the layer's ``BlockLayout`` [1, H, QB, KB] from one ``ModeBank`` per (token layout, device): heads
that share a mode share one stored pattern and the layer is one kernel launch. Skip heads have no
blocks, so the kernel writes zeros for them (text rows too). Key padding is the processor's job.
Modes are in layout units, so a plan runs at any resolution; layouts are built once per (step
range, token layout, device, heads) and cached on the plan. Under Ulysses context parallelism a
process computes some heads of every layer (``ForwardContext.heads``): its layouts cover those
heads, each in its own mode, and a layer whose heads *here* are all Full runs dense here.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from kernels.block_layout import BlockLayout
from kernels.helpers import warn_once
from kernels.limits import Q_BLOCK_SIZES, head_dim_error, head_dim_supported
from sparse_vdit.guards import steps_or_assumed
from sparse_vdit.modes import MODES, Full, Mode, ModeBank, check_layout_size, mode_density
from sparse_vdit.protocol import (
    AttentionCall,
    AttentionMethod,
    ForwardContext,
    ModelInfo,
    config_differences,
    config_fingerprint,
    model_mismatch,
)
from sparse_vdit.token_layout import TokenLayout

__all__ = ["SCHEMA_VERSION", "COST_SOURCES", "REMAKE", "PlanError", "CostTable", "StepRange", "Plan"]

SCHEMA_VERSION = 1
COST_SOURCES = ("measured", "flops")
REMAKE = "save the plan again with save_plan, or search it again"
_FINGERPRINT = re.compile(r"(?:[0-9a-f]{64})?")  # config_fingerprint: a sha256 in hex, or empty


class PlanError(ValueError):
    """A plan that cannot be used. The message says what is wrong and what to do."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_mode(mode: Any, where: str) -> None:
    if type(mode) not in MODES:
        raise PlanError(
            f"{where}: {mode!r} is not a mode (modes are {', '.join(m.__name__ for m in MODES)}): {REMAKE}"
        )
    try:
        hash(mode)
    except TypeError:
        raise PlanError(f"{where}: {mode!r} has a list parameter: give VerticalStripe frames as a tuple") from None


@dataclass(frozen=True)
class CostTable:
    """What each candidate mode costs, normalised to dense attention (Full = 1.0).

    Attributes:
        source: "measured" (kernel time on a GPU) or "flops" (block density; no GPU).
        gpu: ``torch.cuda.get_device_name()`` when measured, else None.
        shape: what the costs were taken at, e.g. "12 heads x 21x30x52 video tokens (32760
            total), block 128, bfloat16".
        costs: (mode, cost) per candidate mode; each cost a finite number >= 0.
    """

    source: str
    gpu: str | None
    shape: str
    costs: tuple[tuple[Mode, float], ...]

    def __post_init__(self) -> None:
        if self.source not in COST_SOURCES:
            raise PlanError(f"cost source {self.source!r} is unknown: it is one of {', '.join(COST_SOURCES)}; {REMAKE}")
        if self.gpu is not None and not isinstance(self.gpu, str):
            raise PlanError(f"cost gpu must be a GPU name or None, got {self.gpu!r}; {REMAKE}")
        if not isinstance(self.shape, str):
            raise PlanError(f"cost shape must be a description (a string), got {self.shape!r}; {REMAKE}")
        costs = tuple(tuple(pair) for pair in self.costs)
        for i, pair in enumerate(costs):
            if len(pair) != 2:
                raise PlanError(f"cost costs[{i}] must be a (mode, cost) pair, got {pair!r}; {REMAKE}")
            _check_mode(pair[0], f"cost costs[{i}]")
            if not _is_number(pair[1]) or pair[1] < 0:
                raise PlanError(f"cost of {pair[0]} must be a finite number >= 0, got {pair[1]!r}; {REMAKE}")
        modes = [mode for mode, _ in costs]
        repeated = sorted({repr(m) for m in modes if modes.count(m) > 1})
        if repeated:
            raise PlanError(f"the cost table lists {', '.join(repeated)} more than once; {REMAKE}")
        object.__setattr__(self, "costs", tuple((mode, float(cost)) for mode, cost in costs))

    def cost_of(self, mode: Mode) -> float:
        """The mode's cost; ``Full()`` is dense by definition (1.0) when the table leaves it out."""
        for candidate, cost in self.costs:
            if candidate == mode:
                return cost
        if isinstance(mode, Full):
            return 1.0
        raise PlanError(f"the cost table has no cost for {mode!r}, which the plan uses; {REMAKE}")


@dataclass(frozen=True)
class StepRange:
    """Searched steps ``start`` .. ``end - 1`` (0-based), all with the same modes.

    Attributes:
        start: first searched step of the range (inclusive).
        end: end of the range (exclusive).
        layers: [num_layers][num_heads] mode of each head.
    """

    start: int
    end: int
    layers: tuple[tuple[Mode, ...], ...]

    def __post_init__(self) -> None:
        if not (_is_count(self.start) and _is_count(self.end) and self.start < self.end):
            raise PlanError(f"a step range needs integers 0 <= start < end, got {self.start!r}..{self.end!r}; {REMAKE}")
        object.__setattr__(self, "layers", tuple(tuple(layer) for layer in self.layers))

    @property
    def num_steps(self) -> int:
        return self.end - self.start


def _merge_steps(step_modes: Sequence[Sequence[Sequence[Mode]]]) -> tuple[StepRange, ...]:
    """step_modes[s][l][h] -> StepRanges, identical consecutive steps merged."""
    ranges: list[StepRange] = []
    for s, layers in enumerate(step_modes):
        layers = tuple(tuple(layer) for layer in layers)
        if ranges and ranges[-1].layers == layers:
            ranges[-1] = StepRange(ranges[-1].start, s + 1, layers)
        else:
            ranges.append(StepRange(s, s + 1, layers))
    return tuple(ranges)


def _all_full(modes: Sequence[Mode]) -> bool:
    return all(isinstance(m, Full) for m in modes)


@dataclass(frozen=True, eq=False)
class Plan(AttentionMethod):
    """A Sparse-vDiT plan, and the attention method that runs it (see the module docstring).

    One object on purpose: the frozen record a plan file holds (every field below) is also the
    method (``validate``, ``begin_forward``, ``__call__``; its run-time caches are not fields that
    compare or print), so a loaded plan is applied as it is.

    Attributes:
        model: the ``ModelInfo`` of the model it was searched on (with its config fingerprint).
        model_config: that model's transformer config (JSON values, private keys dropped).
        token_layout: the token layout it was searched at.
        num_steps: denoising steps it was searched at (N_s).
        block_size: layout block size used at search and, by default, at run time.
        steps: contiguous ``StepRange``s covering [0, num_steps); identical consecutive steps merged.
        lam, epsilon: the search's lambda (the weight of the cost in the loss; ``lambda`` is a
            Python keyword, hence ``lam``; the file calls it "lambda") and epsilon (loss threshold).
        cost: the ``CostTable`` the search used.
        expected_density: fraction of attention computed, averaged over steps, layers and heads
            (at the searched layout and ``block_size``).
        predicted_speedup: of attention time, from the cost table: 1 / mean(cost of each head's mode).
        calibration: how the plan was calibrated, e.g. {"prompts": [...], "seeds": [...],
            "consistency": 0.93, "method": "majority"} (JSON values), or None.
        created: ISO date and time it was made.

    Build one with ``Plan.from_step_modes``; construction validates everything (``PlanError``).
    """

    model: ModelInfo
    model_config: dict
    token_layout: TokenLayout
    num_steps: int
    block_size: int
    steps: tuple[StepRange, ...]
    lam: float
    epsilon: float
    cost: CostTable
    expected_density: float
    predicted_speedup: float
    calibration: dict | None = None
    created: str = ""
    # Run-time caches (ModeBank per (layout, device); per-layer layouts per (range, layout, device)).
    _banks: dict = field(default_factory=dict, init=False, repr=False)
    _prepared: dict = field(default_factory=dict, init=False, repr=False)
    _warned: set = field(default_factory=set, init=False, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_step_modes(cls, step_modes: Sequence[Sequence[Sequence[Mode]]], **fields: Any) -> "Plan":
        """A plan from ``step_modes[s][l][h]``, the mode of head h of layer l at searched step s.

        Identical consecutive steps are merged into ``StepRange``s. ``fields`` are the other
        attributes; ``num_steps`` defaults to ``len(step_modes)``, ``model_config`` to
        ``model.config``, ``created`` to now, and ``expected_density`` / ``predicted_speedup`` are
        computed when not given. Raises ``PlanError`` when anything is inconsistent.
        """
        if not step_modes:
            raise PlanError("a plan needs at least one step: step_modes is empty")
        if fields.setdefault("num_steps", len(step_modes)) != len(step_modes):
            raise PlanError(f"num_steps={fields['num_steps']} but step_modes holds {len(step_modes)} steps")
        model = fields.get("model")
        if "model_config" not in fields and isinstance(model, ModelInfo):
            fields["model_config"] = dict(model.config or {})
        fields.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        density, speedup = fields.pop("expected_density", None), fields.pop("predicted_speedup", None)
        plan = cls(steps=_merge_steps(step_modes), expected_density=0.0, predicted_speedup=1.0, **fields)
        return dataclasses.replace(
            plan,
            expected_density=plan.computed_density() if density is None else density,
            predicted_speedup=plan.computed_speedup() if speedup is None else speedup,
        )

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelInfo):
            raise PlanError(f"model must be a ModelInfo, got {type(self.model).__name__}")
        model = self.model
        if not all(_is_count(n, 1) for n in (model.num_layers, model.num_heads, model.head_dim)):
            raise PlanError(f"model: layers, heads and head_dim must be integers >= 1, got {model}; {REMAKE}")
        if len(model.layer_names) != model.num_layers:
            raise PlanError(
                f"model: {len(model.layer_names)} layer names for {model.num_layers} layers; {REMAKE}"
            )
        if not isinstance(self.model_config, dict):
            raise PlanError(f"model_config must be a dict (the transformer config), got {type(self.model_config).__name__}")
        if not (isinstance(model.config_fingerprint, str) and _FINGERPRINT.fullmatch(model.config_fingerprint)):
            raise PlanError(
                f"model: config_fingerprint must be a sha256 (64 hex digits) of the model config, or empty for a "
                f"plan made without one, got {model.config_fingerprint!r}; {REMAKE}"
            )
        # An empty fingerprint beside a config would switch the config check off: refused as an edit.
        if self.model_config and config_fingerprint(self.model_config) != model.config_fingerprint:
            raise PlanError(f"model_config does not match the model's config_fingerprint (was it edited?): {REMAKE}")
        if not isinstance(self.token_layout, TokenLayout):
            raise PlanError(f"token_layout must be a TokenLayout, got {type(self.token_layout).__name__}")
        if self.token_layout.text_len and self.token_layout.text_position != model.text_position:
            raise PlanError(
                f"token_layout puts text {self.token_layout.text_position!r}, but {model.family} puts it "
                f"{model.text_position!r}: {REMAKE}"
            )
        if not _is_count(self.num_steps, 1):
            raise PlanError(f"num_steps must be an integer >= 1, got {self.num_steps!r}; {REMAKE}")
        if not (_is_count(self.block_size) and self.block_size in Q_BLOCK_SIZES):
            raise PlanError(
                f"block_size {self.block_size!r} is not served by the block-sparse kernel: use one of "
                f"{', '.join(map(str, Q_BLOCK_SIZES))} (64 or 128 on GPUs), e.g. plan.with_block_size(128)"
            )
        try:
            check_layout_size(self.token_layout, self.block_size)
        except ValueError as exc:
            raise PlanError(f"token_layout {self.token_layout.describe()} is too large: {exc}; {REMAKE}") from None
        for name in ("lam", "epsilon"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise PlanError(f"{name} must be a finite number >= 0, got {value!r}; {REMAKE}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.cost, CostTable):
            raise PlanError(f"cost must be a CostTable, got {type(self.cost).__name__}")
        object.__setattr__(self, "steps", tuple(self.steps))
        self._check_steps()
        for mode in self.distinct_modes():
            self.cost.cost_of(mode)
        if not _is_number(self.expected_density) or not 0 <= self.expected_density <= 1:
            raise PlanError(f"expected_density must be a number in [0, 1], got {self.expected_density!r}; {REMAKE}")
        if not _is_number(self.predicted_speedup) or self.predicted_speedup <= 0:
            raise PlanError(f"predicted_speedup must be a finite number > 0, got {self.predicted_speedup!r}; {REMAKE}")
        if self.calibration is not None:
            if not isinstance(self.calibration, dict):
                raise PlanError(f"calibration must be a dict or None, got {type(self.calibration).__name__}")
            try:
                json.dumps(self.calibration, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise PlanError(f"calibration must hold JSON values only: {exc}") from None
        if not isinstance(self.created, str):
            raise PlanError(f"created must be an ISO date string, got {self.created!r}")

    def _check_steps(self) -> None:
        """Step ranges contiguous over [0, num_steps), each [num_layers][num_heads] modes."""
        if not self.steps or not all(isinstance(r, StepRange) for r in self.steps):
            raise PlanError(f"steps must be a non-empty sequence of StepRange; {REMAKE}")
        expected_start = 0
        for i, r in enumerate(self.steps):
            where = f"steps[{i}] (searched steps {r.start}..{r.end - 1})"
            if r.start != expected_start:
                gap = "overlaps the range before it" if r.start < expected_start else f"leaves steps {expected_start}..{r.start - 1} out"
                raise PlanError(f"{where} {gap}: step ranges must be contiguous from 0; {REMAKE}")
            if r.end > self.num_steps:
                raise PlanError(f"{where} is out of range: the plan has {self.num_steps} steps (0..{self.num_steps - 1}); {REMAKE}")
            expected_start = r.end
            if len(r.layers) != self.model.num_layers:
                raise PlanError(
                    f"{where} has {len(r.layers)} layers, but the plan's model ({self.model.family}) has "
                    f"{self.model.num_layers}; {REMAKE}"
                )
            for layer, modes in enumerate(r.layers):
                if len(modes) != self.model.num_heads:
                    raise PlanError(
                        f"{where} layer {layer} has {len(modes)} heads, but the plan's model has "
                        f"{self.model.num_heads}; {REMAKE}"
                    )
                for head, mode in enumerate(modes):
                    _check_mode(mode, f"{where} layer {layer} head {head}")
        if expected_start != self.num_steps:
            raise PlanError(
                f"the step ranges cover steps 0..{expected_start - 1}, but the plan has {self.num_steps} "
                f"steps: steps {expected_start}..{self.num_steps - 1} have no modes; {REMAKE}"
            )

    # ------------------------------------------------------------------ reading
    def distinct_modes(self) -> tuple[Mode, ...]:
        """Every mode the plan uses, in order of first use."""
        return tuple(dict.fromkeys(m for r in self.steps for layer in r.layers for m in layer))

    def mean_over_heads(self, value: Callable[[Mode], float]) -> float:
        """Mean of ``value(mode)`` over every (searched step, layer, head)."""
        counts: Counter = Counter()
        for r in self.steps:
            for layer in r.layers:
                for mode, n in Counter(layer).items():
                    counts[mode] += n * r.num_steps
        total = sum(counts.values())
        return sum(value(mode) * n for mode, n in counts.items()) / total

    def mode_densities(self) -> dict[Mode, float]:
        """``mode_density`` of each mode the plan uses, at the searched layout and ``block_size``."""
        try:
            return {m: mode_density(m, self.token_layout, self.block_size) for m in self.distinct_modes()}
        except ValueError as exc:
            raise PlanError(f"a mode of the plan does not fit its searched layout {self.token_layout.describe()}: {exc}") from None

    def computed_density(self) -> float:
        """Expected attention density: ``mode_densities`` averaged over steps, layers and heads."""
        return self.mean_over_heads(self.mode_densities().__getitem__)

    def computed_speedup(self) -> float:
        """Predicted attention speedup from the cost table: 1 / mean(cost of each head's mode)."""
        mean_cost = self.mean_over_heads(self.cost.cost_of)
        if mean_cost <= 0:
            raise PlanError("every head of this plan costs 0 (all skipped?): the plan computes nothing; search it again")
        return 1.0 / mean_cost

    def searched_step(self, step_index: int, num_steps: int) -> int:
        """The searched step that step ``step_index`` of a ``num_steps``-step generation uses:
        min(N_s - 1, floor((step_index + 0.5) * N_s / num_steps))."""
        if not _is_count(num_steps, 1):
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if not (_is_count(step_index) and step_index < num_steps):
            raise ValueError(f"step {step_index!r} is outside a {num_steps}-step generation (0..{num_steps - 1})")
        return min(self.num_steps - 1, (2 * step_index + 1) * self.num_steps // (2 * num_steps))

    def _range_index(self, searched_step: int) -> int:
        return bisect.bisect_right([r.start for r in self.steps], searched_step) - 1

    def modes_at(self, step_index: int, num_steps: int) -> tuple[tuple[Mode, ...], ...]:
        """[num_layers][num_heads] modes at step ``step_index`` of a ``num_steps``-step generation."""
        return self.steps[self._range_index(self.searched_step(step_index, num_steps))].layers

    def with_block_size(self, block_size: int) -> "Plan":
        """The same plan run at another layout block size (e.g. 128 on a GPU for a plan searched on
        the CPU at 16); ``expected_density`` is recomputed at the new size."""
        plan = dataclasses.replace(self, block_size=block_size)
        return dataclasses.replace(plan, expected_density=plan.computed_density())

    def __repr__(self) -> str:
        return (
            f"Plan({self.model.family}, {self.model.num_layers} layers x {self.model.num_heads} heads, "
            f"{self.num_steps} steps in {len(self.steps)} ranges, density {self.expected_density:.3f}, "
            f"predicted {self.predicted_speedup:.2f}x)"
        )

    # ------------------------------------------------------------------ the method protocol
    def validate(self, model: ModelInfo) -> None:
        """PlanError when ``model`` differs in structure; a warning (once) when only its config differs."""
        message = model_mismatch(self.model, model, "this plan")
        if message is not None:
            raise PlanError(message)
        sparse = any(not _all_full(layer) for r in self.steps for layer in r.layers)
        if sparse and not head_dim_supported(model.head_dim):
            raise PlanError(f"{model.family}: " + head_dim_error(model.head_dim) + "; use FullAttention() for it")
        if self.model.config_fingerprint and model.config_fingerprint and self.model.config_fingerprint != model.config_fingerprint:
            known = bool(self.model_config) and model.config is not None
            diffs = config_differences(self.model_config, model.config) if known else []
            warn_once(
                self._warned, "config",
                f"this plan was searched on a {self.model.family} of the same structure but another config "
                f"({'; '.join(diffs) if diffs else 'config fingerprints differ'}). It runs, but its modes may "
                "fit this model less well: search a plan for this model to be sure",
            )

    def begin_forward(self, forward: ForwardContext) -> tuple[BlockLayout | None, ...]:
        """Per layer: None (all heads Full: dense) or the layer's BlockLayout, at this forward's step,
        for the heads this process computes (``forward.heads``: all of them on one GPU)."""
        index = self._range_index(self.searched_step_of(forward))
        heads = forward.heads
        key = (index, forward.token_layout, str(forward.device), heads)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepared[key] = self._layer_layouts(self.steps[index], forward.token_layout, forward.device, heads)
        return prepared

    def searched_step_of(self, forward: ForwardContext) -> int:
        """The searched step serving ``forward`` (``searched_step`` of its step index and step count;
        the count assumed, with one warning, when the forward does not know it)."""
        num_steps = steps_or_assumed(forward, self.num_steps, "the plan", "the number it was searched at", self._warned)
        return self.searched_step(min(forward.step_index, num_steps - 1), num_steps)

    def __call__(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> BlockLayout | None:
        return call.prepared[call.layer_index]

    def _layer_layouts(self, step_range: StepRange, layout: TokenLayout, device, heads: range) -> tuple[BlockLayout | None, ...]:
        by_modes: dict[tuple[Mode, ...], BlockLayout] = {}
        out: list[BlockLayout | None] = []
        for layer in step_range.layers:
            modes = layer[heads.start : heads.stop]
            if _all_full(modes):
                out.append(None)
                continue
            if modes not in by_modes:
                by_modes[modes] = self._bank(layout, device).layout(modes)
            out.append(by_modes[modes])
        return tuple(out)

    def _bank(self, layout: TokenLayout, device) -> ModeBank:
        """One ModeBank per (token layout, device) holding the modes of every layer that runs sparse."""
        key = (layout, str(device))
        bank = self._banks.get(key)
        if bank is None:
            modes = dict.fromkeys(m for r in self.steps for layer in r.layers if not _all_full(layer) for m in layer)
            try:
                bank = ModeBank(modes, layout, block_size=self.block_size, device=device)
            except ValueError as exc:
                raise ValueError(
                    f"this plan cannot run at {layout.describe()}: {exc}. Generate at a resolution whose "
                    "latent frames the plan's modes fit, or search a plan for this resolution"
                ) from None
            self._banks[key] = bank
        return bank
