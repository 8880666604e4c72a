"""Triton passes of ``kernels.fp8.quantize_qkv``: the same quantisation in two reads of K and V and
one of Q, instead of the PyTorch path's separate element-wise passes and copies.

    fp8_kv_stats_kernel   per (batch, head, token block): K's column sums and V's column abs-max
                          over the real keys (the launcher reduces the blocks: K's mean, V's scales)
    fp8_quantize_kernel   per (batch, head, token block), one of three roles (ROLE):
                          Q   per-token scale, float8 (or int8) rows, and lse_shift = scale * q . mean(k)
                          K   k - mean over real keys, per-token scale, float8 (or int8) rows
                          V   real rows / per-channel scale, float8, stored transposed [D, S']

Q and K rows are scaled to ROW_MAX (FP8_MAX, or INT8_MAX for int8, which also rounds them half up:
ROUND). Under the CPU interpreter, whose float32 -> float8 cast rounds wrongly, the kernels store the
scaled values in float32 (CAST False) and the launcher casts them with torch.
"""

from __future__ import annotations

import triton
import triton.language as tl

ROLE_Q, ROLE_K, ROLE_V = 0, 1, 2


@triton.jit
def fp8_kv_stats_kernel(
    K, V, KSUM, VMAX, KV_LENS,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    H, S, NB,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, HAS_KV_LENS: tl.constexpr,
):
    """Grid (NB, B * H). KSUM, VMAX: [B * H, NB, HEAD_DIM] float32 (column sums of K, column
    abs-max of V, over this block's real keys)."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    real = S
    if HAS_KV_LENS:
        real = tl.load(KV_LENS + b)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    keep = (offs_s < real)[:, None]
    k = tl.load(K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
                + offs_s[:, None].to(tl.int64) * stride_ks + offs_d[None, :] * stride_kd, mask=keep, other=0.0)
    v = tl.load(V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
                + offs_s[:, None].to(tl.int64) * stride_vs + offs_d[None, :] * stride_vd, mask=keep, other=0.0)
    out = (pid_bh.to(tl.int64) * NB + pid_s) * HEAD_DIM + offs_d
    tl.store(KSUM + out, tl.sum(k.to(tl.float32), 0))
    tl.store(VMAX + out, tl.max(tl.abs(v.to(tl.float32)), 0))


@triton.jit
def fp8_quantize_kernel(
    X, OUT, SCALES, COLUMN, SHIFT, KV_LENS,
    stride_xb, stride_xh, stride_xs, stride_xd,
    stride_ob, stride_oh, stride_os, stride_od,
    H, S, softmax_scale,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, ROLE: tl.constexpr, HAS_KV_LENS: tl.constexpr,
    CAST: tl.constexpr, ROW_MAX: tl.constexpr, ROUND: tl.constexpr,
):
    """Grid (cdiv(S, BLOCK_S), B * H). COLUMN: [B * H, HEAD_DIM] float32, K's mean (roles Q and K)
    or V's per-channel scales (role V). OUT (strides given, so V's [D, S'] store is a stride swap):
    float8, or float32 when not CAST. SCALES, SHIFT: [B * H, S] float32 (per-token scales of roles
    Q / K; lse_shift of role Q)."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    in_seq = offs_s < S
    real = S
    if HAS_KV_LENS and ROLE != 0:
        real = tl.load(KV_LENS + b)
    keep = (offs_s < real)[:, None]
    x = tl.load(X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
                + offs_s[:, None].to(tl.int64) * stride_xs + offs_d[None, :] * stride_xd,
                mask=in_seq[:, None], other=0.0).to(tl.float32)
    column = tl.load(COLUMN + pid_bh.to(tl.int64) * HEAD_DIM + offs_d)
    row = pid_bh.to(tl.int64) * S + offs_s
    if ROLE == 0:
        tl.store(SHIFT + row, tl.sum(x * column[None, :], 1) * softmax_scale, mask=in_seq)
    if ROLE == 1:
        x = tl.where(keep, x - column[None, :], 0.0)
    if ROLE == 2:
        x = tl.math.div_rn(tl.where(keep, x, 0.0), tl.where(column > 0, column, 1.0)[None, :])
    else:
        scale = tl.max(tl.abs(x), 1) / ROW_MAX
        tl.store(SCALES + row, scale, mask=in_seq)
        x = tl.math.div_rn(x, tl.where(scale > 0, scale, 1.0)[:, None])  # IEEE division, as torch's
        if ROUND:  # int8: half up, clamped as the torch quantiser (a guard for the cast only)
            x = tl.minimum(tl.maximum(tl.floor(x + 0.5), -ROW_MAX), ROW_MAX)
    o_ptrs = (OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
              + offs_s[:, None].to(tl.int64) * stride_os + offs_d[None, :] * stride_od)
    if CAST:
        tl.store(o_ptrs, x.to(OUT.dtype.element_ty), mask=in_seq[:, None])
    else:
        tl.store(o_ptrs, x, mask=in_seq[:, None])
