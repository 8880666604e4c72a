"""FP8 inputs of the attention kernels: quantisation as SageAttention does it, in PyTorch.

``quantize_qkv(q, k, v, kv_lens)`` turns bf16 / fp16 / fp32 q, k, v [B, H, S, D] into what the
kernels' FP8 loop reads (``Fp8Inputs``):

    q8 [B, H, Sq, D] float8 e4m3 or int8, q_scale [B, H, Sq]   q ~= q8 * q_scale (one scale per token)
    k8 [B, H, Skv, D] (q8's dtype), k_scale [B, H, Skv]       k - mean(k) ~= k8 * k_scale
    v8t [B, H, D, Skv'] (Skv' = Skv rounded up to 16), v_scale [B, H, D]   v ~= v8t^T * v_scale
    lse_shift [B, H, Sq]                               scale * q . mean(k), added back to the LSE

Q and K are float8 e4m3 (``qk="e4m3"``, FlashAttention-3's format) or int8 (``qk="int8"``,
SageAttention's: 7 bits of magnitude where e4m3 has 3 of mantissa, and products the tensor cores sum
exactly in int32); ``FP8_QK`` (``SPARSE_VDIT_FP8_QK``) is the default. V (and P) are e4m3 either way.

Invariants the kernel relies on:
- K is smoothed by its mean over the real keys of each (batch, head) before it is quantised: one
  vector subtracted from every key shifts each row's scores by a constant, so the softmax and the
  output are unchanged, while the keys' shared offset (large in DiTs) no longer eats the float8
  range. The LSE moves by that constant; ``lse_shift`` restores the LSE of the unsmoothed keys.
- V is stored transposed, [D, S] with S contiguous: FP8 tensor cores take their second operand
  K-major only, and for P x V the reduction runs over the keys.
- Keys at or past ``kv_lens[b]`` are padding: they are left out of K's mean and V's scales and
  their V rows are zeroed before quantising, so a NaN there changes nothing.
- Scales are amax / FP8_MAX, or amax / INT8_MAX for int8 (every quantised value is within the
  format's finite range); an all-zero token or channel gets scale 0 and zeros. int8 values are
  rounded half up (floor(x + 0.5)), the same in the PyTorch and the Triton quantiser.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from kernels.helpers import cdiv
from kernels.limits import (FP8_HEAD_DIMS, FP8_MAX, FP8_MIN_KV_BLOCK, FP8_Q_BLOCK_SIZES, FP8_QK_FORMATS, INT8_MAX,
                            PRECISIONS)

__all__ = ["FP8_MAX", "FP8_DTYPE", "Fp8Inputs", "quantize_qkv", "fp8_error", "precision_error", "FP8_V_ALIGN"]

FP8_DTYPE = torch.float8_e4m3fn
FP8_V_ALIGN = 16  # V's key dim is padded to this many tokens (16-byte rows for the copy engine)
_TINY = torch.finfo(torch.float32).tiny
# Which quantiser runs: "triton" (default; kernels.triton_fp8_quant: two reads of K and V, one of Q)
# or "torch" (PyTorch ops). Measured on an H100 (benchmarks/RESULTS.md, 2026-12-08): 0.61 against
# 3.64 ms at Wan 480p, 2.03 against 27.4 ms at Wan 720p (eager).
FP8_QUANTISER = os.environ.get("SPARSE_VDIT_FP8_QUANTISER", "triton")
QUANT_BLOCK_S = 64  # tokens per program of the Triton quantiser
# Q and K's format (kernels.limits.FP8_QK_FORMATS): "int8" (default) or "e4m3". Measured on the
# proxy's activations on an H100 (RESULTS.md, 2026-12-08), with tile accumulation: the per-layer
# cosine to bf16 is >= 0.9996 with int8, 0.997-0.9999 with e4m3; int8 runs at 0.95-0.97x e4m3's speed.
FP8_QK = os.environ.get("SPARSE_VDIT_FP8_QK", "int8")
QK_DTYPES = {"e4m3": FP8_DTYPE, "int8": torch.int8}


@dataclass(frozen=True)
class Fp8Inputs:
    """Quantised q, k, v and their scales (shapes in the module docstring)."""

    q8: torch.Tensor
    q_scale: torch.Tensor
    k8: torch.Tensor
    k_scale: torch.Tensor
    v8t: torch.Tensor
    v_scale: torch.Tensor
    lse_shift: torch.Tensor

    @property
    def v8(self) -> torch.Tensor:
        """V's float8 values as a [B, H, Skv, D] view (strides (.., 1, Skv'): no copy)."""
        return self.v8t[..., : self.k8.shape[2]].transpose(2, 3)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k - mean(k), v) as float64 [B, H, S, D]: what the FP8 kernel attends over (its
        reference twin's inputs)."""
        q = self.q8.double() * self.q_scale.double().unsqueeze(-1)
        k = self.k8.double() * self.k_scale.double().unsqueeze(-1)
        v = self.v8.double() * self.v_scale.double().unsqueeze(-2)
        return q, k, v


