"""Pipelines by name for the commands: the shipped proxy model, a local folder or a Hub repo id.

    load_pipeline("proxy", "cpu", torch.float32)                      # the embedded default
    load_pipeline("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "cuda", torch.bfloat16)
    load_pipeline("/models/wan-1.3b", "cuda", torch.bfloat16)          # a local diffusers folder

The proxy needs no download (``pipelines.tiny``); anything else goes through diffusers'
``DiffusionPipeline.from_pretrained`` (the local Hub cache serves it offline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PROXY = "proxy"


@dataclass(frozen=True)
class GenerationDefaults:
    """What a pipeline is called with unless the command line says otherwise."""

    height: int
    width: int
    num_frames: int
    guidance_scale: float
    prompts: tuple[str, ...]
    negative_prompt: str | None = None
    extra: dict = field(default_factory=dict)

    def call_kwargs(self) -> dict:
        out = dict(height=self.height, width=self.width, num_frames=self.num_frames,
                   guidance_scale=self.guidance_scale, **self.extra)
        if self.negative_prompt is not None:
            out["negative_prompt"] = self.negative_prompt
        return out


PROXY_DEFAULTS = GenerationDefaults(
    height=64, width=96, num_frames=9, guidance_scale=5.0,
    prompts=("a red bird flies over the river", "a cat runs in the green field", "a blue dog jumps slowly"),
    negative_prompt="blurry low quality", extra={"max_sequence_length": 16},
)
MODEL_DEFAULTS = GenerationDefaults(
    height=480, width=832, num_frames=81, guidance_scale=5.0,
    prompts=("A cat walks on the grass, realistic", "A red car drives along a coastal road at sunset"),
)


def load_pipeline(model: str, device: str | torch.device, dtype: torch.dtype):
    """(pipeline on ``device`` in ``dtype``, its GenerationDefaults)."""
    if model == PROXY:
        from pipelines.tiny import tiny_wan_pipeline

        return tiny_wan_pipeline().to(device, dtype), PROXY_DEFAULTS
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds; the message is what matters
        raise ValueError(
            f"could not load the pipeline {model!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
            f"pass '{PROXY}', a local diffusers folder or a Hub repo id (downloaded once, then served from the cache)"
        ) from exc
    return pipe.to(device), MODEL_DEFAULTS
