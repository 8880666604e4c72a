"""BlockLayout: builders, invariants the kernels rely on, dense round trips, FlexAttention export."""

from __future__ import annotations

import warnings

import pytest
import torch

from helpers import assert_close_to_reference, fresh_generator, video_text_mask_mod
from kernels.block_layout import NO_TILE, BlockLayout
from kernels.reference import attention_ref
from sparse_vdit.token_layout import TokenLayout

flex = pytest.importorskip("torch.nn.attention.flex_attention")


def cdiv(a, b):
    return -(-a // b)


# --------------------------------------------------------------------------- independent ground truth
def expand_block_maps(full, partial, tile_ids, tile_masks, block_size, seq_lengths):
    """Element mask [B, H, Q_LEN, KV_LEN] of block maps, by an explicit loop over blocks."""
    qblk, kvblk = block_size
    q_len, kv_len = seq_lengths
    b, h, qb, kb = full.shape
    out = torch.zeros(b, h, qb * qblk, kb * kvblk, dtype=torch.bool)
    for bi, hi, i, j in (full | partial).nonzero().tolist():
        rows, cols = slice(i * qblk, (i + 1) * qblk), slice(j * kvblk, (j + 1) * kvblk)
        if full[bi, hi, i, j]:
            out[bi, hi, rows, cols] = True
        else:
            t = int(tile_ids[bi, hi, i, j])
            out[bi, hi, rows, cols] = True if t == NO_TILE else tile_masks[t]
    return out[:, :, :q_len, :kv_len]


def eval_mask_mod(mask_mod, B, H, q_len, kv_len):
    """mask_mod on the whole [B, H, Q_LEN, KV_LEN] grid, in one call."""
    b = torch.arange(B).view(B, 1, 1, 1)
    h = torch.arange(H).view(1, H, 1, 1)
    q = torch.arange(q_len).view(1, 1, q_len, 1)
    k = torch.arange(kv_len).view(1, 1, 1, kv_len)
    return torch.as_tensor(mask_mod(b, h, q, k)).bool().expand(B, H, q_len, kv_len)


def check_invariants(layout: BlockLayout, exact_width: bool = True) -> None:
    """Everything the kernels assume about a layout (module docstring of kernels.block_layout),
    checked independently of BlockLayout's own validation. ``exact_width``: the lists are exactly
    as wide as their longest row (host builders; ``from_kv_blocks`` keeps the caller's width)."""
    qblk, kvblk = layout.block_size
    q_len, kv_len = layout.seq_lengths
    b, h, qb, kb = layout.shape
    p = layout.num_patterns
    assert (qb, kb) == (cdiv(q_len, qblk), cdiv(kv_len, kvblk))
    narrow = torch.int8 if kb <= 127 else torch.int16 if kb <= 32767 else torch.int32
    for name in ("kv_num_blocks", "full_kv_num_blocks"):
        t = getattr(layout, name)
        assert t.dtype == torch.int32 and tuple(t.shape) == (b, p, qb) and t.is_contiguous(), name
        assert bool((t >= 0).all() and (t <= kb).all()), name
    for num_name, name in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        t = getattr(layout, name)
        width = max(1, int(getattr(layout, num_name).max()))
        assert t.dtype == narrow, f"{name} should be the narrowest index type {narrow}, is {t.dtype}"
        assert tuple(t.shape[:3]) == (b, p, qb) and t.is_contiguous(), name
        assert t.shape[3] == width if exact_width else t.shape[3] >= width, f"{name} must be as wide as its longest row"
    tid = layout.tile_ids
    assert tuple(tid.shape) == tuple(layout.kv_indices.shape) and not tid.dtype.is_floating_point
    tiles = layout.tile_masks
    assert tiles.dtype == torch.bool and tiles.dim() == 3 and tiles.shape[0] >= 1
    assert tuple(tiles.shape[1:]) == (qblk, kvblk)
    n_tiles = tiles.shape[0]
    for num, idx in ((layout.full_kv_num_blocks, layout.full_kv_indices), (layout.kv_num_blocks, layout.kv_indices)):
        used = torch.arange(idx.shape[-1]) < num.unsqueeze(-1)
        idx = idx.long()
        assert bool((idx[~used] == 0).all()), "unused tail entries must be 0"
        assert bool(((idx >= 0) & (idx < kb)).all()), "index out of the key-block range"
        # Strictly ascending among used entries: sorted and unique.
        step = idx[..., 1:] - idx[..., :-1]
        assert bool((step[used[..., 1:]] > 0).all()), "index lists must be sorted and unique"
    used_part = torch.arange(tid.shape[-1]) < layout.kv_num_blocks.unsqueeze(-1)
    assert bool((tid[~used_part] == NO_TILE).all()), "tile ids of unused entries must be NO_TILE"
    assert bool(((tid[used_part] >= NO_TILE) & (tid[used_part] < n_tiles)).all()), "tile id out of range"
    if layout.head_patterns is not None:
        table = layout.head_patterns
        assert tuple(table.shape) == (h,) and bool(((table >= 0) & (table < p)).all())
        assert len(set(table.tolist())) == p, "every stored pattern is used by some head"
    full, part = layout.block_maps()
    assert not bool((full & part).any()), "a block is listed both full and partial"
    heads = torch.arange(h) if layout.head_patterns is None or h == 1 else layout.head_patterns.long()
    if layout.head_patterns is not None:
        assert torch.equal(full.sum(-1, dtype=torch.int32), layout.full_kv_num_blocks[:, heads])
        assert torch.equal(part.sum(-1, dtype=torch.int32), layout.kv_num_blocks[:, heads])
    else:
        assert torch.equal(full.sum(-1, dtype=torch.int32), layout.full_kv_num_blocks)
        assert torch.equal(part.sum(-1, dtype=torch.int32), layout.kv_num_blocks)
    if kv_len % kvblk:
        assert not bool(full[..., -1].any()), "the key block crossing KV_LEN must never be full"


def random_block_maps(gen, B, H, qb, kb, n_tiles, qblk, kvblk, p_full=0.3, p_part=0.3):
    r = torch.rand(B, H, qb, kb, generator=gen)
    full = r < p_full
    partial = (r >= p_full) & (r < p_full + p_part)
    tile_ids = torch.randint(-1, n_tiles, (B, H, qb, kb), generator=gen, dtype=torch.int32)
    tile_masks = torch.rand(n_tiles, qblk, kvblk, generator=gen) < 0.5
    return full, partial, tile_ids, tile_masks


# --------------------------------------------------------------------------- from_block_maps
@pytest.mark.parametrize(
    "B, H, seq_lengths, block_size",
    [
        (2, 3, (300, 300), (64, 64)),
        (1, 2, (113, 250), (64, 128)),
        (2, 1, (256, 256), (128, 128)),  # multiples: no crossing block
        (1, 1, (200, 77), (128, 32)),
    ],
)
def test_from_block_maps_round_trip(request, B, H, seq_lengths, block_size):
    gen = fresh_generator(request)
    qb, kb = cdiv(seq_lengths[0], block_size[0]), cdiv(seq_lengths[1], block_size[1])
    full, partial, tile_ids, tile_masks = random_block_maps(gen, B, H, qb, kb, 3, *block_size)
    layout = BlockLayout.from_block_maps(
        full, partial, block_size=block_size, seq_lengths=seq_lengths, tile_ids=tile_ids, tile_masks=tile_masks
    )
    check_invariants(layout)
    assert layout.shape == (B, H, qb, kb)
    assert layout.block_size == block_size and layout.seq_lengths == seq_lengths
    got_full, got_part = layout.block_maps()
    crossing = seq_lengths[1] % block_size[1] != 0
    want_full, want_part = full.clone(), partial.clone()
    if crossing:  # the crossing column moves from full to partial (bounds only)
        want_part[..., -1] |= want_full[..., -1]
        want_full[..., -1] = False
    assert torch.equal(got_full, want_full)
    assert torch.equal(got_part, want_part)
    want_tiles = torch.where(want_part, tile_ids, NO_TILE)
    if crossing:
        want_tiles[..., -1] = torch.where(full[..., -1], NO_TILE, want_tiles[..., -1])
    assert torch.equal(layout.tile_map(), want_tiles)
    # The element mask does not change when the crossing block moves.
    dense = layout.to_dense()
    assert dense.shape == (B, H, *seq_lengths)
    assert torch.equal(dense, expand_block_maps(full, partial, tile_ids, tile_masks, block_size, seq_lengths))
    # Rebuilding from the layout's own maps is the identity.
    again = BlockLayout.from_block_maps(
        got_full, got_part, block_size=block_size, seq_lengths=seq_lengths,
        tile_ids=layout.tile_map(), tile_masks=layout.tile_masks,
    )
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "tile_ids"):
        assert torch.equal(getattr(again, name), getattr(layout, name)), name


