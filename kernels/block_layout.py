"""The one sparse-layout type: a block layout with FlexAttention ``BlockMask``'s fields.

A ``BlockLayout`` says, for every (batch, head, query block), which key blocks are computed:

- ``full_kv_num_blocks`` / ``full_kv_indices``: blocks computed without any element mask.
- ``kv_num_blocks`` / ``kv_indices``: *partial* blocks, computed with an element mask.

This is FlexAttention's convention, so any layout converts to a
``torch.nn.attention.flex_attention.BlockMask`` (``to_flex_block_mask``) and can run through
``flex_attention`` as a reference or a benchmark peer.

Element masks of partial blocks are not Python callables (a Triton kernel cannot run them) but a
small table of distinct boolean tiles: ``tile_masks[t]`` is a [Q_BLOCK, KV_BLOCK] mask and
``tile_ids[b, p, qb, j]`` names the tile of the j-th partial block (``NO_TILE``: no element mask but
the sequence bounds). Patterns repeat, so the table stays small (a sliding window has a handful).

Compact storage (what online and per-step methods can afford):

- index lists are as wide as the longest row (not the number of key blocks), in the narrowest
  integer type that holds a key-block index (int8 up to 127 key blocks, int16 up to 32767);
- heads that share a pattern store it once: the per-row arrays have a *pattern* dimension P and
  ``head_patterns`` [H] maps each head to its pattern (None: the pattern dimension is the head
  dimension, as in FlexAttention). ``with_head_patterns`` makes another head table over the same
  storage, so layers and steps that reuse patterns share one bank.

Invariants (checked once, vectorised, by the constructor; builders produce them; the kernel
relies on them and never sees a layout that breaks them):

- counts lie in [0, width]; used entries of each list are strictly ascending (sorted, unique)
  key-block indices in [0, KB); unused tail entries are 0 (tile ids: NO_TILE);
- no block is listed both full and partial; the key block that crosses KV_LEN is never full (the
  kernel's unmasked path does no bounds check);
- tile ids of used partial entries lie in [NO_TILE, T); head_patterns values in [0, P);
- B and P (or H) may be 1 and then broadcast over the attention's batch and heads.

``merge_query_blocks(factor)`` re-blocks a layout at ``factor`` x its query block (the same pairs
computed), on the device.

``from_kv_blocks(..., check=False)`` builds a layout from device tensors with no host
synchronisation (inside ``torch.compile(fullgraph=True)`` or a CUDA graph): it sorts the lists and
moves a crossing block to the partial list on the device, and trusts the caller for the rest
(unique, in-range indices, as ``torch.topk`` gives).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from kernels.helpers import cdiv
from kernels.limits import MAX_BLOCK_SIZE

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

NO_TILE = -1  # tile id of a partial block masked only by the sequence bounds
# merge_query_blocks: below this many tiles, the merged tile table holds every combination of part
# states (built without reading the device); above it, only the combinations used (a few host reads).
MERGE_ALL_COMBINATIONS = 256
_EMPTY, _ONES = 0, 1  # part states in merge_query_blocks; tile t is state t + 2
INDEX_FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "tile_ids", "tile_masks")


def index_dtype(num_values: int, signed_sentinel: bool = False) -> torch.dtype:
    """Narrowest integer dtype holding 0 .. num_values - 1 (and -1 with ``signed_sentinel``)."""
    for dtype in (torch.int8, torch.int16, torch.int32):
        if num_values - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _block_size(value) -> tuple[int, int]:
    qblk, kvblk = _pair(value, "block_size")
    if not (1 <= qblk <= MAX_BLOCK_SIZE and 1 <= kvblk <= MAX_BLOCK_SIZE):
        raise ValueError(
            f"block_size {value!r} must lie in 1..{MAX_BLOCK_SIZE} tokens (the kernels serve Q_BLOCK 64 or 128 "
            "and KV_BLOCK a power of two from 16 to 256): pass e.g. block_size=128"
        )
    return qblk, kvblk


def _seq_lengths(value) -> tuple[int, int]:
    q_len, kv_len = _pair(value, "seq_lengths")
    if q_len < 1 or kv_len < 1:
        raise ValueError(f"seq_lengths {value!r} must be positive token counts (Q_LEN, KV_LEN)")
    return q_len, kv_len


def _bool_map(m, name: str) -> torch.Tensor:
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{name} must be a bool tensor [B, H, QB, KB], got {type(m).__name__}")
    if m.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor [B, H, QB, KB] (True = computed), got {m.dtype}: pass m.bool()")
    return m


def _pack_rows(flags: torch.Tensor, dtype: torch.dtype, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``flags`` [..., N] bool: (count [...] int32, sorted indices [..., W] ``dtype``,
    0-padded), W = max(1, longest row) (one host read), or ``width`` clipped to [1, N] (no host
    read; the caller promises no row is longer)."""
    count = flags.sum(-1, dtype=torch.int32)
    if width is not None:
        width = max(1, min(width, flags.shape[-1]))
    else:
        width = max(1, int(count.max())) if count.numel() else 1
    # Stable sort of "not flag" puts the kept indices first, in ascending order.
    order = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True)[..., :width]
    keep = torch.arange(width, device=flags.device) < count.unsqueeze(-1)
    return count, torch.where(keep, order, 0).to(dtype)


