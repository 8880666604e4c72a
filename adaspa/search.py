"""AdaSpa's online search: block mass -> per-row top-k -> head tiers -> block selection -> layout.

Everything here runs on the device with no host synchronisation (no ``.item()``, ``.tolist()``
or ``bool(tensor)``): the sizes that shape the computation (block counts, k per tier, list widths)
are Python ints fixed by the config and the token layout, and every data-dependent choice (which
blocks, which head in which tier) stays a tensor. So a search or a sparse step can run inside
``torch.compile(fullgraph=True)`` or a CUDA graph.

Choices where the paper is silent (each one tested):

- **Blocks** are square, ``block_size`` tokens, aligned at token 0 of the joint sequence (the
  mass kernel's grid): QB = KB = ceil(S / block_size).
- **Text** (the "text sink"): every key block holding a text token is kept in every row, *on top*
  of the top-k budget (it is not chosen by top-k, and k counts video blocks only); query rows of
  text are computed densely by the caller, so query blocks made only of text rows select nothing.
  A block mixing text and video rows is an ordinary row of the selection. Conditioning tokens off
  the video grid (``TokenLayout.prefix_len`` / ``suffix_len``) are treated exactly as text.
- **Top-k per query-block row**: k = ceil((1 - s_h) * KBv) video blocks, at least 1, where KBv is
  the number of key blocks without text and s_h the head's sparsity. The diagonal block is not
  forced: it wins on mass where it matters, and forcing it would spend budget where it does not.
  A block of zero mass (only padded keys, ``kv_lens``, or a softmax that underflows) is never
  kept, so a row keeps fewer than k blocks when fewer have any mass.
- **Recall** of a selection, per head: the fraction of the head's attention mass it keeps, over
  the query rows that are not text-only: sum of the selected blocks' mass / sum of all blocks' mass.
  With an exact LSE every query row's mass sums to 1, so this is the per-row recall averaged over
  rows; with the cached LSE of an earlier step the ratio normalises the rows' drift.
- **Tiers** (head-adaptive hierarchical sparsity): heads are ranked **per layer and per sample**
  (each layer's call is separate, so this needs nothing from other layers and stays sync-free;
  each sample of a batch, e.g. CogVideoX's batched cond / uncond, gets its own ranking) by their
  recall at the base sparsity s. n = number of heads with recall > threshold, **capped at H // 2**
  so the best n and the worst n never overlap. The n best heads get sparsity s + d, the n worst
  s - d, the rest s, with d = min((1 - s) / 2, s): the paper's (1 + s) / 2 and (3s - 1) / 2 when
  s >= 1/3, and for smaller s the same three tiers narrowed so the denser one stays at >= 0 and the
  tier sparsities still average exactly s. Ties in recall rank the lower head index first.
- **Heads split across processes** (Ulysses context parallelism, ``head_shard``): each process
  selects for its own heads, but the tiers rank every head of the layer, as on one GPU: the base
  recalls are all-gathered (B x H floats, on the device) and each process keeps its heads' tiers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.block_layout import BlockLayout
from kernels.helpers import cdiv
from sparse_vdit.protocol import HeadShard
from sparse_vdit.token_layout import TokenLayout

__all__ = [
    "BlockGeometry",
    "Selection",
    "tier_sparsities",
    "keep_count",
    "head_tiers",
    "select_blocks",
    "pack_blocks",
    "unpack_blocks",
    "layout_from_blocks",
]

BITS_PER_BYTE = 8
INT16_MAX = 32767
# Float slack when turning a kept fraction into a block count: (1 - 0.8) * 10 is 2.0000000000000004.
COUNT_EPS = 1e-9


@dataclass(frozen=True)
class BlockGeometry:
    """Where the dense tokens (text, and conditioning tokens off the video grid) sit on the square
    block grid of one attention call: the ``head`` first tokens and the ``tail`` last tokens.

    Attributes:
        seq_len: S, tokens of the joint sequence (queries and keys alike).
        block_size: tokens per block.
        head: tokens [0, head) off the grid (text before the video, a conditioning prefix); 0 = none.
        tail: tokens [S - tail, S) off the grid (text after the video, a conditioning suffix); 0 = none.
    """

    seq_len: int
    block_size: int
    head: int = 0
    tail: int = 0

    @classmethod
    def of(cls, seq_len: int, block_size: int, token_layout: TokenLayout | None = None) -> "BlockGeometry":
        """The geometry of S = ``seq_len`` tokens; dense tokens from ``token_layout`` (None: none)."""
        if token_layout is None:
            return cls(int(seq_len), int(block_size))
        if token_layout.seq_len != seq_len:
            raise ValueError(
                f"the token layout describes {token_layout.seq_len} tokens ({token_layout.describe()}) but q, k, v "
                f"have {seq_len}: pass the layout of this attention call"
            )
        return cls(int(seq_len), int(block_size), token_layout.video_start, token_layout.seq_len - token_layout.video_end)

    @property
    def num_blocks(self) -> int:
        """QB = KB = ceil(S / block_size)."""
        return cdiv(self.seq_len, self.block_size)

    @property
    def dense_spans(self) -> tuple[tuple[int, int], ...]:
        """The (start, stop) token ranges computed densely, empty ones left out."""
        spans = ((0, self.head), (self.seq_len - self.tail, self.seq_len))
        return tuple((a, b) for a, b in spans if b > a)

    @property
    def dense_key_blocks(self) -> tuple[range, ...]:
        """Key blocks holding at least one dense token (kept in every row), one range per span."""
        return tuple(range(a // self.block_size, cdiv(b, self.block_size)) for a, b in self.dense_spans)

    @property
    def dense_query_blocks(self) -> tuple[range, ...]:
        """Query blocks whose rows are all dense (computed densely, outside the selection)."""
        out = []
        for a, b in self.dense_spans:
            first = cdiv(a, self.block_size)
            last = self.num_blocks if b == self.seq_len else b // self.block_size
            out.append(range(first, max(first, last)))
        return tuple(out)

    def forced_keys(self, device=None) -> torch.Tensor:
        """[KB] bool: the dense key blocks."""
        return _blocks_mask(self.dense_key_blocks, self.num_blocks, device)

    def served_rows(self, device=None) -> torch.Tensor:
        """[QB] bool: the query blocks a selection serves (all but the dense-only ones)."""
        return ~_blocks_mask(self.dense_query_blocks, self.num_blocks, device)

    @property
    def num_dense_key_blocks(self) -> int:
        return len(set().union(*self.dense_key_blocks))

    @property
    def selectable(self) -> int:
        """KBv: key blocks top-k chooses among (those without dense tokens)."""
        return self.num_blocks - self.num_dense_key_blocks

    def list_width(self, k_max: int) -> int:
        """Width of a layout's index lists when rows keep at most ``k_max`` top-k blocks plus the dense ones."""
        return min(self.num_blocks, k_max + self.num_dense_key_blocks)


