"""Every public attention op against its float64 reference twin, under the Triton interpreter on CPU.

Tolerances follow tests/helpers.py: the kernel's error against float64 must stay within
2x of PyTorch's own error at the same precision. The interpreter computes bf16 ``tl.dot`` wrongly;
the launcher upcasts dot operands there (DOT_FP32), so bf16 runs under the same strict rule.
"""

from __future__ import annotations

import functools

import pytest
import torch

from helpers import (
    HARD_SHAPE_ARGS,
    capture_cuda_graph,
    HARD_SHAPES,
    assert_close_to_reference,
    diffusers_qkv,
    fresh_generator,
    hard_shapes,
    lse_lowp,
    mass_lowp,
    token_layout_for,
    video_text_mask_mod,
)
from kernels.attention import attention_with_lse, block_attention_mass, block_sparse_attention
from kernels.block_layout import NO_TILE, BlockLayout
from kernels.reference import attention_ref, block_attention_mass_ref, block_sparse_attention_ref

if torch.cuda.is_available():
    DEVICE = "cuda"
else:
    DEVICE = "cpu"
    import os

    assert os.environ.get("TRITON_INTERPRET") == "1", "conftest must set TRITON_INTERPRET=1 on a CPU machine"

DTYPES = [
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float32, id="fp32"),
]


def to_dev(*ts):
    return tuple(t.to(DEVICE) for t in ts)


def check_attention(q, k, v, mask, out, lse=None, *, scale=None, name=""):
    """out (and lse) of a kernel vs attention_ref under ``mask`` (bool [B|1, H|1, Sq, Skv] or None)."""
    q, k, v = (t.cpu() for t in (q, k, v))
    mask = None if mask is None else mask.cpu()
    ref, ref_lse = attention_ref(q, k, v, mask, scale=scale)
    lowp, _ = attention_ref(q, k, v, mask, scale=scale, upcast=False)
    assert out.dtype == q.dtype, f"{name}: output dtype {out.dtype} != input dtype {q.dtype}"
    assert_close_to_reference(out, ref, lowp, name=f"{name} out")
    if lse is not None:
        assert lse.dtype == torch.float32 and tuple(lse.shape) == tuple(q.shape[:3])
        assert_close_to_reference(lse, ref_lse, lse_lowp(attention_ref, q, k, v, mask, scale=scale), name=f"{name} lse")
    return ref, ref_lse


def random_layout(gen, B, H, seq_lengths, block_size, *, p_full=0.25, p_part=0.3, n_tiles=4, p_tile=0.5):
    """Random full / partial block maps with random tiles (NO_TILE among them)."""
    qblk, kvblk = (block_size, block_size) if isinstance(block_size, int) else block_size
    q_len, kv_len = (seq_lengths, seq_lengths) if isinstance(seq_lengths, int) else seq_lengths
    qb, kb = -(-q_len // qblk), -(-kv_len // kvblk)
    r = torch.rand(B, H, qb, kb, generator=gen)
    full = r < p_full
    partial = (r >= p_full) & (r < p_full + p_part)
    tile_ids = torch.randint(NO_TILE, n_tiles, (B, H, qb, kb), generator=gen, dtype=torch.int32)
    tile_masks = torch.rand(n_tiles, qblk, kvblk, generator=gen) < p_tile
    return BlockLayout.from_block_maps(
        full, partial, block_size=(qblk, kvblk), seq_lengths=(q_len, kv_len), tile_ids=tile_ids, tile_masks=tile_masks
    )


# =========================================================================== block_sparse_attention
@pytest.mark.parametrize(HARD_SHAPE_ARGS, hard_shapes())
def test_block_sparse_hard_shapes(request, S, text_len, text_position, D, dtype, block):
    """Video + text window layouts (full, partial-with-tiles and empty blocks) at awkward lengths."""
    tokens = token_layout_for(S, text_len, text_position)
    layout = BlockLayout.from_mask_mod(video_text_mask_mod(tokens), None, None, S, S, block_size=block)
    assert layout.has_partial and layout.density() < 1.0 or S < 2 * block
    H = 2 if S < 200 else 1  # the interpreter is slow: keep B*H small for the long ones
    q, k, v = to_dev(*diffusers_qkv(1, S, H, D, dtype, gen=fresh_generator(request)))
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    assert out.stride() == q.stride(), "output must come back with q's strides"
    check_attention(q, k, v, layout.to_dense(), out, lse, name=request.node.callspec.id)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B, H, seq_lengths, block_size",
    [
        pytest.param(2, 2, (200, 200), 64, id="B2H2-200-bs64"),
        pytest.param(1, 2, (300, 300), 128, id="B1H2-300-bs128"),
        pytest.param(1, 2, (150, 333), (64, 128), id="cross-150x333-rect64x128"),
        pytest.param(2, 1, (257, 190), (128, 64), id="cross-257x190-rect128x64"),
    ],
)
def test_block_sparse_random_layouts(request, dtype, B, H, seq_lengths, block_size):
    gen = fresh_generator(request)
    layout = random_layout(gen, B, H, seq_lengths, block_size)
    assert layout.has_partial
    # Sharper softmax (q scaled by 2) makes online-softmax rescaling bugs visible.
    q, k, v = diffusers_qkv(B, seq_lengths[0], H, 64, dtype, gen=gen, S_kv=seq_lengths[1])
    q = q * 2
    q, k, v = to_dev(q, k, v)
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    check_attention(q, k, v, layout.to_dense(), out, lse, name="random layout")


