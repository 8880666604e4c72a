"""A hybrid of a searched plan and AdaSpa: the plan's mode where its search runs agreed, AdaSpa's
online top-k where they did not.

    from adaspa import AdaSpaAttention, HybridAttention
    plan = search_plan(pipe, ["a prompt", "another prompt"], [0, 1], ...)   # several runs
    handle = apply_sparse_attention(pipe, HybridAttention(plan, AdaSpaAttention(sparsity=0.8)))

Why: a plan search over several prompts and seeds records, per (searched step, layer, head), the
share of runs that chose the plan's mode (``calibration["cell_agreement"]``, ``search.calibration``).
Where they all agreed, the head's pattern does not depend on the prompt and the fixed mode is safe;
where they did not, a fixed mode is a guess, and AdaSpa finds the head's blocks for this prompt.
Neither paper does this.

Per step and layer (a cell is *unstable* when its agreement is below ``min_agreement``; the
default 1.0 keeps only unanimous choices):

- a layer with no unstable head runs the plan as the plan does (one launch, or dense);
- AdaSpa's dense warm-up: stable heads in their mode, unstable heads dense, one launch;
- AdaSpa's first search: every head dense, as AdaSpa's own first search computes it (the dense
  pass with the row LSE that its search needs);
- its later searches and its sparse steps: the search (one mass pass) where it has one, then one
  launch of one layout whose stable heads hold their mode's blocks and unstable heads AdaSpa's
  selection; the rows of text (and other tokens off the grid) of unstable heads are then computed
  densely, as AdaSpa computes them.

AdaSpa runs at the plan's block size (its layouts and the plan's share one block grid) and keeps
its selection for every head (a search ranks a layer's heads together); only the unstable heads'
blocks are computed. Under Ulysses context parallelism each process serves its share of the
heads, as both methods do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from adaspa.config import AdaSpaAttention
from adaspa.runtime import StepPlan, dense_rows, search
from adaspa.schedule import DENSE
from adaspa.search import BlockGeometry, layout_from_blocks
from kernels.block_layout import BlockLayout
from sparse_vdit.plan import Plan, PlanError
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo

__all__ = ["HybridAttention", "unstable_cells"]

AGREEMENT_KEY = "cell_agreement"


def unstable_cells(plan: Plan, min_agreement: float = 1.0) -> tuple[tuple[tuple[bool, ...], ...], ...]:
    """[searched step][layer][head]: True where fewer than ``min_agreement`` of the plan's search runs
    chose the plan's mode. ``PlanError`` when the plan does not record its runs' agreement per cell
    (a plan searched before it was recorded, or made by hand)."""
    calibration = plan.calibration or {}
    table = calibration.get(AGREEMENT_KEY)
    where = "this plan"
    if table is None:
        raise PlanError(
            f"{where} does not record how its search runs agreed per (step, layer, head) (calibration "
            f"'{AGREEMENT_KEY}'): search it again with this version (search_plan over several prompts or seeds)"
        )
    shape = (plan.num_steps, plan.model.num_layers, plan.model.num_heads)
    try:
        ok = len(table) == shape[0] and all(len(layers) == shape[1] and all(len(h) == shape[2] for h in layers)
                                            for layers in table)
    except TypeError:
        ok = False
    if not ok:
        raise PlanError(f"{where}: calibration '{AGREEMENT_KEY}' must be [steps][layers][heads] = {list(shape)} shares")
    return tuple(tuple(tuple(float(a) < min_agreement for a in heads) for heads in layers) for layers in table)


@dataclass(frozen=True)
class _LayerPrepared:
    """One layer's step: the plan's layout (None: all Full), the unstable heads (LongTensor of
    indices into the call's heads; None: every head is stable), and for layers with unstable heads
    the plan's computed blocks [1, H, QB, KB] bool with the row width they need."""

    plan_layout: BlockLayout | None
    unstable: torch.Tensor | None = None
    unstable_mask: torch.Tensor | None = None  # [1, H, 1, 1] bool
    plan_blocks: torch.Tensor | None = None
    plan_width: int = 0
    warm: BlockLayout | None = None  # stable heads in their mode, unstable dense (AdaSpa's warm-up)


@dataclass(frozen=True)
class _Prepared:
    adaspa: StepPlan
    layers: tuple[_LayerPrepared, ...]


@dataclass(frozen=True)
class HybridAttention(AttentionMethod):
    """A plan's stable cells and AdaSpa's online top-k for the rest (module docstring).

    Args:
        plan: a ``Plan`` searched over several runs (prompts x seeds), whose calibration records
            each cell's agreement.
        adaspa: the AdaSpa settings for the unstable heads (run at the plan's block size).
        min_agreement: in (0, 1]; a cell keeps the plan's mode when at least this share of the runs
            chose it (1.0: unanimous).
    """

    plan: Plan
    adaspa: AdaSpaAttention = field(default_factory=AdaSpaAttention)
    min_agreement: float = 1.0
    _unstable: tuple = field(default=(), init=False, repr=False, compare=False)
    _prepared: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.plan, Plan):
            raise TypeError(f"HybridAttention needs a Plan (load_plan or search_plan), got {type(self.plan).__name__}")
        if not isinstance(self.adaspa, AdaSpaAttention):
            raise TypeError(f"adaspa must be an AdaSpaAttention, got {type(self.adaspa).__name__}")
        if not (isinstance(self.min_agreement, (int, float)) and not isinstance(self.min_agreement, bool)
                and 0 < self.min_agreement <= 1):
            raise ValueError(f"min_agreement must be a share in (0, 1], got {self.min_agreement!r}")
        runs = (self.plan.calibration or {}).get("runs")
        if isinstance(runs, int) and runs < 2:
            raise PlanError(
                "this plan was searched in one run, so every cell 'agreed': a hybrid needs a plan searched over "
                "several prompts or seeds (search_plan(pipe, prompts, seeds, ...) with two or more combinations)"
            )
        object.__setattr__(self, "_unstable", unstable_cells(self.plan, self.min_agreement))
        if self.adaspa.block_size != self.plan.block_size:  # one block grid for both
            object.__setattr__(self, "adaspa", dataclasses.replace(self.adaspa, block_size=self.plan.block_size))

    def __repr__(self) -> str:
        cells = [u for layers in self._unstable for heads in layers for u in heads]
        return (f"HybridAttention({self.plan!r}, {self.adaspa!r}, min_agreement={self.min_agreement:g}: "
                f"{sum(cells)} of {len(cells)} cells to AdaSpa)")

    @property
    def unstable_share(self) -> float:
        """Share of the plan's (searched step, layer, head) cells handed to AdaSpa."""
        cells = [u for layers in self._unstable for heads in layers for u in heads]
        return sum(cells) / len(cells)

    # ------------------------------------------------------------------ method protocol
    def validate(self, model: ModelInfo) -> None:
        self.plan.validate(model)
        self.adaspa.validate(model)

    def new_state(self):
        return self.adaspa.new_state()

    def begin_forward(self, forward: ForwardContext) -> _Prepared:
        plan_layouts = self.plan.begin_forward(forward)
        step_plan = self.adaspa.begin_forward(forward)
        searched = self.plan.searched_step_of(forward)
        heads = forward.heads
        key = (id(plan_layouts), searched, heads, str(forward.device))
        layers = self._prepared.get(key)
        if layers is None or layers[0] is not plan_layouts:
            unstable = self._unstable[searched]
            layers = (plan_layouts, tuple(
                self._layer(plan_layouts[i], unstable[i][heads.start:heads.stop], step_plan.geometry, forward.device)
                for i in range(len(plan_layouts))
            ))
            self._prepared[key] = layers
        return _Prepared(adaspa=step_plan, layers=layers[1])

    def _layer(self, layout: BlockLayout | None, unstable: tuple[bool, ...], geometry: BlockGeometry, device) -> _LayerPrepared:
        if not any(unstable):
            return _LayerPrepared(plan_layout=layout)
        heads = len(unstable)
        mask = torch.tensor(unstable, device=device)
        if layout is None:  # every head Full in the plan
            blocks = torch.ones(1, heads, geometry.num_blocks, geometry.num_blocks, dtype=torch.bool, device=device)
        else:
            full, partial = layout.block_maps()
            blocks = (full | partial).expand(1, heads, -1, -1) if full.shape[1] == 1 else (full | partial)
        warm_blocks = blocks | mask.view(1, -1, 1, 1)
        width = int(blocks.sum(-1).max())
        all_full = layout is None  # stable heads Full and unstable heads dense: the warm-up is dense
        return _LayerPrepared(
            plan_layout=layout,
            unstable=torch.nonzero(mask).flatten(),
            unstable_mask=mask.view(1, -1, 1, 1),
            plan_blocks=blocks,
            plan_width=width,
            warm=None if all_full else layout_from_blocks(warm_blocks, geometry, geometry.num_blocks),
        )

    def __call__(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        prepared: _Prepared = call.prepared
        layer = prepared.layers[call.layer_index]
        if layer.unstable is None:
            return layer.plan_layout
        step = prepared.adaspa
        if step.phase == DENSE:
            return layer.warm
        state = call.state
        dense_out = search(self.adaspa, step, state, call.layer_index, q, k, v, call, call.forward.head_shard)
        if dense_out is not None:
            return dense_out
        geometry = step.geometry
        blocks = torch.where(layer.unstable_mask, state.selected_blocks(call.layer_index), layer.plan_blocks)
        width = min(geometry.num_blocks, max(layer.plan_width, state.widths[call.layer_index]))
        layout = layout_from_blocks(blocks, geometry, width)
        if not geometry.dense_spans:
            return layout
        out = call.block_sparse_attention(q, k, v, layout)
        return dense_rows(out, q, k, v, geometry, call, heads=layer.unstable)

