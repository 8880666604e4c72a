"""Side-by-side videos of an evaluation, written with imageio (ffmpeg through imageio-ffmpeg)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

__all__ = ["DIFF_GAIN", "side_by_side", "write_video", "slug"]

DIFF_GAIN = 4  # |method - dense| is shown 4x brighter, so small differences are visible


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe form of a prompt or label."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:limit] or "video"


def _frames(video: torch.Tensor) -> torch.Tensor:
    return video[0] if video.dim() == 5 else video


def side_by_side(dense: torch.Tensor, method: torch.Tensor, gain: float = DIFF_GAIN) -> torch.Tensor:
    """[F, H, 3W, 3] uint8: dense | method | |method - dense| x gain, from [F, C, H, W] in [0, 1]."""
    d, m = _frames(dense).float().clamp(0, 1), _frames(method).float().clamp(0, 1)
    panel = torch.cat([d, m, ((m - d).abs() * gain).clamp(0, 1)], dim=-1)  # [F, C, H, 3W]
    return (panel.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


def write_video(frames: torch.Tensor, path: str | Path, fps: int = 8) -> Path:
    """Write [F, H, W, 3] uint8 (or [F, C, H, W] / [1, F, C, H, W] floats in [0, 1]) as an mp4."""
    import importlib.util

    import imageio.v2 as imageio

    if importlib.util.find_spec("imageio_ffmpeg") is None:
        # without it imageio hands ".mp4" to another plugin, which fails with an unrelated error
        raise RuntimeError(f"writing {path} needs ffmpeg through imageio-ffmpeg: pip install imageio-ffmpeg")
    if frames.dtype != torch.uint8:
        frames = (_frames(frames).float().clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # sizes are multiples of 16 (diffusers requires it), so no resizing: macro_block_size 1 keeps them exact
    imageio.mimwrite(str(path), list(frames.cpu().numpy()), format="FFMPEG", fps=fps, macro_block_size=1)
    return path