def _sort_used(num: torch.Tensor, idx: torch.Tensor, kb: int, *extra: torch.Tensor):
    """Sort the used entries of each row ascending (unused tail -> 0), carrying ``extra`` lists
    along; on the device, no host synchronisation."""
    used = torch.arange(idx.shape[-1], device=idx.device) < num.unsqueeze(-1)
    key = torch.where(used, idx.long(), kb)
    key, order = key.sort(dim=-1, stable=True)
    idx = torch.where(used, key, 0)
    return (idx,) + tuple(torch.where(used, e.gather(-1, order), NO_TILE) for e in extra)


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Block-sparse attention layout (FlexAttention ``BlockMask`` fields plus a tile table).

    Shapes (QB = ceil(Q_LEN / Q_BLOCK), KB = ceil(KV_LEN / KV_BLOCK); P = number of stored patterns,
    the head dimension when ``head_patterns`` is None; B and P may be 1 = broadcast):
        kv_num_blocks:      [B, P, QB] int32, partial blocks per query block
        kv_indices:         [B, P, QB, Wp] integer, Wp >= 1 (narrowest type, see module docstring)
        full_kv_num_blocks: [B, P, QB] int32, unmasked blocks per query block
        full_kv_indices:    [B, P, QB, Wf] integer, Wf >= 1
        tile_ids:           [B, P, QB, Wp] integer, tile of each partial entry (NO_TILE: bounds only)
        tile_masks:         [T, Q_BLOCK, KV_BLOCK] bool, T >= 1
        block_size:         (Q_BLOCK, KV_BLOCK)
        seq_lengths:        (Q_LEN, KV_LEN)
        head_patterns:      [H] integer or None: the pattern of each head
        has_partial, is_dense: facts the launcher reads (computed when None; ``from_kv_blocks``
            states them without reading the device)
    """

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor
    tile_ids: torch.Tensor
    tile_masks: torch.Tensor
    block_size: tuple[int, int]
    seq_lengths: tuple[int, int]
    head_patterns: torch.Tensor | None = None
    has_partial: bool | None = None
    is_dense: bool | None = None
    check: bool = field(default=True, repr=False)
    tile_masks_i8: torch.Tensor = field(init=False, repr=False)  # the form the kernel loads

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        object.__setattr__(self, "block_size", _block_size(self.block_size))
        object.__setattr__(self, "seq_lengths", _seq_lengths(self.seq_lengths))
        self._check_structure()
        if self.check:
            self._check_values()
        if self.has_partial is None or self.is_dense is None:
            # Host-side facts the launcher needs on every call, read once here (each read syncs
            # a GPU) and stored as plain attributes, so torch.compile traces no tensor reads.
            full, part = self.pattern_block_maps()
            has_tiles = bool((self.pattern_tile_map() >= 0).any())
            object.__setattr__(self, "has_partial", bool(part.any()))
            object.__setattr__(self, "is_dense", bool((full | part).all()) and not has_tiles)
        object.__setattr__(self, "tile_masks_i8", self.tile_masks.to(torch.int8))

    def _check_structure(self) -> None:
        """Types, shapes and devices: no tensor value is read (so no synchronisation)."""
        tensors = {name: getattr(self, name) for name in INDEX_FIELDS}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"BlockLayout.{name} must be a tensor, got {type(t).__name__}")
        if self.head_patterns is not None and not isinstance(self.head_patterns, torch.Tensor):
            raise TypeError(f"BlockLayout.head_patterns must be an integer tensor [H] or None, got {type(self.head_patterns).__name__}")
        for name, t in tensors.items():
            if name == "tile_masks":
                if t.dtype != torch.bool:
                    raise TypeError(f"BlockLayout.tile_masks must be bool, got {t.dtype}")
            elif t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
                raise TypeError(f"BlockLayout.{name} must be an integer tensor, got {t.dtype}")
        if self.head_patterns is not None and (self.head_patterns.dtype.is_floating_point or self.head_patterns.dtype == torch.bool):
            raise TypeError(f"BlockLayout.head_patterns must be an integer tensor [H], got {self.head_patterns.dtype}")
        devices = {t.device for t in tensors.values()} | ({self.head_patterns.device} if self.head_patterns is not None else set())
        if len(devices) != 1:
            raise ValueError(f"BlockLayout tensors are on several devices {sorted(map(str, devices))}: use one device")
        if self.check and next(iter(devices)).type == "meta":
            raise ValueError(
                "BlockLayout tensors are on the meta device, so nothing about the layout can be checked: "
                "build it on cpu or cuda (from real block maps), then move it with .to(device)"
            )
        qblk, kvblk = self.block_size
        q_len, kv_len = self.seq_lengths
        qb = cdiv(q_len, qblk)
        nf, fi = self.full_kv_num_blocks, self.full_kv_indices
        npart, pi, ti = self.kv_num_blocks, self.kv_indices, self.tile_ids
        if nf.dim() != 3 or fi.dim() != 4 or npart.dim() != 3 or pi.dim() != 4:
            raise ValueError(
                "BlockLayout counts must be [B, P, QB] and index lists [B, P, QB, W]; got "
                f"{tuple(nf.shape)}, {tuple(fi.shape)}, {tuple(npart.shape)}, {tuple(pi.shape)}"
            )
        grid = tuple(nf.shape)
        if grid[2] != qb:
            raise ValueError(
                f"BlockLayout has {grid[2]} query blocks, but seq_lengths {self.seq_lengths} with block_size "
                f"{self.block_size} need {qb}"
            )
        for name, t in (("full_kv_indices", fi), ("kv_num_blocks", npart), ("kv_indices", pi), ("tile_ids", ti)):
            if tuple(t.shape[:3]) != grid:
                raise ValueError(f"BlockLayout.{name} has shape {tuple(t.shape)}, inconsistent with counts {grid}")
        if tuple(ti.shape) != tuple(pi.shape):
            raise ValueError(f"BlockLayout.tile_ids {tuple(ti.shape)} must match kv_indices {tuple(pi.shape)}")
        if fi.shape[3] < 1 or pi.shape[3] < 1:
            raise ValueError("BlockLayout index lists must be at least one entry wide (unused entries are 0)")
        tm = self.tile_masks
        if tm.dim() != 3 or tm.shape[0] < 1 or tuple(tm.shape[1:]) != (qblk, kvblk):
            raise ValueError(f"tile_masks must be [T >= 1, {qblk}, {kvblk}], got {tuple(tm.shape)}")
        if self.head_patterns is not None and self.head_patterns.dim() != 1:
            raise ValueError(f"head_patterns must be [H], got {tuple(self.head_patterns.shape)}")

    def _check_values(self) -> None:
        """Every invariant of the module docstring, vectorised (reads the device once)."""
        kb = cdiv(self.seq_lengths[1], self.block_size[1])
        problems = []
        lists = (
            ("full", self.full_kv_num_blocks, self.full_kv_indices),
            ("partial", self.kv_num_blocks, self.kv_indices),
        )
        for kind, num, idx in lists:
            width = idx.shape[-1]
            if bool(((num < 0) | (num > min(width, kb))).any()):
                problems.append(f"{kind} counts outside [0, {min(width, kb)}] (index-list width {width}, {kb} key blocks)")
                continue
            used = torch.arange(width, device=idx.device) < num.unsqueeze(-1)
            if bool((idx[~used] != 0).any()):
                problems.append(f"unused {kind} index entries are not 0")
            if bool(((idx < 0) | (idx >= kb))[used].any()):
                problems.append(f"{kind} key-block indices outside [0, {kb})")
            elif width > 1 and bool(((idx[..., 1:] <= idx[..., :-1]) & used[..., 1:]).any()):
                problems.append(f"{kind} index lists are not strictly ascending (unsorted or duplicate blocks)")
        used_part = torch.arange(self.tile_ids.shape[-1], device=self.tile_ids.device) < self.kv_num_blocks.unsqueeze(-1)
        n_tiles = self.tile_masks.shape[0]
        if bool(((self.tile_ids < NO_TILE) | (self.tile_ids >= n_tiles))[used_part].any()):
            problems.append(f"tile ids outside [{NO_TILE}, {n_tiles})")
        if self.head_patterns is not None:
            p = self.full_kv_num_blocks.shape[1]
            if bool(((self.head_patterns < 0) | (self.head_patterns >= p)).any()):
                problems.append(f"head_patterns values outside [0, {p})")
        if not problems:
            full, part = self.pattern_block_maps()
            if bool((full & part).any()):
                problems.append("a block is listed both full and partial")
            if self.seq_lengths[1] % self.block_size[1] and bool(full[..., -1].any()):
                problems.append(
                    f"the last key block crosses KV_LEN {self.seq_lengths[1]} but is listed as full (it must be "
                    "partial: the kernel's unmasked path does no bounds check)"
                )
        if problems:
            raise ValueError(
                "invalid BlockLayout: " + "; ".join(problems)
                + ". Build layouts with BlockLayout.from_block_maps, from_mask_mod or from_kv_blocks"
            )

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_block_maps(
        cls,
        full: torch.Tensor,
        partial: torch.Tensor | None = None,
        *,
        block_size: int | tuple[int, int],
        seq_lengths: int | tuple[int, int],
        tile_ids: torch.Tensor | None = None,
        tile_masks: torch.Tensor | None = None,
        share_head_patterns: bool = True,
        head_patterns: torch.Tensor | list[int] | None = None,
    ) -> "BlockLayout":
        """Build from boolean block maps.

        Args:
            full: [B, H, QB, KB] bool, blocks computed without element mask.
            partial: [B, H, QB, KB] bool or None, blocks computed with their tile mask.
            tile_ids: [B, H, QB, KB] integer, the tile of each partial block (``NO_TILE`` where
                only the bounds mask applies); None means every partial block is ``NO_TILE``.
            tile_masks: [T, Q_BLOCK, KV_BLOCK] bool, the tiles ``tile_ids`` refers to.
            share_head_patterns: heads with identical maps store them once (``head_patterns``).
            head_patterns: [H] pattern id of each head when the maps are given per pattern
                ([B, P, QB, KB]) rather than per head.

        A full block that crosses the key length is moved to the partial list (bounds only).
        """
        qblk, kvblk = _block_size(block_size)
        q_len, kv_len = _seq_lengths(seq_lengths)
        qb, kb = cdiv(q_len, qblk), cdiv(kv_len, kvblk)
        full = _bool_map(full, "full")
        if full.dim() != 4 or tuple(full.shape[-2:]) != (qb, kb):
            raise ValueError(
                f"block map must be [B, H, {qb}, {kb}] for seq_lengths {(q_len, kv_len)} and "
                f"block_size {(qblk, kvblk)}, got {tuple(full.shape)}"
            )
        partial = torch.zeros_like(full) if partial is None else _bool_map(partial, "partial").expand_as(full)
        if (full & partial).any():
            raise ValueError("a block cannot be both full and partial")
        if tile_ids is None:
            tile_ids = torch.full(full.shape, NO_TILE, dtype=torch.int32, device=full.device)
        tile_ids = tile_ids.to(torch.int32).expand_as(full)
        if tile_masks is None:
            tile_masks = torch.ones(1, qblk, kvblk, dtype=torch.bool, device=full.device)
        if tile_masks.dim() != 3 or tuple(tile_masks.shape[1:]) != (qblk, kvblk):
            raise ValueError(f"tile_masks must be [T, {qblk}, {kvblk}], got {tuple(tile_masks.shape)}")
        if kv_len % kvblk:
            # The last key block crosses KV_LEN: it must be bounds-checked, so never "full".
            tail = full[..., -1].clone()
            full = full.clone()
            full[..., -1] = False
            partial = partial.clone()
            partial[..., -1] |= tail
            tile_ids = tile_ids.clone()
            tile_ids[..., -1] = torch.where(tail, NO_TILE, tile_ids[..., -1])
        tile_ids = torch.where(partial, tile_ids, NO_TILE)
        b, h = full.shape[:2]
        if head_patterns is not None:
            head_patterns = torch.as_tensor(head_patterns, dtype=torch.int32, device=full.device)
        elif share_head_patterns and h > 1:
            # One stored pattern per distinct (full, partial, tile) map of a head, over all batches.
            keys = torch.cat([full.int(), partial.int(), tile_ids], dim=-1).transpose(0, 1).reshape(h, -1)
            distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
            if distinct.shape[0] < h:
                first = torch.full((distinct.shape[0],), h, dtype=torch.long, device=full.device)
                first.scatter_reduce_(0, inverse, torch.arange(h, device=full.device), "amin")
                full, partial, tile_ids = full[:, first], partial[:, first], tile_ids[:, first]
                head_patterns = inverse.to(torch.int32)
        idx_dtype = index_dtype(kb)
        full_num, full_idx = _pack_rows(full, idx_dtype)
        part_num, part_idx = _pack_rows(partial, idx_dtype)
        part_tiles = torch.gather(tile_ids, -1, part_idx.long())
        part_tiles = torch.where(
            torch.arange(part_idx.shape[-1], device=full.device) < part_num.unsqueeze(-1), part_tiles, NO_TILE
        )
        return cls(
            kv_num_blocks=part_num.contiguous(),
            kv_indices=part_idx.contiguous(),
            full_kv_num_blocks=full_num.contiguous(),
            full_kv_indices=full_idx.contiguous(),
            tile_ids=part_tiles.to(index_dtype(tile_masks.shape[0] + 1)).contiguous(),
            tile_masks=tile_masks.bool().contiguous(),
            block_size=(qblk, kvblk),
            seq_lengths=(q_len, kv_len),
            head_patterns=head_patterns,
        )

    @classmethod
    def dense(
        cls,
        seq_lengths: int | tuple[int, int],
        block_size: int | tuple[int, int] = 128,
        *,
        device: torch.device | str | None = None,
    ) -> "BlockLayout":
        """Every block computed (B = H = 1, broadcast)."""
        qblk, kvblk = _block_size(block_size)
        q_len, kv_len = _seq_lengths(seq_lengths)
        full = torch.ones(1, 1, cdiv(q_len, qblk), cdiv(kv_len, kvblk), dtype=torch.bool, device=device)
        return cls.from_block_maps(full, block_size=(qblk, kvblk), seq_lengths=(q_len, kv_len))

    @classmethod
    def from_kv_blocks(
        cls,
        kv_num_blocks: torch.Tensor | None = None,
        kv_indices: torch.Tensor | None = None,
        full_kv_num_blocks: torch.Tensor | None = None,
        full_kv_indices: torch.Tensor | None = None,
        *,
        block_size: int | tuple[int, int],
        seq_lengths: int | tuple[int, int],
        tile_ids: torch.Tensor | None = None,
        tile_masks: torch.Tensor | None = None,
        head_patterns: torch.Tensor | None = None,
        check: bool = True,
    ) -> "BlockLayout":
        """Build from per-row block lists, as FlexAttention's ``BlockMask.from_kv_blocks``.

        Args:
            kv_num_blocks, kv_indices: [B, P, QB], [B, P, QB, Wp]: partial blocks (computed with
                their tile, or only the sequence bounds when ``tile_ids`` is None); may be None.
            full_kv_num_blocks, full_kv_indices: [B, P, QB], [B, P, QB, Wf]: unmasked blocks;
                may be None (at least one of the two lists must be given).
            tile_ids: [B, P, QB, Wp] integer tile of each partial entry; tile_masks [T, Qb, KVb].
            head_patterns: [H] integer pattern of each head, or None (P is the head dimension).
            check: validate the values (one host synchronisation). ``check=False`` reads nothing
                from the device, so it runs inside ``torch.compile(fullgraph=True)`` and CUDA
                graphs; the indices must then be unique and in [0, KB) (``torch.topk`` indices are).

        Entries past each row's count are ignored; the lists are sorted here and a full block that
        crosses KV_LEN is moved to the partial list, both on the device.
        """
        qblk, kvblk = _block_size(block_size)
        q_len, kv_len = _seq_lengths(seq_lengths)
        kb = cdiv(kv_len, kvblk)
        given = [t for t in (kv_num_blocks, full_kv_num_blocks) if t is not None]
        if not given or (kv_num_blocks is None) != (kv_indices is None) or (full_kv_num_blocks is None) != (full_kv_indices is None):
            raise ValueError(
                "from_kv_blocks needs (kv_num_blocks, kv_indices) and/or (full_kv_num_blocks, full_kv_indices), "
                "each count tensor with its index tensor"
            )
        for name, t in (("kv_num_blocks", kv_num_blocks), ("kv_indices", kv_indices),
                        ("full_kv_num_blocks", full_kv_num_blocks), ("full_kv_indices", full_kv_indices)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool):
                raise TypeError(f"{name} must be an integer tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        ref = given[0]
        device, grid = ref.device, tuple(ref.shape)
        idx_dtype = index_dtype(kb)
        if full_kv_num_blocks is None:
            full_num = torch.zeros(grid, dtype=torch.int32, device=device)
            full_idx = torch.zeros(*grid, 1, dtype=idx_dtype, device=device)
        else:
            full_num = full_kv_num_blocks.to(torch.int32)
            (full_idx,) = _sort_used(full_num, full_kv_indices, kb)
        if kv_num_blocks is None:
            part_num = torch.zeros(grid, dtype=torch.int32, device=device)
            part_idx = torch.zeros(*grid, 1, dtype=torch.long, device=device)
            part_tiles = torch.full((*grid, 1), NO_TILE, dtype=torch.long, device=device)
        else:
            part_num = kv_num_blocks.to(torch.int32)
            tiles_in = torch.full_like(kv_indices, NO_TILE) if tile_ids is None else tile_ids.expand_as(kv_indices)
            part_idx, part_tiles = _sort_used(part_num, kv_indices, kb, tiles_in.long())
        has_partial = kv_num_blocks is not None
        if kv_len % kvblk and full_kv_num_blocks is not None:
            # The crossing block is the last used full entry when present: move it to the end of the
            # partial row (still ascending: it is the largest key block), bounds-masked.
            last = full_idx.gather(-1, (full_num.long() - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
            crossing = (full_num > 0) & (last == kb - 1)
            full_num = full_num - crossing.int()
            full_idx = torch.where(torch.arange(full_idx.shape[-1], device=device) < full_num.unsqueeze(-1), full_idx, 0)
            pad = torch.zeros(*grid, 1, dtype=part_idx.dtype, device=device)
            part_idx = torch.cat([part_idx, pad], -1)
            part_tiles = torch.cat([part_tiles, pad - 1], -1)
            at_end = torch.arange(part_idx.shape[-1], device=device) == part_num.long().unsqueeze(-1)
            part_idx = torch.where(at_end & crossing.unsqueeze(-1), kb - 1, part_idx)
            part_num = part_num + crossing.int()
            has_partial = True
        if tile_masks is None:
            tile_masks = torch.ones(1, qblk, kvblk, dtype=torch.bool, device=device)
        return cls(
            kv_num_blocks=part_num.contiguous(),
            kv_indices=part_idx.to(idx_dtype).contiguous(),
            full_kv_num_blocks=full_num.contiguous(),
            full_kv_indices=full_idx.to(idx_dtype).contiguous(),
            tile_ids=part_tiles.to(index_dtype(tile_masks.shape[0] + 1)).contiguous(),
            tile_masks=tile_masks.bool().contiguous(),
            block_size=(qblk, kvblk),
            seq_lengths=(q_len, kv_len),
            head_patterns=head_patterns,
            has_partial=has_partial if not check else None,
            is_dense=False if not check else None,
            check=check,
        )

    @classmethod
    def from_mask_mod(
        cls,
        mask_mod: MaskMod,
        B: int | None,
        H: int | None,
        q_len: int,
        kv_len: int,
        *,
        block_size: int | tuple[int, int] = 128,
        device: torch.device | str | None = None,
        rows_per_chunk: int = 8,
    ) -> "BlockLayout":
        """Evaluate a FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool`` once.

        ``mask_mod`` receives broadcastable index tensors ([B,1,1,1], [1,H,1,1], [1,1,M,1],
        [1,1,1,N]) and must return a bool tensor broadcastable to [B, H, M, N], as FlexAttention
        mask_mods written with tensor operations do. ``B`` / ``H`` None means the mask does not
        depend on them (stored with size 1, broadcast). Indices never reach Q_LEN / KV_LEN (a
        mask_mod may index a Q_LEN x KV_LEN tensor). Work is chunked over query blocks, so no
        Q_LEN x KV_LEN tensor is materialised; tiles are deduplicated with ``torch.unique``.
        """
        qblk, kvblk = _block_size(block_size)
        q_len, kv_len = _seq_lengths((q_len, kv_len))
        if not callable(mask_mod):
            raise TypeError(f"mask_mod must be a callable mask_mod(b, h, q_idx, kv_idx), got {type(mask_mod).__name__}")
        for name, n in (("B", B), ("H", H)):
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ValueError(f"{name} must be a positive int or None (the mask does not depend on it), got {n!r}")
        qb, kb = cdiv(q_len, qblk), cdiv(kv_len, kvblk)
        nb, nh = B or 1, H or 1
        dev = torch.device(device) if device is not None else torch.device("cpu")
        b_idx = torch.arange(nb, device=dev).view(nb, 1, 1, 1)
        h_idx = torch.arange(nh, device=dev).view(1, nh, 1, 1)
        kv_pad = kb * kvblk
        kv_all = torch.arange(kv_pad, device=dev).view(1, 1, 1, kv_pad)
        kv_idx = kv_all.clamp(max=kv_len - 1)  # padded columns see the last key, then are masked
        full = torch.zeros(nb, nh, qb, kb, dtype=torch.bool, device=dev)
        partial = torch.zeros_like(full)
        tile_ids = torch.full(full.shape, NO_TILE, dtype=torch.int32, device=dev)
        chunk_tiles: list[torch.Tensor] = []  # distinct tiles of each chunk, in chunk order
        chunk_ids: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        for r0 in range(0, qb, rows_per_chunk):
            r1 = min(qb, r0 + rows_per_chunk)
            q_all = torch.arange(r0 * qblk, r1 * qblk, device=dev).view(1, 1, -1, 1)
            m = mask_mod(b_idx, h_idx, q_all.clamp(max=q_len - 1), kv_idx)
            m = torch.as_tensor(m, device=dev).bool().expand(nb, nh, (r1 - r0) * qblk, kv_pad)
            in_bounds = (q_all < q_len) & (kv_all < kv_len)
            m = m & in_bounds
            # [nb, nh, rows, kb, qblk, kvblk]
            t = m.reshape(nb, nh, r1 - r0, qblk, kb, kvblk).permute(0, 1, 2, 4, 3, 5)
            valid = in_bounds.expand(1, 1, -1, -1).reshape(r1 - r0, qblk, kb, kvblk).permute(0, 2, 1, 3)
            any_ = t.any(dim=(-1, -2))
            all_ = (t | ~valid).all(dim=(-1, -2))
            full[:, :, r0:r1] = any_ & all_
            part = any_ & ~all_
            partial[:, :, r0:r1] = part
            if bool(part.any()):
                distinct, inverse = torch.unique(t[part].reshape(-1, qblk * kvblk), dim=0, return_inverse=True)
                chunk_tiles.append(distinct)
                chunk_ids.append((r0, r1, part, inverse))
        tile_masks = None
        if chunk_tiles:
            # Tiles of all chunks, deduplicated once more across chunks.
            tiles, remap = torch.unique(torch.cat(chunk_tiles), dim=0, return_inverse=True)
            offset = 0
            for (r0, r1, part, inverse), distinct in zip(chunk_ids, chunk_tiles):
                ids = tile_ids[:, :, r0:r1]
                ids[part] = remap[offset + inverse].to(torch.int32)
                offset += distinct.shape[0]
            tile_masks = tiles.view(-1, qblk, kvblk)
        return cls.from_block_maps(
            full,
            partial,
            block_size=(qblk, kvblk),
            seq_lengths=(q_len, kv_len),
            tile_ids=tile_ids,
            tile_masks=tile_masks,
        )

    # ------------------------------------------------------------------ views
    @property
    def num_patterns(self) -> int:
        """P: the stored patterns (the head dimension when ``head_patterns`` is None)."""
        return self.full_kv_num_blocks.shape[1]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, QB, KB) of the block grid (B, H may be 1 = broadcast)."""
        b, p, qb = self.full_kv_num_blocks.shape
        h = p if self.head_patterns is None else self.head_patterns.shape[0]
        return b, h, qb, cdiv(self.seq_lengths[1], self.block_size[1])

    @property
    def device(self) -> torch.device:
        return self.full_kv_indices.device

    def to(self, device: torch.device | str) -> "BlockLayout":
        """The same layout on ``device`` (its facts carried over: nothing is re-read)."""
        moved = {name: getattr(self, name).to(device) for name in INDEX_FIELDS}
        patterns = None if self.head_patterns is None else self.head_patterns.to(device)
        return replace(self, **moved, head_patterns=patterns, check=False)

    def with_head_patterns(self, head_patterns: torch.Tensor | list[int]) -> "BlockLayout":
        """A layout over the same stored patterns with another head table ([H] pattern ids):
        no pattern is copied, so many layers and steps can share one bank of patterns."""
        table = torch.as_tensor(head_patterns, dtype=torch.int32)
        if table.dim() != 1 or bool(((table < 0) | (table >= self.num_patterns)).any()):
            raise ValueError(f"head_patterns must be [H] pattern ids in [0, {self.num_patterns}), got {table.tolist()}")
        view = replace(self, head_patterns=table.to(self.device), check=False)
        object.__setattr__(view, "tile_masks_i8", self.tile_masks_i8)  # shared, not converted again
        return view

    def merge_query_blocks(self, factor: int = 2, *, check: bool = False) -> "BlockLayout":
        """The same attention with ``factor`` x taller query blocks: each run of ``factor``
        consecutive query-block rows (its *parts*, top first) becomes one row of Q_BLOCK * factor
        query tokens, so a (64, 64) layout runs as (128, 64) and each K/V tile loaded serves twice
        the query rows (issue 19: 64-row programs reach less of the dense loop's throughput).

        Shapes: lists [B, P, QB, W] and tiles [T, Q_BLOCK, KV_BLOCK] become lists
        [B, P, ceil(QB / factor), W'] and tiles [T', Q_BLOCK * factor, KV_BLOCK]; ``head_patterns``
        and broadcast B / P dims are kept (the merge is per stored pattern).

        A merged block is full where every part is full (or partial masked only by the bounds),
        absent where no part lists it, partial otherwise, with the tile stacking its parts' masks
        top to bottom: a full part all True, a part that does not list the block all False, a
        partial part its tile. The merged key-block list of a row is the union of its parts' lists,
        so the kernel computes the union's blocks whole (the masked pairs are the merge's waste).

        No host synchronisation (it runs on the device, and on the meta device) when ``check`` is
        False and the table of every combination of part states, (T + 2) ** factor tiles, has at
        most ``MERGE_ALL_COMBINATIONS`` (T = 1 for layouts without tiles: 9 tiles for factor 2).
        Otherwise the table keeps only the combinations used (boolean indexing and ``torch.unique``:
        a few host synchronisations, once, at build time). ``check=True`` validates the result and
        reads its facts (has_partial, is_dense) from the device; with ``check=False`` they are
        stated conservatively (has_partial True, is_dense False).
        """
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise ValueError(f"factor must be a positive int (query-block rows merged into one), got {factor!r}")
        if factor == 1:
            return self
        qblk, kvblk = self.block_size
        if qblk * factor > MAX_BLOCK_SIZE:
            raise ValueError(
                f"merging {factor} query blocks of {qblk} tokens makes {qblk * factor}-token blocks, past "
                f"{MAX_BLOCK_SIZE}: pass a smaller factor (the kernel serves Q_BLOCK 64 or 128)"
            )
        b, p, qb = self.full_kv_num_blocks.shape
        kb = cdiv(self.seq_lengths[1], kvblk)
        rows = cdiv(qb, factor)
        device = self.device
        # Invariant: the merged layout computes exactly this layout's (query, key) pairs: each merged
        # block's tile is its parts' element masks stacked, and a block no part lists stays unlisted.
        full, part = self.pattern_block_maps()
        tiles = self.pattern_tile_map().long()
        # Part state of each block: _EMPTY, _ONES (full, or partial with NO_TILE: both compute every
        # pair inside the bounds; the kernel bounds-checks every partial block) or tile t as t + 2.
        state = torch.where(part, torch.where(tiles >= 0, tiles + 2, _ONES), torch.where(full, _ONES, _EMPTY))
        # Rows past the last query block lie past Q_LEN: the kernel never stores them, so they take
        # any state; _ONES keeps a full top part full. They never make a block listed (`real`).
        state = torch.nn.functional.pad(state, (0, 0, 0, rows * factor - qb), value=_ONES)
        parts = state.view(b, p, rows, factor, kb).movedim(3, -1)  # [B, P, rows, KB, factor]
        real = (torch.arange(rows * factor, device=device) < qb).view(rows, 1, factor)
        merged_full = (parts == _ONES).all(-1)
        merged_part = ((parts != _EMPTY) & real).any(-1) & ~merged_full
        n_states = self.tile_masks.shape[0] + 2
        if n_states**factor <= MERGE_ALL_COMBINATIONS:
            # Tile c is the combination whose base-n_states digits are the part states, top first.
            weights = n_states ** torch.arange(factor - 1, -1, -1, device=device)
            combos = torch.arange(n_states**factor, device=device)[:, None] // weights % n_states
            merged_tiles = (parts * weights).sum(-1)
        else:
            combos, inverse = torch.unique(parts[merged_part], dim=0, return_inverse=True)  # syncs
            merged_tiles = torch.full(merged_part.shape, NO_TILE, dtype=torch.long, device=device)
            merged_tiles[merged_part] = inverse
        halves = torch.cat([torch.zeros_like(self.tile_masks[:1]), torch.ones_like(self.tile_masks[:1]), self.tile_masks])
        # [C, factor, Q_BLOCK, KV_BLOCK] -> [C, factor * Q_BLOCK, KV_BLOCK]: part i fills rows i * Q_BLOCK ...
        tile_masks = halves[combos].reshape(-1, qblk * factor, kvblk) if combos.shape[0] else None
        # A merged row's lists are no longer than its parts' lists together: their widths need no read.
        wf, wp = self.full_kv_indices.shape[-1], self.kv_indices.shape[-1]
        idx_dtype = index_dtype(kb)
        full_num, full_idx = _pack_rows(merged_full, idx_dtype, wf + wp)
        part_num, part_idx = _pack_rows(merged_part, idx_dtype, factor * (wf + wp))
        return BlockLayout.from_kv_blocks(
            part_num, part_idx, full_num, full_idx,
            block_size=(qblk * factor, kvblk),
            seq_lengths=self.seq_lengths,
            tile_ids=merged_tiles.gather(-1, part_idx.long()),
            tile_masks=tile_masks,
            head_patterns=self.head_patterns,
            check=check,
        )

    def nbytes(self) -> int:
        """Bytes of the layout's tensors (index lists, counts, tiles, head table)."""
        tensors = [getattr(self, name) for name in INDEX_FIELDS] + [self.tile_masks_i8]
        if self.head_patterns is not None:
            tensors.append(self.head_patterns)
        return sum(t.numel() * t.element_size() for t in tensors)

    def storages(self) -> dict[int, int]:
        """{storage pointer: bytes} of the layout's tensors, for counting shared storage once."""
        tensors = [getattr(self, name) for name in INDEX_FIELDS] + [self.tile_masks_i8]
        if self.head_patterns is not None:
            tensors.append(self.head_patterns)
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}

    def _scatter(self, num: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, fill) -> torch.Tensor:
        """Scatter per-entry ``values`` [..., W] of index lists into a [..., KB] block map."""
        kb = cdiv(self.seq_lengths[1], self.block_size[1])
        used = torch.arange(idx.shape[-1], device=idx.device) < num.unsqueeze(-1)
        target = torch.where(used, idx.long(), kb)  # unused entries land in a scratch column
        out = torch.full((*idx.shape[:-1], kb + 1), fill, dtype=values.dtype, device=idx.device)
        return out.scatter_(-1, target, values.expand_as(target))[..., :kb]

    def _by_head(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.head_patterns is None else t[:, self.head_patterns.long()]

    def pattern_block_maps(self, qb_start: int = 0, qb_end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(full, partial): [B, P, rows, KB] bool maps of the stored patterns' query blocks."""
        rows = slice(qb_start, qb_end)
        true = torch.ones((), dtype=torch.bool, device=self.device)
        full = self._scatter(self.full_kv_num_blocks[:, :, rows], self.full_kv_indices[:, :, rows], true, False)
        part = self._scatter(self.kv_num_blocks[:, :, rows], self.kv_indices[:, :, rows], true, False)
        return full, part

    def block_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(full, partial): [B, H, QB, KB] bool maps of the computed blocks."""
        return tuple(self._by_head(m) for m in self.pattern_block_maps())  # type: ignore[return-value]

    def pattern_tile_map(self, qb_start: int = 0, qb_end: int | None = None) -> torch.Tensor:
        """[B, P, rows, KB] int32: tile id of each partial block of the stored patterns, NO_TILE elsewhere."""
        rows = slice(qb_start, qb_end)
        return self._scatter(self.kv_num_blocks[:, :, rows], self.kv_indices[:, :, rows],
                             self.tile_ids[:, :, rows].to(torch.int32), NO_TILE)

    def tile_map(self, qb_start: int = 0, qb_end: int | None = None) -> torch.Tensor:
        """[B, H, rows, KB] int32: tile id of each partial block, NO_TILE elsewhere."""
        return self._by_head(self.pattern_tile_map(qb_start, qb_end))

    def density(self) -> float:
        """Fraction of the (B, H, QB, KB) block grid that is computed (full or partial)."""
        full, part = self.block_maps()
        return float((full | part).float().mean())

    def dense_rows(self, qb_start: int, qb_end: int) -> torch.Tensor:
        """[B, H, rows, KV_LEN] bool element mask of query blocks [qb_start, qb_end).

        ``rows`` is clipped at Q_LEN. Lets the PyTorch path work one strip of query blocks at
        a time without ever holding a Q_LEN x KV_LEN mask.
        """
        qblk, kvblk = self.block_size
        q_len, kv_len = self.seq_lengths
        full, part = (self._by_head(m) for m in self.pattern_block_maps(qb_start, qb_end))
        tiles = self.tile_map(qb_start, qb_end)
        b, h, nq, kb = full.shape
        elem = torch.where(
            (tiles >= 0)[..., None, None],
            self.tile_masks[tiles.clamp_min(0).long()],
            torch.ones((), dtype=torch.bool, device=self.device),
        )  # [b, h, nq, kb, qblk, kvblk]
        elem = (elem & part[..., None, None]) | full[..., None, None]
        dense = elem.permute(0, 1, 2, 4, 3, 5).reshape(b, h, nq * qblk, kb * kvblk)
        rows = min(nq * qblk, q_len - qb_start * qblk)
        return dense[:, :, :rows, :kv_len]

    def to_element_mask(self) -> torch.Tensor:
        """[B, H, Q_LEN, KV_LEN] bool element mask: True where a score is computed (for tests and
        small shapes only). The block map is ``block_maps()``."""
        return self.dense_rows(0, self.shape[2]).contiguous()

    # The old name, kept: it returns the ELEMENT mask [B, H, Q_LEN, KV_LEN], whereas FlexAttention's
    # BlockMask.to_dense() returns the block map [B, H, QB, KB] (here: block_maps()).
    to_dense = to_element_mask

    def to_flex_block_mask(self):
        """The same layout as a FlexAttention ``BlockMask`` (int32 lists of width KB, one per head).

        Its mask_mod is the layout's exact element mask (blocks not listed are False, full blocks
        True, partial blocks their tile), so eager ``flex_attention``, which evaluates only the
        mask_mod, and compiled FlexAttention, which also skips unlisted blocks, agree.
        """
        from torch.nn.attention.flex_attention import BlockMask

        qblk, kvblk = self.block_size
        b, h, _, kb = self.shape
        full, part = self.block_maps()
        ones = self.tile_masks.shape[0]  # index of an all-True tile appended below
        tile_map = self.tile_map()
        tile_map = torch.where(part, torch.where(tile_map < 0, ones, tile_map), ones + 1)
        tile_map = torch.where(full, ones, tile_map)
        tiles = torch.cat([self.tile_masks.bool(), torch.ones_like(self.tile_masks[:1], dtype=torch.bool),
                           torch.zeros_like(self.tile_masks[:1], dtype=torch.bool)])
        bcast_b, bcast_h = b == 1, h == 1

        def mask_mod(bi, hi, q_idx, kv_idx):
            bi = bi * 0 if bcast_b else bi
            hi = hi * 0 if bcast_h else hi
            t = tile_map[bi, hi, q_idx // qblk, kv_idx // kvblk]
            return tiles[t, q_idx % qblk, kv_idx % kvblk]

        def lists(m):
            count = m.sum(-1, dtype=torch.int32)
            order = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
            return count, torch.where(torch.arange(kb, device=m.device) < count.unsqueeze(-1), order, 0)

        part_num, part_idx = lists(part)
        full_num, full_idx = lists(full)
        return BlockMask.from_kv_blocks(
            part_num, part_idx, full_num, full_idx,
            BLOCK_SIZE=(qblk, kvblk),
            mask_mod=mask_mod,
            seq_lengths=self.seq_lengths,
        )