def _blocks_mask(ranges: tuple[range, ...], n: int, device) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    for r in ranges:
        mask[r.start : r.stop] = True
    return mask


@dataclass(frozen=True)
class Selection:
    """The result of one search for one layer.

    Attributes:
        blocks: [B, H, QB, KB] bool, the key blocks each query block computes.
        recall: [B, H] float32, the fraction of each head's attention mass ``blocks`` keeps.
        base_recall: [B, H] float32, the same at the base sparsity (what the tiers rank).
        head_sparsity: [B, H] float32, each head's tier sparsity.
        width: index-list width that holds every row of ``blocks`` (a Python int).
    """

    blocks: torch.Tensor
    recall: torch.Tensor
    base_recall: torch.Tensor
    head_sparsity: torch.Tensor
    width: int


def tier_sparsities(sparsity: float) -> tuple[float, float, float]:
    """(denser, base, sparser) tier sparsities for base sparsity s: (s - d, s, s + d) with
    d = min((1 - s) / 2, s), so they average s and the denser one is >= 0."""
    delta = min((1.0 - sparsity) / 2.0, sparsity)
    return sparsity - delta, sparsity, sparsity + delta


def keep_count(sparsity: float, selectable: int) -> int:
    """Blocks a row keeps at ``sparsity`` among ``selectable``: ceil((1 - s) * n), within [1, n]."""
    if selectable <= 0:
        return 0
    return min(selectable, max(1, math.ceil((1.0 - sparsity) * selectable - COUNT_EPS)))


