"""Public attention ops of sparse-vdit: the only entry points the rest of the project calls.

    block_sparse_attention(q, k, v, layout)   attention over a BlockLayout's blocks
    attention_with_lse(q, k, v)               dense attention that also returns the row LSE
    block_attention_mass(q, k, lse, block)    AdaSpa's per-block softmax mass, one pass over Q K^T

Tensors are [B, H, S, D] with any strides (diffusers' [B, S, H, D] transposed as a view is fine,
and the output comes back with q's strides, so transposing it back is free). D is any from 16 to
256: powers of two run natively (64 and 128 are the tuned ones); the Triton path zero-pads another
D to the next power of two and slices the output back (exact: 96 runs as 128, a third
more compute than a native 96 kernel would do). The softmax scale is 1/sqrt(D) of the caller's D
(or ``scale``), never the padded one. Dtypes bf16, fp16 or fp32 (fp32 is computed exactly,
slowly: cast to bf16 for speed). LSE is float32, natural log.

``precision="fp8"`` (block_sparse_attention, attention_with_lse) quantises q, k, v as SageAttention
does (``kernels.fp8``: Q and K int8 with per-token scales, K smoothed by its mean; V float8 e4m3 with
per-channel scales; P rounded to e4m3 for P x V, each key tile's product added into fp32) and
returns the inputs' dtype. It
needs a GPU with FP8 tensor cores (sm_89+), head dim 64 or 128, Q_BLOCK 64 / 128 and KV_BLOCK >= 32;
anything else is refused with an error naming the default precision as the fallback.

Each op is a ``torch.library.custom_op`` with a fake implementation, so a torch.compile'd model
keeps one graph. On CUDA tensors the Triton kernels run; on CPU tensors they run under the Triton
interpreter when TRITON_INTERPRET=1 (tests), otherwise a PyTorch path computes the same function
and warns once.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os

import torch

from kernels import torch_paths, tuning
from kernels.block_layout import BlockLayout
from kernels.fp8 import Fp8Inputs, fp8_error, precision_error, quantize_qkv
from kernels.helpers import cdiv
from kernels.limits import (
    KV_BLOCK_SIZES,
    MASS_BLOCK_SIZES,
    Q_BLOCK_SIZES,
    SUPPORTED_DTYPES,
    dtype_names,
    head_dim_error,
    head_dim_supported,
    kernel_head_dim,
)

try:  # Triton is a Linux dependency; elsewhere only the PyTorch path exists.
    import triton
    from triton.runtime.errors import OutOfResources

    from kernels.triton_block_mass import block_attention_mass_kernel
    from kernels.triton_block_sparse import LOG2E, block_sparse_attention_kernel, interpreting

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False

    def interpreting() -> bool:
        return False


__all__ = ["BlockLayout", "block_sparse_attention", "attention_with_lse", "block_attention_mass"]

DEFAULT_DENSE_BLOCK_M = 128

# block_attention_mass writes the mass of each group of MASS_ROW_GROUP query rows and sums the
# groups afterwards (0: reduce whole blocks in the kernel). SPARSE_VDIT_MASS_ROW_GROUP overrides.
MASS_ROW_GROUP = int(os.environ.get("SPARSE_VDIT_MASS_ROW_GROUP", "16"))
# Load q/k/v tiles with the copy engine (TMA tensor descriptors) where the GPU has one (sm_90+).
TMA_ENABLED = os.environ.get("SPARSE_VDIT_TMA", "1") != "0"  # SPARSE_VDIT_TMA=0: pointer loads
# FP8 accumulation on the tensor cores: "tile" (default) adds each key tile's P x V (and, for e4m3
# Q K^T, every 32 products) into fp32, SageAttention 2's two-level accumulation; "mma" keeps the
# output's running sum in the MMA's own accumulator, which on Hopper holds fewer bits than fp32.
# Measured on an H100 (benchmarks/RESULTS.md, 2026-12-08): on the proxy's activations the per-layer
# cosine to bf16 is >= 0.9996 with tile (int8 Q K) and 0.979-0.994 with mma; tile costs 2-9% of the
# kernel's time with int8 Q K.
FP8_ACCUMULATE = os.environ.get("SPARSE_VDIT_FP8_ACCUMULATE", "tile")
# The FP8 loop's softmax exponentials (kernels.triton_block_sparse.softmax_exp2): "mufu" (default,
# the special-function unit), "half" (half the columns by a polynomial on the FMA pipe, so both
# pipes work at once) or "poly" (all by the polynomial). Not yet timed on a GPU.
FP8_EXP2 = os.environ.get("SPARSE_VDIT_FP8_EXP2", "mufu")
FP8_EXP2_MODES = {"mufu": 0, "half": 1, "poly": 2}
# Tile configurations per GPU: kernels.tuning (tables written by benchmarks/bench_attention.py --sweep).


def _launch_fitting(kind: str, key: tuple[int, ...], q: torch.Tensor, launch) -> None:
    """``launch(block_n, num_warps, num_stages)`` with the table's config for (kind, key); if it
    does not fit the GPU's shared memory (Triton raises OutOfResources at its first launch),
    shrink it until it does and remember that for later launches of the same dtype."""
    if interpreting() and not q.is_cuda:
        launch(*tuning.INTERPRETER)
        return
    variant = (q.dtype,)
    cfg = tuning.config(kind, key, q.device, variant)
    while True:
        try:
            with _on_device(q):  # Triton launches on the current device: make it the tensors'
                launch(*cfg)
        except OutOfResources:
            smaller = tuning.shrink(cfg)
            if smaller is None:
                raise
            cfg = smaller
            tuning.remember(kind, key, q.device, variant, cfg)
            continue
        return


def _use_triton(t: torch.Tensor) -> bool:
    if t.is_cuda:
        if not HAS_TRITON:
            raise RuntimeError("sparse-vdit needs triton for CUDA tensors: pip install triton")
        return True
    if HAS_TRITON and interpreting():
        return True
    torch_paths.warn_fallback_once()
    return False


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None) -> None:
    tensors = (q, k) if v is None else (q, k, v)
    if any(t.dim() != 4 for t in tensors):
        raise ValueError(
            "q, k, v must be [B, H, S, D]; for diffusers' [B, S, H, D] pass x.transpose(1, 2) (a view, no copy)"
        )
    b, h, _, d = q.shape
    if k.shape[0] != b or k.shape[1] != h or k.shape[3] != d:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on B, H or D")
    if v is not None and v.shape != k.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if not head_dim_supported(d):
        raise ValueError(head_dim_error(d))
    if any(t.dtype != q.dtype for t in tensors) or q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"q, k, v must share one dtype among {dtype_names()}; got {[t.dtype for t in tensors]}"
        )
    if any(t.device != q.device for t in tensors):
        raise ValueError("q, k, v must be on one device")


def _scale(q: torch.Tensor, scale: float | None) -> float:
    """The softmax scale: 1/sqrt(D) for None, else ``scale`` as a float; a string, a bool, NaN or an
    infinity is refused (float() would take "0.5" and NaN would spread through every row)."""
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite number (the softmax scale; None for 1/sqrt(D)), got {scale!r}")
    return float(scale)


def _on_device(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _tma_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Scratch memory for device-side TMA descriptors, on the device the kernel launches on
    (the launchers make it the tensors' device)."""
    return torch.empty(size, dtype=torch.int8, device=torch.cuda.current_device())


