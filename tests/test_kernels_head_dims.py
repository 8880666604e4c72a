"""Head dims that are not powers of two (Allegro's 96, also 48 and 80) in every public op, on both
paths: the Triton path zero-pads q, k, v to the next power of two and slices the output back; the
PyTorch path computes at D. Each op must equal its float64 reference at D's own softmax scale
1/sqrt(D) (never the padded D's) within 2x PyTorch's own error, at a length that is not a multiple
of the block, with partial tiles, key padding and empty rows; outputs come back at D with q's
strides. Each check also shows that the exact answer at the padded D's scale misses the same
tolerance, so a launcher that scaled by the padded D fails here.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_close_to_reference, diffusers_qkv, fresh_generator, lse_lowp, mass_lowp
from kernels.attention import attention_with_lse, block_attention_mass, block_sparse_attention
from kernels.block_layout import BlockLayout
from kernels.limits import kernel_head_dim
from kernels.reference import attention_ref, block_attention_mass_ref, key_padding_ref
from test_kernels import DEVICE, random_layout
from test_kernels_key_padding import path  # noqa: F401  (fixture: the Triton path, then the PyTorch fallback)

HEAD_DIMS = [
    pytest.param(96, torch.bfloat16, id="D96-bf16"),  # Allegro: runs as 128
    pytest.param(48, torch.float16, id="D48-fp16"),  # runs as 64
    pytest.param(80, torch.float32, id="D80-fp32"),  # runs as 128
]
S, S_KV, BLOCK = 200, 233, 64  # not multiples of the block
KV_LENS = torch.tensor([150, 0])  # inside a block; none at all (every row of sample 1 empty)


def _dev(*ts):
    return tuple(t.to(DEVICE) for t in ts)


def _wrong_scale(d: int) -> float:
    """The scale a launcher would use if it read the padded tensors' D."""
    assert kernel_head_dim(d) != d
    return 1.0 / math.sqrt(kernel_head_dim(d))


def assert_rejected(wrong, ref64, lowp_ref, name):
    """The exact answer at the padded D's scale, ``wrong``, fails the check the kernel passes."""
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close_to_reference(wrong, ref64, lowp_ref, name=name)


def _check(q, k, v, mask, out, lse, name, scale=None):
    """out / lse against the float64 reference under ``mask`` (bool, True = keep) at ``scale``
    (None: 1/sqrt(D), and then the padded D's scale must fail the same check)."""
    q, k, v = (t.cpu() for t in (q, k, v))
    assert out.shape == q.shape and out.dtype == q.dtype, f"{name}: output {tuple(out.shape)} {out.dtype}"
    ref, ref_lse = attention_ref(q, k, v, mask, scale=scale)
    lowp, _ = attention_ref(q, k, v, mask, scale=scale, upcast=False)
    assert_close_to_reference(out.cpu(), ref, lowp, name=f"{name} out")
    assert_close_to_reference(lse.cpu(), ref_lse, lse_lowp(attention_ref, q, k, v, mask, scale=scale), name=f"{name} lse")
    if scale is None:
        wrong, wrong_lse = attention_ref(q, k, v, mask, scale=_wrong_scale(q.shape[-1]))
        assert_rejected(wrong, ref, lowp, f"{name} out")
        assert_rejected(wrong_lse, ref_lse, lse_lowp(attention_ref, q, k, v, mask), f"{name} lse")


@pytest.mark.parametrize("D, dtype", HEAD_DIMS)
def test_block_sparse_attention(request, path, D, dtype):  # noqa: F811
    """Partial tiles and empty blocks, a query block with no key at all, a sample with no real key;
    Sq != Skv; the output with q's strides."""
    gen = fresh_generator(request)
    layout = random_layout(gen, 1, 2, (S, S_KV), BLOCK, p_full=0.4, p_part=0.4)
    full, part = layout.block_maps()
    full[:, 0, 1] = part[:, 0, 1] = False  # head 0, query block 1: no key -> empty rows
    layout = BlockLayout.from_block_maps(full, part, block_size=BLOCK, seq_lengths=(S, S_KV),
                                         tile_ids=layout.tile_map(), tile_masks=layout.tile_masks)
    assert layout.has_partial
    q, k, v = _dev(*diffusers_qkv(2, S, 2, D, dtype, gen=gen, S_kv=S_KV, scale=1.5))
    out, lse = block_sparse_attention(q, k, v, layout, kv_lens=KV_LENS.to(DEVICE), return_lse=True)
    assert out.stride() == q.stride(), "output must come back with q's strides"
    mask = layout.to_dense() & key_padding_ref(KV_LENS, S_KV)
    empty = ~mask.expand(2, 2, S, S_KV).any(-1)
    assert bool(empty[0, 0, BLOCK:2 * BLOCK].all()) and bool(empty[1].all())
    assert torch.equal(out.cpu()[empty], torch.zeros_like(out.cpu()[empty])) and bool(torch.isneginf(lse.cpu()[empty]).all())
    _check(q, k, v, mask, out, lse, "block sparse")
    # The caller's scale reaches the kernel unchanged too.
    out, lse = block_sparse_attention(q, k, v, layout, kv_lens=KV_LENS.to(DEVICE), return_lse=True, scale=0.05)
    _check(q, k, v, mask, out, lse, "block sparse, scale 0.05", scale=0.05)


