"""Per-batch key lengths (``kv_lens``, flash-attention's ``seqused_k``) in every op, on both paths.

Keys at or past kv_lens[b] are padding for batch b (HunyuanVideo's padded text sits at the end of
its [video | text] sequence). The kernels must equal the float64 reference under the layout AND the
key padding, within 2x PyTorch's own error; a padded key must never reach the output, not even a
NaN stored there; kv_lens 0 gives empty rows (zeros, lse = -inf).
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close_to_reference, diffusers_qkv, fresh_generator, lse_lowp, mass_lowp
from kernels.attention import attention_with_lse, block_attention_mass, block_sparse_attention
from kernels.block_layout import BlockLayout
from kernels.reference import attention_ref, block_attention_mass_ref, key_padding_ref
from test_kernels import DEVICE, random_layout

PATHS = [pytest.param("triton", id="triton"), pytest.param("torch", id="torch-fallback")]


@pytest.fixture(params=PATHS)
def path(request):
    """'triton' (the kernels; the CPU interpreter here) or 'torch' (the PyTorch fallback)."""
    if request.param == "torch":
        if DEVICE == "cuda":
            pytest.skip("the fallback path serves CPU tensors")
        request.getfixturevalue("fallback")
    return request.param


def _dev(*ts):
    return tuple(t.to(DEVICE) for t in ts)


def _check(q, k, v, mask, kv_lens, out, lse, name):
    q, k, v = (t.cpu() for t in (q, k, v))
    keys = key_padding_ref(kv_lens, k.shape[2])
    full_mask = keys if mask is None else mask.cpu() & keys
    ref, ref_lse = attention_ref(q, k, v, full_mask)
    lowp, _ = attention_ref(q, k, v, full_mask, upcast=False)
    assert_close_to_reference(out.cpu(), ref, lowp, name=f"{name} out")
    assert_close_to_reference(lse.cpu(), ref_lse, lse_lowp(attention_ref, q, k, v, full_mask), name=f"{name} lse")
    return ref


# S = 200 with 64-blocks: lengths inside a block (37, 150), on a block edge (128), all keys (200),
# none (0), and one past the end (clamped to S).
KV_LENS = torch.tensor([150, 37, 128, 0, 200, 999])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_block_sparse_key_lengths(request, path, dtype):
    gen = fresh_generator(request)
    B, S = len(KV_LENS), 200
    layout = random_layout(gen, 1, 2, S, 64, p_full=0.5, p_part=0.3)
    q, k, v = _dev(*diffusers_qkv(B, S, 2, 64, dtype, gen=gen))
    out, lse = block_sparse_attention(q, k, v, layout, kv_lens=KV_LENS.to(DEVICE), return_lse=True)
    _check(q, k, v, layout.to_dense(), KV_LENS, out, lse, "block sparse")
    assert torch.equal(out[3].cpu(), torch.zeros_like(out[3].cpu())) and bool(torch.isneginf(lse[3]).all())


@pytest.mark.parametrize("block", [64, 128])
def test_dense_layout_and_dense_op_key_lengths(request, path, block):
    """The index-free dense loop (all-full layout, attention_with_lse) stops at each batch's length."""
    gen = fresh_generator(request)
    B, S = len(KV_LENS), 200
    q, k, v = _dev(*diffusers_qkv(B, S, 2, 128, torch.float16, gen=gen))
    kv = KV_LENS.to(DEVICE)
    out, lse = block_sparse_attention(q, k, v, BlockLayout.dense(S, block), kv_lens=kv, return_lse=True)
    _check(q, k, v, None, KV_LENS, out, lse, "dense layout")
    out2, lse2 = attention_with_lse(q, k, v, kv_lens=kv)
    _check(q, k, v, None, KV_LENS, out2, lse2, "attention_with_lse")


