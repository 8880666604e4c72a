"""BlockLayout.merge_query_blocks: a (64, KV) layout run as (128, KV) computes exactly the same
(query, key) pairs, and the kernel on it gives the original layout's attention (issue 19 item 1).

Ground truth is independent of the merge: an explicit loop over merged blocks (`expected_merge`),
the original layout's element mask, and the float64 reference under that mask (tolerance as in
tests/test_kernels.py: within 2x PyTorch's own error at the input precision).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import kernels.block_layout as block_layout_mod
from helpers import assert_close_to_reference, diffusers_qkv, fresh_generator, lse_lowp, video_text_mask_mod
from kernels.attention import block_sparse_attention
from kernels.block_layout import NO_TILE, BlockLayout
from kernels.reference import attention_ref, key_padding_ref
from sparse_vdit.token_layout import TokenLayout
from test_block_layout import check_invariants
from test_kernels import DEVICE, random_layout


def cdiv(a, b):
    return -(-a // b)


def expected_merge(layout: BlockLayout, factor: int):
    """(full, partial [B, H, rows, KB] bool, tiles [B, H, rows, KB, factor * Q_BLOCK, KV_BLOCK] bool)
    of the merged layout, block by block: a part that is full (or partial with NO_TILE) is all
    True, a partial part its tile, an absent part all False, a part past the last query block
    counts as full but never makes a block listed; the key block crossing KV_LEN is never full."""
    full, part = layout.block_maps()
    tile_map = layout.tile_map()
    qblk, kvblk = layout.block_size
    b, h, qb, kb = layout.shape
    rows = cdiv(qb, factor)
    crossing = layout.seq_lengths[1] % kvblk != 0
    ones, zeros = torch.ones(qblk, kvblk, dtype=torch.bool), torch.zeros(qblk, kvblk, dtype=torch.bool)
    e_full = torch.zeros(b, h, rows, kb, dtype=torch.bool)
    e_part = torch.zeros_like(e_full)
    e_tiles = torch.zeros(b, h, rows, kb, factor * qblk, kvblk, dtype=torch.bool)
    for bi, hi, r, j in itertools.product(range(b), range(h), range(rows), range(kb)):
        masks, listed, all_ones = [], False, True
        for row in range(r * factor, r * factor + factor):
            if row >= qb:
                masks.append(ones)
                continue
            t = int(tile_map[bi, hi, row, j])
            if full[bi, hi, row, j] or (part[bi, hi, row, j] and t == NO_TILE):
                masks.append(ones)
                listed = True
            elif part[bi, hi, row, j]:
                masks.append(layout.tile_masks[t])
                listed, all_ones = True, False
            else:
                masks.append(zeros)
                all_ones = False
        e_full[bi, hi, r, j] = listed and all_ones and not (crossing and j == kb - 1)
        e_part[bi, hi, r, j] = listed and not e_full[bi, hi, r, j]
        e_tiles[bi, hi, r, j] = torch.cat(masks)
    return e_full, e_part, e_tiles


def merged_block_tiles(merged: BlockLayout) -> torch.Tensor:
    """[B, H, rows, KB, Q_BLOCK, KV_BLOCK] element mask of each block of ``merged`` (all True for
    full and NO_TILE blocks; absent blocks all False)."""
    full, part = merged.block_maps()
    tile_map = merged.tile_map()
    tiles = torch.where((tile_map >= 0)[..., None, None], merged.tile_masks[tile_map.clamp_min(0).long()], True)
    return (tiles & part[..., None, None]) | full[..., None, None]


def swap_halves(merged: BlockLayout, factor: int = 2) -> BlockLayout:
    """``merged`` with the parts of every tile in reverse order (a merge that stacked them bottom first)."""
    t, rows, cols = merged.tile_masks.shape
    flipped = merged.tile_masks.view(t, factor, rows // factor, cols).flip(1).reshape(t, rows, cols)
    return dataclasses.replace(merged, tile_masks=flipped, check=False)


def check_merge(layout: BlockLayout, factor: int = 2, exact_table: bool = True) -> BlockLayout:
    """Merge ``layout`` (validated: check=True) and check it against ``expected_merge``: same block
    maps, same tile per block (on the rows of real query blocks), same element mask."""
    merged = layout.merge_query_blocks(factor, check=True)
    qblk, kvblk = layout.block_size
    qb = layout.shape[2]
    assert merged.block_size == (factor * qblk, kvblk) and merged.seq_lengths == layout.seq_lengths
    assert merged.shape == (*layout.shape[:2], cdiv(qb, factor), layout.shape[3])
    assert merged.num_patterns == layout.num_patterns
    check_invariants(merged, exact_width=False)
    e_full, e_part, e_tiles = expected_merge(layout, factor)
    full, part = merged.block_maps()
    assert torch.equal(full, e_full), "merged full blocks: exactly where every part is full"
    assert torch.equal(part, e_part), "merged partial blocks: listed by some part, not full"
    real_rows = (torch.arange(factor * qblk).view(1, -1) < (qb - torch.arange(merged.shape[2]) * factor).view(-1, 1) * qblk)
    got = merged_block_tiles(merged)
    same = (got == e_tiles) | ~real_rows[None, None, :, None, :, None]
    assert bool(same.all()), "a merged tile does not stack its parts' masks top to bottom"
    assert torch.equal(merged.to_element_mask(), layout.to_element_mask()), "the merge changed the computed pairs"
    if exact_table and bool(part.any()) and layout.tile_masks.shape[0] > 1:
        # A merge that stacked the parts bottom first computes other pairs (caught above as well).
        assert not torch.equal(swap_halves(merged, factor).to_element_mask(), layout.to_element_mask())
    # Built without checks (no host read), the same layout.
    fast = layout.merge_query_blocks(factor)
    assert fast.has_partial and not fast.is_dense
    assert torch.equal(fast.to_element_mask(), merged.to_element_mask())
    return merged


# --------------------------------------------------------------------------- block maps and tiles
LAYOUT_CASES = [
    pytest.param(2, 3, (200, 200), 64, id="B2H3-200"),
    pytest.param(1, 2, (233, 233), 64, id="233"),
    pytest.param(2, 2, (300, 233), 64, id="odd-QB5-300x233"),
    pytest.param(1, 1, (320, 256), 64, id="odd-QB5-multiples"),
    pytest.param(1, 2, (150, 333), (64, 128), id="odd-QB3-rect64x128"),
]


@pytest.mark.parametrize("B, H, seq_lengths, block_size", LAYOUT_CASES)
@pytest.mark.parametrize("table", ["all-combinations", "used-combinations"])
def test_merge_random_layouts(request, monkeypatch, B, H, seq_lengths, block_size, table):
    """Random full / partial maps with random tiles (NO_TILE among them), both tile-table paths."""
    if table == "used-combinations":
        monkeypatch.setattr(block_layout_mod, "MERGE_ALL_COMBINATIONS", 0)
    gen = fresh_generator(request)
    layout = random_layout(gen, B, H, seq_lengths, block_size, p_full=0.3, p_part=0.35, n_tiles=3)
    merged = check_merge(layout)
    n_states = layout.tile_masks.shape[0] + 2
    if table == "all-combinations":
        assert merged.tile_masks.shape[0] == n_states**2
    else:
        # Compact and deduplicated: every tile is used by a merged partial block, no two are equal.
        n_tiles = merged.tile_masks.shape[0]
        part, tile_map = merged.block_maps()[1], merged.tile_map()
        assert set(tile_map[part & (tile_map >= 0)].tolist()) == set(range(n_tiles))
        assert torch.unique(merged.tile_masks.flatten(1), dim=0).shape[0] == n_tiles


def test_merge_halves_are_not_swapped():
    """Row 0 takes key block 0 (full), row 1 takes key block 1 with a tile of its upper-left corner:
    the merged tiles must be [all True; all False] and [all False; that tile], in this order."""
    corner = torch.zeros(1, 64, 64, dtype=torch.bool)
    corner[0, :10, :20] = True
    full = torch.tensor([[1, 0], [0, 0]], dtype=torch.bool).view(1, 1, 2, 2)
    part = torch.tensor([[0, 0], [0, 1]], dtype=torch.bool).view(1, 1, 2, 2)
    layout = BlockLayout.from_block_maps(full, part, block_size=64, seq_lengths=128,
                                         tile_ids=torch.zeros(1, 1, 2, 2, dtype=torch.int32), tile_masks=corner)
    merged = check_merge(layout)
    assert merged.full_kv_num_blocks.tolist() == [[[0]]] and merged.kv_num_blocks.tolist() == [[[2]]]
    tiles = merged_block_tiles(merged)[0, 0, 0]  # [KB, 128, 64]
    assert bool(tiles[0, :64].all()) and not bool(tiles[0, 64:].any())
    assert not bool(tiles[1, :64].any()) and torch.equal(tiles[1, 64:], corner[0])
    assert not torch.equal(swap_halves(merged).to_element_mask(), layout.to_element_mask())


def test_merge_counts_full_where_both_halves_full():
    """A merged block is full iff both halves are (no tiles): QB = 3, so the last merged row has
    only a top half, and its full blocks stay full; the crossing key block is partial."""
    full = torch.tensor([
        [1, 1, 0, 1],
        [1, 0, 1, 1],
        [1, 0, 0, 1],
    ], dtype=torch.bool).view(1, 1, 3, 4)
    layout = BlockLayout.from_block_maps(full, block_size=64, seq_lengths=(150, 230))
    merged = check_merge(layout)
    m_full, m_part = merged.block_maps()
    assert m_full[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert m_part[0, 0].int().tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]  # key block 3 crosses 230
    assert merged.full_kv_num_blocks.tolist() == [[[1, 1]]] and merged.kv_num_blocks.tolist() == [[[3, 1]]]


def test_merge_dense_and_empty_layouts(monkeypatch):
    """All-full merges to all-full (dense: the index-free loop); all-empty to all-empty; on the
    used-combinations path a merge with no partial block gets the default one-tile table."""
    dense = BlockLayout.dense(256, 64)
    merged = check_merge(dense)
    assert merged.is_dense and not merged.has_partial and merged.density() == 1.0
    empty = BlockLayout.from_block_maps(torch.zeros(1, 1, 5, 5, dtype=torch.bool), block_size=64, seq_lengths=300)
    merged_empty = check_merge(empty)
    assert merged_empty.density() == 0.0 and not merged_empty.has_partial
    monkeypatch.setattr(block_layout_mod, "MERGE_ALL_COMBINATIONS", 0)
    assert check_merge(dense).tile_masks.shape[0] == 1


def test_merge_factor_four_and_errors(request):
    """factor 4 (32-token blocks -> 128, QB = 7: the last merged row has 3 parts), factor 1 is the
    layout itself, and factors the block size or the type refuse."""
    layout = random_layout(fresh_generator(request), 1, 2, (200, 190), 32, p_full=0.3, p_part=0.3, n_tiles=2)
    check_merge(layout, factor=4, exact_table=False)
    assert layout.merge_query_blocks(1) is layout
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            layout.merge_query_blocks(bad)
    with pytest.raises(ValueError, match="smaller factor"):
        BlockLayout.dense(300, 64).merge_query_blocks(8)


def test_merge_is_sync_free():
    """The merge reads nothing from the device: it runs on meta tensors (where any host read of a
    value raises), and on CUDA under the sync debug mode "error"."""
    layout = random_layout(torch.Generator().manual_seed(0), 1, 2, (300, 233), 64, n_tiles=3)
    on_meta = layout.to("meta").merge_query_blocks()
    assert on_meta.device.type == "meta" and on_meta.block_size == (128, 64) and on_meta.shape == (1, 2, 3, 4)
    if torch.cuda.is_available():
        on_gpu = layout.to("cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            merged = on_gpu.merge_query_blocks()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.equal(merged.to_element_mask().cpu(), layout.to_element_mask())


# --------------------------------------------------------------------------- the kernel on merged layouts
def check_same_attention(layout, merged, q, k, v, kv_lens=None, name=""):
    """The kernel on ``layout`` and on ``merged`` against the float64 reference under the ORIGINAL
    layout's element mask (and key padding)."""
    mask = layout.to_element_mask()
    keys = key_padding_ref(kv_lens, k.shape[2])
    mask = mask if keys is None else mask & keys
    qc, kc, vc = (t.cpu() for t in (q, k, v))
    ref, ref_lse = attention_ref(qc, kc, vc, mask)
    lowp, _ = attention_ref(qc, kc, vc, mask, upcast=False)
    lse_yardstick = lse_lowp(attention_ref, qc, kc, vc, mask)
    dev_lens = None if kv_lens is None else kv_lens.to(DEVICE)
    for which, lay in (("original", layout), ("merged", merged)):
        out, lse = block_sparse_attention(q, k, v, lay, return_lse=True, kv_lens=dev_lens)
        assert_close_to_reference(out.cpu(), ref, lowp, name=f"{name} {which} out")
        assert_close_to_reference(lse.cpu(), ref_lse, lse_yardstick, name=f"{name} {which} lse")