def test_from_block_maps_without_partial_or_tiles(request):
    gen = fresh_generator(request)
    full = torch.rand(1, 2, 3, 4, generator=gen) < 0.5
    partial = (torch.rand(1, 2, 3, 4, generator=gen) < 0.5) & ~full
    layout = BlockLayout.from_block_maps(full, block_size=64, seq_lengths=(192, 256))
    check_invariants(layout)
    assert not layout.has_partial
    assert torch.equal(layout.to_dense(), full.repeat_interleave(64, -2).repeat_interleave(64, -1))
    # Partial blocks with no tiles are bounds-only: all True inside the sequence.
    layout = BlockLayout.from_block_maps(full, partial, block_size=64, seq_lengths=(150, 250))
    check_invariants(layout)
    assert layout.has_partial == bool(partial.any() or full[..., -1].any())
    assert bool((layout.tile_ids == NO_TILE).all())
    want = (full | partial).repeat_interleave(64, -2).repeat_interleave(64, -1)[:, :, :150, :250]
    assert torch.equal(layout.to_dense(), want)


def test_partial_map_broadcasts_against_full():
    full = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    partial = torch.tensor([[True, False], [False, True]]).view(1, 1, 2, 2)
    layout = BlockLayout.from_block_maps(full, partial, block_size=64, seq_lengths=128)
    assert layout.shape == (2, 3, 2, 2)
    assert layout.num_patterns == 1, "three identical heads store their pattern once"
    assert torch.equal(layout.kv_num_blocks, torch.ones(2, 1, 2, dtype=torch.int32))
    assert torch.equal(layout.kv_indices[..., 0].int(), torch.tensor([0, 1], dtype=torch.int32).expand(2, 1, 2))
    assert torch.equal(layout.block_maps()[1], partial.expand(2, 3, 2, 2))


