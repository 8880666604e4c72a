"""precision="fp8": the quantisation (kernels.fp8) and the FP8 kernel loop against float64 twins.

The kernel is checked against ``fp8_attention_ref``: float64 attention on the dequantized inputs,
so the tolerance is PyTorch's own error at the output dtype (2x, as every kernel test), plus, on a
GPU, the bound on what rounding P to float8 can change (the CPU interpreter keeps P in float32:
its float32 -> float8 cast rounds wrongly, see kernels/triton_block_sparse.py). The quantisation
itself is checked against e4m3's rounding bound, and the whole path against exact attention.
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl

from helpers import assert_close_to_reference, diffusers_qkv, fresh_generator, lse_lowp, token_layout_for
from kernels.attention import attention_with_lse, block_sparse_attention
from kernels.block_layout import BlockLayout
from kernels.fp8 import FP8_MAX, FP8_V_ALIGN, quantize_qkv
from kernels.reference import attention_ref, fp8_attention_ref, key_padding_ref
from kernels.triton_block_sparse import EXP2_POLY_ERROR, int_to_float, softmax_exp2
from test_kernels import DEVICE, random_layout

E4M3_HALF_ULP = 2.0 ** -4  # relative, normal values
E4M3_HALF_SUBNORMAL = 2.0 ** -10  # absolute, in units of the quantised value
# Hopper's FP8 MMA accumulates with fewer bits than fp32 (about 14, DeepSeek-V3's report). Measured
# on an H100 (benchmarks/RESULTS.md, 2026-12-07 22:17): the LSE erred by 1.4e-3 where the largest
# scale * sum_d |q_d k_d| was 21, about 2^-14 of it; the GPU tolerance allows 2^-9 of it (32x),
# still far below what a wrong scale or a missing LSE shift costs (errors of order 1).
FP8_ACCUMULATION_BITS = 9


@pytest.fixture(params=["e4m3", "int8"])
def qk(request, monkeypatch):
    """Q and K's format (kernels.fp8.FP8_QK): float8 e4m3, or int8 as SageAttention."""
    import kernels.fp8 as fp8_mod

    monkeypatch.setattr(fp8_mod, "FP8_QK", request.param)
    return request.param


def _dev(*ts):
    return tuple(t.to(DEVICE) for t in ts)


