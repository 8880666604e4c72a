"""The two baselines (sparse_vdit.baselines): the SVG-style window choice on heads built with known
structure, outputs against the float64 reference of the layout chosen, warm-up, density matching,
errors, and a run through the proxy pipeline."""

from __future__ import annotations

import pytest
import torch

from kernels.attention import block_sparse_attention
from kernels.reference import attention_ref
from sparse_vdit.baselines import (
    SpatialTemporalAttention,
    StaticWindowAttention,
    dense_warmup_steps,
    matched_spatial_rows,
    sampled_video_rows,
)
from sparse_vdit.modes import Diagonal, MultiDiagonal, mode_block_map, mode_density
from sparse_vdit.protocol import AttentionCall, ForwardContext, ModelInfo
from sparse_vdit.token_layout import TokenLayout
from tests.helpers import assert_close_to_reference

# 4 latent frames of 16 rows x 4 columns: a 16-token block holds 4 latent rows, 4 blocks per frame.
LAYOUT = TokenLayout(4, 16, 4)
BLOCK = 16
D = 64
INFO = ModelInfo("AnyVideoDiT", 1, 2, D, ("blocks.0.attn",), "none", (1, 2, 2))


def _call(step: int, num_steps: int | None, method, layout: TokenLayout = LAYOUT, dtype=torch.float32):
    forward = ForwardContext(0, step, 0, None, 1.0, num_steps, layout, None, None, 1, torch.device("cpu"), dtype, INFO)
    prepared = method.begin_forward(forward)
    forward = ForwardContext(0, step, 0, None, 1.0, num_steps, layout, None, None, 1, torch.device("cpu"), dtype, INFO,
                             prepared=prepared)
    return AttentionCall(0, "blocks.0.attn", 2, D, forward)


def _structured_qkv(seed: int = 0):
    """q = k [1, 2, S, D]: head 0 attends its own latent frame (spatial), head 1 the same latent row
    in every frame (temporal); v random."""
    idx = torch.arange(LAYOUT.seq_len)
    frame, row, _ = LAYOUT.position(idx)
    spatial = torch.zeros(LAYOUT.seq_len, D)
    spatial[idx, frame] = 8.0  # logit 8 (after the 1/sqrt(D) scale) to its own frame, 0 elsewhere
    temporal = torch.zeros(LAYOUT.seq_len, D)
    temporal[idx, 8 + row] = 8.0  # logit 8 to its own latent row, in every frame
    qk = torch.stack([spatial, temporal])[None]
    v = torch.randn(1, 2, LAYOUT.seq_len, D, generator=torch.Generator().manual_seed(seed))
    return qk.clone(), qk.clone(), v


def test_svg_picks_spatial_for_a_local_head_and_temporal_for_a_temporal_head():
    method = SpatialTemporalAttention(rows=0, block_size=BLOCK, sample_rows=32)
    q, k, v = _structured_qkv()
    call = _call(5, 10, method)
    layout = method(call, q, k, v)
    windows = call.prepared
    assert method.chosen[0] == (windows.spatial, windows.temporal)
    assert method.counts == {"spatial": 1, "temporal": 1}
    # the spatial window reaches further inside the frame, the temporal one into the other frames
    assert windows.spatial == Diagonal(matched_spatial_rows(0, LAYOUT, BLOCK)) and windows.spatial.rows > 0
    assert windows.temporal == MultiDiagonal(0, None)
    full, partial = layout.block_maps()
    for h, mode in enumerate(method.chosen[0]):
        assert torch.equal((full | partial)[0, h], mode_block_map(mode, LAYOUT, BLOCK))


@pytest.mark.parametrize("method", [
    SpatialTemporalAttention(rows=0, block_size=BLOCK, sample_rows=32),
    SpatialTemporalAttention(rows=1, block_size=BLOCK),
    StaticWindowAttention(rows=2, block_size=BLOCK),
    StaticWindowAttention(rows=1, frames=1, block_size=BLOCK),
], ids=["svg-rows0", "svg-rows1", "window-diag2", "window-multi1"])
def test_baseline_output_matches_the_float64_reference_of_its_layout(method):
    q, k, v = _structured_qkv(seed=1)
    q = q + 0.5 * torch.randn(q.shape, generator=torch.Generator().manual_seed(2))  # less peaked, all blocks matter
    layout = method(_call(9, 10, method), q, k, v)
    out = block_sparse_attention(q, k, v, layout)
    mask = layout.to_dense()
    ref, _ = attention_ref(q, k, v, mask)
    lowp, _ = attention_ref(q, k, v, mask, upcast=False)
    assert_close_to_reference(out, ref, lowp)