def _ensure_allocator() -> None:
    """Install ``_tma_scratch`` as Triton's allocator unless one is set (the user's is kept).
    Triton keeps the allocator in a context variable, so each thread is checked on its own."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_tma_scratch)


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """TMA descriptors need sm_90+, a contiguous last dim and 16-byte aligned rows and bases."""
    t0 = tensors[0]
    if not (TMA_ENABLED and t0.is_cuda and torch.cuda.get_device_capability(t0.device)[0] >= 9):
        return False
    for t in tensors:
        es = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any((st * es) % 16 for st in t.stride()[:-1]):
            return False
    _ensure_allocator()
    return True


def _padded_head_dim(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` [B, H, S, D] zero-padded along D to ``kernel_head_dim(D)``, the power of two the
    kernels compute (the same tensors when D is one). Exact: zero columns of q and k add nothing
    to q.k, zero columns of v give zero output columns; the caller's softmax scale is kept. Costs
    a padded copy of the inputs (and ``_unpadded`` one of the output) per call."""
    d = tensors[0].shape[-1]
    pad = kernel_head_dim(d) - d
    return tensors if pad == 0 else tuple(torch.nn.functional.pad(t, (0, pad)) for t in tensors)


def _unpadded(out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The kernel's output [B, H, S, kernel D] back at q's D and with q's strides (as the fake
    implementations promise)."""
    if out.shape[-1] == q.shape[-1]:
        return out
    return torch.empty_like(q).copy_(out[..., : q.shape[-1]])


def _fp8_exp2_mode() -> int:
    if FP8_EXP2 not in FP8_EXP2_MODES:
        raise ValueError(f"SPARSE_VDIT_FP8_EXP2 / kernels.attention.FP8_EXP2 must be one of {tuple(FP8_EXP2_MODES)}, "
                         f"got {FP8_EXP2!r}")
    return FP8_EXP2_MODES[FP8_EXP2]


def _dot_fp32(q: torch.Tensor) -> bool:
    # The Triton CPU interpreter multiplies bf16 tl.dot operands as their integer bit patterns
    # (wrong products), so the dot is upcast to fp32 there.
    return q.dtype == torch.float32 or (interpreting() and not q.is_cuda)


# --------------------------------------------------------------------------- block-sparse / dense
def _launch_attention(q, k, v, layout_tensors, q_block: int, kv_block: int, scale: float, kv_lens=None, *,
                      dense: bool = False, has_partial: bool = False, fp8: Fp8Inputs | None = None,
                      out_dtype: torch.dtype | None = None):
    """Launch the block-sparse kernel on q, k, v (or on ``fp8``'s quantised tensors, then q, k, v
    are its q8, k8 and V view and the output is ``out_dtype``). Returns (out, lse)."""
    caller_q = q
    if fp8 is None:
        q, k, v = _padded_head_dim(q, k, v)
        out = torch.empty_like(q)
        use_tma = _tma_ok(q, k, v)
    else:
        q, k, v = fp8.q8, fp8.k8, fp8.v8
        out = torch.empty_like(q, dtype=out_dtype)
        use_tma = _tma_ok(q, k, fp8.v8t)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    lse = torch.empty(b, h, sq, dtype=torch.float32, device=q.device)
    full_num, full_idx, part_num, part_idx, tile_ids, tiles, head_patterns = layout_tensors
    # Index lists are stored narrow (int8 / int16) but loaded as int32: the kernel's per-block
    # scalar index loads pipeline only at 4 bytes (int16 lists ran 5% slower on the H200).
    full_idx, part_idx, tile_ids = (t.to(torch.int32) for t in (full_idx, part_idx, tile_ids))
    lb, lp, nqb = full_num.shape
    stride_b = lp * nqb if lb > 1 else 0
    stride_p = nqb if lp > 1 else 0
    grid = (cdiv(sq, q_block), b * h)
    scales = (lse, lse, lse) if fp8 is None else (fp8.q_scale, fp8.k_scale, fp8.v_scale)

    def launch(block_n: int, warps: int, stages: int) -> None:
        block_sparse_attention_kernel[grid](
            q, k, v, out, lse,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            full_num, full_idx, part_num, part_idx, tile_ids, tiles,
            full_num if kv_lens is None else kv_lens, full_num if head_patterns is None else head_patterns,
            *scales,
            stride_b, stride_p, full_idx.shape[-1], part_idx.shape[-1],
            0 if head_patterns is None else head_patterns.stride(0),
            h, sq, sk, scale * LOG2E,
            HEAD_DIM=d, BLOCK_M=q_block, KV_BLOCK=kv_block, BLOCK_N=min(block_n, kv_block),
            DENSE=dense, HAS_PARTIAL=has_partial and not dense,
            DOT_FP32=_dot_fp32(q), USE_TMA=use_tma, HAS_KV_LENS=kv_lens is not None,
            HAS_HEAD_PATTERNS=head_patterns is not None, FP8=fp8 is not None,
            FP8_TILE_ACC=fp8 is not None and FP8_ACCUMULATE == "tile",
            FP8_EXP2=_fp8_exp2_mode() if fp8 is not None else 0, num_warps=warps, num_stages=stages,
        )

    kind = ("dense" if dense else "attention") + ("" if fp8 is None else "_fp8")
    _launch_fitting(kind, (d,) if dense else (d, q_block), q, launch)
    if fp8 is not None:
        return out, lse + fp8.lse_shift  # the LSE of the unsmoothed keys (-inf stays -inf)
    return _unpadded(out, caller_q), lse


@torch.library.custom_op("sparse_vdit::block_sparse_attention", mutates_args=())
def _block_sparse_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    full_num: torch.Tensor, full_idx: torch.Tensor, part_num: torch.Tensor, part_idx: torch.Tensor,
    tile_ids: torch.Tensor, tile_masks: torch.Tensor, head_patterns: torch.Tensor | None, kv_lens: torch.Tensor | None,
    q_block: int, kv_block: int, scale: float, has_partial: bool, dense: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    layout_tensors = (full_num, full_idx, part_num, part_idx, tile_ids, tile_masks, head_patterns)
    if _use_triton(q):
        if dense:  # every block computed unmasked: the index-free dense loop computes the same
            return _launch_attention(q, k, v, layout_tensors, DEFAULT_DENSE_BLOCK_M, DEFAULT_DENSE_BLOCK_M, scale,
                                     kv_lens, dense=True)
        return _launch_attention(q, k, v, layout_tensors, q_block, kv_block, scale, kv_lens, has_partial=has_partial)
    # The op receives only tensors: rebuild the (already checked) layout around them, reading nothing.
    layout = BlockLayout(part_num, part_idx, full_num, full_idx, tile_ids, tile_masks.bool(),
                         (q_block, kv_block), (q.shape[2], k.shape[2]), head_patterns,
                         has_partial=has_partial, is_dense=dense, check=False)
    return torch_paths.attention(q, k, v, layout, scale, kv_lens)


@_block_sparse_attention_op.register_fake
def _(q, k, v, full_num, full_idx, part_num, part_idx, tile_ids, tile_masks, head_patterns, kv_lens, q_block, kv_block,
      scale, has_partial, dense):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def _no_layout(device) -> tuple:
    """Stand-ins for the layout tensors of a dense launch (the dense loop reads none of them)."""
    empty = torch.empty(1, 1, 1, 1, dtype=torch.int32, device=device)
    return (empty[..., 0], empty, empty[..., 0], empty, empty, empty.to(torch.int8), None)


@torch.library.custom_op("sparse_vdit::attention_with_lse", mutates_args=())
def _attention_with_lse_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_triton(q):
        return _launch_attention(q, k, v, _no_layout(q.device), DEFAULT_DENSE_BLOCK_M, DEFAULT_DENSE_BLOCK_M, scale,
                                 kv_lens, dense=True)
    return torch_paths.attention(q, k, v, None, scale, kv_lens)


@_attention_with_lse_op.register_fake
def _(q, k, v, kv_lens, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("sparse_vdit::block_sparse_attention_fp8", mutates_args=())
def _block_sparse_attention_fp8_op(
    q8: torch.Tensor, q_scale: torch.Tensor, k8: torch.Tensor, k_scale: torch.Tensor, v8t: torch.Tensor,
    v_scale: torch.Tensor, lse_shift: torch.Tensor,
    full_num: torch.Tensor, full_idx: torch.Tensor, part_num: torch.Tensor, part_idx: torch.Tensor,
    tile_ids: torch.Tensor, tile_masks: torch.Tensor, head_patterns: torch.Tensor | None, kv_lens: torch.Tensor | None,
    q_block: int, kv_block: int, scale: float, has_partial: bool, dense: bool, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The FP8 kernel on ``kernels.fp8.quantize_qkv``'s tensors (checked by ``_fp8_attention``)."""
    fp8 = Fp8Inputs(q8, q_scale, k8, k_scale, v8t, v_scale, lse_shift)
    layout_tensors = (full_num, full_idx, part_num, part_idx, tile_ids, tile_masks, head_patterns)
    if dense:  # every block computed unmasked: the index-free dense loop at its own tile
        q_block = kv_block = DEFAULT_DENSE_BLOCK_M
    return _launch_attention(q8, k8, None, layout_tensors, q_block, kv_block, scale, kv_lens, dense=dense,
                             has_partial=has_partial, fp8=fp8, out_dtype=out_dtype)


