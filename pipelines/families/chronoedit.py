"""ChronoEdit (``ChronoEditTransformer3DModel``): an image-editing Wan, served as Wan.

Self-attention ``blocks.{i}.attn1`` over video tokens; the input image and the edited one are the
first and last frames of the grid (with temporal reasoning, the frames between them). Its RoPE
skips frames when there are two; the grid is the latent's as in Wan. diffusers' ``_cp_plan``
is Wan's.
"""

from __future__ import annotations

from pipelines.families.wan import tiny_wan_like, wan_family, wan_inputs, wan_standard

__all__ = ["FAMILY", "tiny_chronoedit_transformer"]


def tiny_chronoedit_transformer(*, num_layers: int = 2, seed: int = 0):
    """ChronoEditTransformer3DModel, 2 heads x 64, ``num_layers`` blocks, random weights."""
    from diffusers import ChronoEditTransformer3DModel

    return tiny_wan_like(ChronoEditTransformer3DModel, num_layers=num_layers, seed=seed)


FAMILY = wan_family(
    "ChronoEditTransformer3DModel",
    tiny_transformer=tiny_chronoedit_transformer,
    tiny_inputs=lambda transformer: wan_inputs(),
    name="ChronoEdit",
    pipelines=("ChronoEditPipeline",),
    standard=wan_standard("480 x 832, 81 frames", (21, 60, 104)),
)
