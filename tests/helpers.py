"""Shared test helpers: tolerances relative to PyTorch's own error, hard shapes, diffusers-style inputs.

Tolerance rule (as flash-attention's tests set it): a kernel's max-abs error against the float64 reference must stay within
``factor`` x the error PyTorch itself makes at the same precision, plus a tiny floor so that fp32
does not demand bit-exactness: a few fp32 ulps at the reference's magnitude (the kernels accumulate
in fp32, so no kernel resolves finer; on outputs of a few elements PyTorch's own error can be ~0 by
luck). Against bf16 / fp16 errors the floor is negligible. NaN never passes, and every infinite
reference entry (lse = -inf of an empty row) must be matched exactly.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from sparse_vdit.token_layout import TokenLayout

FLOOR_FP32_ULPS = 4  # floor = this many fp32 eps x max(1, max |reference|)
TOLERANCE_FACTOR = 2.0


# --------------------------------------------------------------------------- tolerances
def max_abs_err(x: torch.Tensor, ref64: torch.Tensor) -> float:
    """Max |x - ref64| over entries where ref64 is finite (0.0 if there are none)."""
    finite = torch.isfinite(ref64)
    if not bool(finite.any()):
        return 0.0
    return float((x.double() - ref64.double())[finite].abs().max())


def assert_close_to_reference(
    out: torch.Tensor,
    ref64: torch.Tensor,
    lowp_ref: torch.Tensor,
    factor: float = TOLERANCE_FACTOR,
    atol_floor: float | None = None,
    name: str = "out",
) -> None:
    """Kernel ``out`` vs float64 ``ref64``, with PyTorch's same-precision ``lowp_ref`` as yardstick.

    Passes iff: out has ref64's shape, no NaN, out equals ref64 exactly wherever ref64 is +-inf,
    out is finite wherever ref64 is, and
        max|out - ref64| <= factor * max|lowp_ref - ref64| + atol_floor,
    with atol_floor (None) = FLOOR_FP32_ULPS * fp32 eps * max(1, max|ref64|) (~5e-7 for O(1) outputs).
    """
    assert tuple(out.shape) == tuple(ref64.shape), f"{name}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}"
    assert tuple(lowp_ref.shape) == tuple(ref64.shape), f"{name}: low-precision reference has the wrong shape"
    out64, ref64 = out.detach().double().cpu(), ref64.detach().double().cpu()
    lowp64 = lowp_ref.detach().double().cpu()
    n_nan = int(torch.isnan(out64).sum())
    assert n_nan == 0, f"{name}: {n_nan} NaN entries (reference has {int(torch.isnan(ref64).sum())})"
    assert not bool(torch.isnan(ref64).any()), f"{name}: the float64 reference itself has NaN"
    inf = torch.isinf(ref64)
    if bool(inf.any()):
        bad = inf & (out64 != ref64)
        assert not bool(bad.any()), (
            f"{name}: {int(bad.sum())} entries should be {ref64[bad][0].item()} (e.g. lse of an empty row) "
            f"but are e.g. {out64[bad][0].item()}"
        )
    bad_inf = ~inf & torch.isinf(out64)
    assert not bool(bad_inf.any()), f"{name}: {int(bad_inf.sum())} entries are infinite where the reference is finite"
    if atol_floor is None:
        finite = ref64[torch.isfinite(ref64)]
        magnitude = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
        atol_floor = FLOOR_FP32_ULPS * torch.finfo(torch.float32).eps * magnitude
    err = max_abs_err(out64, ref64)
    lowp_err = max_abs_err(lowp64, ref64)
    if math.isnan(lowp_err):
        raise AssertionError(f"{name}: the low-precision PyTorch reference has NaN; cannot set a tolerance")
    tol = factor * lowp_err + atol_floor
    assert err <= tol, (
        f"{name}: kernel max-abs error {err:.3e} exceeds {factor} x PyTorch's error {lowp_err:.3e} "
        f"+ floor {atol_floor:.1e} = {tol:.3e}"
    )


def lse_lowp(lse_fn, q, k, v, *args, **kwargs):
    """PyTorch's own fp32 LSE: the kernels return the LSE in float32, so that is its precision."""
    return lse_fn(q.float(), k.float(), v.float(), *args, upcast=False, **kwargs)[1]


