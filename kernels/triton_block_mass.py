"""Triton kernel for AdaSpa's block attention mass, in one pass over Q K^T (no V, no S x S).

mass[b, h, i, j] = sum_{r in q-block i, c in k-block j} exp(scale * q_r . k_c - lse_r)

With COMPUTE_LSE the same program first sweeps Q K^T once to get the exact row LSE (online
max / sum, no V), stores it, then sweeps again for the mass: the fused variant for the first
search step when no LSE is cached. Rows with lse = -inf (no key at all) contribute nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton_block_sparse import LN2_C, LOG2E_C, dot_qk, load_rows


@triton.jit
def _scores(q, k_base, stride_kn, stride_kd, offs_d, start_n, kv_valid, qk_scale,
            BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr):
    """Scaled base-2 scores [BLOCK_M, BLOCK_N] of keys [start_n, start_n + BLOCK_N); -inf past
    kv_valid (the batch's real keys, <= the key length), whose rows are never loaded."""
    k = load_rows(k_base, stride_kn, stride_kd, offs_d, start_n, kv_valid, BLOCK_N, False, False, False)
    in_bounds = (start_n + tl.arange(0, BLOCK_N)) < kv_valid
    return tl.where(in_bounds[None, :], dot_qk(q, k, DOT_FP32, False) * qk_scale, float("-inf"))


@triton.jit
def block_attention_mass_kernel(
    Q, K, LSE_IN, MASS, LSE_OUT, KV_LENS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_lb, stride_lh, stride_lm,
    H, q_len, kv_len, num_kv_blocks, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
    COMPUTE_LSE: tl.constexpr, DOT_FP32: tl.constexpr, ROW_GROUP: tl.constexpr, HAS_KV_LENS: tl.constexpr,
):
    """Grid: (ceil(q_len / BLOCK), B * H). LSE_OUT [B*H, q_len].

    MASS: [B*H, QB * (BLOCK // ROW_GROUP), num_kv_blocks] fp32: the mass of each group of ROW_GROUP
    query rows. The launcher sums the groups; keeping them apart spares a reduction across warps
    (and its barrier) per key block: a group of 16 rows lives in one warp of the MMA layout.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    if HAS_KV_LENS:  # [B] int32 in [0, kv_len]: keys at or past KV_LENS[b] are padding
        kv_valid = tl.load(KV_LENS + b)
    else:
        kv_valid = kv_len
    offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
                + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh

    if COMPUTE_LSE:
        m_i = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK], dtype=tl.float32)
        for start_n in range(0, kv_valid, BLOCK_N):
            s = _scores(q, k_base, stride_kn, stride_kd, offs_d, start_n, kv_valid, qk_scale, BLOCK_N, DOT_FP32)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
            m_i = m_new
        lse2 = m_i + tl.math.log2(l_i)
        tl.store(LSE_OUT + pid_bh.to(tl.int64) * q_len + offs_m, lse2 * LN2_C, mask=row_ok)
    else:
        lse = tl.load(LSE_IN + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + offs_m * stride_lm,
                      mask=row_ok, other=float("inf"))
        lse2 = lse * LOG2E_C
    # Rows past q_len or without any key (lse = -inf) add nothing: +inf makes exp2(s - lse2) == 0.
    # A NaN lse stays NaN, so its row's masses are NaN (as on the PyTorch path): never hidden.
    lse2 = tl.where(row_ok & (lse2 != float("-inf")), lse2, float("inf"))

    SUBS: tl.constexpr = BLOCK // BLOCK_N
    GROUPS: tl.constexpr = BLOCK // ROW_GROUP
    mass_rows = (MASS + (pid_bh.to(tl.int64) * tl.num_programs(0) + pid_m) * GROUPS * num_kv_blocks
                 + tl.arange(0, GROUPS) * num_kv_blocks)
    for kb in range(num_kv_blocks):
        part = tl.zeros([BLOCK], dtype=tl.float32)
        for sub in tl.static_range(SUBS):
            s = _scores(q, k_base, stride_kn, stride_kd, offs_d, kb * BLOCK + sub * BLOCK_N, kv_valid,
                        qk_scale, BLOCK_N, DOT_FP32)
            part += tl.sum(tl.math.exp2(s - lse2[:, None]), 1)
        tl.store(mass_rows + kb, tl.sum(tl.reshape(part, [GROUPS, ROW_GROUP]), 1))