def _v_columns(sk: int) -> int:
    """V's stored key dim: ``sk`` rounded up to FP8_V_ALIGN (at least one group)."""
    return cdiv(max(sk, 1), FP8_V_ALIGN) * FP8_V_ALIGN


def _qk_format(qk: str | None) -> str:
    qk = FP8_QK if qk is None else qk
    if qk not in FP8_QK_FORMATS:
        raise ValueError(f"the FP8 path's Q/K format must be one of {FP8_QK_FORMATS} "
                         f"(SPARSE_VDIT_FP8_QK / kernels.fp8.FP8_QK), got {qk!r}")
    return qk


def _quantize_rows(x: torch.Tensor, dim: int, qk: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / scale in ``qk``'s format, scale float32) with scale = amax(|x|) / the format's largest
    value along ``dim`` (int8: rounded half up)."""
    xf = x.float()
    scale = xf.abs().amax(dim=dim, keepdim=True) / (INT8_MAX if qk == "int8" else FP8_MAX)
    scaled = xf / scale.clamp_min(_TINY)
    if qk == "int8":  # the clamp only guards the int8 cast: scaled lies within +-127 up to rounding
        x8 = torch.floor(scaled + 0.5).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    else:
        x8 = scaled.to(FP8_DTYPE)
    return x8, scale.squeeze(dim)


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None = None, *,
                 scale: float, qk: str | None = None) -> Fp8Inputs:
    """q [B, H, Sq, D], k / v [B, H, Skv, D] (one float dtype, checked by the caller) -> ``Fp8Inputs``.

    ``kv_lens``: [B] int32 on q's device (already clamped to [0, Skv]) or None; ``scale``: the
    softmax scale (for ``lse_shift``); ``qk``: Q and K's format (None: ``FP8_QK``). q8 keeps q's
    strides, so the output (made like q8) does.
    ``FP8_QUANTISER`` picks the PyTorch ops (below) or the Triton passes (``_quantize_triton``).
    """
    qk = _qk_format(qk)
    if FP8_QUANTISER == "triton":
        return Fp8Inputs(*_quantize_triton_op(q, k, v, kv_lens, scale, qk))
    sk = k.shape[2]
    if kv_lens is None:
        real = None
        kf = k.float()
        mean = kf.mean(dim=2, keepdim=True)  # [B, H, 1, D]
        vf = v.float()
    else:
        real = (torch.arange(sk, device=k.device) < kv_lens.view(-1, 1)).view(-1, 1, sk, 1)  # [B, 1, Skv, 1]
        kf = torch.where(real, k.float(), 0.0)
        count = kv_lens.view(-1, 1, 1, 1).clamp_min(1).float()
        mean = kf.sum(dim=2, keepdim=True) / count
        vf = torch.where(real, v.float(), 0.0)
    smoothed = kf - mean
    if real is not None:
        smoothed = torch.where(real, smoothed, 0.0)
    q8, q_scale = _quantize_rows(q, -1, qk)
    k8, k_scale = _quantize_rows(smoothed, -1, qk)
    v_scale = vf.abs().amax(dim=2) / FP8_MAX  # [B, H, D]
    v8 = (vf / v_scale.clamp_min(_TINY).unsqueeze(2)).to(FP8_DTYPE)
    v8t = torch.zeros(*v.shape[:2], v.shape[3], _v_columns(sk), dtype=FP8_DTYPE, device=v.device)
    v8t[..., :sk] = v8.transpose(2, 3)
    lse_shift = torch.einsum("bhqd,bhkd->bhq", q.float(), mean) * scale
    return Fp8Inputs(q8, q_scale.contiguous(), k8.contiguous(), k_scale.contiguous(), v8t,
                     v_scale.contiguous(), lse_shift)


def _quantized_like(q: torch.Tensor, k: torch.Tensor, qk: str) -> tuple[torch.Tensor, ...]:
    """Empty ``Fp8Inputs`` fields for q [B, H, Sq, D] and k [B, H, Skv, D] (q8 keeps q's strides)."""
    b, h, sq, d = q.shape
    sk = k.shape[2]
    f32 = dict(dtype=torch.float32, device=q.device)
    return (torch.empty_like(q, dtype=QK_DTYPES[qk]), torch.empty(b, h, sq, **f32),
            torch.empty(b, h, sk, d, dtype=QK_DTYPES[qk], device=q.device), torch.empty(b, h, sk, **f32),
            torch.empty(b, h, d, _v_columns(sk), dtype=FP8_DTYPE, device=q.device), torch.empty(b, h, d, **f32),
            torch.empty(b, h, sq, **f32))


# A custom op (with a fake), so a torch.compile'd model keeps one graph around the Triton launches.
@torch.library.custom_op("sparse_vdit::quantize_qkv_fp8", mutates_args=())
def _quantize_triton_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None,
                        scale: float, qk: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                        torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Fp8Inputs``' fields, in order, by ``_quantize_triton``."""
    fp8 = _quantize_triton(q, k, v, kv_lens, scale, qk)
    return fp8.q8, fp8.q_scale, fp8.k8, fp8.k_scale, fp8.v8t, fp8.v_scale, fp8.lse_shift


@_quantize_triton_op.register_fake
def _(q, k, v, kv_lens, scale, qk):
    return _quantized_like(q, k, qk)


def _quantize_triton(q, k, v, kv_lens, scale: float, qk: str) -> Fp8Inputs:
    """``quantize_qkv`` by ``kernels.triton_fp8_quant``'s kernels (the same function)."""
    from kernels.triton_block_sparse import interpreting
    from kernels.triton_fp8_quant import ROLE_K, ROLE_Q, ROLE_V, fp8_kv_stats_kernel, fp8_quantize_kernel

    b, h, sq, d = q.shape
    sk = k.shape[2]
    nb = cdiv(max(sk, 1), QUANT_BLOCK_S)
    f32 = dict(dtype=torch.float32, device=q.device)
    ksum, vmax = torch.empty(b * h, nb, d, **f32), torch.empty(b * h, nb, d, **f32)
    lens = kv_lens if kv_lens is not None else ksum
    fp8_kv_stats_kernel[(nb, b * h)](k, v, ksum, vmax, lens, *k.stride(), *v.stride(), h, sk, nb,
                                     HEAD_DIM=d, BLOCK_S=QUANT_BLOCK_S, HAS_KV_LENS=kv_lens is not None)
    count = (torch.full((b,), max(sk, 1), **f32) if kv_lens is None else kv_lens.clamp_min(1).float())
    mean = ksum.sum(1) / count.repeat_interleave(h).unsqueeze(1)  # [B * H, D]
    v_scale = vmax.amax(1) / FP8_MAX  # [B * H, D]
    cast = not interpreting()  # the interpreter's float32 -> float8 cast rounds wrongly: torch casts there
    qk_dtype = QK_DTYPES[qk] if cast else torch.float32
    q8 = torch.empty_like(q, dtype=qk_dtype)
    k8 = torch.empty(b, h, sk, d, dtype=qk_dtype, device=q.device)
    v8t = torch.empty(b, h, d, _v_columns(sk), dtype=FP8_DTYPE if cast else torch.float32, device=q.device)
    v8t[..., sk:].zero_()  # the alignment columns; the V role writes every column below sk
    q_scale, shift = torch.empty(b, h, sq, **f32), torch.empty(b, h, sq, **f32)
    k_scale = torch.empty(b, h, sk, **f32)
    v_out = v8t.transpose(2, 3)  # [B, H, S', D] view: the V role stores its rows as columns
    for role, x, out, scales, column, n in ((ROLE_Q, q, q8, q_scale, mean, sq), (ROLE_K, k, k8, k_scale, mean, sk),
                                            (ROLE_V, v, v_out, k_scale, v_scale, sk)):
        fp8_quantize_kernel[(cdiv(max(n, 1), QUANT_BLOCK_S), b * h)](
            x, out, scales, column, shift, lens, *x.stride(), *out.stride(), h, n, scale,
            HEAD_DIM=d, BLOCK_S=QUANT_BLOCK_S, ROLE=role, HAS_KV_LENS=kv_lens is not None, CAST=cast,
            ROW_MAX=INT8_MAX if qk == "int8" else FP8_MAX, ROUND=qk == "int8",
        )
    if not cast:
        q8, k8, v8t = q8.to(QK_DTYPES[qk]), k8.to(QK_DTYPES[qk]), v8t.to(FP8_DTYPE)
    return Fp8Inputs(q8, q_scale, k8, k_scale, v8t, v_scale.view(b, h, d), shift)


_FALLBACK = "; use the default precision (precision=None: the inputs' dtype, e.g. bf16)"


def precision_error(precision, head_dim: int | None = None) -> str | None:
    """Why ``precision`` (for heads of ``head_dim``, when given) cannot be served, or None: the
    checks that need no tensor (``apply_sparse_attention`` runs them at install)."""
    if precision not in PRECISIONS:
        return f"precision must be one of {PRECISIONS} (None: the inputs' dtype), got {precision!r}"
    if precision == "fp8" and head_dim is not None and head_dim not in FP8_HEAD_DIMS:
        return f"precision='fp8' serves head dims {FP8_HEAD_DIMS}, not {head_dim}{_FALLBACK}"
    return None


def fp8_error(q: torch.Tensor, block_size: tuple[int, int] | None = None, *, interpreter: bool = False) -> str | None:
    """Why the FP8 kernels cannot serve q [B, H, S, D] (and a layout of ``block_size``), or None.

    FP8 runs on NVIDIA GPUs with FP8 tensor cores (compute capability 8.9 or newer: Ada, Hopper;
    measured on Hopper), and under the CPU interpreter for tests."""
    if q.is_cuda:
        cap = torch.cuda.get_device_capability(q.device)
        if cap < (8, 9):
            return (f"precision='fp8' needs FP8 tensor cores (compute capability 8.9+, e.g. H100), "
                    f"but {torch.cuda.get_device_name(q.device)} is sm_{cap[0]}{cap[1]}{_FALLBACK}")
    elif not interpreter:
        return f"precision='fp8' runs only in the Triton kernels on a CUDA GPU, not on {q.device.type}{_FALLBACK}"
    error = precision_error("fp8", q.shape[-1])
    if error is None and block_size is not None:
        q_block, kv_block = block_size
        if q_block not in FP8_Q_BLOCK_SIZES or kv_block < FP8_MIN_KV_BLOCK:
            error = (f"precision='fp8' needs a layout with Q_BLOCK in {FP8_Q_BLOCK_SIZES} and KV_BLOCK >= "
                     f"{FP8_MIN_KV_BLOCK} (float8 tensor-core tiles), not {tuple(block_size)}{_FALLBACK}")
    return error