@pytest.mark.parametrize("dtype", DTYPES[:2])
@pytest.mark.parametrize("block", [64, 128])
def test_block_sparse_sliding_window(request, dtype, block):
    """A token-level window: only the diagonal band's blocks, all partial with deduplicated tiles."""
    S, window = 333, 40
    layout = BlockLayout.from_mask_mod(lambda b, h, q, k: (q - k).abs() <= window, None, None, S, S, block_size=block)
    assert layout.has_partial and 1 < layout.tile_masks.shape[0] <= 6
    q, k, v = to_dev(*diffusers_qkv(1, S, 2, 64, dtype, gen=fresh_generator(request), scale=1.5))
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    check_attention(q, k, v, layout.to_dense(), out, lse, name="window")
    # The reference twin of the op on the layout equals plain attention under the window itself:
    # the layout's element mask (its tiles) is exactly the mask_mod it was built from.
    idx = torch.arange(S)
    window_mask = (idx[:, None] - idx[None, :]).abs() <= window
    twin, twin_lse = block_sparse_attention_ref(q.cpu(), k.cpu(), v.cpu(), layout)
    want, want_lse = attention_ref(q.cpu(), k.cpu(), v.cpu(), window_mask)
    assert torch.equal(twin, want) and torch.equal(twin_lse, want_lse)


@pytest.mark.parametrize("dtype", DTYPES[:2])
@pytest.mark.parametrize("S, block", [(113, 64), (300, 128)])
def test_block_sparse_all_full(request, dtype, S, block):
    layout = BlockLayout.dense(S, block)
    q, k, v = to_dev(*diffusers_qkv(2, S, 1, 64, dtype, gen=fresh_generator(request)))
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    check_attention(q, k, v, None, out, lse, name="all full")


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sparse_all_empty(request, dtype):
    S = 200
    for layout in (
        BlockLayout.from_block_maps(torch.zeros(1, 1, 4, 4, dtype=torch.bool), block_size=64, seq_lengths=S),
        # Every block listed as partial, but every tile element masked: empty at the element level.
        BlockLayout.from_block_maps(
            torch.zeros(1, 1, 4, 4, dtype=torch.bool), torch.ones(1, 1, 4, 4, dtype=torch.bool),
            block_size=64, seq_lengths=S, tile_ids=torch.zeros(1, 1, 4, 4, dtype=torch.int32),
            tile_masks=torch.zeros(1, 64, 64, dtype=torch.bool),
        ),
    ):
        q, k, v = to_dev(*diffusers_qkv(1, S, 2, 64, dtype, gen=fresh_generator(request)))
        out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
        assert torch.equal(out.cpu(), torch.zeros_like(out.cpu())), "an empty layout must give exact zeros"
        assert bool(torch.isneginf(lse).all()), "an empty row's lse must be -inf"


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sparse_some_rows_empty(request, dtype):
    """Query blocks with no key block, and rows emptied inside partial blocks by their tiles:
    exactly zeros and lse = -inf there, no NaN anywhere, the other rows right."""
    gen = fresh_generator(request)
    S, blk = 300, 64
    layout = random_layout(gen, 1, 2, S, blk, p_full=0.3, p_part=0.4)
    full, part = layout.block_maps()
    full[:, 0, 1] = part[:, 0, 1] = False  # head 0, query block 1: no blocks at all
    full[:, 1, 4] = part[:, 1, 4] = False  # head 1, the last (short) query block
    tiles = torch.ones(2, blk, blk, dtype=torch.bool)
    tiles[0, 5:9] = False  # tile 0 empties rows 5..8 of its block
    tiles[1, :, 30:] = False
    part[:, :, 2] = True  # query block 2: only partial blocks, all with tile 0
    full[:, :, 2] = False
    tile_ids = torch.where(part, 1, NO_TILE).to(torch.int32)
    tile_ids[:, :, 2] = 0
    layout = BlockLayout.from_block_maps(full, part, block_size=blk, seq_lengths=S, tile_ids=tile_ids, tile_masks=tiles)
    dense = layout.to_dense()
    empty_rows = ~dense.any(-1)  # [1, 2, S]
    assert bool(empty_rows[0, 0, 64:128].all()) and bool(empty_rows[0, 1, 256:].all())
    assert bool(empty_rows[0, :, 128 + 5 : 128 + 9].all()) and not bool(empty_rows[0, :, 128 + 9].any())
    q, k, v = to_dev(*diffusers_qkv(1, S, 2, 64, dtype, gen=gen))
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    out, lse = out.cpu(), lse.cpu()
    assert not bool(torch.isnan(out).any() or torch.isnan(lse).any())
    e = empty_rows[0]
    assert torch.equal(out[0][e], torch.zeros_like(out[0][e])), "empty rows must be exactly zero"
    assert bool(torch.isneginf(lse[0][e]).all()), "empty rows must have lse = -inf"
    assert bool(torch.isfinite(lse[0][~e]).all())
    check_attention(q, k, v, dense, out, lse, name="some rows empty")


