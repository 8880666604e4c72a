"""Shared pieces of the GPU benchmark scripts in ``benchmarks/``.

Every script runs from the repository root as ``python benchmarks/<script>.py`` (the package need
not be installed: ``setup()`` puts the repository root on ``sys.path``) and has a ``--smoke`` mode:
tiny shapes, every code path executed, no timing claims. Without CUDA the device is the CPU and
``setup()`` sets ``TRITON_INTERPRET=1`` before any kernel module is imported, so our Triton kernels
run on the interpreter; peers that need CUDA are reported as skipped.

What lives here:
    environment header (date UTC, GPU, versions, commit)      env_header / print_header
    timing (triton.testing.do_bench, median)                  bench_ms
    FLOPs of computed blocks only                             layout_flops / dense_flops / mass_flops
    random inputs in diffusers' layout, random block layouts  random_qkv / random_block_layout
    peers: cuDNN SDPA, FlashAttention SDPA, compiled Flex     sdpa_fn / flex_fn / measure
    peak memory, relative error, fp64 row references          peak_memory_bytes / rel_err / ref_*_rows
    markdown table (printed last), JSON under $OUT            print_table / write_json
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "out"
COMMIT_ENV = "SPARSE_VDIT_COMMIT"
DTYPE = torch.bfloat16
FLEX_RECOMPILE_LIMIT = 64  # one compile per (shape, mask, kernel_options); dynamo's default is 8
TRITON_INTERPRET = "TRITON_INTERPRET"


def cdiv(a: int, b: int) -> int:
    """``kernels.helpers.cdiv`` (imported when called: ``setup()`` puts the repository on sys.path first)."""
    from kernels.helpers import cdiv as kernels_cdiv

    return kernels_cdiv(a, b)


class Skipped(Exception):
    """A peer that cannot run here (e.g. cuDNN on the CPU): reported as a skipped row."""


# --------------------------------------------------------------------------- set-up
def setup(device: str | None = None) -> torch.device:
    """Put the repository on sys.path and choose the device; call before importing ``kernels``.

    device None: CUDA if available, else CPU. On the CPU, TRITON_INTERPRET=1 is set (unless the
    caller set it) so that our Triton kernels run on the interpreter instead of the PyTorch path.
    """
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    if dev.type == "cpu":
        os.environ.setdefault(TRITON_INTERPRET, "1")
    _attach_kernels_portion()
    return dev


def _attach_kernels_portion() -> None:
    """``kernels`` is a namespace portion; if Hugging Face's regular ``kernels`` package is
    installed it shadows ours, so add our directory to its search path (see README)."""
    try:
        import kernels  # noqa: F401
    except ImportError:
        return
    ours = str(REPO_ROOT / "kernels")
    path = getattr(sys.modules["kernels"], "__path__", None)
    if path is not None and ours not in list(path):
        try:
            path.append(ours)
        except AttributeError:  # _NamespacePath of another layout: leave it
            pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- environment
def git_commit() -> str:
    """$SPARSE_VDIT_COMMIT when set (the GPU machine's copy of the tree may carry a stale .git),
    else HEAD of the repository (with ``-dirty`` if tracked files changed)."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=10,
            )
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(COMMIT_ENV, "unknown (no git; set SPARSE_VDIT_COMMIT)")


def env_header(device: torch.device, *, smoke: bool = False, extra: dict | None = None) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "gpu": None,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "commit": git_commit(),
        "triton_interpret": os.environ.get(TRITON_INTERPRET, "0"),
        "SPARSE_VDIT_TMA": os.environ.get("SPARSE_VDIT_TMA", "unset"),
        "smoke": smoke,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)"
    else:
        info["gpu"] = f"none (CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    if extra:
        info.update(extra)
    return info


def print_header(info: dict, title: str) -> None:
    print(f"# {title}")
    for key, value in info.items():
        print(f"- {key}: {value}")
    if info.get("smoke"):
        print("- SMOKE RUN: tiny shapes; times below mean nothing, only that every path executes")
    print(flush=True)


# --------------------------------------------------------------------------- timing
def bench_ms(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    warmup: float = 25,
    rep: float = 150,
    min_reps: int = 5,
) -> float:
    """Median time of ``fn()`` in ms.

    CUDA: ``triton.testing.do_bench(fn, warmup, rep, return_mode="median")``; ``rep`` is raised to
    ``min_reps`` calls' worth for slow calls (do_bench would otherwise take the median of one).
    CPU (smoke): one call, wall clock (meaningless, reported anyway; callers have run fn once).
    """
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    fn()  # compile / warm up outside the estimate
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize(device)
    est = start.elapsed_time(end)
    rep = max(rep, min_reps * est)
    warmup = max(warmup, est)
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def tflops(flops: float | None, ms: float | None) -> float | None:
    if flops is None or ms is None or ms <= 0:
        return None
    return flops / (ms * 1e-3) / 1e12


