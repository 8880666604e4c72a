"""PyTorch paths of every public op, for machines without CUDA (and no TRITON_INTERPRET).

They compute the same functions as the Triton kernels in float32, one strip of query blocks at a
time, so no Q x K tensor of the whole sequence is ever held. Slow, but they let the demo, the
search and the notebook run anywhere.
"""

from __future__ import annotations

import torch

from kernels.block_layout import BlockLayout
from kernels.helpers import cdiv, warn_once

_warned: set = set()  # warn_once's registry: the fallback is announced once per process

STRIP_ROWS = 1024  # query rows per strip: bounds the [B, H, rows, S] score buffer


def warn_fallback_once() -> None:
    warn_once(
        _warned, "fallback",
        "sparse-vdit: no CUDA device, so attention runs on the PyTorch fallback path "
        "(float32, correct but slow). Use a CUDA GPU for the Triton kernels, or set "
        "TRITON_INTERPRET=1 to run the kernels on the CPU interpreter (tests only).",
        RuntimeWarning,
        stacklevel=2,
    )


def _masked_softmax_strip(s: torch.Tensor, mask: torch.Tensor | None):
    """Row softmax of scores [B, H, r, S] (float32) under mask; empty rows -> p = 0, lse = -inf."""
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isneginf(lse), 0.0, lse).unsqueeze(-1))
    return p, lse


def key_mask(kv_lens: torch.Tensor | None, kv_len: int, device) -> torch.Tensor | None:
    """[B, 1, 1, Skv] bool, True on the real keys 0 .. kv_lens[b]-1; None when nothing is padded."""
    if kv_lens is None:
        return None
    return (torch.arange(kv_len, device=device) < kv_lens.to(device).view(-1, 1)).view(-1, 1, 1, kv_len)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout | None, scale: float,
    kv_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse (``layout``) or dense (None) attention; returns (out like q, lse [B,H,Sq] fp32).

    ``kv_lens`` [B] masks keys at or past kv_lens[b]. As on the Triton path, a non-finite value in
    ``v`` reaches only the rows that attend its key: a plain ``p @ v`` would spread it to every row
    through 0 * NaN, so non-finite rows of v are zeroed and their rows marked NaN afterwards.
    """
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    kf, vf = k.float(), v.float()
    bad_v = ~torch.isfinite(vf).all(-1)  # [B, H, Skv]: keys whose value row is not finite
    has_bad_v = bool(bad_v.any())
    if has_bad_v:
        vf = torch.where(bad_v.unsqueeze(-1), 0.0, vf)
    keys = key_mask(kv_lens, k.shape[2], q.device)
    qblk = layout.block_size[0] if layout is not None else STRIP_ROWS
    blocks_per_strip = max(1, STRIP_ROWS // qblk)
    for r0 in range(0, q.shape[2], qblk * blocks_per_strip):
        r1 = min(q.shape[2], r0 + qblk * blocks_per_strip)
        s = torch.einsum("bhqd,bhkd->bhqk", q[:, :, r0:r1].float(), kf) * scale
        mask = keys
        if layout is not None:
            qb0 = r0 // qblk
            rows = layout.dense_rows(qb0, qb0 + blocks_per_strip).to(q.device)
            mask = rows if mask is None else rows & mask
        p, lse[:, :, r0:r1] = _masked_softmax_strip(s, mask)
        o = torch.einsum("bhqk,bhkd->bhqd", p, vf)
        if has_bad_v:
            attended = torch.ones_like(s, dtype=torch.bool) if mask is None else mask.expand_as(s)
            poisoned = (attended & bad_v.unsqueeze(2)).any(-1, keepdim=True)
            o = torch.where(poisoned, float("nan"), o)
        out[:, :, r0:r1] = o.to(q.dtype)
    return out, lse


def block_attention_mass(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None, block_size: int, scale: float,
    kv_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mass [B, H, QB, KB] fp32, lse [B, H, Sq] fp32); see kernels.attention.block_attention_mass."""
    b, h, sq, _ = q.shape
    sk = k.shape[2]
    qb, kb = cdiv(sq, block_size), cdiv(sk, block_size)
    mass = torch.empty(b, h, qb, kb, dtype=torch.float32, device=q.device)
    lse_out = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    kf = k.float()
    keys = key_mask(kv_lens, sk, q.device)
    for i in range(qb):
        r0, r1 = i * block_size, min(sq, (i + 1) * block_size)
        s = torch.einsum("bhqd,bhkd->bhqk", q[:, :, r0:r1].float(), kf) * scale
        if keys is not None:
            s = s.masked_fill(~keys, float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1) if lse is None else lse[:, :, r0:r1].float()
        lse_out[:, :, r0:r1] = row_lse
        # Rows with no key at all (lse = -inf) contribute nothing.
        p = torch.exp(s - torch.where(torch.isneginf(row_lse), float("inf"), row_lse).unsqueeze(-1))
        p = torch.nn.functional.pad(p, (0, kb * block_size - sk))
        mass[:, :, i] = p.reshape(b, h, r1 - r0, kb, block_size).sum(dim=(2, 4))
    return mass, lse_out