def _qkv(gen, B, S, H, D, dtype, S_kv=None):
    q, k, v = diffusers_qkv(B, S, H, D, dtype, gen=gen, S_kv=S_kv)
    return tuple(t.to(DEVICE) for t in (q * 2, k, v))  # sharper softmax: rescaling bugs show


@pytest.mark.parametrize(
    "B, H, seq_lengths, block_size, D, dtype",
    [
        pytest.param(2, 2, (200, 200), 64, 64, torch.float16, id="200-D64-fp16"),
        pytest.param(1, 2, (300, 233), 64, 128, torch.bfloat16, id="odd-QB5-300x233-D128-bf16"),
        pytest.param(1, 2, (150, 333), (64, 128), 64, torch.float32, id="odd-QB3-rect64x128-D64-fp32"),
    ],
)
def test_merge_attention_random(request, B, H, seq_lengths, block_size, D, dtype):
    gen = fresh_generator(request)
    layout = random_layout(gen, B, H, seq_lengths, block_size, p_full=0.3, p_part=0.35, n_tiles=3)
    merged = layout.merge_query_blocks()
    q, k, v = _qkv(gen, B, seq_lengths[0], H, D, dtype, S_kv=seq_lengths[1])
    check_same_attention(layout, merged, q, k, v, name="random")


