"""SkyReels-V2 (``SkyReelsV2Transformer3DModel``): a Wan model, served as Wan.

Self-attention ``blocks.{i}.attn1`` over video tokens. Diffusion forcing (``SkyReelsV2DiffusionForcing*``
pipelines) passes per-frame timesteps [B, F] (the step is their largest value); with causal blocks
(``num_frame_per_block > 1``) the self-attention carries a frame-block causal mask, and those calls
run dense through diffusers, as stock (no method is asked). No ``_cp_plan`` in diffusers 0.42.
"""

from __future__ import annotations

from pipelines.families.wan import tiny_wan_like, wan_family, wan_inputs, wan_standard

__all__ = ["FAMILY", "tiny_skyreels_v2_transformer"]


def tiny_skyreels_v2_transformer(*, num_layers: int = 2, num_frame_per_block: int = 1, seed: int = 0):
    """SkyReelsV2Transformer3DModel, 2 heads x 64, ``num_layers`` blocks, random weights;
    ``num_frame_per_block`` > 1: causal frame blocks (diffusion forcing's asynchronous mode)."""
    from diffusers import SkyReelsV2Transformer3DModel

    return tiny_wan_like(SkyReelsV2Transformer3DModel, num_layers=num_layers, seed=seed,
                         num_frame_per_block=num_frame_per_block)


FAMILY = wan_family(
    "SkyReelsV2Transformer3DModel",
    tiny_transformer=tiny_skyreels_v2_transformer,
    tiny_inputs=lambda transformer: wan_inputs(),
    name="SkyReels-V2",
    pipelines=(
        "SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline", "SkyReelsV2DiffusionForcingPipeline",
        "SkyReelsV2DiffusionForcingImageToVideoPipeline", "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
    ),
    standard=wan_standard("540p, 97 frames", (25, 68, 120)),
)
