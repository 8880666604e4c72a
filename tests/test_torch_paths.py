"""The PyTorch fallback (CPU tensors, no TRITON_INTERPRET): same functions as the kernels, one warning."""

from __future__ import annotations

import warnings

import pytest
import torch

import kernels.attention as attention_mod
from helpers import (
    BIG_HARD_SHAPES,
    HARD_SHAPE_ARGS,
    HARD_SHAPES,
    assert_close_to_reference,
    diffusers_qkv,
    fresh_generator,
    lse_lowp,
    mass_lowp,
    token_layout_for,
    video_text_mask_mod,
)
from kernels import torch_paths
from kernels.attention import attention_with_lse, block_attention_mass, block_sparse_attention
from kernels.block_layout import NO_TILE, BlockLayout
from kernels.reference import attention_ref, block_attention_mass_ref

FALLBACK_MESSAGE = "PyTorch fallback path"


def check_attention(q, k, v, mask, out, lse, *, scale=None, name=""):
    ref, ref_lse = attention_ref(q, k, v, mask, scale=scale)
    lowp, _ = attention_ref(q, k, v, mask, scale=scale, upcast=False)
    assert out.dtype == q.dtype and out.stride() == q.stride()
    assert_close_to_reference(out, ref, lowp, name=f"{name} out")
    assert lse.dtype == torch.float32
    assert_close_to_reference(lse, ref_lse, lse_lowp(attention_ref, q, k, v, mask, scale=scale), name=f"{name} lse")


def check_mass(q, k, lse_in, block, mass, lse_used):
    ref_lse_in = None if lse_in is None else torch.where(torch.isneginf(lse_in), float("inf"), lse_in)
    ref, ref_lse = block_attention_mass_ref(q, k, ref_lse_in, block)
    lowp, lowp_lse = mass_lowp(q, k, lse_in, block)
    assert_close_to_reference(mass, ref, lowp, name="mass")
    if lse_in is None:
        assert_close_to_reference(lse_used, ref_lse, lowp_lse, name="mass lse")
    else:
        assert torch.equal(lse_used, lse_in.float())


# --------------------------------------------------------------------------- same results
@pytest.mark.parametrize(HARD_SHAPE_ARGS, HARD_SHAPES[::2] + BIG_HARD_SHAPES[:1])
def test_fallback_block_sparse_hard_shapes(fallback, request, S, text_len, text_position, D, dtype, block):
    tokens = token_layout_for(S, text_len, text_position)
    layout = BlockLayout.from_mask_mod(video_text_mask_mod(tokens), None, None, S, S, block_size=block)
    H = 2 if S < 2000 else 1
    q, k, v = diffusers_qkv(1, S, H, D, dtype, gen=fresh_generator(request))
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    check_attention(q, k, v, layout.to_dense(), out, lse, name="fallback block sparse")