def _check(q, k, v, mask, kv_lens, out, lse, name, p_rel_error=0.0):
    """out / lse of the FP8 kernel against the twin (dequantized inputs), as the module says;
    ``p_rel_error``: the kernel's exp2 approximation (on every device)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    kv = None if kv_lens is None else kv_lens.to(q.device).clamp(0, k.shape[2]).to(torch.int32)
    fp8 = quantize_qkv(q, k, v, kv, scale=scale)
    fp8 = type(fp8)(*(t.cpu() for t in (fp8.q8, fp8.q_scale, fp8.k8, fp8.k_scale, fp8.v8t, fp8.v_scale, fp8.lse_shift)))
    keys = key_padding_ref(kv_lens, k.shape[2])
    full = keys if mask is None else (mask.cpu() if keys is None else mask.cpu() & keys)
    # P stays float32 on the interpreter: only the exp2 approximation's share of the bound applies
    ref, ref_lse, bound = fp8_attention_ref(fp8, full, scale=scale, p_rel_error=p_rel_error, p_rounded=out.is_cuda)
    dq, dk, dv = fp8.dequantized()
    lowp, _ = attention_ref(dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype), full, scale=scale, upcast=False)
    p_rounding = float(bound.max())
    lowp_err = float((lowp.double() - ref).abs().max())
    floor = 4 * torch.finfo(torch.float32).eps + p_rounding
    assert_close_to_reference(out.cpu(), ref, lowp, atol_floor=floor, name=f"{name} out")
    if out.is_cuda:  # elementwise: each entry within its own P-rounding bound (+ 2x PyTorch's error)
        excess = (out.cpu().double() - ref).abs() - bound - 2 * lowp_err
        worst = float(excess.max())
        assert worst <= 1e-6, f"{name}: an entry exceeds its P-rounding bound by {worst:.3e}"
    lse_ref_lowp = lse_lowp(attention_ref, dq, dk, dv, full, scale=scale) + fp8.lse_shift
    # On a GPU, FP8 tensor cores accumulate Q K^T with fewer bits than fp32 (an H100: the LSE 1.4e-3
    # from the twin at D = 64, where fp32 gives 1e-5): a score errs by a share of sum_d |q_d k_d|
    # (times the scale), and the LSE, a softmax-weighted mean of the scores, by the row's largest.
    accumulation = 0.0
    if out.is_cuda and fp8.q8.dtype == torch.float8_e4m3fn:  # int8 Q K^T is summed exactly (int32)
        terms = torch.einsum("bhqd,bhkd->bhqk", dq.abs(), dk.abs()) * scale
        if full is not None:
            terms = terms.masked_fill(~full.expand_as(terms), 0.0)
        accumulation = float(terms.amax()) * 2.0 ** -FP8_ACCUMULATION_BITS
    finite = ref_lse[torch.isfinite(ref_lse)]
    magnitude = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    floor = 4 * torch.finfo(torch.float32).eps * magnitude + accumulation + 1.01 * p_rel_error
    assert_close_to_reference(lse.cpu(), ref_lse, lse_ref_lowp, atol_floor=floor, name=f"{name} lse")
    return ref


# --------------------------------------------------------------------------- quantisation
@pytest.mark.parametrize("with_lens", [False, True], ids=["all-keys", "kv-lens"])
def test_quantize_qkv_rounding_and_invariants(request, with_lens):
    gen = fresh_generator(request)
    B, H, S, D = 3, 2, 75, 64
    q, k, v = diffusers_qkv(B, S, H, D, torch.bfloat16, gen=gen)
    k = (k.float() + 3.0 * torch.randn(1, H, 1, D, generator=gen)).bfloat16()  # a shared key offset, as in DiTs
    kv_lens = torch.tensor([75, 40, 0], dtype=torch.int32) if with_lens else None
    if with_lens:  # garbage in the padding must not reach a scale or the mean
        k[1, :, 40:] = float("nan")
        v[1, :, 40:] = float("inf")
    scale = 1.0 / math.sqrt(D)
    fp8 = quantize_qkv(q, k, v, kv_lens, scale=scale, qk="e4m3")
    assert FP8_MAX == torch.finfo(torch.float8_e4m3fn).max, "kernels.limits.FP8_MAX is e4m3's largest value"
    assert fp8.q8.dtype == fp8.k8.dtype == fp8.v8t.dtype == torch.float8_e4m3fn
    assert fp8.q8.stride() == q.stride(), "q8 keeps q's strides (the output is made like it)"
    assert fp8.v8t.shape == (B, H, D, -(-S // FP8_V_ALIGN) * FP8_V_ALIGN) and fp8.v8t.is_contiguous()
    assert bool(fp8.v8t[..., S:].float().eq(0).all()), "V's alignment padding is zero"
    for t in (fp8.q_scale, fp8.k_scale, fp8.v_scale, fp8.lse_shift):
        assert bool(torch.isfinite(t).all())
    dq, dk, dv = fp8.dequantized()
    real = torch.ones(B, 1, S, 1, dtype=torch.bool) if kv_lens is None else (
        torch.arange(S) < kv_lens.view(-1, 1)).view(B, 1, S, 1)
    count = real.sum(2, keepdim=True).clamp_min(1)
    mean = torch.where(real, k.double(), 0.0).sum(2, keepdim=True) / count
    smoothed = torch.where(real, k.double() - mean, 0.0)
    vz = torch.where(real, v.double(), 0.0)
    for name, x, deq, amax in (
        ("q", q.double(), dq, q.double().abs().amax(-1, keepdim=True)),
        ("k", smoothed, dk, smoothed.abs().amax(-1, keepdim=True)),
        ("v", vz, dv, vz.abs().amax(2, keepdim=True)),
    ):
        bound = E4M3_HALF_ULP * x.abs() + E4M3_HALF_SUBNORMAL / FP8_MAX * amax + 1e-6 * amax
        err = (deq - x).abs() - bound
        assert float(err.max()) <= 0, f"{name}: dequantized differs from the input by more than e4m3 rounding"
        assert float((deq - x).abs().max()) > 0, f"{name}: nothing was quantised"
    residual = (torch.where(real, dk, 0.0).sum(2, keepdim=True) / count).abs().max()
    assert float(residual) < 0.02 * float(dk.abs().max()), "K's shared offset is smoothed away (column means ~0)"
    shift = torch.einsum("bhqd,bhkd->bhq", q.double(), mean) * scale
    torch.testing.assert_close(fp8.lse_shift.double(), shift, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_lens", [False, True], ids=["all-keys", "kv-lens"])
def test_quantize_qk_int8(request, with_lens):
    """qk="int8": Q and K as int8 in [-127, 127], each within half a step (its scale / 2) of the
    input (K smoothed as for e4m3); V stays e4m3; the same lse_shift."""
    from kernels.limits import INT8_MAX

    gen = fresh_generator(request)
    B, H, S, D = 2, 2, 75, 128
    q, k, v = diffusers_qkv(B, S, H, D, torch.bfloat16, gen=gen)
    k = (k.float() + 3.0 * torch.randn(1, H, 1, D, generator=gen)).bfloat16()
    kv_lens = torch.tensor([75, 30], dtype=torch.int32) if with_lens else None
    scale = 1.0 / math.sqrt(D)
    e4m3 = quantize_qkv(q, k, v, kv_lens, scale=scale, qk="e4m3")
    int8 = quantize_qkv(q, k, v, kv_lens, scale=scale, qk="int8")
    assert int8.q8.dtype == int8.k8.dtype == torch.int8 and int8.v8t.dtype == torch.float8_e4m3fn
    assert int8.q8.stride() == q.stride()
    for name in ("v8t", "v_scale", "lse_shift"):
        assert torch.equal(getattr(int8, name).float(), getattr(e4m3, name).float()), f"{name} does not depend on qk"
    dq, dk, _ = int8.dequantized()
    real = torch.ones(B, 1, S, 1, dtype=torch.bool) if kv_lens is None else (
        torch.arange(S) < kv_lens.view(-1, 1)).view(B, 1, S, 1)
    mean = torch.where(real, k.double(), 0.0).sum(2, keepdim=True) / real.sum(2, keepdim=True)
    smoothed = torch.where(real, k.double() - mean, 0.0)
    for name, x8, scales, deq, x in (("q", int8.q8, int8.q_scale, dq, q.double()),
                                     ("k", int8.k8, int8.k_scale, dk, smoothed)):
        amax = x.abs().amax(-1)
        assert torch.equal(x8.abs().amax(-1).double(), torch.where(amax > 0, INT8_MAX, 0.0)), \
            f"{name}: each row's largest value maps to +-127"
        # half a step, plus float32's error in the scale and the (float32) smoothing
        bound = scales.double().unsqueeze(-1) * 0.5 + 1e-5 * amax.unsqueeze(-1)
        assert float(((deq - x).abs() - bound).max()) <= 0, f"{name}: differs from the input by more than half a step"
        assert float(((deq - x).abs() - 0.25 * scales.double().unsqueeze(-1)).max()) > 0, f"{name}: rounded at all"
    with pytest.raises(ValueError, match="one of .*e4m3.*int8"):
        quantize_qkv(q, k, v, scale=scale, qk="int4")


# --------------------------------------------------------------------------- the kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("block", [(64, 32), (64, 64)], ids=["64x32", "64x64"])
def test_block_sparse_fp8_random_layout(request, dtype, D, block, qk):
    """Full and partial blocks with tiles, a length that is not a multiple of the block, keys
    offset by a shared vector (the smoothing), rows with no block (empty)."""
    gen = fresh_generator(request)
    B, H, S = 2, 2, 200
    layout = random_layout(gen, B, H, S, block, p_full=0.35, p_part=0.3)
    q, k, v = diffusers_qkv(B, S, H, D, dtype, gen=gen, scale=1.5)
    k = (k.float() + 2.0 * torch.randn(1, H, 1, D, generator=gen)).to(dtype)
    q, k, v = _dev(q, k, v)
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True, precision="fp8")
    assert out.dtype == dtype and out.shape == q.shape and out.stride() == q.stride()
    _check(q, k, v, layout.to_dense(), None, out, lse, f"fp8 {block} {qk}")


@pytest.mark.parametrize("text_position", ["after", "before"])
def test_block_sparse_fp8_video_text_layout(request, text_position):
    """A BlockLayout from a mask_mod over video + text (text dense, video windowed)."""
    from helpers import video_text_mask_mod

    gen = fresh_generator(request)
    S, text = 113, 7
    tokens = token_layout_for(S, text, text_position)
    layout = BlockLayout.from_mask_mod(video_text_mask_mod(tokens), None, None, S, S, block_size=(64, 32))
    q, k, v = _dev(*diffusers_qkv(1, S, 2, 128, torch.bfloat16, gen=gen))
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True, precision="fp8")
    _check(q, k, v, layout.to_dense(), None, out, lse, f"fp8 text {text_position}")


def test_fp8_key_lengths_and_dense_loops(request, qk):
    """kv_lens (inside a block, on its edge, none, past the end) in the dense op and a dense
    layout; NaN stored in padded keys stays out; kv_lens 0 gives zeros and lse = -inf."""
    gen = fresh_generator(request)
    kv_lens = torch.tensor([150, 37, 128, 0, 999])
    B, S = len(kv_lens), 200
    q, k, v = diffusers_qkv(B, S, 2, 64, torch.bfloat16, gen=gen)
    k, v = k.clone(), v.clone()
    k[1, :, 37:] = float("nan")
    v[1, :, 37:] = float("nan")
    q, k, v = _dev(q, k, v)
    kv = kv_lens.to(DEVICE)
    out, lse = attention_with_lse(q, k, v, kv_lens=kv, precision="fp8")
    _check(q, k, v, None, kv_lens, out, lse, "fp8 attention_with_lse")
    assert torch.equal(out[3].cpu(), torch.zeros_like(out[3].cpu())) and bool(torch.isneginf(lse[3]).all())
    out2, lse2 = block_sparse_attention(q, k, v, BlockLayout.dense(S, 64), kv_lens=kv, return_lse=True, precision="fp8")
    _check(q, k, v, None, kv_lens, out2, lse2, "fp8 dense layout")


def test_fp8_close_to_exact_attention(request, qk):
    """The whole FP8 path against exact float64 attention of the unquantised inputs: SageAttention's
    measure (cosine similarity per row-flattened output) on inputs with a DiT-like key offset."""
    gen = fresh_generator(request)
    S, D = 256, 128
    q, k, v = diffusers_qkv(2, S, 2, D, torch.bfloat16, gen=gen)
    k = (k.float() + 4.0 * torch.randn(1, 2, 1, D, generator=gen)).bfloat16()
    q, k, v = _dev(q, k, v)
    out, lse = attention_with_lse(q, k, v, precision="fp8")
    ref, ref_lse = attention_ref(q.cpu(), k.cpu(), v.cpu())
    cos = torch.nn.functional.cosine_similarity(out.cpu().double().flatten(2), ref.flatten(2), dim=-1)
    assert float(cos.min()) >= 0.995, f"cosine similarity to exact attention {float(cos.min()):.5f} < 0.995"
    # The LSE is the unsmoothed keys' (lse_shift added back), up to the scores' quantisation error.
    assert float((lse.cpu().double() - ref_lse).abs().max()) < 0.1


# --------------------------------------------------------------------------- errors
def test_fp8_refusals(monkeypatch):
    q, k, v = diffusers_qkv(1, 64, 1, 64, torch.bfloat16)
    layout = BlockLayout.dense(64, 64)
    with pytest.raises(ValueError, match="precision must be one of"):
        block_sparse_attention(q, k, v, layout, precision="int8")
    q96 = torch.zeros(1, 1, 64, 96, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="head dims .* not 96.*precision=None"):
        attention_with_lse(q96, q96, q96, precision="fp8")
    small = BlockLayout.dense(64, 16)
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="KV_BLOCK >= 32"):
        block_sparse_attention(*_dev(q, k, v), small, precision="fp8")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="only in the Triton kernels on a CUDA GPU"):
        attention_with_lse(q, k, v, precision="fp8")


def test_fp8_under_torch_compile(request):
    """The FP8 op's fake implementation: a compiled call keeps one graph and the same result."""
    gen = fresh_generator(request)
    q, k, v = _dev(*diffusers_qkv(1, 128, 2, 64, torch.bfloat16, gen=gen))
    layout = random_layout(gen, 1, 2, 128, (64, 32), p_full=0.5, p_part=0.3).to(DEVICE)

    def f(q, k, v):
        return block_sparse_attention(q, k, v, layout, precision="fp8")

    eager = f(q, k, v)
    compiled = torch.compile(f, backend="eager", fullgraph=True)(q, k, v)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


