"""Cosmos Predict 1 / 2 / 2.5 (``CosmosTransformer3DModel``): self-attention over the video grid.

Self-attention ``transformer_blocks.{i}.attn1`` over video tokens only (text, and Cosmos 2.5's
image context, enter through the cross-attention ``attn2``, which stays stock); latent
[B, C, T, H, W] (the condition mask and the padding mask are extra channels, on the grid); patch
(t, h, w) from ``config.patch_size``, tokens in (frame, row, column) order: read as Wan is
(``wan_family``). The stock processor (``CosmosAttnProcessor2_0``) normalises q and k per head,
then applies RoPE on [B, H, S, D] with diffusers' ``apply_rotary_emb`` (real, halves); ours does
the same, then attends. Video-to-world
passes per-frame timesteps [B, 1, T, 1, 1] (the conditioning frames at their own small value):
the step is their largest value. No ``_repeated_blocks`` and no ``_cp_plan`` in diffusers 0.42.
The released configs concatenate the padding mask (``concat_padding_mask``), for which the stock
forward needs torchvision; the tiny test model leaves it off (it adds one input channel and no
attention).
"""

from __future__ import annotations

import torch

from pipelines.families.record import StandardSize
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.families.wan import wan_family
from pipelines.processors import SparseAttnProcessorBase

__all__ = ["FAMILY", "CosmosSparseAttnProcessor", "cosmos_inputs", "tiny_cosmos_transformer"]


class CosmosSparseAttnProcessor(SparseAttnProcessorBase):
    """Cosmos self-attention (``attn1``): stock projections, per-head RMS norm, RoPE.

    hidden_states: [B, S, C] video tokens, S = frames x rows x cols; ``image_rotary_emb``: the
    model's (cos, sin), each [S, D]; returns [B, S, C]. A cross-attention call (text given) is
    handed to diffusers' ``CosmosAttnProcessor2_0``.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

            stock = self.stock_processor(attn, CosmosAttnProcessor2_0)  # generic Attention: no default class
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        # [B, H, S, D], as the stock processor normalises and rotates them.
        query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
                             for proj in (attn.to_q, attn.to_k, attn.to_v))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            key = apply_rotary_emb(key, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
        hidden_states = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


def tiny_cosmos_transformer(*, num_layers: int = 2, seed: int = 0, **config):
    """CosmosTransformer3DModel, 2 heads x 64, ``num_layers`` blocks, patch (1, 2, 2), a condition-
    mask input channel (Cosmos 2 / 2.5), learnable positions on top of RoPE (Cosmos 1), no padding-
    mask channel (see the module docstring); random weights. ``config``: overrides."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(seed)
    config = dict(
        in_channels=TINY_LATENT_CHANNELS + 1, out_channels=TINY_LATENT_CHANNELS, num_attention_heads=TINY_HEADS,
        attention_head_dim=TINY_HEAD_DIM, num_layers=num_layers, mlp_ratio=1.0, text_embed_dim=TINY_TEXT_DIM,
        adaln_lora_dim=16, max_size=(16, 64, 64), patch_size=(1, 2, 2), concat_padding_mask=False,
        extra_pos_embed_type="learnable",
    ) | config
    return CosmosTransformer3DModel(**config).eval()


def cosmos_inputs(frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 1, condition_frames: int = 0,
                  text_len: int = 6, timestep: float = 500.0, seed: int = 0) -> dict:
    """kwargs of a CosmosTransformer3DModel forward: latent [B, C, T, H, W], the condition mask
    [B, 1, T, H, W] (ones on the first ``condition_frames``), text [B, L, text_dim]. With
    conditioning frames the timestep is per frame, [B, 1, T, 1, 1], as video-to-world passes it
    (the conditioning frames at a tenth of the step's)."""
    g = tiny_generator(seed)
    mask = torch.zeros(batch, 1, frames, height, width)
    mask[:, :, :condition_frames] = 1.0
    if condition_frames:
        frame_on = (torch.arange(frames) < condition_frames).float().view(1, 1, frames, 1, 1)
        step = float(timestep) * (1 - frame_on) + 0.1 * float(timestep) * frame_on
        t = step.expand(batch, 1, frames, 1, 1).contiguous()
    else:
        t = torch.full((batch,), float(timestep))
    return dict(
        hidden_states=torch.randn(batch, TINY_LATENT_CHANNELS, frames, height, width, generator=g),
        timestep=t,
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        condition_mask=mask,
        return_dict=False,
    )


FAMILY = wan_family(
    "CosmosTransformer3DModel",
    patterns=(r"transformer_blocks\.(\d+)\.attn1",),
    processor_cls=CosmosSparseAttnProcessor,
    tiny_transformer=tiny_cosmos_transformer,
    tiny_inputs=lambda transformer: cosmos_inputs(),
    name="Cosmos Predict 1 / 2 / 2.5",
    pipelines=("CosmosTextToWorldPipeline", "CosmosVideoToWorldPipeline", "Cosmos2VideoToWorldPipeline",
               "Cosmos2TextToImagePipeline", "Cosmos2_5_PredictBasePipeline", "Cosmos2_5_TransferPipeline"),
    # Cosmos 2 / 2.5: the Wan VAE (4x frames, 8x space) at 704 x 1280, 93 frames.
    standard=StandardSize("704 x 1280, 93 frames (2 / 2.5)", {"patch_size": (1, 2, 2)}, (24, 88, 160)),
)
