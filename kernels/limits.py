"""What the attention kernels serve, written once and read by the kernels, layouts, processors,
methods and commands alike (so a method's ``validate`` and the kernel never disagree). Imports no
torch (the commands' ``--help`` reads it): ``SUPPORTED_DTYPES`` is made on first use."""

from __future__ import annotations

# Input dtypes of q, k, v. fp32 is computed exactly but slowly: cast to bf16 for speed.
SUPPORTED_DTYPE_NAMES = ("bfloat16", "float16", "float32")
# Square-ish block sizes: Q_BLOCK is a program's query rows, KV_BLOCK the key granule of a layout.
Q_BLOCK_SIZES = (16, 32, 64, 128)  # 64 and 128 are tuned; 16 / 32 serve tiny test models
KV_BLOCK_SIZES = (16, 32, 64, 128, 256)
MASS_BLOCK_SIZES = (16, 32, 64, 128)  # block_attention_mass (square blocks)
# Head dims served: any from MIN_HEAD_DIM to MAX_HEAD_DIM. The kernels compute the powers of two in
# between (64 and 128 are tuned); another head dim is zero-padded to the next one
# (kernel_head_dim: 96 runs as 128, a third more attention compute than a native 96 kernel would do).
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
MAX_BLOCK_SIZE = max(KV_BLOCK_SIZES)
# precision="fp8" (kernels.fp8): float8 tensor-core tiles need a reduction dim of >= 32 (P x V
# reduces over a key tile) and warp-group rows of 64; the head dims of the video DiTs served.
PRECISIONS = (None, "fp8")
FP8_HEAD_DIMS = (64, 128)
FP8_Q_BLOCK_SIZES = (64, 128)
FP8_MIN_KV_BLOCK = 32
FP8_MAX = 448.0  # the largest finite float8 e4m3 value (torch.float8_e4m3fn, tl.float8e4nv)
# Q and K of the FP8 path: "e4m3" (float8, as FlashAttention-3) or "int8" (as SageAttention: int8
# values in [-INT8_MAX, INT8_MAX], exact int32 accumulation on the tensor cores); V and P are e4m3.
FP8_QK_FORMATS = ("e4m3", "int8")
INT8_MAX = 127.0
# Layout block size when none is given: the tuned kernel tile on a GPU; small blocks for the tiny
# proxy models the CPU runs.
DEVICE_KINDS = ("cuda", "cpu")  # where the kernels (CUDA) or their PyTorch path (CPU) run
DEFAULT_GPU_BLOCK_SIZE = 128
DEFAULT_CPU_BLOCK_SIZE = 16


def head_dim_supported(head_dim: int) -> bool:
    """Whether the kernels serve ``head_dim`` (natively for a power of two, else zero-padded)."""
    return MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM


def kernel_head_dim(head_dim: int) -> int:
    """The head dim the kernels compute ``head_dim`` at: the smallest power of two >= it (96 -> 128).
    Zero columns of q and k add nothing to q.k and zero columns of v give zero outputs, so padding
    to it and slicing the output back is exact (the softmax scale stays the caller's)."""
    return 1 << (int(head_dim) - 1).bit_length()


def head_dim_error(head_dim: int, what: str = "head_dim") -> str:
    return (
        f"{what} {head_dim} is not supported: the attention kernels take {MIN_HEAD_DIM} to {MAX_HEAD_DIM} "
        "(powers of two natively, 64 and 128 tuned; others zero-padded to the next power of two)"
    )


def dtype_supported(dtype) -> bool:
    """Whether the kernels serve the torch dtype ``dtype``."""
    return type(dtype).__module__ == "torch" and str(dtype).replace("torch.", "") in SUPPORTED_DTYPE_NAMES


def dtype_names() -> str:
    return ", ".join(SUPPORTED_DTYPE_NAMES)


def default_block_size(device) -> int:
    """The layout block size for ``device`` (a torch.device or "cuda", "cuda:1", "cpu", ...):
    ``DEFAULT_GPU_BLOCK_SIZE`` on CUDA, else ``DEFAULT_CPU_BLOCK_SIZE``."""
    return DEFAULT_GPU_BLOCK_SIZE if str(device).split(":")[0] == "cuda" else DEFAULT_CPU_BLOCK_SIZE


def __getattr__(name: str):
    if name == "SUPPORTED_DTYPES":  # (torch.bfloat16, torch.float16, torch.float32), torch imported here
        import torch

        return tuple(getattr(torch, n) for n in SUPPORTED_DTYPE_NAMES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