def test_dense_layout():
    layout = BlockLayout.dense((300, 200), 128)
    check_invariants(layout)
    assert layout.shape == (1, 1, 3, 2)
    assert torch.equal(layout.full_kv_num_blocks, torch.full((1, 1, 3), 1, dtype=torch.int32))
    assert torch.equal(layout.kv_num_blocks, torch.full((1, 1, 3), 1, dtype=torch.int32))  # crossing column
    assert torch.equal(layout.kv_indices[..., 0].int(), torch.ones(1, 1, 3, dtype=torch.int32))
    assert bool(layout.to_dense().all()) and layout.to_dense().shape == (1, 1, 300, 200)
    assert layout.density() == 1.0
    exact = BlockLayout.dense(256, 128)
    assert not exact.has_partial and exact.block_size == (128, 128) and exact.seq_lengths == (256, 256)


# --------------------------------------------------------------------------- from_mask_mod
def sliding_window(w):
    return lambda b, h, q, k: (q - k).abs() <= w


def causal(b, h, q, k):
    return k <= q


def per_head_window(b, h, q, k):
    return (q - k).abs() <= 16 * (h + 1)


def per_batch_causal_or_window(b, h, q, k):
    return torch.where(b == 0, k <= q, (q - k).abs() <= 40)


def random_elements(q_len, kv_len, seed):
    table = torch.rand(q_len, kv_len, generator=torch.Generator().manual_seed(seed)) < 0.1
    table[:, :3] = True  # a few dense columns so some blocks are full-ish
    return lambda b, h, q, k: table[q.clamp(max=q_len - 1), k.clamp(max=kv_len - 1)]


TEXT_BEFORE = TokenLayout(3, 5, 9, text_len=7, text_position="before")  # 142 tokens
TEXT_AFTER = TokenLayout(2, 6, 16, text_len=7, text_position="after")  # 199 tokens

MASK_CASES = [
    pytest.param(sliding_window(20), None, None, 300, 300, 64, id="window-300-bs64"),
    pytest.param(sliding_window(100), None, None, 1023, 1023, 128, id="window-1023-bs128"),
    pytest.param(causal, None, None, 113, 113, 64, id="causal-113"),
    pytest.param(causal, None, None, 250, 250, (64, 128), id="causal-rect-blocks"),
    pytest.param(per_head_window, None, 3, 200, 200, 64, id="per-head"),
    pytest.param(per_batch_causal_or_window, 2, None, 200, 200, 64, id="per-batch"),
    pytest.param(video_text_mask_mod(TEXT_BEFORE), None, None, 142, 142, 64, id="text-before"),
    pytest.param(video_text_mask_mod(TEXT_AFTER), None, None, 199, 199, 64, id="text-after"),
    pytest.param(random_elements(150, 260, 3), None, None, 150, 260, 64, id="random-cross"),
    pytest.param(lambda b, h, q, k: q >= 0, None, None, 130, 130, 64, id="all-true"),
    pytest.param(lambda b, h, q, k: q < 0, None, None, 130, 130, 64, id="all-false"),
]


@pytest.mark.parametrize("mask_mod, B, H, q_len, kv_len, block_size", MASK_CASES)
def test_from_mask_mod_matches_direct_evaluation(mask_mod, B, H, q_len, kv_len, block_size):
    layout = BlockLayout.from_mask_mod(mask_mod, B, H, q_len, kv_len, block_size=block_size)
    check_invariants(layout)
    nb, nh = B or 1, H or 1
    assert layout.shape[:2] == (nb, nh)
    want = eval_mask_mod(mask_mod, nb, nh, q_len, kv_len)
    assert torch.equal(layout.to_dense(), want)
    # Minimal: a listed full block is all True inside the bounds, a listed partial block has a
    # True, an unlisted block has none; and the partial ones really need their element mask.
    qblk, kvblk = layout.block_size
    qb, kb = layout.shape[2:]
    pad = torch.zeros(nb, nh, qb * qblk, kb * kvblk, dtype=torch.bool)
    pad[:, :, :q_len, :kv_len] = want
    valid = torch.zeros(qb * qblk, kb * kvblk, dtype=torch.bool)
    valid[:q_len, :kv_len] = True
    blocks = pad.view(nb, nh, qb, qblk, kb, kvblk)
    vblocks = valid.view(qb, qblk, kb, kvblk)
    any_true = blocks.any(dim=(3, 5))
    all_true = (blocks | ~vblocks).all(dim=(3, 5))
    full, part = layout.block_maps()
    assert torch.equal(full | part, any_true)
    assert bool(all_true[full].all())
    crossing_col = torch.zeros(kb, dtype=torch.bool)
    crossing_col[-1] = kv_len % kvblk != 0
    assert torch.equal(full, any_true & all_true & ~crossing_col)