@pytest.mark.parametrize("strip_rows", [1024, 128, 100])
@pytest.mark.parametrize("block", [64, (128, 64)])
def test_fallback_strips_per_head_and_empty_rows(fallback, request, strip_rows, block):
    """Per-head layouts, rows with no key and Sq != Skv, processed in strips of query blocks
    (STRIP_ROWS below one block still makes progress)."""
    fallback.setattr(torch_paths, "STRIP_ROWS", strip_rows)
    gen = fresh_generator(request)
    Sq, Skv = 300, 350
    qblk, kvblk = (block, block) if isinstance(block, int) else block
    qb, kb = -(-Sq // qblk), -(-Skv // kvblk)
    r = torch.rand(2, 3, qb, kb, generator=gen)
    full, part = r < 0.3, (r >= 0.3) & (r < 0.6)
    full[0, 1, 1] = part[0, 1, 1] = False  # a query block with no keys
    tiles = torch.rand(3, qblk, kvblk, generator=gen) < 0.5
    tiles[0, :7] = False  # rows emptied by their tile
    tile_ids = torch.randint(NO_TILE, 3, (2, 3, qb, kb), generator=gen, dtype=torch.int32)
    layout = BlockLayout.from_block_maps(
        full, part, block_size=(qblk, kvblk), seq_lengths=(Sq, Skv), tile_ids=tile_ids, tile_masks=tiles
    )
    q, k, v = diffusers_qkv(2, Sq, 3, 64, torch.bfloat16, gen=gen, S_kv=Skv)
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    dense = layout.to_dense()
    empty = ~dense.any(-1)
    assert bool(empty[0, 1, qblk : 2 * qblk].all())
    assert torch.equal(out[empty], torch.zeros_like(out[empty])), "rows with no key must be exactly zero"
    assert bool(torch.isneginf(lse[empty]).all())
    check_attention(q, k, v, dense, out, lse, name="fallback strips")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_fallback_attention_with_lse(fallback, request, dtype):
    q, k, v = diffusers_qkv(2, 1023, 2, 64, dtype, gen=fresh_generator(request), S_kv=1100)
    out, lse = attention_with_lse(q, k, v)
    check_attention(q, k, v, None, out, lse, name="fallback dense")
    out, lse = attention_with_lse(q, k, v, scale=0.3)
    check_attention(q, k, v, None, out, lse, scale=0.3, name="fallback dense scaled")


@pytest.mark.parametrize("block", [64, 128])
def test_fallback_block_mass(fallback, request, block):
    gen = fresh_generator(request)
    q, k, v = diffusers_qkv(1, 300, 2, 128, torch.bfloat16, gen=gen, S_kv=333)
    mass, lse = block_attention_mass(q, k, None, block, return_lse=True)
    check_mass(q, k, None, block, mass, lse)
    # Exact LSE: every query row's softmax sums to 1.
    counts = torch.tensor([min(block, 300 - i * block) for i in range(mass.shape[2])], dtype=torch.float64)
    assert_close_to_reference(mass.sum(-1), counts.expand(1, 2, -1), mass_lowp(q, k, None, block)[0].double().sum(-1))
    # Cached LSE from a sparse pass, with a row that saw no key (lse = -inf: contributes nothing).
    layout = BlockLayout.from_mask_mod(lambda b, h, qi, ki: (qi - ki).abs() <= 50, None, None, 300, 333, block_size=64)
    _, sparse_lse = block_sparse_attention(q, k, v, layout, return_lse=True)
    sparse_lse[0, 0, :5] = float("-inf")
    mass, lse = block_attention_mass(q, k, sparse_lse, block, return_lse=True)
    check_mass(q, k, sparse_lse, block, mass, lse)


@pytest.mark.skipif(torch.cuda.is_available(), reason="compares with the CPU interpreter")
def test_fallback_equals_interpreter(fallback, request):
    """The fallback and the Triton kernel (interpreter) agree on one random layout."""
    gen = fresh_generator(request)
    S = 200
    full = torch.rand(1, 2, 4, 4, generator=gen) < 0.4
    part = (torch.rand(1, 2, 4, 4, generator=gen) < 0.5) & ~full
    tiles = torch.rand(2, 64, 64, generator=gen) < 0.6
    tile_ids = torch.randint(NO_TILE, 2, (1, 2, 4, 4), generator=gen, dtype=torch.int32)
    layout = BlockLayout.from_block_maps(full, part, block_size=64, seq_lengths=S, tile_ids=tile_ids, tile_masks=tiles)
    q, k, v = diffusers_qkv(1, S, 2, 64, torch.float32, gen=gen)
    out_fb, lse_fb = block_sparse_attention(q, k, v, layout, return_lse=True)
    fallback.undo()  # back to the interpreter for the same call
    assert attention_mod.interpreting()
    out_tr, lse_tr = block_sparse_attention(q, k, v, layout, return_lse=True)
    # Each within 2x of PyTorch's own fp32 error against float64 (check_attention), and close.
    check_attention(q, k, v, layout.to_dense(), out_fb, lse_fb, name="fallback")
    check_attention(q, k, v, layout.to_dense(), out_tr, lse_tr, name="interpreter")
    torch.testing.assert_close(out_fb, out_tr, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- exactly one warning
def _count_fallback_warnings(calls):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in calls:
            call()
    return [w for w in caught if issubclass(w.category, RuntimeWarning) and FALLBACK_MESSAGE in str(w.message)]


def test_fallback_warns_exactly_once(fallback, request):
    q, k, v = diffusers_qkv(1, 130, 2, 64, torch.float16, gen=fresh_generator(request))
    layout = BlockLayout.dense(130, 64)
    calls = [
        lambda: block_sparse_attention(q, k, v, layout),
        lambda: attention_with_lse(q, k, v),
        lambda: block_attention_mass(q, k, None, 64),
        lambda: block_sparse_attention(q, k, v, layout, return_lse=True),
        lambda: block_attention_mass(q, k, None, 128),
    ]
    found = _count_fallback_warnings(calls)
    assert len(found) == 1, f"expected exactly one fallback RuntimeWarning, got {len(found)}"
    message = str(found[0].message)
    assert "CUDA" in message and "TRITON_INTERPRET=1" in message
    assert torch_paths._warned
    # Already warned: silent from now on.
    assert _count_fallback_warnings(calls) == []
    # Re-armed: warns again, once.
    torch_paths._warned = set()
    assert len(_count_fallback_warnings(calls[:3] * 2)) == 1


def test_no_warning_on_the_kernel_path(request):
    """With the interpreter active (conftest) or on a GPU the kernels run and nothing warns."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (t.to(device) for t in diffusers_qkv(1, 64, 1, 16, torch.float32, gen=fresh_generator(request)))
    old = torch_paths._warned
    torch_paths._warned = set()
    try:
        assert _count_fallback_warnings([lambda: attention_with_lse(q, k, v)]) == []
        assert not torch_paths._warned
    finally:
        torch_paths._warned = old
