"""AnyFlow (``AnyFlowTransformer3DModel``): a Wan2.1 backbone for flow-map sampling, served as Wan.

Self-attention ``blocks.{i}.attn1`` over video tokens only (cross-attention ``attn2``, with the
image tokens of image-to-video, stays stock); RMS norm across heads on q and k, then RoPE as complex
products (``rotary_emb``: {"query": ..., "key": ...}), as the stock ``AnyFlowAttnProcessor``. Latent
[B, F, C, H, W] (frames second); patch (t, h, w) from ``config.patch_size``. Every forward takes
per-frame timesteps [B, F]: the source ``timestep`` (the step is its largest value; context frames of
video continuation are at 0) and the target ``r_timestep``; ``AnyFlowPipeline`` batches both CFG
branches. The frame-autoregressive ``AnyFlowFARTransformer3DModel`` is not this class (and
cannot be served: ``UNSUPPORTED``). diffusers 0.42 gives it ``_repeated_blocks`` and no
``_cp_plan``.
"""

from __future__ import annotations

import dataclasses

import torch

from pipelines.families.record import video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.families.wan import wan_family, wan_standard
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "AnyFlowSparseAttnProcessor", "anyflow_inputs", "tiny_anyflow_transformer"]

TINY_IMAGE_DIM, TINY_IMAGE_TOKENS = 16, 3


class AnyFlowSparseAttnProcessor(SparseAttnProcessorBase):
    """AnyFlow self-attention (``attn1``): hidden_states [B, S, C] video tokens; returns [B, S, C].
    A cross-attention call (text given) is handed to the module's stock processor."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return self.stock_processor(attn)(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        from diffusers.models.transformers.transformer_anyflow import apply_rotary_emb

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        # [B, H, S, D] for the rotation, as stock.
        query, key, value = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (query, key, value))
        if rotary_emb is not None:
            query = apply_rotary_emb(query, rotary_emb["query"])
            key = apply_rotary_emb(key, rotary_emb["key"])
        hidden_states = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden_states))


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    return ForwardInputs(**video_inputs(args["hidden_states"], args["timestep"], 1), text_len=None, text_valid_lens=None)


def tiny_anyflow_transformer(*, num_layers: int = 2, image: bool = False, seed: int = 0):
    """AnyFlowTransformer3DModel, 2 heads x 64, ``num_layers`` blocks, patch (1, 2, 2); ``image``:
    the image-to-video model's image embedding; random weights."""
    from diffusers import AnyFlowTransformer3DModel

    torch.manual_seed(seed)
    return AnyFlowTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM,
        in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, text_dim=TINY_TEXT_DIM, freq_dim=32,
        ffn_dim=64, num_layers=num_layers, image_dim=TINY_IMAGE_DIM if image else None, rope_max_seq_len=64,
    ).eval()


def anyflow_inputs(frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 2, image: bool = False,
                   context_frames: int = 0, text_len: int = 6, timestep: float = 500.0, seed: int = 0) -> dict:
    """kwargs of an AnyFlowTransformer3DModel forward as ``AnyFlowPipeline`` makes them: latent
    [B, F, C, H, W], per-frame source timesteps [B, F] (0 on the first ``context_frames``: video
    continuation) and targets at half of them, text [B, L, text_dim]; with ``image``, image
    embeddings [B, 3, image_dim] (image-to-video). B = 2: both CFG branches in one batch."""
    g = tiny_generator(seed)
    t = torch.full((batch, frames), float(timestep))
    t[:, :context_frames] = 0.0
    kwargs = dict(
        hidden_states=torch.randn(batch, frames, TINY_LATENT_CHANNELS, height, width, generator=g),
        timestep=t,
        r_timestep=t / 2,
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        return_dict=False,
    )
    if image:
        kwargs["encoder_hidden_states_image"] = torch.randn(batch, TINY_IMAGE_TOKENS, TINY_IMAGE_DIM, generator=g)
    return kwargs


FAMILY = dataclasses.replace(
    wan_family(
        "AnyFlowTransformer3DModel",
        processor_cls=AnyFlowSparseAttnProcessor,
        tiny_transformer=tiny_anyflow_transformer,
        tiny_inputs=lambda transformer: anyflow_inputs(),
        name="AnyFlow",
        pipelines=("AnyFlowPipeline",),
        standard=wan_standard("480 x 832, 81 frames", (21, 60, 104)),
    ),
    read_inputs=_read_inputs,  # the latent is [B, F, C, H, W]
)
