"""One AdaSpa attention call, shared by the diffusers method (``AdaSpaAttention``) and the functional
entry (``adaspa_attention``): run this step's phase for one layer, reading and writing its state.

The kernel ops come from ``ops``, an object with ``attention_with_lse(q, k, v)``,
``block_attention_mass(q, k, lse, block_size)``, ``block_sparse_attention(q, k, v, layout)`` that
apply the call's key padding, and ``kv_lens`` ([B] or None): through diffusers that is the
``AttentionCall`` itself (its bound ops), in the functional entry the kernels with ``kv_lens``
bound.

Padded tokens (index >= kv_lens[b]) are padding as queries too: their rows get LSE = +inf before
the mass pass, so they carry no mass and garbage there never moves a selection (a block mixing
video rows with padded text rows is selected by its real rows only).

Everything on the search and sparse paths is device work with no host synchronisation; the
branches are on Python values fixed before the call (the phase, the geometry, which layers the
state holds), so a compiled transformer traces each phase as one graph.

Under Ulysses context parallelism q, k, v hold this process's heads (``head_shard.heads``) of the
whole sequence, and the state holds the selections, LSE and per-head values of those heads only;
the head tiers still rank the layer's every head (``adaspa.search``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from adaspa.schedule import CACHED_SEARCH, DENSE, FIRST_SEARCH, SPARSE
from adaspa.search import BlockGeometry, select_blocks
from adaspa.state import AdaSpaState
from sparse_vdit.protocol import HeadShard

__all__ = ["StepPlan", "SearchSettings", "attend", "search", "dense_rows"]


class SearchSettings(Protocol):
    """What a call reads of AdaSpa's settings (``adaspa.config.AdaSpaAttention`` has them; this
    module does not import it: the config imports this module)."""

    sparsity: float
    block_size: int
    recall_threshold: float
    tiers: bool


@dataclass(frozen=True)
class StepPlan:
    """What every attention call of one step does (``AdaSpaAttention.plan``).

    Attributes:
        phase: one of ``adaspa.schedule.PHASES``.
        keep_lse: a search in this step leaves the LSE cached (a later search step will read it).
        geometry: the block grid and text of the step's attention calls.
    """

    phase: str
    keep_lse: bool
    geometry: BlockGeometry


def attend(config: SearchSettings, plan: StepPlan, state: AdaSpaState, layer: int,
           q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ops: Any,
           head_shard: HeadShard | None = None) -> torch.Tensor | None:
    """This step's attention for layer ``layer``: q, k, v [B, H, S, D] -> out [B, H, S, D], or None
    in the dense (warm-up) phase, where the caller computes dense attention its own way.
    ``head_shard``: the layer's heads q, k, v hold when heads are split across processes.

    A layer whose first search was missed (no selection at a sparse step, no cached LSE at a later
    search step: a state handed in mid-generation, say) runs a first search now.
    """
    if plan.phase == DENSE:
        return None
    dense_out = search(config, plan, state, layer, q, k, v, ops, head_shard)
    if dense_out is not None:
        return dense_out
    out = ops.block_sparse_attention(q, k, v, state.layout(layer))
    return dense_rows(out, q, k, v, plan.geometry, ops)


def search(config: SearchSettings, plan: StepPlan, state: AdaSpaState, layer: int,
           q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ops: Any,
           head_shard: HeadShard | None = None) -> torch.Tensor | None:
    """The search of this step for layer ``layer``, if it has one (not in the dense phase), leaving
    the layer's current selection in ``state``. Returns the dense output [B, H, S, D] when it ran a
    first search (dense attention with the row LSE, then the block mass: that output is the step's),
    else None: a later search (one mass pass on the cached LSE) or none, and the caller computes
    the step's output on ``state``'s selection. A missed first search runs now (see ``attend``)."""
    geometry = plan.geometry
    if q.shape[2] != geometry.seq_len or k.shape[2] != geometry.seq_len:
        raise ValueError(
            f"AdaSpa is self-attention over one sequence: q has {q.shape[2]} tokens, k {k.shape[2]}, "
            f"the step's token layout {geometry.seq_len}"
        )
    state.check(geometry, q.shape[0], q.shape[1])
    phase = plan.phase
    missed = (phase == SPARSE and not state.has_selection(layer)) or (
        phase == CACHED_SEARCH and state.cached_lse(layer) is None
    )
    if phase == FIRST_SEARCH or missed:
        out, lse = ops.attention_with_lse(q, k, v)
        lse = _padded_rows_massless(lse, ops.kv_lens)
        _search(config, plan, state, layer, ops.block_attention_mass(q, k, lse, config.block_size), lse, head_shard)
        return out
    if phase == CACHED_SEARCH:
        lse = state.cached_lse(layer)
        _search(config, plan, state, layer, ops.block_attention_mass(q, k, lse, config.block_size), lse, head_shard)
    return None


def _search(config: SearchSettings, plan: StepPlan, state: AdaSpaState, layer: int,
            mass: torch.Tensor, lse: torch.Tensor, head_shard: HeadShard | None) -> None:
    selection = select_blocks(
        mass, plan.geometry, sparsity=config.sparsity, recall_threshold=config.recall_threshold, tiers=config.tiers,
        head_shard=head_shard,
    )
    state.store(layer, selection, plan.geometry)
    if plan.keep_lse:
        state.cache_lse(layer, lse)
    else:
        state.drop_lse(layer)


def _padded_rows_massless(lse: torch.Tensor, kv_lens: torch.Tensor | None) -> torch.Tensor:
    """lse [B, H, S] with +inf on the rows of padded tokens (exp(s - inf) = 0: no mass)."""
    if kv_lens is None:
        return lse
    rows = torch.arange(lse.shape[-1], device=lse.device)
    return lse.masked_fill(rows >= kv_lens.to(lse.device).view(-1, 1, 1), float("inf"))


def dense_rows(out: torch.Tensor, q, k, v, geometry: BlockGeometry, ops: Any, heads: torch.Tensor | None = None) -> torch.Tensor:
    """Query rows of text and other tokens off the grid attend every key (the text sink):
    computed densely, written over ``out`` [B, H, S, D], for every head or the ``heads`` given
    (a LongTensor of head indices)."""
    for start, stop in geometry.dense_spans:
        rows = slice(start, stop)
        if heads is None:
            dense_out, _ = ops.attention_with_lse(q[:, :, rows], k, v)
            out[:, :, rows] = dense_out
        else:
            dense_out, _ = ops.attention_with_lse(q[:, heads, rows], k[:, heads], v[:, heads])
            out[:, heads, rows] = dense_out
    return out