@pytest.mark.parametrize(
    "layout_bh, qkv_bh",
    [
        pytest.param((1, 1), (2, 3), id="broadcast-both"),
        pytest.param((2, 1), (2, 3), id="per-batch"),
        pytest.param((1, 3), (2, 3), id="per-head-broadcast-batch"),
        pytest.param((2, 3), (2, 3), id="per-batch-and-head"),
    ],
)
def test_block_sparse_broadcast_layouts(request, layout_bh, qkv_bh):
    gen = fresh_generator(request)
    S = 200
    layout = random_layout(gen, *layout_bh, S, 64, p_full=0.3, p_part=0.3)
    dense = layout.to_dense()
    if layout_bh[1] == 3:
        assert not torch.equal(dense[:, 0], dense[:, 1]), "heads should have different layouts"
    q, k, v = to_dev(*diffusers_qkv(*qkv_bh[:1], S, qkv_bh[1], 64, torch.float16, gen=gen))
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    check_attention(q, k, v, dense, out, lse, name="broadcast")
    # Broadcasting must equal an explicit per-(b, h) layout.
    expanded = BlockLayout.from_block_maps(
        *(m.expand(*qkv_bh, -1, -1) for m in layout.block_maps()),
        block_size=64, seq_lengths=S, tile_ids=layout.tile_map().expand(*qkv_bh, -1, -1), tile_masks=layout.tile_masks,
    )
    assert torch.equal(block_sparse_attention(q, k, v, expanded).cpu(), out.cpu())


def test_block_sparse_per_head_layouts_h3(request):
    """H=3 heads of different patterns in one launch: window, causal, text columns."""
    S = 256
    gen = fresh_generator(request)

    def mask_mod(b, h, q, k):
        return torch.where(h == 0, (q - k).abs() <= 30, torch.where(h == 1, k <= q, k < 20))

    layout = BlockLayout.from_mask_mod(mask_mod, None, 3, S, S, block_size=64)
    assert layout.shape[:2] == (1, 3)
    q, k, v = to_dev(*diffusers_qkv(1, S, 3, 64, torch.bfloat16, gen=gen))
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    check_attention(q, k, v, layout.to_dense(), out, lse, name="per head")
    # Each head alone equals the op on that head with its own layout.
    for h in range(3):
        one = BlockLayout.from_mask_mod(lambda b, hh, qq, kk, h=h: mask_mod(b, torch.tensor(h), qq, kk), None, None, S, S, block_size=64)
        alone = block_sparse_attention(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], one)
        assert torch.equal(alone.cpu(), out[:, h : h + 1].cpu())


