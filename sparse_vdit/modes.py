"""The five Sparse-vDiT attention modes, in layout units, and their block layouts.

A mode says which keys a video query token attends, in terms of latent frames and latent rows
(never raw token indices), so one plan serves any resolution:

    Full()                     every key
    Skip()                     nothing: the head's output is zero (no work at all, text rows too)
    Diagonal(rows)             keys of the query's own frame within ``rows`` latent rows
    MultiDiagonal(rows, frames) keys within ``rows`` latent rows in every frame at most ``frames``
                               frames away (None: all frames): the same spatial band repeated at the
                               frame stride
    VerticalStripe(frames, row_stride) the same global key columns for every query: the tokens of
                               the listed latent frames (negative = from the end) whose latent row
                               is a multiple of ``row_stride``

Choices where the paper is open (written down here, tested in tests/test_modes.py):
- Bands are over whole latent rows (all columns of a row), so a band is contiguous in token order.
- Text rows and columns are always dense ("text sink") except in Skip, whose output is all zero;
  so are the rows and columns of conditioning tokens off the video grid (``TokenLayout.prefix_len``
  / ``suffix_len``: Framepack's history latents, LTX's extra conditioning and keyframe tokens).
- Blockification: a mode keeps every (query block, key block) that touches its element pattern,
  and computes those blocks fully (no element mask): the kept set *is* the block set, so the
  density d of a mode is its block density. That is the AdaSpa observation (blockified patterns)
  and what makes the modes as fast as dense attention per computed block.

``head_layout(modes, token_layout)`` turns one mode per head into a single BlockLayout with a head
dimension, so one kernel launch serves every head of a layer (head fusion): the per-head block
lists are the mode table.

``mode_to_dict`` / ``mode_from_dict`` write and read a mode as JSON values (plan files):
``{"mode": "diagonal", "rows": 4}``, VerticalStripe frames as a list.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence, Union

import torch

from kernels.block_layout import BlockLayout
from kernels.helpers import cdiv
from sparse_vdit.token_layout import TokenLayout


@dataclass(frozen=True)
class Full:
    """M0: dense attention."""

    name = "full"


@dataclass(frozen=True)
class Skip:
    """M1: the head's output is zero; nothing is computed or cached."""

    name = "skip"


@dataclass(frozen=True)
class Diagonal:
    """M2: window within the frame: keys of the same latent frame within ``rows`` latent rows."""

    rows: int = 4
    name = "diagonal"

    def __post_init__(self) -> None:
        if self.rows < 0:
            raise ValueError(f"Diagonal rows must be >= 0, got {self.rows}")


@dataclass(frozen=True)
class MultiDiagonal:
    """M3: the same spatial band (``rows`` latent rows) in every frame within ``frames`` frames
    (None = all frames)."""

    rows: int = 2
    frames: int | None = None
    name = "multi_diagonal"

    def __post_init__(self) -> None:
        if self.rows < 0 or (self.frames is not None and self.frames < 0):
            raise ValueError(f"MultiDiagonal rows / frames must be >= 0, got {self.rows}, {self.frames}")


@dataclass(frozen=True)
class VerticalStripe:
    """M4: every query attends the same key columns: the tokens of latent ``frames`` (negative
    counts from the end) whose latent row is a multiple of ``row_stride``."""

    frames: tuple[int, ...] = (0,)
    row_stride: int = 1
    name = "vertical_stripe"

    def __post_init__(self) -> None:
        if not self.frames or self.row_stride < 1:
            raise ValueError("VerticalStripe needs at least one frame and row_stride >= 1")


Mode = Union[Full, Skip, Diagonal, MultiDiagonal, VerticalStripe]
MODES = (Full, Skip, Diagonal, MultiDiagonal, VerticalStripe)
MODE_BY_NAME = {cls.name: cls for cls in MODES}


