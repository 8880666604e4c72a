"""Reference twins of every kernel: float64, dense, obviously right. For tests and small shapes.

Conventions shared with the kernels:
    q: [B, H, Sq, D], k / v: [B, H, Skv, D] (any strides, any float dtype)
    out: [B, H, Sq, D]; lse: [B, H, Sq], natural log of sum(exp(scale * q.k)) over kept keys
    A row with no kept key gets out = 0 and lse = -inf (never NaN).
"""

from __future__ import annotations

import math

import torch

from kernels.block_layout import BlockLayout
from kernels.helpers import cdiv


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    upcast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked attention. ``mask``: bool, broadcastable to [B, H, Sq, Skv], True = keep.

    With ``upcast`` (default) everything runs in float64; with ``upcast=False`` it runs in the
    inputs' dtype, which tests use to measure PyTorch's own error at that precision.
    Returns (out [B, H, Sq, D] in the compute dtype, lse [B, H, Sq] float64 or input dtype).
    """
    dt = torch.float64 if upcast else q.dtype
    qf, kf, vf = q.to(dt), k.to(dt), v.to(dt)
    s = torch.einsum("bhqd,bhkd->bhqk", qf, kf) * _scale(q, scale)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    empty = torch.isneginf(lse)
    p = torch.exp(s - torch.where(empty, 0.0, lse).to(dt).unsqueeze(-1))
    out = torch.einsum("bhqk,bhkd->bhqd", p, vf)
    out = out.masked_fill(empty.unsqueeze(-1), 0.0)
    return out, lse


def key_padding_ref(kv_lens: torch.Tensor | None, kv_len: int) -> torch.Tensor | None:
    """[B, 1, 1, Skv] bool, True on keys 0 .. kv_lens[b]-1 (the ops' ``kv_lens``); None for None."""
    if kv_lens is None:
        return None
    return (torch.arange(kv_len) < kv_lens.cpu().long().clamp(0, kv_len).view(-1, 1)).view(-1, 1, 1, kv_len)


def block_sparse_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, *, scale: float | None = None,
    kv_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``kernels.attention.block_sparse_attention``: attention under ``layout.to_element_mask()``
    and the key padding of ``kv_lens``."""
    mask = layout.to_element_mask().cpu()
    keys = key_padding_ref(kv_lens, k.shape[2])
    return attention_ref(q, k, v, (mask if keys is None else mask & keys).to(q.device), scale=scale)


def block_attention_mass_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor | None,
    block_size: int,
    *,
    scale: float | None = None,
    kv_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``kernels.attention.block_attention_mass``.

    mass[b, h, i, j] = sum over rows r of query block i and columns c of key block j of
    exp(scale * q_r.k_c - lse_r), over real keys (``kv_lens``); ``lse`` None means the exact LSE.
    Returns (mass [B, H, QB, KB] float64, lse [B, H, Sq] float64).
    """
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * _scale(q, scale)
    keys = key_padding_ref(kv_lens, k.shape[2])
    if keys is not None:
        s = s.masked_fill(~keys.to(s.device), float("-inf"))
    if lse is None:
        lse = torch.logsumexp(s, dim=-1)
    lse = lse.double()
    # A row with no key at all (lse = -inf) contributes nothing, as in the kernel.
    p = torch.exp(s - torch.where(torch.isneginf(lse), float("inf"), lse).unsqueeze(-1))
    b, h, sq, sk = p.shape
    qb, kb = cdiv(sq, block_size), cdiv(sk, block_size)
    p = torch.nn.functional.pad(p, (0, kb * block_size - sk, 0, qb * block_size - sq))
    mass = p.reshape(b, h, qb, block_size, kb, block_size).sum(dim=(3, 5))
    return mass, lse


def fp8_attention_ref(
    fp8, mask: torch.Tensor | None = None, *, scale: float | None = None, p_rel_error: float = 0.0,
    p_rounded: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twin of the kernels' ``precision="fp8"`` path, on ``kernels.fp8.quantize_qkv``'s output.

    Float64 attention over the dequantized q, smoothed k and v (``Fp8Inputs.dequantized``), the LSE
    moved back by ``lse_shift``. The kernel also rounds P to float8 for P x V (relative to its running
    row max, so no twin can round it identically); the third result bounds what that rounding can
    change: |out - out_ref| <= bound elementwise, with bound = sum_j (2^-4 p_j + 2^-10 / FP8_MAX) |v_jd| / l
    (e4m3 keeps 3 mantissa bits: half an ulp is 2^-4 of a normal value, and 2^-10 is half the
    subnormal step, both in units of P x FP8_MAX <= FP8_MAX).
    ``p_rel_error``: a relative error the kernel makes in each p before rounding (its polynomial
    exp2, ``kernels.triton_block_sparse.EXP2_POLY_ERROR``); it enters P x V and the row sum l, so
    the bound gains 2 * p_rel_error * sum_j p_j |v_jd| / l (first order).
    ``p_rounded`` False: P is not rounded to float8 (the CPU interpreter keeps it float32), so the
    bound holds only the ``p_rel_error`` term.
    ``mask``: bool broadcastable to [B, H, Sq, Skv], True = keep (layout and key padding).
    Returns (out [B, H, Sq, D] float64, lse [B, H, Sq] float64, bound [B, H, Sq, D] float64).
    """
    from kernels.fp8 import FP8_MAX

    q, k, v = fp8.dequantized()
    out, lse = attention_ref(q, k, v, mask, scale=scale)
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * _scale(q, scale)
    if mask is not None:
        s = s.masked_fill(~mask.to(s.device), float("-inf"))
    empty = torch.isneginf(lse)
    p = torch.exp(s - torch.where(empty, 0.0, lse).unsqueeze(-1))  # normalised: l = 1
    m = torch.exp(torch.where(empty, 0.0, s.amax(-1) - lse))  # the row max's p: 1 / l of the kernel's scale
    keep = torch.ones_like(p, dtype=torch.bool) if mask is None else mask.to(p.device).expand_as(p)
    if p_rounded:
        step = (2.0 ** -4 + 2.0 * p_rel_error) * p + 2.0 ** -10 / FP8_MAX * m.unsqueeze(-1)
    else:
        step = 2.0 * p_rel_error * p
    step = torch.where(keep, step, 0.0)
    bound = torch.einsum("bhqk,bhkd->bhqd", step, v.abs()).masked_fill(empty.unsqueeze(-1), 0.0)
    return out, lse + fp8.lse_shift.double(), bound