@pytest.mark.parametrize("D, dtype", HEAD_DIMS)
def test_attention_with_lse_and_the_dense_layout(request, path, D, dtype):  # noqa: F811
    """The dense op and an all-full layout (the index-free loop), with key padding."""
    gen = fresh_generator(request)
    q, k, v = _dev(*diffusers_qkv(2, S, 1, D, dtype, gen=gen, S_kv=S_KV, scale=1.5))
    kv = KV_LENS.to(DEVICE)
    mask = key_padding_ref(KV_LENS, S_KV)
    out, lse = attention_with_lse(q, k, v, kv_lens=kv)
    assert out.stride() == q.stride()
    _check(q, k, v, mask, out, lse, "attention_with_lse")
    out, lse = block_sparse_attention(q, k, v, BlockLayout.dense((S, S_KV), BLOCK), kv_lens=kv, return_lse=True)
    _check(q, k, v, mask, out, lse, "dense layout")


@pytest.mark.parametrize("D, dtype", HEAD_DIMS)
@pytest.mark.parametrize("cached", [False, True], ids=["fused", "cached-lse"])
def test_block_attention_mass(request, path, D, dtype, cached):  # noqa: F811
    """Block masses (and the fused LSE) at D's scale, with key padding; a cached LSE of -inf rows
    contributes nothing."""
    gen = fresh_generator(request)
    q, k, v = _dev(*diffusers_qkv(2, S, 2, D, dtype, gen=gen, S_kv=S_KV, scale=1.5))
    kv = KV_LENS.to(DEVICE)
    lse_in = None
    if cached:
        _, lse_in = attention_with_lse(q, k, v, kv_lens=kv)
    mass, lse = block_attention_mass(q, k, lse_in, BLOCK, kv_lens=kv, return_lse=True)
    q, k = q.cpu(), k.cpu()
    ref_in = None if lse_in is None else torch.where(torch.isneginf(lse_in.cpu()), float("inf"), lse_in.cpu())
    ref, ref_lse = block_attention_mass_ref(q, k, ref_in, BLOCK, kv_lens=KV_LENS)
    lowp, lowp_lse = mass_lowp(q, k, None if lse_in is None else lse_in.cpu(), BLOCK, kv_lens=KV_LENS)
    assert_close_to_reference(mass.cpu(), ref, lowp, name="mass")
    assert bool((mass[1] == 0).all()), "a sample with no real key has no mass"
    if not cached:
        assert_close_to_reference(lse.cpu(), ref_lse, lowp_lse, name="mass lse")
    wrong, _ = block_attention_mass_ref(q, k, ref_in, BLOCK, kv_lens=KV_LENS, scale=_wrong_scale(D))
    assert_rejected(wrong, ref, lowp, "mass")


@pytest.mark.parametrize("D", [8, 15, 257, 320])
def test_head_dims_outside_the_range_are_refused(D):
    q, k, v = diffusers_qkv(1, 64, 1, D, torch.float16, gen=torch.Generator().manual_seed(0))
    q, k, v = _dev(q, k, v)
    for call in (lambda: block_sparse_attention(q, k, v, BlockLayout.dense(64, 64)),
                 lambda: attention_with_lse(q, k, v),
                 lambda: block_attention_mass(q, k, None, 64)):
        with pytest.raises(ValueError, match=f"head_dim {D} is not supported: the attention kernels take 16 to 256"):
            call()