# ------------------------------------------------------------------ (de)serialisation
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_int(value: Any) -> int:
    if not _is_int(value):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _read_optional_int(value: Any) -> int | None:
    return None if value is None else _read_int(value)


def _read_int_tuple(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of integers, got {value!r}")
    return tuple(_read_int(v) for v in value)


# JSON value -> parameter, by the parameter's annotation (a new parameter type needs a reader here).
_PARAMETER_READERS = {"int": _read_int, "int | None": _read_optional_int, "tuple[int, ...]": _read_int_tuple}


def mode_to_dict(mode: Mode) -> dict[str, Any]:
    """The mode as JSON values: ``{"mode": name, parameter: value, ...}`` (tuples as lists)."""
    if type(mode) not in MODES:
        raise TypeError(f"unknown mode {mode!r}; modes are {', '.join(m.__name__ for m in MODES)}")
    out: dict[str, Any] = {"mode": mode.name}
    for f in fields(mode):
        value = getattr(mode, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def mode_from_dict(data: Any) -> Mode:
    """The mode ``mode_to_dict`` wrote. Every parameter must be given.

    Raises ``ValueError`` naming the valid modes for an unknown name, the valid parameters for an
    unknown or missing one, and the rule a value breaks (e.g. Diagonal rows >= 0).
    """
    if not isinstance(data, dict) or not isinstance(data.get("mode"), str):
        raise ValueError(f'a mode is an object {{"mode": name, parameter: value, ...}}, got {data!r}')
    name = data["mode"]
    cls = MODE_BY_NAME.get(name)
    if cls is None:
        raise ValueError(f"unknown mode {name!r}: the modes are {', '.join(MODE_BY_NAME)}")
    params = {f.name: f for f in fields(cls)}
    valid = ", ".join(params) or "none"
    given = {key: value for key, value in data.items() if key != "mode"}
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ValueError(f"{name} has no parameter {', '.join(map(repr, unknown))}: its parameters are {valid}")
    missing = [key for key in params if key not in given]
    if missing:
        raise ValueError(f"{name} needs its parameter(s) {', '.join(missing)} (its parameters are {valid})")
    try:
        values = {key: _PARAMETER_READERS[str(f.type)](given[key]) for key, f in params.items()}
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{name} {given}: {exc}") from None


def _row_relation(mode: Mode, layout: TokenLayout, device) -> torch.Tensor:
    """[G, G] bool over global latent rows g = frame * rows + row: query row attends key row."""
    g = torch.arange(layout.frames * layout.rows, device=device)
    frame, row = g // layout.rows, g % layout.rows
    if isinstance(mode, Full):
        return torch.ones(g.numel(), g.numel(), dtype=torch.bool, device=device)
    if isinstance(mode, Skip):
        return torch.zeros(g.numel(), g.numel(), dtype=torch.bool, device=device)
    if isinstance(mode, (Diagonal, MultiDiagonal)):
        near_rows = (row[:, None] - row[None, :]).abs() <= mode.rows
        frame_gap = (frame[:, None] - frame[None, :]).abs()
        reach = 0 if isinstance(mode, Diagonal) else (layout.frames if mode.frames is None else mode.frames)
        return near_rows & (frame_gap <= reach)
    if isinstance(mode, VerticalStripe):
        frames = {f % layout.frames for f in mode.frames if -layout.frames <= f < layout.frames}
        if not frames:
            raise ValueError(f"VerticalStripe frames {mode.frames} are outside a {layout.frames}-frame video")
        col = torch.isin(frame, torch.tensor(sorted(frames), device=device)) & (row % mode.row_stride == 0)
        return col[None, :].expand(g.numel(), -1)
    raise TypeError(f"unknown mode {mode!r}; modes are {', '.join(m.__name__ for m in MODES)}")


def mode_mask_mod(mode: Mode, layout: TokenLayout):
    """The mode's element pattern as a FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx)``
    (rows / columns of text and other tokens off the grid dense, Skip all False). Blocks of
    ``mode_block_map`` are exactly the blocks this pattern touches."""

    # The [G, G] row relation is built once; mask_mod is called once per strip of query blocks.
    relation = _row_relation(mode, layout, None)

    def mask_mod(b, h, q_idx, kv_idx):
        fq, rq, _ = layout.position(q_idx)
        fk, rk, _ = layout.position(kv_idx)
        if isinstance(mode, Skip):
            return torch.zeros(torch.broadcast_shapes(q_idx.shape, kv_idx.shape), dtype=torch.bool, device=q_idx.device)
        rel = relation.to(q_idx.device)
        gq = (fq * layout.rows + rq).clamp_min(0)
        gk = (fk * layout.rows + rk).clamp_min(0)
        video = rel[gq, gk] & (fq >= 0) & (fk >= 0)
        return video | layout.off_grid(q_idx) | layout.off_grid(kv_idx)

    return mask_mod


def _block_spans(layout: TokenLayout, block: int, device):
    """Per block of ``block`` tokens: (has_video, first global row, last global row, has_off_grid),
    has_off_grid when the block holds a token off the grid (text, prefix, suffix: dense)."""
    n = cdiv(layout.seq_len, block)
    start = torch.arange(n, device=device) * block
    end = torch.clamp(start + block, max=layout.seq_len) - 1  # inclusive
    v0, v1 = layout.video_start, layout.video_end - 1
    has_video = (end >= v0) & (start <= v1)
    g_first = (torch.clamp(start, min=v0) - v0) // layout.cols
    g_last = (torch.clamp(end, max=v1) - v0) // layout.cols
    off_grid = (start < v0) | (end > v1)
    g_max = layout.frames * layout.rows - 1  # blocks without video get any valid row; has_video masks them
    return has_video, g_first.clamp(0, g_max), g_last.clamp(0, g_max), off_grid


# The largest layouts a plan is made for: its block maps are [N, N] for N blocks per axis and its
# row relation [G, G] for G latent rows over all frames (8192^2 int32 = 256 MiB each). HunyuanVideo
# 720p has 7,441 blocks of 16 tokens; Wan2.1 720p, 81 frames, 945 latent rows.
MAX_BLOCKS_PER_AXIS = 8192
MAX_LATENT_ROWS = 8192


def check_layout_size(layout: TokenLayout, block_size: int | tuple[int, int]) -> None:
    """``ValueError`` when ``layout`` at ``block_size`` exceeds ``MAX_BLOCKS_PER_AXIS`` blocks or
    ``MAX_LATENT_ROWS`` latent rows (its block maps would take gigabytes)."""
    smallest = min((block_size, block_size) if isinstance(block_size, int) else block_size)
    blocks = cdiv(layout.seq_len, smallest)
    if blocks > MAX_BLOCKS_PER_AXIS:
        raise ValueError(
            f"{blocks:,} blocks of {smallest} tokens per axis, more than the {MAX_BLOCKS_PER_AXIS:,} a plan is "
            "built for (use larger blocks)"
        )
    rows = layout.frames * layout.rows
    if rows > MAX_LATENT_ROWS:
        raise ValueError(f"{rows:,} latent rows over all frames, more than the {MAX_LATENT_ROWS:,} a plan is built for")


def mode_block_map(mode: Mode, layout: TokenLayout, block_size: int | tuple[int, int] = 128, device=None) -> torch.Tensor:
    """[QB, KB] bool: the blocks a mode computes (every block its element pattern touches).

    Exact and O(QB * KB): a 2-D prefix sum over the [G, G] row relation answers "does any query
    row of block i attend any key row of block j" in constant time per block pair.
    """
    qblk, kvblk = (block_size, block_size) if isinstance(block_size, int) else block_size
    if isinstance(mode, Skip):
        return torch.zeros(cdiv(layout.seq_len, qblk), cdiv(layout.seq_len, kvblk), dtype=torch.bool, device=device)
    rel = _row_relation(mode, layout, device).to(torch.int32)
    prefix = torch.zeros(rel.shape[0] + 1, rel.shape[1] + 1, dtype=torch.int32, device=device)
    prefix[1:, 1:] = rel.cumsum(0).cumsum(1)
    qv, qa, qb, qt = _block_spans(layout, qblk, device)
    kv, ka, kb, kt = _block_spans(layout, kvblk, device)
    qa, qb, ka, kb = qa[:, None], (qb + 1)[:, None], ka[None, :], (kb + 1)[None, :]
    hits = prefix[qb, kb] - prefix[qa, kb] - prefix[qb, ka] + prefix[qa, ka]
    keep = (hits > 0) & qv[:, None] & kv[None, :]
    return keep | qt[:, None] | kt[None, :]


class ModeBank:
    """Distinct modes stored once, as the patterns of one ``BlockLayout``; the layout of a layer
    is a head table over them (``layout(modes)``), so every layer and step that uses the same
    modes shares one copy of their block lists (at Wan2.1-14B 720p a mode's pattern takes up to
    0.7 MB; 2,000 (step, layer) layouts of copies would not fit on a GPU).

    Args:
        modes: every mode the bank serves (duplicates are stored once; order does not matter).
        token_layout: the token layout the patterns are built for.
        block_size: layout block size (Q_BLOCK, KV_BLOCK).
        device: where the patterns live.
    """

    def __init__(self, modes, token_layout: TokenLayout, *, block_size: int | tuple[int, int] = 128, device=None):
        self.modes: tuple = tuple(dict.fromkeys(modes))
        if not self.modes:
            raise ValueError("a ModeBank needs at least one mode")
        self.index = {mode: i for i, mode in enumerate(self.modes)}
        self.token_layout = token_layout
        maps = torch.stack([mode_block_map(m, token_layout, block_size, device) for m in self.modes]).unsqueeze(0)
        self.bank = BlockLayout.from_block_maps(
            maps, block_size=block_size, seq_lengths=token_layout.seq_len,
            head_patterns=torch.arange(len(self.modes), dtype=torch.int32),
        )

    def layout(self, modes: Sequence[Mode]) -> BlockLayout:
        """BlockLayout [1, H, QB, KB] of one layer, head h in mode ``modes[h]``: one launch."""
        missing = [m for m in modes if m not in self.index]
        if missing:
            raise KeyError(f"modes {missing} are not in this ModeBank (it holds {list(self.modes)})")
        return self.bank.with_head_patterns([self.index[m] for m in modes])


def head_layout(
    modes: Sequence[Mode],
    layout: TokenLayout,
    *,
    block_size: int | tuple[int, int] = 128,
    device=None,
) -> BlockLayout:
    """One BlockLayout [1, H, QB, KB] serving every head of a layer in one launch (head fusion).

    ``modes[h]`` is head h's mode; heads sharing a mode share one stored pattern (the layout's
    ``head_patterns`` table). For many layers and steps, build a ``ModeBank`` once instead.
    """
    return ModeBank(modes, layout, block_size=block_size, device=device).layout(modes)


def mode_density(mode: Mode, layout: TokenLayout, block_size: int | tuple[int, int] = 128) -> float:
    """Fraction of the S x S score matrix the mode computes (its block density, blocks clipped
    at the sequence end)."""
    qblk, kvblk = (block_size, block_size) if isinstance(block_size, int) else block_size
    keep = mode_block_map(mode, layout, (qblk, kvblk))
    s = layout.seq_len
    rows = torch.clamp(s - torch.arange(keep.shape[0]) * qblk, max=qblk)
    cols = torch.clamp(s - torch.arange(keep.shape[1]) * kvblk, max=kvblk)
    return float((keep * rows[:, None] * cols[None, :]).sum()) / (s * s)
