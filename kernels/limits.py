"""What the attention kernels serve, written once and read by the kernels, layouts, processors
and methods alike (so a method's ``validate`` and the kernel never disagree)."""

from __future__ import annotations

import torch

# Input dtypes of q, k, v. fp32 is computed exactly but slowly: cast to bf16 for speed.
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Square-ish block sizes: Q_BLOCK is a program's query rows, KV_BLOCK the key granule of a layout.
Q_BLOCK_SIZES = (16, 32, 64, 128)  # 64 and 128 are tuned; 16 / 32 serve tiny test models
KV_BLOCK_SIZES = (16, 32, 64, 128, 256)
MASS_BLOCK_SIZES = (16, 32, 64, 128)  # block_attention_mass (square blocks)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256  # powers of two in between; 64 and 128 are tuned
MAX_BLOCK_SIZE = max(KV_BLOCK_SIZES)


def head_dim_supported(head_dim: int) -> bool:
    return MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM and head_dim & (head_dim - 1) == 0


def head_dim_error(head_dim: int, what: str = "head_dim") -> str:
    return (
        f"{what} {head_dim} is not supported: the attention kernels need a power of two from "
        f"{MIN_HEAD_DIM} to {MAX_HEAD_DIM} (64 and 128 are tuned)"
    )


def dtype_supported(dtype: torch.dtype) -> bool:
    return dtype in SUPPORTED_DTYPES


def dtype_names() -> str:
    return ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
