"""AdaSpa's per-generation, per-branch state: the LSE cache and the block selection of every layer.

One ``AdaSpaState`` serves one generation and one CFG branch. Through diffusers, the step tracker
makes a fresh one per generation and branch (``method.new_state()`` -> ``call.state``): Wan's cond
and uncond calls of one step get separate states, CogVideoX's batched cond / uncond (B = 2) shares
one whose tensors keep a batch dimension (each sample its own selection). With
``adaspa.adaspa_attention`` you make one per generation and branch yourself.

Storage, chosen to stay compact (sizes at HunyuanVideo 720p in ``cache_bytes`` and the README):

- LSE: [B, H, S] **float32**, per layer, cached at the first search step and only while a later
  search step will read it (dropped after the last one; never stored when there is none). It is
  kept as the kernel returns it: float16 would halve it but overflows to inf past 65504 (large
  scores: every mass of the row then reads 0 and the row selects nothing), and its 11 bits scale a
  row's mass by up to exp(|LSE| * 2^-11); bfloat16 keeps the range but only 8 bits.
- Selection: [B, H, QB, ceil(KB / 8)] uint8 **bitmask** per layer (one bit per block). At the
  default sparsity rows keep 10-30% of blocks, where int16 index lists would take 2.6x to 8x more.
- Layouts: the kernel's index lists are built from the bitmask on the device
  (``search.layout_from_blocks``, no host synchronisation) at a layer's first sparse call after a
  search, and kept until the next search while the kept layouts of the state take at most
  ``LAYOUT_CACHE_BYTES``; past that, a layer's are rebuilt at every sparse step. Rebuilding is some
  35 small launches: at the proxy's evaluation size (4 heads x 32,256 tokens) 0.53 ms per layer
  and step against the sparse kernel's 0.30 ms (H100), so small and mid-size models keep them all;
  at Wan2.1-14B 720p the lists of every layer would take about 2 GB (estimated from the list
  widths at s = 0.8), and only the first layers' are kept.
- Per head (diagnostics): recall and tier sparsity, [B, H] float32.

H is the heads this process computes: all of the layer's, or its share under Ulysses context
parallelism (each process keeps the state of its own heads).
"""

from __future__ import annotations

import torch

from adaspa.search import BlockGeometry, Selection, layout_from_blocks, pack_blocks, unpack_blocks
from kernels.block_layout import BlockLayout
from kernels.helpers import cdiv

__all__ = ["AdaSpaState", "LAYOUT_CACHE_BYTES", "LSE_CACHE_DTYPE", "cache_bytes"]

LSE_CACHE_DTYPE = torch.float32  # the kernel's LSE as it comes: no overflow, no rounding
PER_HEAD_DTYPE = torch.float32
LAYOUT_CACHE_BYTES = 256 << 20  # per state (one generation and CFG branch): layouts kept between searches


def cache_bytes(*, layers: int, heads: int, seq_len: int, block_size: int, batch: int = 1) -> dict[str, int]:
    """Bytes an ``AdaSpaState`` holds at most, for ``layers`` layers of ``heads`` heads over
    ``seq_len`` tokens: {"lse", "selection", "per_head", "total"} (one CFG branch; the LSE part is
    held only from the first to the last search step). The layouts kept between searches come on
    top, at most ``LAYOUT_CACHE_BYTES`` (``AdaSpaState.layout_bytes``)."""
    qb = cdiv(seq_len, block_size)
    lse = layers * batch * heads * seq_len * torch.finfo(LSE_CACHE_DTYPE).bits // 8
    selection = layers * batch * heads * qb * cdiv(qb, 8)
    per_head = 2 * layers * batch * heads * torch.finfo(PER_HEAD_DTYPE).bits // 8
    return {"lse": lse, "selection": selection, "per_head": per_head, "total": lse + selection + per_head}