def test_from_mask_mod_chunking_does_not_matter():
    mm = video_text_mask_mod(TEXT_AFTER)
    a = BlockLayout.from_mask_mod(mm, None, None, 199, 199, block_size=64, rows_per_chunk=1)
    b = BlockLayout.from_mask_mod(mm, None, None, 199, 199, block_size=64, rows_per_chunk=100)
    assert torch.equal(a.to_dense(), b.to_dense())
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_tile_dedupe_sliding_window():
    small = BlockLayout.from_mask_mod(sliding_window(20), None, None, 1024, 1024, block_size=64)
    large = BlockLayout.from_mask_mod(sliding_window(20), None, None, 2048, 2048, block_size=64)
    check_invariants(large)
    # A band has a diagonal tile and two off-diagonal corner tiles, whatever the length.
    assert small.tile_masks.shape[0] == large.tile_masks.shape[0] == 3
    assert int(large.kv_num_blocks.sum()) == 32 + 2 * 31
    t = large.tile_masks.flatten(1)
    distinct = (t.unsqueeze(0) != t.unsqueeze(1)).any(-1) | torch.eye(len(t), dtype=torch.bool)
    assert bool(distinct.all()), "tile table holds duplicates"


def test_tile_dedupe_across_heads_and_batch():
    mm = lambda b, h, q, k: (q - k).abs() <= 20  # noqa: E731
    one = BlockLayout.from_mask_mod(mm, None, None, 512, 512, block_size=64)
    many = BlockLayout.from_mask_mod(mm, 2, 3, 512, 512, block_size=64)
    check_invariants(many)
    assert many.shape[:2] == (2, 3)
    assert many.tile_masks.shape[0] == one.tile_masks.shape[0]
    assert torch.equal(many.to_dense(), one.to_dense().expand(2, 3, -1, -1))


def test_broadcast_and_per_head_layouts():
    layout = BlockLayout.from_mask_mod(per_head_window, None, 3, 256, 256, block_size=64)
    assert layout.shape[:2] == (1, 3)
    dense = layout.to_dense()
    assert not torch.equal(dense[0, 0], dense[0, 2])  # heads really differ
    for h in range(3):
        one = BlockLayout.from_mask_mod(
            lambda b, hh, q, k, h=h: (q - k).abs() <= 16 * (h + 1), None, None, 256, 256, block_size=64
        )
        assert torch.equal(dense[0, h], one.to_dense()[0, 0])
    bcast = BlockLayout.from_mask_mod(causal, None, None, 256, 256, block_size=64)
    assert bcast.shape[:2] == (1, 1)


def test_density(request):
    gen = fresh_generator(request)
    full = torch.rand(2, 3, 5, 7, generator=gen) < 0.3
    partial = (torch.rand(2, 3, 5, 7, generator=gen) < 0.3) & ~full
    n = int((full | partial).sum())
    layout = BlockLayout.from_block_maps(full, partial, block_size=64, seq_lengths=(300, 420))
    assert layout.density() == pytest.approx(n / full.numel(), abs=1e-7)
    empty = BlockLayout.from_block_maps(torch.zeros(1, 1, 2, 2, dtype=torch.bool), block_size=64, seq_lengths=128)
    assert empty.density() == 0.0 and not empty.has_partial
    assert not bool(empty.to_dense().any())
    window = BlockLayout.from_mask_mod(sliding_window(20), None, None, 1024, 1024, block_size=64)
    assert window.density() == pytest.approx((16 + 2 * 15) / 256)


def test_dense_rows_strips_equal_to_dense():
    layout = BlockLayout.from_mask_mod(video_text_mask_mod(TEXT_AFTER), None, 2, 199, 199, block_size=64)
    full = layout.to_dense()
    strips = [layout.dense_rows(i, i + 2) for i in range(0, layout.shape[2], 2)]
    assert torch.equal(torch.cat(strips, dim=2), full)
    assert layout.dense_rows(3, 4).shape == (1, 2, 199 - 192, 199)


def test_to_device_keeps_fields():
    layout = BlockLayout.from_mask_mod(causal, None, None, 200, 200, block_size=64)
    moved = layout.to("cpu")
    assert moved is not layout
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "tile_ids", "tile_masks"):
        assert torch.equal(getattr(moved, name), getattr(layout, name)), name
    assert moved.block_size == layout.block_size and moved.seq_lengths == layout.seq_lengths
    assert torch.equal(layout.tile_masks_i8, layout.tile_masks.to(torch.int8))


