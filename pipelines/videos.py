"""Side-by-side videos of an evaluation, written with imageio (ffmpeg through imageio-ffmpeg).

A side-by-side frame is three panels, dense | method | difference x4, each scaled up (nearest
neighbour, whole pixels) to at least ``MIN_PANEL_HEIGHT`` rows so a small video (the proxy's 32 x 48
on the CPU) is visible, under a strip naming each panel.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

__all__ = ["DIFF_GAIN", "MIN_PANEL_HEIGHT", "LABEL_HEIGHT", "require_video_writer", "side_by_side", "write_video", "slug"]

DIFF_GAIN = 4  # |method - dense| is shown 4x brighter, so small differences are visible
MIN_PANEL_HEIGHT = 240  # panels are scaled up by a whole factor to at least this many rows
LABEL_HEIGHT = 24  # the strip above the panels holding their names (even: video codecs want even sizes)


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe form of a prompt or label."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:limit] or "video"


def _frames(video: torch.Tensor) -> torch.Tensor:
    return video[0] if video.dim() == 5 else video


def side_by_side(dense: torch.Tensor, method: torch.Tensor, gain: float = DIFF_GAIN, label: str = "method") -> torch.Tensor:
    """[F, LABEL_HEIGHT + s H, 3 s W, 3] uint8: dense | method | |method - dense| x gain under their
    names, from [F, C, H, W] videos in [0, 1], each panel scaled up by s = ceil(MIN_PANEL_HEIGHT / H)."""
    d, m = _frames(dense).float().clamp(0, 1), _frames(method).float().clamp(0, 1)
    scale = max(1, math.ceil(MIN_PANEL_HEIGHT / d.shape[-2]))
    panels = [d, m, ((m - d).abs() * gain).clamp(0, 1)]
    panels = [p.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1) for p in panels]
    video = (torch.cat(panels, dim=-1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)  # [F, sH, 3sW, 3]
    names = ("dense", label, f"difference x{gain:g}")
    header = _label_strip(names, panels[0].shape[-1])
    return torch.cat([header.expand(video.shape[0], -1, -1, -1), video], dim=1)


def _label_strip(names: tuple[str, ...], panel_width: int) -> torch.Tensor:
    """[1, LABEL_HEIGHT, len(names) * panel_width, 3] uint8: each name in white on black over its panel."""
    import numpy as np
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (len(names) * panel_width, LABEL_HEIGHT), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for i, name in enumerate(names):
        draw.text((i * panel_width + 6, 5), name[: max(1, panel_width // 7)], fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(strip).copy()).unsqueeze(0)


def require_video_writer(what: str = "writing videos", alternative: str = "") -> None:
    """Raise a RuntimeError saying what to install when mp4s cannot be written (no imageio-ffmpeg:
    imageio would hand ".mp4" to another plugin, which fails with an unrelated error). Callers that
    write videos after long work call this first, so they fail before the work."""
    import importlib.util

    if importlib.util.find_spec("imageio_ffmpeg") is None:
        raise RuntimeError(f"{what} needs ffmpeg through imageio-ffmpeg: pip install imageio-ffmpeg{alternative}")


def write_video(frames: torch.Tensor, path: str | Path, fps: int = 8) -> Path:
    """Write [F, H, W, 3] uint8 (or [F, C, H, W] / [1, F, C, H, W] floats in [0, 1]) as an mp4."""
    import imageio.v2 as imageio

    require_video_writer(f"writing {path}")
    if frames.dtype != torch.uint8:
        frames = (_frames(frames).float().clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # sizes are multiples of 16 (diffusers requires it), so no resizing: macro_block_size 1 keeps them exact
    imageio.mimwrite(str(path), list(frames.cpu().numpy()), format="FFMPEG", fps=fps, macro_block_size=1)
    return path
