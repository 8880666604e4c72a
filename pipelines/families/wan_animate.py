"""Wan-Animate (``WanAnimateTransformer3DModel``): Wan 2.2 Animate, served as Wan.

Self-attention ``blocks.{i}.attn1`` over video tokens: the latent's first frame is the reference
(character) image and the pose latents are added to the other frames, all on one grid of T + 1
frames. The face adapter (``face_adapter.{j}``, cross-attention to the face motion) stays stock.
No ``_cp_plan`` in diffusers 0.42.
"""

from __future__ import annotations

import torch

from pipelines.families.tiny_sizes import TINY_LATENT_CHANNELS, tiny_generator
from pipelines.families.wan import tiny_wan_like, wan_family, wan_inputs, wan_standard

__all__ = ["FAMILY", "tiny_wan_animate_transformer", "wan_animate_inputs"]

FACE_SIZE = 8  # the tiny motion encoder's face resolution


def tiny_wan_animate_transformer(*, num_layers: int = 2, seed: int = 0):
    """WanAnimateTransformer3DModel, 2 heads x 64, ``num_layers`` blocks, a face adapter after
    every block, a motion encoder for 8 x 8 faces; random weights."""
    from diffusers import WanAnimateTransformer3DModel

    return tiny_wan_like(
        WanAnimateTransformer3DModel, num_layers=num_layers, seed=seed, in_channels=2 * TINY_LATENT_CHANNELS + 4,
        latent_channels=TINY_LATENT_CHANNELS, image_dim=None, motion_encoder_channel_sizes={"8": 8, "4": 8},
        motion_encoder_size=FACE_SIZE, motion_style_dim=16, motion_dim=4, motion_encoder_dim=16,
        face_encoder_hidden_dim=16, face_encoder_num_heads=1, inject_face_latents_blocks=1, motion_encoder_batch_size=4,
    )


def wan_animate_inputs(frames: int = 3, height: int = 8, width: int = 8, *, seed: int = 0, **kwargs):
    """kwargs of a WanAnimateTransformer3DModel forward: a latent of ``frames`` frames (the first one
    the reference image; ``frames`` = 3 or 5 + 4k), pose latents of the others, a face video."""
    g = tiny_generator(seed + 1)
    inputs = wan_inputs(frames, height, width, seed=seed, **kwargs)
    batch = inputs["hidden_states"].shape[0]
    face_frames = 4 * (frames - 1) - 3  # the face encoder's two stride-2 convolutions give frames - 1
    return dict(
        inputs,
        hidden_states=torch.randn(batch, 2 * TINY_LATENT_CHANNELS + 4, frames, height, width, generator=g),
        pose_hidden_states=torch.randn(batch, TINY_LATENT_CHANNELS, frames - 1, height, width, generator=g),
        face_pixel_values=torch.randn(batch, 3, face_frames, FACE_SIZE, FACE_SIZE, generator=g),
    )


FAMILY = wan_family(
    "WanAnimateTransformer3DModel",
    tiny_transformer=tiny_wan_animate_transformer,
    tiny_inputs=lambda transformer: wan_animate_inputs(),
    name="Wan-Animate",
    pipelines=("WanAnimatePipeline",),
    standard=wan_standard("720p, 77 frames + reference", (21, 90, 160)),
)