@pytest.mark.parametrize("accumulate", ["tile", "mma"])
@pytest.mark.parametrize("dense", [False, True], ids=["layout", "dense"])
def test_fp8_accumulations(request, monkeypatch, dense, accumulate, qk):
    """SPARSE_VDIT_FP8_ACCUMULATE: tile (the default: each key tile's P x V added into fp32) and
    mma (the running sum in the MMA's accumulator), both Q/K formats, against the same twin (on
    the CPU interpreter both are the same fp32 dots)."""
    import kernels.attention as ops

    monkeypatch.setattr(ops, "FP8_ACCUMULATE", accumulate)
    gen = fresh_generator(request)
    B, H, S, D = 1, 2, 200, 128
    q, k, v = _dev(*diffusers_qkv(B, S, H, D, torch.bfloat16, gen=gen, scale=1.5))
    if dense:
        out, lse = attention_with_lse(q, k, v, precision="fp8")
        _check(q, k, v, None, None, out, lse, f"fp8 {accumulate} {qk}, dense")
    else:
        layout = random_layout(gen, B, H, S, (64, 64), p_full=0.35, p_part=0.3)
        out, lse = block_sparse_attention(q, k, v, layout, return_lse=True, precision="fp8")
        _check(q, k, v, layout.to_dense(), None, out, lse, f"fp8 {accumulate} {qk}, layout")


