"""Triton forward kernel for block-sparse (and dense) attention with per-row LSE.

One kernel loop, specialised by constexpr flags:
    IS_FULL   the block needs no element mask (and lies inside the key bounds, a BlockLayout invariant)
    DENSE     walk every key block in order instead of reading index lists (attention_with_lse)
    FP8       inputs quantised by ``kernels.fp8.quantize_qkv``: Q and K float8 e4m3 or int8 (the
              operands' dtype decides) with a scale per token, V float8 stored transposed ([D, S],
              the K-major operand FP8 tensor cores need) with a scale per channel; P is rounded to
              float8 (on float8's scale: the exponent is shifted by log2(FP8_MAX)) for P x V, and
              the accumulator stays float32
    FP8_TILE_ACC  (FP8) each key tile's P x V summed apart, then added to the accumulator in fp32
    FP8_EXP2      (FP8) the softmax's exponentials: 0 the special-function unit, 1 half of them and
              2 all of them by ``exp2_poly`` on the FMA pipe (``softmax_exp2``)
One program computes one query block (BLOCK_M = the layout's Q_BLOCK rows) of one (batch, head);
its key blocks come from the layout's full list, then its partial list. Heads of different
patterns share one launch: the layout has a head dimension, so a per-head block list *is* the
per-head mode table, and a head with empty lists (skip) costs one store of zeros.

Softmax is computed in base 2 with the scale folded in (qk_scale = scale * log2(e)).
Rows that see no key keep l == 0 and are written as zeros with lse = -inf.
"""

from __future__ import annotations

import math
import os

import triton
import triton.language as tl

from kernels.limits import FP8_MAX

LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E)
LN2 = 0.6931471805599453  # ln(2): log(x) == log2(x) * LN2
# The same, readable inside @triton.jit code (compiled kernels may only read constexpr globals).
LOG2E_C = tl.constexpr(LOG2E)
LN2_C = tl.constexpr(LN2)
LOG2_FP8_MAX_C = tl.constexpr(math.log2(FP8_MAX))
FP8_PROMOTE_EVERY = tl.constexpr(32)  # products per FP8 MMA instruction (K = 32)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def load_rows(src, stride_n, stride_d, offs_d, start_n, n_len,
              BLOCK_N: tl.constexpr, IN_BOUNDS: tl.constexpr, USE_TMA: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Rows [start_n, start_n + BLOCK_N) x HEAD_DIM of one (batch, head)'s K or V.

    ``src`` is a tensor descriptor (USE_TMA: the copy engine zero-fills rows past n_len) or the
    base pointer; IN_BOUNDS promises every row is < n_len, so no bounds mask is built.
    TRANSPOSED: the rows are stored as columns ([HEAD_DIM, n] in memory, the FP8 V); the
    descriptor then has that shape and the tile is transposed in registers.
    """
    # One return at the end: triton 3.6 rejects early returns from constexpr branches here.
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if USE_TMA:
        if TRANSPOSED:
            rows = src.load([0, start_n]).T
        else:
            rows = src.load([start_n, 0])
    elif IN_BOUNDS:
        rows = tl.load(src + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d)
    else:
        rows = tl.load(src + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d,
                       mask=(offs_n < n_len)[:, None], other=0.0)
    return rows


MAGIC_C = tl.constexpr(12582912.0)  # 1.5 * 2^23: a float32 whose last mantissa bits hold a small integer
MAGIC_BITS_C = tl.constexpr(0x4B400000)  # its bit pattern
# exp2_poly: 2^f on [-0.5, 0.5] by a degree-3 polynomial (fitted to the relative error: at most
# 2.2e-4, against the 2^-4 of P's float8 rounding); EXP2_POLY_ERROR is that bound (the twin's).
EXP2_POLY_C0, EXP2_POLY_C1 = tl.constexpr(0.9999627470970154), tl.constexpr(0.6935867667198181)
EXP2_POLY_C2, EXP2_POLY_C3 = tl.constexpr(0.2421518862247467), tl.constexpr(0.05286743491888046)
EXP2_POLY_ERROR = 2.3e-4


@triton.jit
def int_to_float(x):
    """int32 x with |x| < 2^22 -> float32, exactly, on the integer and FMA pipes: the float whose
    bits are MAGIC_BITS + x is MAGIC + x (the conversion instruction runs at a quarter of their rate)."""
    return (x + MAGIC_BITS_C).to(tl.float32, bitcast=True) - MAGIC_C


@triton.jit
def exp2_poly(x):
    """2^x for x <= 127 (or -inf) on the FMA and integer pipes instead of the special-function unit:
    x = n + f with n = round(x) (by the MAGIC rounding, no conversion) and |f| <= 1/2; 2^f by the
    polynomial, 2^n added to its exponent bits. Relative error <= EXP2_POLY_ERROR; 0 for x <= -125
    (where 2^x nears float32's subnormals, whose exponent bits the addition cannot make, and lies
    far below anything float8 P can hold or the row sum can notice: the row's largest p is at
    least 1)."""
    x = tl.maximum(x, -127.0)
    t = x + MAGIC_C
    n = t.to(tl.int32, bitcast=True) - MAGIC_BITS_C
    f = x - (t - MAGIC_C)
    poly = EXP2_POLY_C0 + f * (EXP2_POLY_C1 + f * (EXP2_POLY_C2 + f * EXP2_POLY_C3))
    y = (poly.to(tl.int32, bitcast=True) + (n << 23)).to(tl.float32, bitcast=True)
    return tl.where(x > -125.0, y, 0.0)


@triton.jit
def softmax_exp2(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EXP2: tl.constexpr):
    """2^x [BLOCK_M, BLOCK_N] (x <= log2(FP8_MAX)). EXP2 0: the special-function unit (MUFU) for every entry;
    1: half the columns (the odd ones) by ``exp2_poly``, so both pipes work at once; 2: all by
    ``exp2_poly``. By arithmetic (16 MUFU exp2 a clock per SM), at FP8's MMA rate the exponentials take
    as long as the two MMAs of a tile."""
    if EXP2 == 0:
        p = tl.math.exp2(x)
    elif EXP2 == 1:
        even, odd = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_N // 2, 2)))
        p = tl.reshape(tl.join(tl.math.exp2(even), exp2_poly(odd)), (BLOCK_M, BLOCK_N))
    else:
        p = exp2_poly(x)
    return p


@triton.jit
def dot_qk(q, k, DOT_FP32: tl.constexpr, FP8_PROMOTE: tl.constexpr):
    """q [BLOCK_M, D] . k [BLOCK_N, D]^T in fp32 (exact fp32 operands when DOT_FP32).
    int8 operands (the FP8 path's SageAttention format) are summed exactly in int32 (|sum| <=
    127^2 * 256 < 2^22), and ``int_to_float`` makes that float32 exactly.
    FP8_PROMOTE (float8 operands): add the tensor core's partial sums into fp32 every
    FP8_PROMOTE_EVERY products (Hopper's FP8 MMA accumulates with fewer bits than fp32)."""
    if q.dtype == tl.int8:  # exact on the tensor cores and under the interpreter alike
        s = int_to_float(tl.dot(q, tl.trans(k), out_dtype=tl.int32))
    elif DOT_FP32:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    elif FP8_PROMOTE:
        s = tl.dot(q, tl.trans(k), max_num_imprecise_acc=FP8_PROMOTE_EVERY)
    else:
        s = tl.dot(q, tl.trans(k))
    return s


@triton.jit
def _attend_block(
    acc, l_i, m_i, q,
    k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m_local, offs_d, start_n, kv_len, kv_valid, qk_scale,
    tile_base, tile_id, col_in_tile, k_scales,
    BLOCK_M: tl.constexpr, KV_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_FULL: tl.constexpr, DOT_FP32: tl.constexpr, USE_TMA: tl.constexpr, ZERO_PADDED_V: tl.constexpr,
    FP8: tl.constexpr, FP8_TILE_ACC: tl.constexpr, FP8_EXP2: tl.constexpr,
):
    """Fold key/value columns [start_n, start_n + BLOCK_N) into the running softmax state.

    kv_len bounds memory; kv_valid <= kv_len bounds the keys this batch attends (padded keys past
    it are masked). ZERO_PADDED_V zeroes V rows in [kv_valid, kv_len), so a NaN there cannot reach
    the output through 0 * NaN; IS_FULL promises the whole block lies below kv_valid.
    FP8: ``qk_scale`` is the rows' [BLOCK_M] scale (the softmax scale times each Q row's
    quantisation scale) and ``k_scales`` points at this (batch, head)'s [kv_len] key scales.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = load_rows(k_src, stride_kn, stride_kd, offs_d, start_n, kv_len, BLOCK_N, IS_FULL, USE_TMA, False)
    v = load_rows(v_src, stride_vn, stride_vd, offs_d, start_n, kv_len, BLOCK_N, IS_FULL, USE_TMA, FP8)
    if ZERO_PADDED_V and not IS_FULL:
        v = tl.where((offs_n < kv_valid)[:, None], v, tl.zeros_like(v))
    if FP8:
        if IS_FULL:
            k_scale = tl.load(k_scales + offs_n)
        else:
            k_scale = tl.load(k_scales + offs_n, mask=offs_n < kv_len, other=0.0)
        s = dot_qk(q, k, DOT_FP32, FP8_TILE_ACC) * (qk_scale[:, None] * k_scale[None, :])
    else:
        s = dot_qk(q, k, DOT_FP32, False) * qk_scale
    if not IS_FULL:
        keep = (offs_n < kv_valid)[None, :] & (offs_m_local >= 0)[:, None]  # [BLOCK_M, BLOCK_N]
        # tile_id < 0 (NO_TILE): only the bounds apply; tile 0 always exists, so read it harmlessly.
        t_ptrs = (
            tile_base + tl.maximum(tile_id, 0).to(tl.int64) * (BLOCK_M * KV_BLOCK)
            + offs_m_local[:, None] * KV_BLOCK + (col_in_tile + tl.arange(0, BLOCK_N))[None, :]
        )
        keep = keep & ((tl.load(t_ptrs) != 0) | (tile_id < 0))
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if not IS_FULL:
        # A row fully masked so far keeps m = -inf; subtract 0 instead so no NaN appears.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_sub = m_new
    if FP8:  # p in [0, FP8_MAX]: float8's range, by shifting the exponent (free) instead of scaling
        p = softmax_exp2(s - (m_sub - LOG2_FP8_MAX_C)[:, None], BLOCK_M, BLOCK_N, FP8_EXP2)
    else:
        p = tl.math.exp2(s - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if FP8:
        # P (and so l) is FP8_MAX times the softmax's numerator, which cancels in acc / l; the LSE
        # takes log2(FP8_MAX) off again. Under the CPU interpreter (DOT_FP32) P stays float32: its
        # float32 -> float8 cast rounds wrongly. FP8_TILE_ACC: each key tile's P x V is summed on
        # the tensor core, then added to acc in fp32 (SageAttention 2's two-level accumulation);
        # else acc itself is the MMA's accumulator.
        if DOT_FP32:
            acc = tl.dot(p, v.to(tl.float32), acc, input_precision="ieee")
        elif FP8_TILE_ACC:
            acc = tl.dot(p.to(v.dtype), v, acc, max_num_imprecise_acc=BLOCK_N)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
    elif DOT_FP32:
        acc = tl.dot(p, v.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def block_sparse_attention_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, TILE_IDS, TILES, KV_LENS, HEAD_PATTERNS, Q_SCALES, K_SCALES, V_SCALES,
    layout_stride_b, layout_stride_p, full_width, part_width, head_pattern_stride,
    H, q_len, kv_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, KV_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
    DENSE: tl.constexpr, HAS_PARTIAL: tl.constexpr, DOT_FP32: tl.constexpr, USE_TMA: tl.constexpr,
    HAS_KV_LENS: tl.constexpr, HAS_HEAD_PATTERNS: tl.constexpr, FP8: tl.constexpr, FP8_TILE_ACC: tl.constexpr,
    FP8_EXP2: tl.constexpr,
):
    """Grid: (ceil(q_len / BLOCK_M), B * H). Layout row of (b, h, m): b*layout_stride_b +
    p*layout_stride_p + m, p = HEAD_PATTERNS[h * head_pattern_stride] (HAS_HEAD_PATTERNS) or h
    (strides are 0 on broadcast dims); its full list holds full_width entries, its partial list and tile ids part_width.
    Index lists may be int8 / int16 / int32. KV_LENS (HAS_KV_LENS): [B] int32 in [0, kv_len], keys
    of batch b at or past KV_LENS[b] are padding. FP8: Q_SCALES [B, H, q_len], K_SCALES [B, H, kv_len]
    and V_SCALES [B, H, HEAD_DIM] float32, contiguous; V is given as its [S, D] view of the
    [B, H, D, S'] float8 tensor (stride_vn == 1)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    if HAS_KV_LENS:
        kv_valid = tl.load(KV_LENS + b)
    else:
        kv_valid = kv_len

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_m_local = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    if USE_TMA:  # the launcher checks: last dim contiguous, 16-byte aligned rows
        q_desc = tl.make_tensor_descriptor(q_base, [q_len, HEAD_DIM], [stride_qm, 1], [BLOCK_M, HEAD_DIM])
        q = q_desc.load([pid_m * BLOCK_M, 0])
        k_base = tl.make_tensor_descriptor(k_base, [kv_len, HEAD_DIM], [stride_kn, 1], [BLOCK_N, HEAD_DIM])
        if FP8:
            v_base = tl.make_tensor_descriptor(v_base, [HEAD_DIM, kv_len], [stride_vd, 1], [HEAD_DIM, BLOCK_N])
        else:
            v_base = tl.make_tensor_descriptor(v_base, [kv_len, HEAD_DIM], [stride_vn, 1], [BLOCK_N, HEAD_DIM])
    else:
        q_ptrs = q_base + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=(offs_m < q_len)[:, None], other=0.0)

    if FP8:
        row_scale = qk_scale * tl.load(Q_SCALES + pid_bh.to(tl.int64) * q_len + offs_m, mask=offs_m < q_len, other=0.0)
        k_scales = K_SCALES + pid_bh.to(tl.int64) * kv_len
    else:
        row_scale = qk_scale
        k_scales = K_SCALES

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    SUBS: tl.constexpr = KV_BLOCK // BLOCK_N
    if DENSE:
        n_full = kv_valid // BLOCK_N
        for j in range(n_full):
            acc, l_i, m_i = _attend_block(
                acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                offs_m_local, offs_d, j * BLOCK_N, kv_len, kv_valid, row_scale, TILES, -1, 0, k_scales,
                BLOCK_M, KV_BLOCK, BLOCK_N, True, DOT_FP32, USE_TMA, HAS_KV_LENS, FP8, FP8_TILE_ACC, FP8_EXP2)
        if n_full * BLOCK_N < kv_valid:
            acc, l_i, m_i = _attend_block(
                acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                offs_m_local, offs_d, n_full * BLOCK_N, kv_len, kv_valid, row_scale, TILES,
                tl.full([], -1, tl.int32), 0, k_scales, BLOCK_M, KV_BLOCK, BLOCK_N, False, DOT_FP32, USE_TMA,
                HAS_KV_LENS, FP8, FP8_TILE_ACC, FP8_EXP2)
    else:
        if HAS_HEAD_PATTERNS:
            pattern = tl.load(HEAD_PATTERNS + h * head_pattern_stride).to(tl.int32)
        else:
            pattern = h
        row = b * layout_stride_b + pattern * layout_stride_p + pid_m
        n_full = tl.load(FULL_NUM + row)
        full_idx = FULL_IDX + row.to(tl.int64) * full_width
        for j in range(n_full * SUBS):
            kb = tl.load(full_idx + j // SUBS).to(tl.int32)
            start_n = kb * KV_BLOCK + (j % SUBS) * BLOCK_N
            if HAS_KV_LENS:
                # A full block is inside kv_len, not necessarily inside this batch's kv_valid.
                if start_n + BLOCK_N <= kv_valid:
                    acc, l_i, m_i = _attend_block(
                        acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                        offs_m_local, offs_d, start_n, kv_len, kv_valid, row_scale,
                        TILES, -1, 0, k_scales, BLOCK_M, KV_BLOCK, BLOCK_N, True, DOT_FP32, USE_TMA, HAS_KV_LENS,
                        FP8, FP8_TILE_ACC, FP8_EXP2)
                elif start_n < kv_valid:
                    acc, l_i, m_i = _attend_block(
                        acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                        offs_m_local, offs_d, start_n, kv_len, kv_valid, row_scale,
                        TILES, tl.full([], -1, tl.int32), 0, k_scales, BLOCK_M, KV_BLOCK, BLOCK_N, False, DOT_FP32,
                        USE_TMA, HAS_KV_LENS, FP8, FP8_TILE_ACC, FP8_EXP2)
            else:
                acc, l_i, m_i = _attend_block(
                    acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m_local, offs_d, start_n, kv_len, kv_valid, row_scale,
                    TILES, -1, 0, k_scales, BLOCK_M, KV_BLOCK, BLOCK_N, True, DOT_FP32, USE_TMA, HAS_KV_LENS,
                    FP8, FP8_TILE_ACC, FP8_EXP2)
        if HAS_PARTIAL:
            n_part = tl.load(PART_NUM + row)
            part_idx = PART_IDX + row.to(tl.int64) * part_width
            tile_ids = TILE_IDS + row.to(tl.int64) * part_width
            for j in range(n_part * SUBS):
                kb = tl.load(part_idx + j // SUBS).to(tl.int32)
                tile = tl.load(tile_ids + j // SUBS).to(tl.int32)
                sub = (j % SUBS) * BLOCK_N
                acc, l_i, m_i = _attend_block(
                    acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                    offs_m_local, offs_d, kb * KV_BLOCK + sub, kv_len, kv_valid, row_scale,
                    TILES, tile, sub, k_scales, BLOCK_M, KV_BLOCK, BLOCK_N, False, DOT_FP32, USE_TMA,
                HAS_KV_LENS, FP8, FP8_TILE_ACC, FP8_EXP2)

    if FP8:  # V's per-channel scales; P's FP8_MAX is in l too (and leaves the LSE here)
        acc = acc * tl.load(V_SCALES + pid_bh.to(tl.int64) * HEAD_DIM + offs_d)[None, :]
        m_i = m_i - LOG2_FP8_MAX_C
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * LN2_C)
    row_ok = offs_m < q_len
    o_ptrs = (O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
              + offs_m[:, None].to(tl.int64) * stride_om + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + pid_bh.to(tl.int64) * q_len + offs_m, lse, mask=row_ok)