# --------------------------------------------------------------------------- FLOPs
def dense_flops(b: int, h: int, sq: int, skv: int, d: int) -> float:
    """Dense attention forward: QK^T and PV, 2 FLOPs per multiply-add each: 4*B*H*Sq*Skv*D."""
    return 4.0 * b * h * sq * skv * d


def mass_flops(b: int, h: int, sq: int, skv: int, d: int, passes: int = 1) -> float:
    """Block attention mass: ``passes`` passes over Q K^T (no V): 2*B*H*Sq*Skv*D each.
    The fused lse=None variant makes 2 (the LSE pass, then the mass pass)."""
    return 2.0 * passes * b * h * sq * skv * d


def layout_flops(layout, b: int, h: int, d: int) -> float:
    """FLOPs of the computed blocks only: 4*D * sum over computed (full or partial) blocks of
    rows x cols, each block Q_BLOCK x KV_BLOCK clipped at the sequence ends; partial blocks count
    whole (the kernel computes them whole). Broadcast layout dims (B or H = 1) are multiplied out."""
    full, part = layout.block_maps()
    maps = (full | part).to(torch.float64)
    qblk, kvblk = layout.block_size
    sq, skv = layout.seq_lengths
    lb, lh, nqb, nkb = maps.shape
    dev = maps.device
    rows = (sq - torch.arange(nqb, device=dev, dtype=torch.float64) * qblk).clamp(max=qblk)
    cols = (skv - torch.arange(nkb, device=dev, dtype=torch.float64) * kvblk).clamp(max=kvblk)
    elems = float((maps * rows[:, None] * cols[None, :]).sum())
    return 4.0 * d * elems * (b // lb) * (h // lh)


# --------------------------------------------------------------------------- shapes and inputs
@dataclasses.dataclass(frozen=True)
class Shape:
    """One attention call: B x H heads x S tokens x D, with ``text`` text tokens inside S."""

    key: str
    name: str
    b: int
    h: int
    s: int
    d: int
    text: int = 0
    text_first: bool = True

    def describe(self) -> str:
        where = "" if not self.text else f", {self.text} text {'first' if self.text_first else 'last'}"
        return f"{self.name} ({self.h} x {self.s:,}, D={self.d}{where})"


SHAPES: dict[str, Shape] = {
    "wan480": Shape("wan480", "Wan2.1-1.3B 480p", 1, 12, 32_760, 128),
    "wan720": Shape("wan720", "Wan2.1-14B 720p", 1, 40, 75_600, 128),
    "hunyuan720": Shape("hunyuan720", "HunyuanVideo 720p", 1, 24, 119_056, 128, text=256, text_first=False),
    "cogvideox15": Shape("cogvideox15", "CogVideoX1.5", 1, 48, 45_106, 64, text=226, text_first=True),
}
# --smoke: same heads' dims and text placement, tiny lengths that are not multiples of 64 or 128.
SMOKE_SHAPES: dict[str, Shape] = {
    "wan480": Shape("wan480", "Wan-like smoke", 1, 2, 520, 128),
    "wan720": Shape("wan720", "Wan-720-like smoke", 1, 2, 300, 128),
    "hunyuan720": Shape("hunyuan720", "Hunyuan-like smoke", 1, 2, 400, 128, text=24, text_first=False),
    "cogvideox15": Shape("cogvideox15", "CogVideoX-like smoke", 1, 2, 460, 64, text=26, text_first=True),
}


def shapes_for(smoke: bool) -> dict[str, Shape]:
    return SMOKE_SHAPES if smoke else SHAPES


def random_qkv(shape: Shape, device: torch.device, *, seed: int = 0, dtype: torch.dtype = DTYPE):
    """q, k, v as diffusers holds them, [B, S, H, D] randn, passed as ``.transpose(1, 2)`` views
    ([B, H, S, D], non-contiguous). Never zeros: they hide unwritten outputs and time differently."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return tuple(
        torch.randn(shape.b, shape.s, shape.h, shape.d, generator=gen, device=device, dtype=dtype).transpose(1, 2)
        for _ in range(3)
    )


def _text_blocks(shape: Shape, block: int) -> range:
    nb = cdiv(shape.s, block)
    if not shape.text:
        return range(0)
    if shape.text_first:
        return range(0, cdiv(shape.text, block))
    return range((shape.s - shape.text) // block, nb)


def random_block_layout(
    shape: Shape,
    block: int,
    density: float,
    device: torch.device,
    *,
    seed: int = 0,
    per_head: bool = True,
    text_dense: bool = False,
    row_lengths: torch.Tensor | None = None,
):
    """Random square-block layout: every query-block row keeps round(density * KB) key blocks
    (at least 1) chosen at random, its diagonal block always among them; one pattern per head
    (``per_head``) or one broadcast over heads. ``row_lengths`` ([QB] ints >= 1) gives each row
    its own count instead (density is then unused). ``text_dense`` also keeps every block of the
    text rows and columns (both papers compute text densely), which adds a little density.
    Built with ``BlockLayout.from_block_maps`` on ``device``."""
    from kernels.block_layout import BlockLayout

    nb = cdiv(shape.s, block)
    lh = shape.h if per_head else 1
    gen = torch.Generator(device=device).manual_seed(seed)
    scores = torch.rand(1, lh, nb, nb, generator=gen, device=device)
    diag = torch.arange(nb, device=device)
    scores[..., diag, diag] = 2.0  # above any rand(): the diagonal is always among the top-k
    if row_lengths is None:
        keep = max(1, min(nb, round(density * nb)))
        idx = scores.topk(keep, dim=-1).indices
        full = torch.zeros(1, lh, nb, nb, dtype=torch.bool, device=device).scatter_(-1, idx, True)
    else:  # each row's row_lengths[r] best-scored blocks
        rank = scores.argsort(dim=-1, descending=True).argsort(dim=-1)
        full = rank < row_lengths.to(device)[:, None]
    if text_dense:
        tb = list(_text_blocks(shape, block))
        if tb:
            full[:, :, tb, :] = True
            full[:, :, :, tb] = True
    return BlockLayout.from_block_maps(full, block_size=block, seq_lengths=shape.s)


def layout_density(layout) -> float:
    return layout.density()


# --------------------------------------------------------------------------- peers
def sdpa_fn(backend: str, q, k, v) -> Callable[[], torch.Tensor]:
    """``F.scaled_dot_product_attention`` forced onto one backend ("CUDNN_ATTENTION",
    "FLASH_ATTENTION", ...). Raises Skipped off CUDA."""
    if not q.is_cuda:
        raise Skipped(f"SDPA {backend} needs CUDA")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = getattr(SDPBackend, backend)

    def fn():
        with sdpa_kernel(be):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return fn


_FLEX = None


def compiled_flex():
    """``torch.compile(flex_attention, dynamic=False)``, made once (one compile per shape / mask)."""
    global _FLEX
    if _FLEX is None:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):  # the name changed across versions
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), FLEX_RECOMPILE_LIMIT))
        for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 4 * FLEX_RECOMPILE_LIMIT))
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def flex_kernel_options(block: int | None) -> dict | None:
    """Compiled FlexAttention refuses 64-token BlockMasks unless told its tile size."""
    return {"BLOCK_M": 64, "BLOCK_N": 64} if block == 64 else None


def flex_fn(q, k, v, layout=None, *, allow_cpu: bool = True) -> Callable[[], torch.Tensor]:
    """Compiled FlexAttention on ``layout.to_flex_block_mask()`` (dense when layout is None).

    Compiled, never eager: eager flex_attention evaluates only the mask_mod and ignores the block
    lists, so it would compute a different function. On the CPU the compile is slow (about a minute
    per case); ``allow_cpu=False`` reports it skipped instead."""
    if not q.is_cuda and not allow_cpu:
        raise Skipped("compiled FlexAttention on the CPU skipped (--cpu-flex skip)")
    block_mask = None if layout is None else layout.to_flex_block_mask()
    opts = None if layout is None else flex_kernel_options(layout.block_size[0])
    flex = compiled_flex()
    if opts is None:
        return lambda: flex(q, k, v, block_mask=block_mask)
    return lambda: flex(q, k, v, block_mask=block_mask, kernel_options=opts)


@dataclasses.dataclass
class Measured:
    """One timed callable: ms is None when it failed (error) or could not run here (skipped)."""

    ms: float | None = None
    out: Any = None
    error: str | None = None
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.ms is not None

    def status(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.error:
            return f"error: {self.error}"
        return ""


def short_error(exc: BaseException, limit: int = 160) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def measure(
    make: Callable[[], Callable[[], Any]],
    device: torch.device,
    *,
    keep_out: bool = False,
    label: str = "",
    **bench_kwargs,
) -> Measured:
    """Build the callable, run it once (compile), time it. Any failure becomes a row, not a crash;
    ``keep_out`` keeps the first output (for correctness checks)."""
    try:
        fn = make()
        out = fn()
        sync(device)
        ms = bench_ms(fn, device, **bench_kwargs)
        return Measured(ms=ms, out=out if keep_out else None)
    except Skipped as exc:
        return Measured(skipped=str(exc))
    except Exception as exc:  # noqa: BLE001 - a peer's failure is a result, not a crash
        print(f"[{label or 'measure'}] failed: {short_error(exc, 400)}", file=sys.stderr)
        if os.environ.get("SPARSE_VDIT_BENCH_TRACEBACK"):
            traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        return Measured(error=short_error(exc))


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Extra CUDA memory a call needs at its peak: max_memory_allocated during ``fn()`` minus what
    was allocated before (inputs, layout). None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return peak - base


# --------------------------------------------------------------------------- correctness helpers
def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64; inf if x has a NaN / inf."""
    x64, r64 = x.double(), ref.double()
    if not bool(torch.isfinite(x64).all()):
        return math.inf
    den = float(r64.norm())
    return float((x64 - r64).norm()) / (den if den > 0 else 1.0)


def check_qblocks(n_qblocks: int) -> list[int]:
    """Query blocks checked against float64: first, middle, last (the last crosses the end)."""
    return sorted({0, n_qblocks // 2, n_qblocks - 1})


def check_heads(h: int) -> list[int]:
    return sorted({0, h - 1})


def _rows(qblocks: Sequence[int], block: int, s: int) -> torch.Tensor:
    return torch.cat([torch.arange(i * block, min((i + 1) * block, s)) for i in qblocks])


def ref_attention_rows(q, k, v, layout, heads: Sequence[int], qblocks: Sequence[int], block: int):
    """Float64 reference of the attention output at query blocks ``qblocks`` (of size ``block``)
    of ``heads``, over all keys (masked by ``layout`` if given; its Q_BLOCK must equal ``block``).
    Returns (rows index tensor, out [B, len(heads), rows, D] float64, lse float64)."""
    from kernels.reference import attention_ref

    s = q.shape[2]
    rows = _rows(qblocks, block, s).to(q.device)
    hs = torch.tensor(list(heads), device=q.device)
    qs = q.index_select(1, hs).index_select(2, rows)
    ks, vs = k.index_select(1, hs), v.index_select(1, hs)
    mask = None
    if layout is not None:
        assert layout.block_size[0] == block
        lh = layout.shape[1]
        parts = [layout.dense_rows(i, i + 1) for i in qblocks]  # [lb, lh, r, Skv]
        mask = torch.cat(parts, dim=2)
        mask = mask if lh == 1 else mask.index_select(1, hs.to(mask.device))
        mask = mask.to(q.device)
    out, lse = attention_ref(qs, ks, vs, mask)
    return rows, out, lse


def take_rows(x: torch.Tensor, heads: Sequence[int], rows: torch.Tensor) -> torch.Tensor:
    """x [B, H, S, ...] -> [B, len(heads), len(rows), ...]."""
    hs = torch.tensor(list(heads), device=x.device)
    return x.index_select(1, hs).index_select(2, rows.to(x.device))


def ref_mass_rows(q, k, lse, heads: Sequence[int], qblocks: Sequence[int], block: int):
    """Float64 reference of block_attention_mass at query blocks ``qblocks`` of ``heads``
    (``lse`` None: the exact LSE). Returns mass [B, len(heads), len(qblocks), KB] float64."""
    from kernels.reference import block_attention_mass_ref

    s = q.shape[2]
    hs = torch.tensor(list(heads), device=q.device)
    ks = k.index_select(1, hs)
    out = []
    for i in qblocks:
        r0, r1 = i * block, min((i + 1) * block, s)
        qs = q.index_select(1, hs)[:, :, r0:r1]
        ls = None if lse is None else lse.index_select(1, hs)[:, :, r0:r1]
        mass, _ = block_attention_mass_ref(qs, ks, ls, block)
        out.append(mass)
    return torch.cat(out, dim=2)


# --------------------------------------------------------------------------- output
def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        if value != 0 and (abs(value) < 10 ** (-digits) or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(rows: Iterable[dict], columns: Sequence[tuple[str, str]], *, title: str | None = None) -> None:
    """Markdown table of ``rows`` (dicts); ``columns`` = [(key, header)]. Values are formatted by
    ``fmt``; pipes in text are escaped."""
    rows = list(rows)
    if title:
        print(f"\n## {title}")
    print("| " + " | ".join(h for _, h in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = [fmt(row.get(key)).replace("|", "/").replace("\n", " ") for key, _ in columns]
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


def out_dir() -> Path:
    """$OUT if set (the GPU machine's fetched folder), else benchmarks/out/."""
    path = Path(os.environ["OUT"]) if os.environ.get("OUT") else DEFAULT_OUT_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(name: str, payload: dict) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir() / f"{name}-{stamp}.json"
    path.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    return path