def head_tiers(base_recall: torch.Tensor, threshold: float) -> torch.Tensor:
    """[..., H] int8 tier of each head: +1 sparser (the n best), -1 denser (the n worst), 0 base.

    n = number of heads with recall > ``threshold``, at most H // 2 (per leading index).
    """
    h = base_recall.shape[-1]
    n = (base_recall > threshold).sum(-1, keepdim=True).clamp(max=h // 2)
    order = torch.sort(base_recall, dim=-1, descending=True, stable=True).indices  # best first
    ranks = torch.arange(h, device=base_recall.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, ranks)
    best, worst = rank < n, rank >= h - n
    return torch.where(best, 1, torch.where(worst, -1, 0)).to(torch.int8)


def _per_tier(tier: torch.Tensor, denser, base, sparser) -> torch.Tensor:
    return torch.where(tier > 0, sparser, torch.where(tier < 0, denser, base))


def select_blocks(
    mass: torch.Tensor,
    geometry: BlockGeometry,
    *,
    sparsity: float,
    recall_threshold: float,
    tiers: bool = True,
    head_shard: HeadShard | None = None,
) -> Selection:
    """Block selection of one layer from its block mass (see the module docstring for the rules).

    Args:
        mass: [B, H, QB, KB] float32 block attention mass (``block_attention_mass``); H = the
            shard's heads when ``head_shard`` is given.
        geometry: the call's block grid and its dense tokens (text, tokens off the grid).
        sparsity: base sparsity s in [0, 1).
        recall_threshold: heads with base recall above it count toward n (tiers).
        tiers: head-adaptive three tiers; False keeps every head at s.
        head_shard: the layer's heads this process computes, when they are split across
            processes: the tiers then rank all of the layer's heads (``head_shard.gather``).
    """
    b, h, qb, kb = mass.shape
    if qb != geometry.num_blocks or kb != geometry.num_blocks:
        raise ValueError(f"mass has {qb} x {kb} blocks, but the geometry needs {geometry.num_blocks} x {geometry.num_blocks}")
    device = mass.device
    forced = geometry.forced_keys(device)  # [KB] dense key blocks (text, tokens off the grid)
    rows = geometry.served_rows(device)  # [QB] rows the selection serves
    rows_f = rows.to(mass.dtype)
    total = (mass.sum(-1) * rows_f).sum(-1).clamp_min(torch.finfo(mass.dtype).tiny)  # [B, H]
    denser, base, sparser = tier_sparsities(sparsity) if tiers else (sparsity, sparsity, sparsity)
    n = geometry.selectable
    k_denser, k_base, k_sparser = (keep_count(s, n) for s in (denser, base, sparser))
    if n == 0:  # every block holds dense tokens: nothing to choose
        blocks = forced.expand(b, h, qb, kb) & rows.view(qb, 1)
        ones = torch.ones(b, h, dtype=torch.float32, device=device)
        return Selection(blocks, ones, ones, torch.full_like(ones, sparsity), geometry.list_width(0))
    has_dense = geometry.num_dense_key_blocks > 0
    text_mass = torch.where(forced, mass, 0.0).sum(-1) if has_dense else mass.new_zeros(mass.shape[:-1])  # [B, H, QB]
    score = mass.masked_fill(forced, float("-inf")) if has_dense else mass
    top_mass, top_idx = score.topk(k_denser, dim=-1)  # [B, H, QB, k_denser], largest first
    kept_at_base = top_mass[..., :k_base].sum(-1) + text_mass
    base_recall = (kept_at_base * rows_f).sum(-1) / total
    if tiers:
        if head_shard is None:
            tier = head_tiers(base_recall, recall_threshold)
        else:
            tier = head_tiers(head_shard.gather(base_recall), recall_threshold)
            tier = tier[..., head_shard.heads.start : head_shard.heads.stop]
        k = _per_tier(tier, k_denser, k_base, k_sparser)
        head_sparsity = _per_tier(tier, denser, base, sparser).to(torch.float32)
    else:
        k = torch.full((b, h), k_base, device=device)
        head_sparsity = torch.full((b, h), sparsity, dtype=torch.float32, device=device)
    keep = (torch.arange(k_denser, device=device) < k.view(b, h, 1, 1)) & (top_mass > 0)
    chosen = torch.zeros(b, h, qb, kb + 1, dtype=torch.bool, device=device)
    chosen.scatter_(-1, torch.where(keep, top_idx, kb), True)  # dropped entries land in column KB
    blocks = (chosen[..., :kb] | forced) & rows.view(qb, 1)
    recall = (torch.where(blocks, mass, 0.0).sum(-1) * rows_f).sum(-1) / total
    return Selection(blocks, recall.float(), base_recall.float(), head_sparsity, geometry.list_width(k_denser))


def pack_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """[..., KB] bool -> [..., ceil(KB / 8)] uint8, block j in bit j % 8 of byte j // 8."""
    pad = (-blocks.shape[-1]) % BITS_PER_BYTE
    bits = torch.nn.functional.pad(blocks.to(torch.uint8), (0, pad)).unflatten(-1, (-1, BITS_PER_BYTE))
    weights = (1 << torch.arange(BITS_PER_BYTE, device=blocks.device)).to(torch.uint8)
    return (bits * weights).sum(-1, dtype=torch.uint8)


def unpack_blocks(packed: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Inverse of ``pack_blocks``: [..., ceil(KB / 8)] uint8 -> [..., KB] bool."""
    shifts = torch.arange(BITS_PER_BYTE, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2)[..., :num_blocks].bool()


def layout_from_blocks(blocks: torch.Tensor, geometry: BlockGeometry, width: int) -> BlockLayout:
    """A ``BlockLayout`` computing ``blocks`` ([B, H, QB, KB] bool, at most ``width`` per row),
    built on the device with no host synchronisation (``BlockLayout.from_kv_blocks(check=False)``).

    The row's kept blocks are found by a top-k over a score that is positive exactly on them and
    larger for smaller block indices, so the first ``count`` entries are the kept blocks in
    ascending order and the rest (ignored by the layout) fill the width.
    """
    kb = blocks.shape[-1]
    counts = blocks.sum(-1, dtype=torch.int32)
    score_dtype = torch.int16 if kb <= INT16_MAX else torch.int32
    score = blocks.to(score_dtype) * (kb - torch.arange(kb, device=blocks.device)).to(score_dtype)
    indices = score.topk(width, dim=-1).indices
    return BlockLayout.from_kv_blocks(
        full_kv_num_blocks=counts,
        full_kv_indices=indices,
        block_size=geometry.block_size,
        seq_lengths=geometry.seq_len,
        check=False,
    )