# --------------------------------------------------------------------------- FlexAttention export
FLEX_CASES = [
    pytest.param(sliding_window(20), None, None, 300, 300, 64, id="window"),
    pytest.param(per_head_window, None, 3, 200, 200, 64, id="per-head"),
    pytest.param(per_batch_causal_or_window, 2, None, 200, 200, 64, id="per-batch"),
    pytest.param(video_text_mask_mod(TEXT_BEFORE), None, None, 142, 142, 64, id="text-before"),
    pytest.param(random_elements(150, 260, 5), None, None, 150, 260, (64, 128), id="random-rect"),
]


def flex_element_mask(bm, B, H, q_len, kv_len):
    """FlexAttention's semantics of a BlockMask: full blocks all True, partial blocks by mask_mod,
    unlisted blocks False."""
    qblk, kvblk = bm.BLOCK_SIZE
    full_blocks = flex.BlockMask.from_kv_blocks(bm.full_kv_num_blocks, bm.full_kv_indices, BLOCK_SIZE=bm.BLOCK_SIZE).to_dense()
    part_blocks = flex.BlockMask.from_kv_blocks(bm.kv_num_blocks, bm.kv_indices, BLOCK_SIZE=bm.BLOCK_SIZE).to_dense()

    def expand(x):
        return x.bool().repeat_interleave(qblk, -2).repeat_interleave(kvblk, -1)[:, :, :q_len, :kv_len].expand(B, H, -1, -1)

    elem = flex.create_mask(bm.mask_mod, B, H, q_len, kv_len, device="cpu")
    return expand(full_blocks) | (expand(part_blocks) & elem)


@pytest.mark.parametrize("mask_mod, B, H, q_len, kv_len, block_size", FLEX_CASES)
def test_to_flex_block_mask_agrees_with_to_dense(mask_mod, B, H, q_len, kv_len, block_size):
    layout = BlockLayout.from_mask_mod(mask_mod, B, H, q_len, kv_len, block_size=block_size)
    bm = layout.to_flex_block_mask()
    assert isinstance(bm, flex.BlockMask)
    assert tuple(bm.BLOCK_SIZE) == layout.block_size
    assert tuple(bm.seq_lengths) == layout.seq_lengths
    full, part = layout.block_maps()
    assert torch.equal(bm.full_kv_num_blocks, full.sum(-1, dtype=torch.int32))
    assert torch.equal(bm.kv_num_blocks, part.sum(-1, dtype=torch.int32))
    assert torch.equal(bm.to_dense().bool(), full | part)
    nb, nh = B or 1, H or 1
    assert torch.equal(flex_element_mask(bm, nb, nh, q_len, kv_len), layout.to_dense().expand(nb, nh, -1, -1))


@pytest.mark.parametrize("mask_mod, B, H, q_len, kv_len, block_size", FLEX_CASES)
def test_flex_mask_mod_alone_is_exact(mask_mod, B, H, q_len, kv_len, block_size):
    """The exported mask_mod by itself equals to_dense(): eager flex_attention (CPU) and
    create_mask evaluate only mask_mod, so a layout used as a FlexAttention reference needs it."""
    layout = BlockLayout.from_mask_mod(mask_mod, B, H, q_len, kv_len, block_size=block_size)
    bm = layout.to_flex_block_mask()
    nb, nh = B or 1, H or 1
    elem = flex.create_mask(bm.mask_mod, nb, nh, q_len, kv_len, device="cpu")
    assert torch.equal(elem, layout.to_dense().expand(nb, nh, -1, -1))


@pytest.mark.parametrize("mask_mod, B, H, q_len, kv_len, block_size", FLEX_CASES[:3])
def test_flex_attention_eager_matches_reference(request, mask_mod, B, H, q_len, kv_len, block_size):
    """The exported BlockMask runs through (eager, CPU) flex_attention and gives the layout's attention."""
    layout = BlockLayout.from_mask_mod(mask_mod, B, H, q_len, kv_len, block_size=block_size)
    nb, nh = B or 2, H or 2
    gen = fresh_generator(request)
    q, k, v = (torch.randn(nb, nh, n, 64, generator=gen) for n in (q_len, kv_len, kv_len))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "flex_attention called without torch.compile()"
        out = flex.flex_attention(q, k, v, block_mask=layout.to_flex_block_mask())
    ref, _ = attention_ref(q, k, v, layout.to_dense())
    lowp, _ = attention_ref(q, k, v, layout.to_dense(), upcast=False)
    assert_close_to_reference(out, ref, lowp, name="flex_attention")


# --------------------------------------------------------------------------- errors
def test_wrong_block_map_shape():
    with pytest.raises(ValueError, match=r"block map must be \[B, H, 3, 2\]"):
        BlockLayout.from_block_maps(torch.ones(1, 1, 2, 2, dtype=torch.bool), block_size=64, seq_lengths=(150, 100))
    with pytest.raises(ValueError, match="block map must be"):
        BlockLayout.from_block_maps(torch.ones(2, 2, dtype=torch.bool), block_size=64, seq_lengths=128)


def test_full_and_partial_overlap():
    both = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="both full and partial"):
        BlockLayout.from_block_maps(both, both, block_size=64, seq_lengths=128)


def test_wrong_tile_shape():
    full = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"tile_masks must be \[T, 64, 64\]"):
        BlockLayout.from_block_maps(
            full, ~full, block_size=64, seq_lengths=128, tile_masks=torch.ones(1, 32, 64, dtype=torch.bool)
        )