def test_static_window_is_one_mode_for_every_head_with_text_dense():
    method = StaticWindowAttention(rows=1, block_size=BLOCK)
    layout_with_text = TokenLayout(4, 16, 4, text_len=16, text_position="after")
    layout = method(_call(9, 10, method, layout_with_text), *_structured_qkv()[:2], None)
    assert layout.shape[1] == 1  # one pattern broadcast over the heads
    full, partial = layout.block_maps()
    expected = mode_block_map(Diagonal(1), layout_with_text, BLOCK)
    assert torch.equal((full | partial)[0, 0], expected)
    assert bool(expected[-1].all()) and bool(expected[:, -1].all())  # the text block row and column


def test_dense_warmup_scales_with_the_step_count():
    assert [dense_warmup_steps(n, 0.2) for n in (50, 8, 4, 1)] == [10, 2, 1, 0]
    method = StaticWindowAttention(block_size=BLOCK)
    assert _call(1, 8, method).prepared is None  # step 1 of 8: still dense
    layout = _call(2, 8, method).prepared  # step 2 of 8: the window, Diagonal(2) for every head
    full, partial = layout.block_maps()
    assert torch.equal((full | partial)[0, 0], mode_block_map(Diagonal(2), LAYOUT, BLOCK))
    with pytest.warns(UserWarning, match="assuming 50, for its dense warm-up"):
        assert _call(9, None, method).prepared is None


def test_spatial_window_is_matched_in_density_and_not_nested():
    for rows in (0, 1, 2):
        s = matched_spatial_rows(rows, LAYOUT, BLOCK)
        temporal = mode_density(MultiDiagonal(rows, None), LAYOUT, BLOCK)
        assert mode_density(Diagonal(s), LAYOUT, BLOCK) <= temporal
        assert s == LAYOUT.rows - 1 or mode_density(Diagonal(s + 1), LAYOUT, BLOCK) > temporal


def test_sampled_rows_are_video_tokens_spread_over_the_video():
    layout = TokenLayout(4, 16, 4, text_len=10, text_position="before")
    rows = sampled_video_rows(layout, 32)
    assert len(rows) == 32 and int(rows.min()) >= 10 and int(rows.max()) < layout.seq_len
    assert len(set((rows - 10).remainder(4).tolist())) > 1  # not one column only


@pytest.mark.parametrize("kwargs, match", [
    (dict(rows=-1), "rows must be an integer >= 0"),
    (dict(block_size=100), "block_size 100"),
    (dict(warmup_fraction=1.5), "warmup_fraction"),
    (dict(sample_rows=0), "sample_rows"),
])
def test_bad_arguments_say_what_to_give(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpatialTemporalAttention(**kwargs)


def test_unsupported_dtype_and_head_dim_are_refused():
    method = StaticWindowAttention(block_size=BLOCK)
    with pytest.raises(ValueError, match="cast the pipeline"):
        _call(9, 10, method, dtype=torch.float64)
    with pytest.raises(ValueError, match="FullAttention"):
        method.validate(ModelInfo("AnyVideoDiT", 1, 2, 8, ("blocks.0.attn",), "none", (1, 2, 2)))


@pytest.mark.slow
def test_baselines_run_through_the_proxy_pipeline():
    from pipelines.apply import apply_sparse_attention
    from pipelines.proxy import SMOKE_CONFIG, build_proxy_pipeline

    pipe = build_proxy_pipeline(SMOKE_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(height=SMOKE_CONFIG.height, width=SMOKE_CONFIG.width, num_frames=SMOKE_CONFIG.frames,
                  num_inference_steps=3, max_sequence_length=16, output_type="latent")
    method = SpatialTemporalAttention(rows=0, block_size=16, warmup_fraction=0.34)
    with apply_sparse_attention(pipe, method):
        out = pipe("a red circle moves right", generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert torch.isfinite(out).all()
    # steps 1 and 2 of 3, both CFG branches, 2 layers x 3 heads each
    assert sum(method.counts.values()) == 2 * 2 * 2 * 3
