"""ConsisID (``ConsisIDTransformer3DModel``): identity-preserving CogVideoX, served as CogVideoX.

Joint attention ``transformer_blocks.{i}.attn1`` over [text | video] with CogVideoX's processor;
latent [B, T, C, H, W] (the image latent is extra channels, on the grid); patch (1, ``patch_size``,
``patch_size``). The face conditioning (the local facial extractor and the perceiver
cross-attention after every ``cross_attn_interval`` blocks) stays stock. No ``_repeated_blocks`` and
no ``_cp_plan`` in diffusers 0.42.
"""

from __future__ import annotations

import torch

from pipelines.families.cogvideox import cogvideox_family, cogvideox_inputs
from pipelines.families.record import StandardSize
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator

__all__ = ["FAMILY", "consisid_inputs", "tiny_consisid_transformer"]

# The tiny model's local facial extractor: identity embedding, ViT features, scales.
TINY_ID_DIM, TINY_VIT_DIM, TINY_VIT_TOKENS, TINY_SCALES = 16, 32, 4, 2


def tiny_consisid_transformer(*, num_layers: int = 2, face: bool = True, max_text_seq_length: int = 8, seed: int = 0):
    """ConsisIDTransformer3DModel, 2 heads x 64, ``num_layers`` blocks, RoPE like the released
    model, image-to-video channels (latent + image latent); with ``face``, a tiny local facial
    extractor and a perceiver cross-attention after every block; random weights."""
    from diffusers import ConsisIDTransformer3DModel

    torch.manual_seed(seed)
    inner = TINY_HEADS * TINY_HEAD_DIM
    return ConsisIDTransformer3DModel(
        num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM, in_channels=2 * TINY_LATENT_CHANNELS,
        out_channels=TINY_LATENT_CHANNELS, time_embed_dim=16, text_embed_dim=TINY_TEXT_DIM, num_layers=num_layers,
        sample_width=16, sample_height=16, sample_frames=9, patch_size=2, max_text_seq_length=max_text_seq_length,
        use_rotary_positional_embeddings=True, is_train_face=face, cross_attn_interval=1, cross_attn_dim_head=16,
        cross_attn_num_heads=2, LFE_id_dim=TINY_ID_DIM, LFE_vit_dim=TINY_VIT_DIM, LFE_depth=TINY_SCALES,
        LFE_dim_head=16, LFE_num_heads=2, LFE_num_id_token=2, LFE_num_querie=4, LFE_output_dim=int(inner / 3 * 2),
        LFE_ff_mult=1, LFE_num_scale=TINY_SCALES,
    ).eval()


def consisid_inputs(transformer, frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 1, seed: int = 0, **kwargs):
    """kwargs of a ConsisIDTransformer3DModel forward: CogVideoX's (RoPE as the pipeline makes it),
    an image latent in the channels, and the face identity inputs when the model has the face modules."""
    g = tiny_generator(seed + 1)
    inputs = cogvideox_inputs(transformer, frames, height, width, batch=batch, seed=seed, **kwargs)
    latent = inputs["hidden_states"]
    inputs["hidden_states"] = torch.cat([latent, torch.randn(latent.shape, generator=g)], dim=2)
    if transformer.config.is_train_face:
        inputs["id_cond"] = torch.randn(batch, TINY_ID_DIM, generator=g)
        inputs["id_vit_hidden"] = [torch.randn(batch, TINY_VIT_TOKENS, TINY_VIT_DIM, generator=g) for _ in range(TINY_SCALES)]
    return inputs


FAMILY = cogvideox_family(
    "ConsisIDTransformer3DModel",
    tiny_transformer=tiny_consisid_transformer,
    tiny_inputs=consisid_inputs,
    name="ConsisID",
    pipelines=("ConsisIDPipeline",),
    standard=StandardSize("480 x 720, 49 frames", {"patch_size": 2, "max_text_seq_length": 226}, (13, 60, 90)),
)
