"""Two simple baselines a sparse method has to beat: a static window and a Sparse-VideoGen-style
per-head choice between a spatial and a temporal window. No search, no plan file, no diffusers.

    from sparse_vdit.baselines import StaticWindowAttention, SpatialTemporalAttention
    handle = apply_sparse_attention(pipe, SpatialTemporalAttention(rows=1, block_size=128))

``StaticWindowAttention(rows, frames=0)``
    Every head of every layer in one mode: ``Diagonal(rows)`` (the query's own latent frame, +-rows
    latent rows) or, with ``frames > 0``, ``MultiDiagonal(rows, frames)``. Static window methods of
    the field (Radial Attention's decaying window, Sliding Tile Attention) are of this kind.

``SpatialTemporalAttention(rows)``, in the style of Sparse VideoGen (arXiv 2502.01776)
    At every step after the dense warm-up, per layer: sample ``sample_rows`` video query rows,
    compute their dense attention output and their output under two windows, and give each head
    the window with the lower error on those rows (squared error over the head's dense output
    energy; a tie goes to the spatial window). The layer then runs as one launch (the heads'
    windows share a ``ModeBank``).

    - temporal window: ``MultiDiagonal(rows, None)``: +-rows latent rows in every frame (SVG's
      "same spatial position in other frames");
    - spatial window: ``Diagonal(spatial_rows)`` in the query's own frame, with ``spatial_rows``
      the widest whose computed density (blocks, ``mode_density``) does not exceed the temporal
      window's, per token layout: SVG compares its two patterns at equal sparsity. The windows are
      then not nested (the spatial one reaches further inside the frame, the temporal one into the
      other frames), so the error alone picks the pattern.

Choices where SVG differs or is silent (tested in tests/test_baselines.py):
- The errors are measured on what the kernel will compute: the modes' blockified patterns (every
  block a window touches is computed whole), not element masks. SVG's token reordering of temporal
  heads is not needed: block layouts serve ``MultiDiagonal`` directly.
- Sampled rows are video tokens only, strided ``i * stride + i % stride`` (so a stride never
  samples one column only); text rows and columns are always computed (text sink) in both windows.
- One choice per head for the whole batch (CFG branches batched as in CogVideoX share it), by
  the error summed over the batch; padded keys (``call.kv_lens``) are excluded from the sampled
  attention as the kernel excludes them.
- The choice is read back to the host to build the layer's head table (one synchronisation per
  layer and step). Under ``torch.compile`` that is fine: methods run eagerly inside the
  processors' opaque attention op (``pipelines.processors``).

Both baselines run dense for the first ``warmup_fraction`` of the steps (default 0.2, AdaSpa's 10
of 50, so the three online methods start from the same dense warm-up): ``round_half_up(fraction *
N)`` steps of an N-step generation. Their density knob is ``rows`` (larger: denser), so an
evaluation can draw PSNR against speedup as a curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.block_layout import BlockLayout
from kernels.limits import Q_BLOCK_SIZES, head_dim_error, head_dim_supported
from sparse_vdit.guards import check_kernel_dtype, steps_or_assumed
from sparse_vdit.modes import Diagonal, Mode, ModeBank, MultiDiagonal, mode_block_map, mode_density
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo
from sparse_vdit.token_layout import TokenLayout

__all__ = [
    "DEFAULT_WARMUP_FRACTION",
    "DEFAULT_SAMPLE_ROWS",
    "StaticWindowAttention",
    "SpatialTemporalAttention",
    "dense_warmup_steps",
    "matched_spatial_rows",
    "sampled_video_rows",
]

DEFAULT_WARMUP_FRACTION = 0.2
DEFAULT_SAMPLE_ROWS = 64
ASSUMED_STEPS = 50  # when a forward does not say how many steps its generation has


def dense_warmup_steps(num_steps: int, fraction: float) -> int:
    """Steps that run dense in an ``num_steps``-step generation: round_half_up(fraction * N)."""
    return math.floor(fraction * num_steps + 0.5)


def matched_spatial_rows(rows: int, layout: TokenLayout, block_size: int) -> int:
    """The widest own-frame window half-width s >= ``rows`` (latent rows) whose computed density
    ``mode_density(Diagonal(s))`` does not exceed that of ``MultiDiagonal(rows, None)``."""
    budget = mode_density(MultiDiagonal(rows, None), layout, block_size)
    s = rows
    while s + 1 < layout.rows and mode_density(Diagonal(s + 1), layout, block_size) <= budget:
        s += 1
    return s


def sampled_video_rows(layout: TokenLayout, count: int, device=None) -> torch.Tensor:
    """[R] sorted indices of at most ``count`` video query tokens, strided over the video."""
    stride = max(1, math.ceil(layout.video_len / count))
    i = torch.arange(math.ceil(layout.video_len / stride), device=device)
    rows = i * stride + i % stride
    return rows[rows < layout.video_len] + layout.video_start


class _DenseWarmupWindows(AttentionMethod):
    """Shared by the two baselines: argument checks, the dense warm-up, one ModeBank per layout."""

    def __init__(self, rows: int, block_size: int, warmup_fraction: float) -> None:
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise ValueError(f"rows must be an integer >= 0 (the window's half-width in latent rows), got {rows!r}")
        if block_size not in Q_BLOCK_SIZES:
            raise ValueError(
                f"block_size {block_size!r} is not served by the block-sparse kernel: use one of "
                f"{', '.join(map(str, Q_BLOCK_SIZES))} (64 or 128 on GPUs)"
            )
        if not isinstance(warmup_fraction, (int, float)) or not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1] (the share of steps run dense), got {warmup_fraction!r}")
        self.rows = rows
        self.block_size = int(block_size)
        self.warmup_fraction = float(warmup_fraction)
        self._banks: dict = {}
        self._warned: set = set()  # warn_once's registry: once per method instance

    def validate(self, model: ModelInfo) -> None:
        if not head_dim_supported(model.head_dim):
            raise ValueError(f"{model.family}: " + head_dim_error(model.head_dim) + "; use FullAttention() for it")

    def in_warmup(self, forward: ForwardContext) -> bool:
        """True when this forward's step runs dense."""
        num_steps = steps_or_assumed(forward, ASSUMED_STEPS, type(self).__name__, "for its dense warm-up", self._warned)
        return forward.step_index < dense_warmup_steps(num_steps, self.warmup_fraction)

    def check_dtype(self, forward: ForwardContext) -> None:
        check_kernel_dtype(forward.dtype, type(self).__name__)

    def bank(self, modes: tuple[Mode, ...], layout: TokenLayout, device) -> ModeBank:
        key = (modes, layout, str(device))
        if key not in self._banks:
            self._banks[key] = ModeBank(modes, layout, block_size=self.block_size, device=device)
        return self._banks[key]


