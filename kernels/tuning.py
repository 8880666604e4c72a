"""Kernel tile configurations per GPU: (BLOCK_N, num_warps, num_stages) by compute capability.

Tables live in ``tuning_tables.json`` beside this module, written by the sweep of
``benchmarks/bench_attention.py --sweep`` (never pasted by hand). Five tables per GPU:

    attention   the indexed (block-list) loop of block_sparse_attention, keyed (head_dim, Q_BLOCK)
    dense       the index-free dense loop (attention_with_lse, complete layouts), keyed (head_dim,)
    mass        block_attention_mass, keyed (head_dim, block)
    attention_fp8, dense_fp8   the same loops with precision="fp8" (kernels.fp8)

Fallback, for a GPU or key that was never swept: the table of the same compute capability; else
the nearest lower capability with a table (a newer GPU runs what an older one measured: same
instructions, at least as many resources); else the nearest higher one; then, for a key missing
from that table, ``GENERIC`` below (safe small tiles that compile everywhere). The CPU interpreter
always uses ``INTERPRETER`` (the interpreter's cost grows with tile size).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

Config = tuple[int, int, int]  # (BLOCK_N, num_warps, num_stages)
KINDS = ("attention", "dense", "mass", "attention_fp8", "dense_fp8")
TABLE_FILE = Path(__file__).with_name("tuning_tables.json")
GENERIC: Config = (64, 4, 2)
INTERPRETER: Config = (32, 1, 1)
FORMAT_VERSION = 1


def capability_key(capability: tuple[int, int]) -> str:
    return f"sm_{capability[0]}{capability[1]}"


def _parse_key(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


@functools.lru_cache(maxsize=1)
def _load() -> dict[tuple[int, int], dict[str, dict[tuple[int, ...], Config]]]:
    """{(major, minor): {kind: {key: config}}} from the table file (empty if there is none)."""
    if not TABLE_FILE.exists():
        return {}
    raw = json.loads(TABLE_FILE.read_text())
    if raw.get("format") != FORMAT_VERSION:
        raise RuntimeError(f"{TABLE_FILE} has format {raw.get('format')!r}, expected {FORMAT_VERSION}: reinstall sparse-vdit")
    tables = {}
    for name, entry in raw.get("gpus", {}).items():
        cap = (int(entry["capability"][0]), int(entry["capability"][1]))
        tables[cap] = {kind: {_parse_key(k): tuple(v) for k, v in entry.get(kind, {}).items()} for kind in KINDS}
        del name
    return tables


def table_for(capability: tuple[int, int]) -> tuple[tuple[int, int] | None, dict[str, dict[tuple[int, ...], Config]]]:
    """(capability whose table serves ``capability``, that table) by the fallback order above."""
    tables = _load()
    if capability in tables:
        return capability, tables[capability]
    lower = sorted((c for c in tables if c < capability), reverse=True)
    higher = sorted(c for c in tables if c > capability)
    for cap in lower + higher:
        return cap, tables[cap]
    return None, {kind: {} for kind in KINDS}


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


_OVERRIDES: dict[tuple[str, tuple[int, ...]], Config] = {}  # set by benchmark sweeps, in memory only


def override(kind: str, key: tuple[int, ...], cfg: Config | None) -> None:
    """Use ``cfg`` for (kind, key) on every GPU until cleared (None clears it): for sweeps."""
    if kind not in KINDS:
        raise ValueError(f"unknown table kind {kind!r}; kinds are {KINDS}")
    if cfg is None:
        _OVERRIDES.pop((kind, tuple(key)), None)
    else:
        _OVERRIDES[(kind, tuple(key))] = tuple(int(x) for x in cfg)  # type: ignore[assignment]


def clear_overrides() -> None:
    _OVERRIDES.clear()


_SHRUNK: dict[tuple, Config] = {}  # (kind, key, variant, capability) -> a config that fits


def config(kind: str, key: tuple[int, ...], device: torch.device, variant: tuple = ()) -> Config:
    """The tile configuration of ``kind`` for ``key`` on ``device`` (a CUDA device). ``variant``
    (e.g. the input dtype) tells apart launches whose table config had to shrink (``remember``).
    Benchmark overrides are returned as set."""
    if (kind, key) in _OVERRIDES:
        return _OVERRIDES[(kind, key)]
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = _capability(index)
    shrunk = _SHRUNK.get((kind, key, variant, cap))
    if shrunk is not None:
        return shrunk
    _, table = table_for(cap)
    return table[kind].get(key, GENERIC)


def remember(kind: str, key: tuple[int, ...], device: torch.device, variant: tuple, cfg: Config) -> None:
    """Use ``cfg`` for later launches of (kind, key, variant) on this GPU model (it fit)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    _SHRUNK[(kind, key, variant, _capability(index))] = cfg


def shrink(cfg: Config) -> Config | None:
    """The next smaller config to try when ``cfg`` does not fit the GPU's shared memory (the
    tables are tuned for bf16 / fp16; fp32 inputs and large head dims need twice the bytes per
    tile): one pipeline stage fewer, then half the key tile. None when nothing smaller is left."""
    block_n, warps, stages = cfg
    if stages > 1:
        return block_n, warps, stages - 1
    if block_n > 16:
        return block_n // 2, warps, stages
    return None


def write_tables(capability: tuple[int, int], gpu_name: str, entries: dict[str, dict[tuple[int, ...], Config]],
                 source: str, path: Path = TABLE_FILE) -> Path:
    """Merge ``entries`` ({kind: {key: config}}) into the table of ``capability`` in ``path``
    (other GPUs' tables and other keys are kept) and clear the cache so the new values apply.
    ``gpu`` and ``source`` say who wrote last; ``sources`` keeps, per kind, which sweep on which
    GPU wrote its rows (one capability serves several GPUs: H100 and H200 are both sm_90)."""
    raw = json.loads(path.read_text()) if path.exists() else {"format": FORMAT_VERSION, "gpus": {}}
    entry = raw["gpus"].setdefault(capability_key(capability), {"capability": list(capability)})
    entry["gpu"] = gpu_name
    entry["source"] = source
    for kind, values in entries.items():
        if kind not in KINDS:
            raise ValueError(f"unknown table kind {kind!r}; kinds are {KINDS}")
        entry.setdefault("sources", {})[kind] = f"{source}, {gpu_name}"
        table = entry.setdefault(kind, {})
        for key, cfg in values.items():
            table[",".join(str(int(x)) for x in key)] = [int(x) for x in cfg]
        entry[kind] = dict(sorted(table.items()))
    path.write_text(json.dumps(raw, indent=1) + "\n")
    _load.cache_clear()
    return path