class AdaSpaState:
    """What AdaSpa keeps between the steps of one generation and CFG branch.

    Attributes (dicts keyed by layer index):
        lse: [B, H, S] float32, the row LSE cached at the first search step.
        selections: [B, H, QB, ceil(KB / 8)] uint8, the packed block selection in use.
        widths: the index-list width that holds every row of the selection (Python int).
        recall: [B, H] float32, the fraction of each head's attention mass the selection keeps
            (measured at the search that made it).
        head_sparsity: [B, H] float32, each head's tier sparsity.
        geometry: the block grid all layers share (set by the first search), or None.
        layouts: the ``BlockLayout`` built from a layer's selection, kept until its next search
            (while ``layout_bytes``, the bytes of the kept layouts, stays within ``LAYOUT_CACHE_BYTES``).
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget everything (a new generation)."""
        self.lse: dict[int, torch.Tensor] = {}
        self.selections: dict[int, torch.Tensor] = {}
        self.widths: dict[int, int] = {}
        self.recall: dict[int, torch.Tensor] = {}
        self.head_sparsity: dict[int, torch.Tensor] = {}
        self.geometry: BlockGeometry | None = None
        self.layouts: dict[int, BlockLayout] = {}

    def __repr__(self) -> str:
        return f"AdaSpaState({len(self.selections)} layers selected, {len(self.lse)} LSE cached, {self.nbytes()} bytes)"

    # ------------------------------------------------------------------ writing
    def check(self, geometry: BlockGeometry, batch: int, heads: int) -> None:
        """Raise ``ValueError`` when a call does not fit what this state holds (another resolution,
        block size, batch or head count: a state must not outlive its generation)."""
        if self.geometry is not None and geometry != self.geometry:
            raise ValueError(
                f"this AdaSpa state holds selections for {self.geometry.seq_len} tokens in blocks of "
                f"{self.geometry.block_size}, but the call has {geometry.seq_len} tokens in blocks of "
                f"{geometry.block_size}: use a fresh state per generation and CFG branch "
                "(through diffusers the step tracker makes one; handle.reset() starts a new generation)"
            )
        held = next(iter(self.selections.values()), None)
        if held is not None and held.shape[0] != batch:
            raise ValueError(
                f"this AdaSpa state holds selections for batch {held.shape[0]}, but the call has batch {batch}: "
                "use a fresh state per generation and CFG branch"
            )
        if held is not None and held.shape[1] != heads:
            raise ValueError(
                f"this AdaSpa state holds selections for {held.shape[1]} heads, but the call has {heads}: "
                "use a fresh state per generation, CFG branch and model"
            )

    def store(self, layer: int, selection: Selection, geometry: BlockGeometry) -> None:
        """Keep ``selection`` (packed) as layer ``layer``'s selection until the next search."""
        self.check(geometry, *selection.blocks.shape[:2])
        self.geometry = geometry
        self.layouts.pop(layer, None)  # built from the selection this one replaces
        self.selections[layer] = pack_blocks(selection.blocks)
        self.widths[layer] = selection.width
        self.recall[layer] = selection.recall
        self.head_sparsity[layer] = selection.head_sparsity

    def cache_lse(self, layer: int, lse: torch.Tensor) -> None:
        """Cache layer ``layer``'s row LSE ([B, H, S] float32) for the later search steps."""
        self.lse[layer] = lse.to(LSE_CACHE_DTYPE)

    def drop_lse(self, layer: int) -> None:
        self.lse.pop(layer, None)

    # ------------------------------------------------------------------ reading
    def has_selection(self, layer: int) -> bool:
        return layer in self.selections

    def cached_lse(self, layer: int) -> torch.Tensor | None:
        """The LSE cached for ``layer`` ([B, H, S] float32), or None."""
        return self.lse.get(layer)

    def selected_blocks(self, layer: int) -> torch.Tensor:
        """[B, H, QB, KB] bool: the key blocks each query block of layer ``layer`` computes."""
        if layer not in self.selections:
            raise KeyError(f"layer {layer} has no AdaSpa selection yet (layers with one: {sorted(self.selections)})")
        return unpack_blocks(self.selections[layer], self.geometry.num_blocks)

    def layout(self, layer: int) -> BlockLayout:
        """The ``BlockLayout`` of layer ``layer``'s selection: the kept one, else built on the device
        (no synchronisation) and kept while the kept layouts fit ``LAYOUT_CACHE_BYTES``."""
        kept = self.layouts.get(layer)
        if kept is not None:
            return kept
        built = layout_from_blocks(self.selected_blocks(layer), self.geometry, self.widths[layer])
        if self.layout_bytes + _layout_nbytes(built) <= LAYOUT_CACHE_BYTES:
            self.layouts[layer] = built
        return built

    @property
    def layout_bytes(self) -> int:
        """Bytes of the kept layouts."""
        return sum(_layout_nbytes(kept) for kept in self.layouts.values())

    def nbytes(self) -> int:
        """Bytes of every tensor held (LSE, selections, per-head values, kept layouts)."""
        groups = (self.lse, self.selections, self.recall, self.head_sparsity)
        return sum(t.numel() * t.element_size() for group in groups for t in group.values()) + self.layout_bytes


def _layout_nbytes(layout: BlockLayout) -> int:
    """Bytes of a layout's tensors (index lists, counts, tiles)."""
    fields = (layout.kv_num_blocks, layout.kv_indices, layout.full_kv_num_blocks, layout.full_kv_indices,
              layout.tile_ids, layout.tile_masks, layout.tile_masks_i8)
    return sum(t.numel() * t.element_size() for t in fields)
