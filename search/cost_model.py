"""What each candidate mode costs, normalised to dense attention (Full = 1.0).

On a GPU the cost is **measured**: the kernel time of the candidate's layout at the model's shape
(heads, tokens, head dim, dtype, block size) over the time of dense attention as diffusers runs
it (``F.scaled_dot_product_attention``, cuDNN on Hopper), timed in the same process. Results are
cached per GPU, software versions and shape in ``$SPARSE_VDIT_CACHE/costs.json`` (default
``~/.cache/sparse-vdit``), so a second search at the same shape measures nothing. Without a GPU the
cost is the mode's FLOP density (the fraction of the S x S scores it computes), and the plan says
which was used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from search.defaults import COST_SOURCES
from sparse_vdit.modes import Full, Mode, ModeBank, mode_density
from sparse_vdit.token_layout import TokenLayout

SOURCES = COST_SOURCES


@dataclass(frozen=True)
class CostShape:
    """The attention call a cost is measured at."""

    token_layout: TokenLayout
    heads: int
    head_dim: int
    batch: int
    block_size: int
    dtype: torch.dtype

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (f"{self.batch} x {self.heads} heads x {self.token_layout.describe()}, head_dim {self.head_dim}, "
                f"block {self.block_size}, {dtype}")


def cache_dir() -> Path:
    root = os.environ.get("SPARSE_VDIT_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparse-vdit"


def flop_costs(candidates: Sequence[Mode], shape: CostShape) -> dict[Mode, float]:
    """Each candidate's block density at the shape (Skip 0, Full 1): the cost without a GPU."""
    return {m: mode_density(m, shape.token_layout, shape.block_size) for m in (*candidates, Full())}


def _cache_key(shape: CostShape, device: torch.device) -> str:
    import triton

    return (f"{torch.cuda.get_device_name(device)} | torch {torch.__version__} | triton {triton.__version__} | "
            f"{shape.describe()}")


def measured_costs(candidates: Sequence[Mode], shape: CostShape, device: torch.device, *,
                   cache: Path | None = None, rep_ms: int = 100) -> dict[Mode, float]:
    """Kernel time of each candidate's layout over dense SDPA time, at ``shape`` on ``device``
    (a CUDA device); read from / written to the cache file."""
    from triton.testing import do_bench

    from kernels.attention import block_sparse_attention

    path = (cache or cache_dir()) / "costs.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    key = _cache_key(shape, device)
    known: dict[str, float] = table.get(key, {})
    modes = (*candidates, Full())
    missing = [m for m in modes if repr(m) not in known]
    if missing:
        s = shape.token_layout.seq_len
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(shape.batch, s, shape.heads, shape.head_dim, device=device, dtype=shape.dtype,
                               generator=gen).transpose(1, 2) for _ in range(3))
        dense_ms = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), rep=rep_ms,
                            return_mode="median")
        known["dense_ms"] = dense_ms
        bank = ModeBank(missing, shape.token_layout, block_size=shape.block_size, device=device)
        for mode in missing:
            if isinstance(mode, Full):
                known[repr(mode)] = 1.0  # a layer of full heads runs dense through diffusers
                continue
            layout = bank.layout([mode])  # one pattern, broadcast over every head: one launch
            ms = do_bench(lambda layout=layout: block_sparse_attention(q, k, v, layout), rep=rep_ms,
                          return_mode="median")
            known[repr(mode)] = ms / dense_ms
        table[key] = known
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=1) + "\n")
    return {m: float(known[repr(m)]) for m in modes}


def candidate_costs(candidates: Sequence[Mode], shape: CostShape, device: torch.device, source: str = "auto",
                    *, cache: Path | None = None):
    """(costs {mode: cost}, source used, GPU name or None). ``source``: "measured" (needs CUDA),
    "flops", or "auto" (measured on CUDA, else flops)."""
    if source not in SOURCES:
        raise ValueError(f"cost source {source!r}: use one of {', '.join(SOURCES)}")
    on_gpu = device.type == "cuda" and torch.cuda.is_available()
    if source == "measured" and not on_gpu:
        raise ValueError("measured costs need a CUDA GPU (the search runs on "
                         f"{device.type}); use cost source 'flops' or run the search on a GPU")
    if source == "flops" or not on_gpu:
        return flop_costs(candidates, shape), "flops", None
    return measured_costs(candidates, shape, device, cache=cache), "measured", torch.cuda.get_device_name(device)