class StaticWindowAttention(_DenseWarmupWindows):
    """Every head in one window after the dense warm-up (see the module docstring).

    Args:
        rows: half-width of the window in latent rows (the density knob).
        frames: 0: the query's own frame only (``Diagonal(rows)``); k > 0: frames within k
            (``MultiDiagonal(rows, k)``).
        block_size: layout block size (64 or 128 on GPUs; 16 / 32 for tiny models).
        warmup_fraction: share of the steps run dense first.
    """

    def __init__(self, rows: int = 2, frames: int = 0, *, block_size: int = 128,
                 warmup_fraction: float = DEFAULT_WARMUP_FRACTION) -> None:
        super().__init__(rows, block_size, warmup_fraction)
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 0:
            raise ValueError(f"frames must be an integer >= 0 (0: the own frame only), got {frames!r}")
        self.frames = frames
        self.mode: Mode = Diagonal(rows) if frames == 0 else MultiDiagonal(rows, frames)

    def __repr__(self) -> str:
        return f"StaticWindowAttention({self.mode}, block_size={self.block_size}, warmup_fraction={self.warmup_fraction})"

    def begin_forward(self, forward: ForwardContext) -> BlockLayout | None:
        if self.in_warmup(forward):
            return None
        self.check_dtype(forward)
        return self.bank((self.mode,), forward.token_layout, forward.device).layout([self.mode])

    def __call__(self, call: AttentionCall, q, k, v) -> BlockLayout | None:
        return call.prepared


@dataclass(frozen=True)
class _Windows:
    """One token layout's two windows: the bank, the sampled rows [R] and their element masks
    [2, R, S] (spatial, temporal) of the blocks the kernel computes."""

    spatial: Mode
    temporal: Mode
    bank: ModeBank
    rows: torch.Tensor
    masks: torch.Tensor