@triton.jit
def _math_probe(X, I, P, F, M: tl.constexpr, N: tl.constexpr, EXP2: tl.constexpr):
    """P = softmax_exp2(X) in mode EXP2, F = int_to_float(I); [M, N] row-major."""
    offs = tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :]
    tl.store(P + offs, softmax_exp2(tl.load(X + offs), M, N, EXP2))
    tl.store(F + offs, int_to_float(tl.load(I + offs)))


def test_int_to_float_and_exp2_poly():
    """The FP8 loop's arithmetic helpers (kernels.triton_block_sparse): int_to_float is exact for
    |x| < 2^22; exp2_poly is within EXP2_POLY_ERROR of 2^x for x in (-125, log2(448)] (P on
    float8's scale) and exactly 0 at and below -125 and at -inf; softmax_exp2's three modes agree with it column by column."""
    M, N = 16, 64
    x = -torch.cat([torch.linspace(0, 30, M * N - 8) ** 1.5, torch.tensor([124.9, 125.0, 125.6, 140.0, 0.0, -8.807,
                                                                              1e30, float("inf")])]).view(M, N)
    x = x.float().contiguous()
    ints = torch.randint(-(2**22) + 1, 2**22, (M, N), dtype=torch.int32)
    ints[0, :4] = torch.tensor([2**22 - 1, -(2**22) + 1, 0, -1], dtype=torch.int32)
    exact = torch.exp2(x.double())
    results = {}
    for mode in (0, 1, 2):
        p, f = torch.empty_like(x), torch.empty(M, N)
        p, f, xi, ii = (t.to(DEVICE) for t in (p, f, x, ints))
        _math_probe[(1,)](xi, ii, p, f, M=M, N=N, EXP2=mode)
        results[mode] = p.cpu().double()
        assert torch.equal(f.cpu().double(), ints.double()), "int_to_float is exact"
    tiny = x > -125.0
    poly = results[2]
    rel = ((poly - exact).abs() / exact)[tiny]
    assert float(rel.max()) <= EXP2_POLY_ERROR, f"exp2_poly's relative error {float(rel.max()):.2e}"
    assert float(rel.max()) > 1e-6, "the polynomial is an approximation (else this test checks nothing)"
    assert bool((poly[~tiny] == 0).all()), "0 at and below -125, and at -inf"
    # the unit's exp2 (subnormal results aside: the GPU's flushes them to zero)
    torch.testing.assert_close(results[0], exact.float().double(), rtol=2e-6, atol=float(torch.finfo(torch.float32).tiny))
    half = results[1]
    assert torch.equal(half[:, 1::2], poly[:, 1::2]) and torch.equal(half[:, 0::2], results[0][:, 0::2]), \
        "half: odd columns by the polynomial, even ones by the unit"


