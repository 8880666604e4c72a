"""``sparse-vdit check``: the smallest end-to-end path: a video token layout, a spatial-window
layout built from it, the block-sparse kernel (or its fallback), and the float64 reference; where
the GPU serves it (FP8 tensor cores), ``precision="fp8"`` against its twin and the quantisation's bound."""

from __future__ import annotations

import time

import torch

from kernels.attention import attention_with_lse, block_attention_mass, block_sparse_attention
from kernels.block_layout import BlockLayout
from kernels.reference import attention_ref, block_attention_mass_ref
from sparse_vdit.token_layout import TokenLayout


def run_selfcheck(frames: int, rows: int, cols: int, heads: int, head_dim: int) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    layout = TokenLayout(frames, rows, cols, text_len=7, text_position="before")
    s = layout.seq_len
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, s, heads, head_dim, device=device, dtype=dtype).transpose(1, 2) for _ in range(3))

    def window(b, h, qi, ki):
        # Same frame, within 1 latent row; text rows and columns stay dense.
        fq, rq, _ = layout.position(qi)
        fk, rk, _ = layout.position(ki)
        return layout.is_text(qi) | layout.is_text(ki) | ((fq == fk) & ((rq - rk).abs() <= 1))

    blocks = BlockLayout.from_mask_mod(window, None, None, s, s, block_size=64, device=device)
    print(f"token layout: {layout.describe()}; device {device}, {dtype}, {heads} heads x {head_dim}")
    print(f"window layout: {blocks.shape[2]}x{blocks.shape[3]} blocks of 64, density {blocks.density():.2f}")
    rows_out = []
    t0 = time.perf_counter()
    out = block_sparse_attention(q, k, v, blocks)
    ref, _ = attention_ref(q, k, v, blocks.to_element_mask())
    rows_out.append(("block_sparse_attention", out, ref, time.perf_counter() - t0))
    t0 = time.perf_counter()
    out, lse = attention_with_lse(q, k, v)
    ref, ref_lse = attention_ref(q, k, v)
    rows_out.append(("attention_with_lse", out, ref, time.perf_counter() - t0))
    rows_out.append(("  (its lse)", lse, ref_lse, 0.0))
    t0 = time.perf_counter()
    mass = block_attention_mass(q, k, lse, 64)
    ref_mass, _ = block_attention_mass_ref(q, k, ref_lse, 64)
    rows_out.append(("block_attention_mass", mass, ref_mass, time.perf_counter() - t0))
    print(f"{'op':<24} {'max abs err':>12} {'rel err':>10} {'seconds':>8}")
    worst = 0.0
    for name, got, want, secs in rows_out:
        err = (got.double() - want.double()).abs().max().item()
        rel = ((got.double() - want.double()).norm() / want.double().norm()).item()
        worst = max(worst, rel)
        print(f"{name:<24} {err:>12.2e} {rel:>10.2e} {secs:>8.3f}")
    ok = worst < 2e-2
    fp8_ok = _check_fp8(q, k, v, blocks)
    print("OK" if ok and fp8_ok else "FAILED: " + ("error above 2e-2 relative" if not ok else
                                                   "precision='fp8' outside its quantisation bound"))
    return 0 if ok and fp8_ok else 1


def _check_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: BlockLayout) -> bool:
    """``precision="fp8"`` on the same layout against ``fp8_attention_ref``: every entry within the
    bound of P's float8 rounding (and the exp2 polynomial's, if on) plus the output dtype's rounding.
    Prints why it is skipped where FP8 cannot run (the GPU, the head dim); True then."""
    from kernels import attention as ops
    from kernels.fp8 import fp8_error, quantize_qkv
    from kernels.reference import fp8_attention_ref

    reason = fp8_error(q, blocks.block_size, interpreter=ops.interpreting())
    if reason is not None:
        print(f"precision='fp8': skipped: {reason.split(';')[0]}")
        return True
    from kernels.triton_block_sparse import EXP2_POLY_ERROR  # FP8 runs in the Triton kernels only

    t0 = time.perf_counter()
    out = block_sparse_attention(q, k, v, blocks, precision="fp8")
    secs = time.perf_counter() - t0
    fp8 = quantize_qkv(q, k, v, None, scale=q.shape[-1] ** -0.5)
    # the interpreter keeps P in float32: only the exp2 polynomial's share of the bound applies there
    ref, _, bound = fp8_attention_ref(fp8, blocks.to_element_mask(), p_rounded=q.is_cuda,
                                      p_rel_error=EXP2_POLY_ERROR if ops.FP8_EXP2 != "mufu" else 0.0)
    diff = (out.double() - ref).abs()
    rounding = 2 * torch.finfo(out.dtype).eps * ref.abs() + 1e-6  # the output's dtype, twice
    excess = float((diff - bound - rounding).max())
    rel = float((out.double() - ref).norm() / ref.norm())
    print(f"{'fp8 (vs its twin)':<24} {float(diff.max()):>12.2e} {rel:>10.2e} {secs:>8.3f}  "
          f"{'within' if excess <= 0 else 'OUTSIDE'} the quantisation bound")
    return excess <= 0