def test_block_sparse_return_lse_and_scale(request):
    gen = fresh_generator(request)
    S = 150
    layout = random_layout(gen, 1, 1, S, 64)
    q, k, v = to_dev(*diffusers_qkv(1, S, 2, 64, torch.float32, gen=gen))
    out_only = block_sparse_attention(q, k, v, layout)
    assert isinstance(out_only, torch.Tensor)
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    assert torch.equal(out_only, out)
    scaled, scaled_lse = block_sparse_attention(q, k, v, layout, scale=0.37, return_lse=True)
    assert not torch.allclose(scaled, out)
    check_attention(q, k, v, layout.to_dense(), scaled, scaled_lse, scale=0.37, name="scale")


def test_block_sparse_any_strides(request):
    """q from a diffusers view, k contiguous, v sliced out of a packed qkv tensor: strides differ."""
    gen = fresh_generator(request)
    B, S, H, D = 1, 200, 2, 64
    packed = torch.randn(B, S, 3, H, D, generator=gen).to(torch.float16)
    q = packed[:, :, 0].transpose(1, 2)
    k = packed[:, :, 1].transpose(1, 2).contiguous()
    v = packed[:, :, 2].transpose(1, 2)
    assert len({q.stride(), k.stride(), v.stride()}) == 2
    layout = random_layout(gen, 1, 1, S, 64)
    q, k, v = to_dev(q, k, v)
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    check_attention(q, k, v, layout.to_dense(), out, lse, name="strides")
    # Contiguous q: contiguous output.
    out_c = block_sparse_attention(q.contiguous(), k, v, layout)
    assert out_c.is_contiguous() and torch.equal(out_c, out)


def test_output_strides_follow_q(request):
    q, k, v = to_dev(*diffusers_qkv(2, 130, 3, 64, torch.bfloat16, gen=fresh_generator(request)))
    layout = BlockLayout.dense(130, 64)
    out = block_sparse_attention(q, k, v, layout)
    assert out.stride() == q.stride()
    # Transposing back to diffusers' [B, S, H, D] is free: a contiguous tensor, no copy.
    assert out.transpose(1, 2).is_contiguous()
    out2, _ = attention_with_lse(q, k, v)
    assert out2.stride() == q.stride()


@pytest.mark.parametrize("kv_block", [48, 80])
def test_kv_block_not_power_of_two_is_refused(request, kv_block):
    """The kernel loads BLOCK_N-wide key tiles that must divide KV_BLOCK: a layout of 48- or
    80-token key blocks (valid for FlexAttention) is refused with a message, on the block-list
    path (a causal layout) and for an all-full layout alike, never computed wrongly."""
    S = 192
    q, k, v = to_dev(*diffusers_qkv(1, S, 1, 64, torch.float32, gen=fresh_generator(request)))
    causal = BlockLayout.from_mask_mod(lambda b, h, qi, ki: ki <= qi, None, None, S, S, block_size=(64, kv_block))
    for layout in (causal, BlockLayout.dense(S, (64, kv_block))):
        with pytest.raises(ValueError, match="not served by the kernel"):
            block_sparse_attention(q, k, v, layout)


def test_block_sparse_head_patterns(request):
    """Heads that share a stored pattern (head_patterns), and a view over the same bank with
    another head table, compute exactly what the unshared per-head layout computes."""
    gen = fresh_generator(request)
    S, H = 200, 5

    def mm(b, h, q, k):
        return torch.where(h % 2 == 0, (q - k).abs() <= 40, k <= q)

    shared = BlockLayout.from_mask_mod(mm, None, H, S, S, block_size=64)
    assert shared.num_patterns == 2 and shared.head_patterns is not None
    unshared = BlockLayout.from_block_maps(*shared.block_maps(), block_size=64, seq_lengths=S,
                                           tile_ids=shared.tile_map(), tile_masks=shared.tile_masks,
                                           share_head_patterns=False)
    q, k, v = to_dev(*diffusers_qkv(2, S, H, 64, torch.float16, gen=gen))
    out, lse = block_sparse_attention(q, k, v, shared, return_lse=True)
    check_attention(q, k, v, shared.to_dense(), out, lse, name="head patterns")
    assert torch.equal(out, block_sparse_attention(q, k, v, unshared))
    view = shared.with_head_patterns([1, 1, 0, 0, 1])
    out_v = block_sparse_attention(q, k, v, view)
    check_attention(q, k, v, view.to_dense(), out_v, name="head table view")