@_block_sparse_attention_fp8_op.register_fake
def _(q8, q_scale, k8, k_scale, v8t, v_scale, lse_shift, full_num, full_idx, part_num, part_idx, tile_ids, tile_masks,
      head_patterns, kv_lens, q_block, kv_block, scale, has_partial, dense, out_dtype):
    return torch.empty_like(q8, dtype=out_dtype), q8.new_empty(q8.shape[:3], dtype=torch.float32)


def _check_precision(precision, q: torch.Tensor, block_size: tuple[int, int] | None) -> bool:
    """True for precision="fp8" (after checking the kernels can serve it), False for None."""
    error = precision_error(precision)
    if error is None and precision is None:
        return False
    error = error or fp8_error(q, block_size, interpreter=HAS_TRITON and interpreting())
    if error is not None:
        raise ValueError(error)
    return True


def _fp8_attention(q, k, v, layout: BlockLayout | None, scale: float, kv_lens: torch.Tensor | None, head_table):
    """Quantise (PyTorch ops: torch.compile fuses them) and run the FP8 kernel; layout None: dense."""
    fp8 = quantize_qkv(q, k, v, kv_lens, scale=scale)
    if layout is None:
        tensors = _no_layout(q.device)
        block, has_partial, dense = (DEFAULT_DENSE_BLOCK_M, DEFAULT_DENSE_BLOCK_M), False, True
    else:
        tensors = (layout.full_kv_num_blocks, layout.full_kv_indices, layout.kv_num_blocks, layout.kv_indices,
                   layout.tile_ids, layout.tile_masks_i8, head_table)
        block, has_partial, dense = layout.block_size, layout.has_partial, layout.is_dense
    return _block_sparse_attention_fp8_op(
        fp8.q8, fp8.q_scale, fp8.k8, fp8.k_scale, fp8.v8t, fp8.v_scale, fp8.lse_shift, *tensors, kv_lens,
        block[0], block[1], scale, has_partial, dense, q.dtype,
    )