@pytest.mark.parametrize("text_position", ["before", "after"])
def test_merge_attention_text_and_video(request, text_position):
    """A video window with 7 text tokens before / after (295 tokens: QB = 5, odd), tiles from
    the mask_mod; batch 3 with key padding (kv_lens inside a block, on an edge, past the end)."""
    tokens = TokenLayout(2, 8, 18, text_len=7, text_position=text_position)
    S = tokens.seq_len
    layout = BlockLayout.from_mask_mod(video_text_mask_mod(tokens), None, None, S, S, block_size=64)
    assert layout.has_partial and layout.shape[2] == 5
    merged = check_merge(layout, exact_table=False)
    gen = fresh_generator(request)
    q, k, v = _qkv(gen, 3, S, 1, 128, torch.float16)
    check_same_attention(layout, merged, q, k, v, kv_lens=torch.tensor([150, 128, 999]), name=text_position)


def test_merge_attention_empty_rows(request):
    """Query blocks with no key block (a bottom half alone, a top half alone, the short last
    block) and rows emptied inside tiles: zeros and lse = -inf there, on the merged layout too."""
    gen = fresh_generator(request)
    S, blk = 300, 64
    base = random_layout(gen, 1, 2, S, blk, p_full=0.3, p_part=0.4)
    full, part = base.block_maps()
    full[:, 0, 1] = part[:, 0, 1] = False  # head 0: bottom half of merged row 0 empty
    full[:, 1, 2] = part[:, 1, 2] = False  # head 1: top half of merged row 1 empty
    full[:, :, 4] = part[:, :, 4] = False  # the last (short) block, alone in merged row 2
    tiles = torch.ones(2, blk, blk, dtype=torch.bool)
    tiles[0, 5:9] = False
    tiles[1, :, 30:] = False
    tile_ids = torch.where(part, 1, NO_TILE).to(torch.int32)
    tile_ids[:, :, 3] = 0
    layout = BlockLayout.from_block_maps(full, part, block_size=blk, seq_lengths=S, tile_ids=tile_ids, tile_masks=tiles)
    merged = check_merge(layout)
    assert int(merged.full_kv_num_blocks[0, 0, 2]) + int(merged.kv_num_blocks[0, 0, 2]) == 0
    empty_rows = ~layout.to_element_mask().any(-1)[0]
    q, k, v = _qkv(gen, 1, S, 2, 64, torch.float16)
    check_same_attention(layout, merged, q, k, v, name="empty rows")
    out, lse = block_sparse_attention(q, k, v, merged, return_lse=True)
    out, lse = out.cpu()[0], lse.cpu()[0]
    assert bool(empty_rows[0, 64:128].all()) and bool(empty_rows[:, 256:].all())
    assert torch.equal(out[empty_rows], torch.zeros_like(out[empty_rows])) and bool(torch.isneginf(lse[empty_rows]).all())


def test_merge_attention_head_patterns_view(request):
    """A head table over a bank of patterns (and a view with another table) merges per stored
    pattern, keeping the table; a layout broadcast over batch and heads stays broadcast."""
    gen = fresh_generator(request)
    S, H = 233, 5

    def mm(b, h, q, k):
        return torch.where(h % 2 == 0, (q - k).abs() <= 40, k <= q)

    shared = BlockLayout.from_mask_mod(mm, None, H, S, S, block_size=64)
    view = shared.with_head_patterns([1, 1, 0, 0, 1])
    merged = check_merge(view, exact_table=False)
    assert merged.num_patterns == 2 and torch.equal(merged.head_patterns, view.head_patterns)
    q, k, v = _qkv(gen, 2, S, H, 64, torch.float16)
    check_same_attention(view, merged, q, k, v, name="head table view")
    broadcast = random_layout(gen, 1, 1, S, 64, p_full=0.3, p_part=0.3)
    merged_b = check_merge(broadcast)
    assert merged_b.shape[:2] == (1, 1)
    q, k, v = _qkv(gen, 2, S, 3, 64, torch.float16)
    check_same_attention(broadcast, merged_b, q, k, v, name="broadcast")