def test_block_sparse_one_entry_head_table_broadcasts(request):
    """A one-head layout with a head table (head_layout([mode])) serves every head of q."""
    from sparse_vdit.modes import Diagonal, head_layout
    from sparse_vdit.token_layout import TokenLayout

    tokens = TokenLayout(3, 4, 16)
    one = head_layout([Diagonal(1)], tokens, block_size=64)
    assert one.head_patterns is not None and one.shape[1] == 1
    q, k, v = to_dev(*diffusers_qkv(1, tokens.seq_len, 3, 64, torch.float16, gen=fresh_generator(request)))
    out = block_sparse_attention(q, k, v, one)
    assert torch.equal(out, block_sparse_attention(q, k, v, head_layout([Diagonal(1)] * 3, tokens, block_size=64)))
    check_attention(q, k, v, one.to_dense(), out, name="broadcast head table")


def test_block_sparse_int16_indices(request):
    """More than 127 key blocks: int16 index lists (a narrow band keeps the interpreter quick)."""
    S, blk = 2100, 16
    layout = BlockLayout.from_mask_mod(lambda b, h, q, k: (q - k).abs() <= 20, None, None, S, S, block_size=blk)
    assert layout.full_kv_indices.dtype == torch.int16 and layout.kv_indices.dtype == torch.int16
    q, k, v = to_dev(*diffusers_qkv(1, S, 1, 16, torch.float16, gen=fresh_generator(request)))
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    check_attention(q, k, v, layout.to_dense(), out, lse, name="int16 indices")


# --------------------------------------------------------------------------- errors
def _small_inputs(dtype=torch.float16, S=128, D=64):
    q, k, v = diffusers_qkv(1, S, 2, D, dtype, gen=torch.Generator().manual_seed(0))
    return to_dev(q, k, v)


def test_error_wrong_seq_lengths():
    q, k, v = _small_inputs(S=128)
    layout = BlockLayout.dense(256, 64)
    with pytest.raises(ValueError, match="build a new layout"):
        block_sparse_attention(q, k, v, layout)


def test_error_mismatched_dtypes():
    q, k, v = _small_inputs()
    with pytest.raises(TypeError, match="share one dtype"):
        block_sparse_attention(q, k.to(torch.bfloat16), v, BlockLayout.dense(128, 64))
    with pytest.raises(TypeError, match="share one dtype"):
        attention_with_lse(q, k, v.float())
    with pytest.raises(TypeError, match="share one dtype"):
        attention_with_lse(q.double(), k.double(), v.double())


def test_error_not_a_block_layout():
    q, k, v = _small_inputs()
    dense = BlockLayout.dense(128, 64)
    for bad in (dense.to_dense(), dense.to_flex_block_mask(), None):
        with pytest.raises(TypeError, match="BlockLayout"):
            block_sparse_attention(q, k, v, bad)


def test_error_shapes_and_layout_dims():
    q, k, v = _small_inputs()
    with pytest.raises(ValueError, match=r"\[B, H, S, D\]"):
        block_sparse_attention(q[0], k[0], v[0], BlockLayout.dense(128, 64))
    with pytest.raises(ValueError, match="disagree on B, H or D"):
        attention_with_lse(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="same shape"):
        attention_with_lse(q, k, v[:, :, :64])
    three_heads = BlockLayout.from_block_maps(torch.ones(1, 3, 2, 2, dtype=torch.bool), block_size=64, seq_lengths=128)
    with pytest.raises(ValueError, match="use 1 to broadcast"):
        block_sparse_attention(q, k, v, three_heads)
    with pytest.raises(ValueError, match="not served by the kernel"):
        block_sparse_attention(q, k, v, BlockLayout.dense(128, (256, 64)))
    with pytest.raises(ValueError, match="block_size 96 is not supported"):
        block_attention_mass(q, k, None, 96)
    with pytest.raises(ValueError, match=r"lse must be \[B, H, Sq\]"):
        block_attention_mass(q, k, torch.zeros(1, 2, 127), 64)


# =========================================================================== attention_with_lse
@pytest.mark.parametrize(HARD_SHAPE_ARGS, HARD_SHAPES)
def test_attention_with_lse_hard_shapes(request, S, text_len, text_position, D, dtype, block):
    H = 2 if S < 200 else 1
    q, k, v = to_dev(*diffusers_qkv(1, S, H, D, dtype, gen=fresh_generator(request)))
    out, lse = attention_with_lse(q, k, v)
    assert out.stride() == q.stride()
    check_attention(q, k, v, None, out, lse, name="dense")


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_with_lse_cross_lengths_and_scale(request, dtype):
    q, k, v = to_dev(*diffusers_qkv(2, 113, 1, 128, dtype, gen=fresh_generator(request), S_kv=290, scale=1.5))
    out, lse = attention_with_lse(q, k, v, scale=0.2)
    check_attention(q, k, v, None, out, lse, scale=0.2, name="dense cross")


