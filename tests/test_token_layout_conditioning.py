"""Conditioning tokens off the video grid (``TokenLayout.prefix_len`` / ``suffix_len``): where they
sit, that every mode and AdaSpa compute them densely like text, and that plan files keep them.

The models that need them: HunyuanVideo-Framepack (history latents at 1x/2x/4x before the grid,
text after it), LTX-Video's condition pipeline (extra conditioning latents before the grid) and
LTX-2's keyframe conditions (tokens after the grid)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from adaspa import AdaSpaConfig, AdaSpaState, adaspa_attention
from adaspa.search import BlockGeometry
from helpers import assert_close_to_reference, fresh_generator
from kernels.block_layout import BlockLayout
from kernels.reference import attention_ref
from sparse_vdit import Plan, load_plan, save_plan
from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, Skip, VerticalStripe, head_layout, mode_block_map, mode_mask_mod
from sparse_vdit.token_layout import TokenLayout
from test_plan import cost_table

FRAMEPACK_LIKE = TokenLayout(3, 4, 5, text_len=9, text_position="after", prefix_len=11)
LAYOUTS = [
    pytest.param(FRAMEPACK_LIKE, id="prefix-text-after"),
    pytest.param(TokenLayout(3, 4, 5, prefix_len=20), id="prefix"),
    pytest.param(TokenLayout(3, 4, 5, suffix_len=13), id="suffix"),
    pytest.param(TokenLayout(2, 4, 5, text_len=7, text_position="before", prefix_len=6, suffix_len=3), id="all"),
]


# --------------------------------------------------------------------------- geometry
def test_the_order_is_text_prefix_grid_suffix_text():
    layout = FRAMEPACK_LIKE
    assert (layout.video_start, layout.video_end, layout.text_start, layout.seq_len) == (11, 71, 71, 80)
    assert layout.off_grid_spans == ((0, 11), (71, 80))
    before = TokenLayout(2, 4, 5, text_len=7, text_position="before", prefix_len=6, suffix_len=3)
    assert (before.text_start, before.video_start, before.video_end, before.seq_len) == (0, 13, 53, 56)
    assert before.off_grid_spans == ((0, 13), (53, 56))
    assert TokenLayout(2, 3, 4).off_grid_spans == ()
    assert TokenLayout.from_latent(6, 8, 10, patch_size=(1, 2, 2), prefix_len=4, suffix_len=2) == TokenLayout(
        6, 4, 5, prefix_len=4, suffix_len=2
    )
    assert "11 conditioning tokens before the grid" in layout.describe() and "(80 total)" in layout.describe()
    with pytest.raises(ValueError, match="prefix_len and suffix_len must be >= 0"):
        TokenLayout(2, 3, 4, prefix_len=-1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_positions_and_off_grid(layout):
    idx = torch.arange(layout.seq_len)
    f, r, c = layout.position(idx)
    off = layout.off_grid(idx)
    assert int((~off).sum()) == layout.video_len and bool((~off)[layout.video_slice].all())
    assert bool((f[off] == -1).all() and (r[off] == -1).all() and (c[off] == -1).all())
    assert torch.equal(layout.token_index(f[~off], r[~off], c[~off]), idx[~off])
    assert int(layout.is_text(idx).sum()) == layout.text_len and bool(off[layout.is_text(idx)].all())
    spans = torch.zeros(layout.seq_len, dtype=torch.bool)
    for a, b in layout.off_grid_spans:
        spans[a:b] = True
    assert torch.equal(spans, off)


# --------------------------------------------------------------------------- modes
MODES = [Full(), Skip(), Diagonal(0), Diagonal(1), MultiDiagonal(1), MultiDiagonal(0, frames=1), VerticalStripe((-1,), 2)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("block_size", [8, (16, 8)])
def test_modes_compute_tokens_off_the_grid_densely(layout, block_size):
    q = torch.arange(layout.seq_len).view(-1, 1)
    k = torch.arange(layout.seq_len).view(1, -1)
    off = layout.off_grid(torch.arange(layout.seq_len))
    for mode in MODES:
        pattern = mode_mask_mod(mode, layout)(0, 0, q, k)
        if not isinstance(mode, Skip):
            assert pattern[off].all() and pattern[:, off].all(), mode
        blocks = mode_block_map(mode, layout, block_size)
        from_elements = BlockLayout.from_mask_mod(
            mode_mask_mod(mode, layout), None, None, layout.seq_len, layout.seq_len, block_size=block_size
        )
        full, partial = from_elements.block_maps()
        assert torch.equal(blocks, (full | partial)[0, 0]), mode


@torch.no_grad()
def test_head_layout_with_a_prefix_matches_the_float64_reference(request):
    """A fused layer (one mode per head) on a prefix + text layout, through the kernel, head by head."""
    from kernels.attention import block_sparse_attention

    layout = FRAMEPACK_LIKE
    modes = [Diagonal(0), VerticalStripe((0,), 2)]
    gen = fresh_generator(request)
    q, k, v = (torch.randn(1, layout.seq_len, 2, 64, generator=gen).transpose(1, 2) for _ in range(3))
    fused = head_layout(modes, layout, block_size=16)
    out = block_sparse_attention(q, k, v, fused)
    for h, mode in enumerate(modes):
        mask = head_layout([mode], layout, block_size=16).to_dense()[:, :1]
        assert mask.any() and not mask.all()
        ref64, _ = attention_ref(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], mask)
        lowp, _ = attention_ref(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], mask, upcast=False)
        assert_close_to_reference(out[:, h : h + 1], ref64, lowp, name=f"head {h} {mode}")


# --------------------------------------------------------------------------- AdaSpa
def test_block_geometry_of_a_prefix_and_text_after():
    geometry = BlockGeometry.of(FRAMEPACK_LIKE.seq_len, 8, FRAMEPACK_LIKE)  # 80 tokens: prefix 0..10, text 71..79
    assert (geometry.head, geometry.tail) == (11, 9)
    assert geometry.dense_key_blocks == (range(0, 2), range(8, 10))
    assert geometry.dense_query_blocks == (range(0, 1), range(9, 10))
    assert geometry.selectable == 6 and geometry.list_width(3) == 7
    assert torch.equal(geometry.forced_keys(), torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool))
    assert torch.equal(geometry.served_rows(), torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=torch.bool))
    overlap = BlockGeometry(20, 16, head=3, tail=3)  # both spans touch block 0 or 1; nothing is counted twice
    assert overlap.selectable == 0 and overlap.num_dense_key_blocks == 2


@torch.no_grad()
def test_adaspa_keeps_tokens_off_the_grid_dense(request, fallback):
    """A search step on a prefix + text layout: every served row keeps both dense key ranges, the
    dense rows are exact dense attention, and the sparse step that follows equals the reference of
    its selection."""
    layout = TokenLayout(2, 8, 8, text_len=20, text_position="after", prefix_len=24)  # 172 tokens
    gen = fresh_generator(request)
    q, k, v = (torch.randn(1, layout.seq_len, 2, 64, generator=gen).transpose(1, 2) for _ in range(3))
    config = AdaSpaConfig(sparsity=0.7, block_size=16, warmup_steps=1, search_steps=(1,), schedule_steps=None)
    state = AdaSpaState()
    adaspa_attention(q, k, v, state, step=1, config=config, token_layout=layout)
    geometry = BlockGeometry.of(layout.seq_len, 16, layout)
    blocks = state.selected_blocks(0)
    rows = geometry.served_rows()
    assert blocks[:, :, rows][..., geometry.forced_keys()].all()
    assert not blocks[:, :, ~rows].any()
    assert not blocks[:, :, rows].all(), "the selection must be sparse, or the test proves nothing"
    out = adaspa_attention(q, k, v, state, step=2, config=config, token_layout=layout)
    ref, _ = attention_ref(q, k, v)
    for a, b in layout.off_grid_spans:
        torch.testing.assert_close(out[:, :, a:b], ref[:, :, a:b].to(out.dtype), rtol=1e-5, atol=1e-5)
    mask = blocks.repeat_interleave(16, -2).repeat_interleave(16, -1)[..., : layout.seq_len, : layout.seq_len]
    served = rows.repeat_interleave(16)[: layout.seq_len] & ~layout.off_grid(torch.arange(layout.seq_len))
    want, _ = attention_ref(q, k, v, mask)
    torch.testing.assert_close(out[:, :, served], want[:, :, served].to(out.dtype), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- plan files
def test_plan_files_keep_the_conditioning_tokens(tmp_path):
    from pipelines import model_info, tiny

    info = model_info(tiny.tiny_wan_transformer(num_layers=1))
    step = [((Diagonal(1), Full()),)]
    for layout in (TokenLayout(2, 4, 4, prefix_len=5, suffix_len=3), TokenLayout(2, 4, 4)):
        plan = Plan.from_step_modes(step, model=info, token_layout=layout, block_size=16, lam=0.5, epsilon=1.0,
                                    cost=cost_table({m for m in step[0][0]}))
        path = save_plan(plan, tmp_path / f"{layout.seq_len}.json")
        written = json.loads(path.read_text())["token_layout"]
        assert ("prefix_len" in written) == bool(layout.prefix_len), "zero counts are not written (older readers)"
        assert load_plan(path).token_layout == layout
    bad = json.loads(path.read_text())
    bad["token_layout"]["prefix_len"] = "five"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(Exception, match="token_layout.prefix_len must be an integer"):
        load_plan(tmp_path / "bad.json")
    assert dataclasses.replace(layout, prefix_len=1).seq_len == layout.seq_len + 1