def test_builders_reject_bad_arguments():
    ok = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    for bad in (0, -64, 1 << 20, (64, 0), 64.0, "64", True):
        with pytest.raises((ValueError, TypeError), match="block_size"):
            BlockLayout.from_block_maps(ok, block_size=bad, seq_lengths=128)
        with pytest.raises((ValueError, TypeError), match="block_size"):
            BlockLayout.dense(128, bad)
    for bad in (-1, 0, (128, -5), 1.5):
        with pytest.raises((ValueError, TypeError), match="seq_lengths"):
            BlockLayout.from_block_maps(ok, block_size=64, seq_lengths=bad)
    with pytest.raises(ValueError, match="seq_lengths"):
        BlockLayout.from_mask_mod(causal, None, None, -3, 128, block_size=64)
    with pytest.raises(TypeError, match="bool tensor"):
        BlockLayout.from_block_maps(ok.int(), block_size=64, seq_lengths=128)
    with pytest.raises(TypeError, match="bool tensor"):
        BlockLayout.from_block_maps([[True]], block_size=64, seq_lengths=128)
    with pytest.raises(TypeError, match="bool tensor"):
        BlockLayout.from_block_maps(ok, ok.float(), block_size=64, seq_lengths=128)
    with pytest.raises(TypeError, match="mask_mod must be a callable"):
        BlockLayout.from_mask_mod(None, None, None, 128, 128, block_size=64)
    with pytest.raises(ValueError, match="H must be a positive int"):
        BlockLayout.from_mask_mod(causal, None, 0, 128, 128, block_size=64)


def _fields(layout):
    return {name: getattr(layout, name).clone() for name in
            ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "tile_ids", "tile_masks")}


def _rebuild(layout, **changes):
    f = {"head_patterns": layout.head_patterns, **_fields(layout)}
    f.update(changes)
    return BlockLayout(**f, block_size=layout.block_size, seq_lengths=layout.seq_lengths)


def test_constructor_rejects_broken_invariants():
    """Every invariant the kernel relies on is checked at construction: a broken layout raises a
    clear error instead of reaching the Triton kernel (which would return wrong numbers)."""
    # 5 query x 5 key blocks of 64 over 300 tokens: the last key block crosses KV_LEN.
    good = BlockLayout.from_mask_mod(sliding_window(150), None, 2, 300, 300, block_size=64)
    assert good.full_kv_indices.shape[-1] >= 2 and good.kv_indices.shape[-1] >= 1
    _rebuild(good)  # the untouched fields pass
    f = _fields(good)
    dup = f["full_kv_indices"].clone()
    dup[0, 0, 2, 1] = dup[0, 0, 2, 0]
    unsorted = f["full_kv_indices"].clone()
    unsorted[0, 0, 2, :2] = unsorted[0, 0, 2, :2].flip(0)
    too_many = f["full_kv_num_blocks"].clone()
    too_many[0, 0, 1] = 99
    negative = f["kv_num_blocks"].clone()
    negative[0, 0, 0] = -1
    out_of_range = f["full_kv_indices"].clone()
    out_of_range[0, 0, 2, 0] = 7
    bad_tile = f["tile_ids"].clone()
    bad_tile[0, 0, 0, 0] = good.tile_masks.shape[0]
    crossing_full = f["full_kv_indices"].clone()
    crossing_full[0, 0, 4, int(f["full_kv_num_blocks"][0, 0, 4]) - 1] = 4
    cases = {
        "not strictly ascending": dict(full_kv_indices=dup),
        "not strictly ascending ": dict(full_kv_indices=unsorted),
        "counts outside": dict(full_kv_num_blocks=too_many),
        "counts outside ": dict(kv_num_blocks=negative),
        "indices outside": dict(full_kv_indices=out_of_range),
        "tile ids outside": dict(tile_ids=bad_tile),
    }
    for match, change in cases.items():
        with pytest.raises(ValueError, match=match.strip()):
            _rebuild(good, **change)
    # The crossing key block listed as full (and no longer partial).
    maps_full, maps_part = good.block_maps()
    assert bool(maps_part[..., -1].any())
    with pytest.raises(ValueError, match="crosses KV_LEN"):
        full, part = maps_full.clone(), maps_part.clone()
        full[..., -1] |= part[..., -1]
        part[..., -1] = False
        cnt, idx = (full.sum(-1, dtype=torch.int32),
                    torch.argsort((~full).to(torch.int8), dim=-1, stable=True)[..., : int(full.sum(-1).max())])
        idx = torch.where(torch.arange(idx.shape[-1]) < cnt.unsqueeze(-1), idx, 0).to(torch.int8)
        pc = part.sum(-1, dtype=torch.int32)
        pidx = torch.argsort((~part).to(torch.int8), dim=-1, stable=True)[..., : max(1, int(pc.max()))]
        pidx = torch.where(torch.arange(pidx.shape[-1]) < pc.unsqueeze(-1), pidx, 0).to(torch.int8)
        BlockLayout(pc, pidx, cnt, idx, torch.full_like(pidx, NO_TILE), good.tile_masks,
                    block_size=64, seq_lengths=300)
    del crossing_full
    with pytest.raises(ValueError, match="both full and partial"):
        both = torch.zeros(1, 1, 5, 1, dtype=torch.int8)
        BlockLayout(torch.ones(1, 1, 5, dtype=torch.int32), both, torch.ones(1, 1, 5, dtype=torch.int32), both,
                    torch.full_like(both, NO_TILE), torch.ones(1, 64, 64, dtype=torch.bool), block_size=64, seq_lengths=300)
    # Wrong dtypes and shapes.
    with pytest.raises(TypeError, match="kv_indices must be an integer tensor"):
        _rebuild(good, kv_indices=f["kv_indices"].float())
    with pytest.raises(TypeError, match="tile_masks must be bool"):
        _rebuild(good, tile_masks=good.tile_masks.int())
    with pytest.raises(TypeError, match="must be a tensor"):
        _rebuild(good, full_kv_num_blocks=[1, 2])
    with pytest.raises(ValueError, match="query blocks"):
        _rebuild(good, full_kv_num_blocks=f["full_kv_num_blocks"][:, :, :4], kv_num_blocks=f["kv_num_blocks"][:, :, :4],
                 full_kv_indices=f["full_kv_indices"][:, :, :4], kv_indices=f["kv_indices"][:, :, :4],
                 tile_ids=f["tile_ids"][:, :, :4])
    with pytest.raises(ValueError, match="inconsistent with counts"):
        _rebuild(good, full_kv_indices=torch.cat([f["full_kv_indices"]] * 2))
    with pytest.raises(ValueError, match=r"tile_masks must be \[T >= 1, 64, 64\]"):
        _rebuild(good, tile_masks=good.tile_masks[:, :32])
    with pytest.raises(ValueError, match="head_patterns values outside"):
        _rebuild(good, head_patterns=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="meta device"):
        BlockLayout(**{k: v.to("meta") for k, v in f.items()}, block_size=64, seq_lengths=300)


