"""CogVideoX / CogVideoX1.5 (``CogVideoXTransformer3DModel``): everything sparse-vdit knows about this family.

Joint attention ``transformer_blocks.{i}.attn1`` over [text | video], text of
``max_text_seq_length`` tokens (never padded in the joint sequence), head_dim 64. Latent
[B, T, C, H, W] (frames second); patch (``patch_size_t`` or 1, ``patch_size``, ``patch_size``).
"""

from __future__ import annotations

import dataclasses

import torch

from kernels.helpers import cdiv
from pipelines.families.record import Family, StandardSize, config_value, square_patch_size, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.processors import SparseAttnProcessorBase, legacy_attention_heads
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "CogVideoXSparseAttnProcessor", "cogvideox_family", "tiny_cogvideox_transformer", "cogvideox_inputs"]


# ---------------------------------------------------------------------------------- processor
class CogVideoXSparseAttnProcessor(SparseAttnProcessorBase):
    """CogVideoX / CogVideoX1.5 joint attention ([text, video], head_dim 64).

    hidden_states: [B, Sv, C] video, encoder_hidden_states: [B, St, C] text; returns
    (video [B, Sv, C], text [B, St, C]) as stock. Unlike the stock processor, which calls
    ``F.scaled_dot_product_attention`` directly (so attention backends never reach CogVideoX),
    dense attention here goes through ``dispatch_attention_fn``: with the default native backend
    that is the same SDPA call, and a backend the user sets now applies.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        from diffusers.models.embeddings import apply_rotary_emb

        n_text = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        query, key, value, attention_mask = legacy_attention_heads(attn, hidden_states, attention_mask)  # [B, H, S, D]
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, n_text:] = apply_rotary_emb(query[:, :, n_text:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, n_text:] = apply_rotary_emb(key[:, :, n_text:], image_rotary_emb)

        hidden_states = self.attend(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask, text_tokens=n_text
        )
        hidden_states = attn.to_out[0](hidden_states.flatten(2, 3))
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split([n_text, hidden_states.size(1) - n_text], dim=1)
        return hidden_states, encoder_hidden_states


# ------------------------------------------------------------------------------- forward inputs
def _default_text_len(config) -> int:
    return int(config_value(config, "max_text_seq_length"))


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    inputs = video_inputs(args["hidden_states"], args["timestep"], 1)
    return ForwardInputs(**inputs, text_len=args["encoder_hidden_states"].shape[1], text_valid_lens=None)


# ------------------------------------------------------------------------------- tiny test model
def tiny_cogvideox_transformer(*, patch_size_t: int | None = None, num_layers: int = 1, max_text_seq_length: int = 8, seed: int = 0):
    """CogVideoX (``patch_size_t=None``) or CogVideoX1.5 (``patch_size_t=2``), with RoPE like the 5B models."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=TINY_HEADS,
        attention_head_dim=TINY_HEAD_DIM,
        in_channels=TINY_LATENT_CHANNELS,
        out_channels=TINY_LATENT_CHANNELS,
        time_embed_dim=16,
        text_embed_dim=TINY_TEXT_DIM,
        num_layers=num_layers,
        sample_width=16,
        sample_height=16,
        sample_frames=9,
        patch_size=2,
        patch_size_t=patch_size_t,
        max_text_seq_length=max_text_seq_length,
        use_rotary_positional_embeddings=True,
    ).eval()


def cogvideox_inputs(transformer, frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 1, timestep: int = 500, seed: int = 0):
    """kwargs of a CogVideoXTransformer3DModel forward, RoPE computed as CogVideoXPipeline does.

    Latent is [B, T, C, H, W] (CogVideoX puts frames second).
    """
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    g = tiny_generator(seed)
    cfg = transformer.config
    p, p_t = cfg.patch_size, config_value(cfg, "patch_size_t")  # ConsisID's config has no patch_size_t
    grid_h, grid_w = height // p, width // p
    if p_t is None:
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim, crops_coords=((0, 0), (grid_h, grid_w)), grid_size=(grid_h, grid_w),
            temporal_size=frames, device="cpu",
        )
    else:
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=(grid_h, grid_w),
            temporal_size=cdiv(frames, p_t), grid_type="slice", max_size=(grid_h, grid_w), device="cpu",
        )
    return dict(
        hidden_states=torch.randn(batch, frames, TINY_LATENT_CHANNELS, height, width, generator=g),
        encoder_hidden_states=torch.randn(batch, cfg.max_text_seq_length, TINY_TEXT_DIM, generator=g),
        timestep=torch.full((batch,), int(timestep), dtype=torch.long),
        image_rotary_emb=(cos, sin),
        return_dict=False,
    )


FAMILY = Family(
    class_name="CogVideoXTransformer3DModel",
    processor_cls=CogVideoXSparseAttnProcessor,
    patterns=(r"transformer_blocks\.(\d+)\.attn1",),
    text_position="before",
    patch_size=square_patch_size,
    default_text_len=_default_text_len,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_cogvideox_transformer,
    tiny_inputs=cogvideox_inputs,
    name="CogVideoX / CogVideoX1.5",
    pipelines=("CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline",
               "CogVideoXFunControlPipeline"),
    standard=StandardSize("CogVideoX1.5: 768 x 1360, 81 frames", {"patch_size": 2, "patch_size_t": 2, "max_text_seq_length": 226},
                          (22, 96, 170)),
)


def cogvideox_family(class_name: str, **fields) -> Family:
    """The record of CogVideoX or a model read as it is (ConsisID; EasyAnimate with its own processor
    and latent): ``CogVideoXSparseAttnProcessor`` on ``transformer_blocks.{i}.attn1``, [text | video],
    latent [B, T, C, H, W]; ``fields``: the rest (any field replaced)."""
    return dataclasses.replace(FAMILY, class_name=class_name, **fields)
