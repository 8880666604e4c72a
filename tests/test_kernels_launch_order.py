"""The longest-first launch order of the block-sparse kernel (issue 19 item 1).

A ``BlockLayout`` holds ``launch_order``: its (batch, head, query block) rows sorted by descending
block count, stable, computed once when the layout is built. The kernel launches a 1-D grid whose
program reads its row from that order (each copy of a layout broadcast over batch or heads runs the
whole order). Checked here: the order is that permutation; the output equals the natural order's
bit for bit and the float64 reference on layouts whose rows differ across heads; each layout has
its own order, built once and never per call.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import diffusers_qkv, fresh_generator, token_layout_for, video_text_mask_mod
from kernels import block_layout as block_layout_mod
from kernels.attention import block_sparse_attention
from kernels.block_layout import BlockLayout
from test_kernels import DEVICE, check_attention, random_layout, to_dev


def expected_order(layout: BlockLayout) -> torch.Tensor:
    """The longest-first permutation from the block maps (not the counts the layout sorts):
    flat (b, h, qb) rows by descending computed-block count, ties in ascending row order."""
    full, part = layout.block_maps()
    count = (full | part).sum(-1).flatten().tolist()
    return torch.tensor(sorted(range(len(count)), key=lambda i: (-count[i], i)), dtype=torch.int32)


def assert_longest_first(layout: BlockLayout) -> None:
    order = layout.launch_order
    b, h, qb, _ = layout.shape
    assert order is not None and order.dtype == torch.int32 and tuple(order.shape) == (b * h * qb,)
    assert torch.equal(order.sort().values.cpu(), torch.arange(b * h * qb, dtype=torch.int32)), "not a permutation"
    full, part = layout.block_maps()
    lengths = (full | part).sum(-1).flatten().cpu()[order.cpu().long()]
    assert bool((lengths[1:] <= lengths[:-1]).all()), "rows must come longest first"
    assert torch.equal(order.cpu(), expected_order(layout)), "equal rows must keep their natural order"


def skewed_mask_mod(tokens):
    """Four heads of very different lengths: dense; the video-text window (text rows and columns
    dense, partial blocks with tiles); a narrow band; nothing at all (empty rows)."""
    window = video_text_mask_mod(tokens)

    def mask_mod(b, h, q, k):
        band = (q - k).abs() <= 20
        return torch.where(h == 0, True, torch.where(h == 1, window(b, h, q, k), torch.where(h == 2, band, False)))

    return mask_mod


# =========================================================================== the order
def test_launch_order_is_the_longest_first_permutation(request):
    gen = fresh_generator(request)
    tokens = token_layout_for(113, 7, "after")
    layouts = {
        "random per batch and head": random_layout(gen, 2, 3, (300, 333), 64, p_full=0.3, p_part=0.3),
        "heads of different lengths": BlockLayout.from_mask_mod(skewed_mask_mod(tokens), None, 4, 113, 113, block_size=16),
        "shared head patterns": BlockLayout.from_mask_mod(
            lambda b, h, q, k: torch.where(h % 2 == 0, (q - k).abs() <= 40, k <= q), None, 5, 200, 200, block_size=64),
        "broadcast": random_layout(gen, 1, 1, 257, 64),
    }
    for name, layout in layouts.items():
        assert_longest_first(layout)
    shared = layouts["shared head patterns"]
    assert shared.head_patterns is not None and shared.num_patterns == 2
    # A causal pattern's rows grow with the query block: reversed, ties (the band's) in natural order.
    full, part = shared.block_maps()
    assert (full | part).sum(-1)[0, 1].tolist() == [1, 2, 3, 4]


def test_launch_order_of_complete_and_natural_layouts():
    """A complete layout runs the index-free loop: no order. Its indexed twin's rows are all equal:
    the identity. longest_first=False keeps the natural grid (no order)."""
    every = BlockLayout.dense(300, 64)
    assert every.is_dense and every.launch_order is None
    indexed = dataclasses.replace(every, is_dense=False)
    assert torch.equal(indexed.launch_order, torch.arange(5, dtype=torch.int32))
    assert dataclasses.replace(indexed, longest_first=False).launch_order is None


def test_launch_order_from_kv_blocks_unchecked(request):
    """AdaSpa's layouts (from_kv_blocks, check=False) get theirs from the device tensors, and so
    does a crossing block moved to the partial list (it still counts once)."""
    gen = fresh_generator(request)
    B, H, qb, kb, width = 2, 3, 4, 5, 4
    num = torch.randint(0, width + 1, (B, H, qb), generator=gen, dtype=torch.int32)
    idx = torch.rand(B, H, qb, kb, generator=gen).argsort(-1)[..., :width]
    layout = BlockLayout.from_kv_blocks(full_kv_num_blocks=num, full_kv_indices=idx, block_size=64,
                                        seq_lengths=(qb * 64, kb * 64 - 10), check=False)
    assert_longest_first(layout)
    counts = num.flatten().tolist()
    assert [counts[i] for i in layout.launch_order.tolist()] == sorted(counts, reverse=True)


# =========================================================================== the kernel
def _both_orders(q, k, v, layout, **kwargs):
    natural = dataclasses.replace(layout, longest_first=False)
    assert natural.launch_order is None and layout.launch_order is not None
    got = block_sparse_attention(q, k, v, layout, return_lse=True, **kwargs)
    want = block_sparse_attention(q, k, v, natural, return_lse=True, **kwargs)
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w.cpu()), "the launch order must not change a single bit"
    return got


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    "S, text_len, text_position, block",
    [
        pytest.param(113, 7, "after", 16, id="S113-text-after-bs16"),
        pytest.param(1023, 7, "before", 64, id="S1023-text-before-bs64"),
        pytest.param(1023, 7, "after", 128, id="S1023-text-after-bs128"),
    ],
)
def test_longest_first_equals_natural_on_heads_of_different_lengths(request, dtype, S, text_len, text_position, block):
    tokens = token_layout_for(S, text_len, text_position)
    layout = BlockLayout.from_mask_mod(skewed_mask_mod(tokens), None, 4, S, S, block_size=block)
    assert layout.has_partial
    full, part = layout.block_maps()
    lengths = (full | part).sum(-1)[0]  # [H, QB]
    assert int(lengths[3].max()) == 0 and int(lengths[0].min()) == lengths.shape[-1]
    assert int(lengths[0].sum()) > max(int(lengths[1].sum()), int(lengths[2].sum())) and int(lengths[2].min()) > 0
    q, k, v = to_dev(*diffusers_qkv(1, S, 4, 64, dtype, gen=fresh_generator(request)))
    out, lse = _both_orders(q, k, v, layout)
    assert torch.equal(out[:, 3].cpu(), torch.zeros_like(out[:, 3].cpu())) and bool(torch.isneginf(lse[:, 3]).all())
    check_attention(q, k, v, layout.to_dense(), out, lse, name="longest first")


@pytest.mark.parametrize("layout_bh", [(1, 1), (2, 1), (1, 3), (2, 3)], ids=lambda bh: f"layout-B{bh[0]}H{bh[1]}")
def test_longest_first_broadcast_layouts(request, layout_bh):
    """A layout broadcast over batch or heads (of q's 2 x 3) runs its order once per copy: every
    (b, h, row) once."""
    gen = fresh_generator(request)
    S = 200
    layout = random_layout(gen, *layout_bh, S, 64, p_full=0.3, p_part=0.3)
    full, part = layout.block_maps()
    full[..., -1, :] = True  # the last row longest: the order is not the identity
    layout = BlockLayout.from_block_maps(full, part & ~full, block_size=64, seq_lengths=S,
                                         tile_ids=layout.tile_map(), tile_masks=layout.tile_masks)
    assert not torch.equal(layout.launch_order, torch.arange(layout.launch_order.numel(), dtype=torch.int32))
    q, k, v = to_dev(*diffusers_qkv(2, S, 3, 64, torch.float16, gen=gen))
    out, lse = _both_orders(q, k, v, layout)
    check_attention(q, k, v, layout.to_dense(), out, lse, name="broadcast, longest first")


def test_longest_first_head_table_views_and_key_padding(request):
    """Views over one bank of patterns (with_head_patterns, and a one-entry table broadcast over
    heads), with per-batch key lengths: natural and longest-first agree, and match the reference."""
    gen = fresh_generator(request)
    S, H = 300, 4

    def three(b, h, q, k):
        return torch.where(h == 0, (q - k).abs() <= 30, torch.where(h == 1, k <= q, True))

    bank = BlockLayout.from_mask_mod(three, None, 3, S, S, block_size=64)
    kv_lens = torch.tensor([300, 170]).to(DEVICE)
    q, k, v = to_dev(*diffusers_qkv(2, S, H, 64, torch.float16, gen=gen))
    for table in ([2, 0, 1, 2], [1]):
        view = bank.with_head_patterns(table)
        assert_longest_first(view)
        out, _ = _both_orders(q, k, v, view, kv_lens=kv_lens)
        for bi, n in enumerate(kv_lens.tolist()):
            check_attention(q[bi : bi + 1, :, :, :], k[bi : bi + 1, :, :n], v[bi : bi + 1, :, :n],
                            view.to_dense()[..., :n], out[bi : bi + 1], name=f"view {table}, batch {bi}")


# =========================================================================== built once per layout
def test_launch_order_is_built_with_the_layout_and_never_per_call(request, monkeypatch):
    gen = fresh_generator(request)
    layout = random_layout(gen, 1, 2, 200, 64)
    order = layout.launch_order
    calls = []
    real = block_layout_mod.longest_first_order
    monkeypatch.setattr(block_layout_mod, "longest_first_order", lambda *a: calls.append(a) or real(*a))
    q, k, v = to_dev(*diffusers_qkv(1, 200, 2, 64, torch.float16, gen=gen))
    block_sparse_attention(q, k, v, layout)
    block_sparse_attention(q, k, v, layout)
    assert not calls and layout.launch_order is order, "a reused layout keeps its order"
    # Every new layout (another head table, a device move, changed lists) gets its own.
    bank = BlockLayout.from_mask_mod(lambda b, h, qi, ki: torch.where(h == 0, ki <= qi, (qi - ki).abs() <= 64),
                                     None, 2, 200, 200, block_size=64)
    views = [bank.with_head_patterns(t) for t in ([0, 1], [1, 0], [1, 1])]
    assert len(calls) == 4
    for view in views:
        assert_longest_first(view)
    assert not torch.equal(views[0].launch_order, views[1].launch_order)
    # The order lives with the view's head table: a view adds one storage to the bank's.
    assert views[0].launch_order.untyped_storage().data_ptr() == views[0].head_patterns.untyped_storage().data_ptr()
    assert set(views[0].storages()) - set(bank.storages()) == {views[0].head_patterns.untyped_storage().data_ptr()}
    moved = views[1].to("cpu")
    assert moved.launch_order is not views[1].launch_order and torch.equal(moved.launch_order, views[1].launch_order)
    full, part = layout.block_maps()
    full[0, 1] = True
    changed = dataclasses.replace(layout, **{name: getattr(BlockLayout.from_block_maps(
        full, part & ~full, block_size=64, seq_lengths=200, tile_ids=layout.tile_map(), tile_masks=layout.tile_masks,
        share_head_patterns=False), name) for name in block_layout_mod.INDEX_FIELDS}, head_patterns=None)
    assert_longest_first(changed)
    assert not torch.equal(changed.launch_order, layout.launch_order)
    assert layout.launch_order is order
    tensors = [getattr(layout, n) for n in block_layout_mod.INDEX_FIELDS] + [layout.tile_masks_i8, layout.launch_order]
    if layout.head_patterns is not None:
        tensors.append(layout.head_patterns)
    assert layout.nbytes() == sum(t.numel() * t.element_size() for t in tensors)