def _head_table(layout: BlockLayout, heads: int) -> torch.Tensor | None:
    """The layout's head-to-pattern table for ``heads`` heads (a one-entry table broadcast as a
    stride-0 view: no copy), or None."""
    table = layout.head_patterns
    if table is None or table.shape[0] == heads:
        return table
    return table.expand(heads)


def _key_lengths(kv_lens: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """Validate per-batch key lengths and return them as int32 [B] on q's device, clamped to
    [0, Skv] on the device (no host synchronisation, so CUDA graphs and torch.compile keep it).
    The clamp comes before the cast: int32 would wrap a length >= 2^31 to a negative one."""
    if kv_lens is None:
        return None
    if not isinstance(kv_lens, torch.Tensor):
        raise TypeError(f"kv_lens must be an integer tensor [B], got {type(kv_lens).__name__}")
    if kv_lens.dtype.is_floating_point or kv_lens.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise TypeError(f"kv_lens must be an integer tensor [B] (number of real keys per batch), got {kv_lens.dtype}")
    if tuple(kv_lens.shape) != (q.shape[0],):
        raise ValueError(f"kv_lens must be [B] = [{q.shape[0]}] (real keys per batch), got {tuple(kv_lens.shape)}")
    return kv_lens.to(device=q.device).clamp(0, k.shape[2]).to(torch.int32)


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout | None = None,
    *,
    scale: float | None = None,
    return_lse: bool = False,
    kv_lens: torch.Tensor | None = None,
    block_mask: BlockLayout | None = None,
    precision: str | None = None,
):
    """Attention computed only on ``layout``'s blocks.

    Args:
        q: [B, H, Sq, D]; k, v: [B, H, Skv, D]; any strides, one dtype (bf16 / fp16 / fp32).
        layout: a ``BlockLayout`` with seq_lengths (Sq, Skv) and batch / head dims equal to
            B / H or 1; its Q_BLOCK must be 64 or 128 and KV_BLOCK a multiple of 16.
        block_mask: the old name of ``layout`` (it takes a ``BlockLayout``, not a FlexAttention
            ``BlockMask``; ``BlockLayout.to_flex_block_mask()`` converts), kept for callers.
        scale: softmax scale, default 1/sqrt(D) (q's D, also where the kernel pads it).
        return_lse: also return the row log-sum-exp [B, H, Sq] (float32, natural log).
        kv_lens: [B] integer tensor or None: batch b attends only keys 0 .. kv_lens[b]-1 (key
            padding at the end of the sequence, as flash-attention's ``seqused_k``); values are
            clamped to [0, Skv]. Padded keys are never read into the output (a NaN there stays out).
        precision: None (compute in the inputs' dtype) or "fp8" (quantised, see the module
            docstring; off by default).

    Returns out [B, H, Sq, D] (q's dtype and strides), or (out, lse). Rows whose blocks are all
    empty or fully masked return zeros (lse = -inf).
    """
    _check_qkv(q, k, v)
    if (layout is None) == (block_mask is None):
        raise TypeError(
            "block_sparse_attention takes one layout, a kernels.block_layout.BlockLayout: pass it as `layout` "
            "(block_mask is its old name); build one with BlockLayout.from_block_maps or BlockLayout.from_mask_mod"
        )
    layout = layout if layout is not None else block_mask
    if not isinstance(layout, BlockLayout):
        raise TypeError(
            f"layout must be a kernels.block_layout.BlockLayout, got {type(layout).__name__}; "
            "build one with BlockLayout.from_block_maps or BlockLayout.from_mask_mod"
        )
    sq, sk = q.shape[2], k.shape[2]
    if tuple(layout.seq_lengths) != (sq, sk):
        raise ValueError(
            f"block layout was built for seq_lengths {layout.seq_lengths} but q / k have ({sq}, {sk}): "
            "you likely need to build a new layout for this shape"
        )
    lb, lh = layout.shape[:2]
    if lb not in (1, q.shape[0]) or lh not in (1, q.shape[1]):
        raise ValueError(
            f"block layout has batch x heads {lb} x {lh}; q has {q.shape[0]} x {q.shape[1]} (use 1 to broadcast)"
        )
    q_block, kv_block = layout.block_size
    if q_block not in Q_BLOCK_SIZES or kv_block not in KV_BLOCK_SIZES:
        raise ValueError(
            f"block size {layout.block_size} is not served by the kernel: Q_BLOCK must be 64 or 128 "
            "(16 / 32 work but are slow) and KV_BLOCK a power of two from 16 to 256; "
            "rebuild the layout with such a block_size"
        )
    if layout.device != q.device:
        layout = layout.to(q.device)
    if _check_precision(precision, q, layout.block_size):
        out, lse = _fp8_attention(q, k, v, layout, _scale(q, scale), _key_lengths(kv_lens, q, k),
                                  _head_table(layout, q.shape[1]))
        return (out, lse) if return_lse else out
    out, lse = _block_sparse_attention_op(
        q, k, v,
        layout.full_kv_num_blocks, layout.full_kv_indices,
        layout.kv_num_blocks, layout.kv_indices,
        layout.tile_ids, layout.tile_masks_i8, _head_table(layout, q.shape[1]), _key_lengths(kv_lens, q, k),
        q_block, kv_block, _scale(q, scale), layout.has_partial, layout.is_dense,
    )
    return (out, lse) if return_lse else out


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
    kv_lens: torch.Tensor | None = None, precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention that also returns the row LSE: (out [B, H, Sq, D], lse [B, H, Sq] fp32).

    ``kv_lens`` and ``precision`` as in ``block_sparse_attention``. AdaSpa's first search step uses
    it: the step's output and the LSE the later searches reuse.
    """
    _check_qkv(q, k, v)
    if _check_precision(precision, q, None):
        return _fp8_attention(q, k, v, None, _scale(q, scale), _key_lengths(kv_lens, q, k), None)
    return _attention_with_lse_op(q, k, v, _key_lengths(kv_lens, q, k), _scale(q, scale))


# --------------------------------------------------------------------------- block mass
def _launch_mass(q, k, lse, block_size: int, scale: float, kv_lens=None):
    q, k = _padded_head_dim(q, k)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    qb, kb = cdiv(sq, block_size), cdiv(sk, block_size)
    row_group = MASS_ROW_GROUP if 0 < MASS_ROW_GROUP < block_size else block_size
    groups = block_size // row_group
    mass = torch.empty(b, h, qb * groups, kb, dtype=torch.float32, device=q.device)
    compute_lse = lse is None
    lse_out = torch.empty(b, h, sq, dtype=torch.float32, device=q.device) if compute_lse else lse
    lse_in = lse_out
    def launch(block_n: int, warps: int, stages: int) -> None:
        block_attention_mass_kernel[(qb, b * h)](
            q, k, lse_in, mass, lse_out, lse_in if kv_lens is None else kv_lens,
            *q.stride(), *k.stride(), *lse_in.stride(),
            h, sq, sk, kb, scale * LOG2E,
            HEAD_DIM=d, BLOCK=block_size, BLOCK_N=min(block_n, block_size), COMPUTE_LSE=compute_lse,
            DOT_FP32=_dot_fp32(q), ROW_GROUP=row_group, HAS_KV_LENS=kv_lens is not None,
            num_warps=warps, num_stages=stages,
        )

    _launch_fitting("mass", (d, block_size), q, launch)
    if groups > 1:
        mass = mass.view(b, h, qb, groups, kb).sum(3)
    return mass, lse_out


@torch.library.custom_op("sparse_vdit::block_attention_mass", mutates_args=())
def _block_attention_mass_op(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None, kv_lens: torch.Tensor | None, block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_triton(q):
        mass, lse_out = _launch_mass(q, k, lse, block_size, scale, kv_lens)
        return mass, (lse_out.clone() if lse is not None else lse_out)
    return torch_paths.block_attention_mass(q, k, lse, block_size, scale, kv_lens)


@_block_attention_mass_op.register_fake
def _(q, k, lse, kv_lens, block_size, scale):
    b, h, sq, _ = q.shape
    qb, kb = cdiv(sq, block_size), cdiv(k.shape[2], block_size)
    return q.new_empty(b, h, qb, kb, dtype=torch.float32), q.new_empty(b, h, sq, dtype=torch.float32)


def block_attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor | None,
    block_size: int,
    *,
    scale: float | None = None,
    return_lse: bool = False,
    kv_lens: torch.Tensor | None = None,
):
    """Per-block softmax mass W[b, h, i, j] = sum over query block i and key block j of
    exp(scale * q.k - lse_row): AdaSpa's block-selection score, one pass over Q K^T, no V, no
    S x S tensor.

    Args:
        q: [B, H, Sq, D]; k: [B, H, Skv, D].
        lse: [B, H, Sq] float32 row LSE (cached from ``attention_with_lse``), or None for the fused
            variant that computes the exact LSE first in the same call.
        block_size: 64 or 128 (square blocks).
        return_lse: also return the LSE used ([B, H, Sq] fp32; the computed one when lse is None).
        kv_lens: [B] integer tensor or None: keys at or past kv_lens[b] are padding (mass 0, left
            out of a computed LSE), as in ``block_sparse_attention``.

    A row with lse = -inf (it saw no key) contributes nothing; a NaN lse gives NaN masses in its
    query block (both paths), so a corrupt cache shows instead of selecting arbitrary blocks.

    Returns mass [B, H, ceil(Sq/bs), ceil(Skv/bs)] float32 (each row sums to the fraction of the
    row's softmax the LSE accounts for: 1 per query row when the LSE is exact), or (mass, lse).
    """
    _check_qkv(q, k, None)
    if block_size not in MASS_BLOCK_SIZES:
        raise ValueError(f"block_size {block_size} is not supported: use 64 or 128")
    if lse is not None:
        if not isinstance(lse, torch.Tensor) or not lse.dtype.is_floating_point:
            raise TypeError(
                f"lse must be a floating-point tensor [B, H, Sq] (the row log-sum-exp, e.g. from "
                f"attention_with_lse), got {getattr(lse, 'dtype', type(lse).__name__)}"
            )
        if tuple(lse.shape) != tuple(q.shape[:3]):
            raise ValueError(f"lse must be [B, H, Sq] = {tuple(q.shape[:3])}, got {tuple(lse.shape)}")
        lse = lse.to(device=q.device, dtype=torch.float32)
    mass, lse_used = _block_attention_mass_op(q, k, lse, _key_lengths(kv_lens, q, k), int(block_size), _scale(q, scale))
    return (mass, lse_used) if return_lse else mass
