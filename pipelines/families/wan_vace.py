"""Wan-VACE (``WanVACETransformer3DModel``): Wan with a control branch, served as Wan.

Self-attention over video tokens in the control blocks ``vace_blocks.{i}.attn1`` (they run first,
so they are layers 0..) and in the main blocks ``blocks.{i}.attn1`` (then the next layers); the
control tokens are padded to the video's, on the same grid. Reference images are extra latent
frames at the start of the grid (``WanVACEPipeline(reference_images=...)``): frames like any other.
No ``_cp_plan`` in diffusers 0.42.
"""

from __future__ import annotations

import torch

from pipelines.families.tiny_sizes import tiny_generator
from pipelines.families.wan import tiny_wan_like, wan_family, wan_inputs, wan_standard

__all__ = ["FAMILY", "TINY_VACE_CHANNELS", "tiny_wan_vace_transformer", "wan_vace_inputs"]

TINY_VACE_CHANNELS = 8


def tiny_wan_vace_transformer(*, num_layers: int = 2, vace_layers: tuple[int, ...] = (0,), seed: int = 0):
    """WanVACETransformer3DModel, 2 heads x 64, ``num_layers`` main blocks and one control block per
    entry of ``vace_layers``, random weights."""
    from diffusers import WanVACETransformer3DModel

    return tiny_wan_like(WanVACETransformer3DModel, num_layers=num_layers, seed=seed, vace_layers=list(vace_layers),
                         vace_in_channels=TINY_VACE_CHANNELS)


def wan_vace_inputs(frames: int = 2, height: int = 8, width: int = 8, *, control_frames: int | None = None, seed: int = 0,
                    **kwargs):
    """kwargs of a WanVACETransformer3DModel forward: Wan's, plus control latents of ``control_frames``
    frames (default all; fewer are padded by the model)."""
    g = tiny_generator(seed + 1)
    inputs = wan_inputs(frames, height, width, seed=seed, **kwargs)
    batch = inputs["hidden_states"].shape[0]
    control = torch.randn(batch, TINY_VACE_CHANNELS, control_frames or frames, height, width, generator=g)
    return dict(inputs, control_hidden_states=control)


FAMILY = wan_family(
    "WanVACETransformer3DModel",
    patterns=(r"vace_blocks\.(\d+)\.attn1", r"blocks\.(\d+)\.attn1"),
    tiny_transformer=tiny_wan_vace_transformer,
    tiny_inputs=lambda transformer: wan_vace_inputs(),
    name="Wan-VACE",
    pipelines=("WanVACEPipeline",),
    standard=wan_standard(),
)
