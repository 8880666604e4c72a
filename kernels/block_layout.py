"""The one sparse-layout type: a block layout with FlexAttention ``BlockMask``'s fields.

A ``BlockLayout`` says, for every (batch, head, query block), which key blocks are computed:

- ``full_kv_num_blocks`` / ``full_kv_indices``: blocks computed without any element mask.
- ``kv_num_blocks`` / ``kv_indices``: *partial* blocks, computed with an element mask.

This is exactly FlexAttention's convention, so any layout converts to a
``torch.nn.attention.flex_attention.BlockMask`` (``to_flex_block_mask``) and can run through
``flex_attention`` as a reference or a benchmark peer.

Element masks of partial blocks are not Python callables (a Triton kernel cannot run them) but a
small table of distinct boolean tiles: ``tile_masks[t]`` is a [Q_BLOCK, KV_BLOCK] mask and
``tile_ids[b, h, qb, j]`` names the tile of the j-th partial block (``-1``: no element mask but the
sequence bounds). Patterns repeat, so the table stays small (a sliding window has a handful).

Invariants every builder keeps (the kernels rely on them):

- a block in the *full* list lies inside ``seq_lengths`` on the key side: the key block that
  crosses ``KV_LEN`` is always listed as partial, so full blocks never need a bounds check;
- indices are unique per row, each list sorted ascending, unused tail entries are 0;
- B and H may be 1 and then broadcast over the attention's batch and heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

NO_TILE = -1  # tile id of a partial block masked only by the sequence bounds


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pack_rows(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``flags`` [..., N] bool: (count [...] int32, sorted indices [..., N] int32, 0-padded)."""
    n = flags.shape[-1]
    count = flags.sum(-1, dtype=torch.int32)
    # Stable sort of "not flag" puts the kept indices first, in ascending order.
    order = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    keep = torch.arange(n, device=flags.device) < count.unsqueeze(-1)
    return count, torch.where(keep, order, torch.zeros_like(order))


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Block-sparse attention layout (FlexAttention ``BlockMask`` fields plus a tile table).

    Shapes (QB = ceil(Q_LEN / Q_BLOCK), KB = ceil(KV_LEN / KV_BLOCK); B and H may be 1):
        kv_num_blocks:      [B, H, QB] int32, partial blocks per query block
        kv_indices:         [B, H, QB, KB] int32
        full_kv_num_blocks: [B, H, QB] int32, unmasked blocks per query block
        full_kv_indices:    [B, H, QB, KB] int32
        tile_ids:           [B, H, QB, KB] int32, tile of each partial entry (NO_TILE: bounds only)
        tile_masks:         [T, Q_BLOCK, KV_BLOCK] bool, T >= 1
        block_size:         (Q_BLOCK, KV_BLOCK)
        seq_lengths:        (Q_LEN, KV_LEN)
    """

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor
    tile_ids: torch.Tensor
    tile_masks: torch.Tensor
    block_size: tuple[int, int]
    seq_lengths: tuple[int, int]
    # Derived in __post_init__: any partial block; every block computed with no tile mask;
    # tile_masks as int8 (the form the kernel loads).
    has_partial: bool = field(init=False, repr=False)
    is_dense: bool = field(init=False, repr=False)
    tile_masks_i8: torch.Tensor = field(init=False, repr=False)

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
    ) -> "BlockLayout":
        """Build from boolean block maps.

        Args:
            full: [B, H, QB, KB] bool, blocks computed without element mask.
            partial: [B, H, QB, KB] bool or None, blocks computed with their tile mask.
            tile_ids: [B, H, QB, KB] int32, the tile of each partial block (``NO_TILE`` where
                only the bounds mask applies); None means every partial block is ``NO_TILE``.
            tile_masks: [T, Q_BLOCK, KV_BLOCK] bool, the tiles ``tile_ids`` refers to.

        A full block that crosses the key length is moved to the partial list (bounds only).
        """
        qblk, kvblk = (block_size, block_size) if isinstance(block_size, int) else block_size
        q_len, kv_len = (seq_lengths, seq_lengths) if isinstance(seq_lengths, int) else seq_lengths
        qb, kb = _cdiv(q_len, qblk), _cdiv(kv_len, kvblk)
        if full.dim() != 4 or tuple(full.shape[-2:]) != (qb, kb):
            raise ValueError(
                f"block map must be [B, H, {qb}, {kb}] for seq_lengths {(q_len, kv_len)} and "
                f"block_size {(qblk, kvblk)}, got {tuple(full.shape)}"
            )
        full = full.bool()
        partial = torch.zeros_like(full) if partial is None else partial.bool().expand_as(full)
        if (full & partial).any():
            raise ValueError("a block cannot be both full and partial")
        if tile_ids is None:
            tile_ids = torch.full(full.shape, NO_TILE, dtype=torch.int32, device=full.device)
        tile_ids = tile_ids.to(torch.int32).expand_as(full)
        if tile_masks is None:
            tile_masks = torch.ones(1, qblk, kvblk, dtype=torch.bool, device=full.device)
        if tuple(tile_masks.shape[1:]) != (qblk, kvblk):
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
        full_num, full_idx = _pack_rows(full)
        part_num, part_idx = _pack_rows(partial)
        part_tiles = torch.gather(tile_ids, -1, part_idx.long())
        part_tiles = torch.where(
            torch.arange(kb, device=full.device) < part_num.unsqueeze(-1), part_tiles, NO_TILE
        )
        return cls(
            kv_num_blocks=part_num.contiguous(),
            kv_indices=part_idx.contiguous(),
            full_kv_num_blocks=full_num.contiguous(),
            full_kv_indices=full_idx.contiguous(),
            tile_ids=part_tiles.to(torch.int32).contiguous(),
            tile_masks=tile_masks.bool().contiguous(),
            block_size=(qblk, kvblk),
            seq_lengths=(q_len, kv_len),
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
        qblk, kvblk = (block_size, block_size) if isinstance(block_size, int) else block_size
        q_len, kv_len = (seq_lengths, seq_lengths) if isinstance(seq_lengths, int) else seq_lengths
        full = torch.ones(1, 1, _cdiv(q_len, qblk), _cdiv(kv_len, kvblk), dtype=torch.bool, device=device)
        return cls.from_block_maps(full, block_size=(qblk, kvblk), seq_lengths=(q_len, kv_len))

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
        depend on them (stored with size 1, broadcast). Work is chunked over query blocks, so no
        Q_LEN x KV_LEN tensor is materialised.
        """
        qblk, kvblk = (block_size, block_size) if isinstance(block_size, int) else block_size
        qb, kb = _cdiv(q_len, qblk), _cdiv(kv_len, kvblk)
        nb, nh = B or 1, H or 1
        dev = torch.device(device) if device is not None else torch.device("cpu")
        b_idx = torch.arange(nb, device=dev).view(nb, 1, 1, 1)
        h_idx = torch.arange(nh, device=dev).view(1, nh, 1, 1)
        kv_pad = kb * kvblk
        kv_idx = torch.arange(kv_pad, device=dev).view(1, 1, 1, kv_pad)
        full = torch.zeros(nb, nh, qb, kb, dtype=torch.bool, device=dev)
        partial = torch.zeros_like(full)
        tile_ids = torch.full(full.shape, NO_TILE, dtype=torch.int32, device=dev)
        tiles: dict[bytes, int] = {}
        tile_list: list[torch.Tensor] = []
        for r0 in range(0, qb, rows_per_chunk):
            r1 = min(qb, r0 + rows_per_chunk)
            q_idx = torch.arange(r0 * qblk, r1 * qblk, device=dev).view(1, 1, -1, 1)
            m = mask_mod(b_idx, h_idx, q_idx, kv_idx)
            m = torch.as_tensor(m, device=dev).bool().expand(nb, nh, (r1 - r0) * qblk, kv_pad)
            in_bounds = (q_idx < q_len) & (kv_idx < kv_len)
            m = m & in_bounds
            # [nb, nh, rows, qblk, kb, kvblk]
            t = m.reshape(nb, nh, r1 - r0, qblk, kb, kvblk).permute(0, 1, 2, 4, 3, 5)
            valid = in_bounds.expand(1, 1, -1, -1).reshape(r1 - r0, qblk, kb, kvblk).permute(0, 2, 1, 3)
            any_ = t.any(dim=(-1, -2))
            all_ = (t | ~valid).all(dim=(-1, -2))
            full[:, :, r0:r1] = any_ & all_
            part = any_ & ~all_
            partial[:, :, r0:r1] = part
            for b, h, r, c in part.nonzero().tolist():
                tile = t[b, h, r, c]
                key = tile.cpu().numpy().tobytes()
                tid = tiles.get(key)
                if tid is None:
                    tid = tiles[key] = len(tile_list)
                    tile_list.append(tile.clone())
                tile_ids[b, h, r0 + r, c] = tid
        tile_masks = torch.stack(tile_list) if tile_list else None
        # A block that is full except for the key bounds needs no tile: bounds are always applied.
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
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, QB, KB) of the block grid (B, H may be 1 = broadcast)."""
        return tuple(self.full_kv_indices.shape)  # type: ignore[return-value]

    def __post_init__(self) -> None:
        # Host-side facts the launcher needs on every call, read once here (each read syncs a GPU)
        # and stored as plain attributes, so torch.compile traces no tensor-to-Python conversion.
        full, part = self.block_maps()
        has_tiles = bool((self.tile_map() >= 0).any())
        object.__setattr__(self, "has_partial", bool(part.any()))
        object.__setattr__(self, "is_dense", bool((full | part).all()) and not has_tiles)
        object.__setattr__(self, "tile_masks_i8", self.tile_masks.to(torch.int8))

    @property
    def device(self) -> torch.device:
        return self.full_kv_indices.device

    def to(self, device: torch.device | str) -> "BlockLayout":
        fields = {
            name: getattr(self, name).to(device)
            for name in (
                "kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                "tile_ids", "tile_masks",
            )
        }
        return BlockLayout(**fields, block_size=self.block_size, seq_lengths=self.seq_lengths)

    def _scatter_rows(self, num: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, fill) -> torch.Tensor:
        """Scatter per-entry ``values`` [B,H,QB,KB] of index lists into a [B,H,QB,KB] block map.

        Unused tail entries are sent to a scratch column that is cut off, so they never collide
        with a real entry.
        """
        kb = idx.shape[-1]
        used = torch.arange(kb, device=idx.device) < num.unsqueeze(-1)
        target = torch.where(used, idx.long(), kb)
        out = torch.full((*idx.shape[:-1], kb + 1), fill, dtype=values.dtype, device=idx.device)
        return out.scatter_(-1, target, values)[..., :kb]

    def block_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(full, partial): [B, H, QB, KB] bool maps of the computed blocks."""
        true = torch.ones(self.kv_indices.shape, dtype=torch.bool, device=self.device)
        full = self._scatter_rows(self.full_kv_num_blocks, self.full_kv_indices, true, False)
        part = self._scatter_rows(self.kv_num_blocks, self.kv_indices, true, False)
        return full, part

    def tile_map(self) -> torch.Tensor:
        """[B, H, QB, KB] int32: tile id of each partial block, NO_TILE elsewhere."""
        return self._scatter_rows(self.kv_num_blocks, self.kv_indices, self.tile_ids, NO_TILE)

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
        full, part = (m[:, :, qb_start:qb_end] for m in self.block_maps())
        tiles = self.tile_map()[:, :, qb_start:qb_end]
        b, h, nq, kb = full.shape
        elem = torch.where(
            (tiles >= 0)[..., None, None],
            self.tile_masks.bool()[tiles.clamp_min(0).long()],
            torch.ones((), dtype=torch.bool, device=self.device),
        )  # [b, h, nq, kb, qblk, kvblk]
        elem = (elem & part[..., None, None]) | full[..., None, None]
        dense = elem.permute(0, 1, 2, 4, 3, 5).reshape(b, h, nq * qblk, kb * kvblk)
        rows = min(nq * qblk, q_len - qb_start * qblk)
        return dense[:, :, :rows, :kv_len]

    def to_dense(self) -> torch.Tensor:
        """[B, H, Q_LEN, KV_LEN] bool element mask (for tests and small shapes only)."""
        return self.dense_rows(0, self.shape[2]).contiguous()

    def to_flex_block_mask(self):
        """The same layout as a FlexAttention ``BlockMask``.

        Its mask_mod is the layout's exact element mask (blocks not listed are False, full blocks
        True, partial blocks their tile), so eager ``flex_attention``, which evaluates only the
        mask_mod, and compiled FlexAttention, which also skips unlisted blocks, agree.
        """
        from torch.nn.attention.flex_attention import BlockMask

        qblk, kvblk = self.block_size
        b, h = self.shape[:2]
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

        return BlockMask.from_kv_blocks(
            self.kv_num_blocks,
            self.kv_indices,
            self.full_kv_num_blocks,
            self.full_kv_indices,
            BLOCK_SIZE=(qblk, kvblk),
            mask_mod=mask_mod,
            seq_lengths=self.seq_lengths,
        )
