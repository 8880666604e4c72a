"""Fidelity of a video against the dense reference of the same prompt and seed, as the field
reports it: PSNR per frame averaged over frames, and SSIM (torchmetrics' implementation).

Videos are [F, C, H, W] or [1, F, C, H, W] float tensors with pixels in [0, 1] (a diffusers
pipeline called with ``output_type="pt"``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["frame_psnr", "video_psnr", "video_ssim", "psnr_quality"]


def _frames(video: torch.Tensor) -> torch.Tensor:
    if video.dim() == 5:
        if video.shape[0] != 1:
            raise ValueError(f"one video at a time: got a batch of {video.shape[0]}")
        video = video[0]
    if video.dim() != 4:
        raise ValueError(f"a video is [F, C, H, W] (or [1, F, C, H, W]), got shape {tuple(video.shape)}")
    return video.double()


def frame_psnr(video: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[F] PSNR in dB of each frame (peak 1.0); +inf for a frame equal to the reference."""
    x, ref = _frames(video), _frames(reference)
    if x.shape != ref.shape:
        raise ValueError(f"video {tuple(x.shape)} and reference {tuple(ref.shape)} differ in shape")
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return torch.where(mse == 0, math.inf, -10.0 * torch.log10(mse))


def video_psnr(video: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR per frame, averaged over frames (dB; +inf only when every frame is equal)."""
    per_frame = frame_psnr(video, reference)
    finite = per_frame[torch.isfinite(per_frame)]
    if finite.numel() == 0:
        return math.inf
    # an identical frame is as good as the best finite one, not infinitely good: keep the mean finite
    return float(torch.where(torch.isfinite(per_frame), per_frame, finite.max()).mean())


def video_ssim(video: torch.Tensor, reference: torch.Tensor) -> float:
    """SSIM averaged over frames (torchmetrics, Gaussian 11 x 11 window, sigma 1.5, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, ref = _frames(video).float(), _frames(reference).float()
    return float(structural_similarity_index_measure(x, ref, data_range=1.0))


def psnr_quality(psnr: float) -> str:
    """How a PSNR against dense reads: > 30 dB near-identical, 20-30 dB visible differences, < 20 dB different."""
    if psnr == math.inf:
        return "identical"
    if psnr > 30:
        return "near-identical"
    if psnr >= 20:
        return "visible differences"
    return "different video"