def test_compact_storage_width_and_dtype():
    """Index lists are as wide as the longest row, in the narrowest integer type for KB."""
    narrow = BlockLayout.from_mask_mod(sliding_window(20), None, None, 64 * 100, 64 * 100, block_size=64)
    assert narrow.full_kv_indices.dtype == torch.int8 and narrow.full_kv_indices.shape[-1] == 1
    assert narrow.kv_indices.shape[-1] == 3  # a band: the diagonal block and its two neighbours
    wide = BlockLayout.from_mask_mod(sliding_window(20), None, None, 64 * 200, 64 * 200, block_size=64)
    assert wide.kv_indices.dtype == torch.int16 and wide.kv_indices.shape[-1] == 3
    check_invariants(wide)
    dense = BlockLayout.dense(64 * 200, 64)
    assert dense.full_kv_indices.shape[-1] == 200 and dense.full_kv_indices.dtype == torch.int16
    # A 40-head layout of 3 distinct patterns stores 3.
    def three(b, h, q, k):
        return torch.where(h % 3 == 0, (q - k).abs() <= 64, torch.where(h % 3 == 1, k <= q, k < 64))

    shared = BlockLayout.from_mask_mod(three, None, 40, 640, 640, block_size=64)
    assert shared.num_patterns == 3 and shared.shape[:2] == (1, 40)
    check_invariants(shared)
    unshared = BlockLayout.from_block_maps(*shared.block_maps(), block_size=64, seq_lengths=640,
                                           tile_ids=shared.tile_map(), tile_masks=shared.tile_masks,
                                           share_head_patterns=False)
    assert unshared.num_patterns == 40
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "tile_ids"):
        assert getattr(unshared, name).numel() == getattr(shared, name).numel() * 40 // 3, name
    assert torch.equal(unshared.to_dense(), shared.to_dense())
    assert torch.equal(shared.to_dense(), eval_mask_mod(three, 1, 40, 640, 640))


def test_with_head_patterns_shares_storage():
    bank = BlockLayout.from_mask_mod(per_head_window, None, 3, 256, 256, block_size=64)
    assert bank.head_patterns is None and bank.num_patterns == 3
    view = bank.with_head_patterns([2, 2, 0, 1, 0])
    assert view.shape[:2] == (1, 5)
    assert set(view.storages()) - set(bank.storages()) <= {view.head_patterns.untyped_storage().data_ptr()}
    dense, bank_dense = view.to_dense(), bank.to_dense()
    for h, p in enumerate([2, 2, 0, 1, 0]):
        assert torch.equal(dense[0, h], bank_dense[0, p])
    with pytest.raises(ValueError, match=r"pattern ids in \[0, 3\)"):
        bank.with_head_patterns([0, 3])


def _random_topk_lists(gen, B, H, qb, kb, k):
    scores = torch.rand(B, H, qb, kb, generator=gen)
    idx = scores.topk(k, dim=-1).indices  # unique, unsorted
    num = torch.randint(0, k + 1, (B, H, qb), generator=gen, dtype=torch.int32)
    return num, idx