def mass_lowp(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None, block_size: int, scale: float | None = None,
              kv_lens: torch.Tensor | None = None):
    """Block attention mass computed by PyTorch in float32 (the kernel's output precision).

    Returns (mass [B, H, QB, KB] fp32, lse [B, H, Sq] fp32). Independent of kernels.torch_paths.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if kv_lens is not None:
        real = torch.arange(k.shape[2]) < kv_lens.cpu().long().view(-1, 1)
        s = s.masked_fill(~real.view(-1, 1, 1, k.shape[2]), float("-inf"))
    lse = torch.logsumexp(s, dim=-1) if lse is None else lse.float()
    p = torch.exp(s - torch.where(torch.isneginf(lse), float("inf"), lse).unsqueeze(-1))
    b, h, sq, sk = p.shape
    qb, kb = -(-sq // block_size), -(-sk // block_size)
    p = torch.nn.functional.pad(p, (0, kb * block_size - sk, 0, qb * block_size - sq))
    return p.reshape(b, h, qb, block_size, kb, block_size).sum(dim=(3, 5)), lse


# --------------------------------------------------------------------------- inputs
def fresh_generator(request=None, salt: int = 0) -> torch.Generator:
    """A torch.Generator seeded from the test's node id (pytest ``request``): each test, and each
    parametrisation, draws different inputs, and a failure replays by re-running that test."""
    name = request.node.nodeid if request is not None else "no-test"
    return torch.Generator().manual_seed(zlib.crc32(name.encode()) * 1009 + salt)


def diffusers_qkv(
    B: int,
    S: int,
    H: int,
    D: int,
    dtype: torch.dtype,
    *,
    gen: torch.Generator | None = None,
    S_kv: int | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v made as diffusers does: [B, S, H, D] tensors viewed as [B, H, S, D].

    The results are non-contiguous ``.transpose(1, 2)`` views. ``scale`` multiplies q and k (larger
    values sharpen the softmax, which is where online-softmax bugs show).
    """
    gen = gen if gen is not None else fresh_generator()
    S_kv = S if S_kv is None else S_kv
    q = torch.randn(B, S, H, D, generator=gen) * scale
    k = torch.randn(B, S_kv, H, D, generator=gen) * scale
    v = torch.randn(B, S_kv, H, D, generator=gen)
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))
    return q, k, v


# --------------------------------------------------------------------------- hard shapes
def video_text_mask_mod(layout: TokenLayout, frame_window: int = 0, row_window: int = 1, col_window: int = 2):
    """FlexAttention-style mask_mod on a TokenLayout: text rows and columns dense, video tokens see
    a spatio-temporal window (|d frame| <= frame_window, |d row| <= row_window, |d col| <= col_window).

    Element-level, so blocks come out full, partial (with tiles) and empty.
    """

    def mask_mod(b, h, q_idx, kv_idx):
        fq, rq, cq = layout.position(q_idx)
        fk, rk, ck = layout.position(kv_idx)
        window = ((fq - fk).abs() <= frame_window) & ((rq - rk).abs() <= row_window) & ((cq - ck).abs() <= col_window)
        return layout.is_text(q_idx) | layout.is_text(kv_idx) | window

    return mask_mod


# (S, text_len, text_position) -> patched video grid (frames, rows, cols) with frames*rows*cols = S - text.
_GRIDS = {
    (113, 0): (1, 1, 113),
    (113, 7): (2, 1, 53),
    (1023, 0): (3, 11, 31),
    (1023, 7): (8, 1, 127),
    (4 * 1560 + 17, 7): (5, 50, 25),
    (4 * 1560 + 17, 0): (1, 1, 4 * 1560 + 17),
}


def token_layout_for(S: int, text_len: int, text_position: str) -> TokenLayout:
    frames, rows, cols = _GRIDS[(S, text_len)]
    layout = TokenLayout(frames, rows, cols, text_len=text_len, text_position=text_position if text_len else "none")
    assert layout.seq_len == S
    return layout


def _case(S, text_len, text_position, D, dtype, block, marks=()):
    dname = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    tname = "notext" if not text_len else f"text{text_len}{text_position}"
    return pytest.param(S, text_len, text_position, D, dtype, block, id=f"S{S}-{tname}-D{D}-{dname}-bs{block}", marks=marks)


HARD_SHAPE_ARGS = "S, text_len, text_position, D, dtype, block"

# Pairwise cover of S x text placement x D x dtype x block size; fp32 once; the 6257-token case
# only twice (the interpreter takes seconds per head at that length).
HARD_SHAPES = [
    _case(113, 0, "none", 64, torch.float16, 64),
    _case(113, 7, "before", 128, torch.bfloat16, 128),
    _case(113, 7, "after", 64, torch.bfloat16, 64),
    _case(113, 7, "after", 128, torch.float16, 128),
    _case(113, 7, "before", 64, torch.float32, 64),
    _case(1023, 0, "none", 128, torch.bfloat16, 64),
    _case(1023, 7, "before", 64, torch.float16, 128),
    _case(1023, 7, "after", 128, torch.bfloat16, 128),
    _case(1023, 7, "before", 64, torch.bfloat16, 64),
    _case(1023, 0, "none", 64, torch.float16, 128),
]
BIG_HARD_SHAPES = [
    _case(4 * 1560 + 17, 7, "after", 64, torch.bfloat16, 128),
    _case(4 * 1560 + 17, 0, "none", 128, torch.float16, 64),
]


def hard_shapes(include_big: bool = True) -> list:
    return HARD_SHAPES + (BIG_HARD_SHAPES if include_big else [])


# --------------------------------------------------------------------------- CUDA graphs
def capture_cuda_graph(fn):
    """(graph, outputs) of ``fn()`` captured in a CUDA graph, after the warm-up on a side stream
    that capture needs (kernels compiled and allocator pools set outside the capture)."""
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