def test_attention_with_lse_equals_dense_layout(request):
    """The dense op and the block-sparse op with an all-full layout run the same index-free loop:
    the same numbers, each within 2x of PyTorch's own error against float64."""
    q, k, v = to_dev(*diffusers_qkv(1, 200, 2, 64, torch.float32, gen=fresh_generator(request)))
    out_d, lse_d = attention_with_lse(q, k, v)
    dense = BlockLayout.dense(200, 128)
    assert dense.is_dense
    out_s, lse_s = block_sparse_attention(q, k, v, dense, return_lse=True)
    check_attention(q, k, v, None, out_d, lse_d, name="attention_with_lse")
    check_attention(q, k, v, None, out_s, lse_s, name="dense layout")
    assert torch.equal(out_d, out_s) and torch.equal(lse_d, lse_s)


# =========================================================================== block_attention_mass
def check_mass(q, k, lse_in, block, mass, lse_used=None, name="mass"):
    q, k = q.cpu(), k.cpu()
    lse_in = None if lse_in is None else lse_in.cpu()
    lse_ref_in = lse_in
    if lse_in is not None and bool(torch.isneginf(lse_in).any()):
        # Documented semantics: a row with lse = -inf (it saw no key) contributes nothing. The
        # reference twin returns inf there (see test_block_mass_ref_empty_rows), so give it +inf,
        # for which exp(s - lse) is exactly 0.
        lse_ref_in = torch.where(torch.isneginf(lse_in), float("inf"), lse_in)
    ref, ref_lse = block_attention_mass_ref(q, k, lse_ref_in, block)
    lowp, lowp_lse = mass_lowp(q, k, lse_in, block)
    assert mass.dtype == torch.float32
    assert_close_to_reference(mass, ref, lowp, name=name)
    if lse_used is not None:
        assert_close_to_reference(lse_used, ref_lse, lowp_lse, name=f"{name} lse")
    return ref


def assert_rows_sum_to_one(mass, q_len, block, lowp_mass, name):
    """With the exact LSE every query row's softmax sums to 1: block row i sums to its row count."""
    counts = torch.full((mass.shape[2],), float(block), dtype=torch.float64)
    counts[-1] = q_len - block * (mass.shape[2] - 1)
    want = counts.expand(*mass.shape[:3])
    assert_close_to_reference(mass.sum(-1), want, lowp_mass.double().sum(-1), name=f"{name} row sums")