class SpatialTemporalAttention(_DenseWarmupWindows):
    """Per head, a spatial or a temporal window chosen online on sampled rows (Sparse VideoGen style;
    see the module docstring).

    Args:
        rows: half-width in latent rows of the temporal window (the density knob); the spatial
            window is matched to it in computed density per token layout (``matched_spatial_rows``).
        sample_rows: video query rows sampled per layer and step to make the choice.
        block_size: layout block size (64 or 128 on GPUs; 16 / 32 for tiny models).
        warmup_fraction: share of the steps run dense first.

    After a generation, ``chosen[layer]`` holds each head's window at that layer's latest call,
    and ``counts`` how often each window was chosen ({"spatial": n, "temporal": m}, over heads,
    layers and steps).
    """

    def __init__(self, rows: int = 1, *, sample_rows: int = DEFAULT_SAMPLE_ROWS, block_size: int = 128,
                 warmup_fraction: float = DEFAULT_WARMUP_FRACTION) -> None:
        super().__init__(rows, block_size, warmup_fraction)
        if not isinstance(sample_rows, int) or isinstance(sample_rows, bool) or sample_rows < 1:
            raise ValueError(f"sample_rows must be an integer >= 1, got {sample_rows!r}")
        self.sample_rows = sample_rows
        self._windows: dict = {}
        self.chosen: dict[int, tuple[Mode, ...]] = {}
        self.counts = {"spatial": 0, "temporal": 0}

    def __repr__(self) -> str:
        return (f"SpatialTemporalAttention(rows={self.rows}, sample_rows={self.sample_rows}, "
                f"block_size={self.block_size}, warmup_fraction={self.warmup_fraction})")

    def windows(self, layout: TokenLayout, device) -> _Windows:
        """The two windows of ``layout`` (built once per layout and device)."""
        key = (layout, str(device))
        if key not in self._windows:
            spatial = Diagonal(matched_spatial_rows(self.rows, layout, self.block_size))
            temporal = MultiDiagonal(self.rows, None)
            rows = sampled_video_rows(layout, self.sample_rows, device)
            blocks = torch.stack([mode_block_map(m, layout, self.block_size, device) for m in (spatial, temporal)])
            # element (row, key) is computed iff its (query block, key block) is: [2, R, S]
            masks = blocks[:, rows // self.block_size].repeat_interleave(self.block_size, dim=2)[..., : layout.seq_len]
            self._windows[key] = _Windows(spatial, temporal, self.bank((spatial, temporal), layout, device), rows, masks)
        return self._windows[key]

    def begin_forward(self, forward: ForwardContext) -> _Windows | None:
        if self.in_warmup(forward):
            return None
        self.check_dtype(forward)
        return self.windows(forward.token_layout, forward.device)

    def __call__(self, call: AttentionCall, q, k, v) -> BlockLayout | None:
        windows: _Windows | None = call.prepared
        if windows is None:
            return None
        temporal = self.choose(q, k, v, windows, call.key_padding_mask)
        modes = tuple(windows.temporal if t else windows.spatial for t in temporal.tolist())
        self.chosen[call.layer_index] = modes
        n_temporal = int(sum(1 for m in modes if m is windows.temporal))
        self.counts["temporal"] += n_temporal
        self.counts["spatial"] += len(modes) - n_temporal
        return windows.bank.layout(modes)

    @staticmethod
    def choose(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, windows: _Windows,
               key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """[H] bool, True where the temporal window's error on the sampled rows is lower.

        q, k, v: [B, H, S, D]; key_padding: [B, S] bool (True = a real key) or None.
        """
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = torch.einsum("bhrd,bhsd->bhrs", q[:, :, windows.rows].float(), k.float()) * scale  # [B, H, R, S]
        if key_padding is not None:
            scores = scores.masked_fill(~key_padding[:, None, None, :], float("-inf"))
        vf = v.float()
        dense = torch.einsum("bhrs,bhsd->bhrd", scores.softmax(-1), vf)
        energy = dense.pow(2).sum(dim=(0, 2, 3)).clamp_min(torch.finfo(torch.float32).tiny)
        errors = []
        for mask in windows.masks:  # spatial, temporal
            out = torch.einsum("bhrs,bhsd->bhrd", scores.masked_fill(~mask, float("-inf")).softmax(-1), vf)
            errors.append((out - dense).pow(2).sum(dim=(0, 2, 3)) / energy)
        return errors[1] < errors[0]