@pytest.mark.parametrize("cached", [False, True], ids=["fused", "cached-lse"])
def test_block_mass_key_lengths(request, path, cached):
    gen = fresh_generator(request)
    B, S, block = len(KV_LENS), 200, 64
    q, k, v = _dev(*diffusers_qkv(B, S, 2, 64, torch.bfloat16, gen=gen))
    kv = KV_LENS.to(DEVICE)
    lse_in = None
    if cached:
        _, lse_in = attention_ref(q.cpu(), k.cpu(), v.cpu(), key_padding_ref(KV_LENS, S))
        lse_in = lse_in.float().to(DEVICE)
    mass, lse = block_attention_mass(q, k, lse_in, block, kv_lens=kv, return_lse=True)
    ref_in = None if lse_in is None else torch.where(torch.isneginf(lse_in.cpu()), float("inf"), lse_in.cpu())
    ref, ref_lse = block_attention_mass_ref(q.cpu(), k.cpu(), ref_in, block, kv_lens=KV_LENS)
    lowp, lowp_lse = mass_lowp(q.cpu(), k.cpu(), None if lse_in is None else lse_in.cpu(), block, kv_lens=KV_LENS)
    assert_close_to_reference(mass.cpu(), ref, lowp, name="mass")
    if not cached:
        assert_close_to_reference(lse.cpu(), ref_lse, lowp_lse, name="mass lse")
    # Key blocks wholly past a batch's length carry no mass.
    assert bool((mass[1, :, :, 1:] == 0).all()) and bool((mass[3] == 0).all())


def test_nan_in_padded_or_unlisted_keys_stays_out(request, path):
    """A NaN value stored at a padded key, or at a key no row's layout lists, reaches no row."""
    gen = fresh_generator(request)
    S = 200
    q, k, v = diffusers_qkv(2, S, 1, 64, torch.float32, gen=gen)
    v = v.clone()
    v[:, :, 190] = float("nan")  # padded for both batches below
    kv = torch.tensor([180, 100])
    q, k, v, kv = _dev(q, k, v, kv)
    layout = BlockLayout.from_mask_mod(lambda b, h, qi, ki: (qi // 64) == (ki // 64), None, None, S, S, block_size=64)
    for out in (block_sparse_attention(q, k, v, layout, kv_lens=kv), attention_with_lse(q, k, v, kv_lens=kv)[0]):
        assert not bool(torch.isnan(out).any()), "a NaN at a padded key must not reach the output"
    v[:, :, 10] = float("nan")  # a real key, listed only for query block 0
    out = block_sparse_attention(q, k, v, layout, kv_lens=kv).cpu()
    assert bool(torch.isnan(out[:, :, :64]).all()), "rows that attend the NaN key must show it"
    assert not bool(torch.isnan(out[:, :, 64:]).any()), "rows that never attend a NaN key must stay finite"


def test_key_lengths_bad_input():
    q, k, v = diffusers_qkv(2, 64, 1, 64, torch.float16, gen=torch.Generator().manual_seed(0))
    q, k, v = _dev(q, k, v)
    layout = BlockLayout.dense(64, 64)
    with pytest.raises(TypeError, match="integer tensor"):
        block_sparse_attention(q, k, v, layout, kv_lens=torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="integer tensor"):
        attention_with_lse(q, k, v, kv_lens=[3, 4])
    with pytest.raises(ValueError, match=r"kv_lens must be \[B\] = \[2\]"):
        block_attention_mass(q, k, None, 64, kv_lens=torch.tensor([3]))


def test_key_lengths_past_int32_clamp_to_the_keys_instead_of_wrapping():
    """kv_lens >= 2^31 means "every key" (clamped to Skv), not the negative number int32 makes of it."""
    q, k, v = _dev(*diffusers_qkv(2, 64, 1, 64, torch.float32, gen=torch.Generator().manual_seed(0)))
    huge = torch.tensor([2**31, 2**32 + 5], dtype=torch.int64)
    every = torch.tensor([64, 64], dtype=torch.int64)
    out, lse = attention_with_lse(q, k, v, kv_lens=huge)
    want, want_lse = attention_with_lse(q, k, v, kv_lens=every)
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    assert torch.isfinite(lse).all()


@pytest.mark.parametrize("scale", ["0.5", float("nan"), float("inf"), True, [0.5]])
def test_scale_must_be_a_finite_number(scale):
    q, k, v = _dev(*diffusers_qkv(1, 64, 1, 64, torch.float32, gen=torch.Generator().manual_seed(0)))
    layout = BlockLayout.dense(64, 64)
    for call in (lambda: block_sparse_attention(q, k, v, layout, scale=scale),
                 lambda: attention_with_lse(q, k, v, scale=scale),
                 lambda: block_attention_mass(q, k, None, 64, scale=scale)):
        with pytest.raises((TypeError, ValueError), match=r"scale must be a finite number .*got"):
            call()