@pytest.mark.parametrize(HARD_SHAPE_ARGS, HARD_SHAPES[:6])
def test_block_mass_fused_hard_shapes(request, S, text_len, text_position, D, dtype, block):
    """lse=None: the same call computes the exact LSE first."""
    H = 2 if S < 200 else 1
    q, k, _ = to_dev(*diffusers_qkv(1, S, H, D, dtype, gen=fresh_generator(request)))
    mass, lse = block_attention_mass(q, k, None, block, return_lse=True)
    qb, kb = -(-S // block), -(-S // block)
    assert tuple(mass.shape) == (1, H, qb, kb)
    check_mass(q, k, None, block, mass, lse, name="fused mass")
    assert_rows_sum_to_one(mass.cpu(), S, block, mass_lowp(q.cpu(), k.cpu(), None, block)[0], "fused mass")


@pytest.mark.parametrize(HARD_SHAPE_ARGS, HARD_SHAPES)
def test_block_mass_cached_lse_hard_shapes(request, S, text_len, text_position, D, dtype, block):
    """With the LSE cached from attention_with_lse (the AdaSpa search flow)."""
    H = 2 if S < 200 else 1
    q, k, v = to_dev(*diffusers_qkv(1, S, H, D, dtype, gen=fresh_generator(request)))
    _, lse = attention_with_lse(q, k, v) if S < 200 else attention_ref(q.cpu(), k.cpu(), v.cpu())
    lse = lse.float().to(DEVICE)
    mass, lse_used = block_attention_mass(q, k, lse, block, return_lse=True)
    assert torch.equal(lse_used.cpu(), lse.cpu()), "with a cached lse, the lse returned is that lse"
    check_mass(q, k, lse, block, mass, name="cached mass")
    assert_rows_sum_to_one(mass.cpu(), S, block, mass_lowp(q.cpu(), k.cpu(), lse.cpu(), block)[0], "cached mass")


@pytest.mark.parametrize("block", [64, 128])
def test_block_mass_partial_lse_and_cross_lengths(request, block):
    """A cached LSE that is not exact (from a sparse layout) and Sq != Skv; an lse of -inf (a row
    that saw no key) contributes nothing."""
    gen = fresh_generator(request)
    Sq, Skv = 150, 270
    q, k, v = to_dev(*diffusers_qkv(1, Sq, 2, 64, torch.bfloat16, gen=gen, S_kv=Skv))
    layout = random_layout(gen, 1, 2, (Sq, Skv), block, p_full=0.4, p_part=0.0)
    full, _ = layout.block_maps()
    full[0, 0, 0] = False  # head 0, query block 0: no key at all -> lse = -inf
    layout = BlockLayout.from_block_maps(full, block_size=block, seq_lengths=(Sq, Skv))
    _, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    assert bool(torch.isneginf(lse[0, 0, :block]).all())
    mass = block_attention_mass(q, k, lse, block)
    ref = check_mass(q, k, lse, block, mass, name="sparse-lse mass")
    assert bool((mass[0, 0, 0] == 0).all()), "rows with lse = -inf must contribute nothing"
    assert bool((ref[0, 0, 0] == 0).all())


def test_block_mass_ref_empty_rows():
    q = torch.randn(1, 1, 64, 16, generator=torch.Generator().manual_seed(1))
    lse = torch.zeros(1, 1, 64)
    lse[..., :3] = float("-inf")
    mass, _ = block_attention_mass_ref(q, q, lse, 32)
    assert bool(torch.isfinite(mass).all())
    want, _ = block_attention_mass_ref(q[:, :, 3:], q, lse[..., 3:], 32)  # rows 3.. only, same blocks of keys
    assert torch.allclose(mass.sum(2), want.sum(2))


def test_block_mass_non_contiguous_lse(request):
    gen = fresh_generator(request)
    q, k, v = to_dev(*diffusers_qkv(2, 130, 3, 64, torch.float16, gen=gen))
    _, lse = attention_ref(q.cpu(), k.cpu(), v.cpu())
    lse_t = lse.float().transpose(1, 2).contiguous().transpose(1, 2).to(DEVICE)  # [B, H, S] view, S-major
    assert not lse_t.is_contiguous()
    mass = block_attention_mass(q, k, lse_t, 64)
    check_mass(q, k, lse_t, 64, mass, name="strided lse")
    assert torch.equal(mass, block_attention_mass(q, k, lse_t.contiguous(), 64))


def test_block_mass_fused_equals_cached_exact(request):
    """The fused variant's own LSE, fed back as the cached LSE, gives the same mass."""
    q, k, _ = to_dev(*diffusers_qkv(1, 200, 2, 128, torch.float32, gen=fresh_generator(request)))
    mass_f, lse_f = block_attention_mass(q, k, None, 64, return_lse=True)
    mass_c = block_attention_mass(q, k, lse_f, 64)
    check_mass(q, k, None, 64, mass_f, lse_f, name="fused fp32")
    check_mass(q, k, lse_f, 64, mass_c, name="cached fp32")
    assert_rows_sum_to_one(mass_f.cpu(), 200, 64, mass_lowp(q.cpu(), k.cpu(), None, 64)[0], "fused fp32")


# =========================================================================== torch.compile
def _compile_case(request):
    gen = fresh_generator(request)
    S = 150
    layout = random_layout(gen, 1, 2, S, 64)
    q, k, v = to_dev(*diffusers_qkv(1, S, 2, 64, torch.float16, gen=gen))
    return layout, q, k, v


def _fn(layout):
    def fn(q, k, v):
        out = block_sparse_attention(q, k, v, layout)
        dense, lse = attention_with_lse(q, k, v)
        mass = block_attention_mass(q, k, lse, 64)
        return out.transpose(1, 2) * 1.0, dense + 0.0, mass, lse

    return fn


def _check_compiled(layout, q, k, v, fn):
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    got = compiled(q, k, v)
    want = fn(q, k, v)
    for g, w in zip(got, want):
        assert torch.equal(g, w), "the compiled graph must run the same kernels"
    check_attention(q, k, v, layout.to_dense(), got[0].transpose(1, 2), name="compiled block sparse")
    check_attention(q, k, v, None, got[1], got[3], name="compiled dense")
    check_mass(q, k, got[3], 64, got[2], name="compiled mass")


def test_torch_compile_fullgraph_prepared_layout(request):
    """Under torch.compile(fullgraph=True) the custom ops and their fake implementations keep one
    graph, with a layout built before compilation."""
    layout, q, k, v = _compile_case(request)
    _check_compiled(layout, q, k, v, _fn(layout))


def test_torch_compile_fullgraph_layout_built_inside(request):
    """AdaSpa's flow inside one compiled graph: dense pass with LSE, block mass, a per-row top-k,
    a layout from those device tensors (from_kv_blocks, check=False: no host synchronisation)
    and the block-sparse pass over it."""
    import torch._dynamo

    _, q, k, v = _compile_case(request)
    S, blk, keep = q.shape[2], 64, 2

    def fn(q, k, v):
        _, lse = attention_with_lse(q, k, v)
        mass = block_attention_mass(q, k, lse, blk)
        idx = mass.topk(keep, dim=-1).indices
        num = torch.full(idx.shape[:3], keep, dtype=torch.int32, device=idx.device)
        layout = BlockLayout.from_kv_blocks(full_kv_num_blocks=num, full_kv_indices=idx, block_size=blk,
                                            seq_lengths=S, check=False)
        return block_sparse_attention(q, k, v, layout), idx

    torch._dynamo.reset()
    got, idx = torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v)
    want, want_idx = fn(q, k, v)
    assert torch.equal(idx, want_idx) and torch.equal(got, want)
    kb = -(-S // blk)
    chosen = torch.zeros(*idx.shape[:3], kb, dtype=torch.int32).scatter_add_(-1, idx.cpu(), torch.ones_like(idx.cpu(), dtype=torch.int32)) > 0
    layout = BlockLayout.from_block_maps(chosen, block_size=blk, seq_lengths=S)
    check_attention(q, k, v, layout.to_dense(), got, name="compiled top-k layout")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_layout_built_inside(request):
    """The same top-k flow captured in a CUDA graph: from_kv_blocks(check=False) reads nothing
    back to the host, so capture succeeds, and a replay on new inputs equals an eager run."""
    gen = fresh_generator(request)
    S, H, blk, keep = 1000, 2, 64, 3
    q, k, v = to_dev(*diffusers_qkv(1, S, H, 64, torch.bfloat16, gen=gen))
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()

    def fn():
        _, lse = attention_with_lse(q, k, v)
        idx = block_attention_mass(q, k, lse, blk).topk(keep, dim=-1).indices
        num = torch.full(idx.shape[:3], keep, dtype=torch.int32, device=idx.device)
        layout = BlockLayout.from_kv_blocks(full_kv_num_blocks=num, full_kv_indices=idx, block_size=blk,
                                            seq_lengths=S, check=False)
        return block_sparse_attention(q, k, v, layout)

    graph, out = capture_cuda_graph(fn)
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, fn())