@pytest.mark.parametrize("seq_len", [640, 600], ids=["multiple", "crossing"])
def test_from_kv_blocks_equals_block_maps(request, seq_len):
    gen = fresh_generator(request)
    B, H, blk, k = 2, 3, 64, 4
    qb = kb = cdiv(seq_len, blk)
    num, idx = _random_topk_lists(gen, B, H, qb, kb, k)
    for check in (True, False):
        layout = BlockLayout.from_kv_blocks(full_kv_num_blocks=num, full_kv_indices=idx, block_size=blk,
                                            seq_lengths=seq_len, check=check)
        used = torch.arange(k) < num.unsqueeze(-1).long()
        want = torch.zeros(B, H, qb, kb, dtype=torch.int32).scatter_add_(-1, idx, used.int()) > 0
        want_layout = BlockLayout.from_block_maps(want, block_size=blk, seq_lengths=seq_len)
        assert torch.equal(layout.to_dense(), want_layout.to_dense())
        check_invariants(BlockLayout(**_fields(layout), block_size=blk, seq_lengths=seq_len), exact_width=False)
        assert layout.has_partial == (seq_len % blk != 0 or bool(layout.kv_num_blocks.any()))
    # Partial lists with tiles, unsorted, next to full lists.
    tiles = torch.rand(2, blk, blk, generator=gen) < 0.5
    pnum, pidx = _random_topk_lists(gen, B, H, qb, kb, 2)
    tile_ids = torch.randint(-1, 2, pidx.shape, generator=gen)
    layout = BlockLayout.from_kv_blocks(pnum, pidx, block_size=blk, seq_lengths=seq_len, tile_ids=tile_ids,
                                        tile_masks=tiles)
    used = torch.arange(2) < pnum.unsqueeze(-1).long()
    target = torch.where(used, pidx, kb)  # unused entries go to a scratch column, cut below
    part = torch.zeros(B, H, qb, kb + 1, dtype=torch.bool).scatter_(-1, target, used)[..., :kb]
    tmap = torch.full((B, H, qb, kb + 1), NO_TILE, dtype=torch.int32).scatter_(-1, target, tile_ids.int())[..., :kb]
    want = BlockLayout.from_block_maps(torch.zeros_like(part), part, block_size=blk, seq_lengths=seq_len,
                                       tile_ids=tmap, tile_masks=tiles)
    assert torch.equal(layout.to_dense(), want.to_dense())


def test_from_kv_blocks_rejects_bad_lists():
    idx = torch.tensor([[[[0, 0], [1, 0]]]])
    with pytest.raises(ValueError, match="not strictly ascending"):
        BlockLayout.from_kv_blocks(full_kv_num_blocks=torch.tensor([[[2, 1]]]), full_kv_indices=idx,
                                   block_size=64, seq_lengths=128)
    with pytest.raises(ValueError, match="outside"):
        BlockLayout.from_kv_blocks(full_kv_num_blocks=torch.tensor([[[1, 1]]]), full_kv_indices=idx + 5,
                                   block_size=64, seq_lengths=128)
    with pytest.raises(ValueError, match="needs"):
        BlockLayout.from_kv_blocks(block_size=64, seq_lengths=128)
    with pytest.raises(TypeError, match="integer tensor"):
        BlockLayout.from_kv_blocks(full_kv_num_blocks=torch.tensor([[[1.0, 1.0]]]), full_kv_indices=idx,
                                   block_size=64, seq_lengths=128)


def test_from_mask_mod_never_indexes_past_the_sequence():
    """A mask_mod that indexes an S x S tensor (accepted by FlexAttention's create_block_mask) works
    at any S, including S that is not a multiple of the block."""
    for q_len, kv_len in ((150, 260), (128, 128), (1, 1)):
        table = torch.rand(q_len, kv_len, generator=torch.Generator().manual_seed(q_len)) < 0.3
        layout = BlockLayout.from_mask_mod(lambda b, h, q, k: table[q, k], None, None, q_len, kv_len, block_size=64)
        assert torch.equal(layout.to_dense()[0, 0], table)


def test_the_element_mask_and_the_block_map_have_distinct_names():
    """``to_element_mask`` is [B, H, Q_LEN, KV_LEN] (``to_dense`` its old name); FlexAttention's
    ``BlockMask.to_dense`` is the block map, ``block_maps`` here."""
    layout = BlockLayout.from_mask_mod(lambda b, h, q, k: (q - k).abs() <= 20, None, None, 100, 100, block_size=32)
    mask = layout.to_element_mask()
    assert mask.shape == (1, 1, 100, 100) and torch.equal(layout.to_dense(), mask)
    idx = torch.arange(100)
    assert torch.equal(mask[0, 0], (idx[:, None] - idx[None, :]).abs() <= 20)
    full, partial = layout.block_maps()
    flex = layout.to_flex_block_mask().to_dense()
    assert flex.shape == full.shape == (1, 1, 4, 4) and torch.equal(flex.bool(), full | partial)