@pytest.mark.parametrize("exp2", ["half", "poly"])
def test_fp8_polynomial_exp2(request, monkeypatch, exp2, qk):
    """SPARSE_VDIT_FP8_EXP2 half / poly against the twin with the polynomial's error in its bound,
    a layout with partial blocks and key padding; a bad value is a clear error."""
    import kernels.attention as ops
    monkeypatch.setattr(ops, "FP8_EXP2", exp2)
    gen = fresh_generator(request)
    kv_lens = torch.tensor([200, 83])
    q, k, v = _dev(*diffusers_qkv(2, 200, 2, 64, torch.bfloat16, gen=gen, scale=1.5))
    layout = random_layout(gen, 2, 2, 200, (64, 64), p_full=0.35, p_part=0.3)
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True, precision="fp8", kv_lens=kv_lens.to(DEVICE))
    _check(q, k, v, layout.to_dense(), kv_lens, out, lse, f"fp8 exp2 {exp2} {qk}", p_rel_error=EXP2_POLY_ERROR)
    monkeypatch.setattr(ops, "FP8_EXP2", "mufu")
    unit = block_sparse_attention(q, k, v, layout, precision="fp8", kv_lens=kv_lens.to(DEVICE))
    assert not torch.equal(out, unit), f"exp2 {exp2} reached the kernel (its rounding differs from the unit's)"
    monkeypatch.setattr(ops, "FP8_EXP2", "fast")
    with pytest.raises(ValueError, match="FP8_EXP2 must be one of"):
        block_sparse_attention(q, k, v, layout, precision="fp8")