def test_meta_tensors_give_shapes():
    """On the meta device (shape propagation, accelerate's empty weights) every op returns meta
    outputs of the right shapes instead of failing inside a host read; a layout moved there keeps
    its facts (no tensor is read)."""
    q = torch.empty(2, 3, 100, 64, device="meta", dtype=torch.bfloat16)
    layout = BlockLayout.from_mask_mod(lambda b, h, qi, ki: ki <= qi, None, None, 100, 100, block_size=64)
    out, lse = block_sparse_attention(q, q, q, layout, return_lse=True, kv_lens=torch.tensor([5, 9], device="meta"))
    assert out.device.type == "meta" and out.shape == q.shape and lse.shape == (2, 3, 100)
    assert attention_with_lse(q, q, q)[1].shape == (2, 3, 100)
    assert block_attention_mass(q, q, None, 64).shape == (2, 3, 2, 2)
    moved = layout.to("meta")
    assert moved.has_partial == layout.has_partial and moved.device.type == "meta"


def test_the_layout_argument_and_its_old_name():
    q, k, v = to_dev(*diffusers_qkv(1, 64, 1, 64, torch.float32, gen=torch.Generator().manual_seed(0)))
    layout = BlockLayout.dense(64, 64)
    out = block_sparse_attention(q, k, v, layout=layout)
    assert torch.equal(block_sparse_attention(q, k, v, block_mask=layout), out)
    with pytest.raises(TypeError, match="takes one layout"):
        block_sparse_attention(q, k, v, layout, block_mask=layout)
    with pytest.raises(TypeError, match="takes one layout"):
        block_sparse_attention(q, k, v)