@pytest.mark.parametrize("with_lens", [False, True], ids=["all-keys", "kv-lens"])
def test_triton_quantiser_equals_the_torch_one(request, monkeypatch, with_lens, qk):
    """SPARSE_VDIT_FP8_QUANTISER=triton (kernels.triton_fp8_quant) computes quantize_qkv's function:
    the same float8 values and scales (on the CPU bit for bit; on a GPU K's mean is summed in another
    order, so a rare value may round to the neighbouring float8), diffusers' strided q kept."""
    import kernels.fp8 as fp8_mod

    gen = fresh_generator(request)
    B, H, S, D = 3, 2, 150, 128
    q, k, v = diffusers_qkv(B, S, H, D, torch.bfloat16, gen=gen)
    k = (k.float() + 3.0 * torch.randn(1, H, 1, D, generator=gen)).bfloat16()
    kv_lens = torch.tensor([150, 40, 0], dtype=torch.int32) if with_lens else None
    if with_lens:
        v = v.clone()
        v[1, :, 40:] = float("nan")
    q, k, v = _dev(q, k, v)
    lens = None if kv_lens is None else kv_lens.to(DEVICE)
    monkeypatch.setattr(fp8_mod, "FP8_QUANTISER", "torch")
    want = quantize_qkv(q, k, v, lens, scale=D ** -0.5)
    monkeypatch.setattr(fp8_mod, "FP8_QUANTISER", "triton")
    got = quantize_qkv(q, k, v, lens, scale=D ** -0.5)
    for name in ("q8", "k8", "v8t"):
        a, b = getattr(want, name), getattr(got, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), name
        differ = (a.float() != b.float()).float().mean().item()
        assert differ <= (1e-3 if DEVICE == "cuda" else 0.0), f"{name}: {differ:.2%} of the quantised values differ"
        # a neighbouring value: float8's step at its largest binade, or int8's 1
        step = 1.0 if a.dtype == torch.int8 else 32.0
        assert float((a.float() - b.float()).abs().max()) <= (step if DEVICE == "cuda" else 0.0), name
    for name in ("q_scale", "k_scale", "v_scale", "lse_shift"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, msg=name)


def test_fp8_attention_with_the_triton_quantiser(request, monkeypatch):
    import kernels.fp8 as fp8_mod

    monkeypatch.setattr(fp8_mod, "FP8_QUANTISER", "triton")
    gen = fresh_generator(request)
    kv_lens = torch.tensor([200, 77])
    q, k, v = _dev(*diffusers_qkv(2, 200, 2, 64, torch.bfloat16, gen=gen, scale=1.5))
    layout = random_layout(gen, 2, 2, 200, (64, 32), p_full=0.35, p_part=0.3)
    out, lse = block_sparse_attention(q, k, v, layout, return_lse=True, precision="fp8", kv_lens=kv_lens.to(DEVICE))
    _check(q, k, v, layout.to_dense(), kv_lens, out, lse, "fp8 triton quantiser")
