"""LTX-2 (``LTX2VideoTransformer3DModel``): its video self-attention; everything else stays stock.

The video self-attention ``transformer_blocks.{i}.attn1`` (LTX-Video's step, ``LTXSelfAttention``:
RoPE "interleaved" or "split" per ``rope_type``, optional per-head output gates) is served; the audio
self-attention, the prompt cross-attentions and the audio-video cross-attentions keep their stock
processors. With ``perturbed_attn`` (spatio-temporal guidance) the processor takes the perturbation
mask as stock does. Tokens [B, S, C] with the latent grid as ``num_frames``, ``height``, ``width``
(patch (``patch_size_t``, ``patch_size``, ``patch_size``)); per-token timesteps [B, S] (image-to-video
and conditions); keyframe conditions (``LTX2ConditionPipeline``) are tokens appended after the grid:
a conditioning suffix (``TokenLayout.suffix_len``), computed densely. A self-attention mask
(``video_self_attention_mask``, the IC-LoRA pipeline) makes those calls dense, as stock. diffusers'
``_cp_plan`` splits the tokens at the transformer's input.
"""

from __future__ import annotations

import torch

from pipelines.families.ltx import LTXSelfAttention, VAE_SPATIAL, VAE_TEMPORAL, ltx_family, packed_grid_inputs
from pipelines.families.record import StandardSize
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "LTX2VideoSparseAttnProcessor", "ltx2_inputs", "tiny_ltx2_transformer"]

TINY_AUDIO_HEADS, TINY_AUDIO_HEAD_DIM = 2, 16


def _rotary(rope_type: str):
    from diffusers.models.transformers.transformer_ltx2 import apply_interleaved_rotary_emb, apply_split_rotary_emb

    return {"interleaved": apply_interleaved_rotary_emb, "split": apply_split_rotary_emb}[rope_type]


class LTX2VideoSparseAttnProcessor(LTXSelfAttention):
    """LTX-2 video self-attention (``attn1``): LTX2AudioVideoAttnProcessor's (and, with
    ``perturbation_mask`` / ``all_perturbed``, LTX2PerturbedAttnProcessor's) computation with the
    method's attention. hidden_states: [B, S, C]; returns [B, S, C]. A cross-attention call goes to
    the stock processor."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        query_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        perturbation_mask: torch.Tensor | None = None,
        all_perturbed: bool | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            stock = self.stock_processor(attn)
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb, key_rotary_emb)
        gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None
        if all_perturbed is None:
            all_perturbed = torch.all(perturbation_mask == 0) if perturbation_mask is not None else False
        value = attn.to_v(hidden_states)
        if all_perturbed:  # spatio-temporal guidance: the values instead of attention
            out = value
        else:
            out = self.self_attention(attn, hidden_states, attention_mask, query_rotary_emb, key_rotary_emb,
                                      _rotary(attn.rope_type), value=value)
            if perturbation_mask is not None:
                out = torch.lerp(value, out, perturbation_mask)
        if gate_logits is not None:
            gates = 2.0 * torch.sigmoid(gate_logits)  # [B, S, H]
            out = (out.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    return packed_grid_inputs(transformer, args, "suffix")


# ------------------------------------------------------------------------------- tiny test model
def tiny_ltx2_transformer(*, num_layers: int = 2, gated_attn: bool = False, perturbed_attn: bool = False,
                          rope_type: str = "interleaved", seed: int = 0):
    """LTX2VideoTransformer3DModel, video 2 heads x 64, audio 2 heads x 16, ``num_layers`` blocks,
    patch 1, random weights."""
    from diffusers import LTX2VideoTransformer3DModel

    torch.manual_seed(seed)
    return LTX2VideoTransformer3DModel(
        in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, patch_size=1, patch_size_t=1,
        num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM, cross_attention_dim=TINY_HEADS * TINY_HEAD_DIM,
        audio_in_channels=TINY_LATENT_CHANNELS, audio_out_channels=TINY_LATENT_CHANNELS,
        audio_num_attention_heads=TINY_AUDIO_HEADS, audio_attention_head_dim=TINY_AUDIO_HEAD_DIM,
        audio_cross_attention_dim=TINY_AUDIO_HEADS * TINY_AUDIO_HEAD_DIM, num_layers=num_layers,
        caption_channels=TINY_TEXT_DIM, gated_attn=gated_attn, perturbed_attn=perturbed_attn, rope_type=rope_type,
    ).eval()


def ltx2_inputs(frames: int = 2, height: int = 4, width: int = 4, *, batch: int = 1, text_len: int = 6, audio_frames: int = 5,
                timestep: float = 500.0, condition_frames: int = 0, keyframe_tokens: int = 0, seed: int = 0):
    """kwargs of an LTX2VideoTransformer3DModel forward as LTX2Pipeline makes them: packed video
    tokens of a ``frames`` x ``height`` x ``width`` latent and the grid, audio tokens, prompts;
    ``condition_frames``: per-token timesteps 0 on the first frames (image-to-video);
    ``keyframe_tokens``: that many conditioning tokens appended after the grid, with coordinates."""
    g = tiny_generator(seed)
    tokens = frames * height * width
    seq = tokens + keyframe_tokens
    t = torch.full((batch, seq), float(timestep))
    t[:, : condition_frames * height * width] = 0.0
    t[:, tokens:] = 0.0
    kwargs = dict(
        hidden_states=torch.randn(batch, seq, TINY_LATENT_CHANNELS, generator=g),
        audio_hidden_states=torch.randn(batch, audio_frames, TINY_LATENT_CHANNELS, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        audio_encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        timestep=t,
        audio_timestep=torch.full((batch,), float(timestep)),
        encoder_attention_mask=torch.ones(batch, text_len, dtype=torch.long),
        audio_encoder_attention_mask=torch.ones(batch, text_len, dtype=torch.long),
        num_frames=frames,
        height=height,
        width=width,
        audio_num_frames=audio_frames,
        return_dict=False,
    )
    if keyframe_tokens:
        kwargs["video_coords"] = _coords_with_keyframes(batch, frames, height, width, keyframe_tokens)
    return kwargs


def _coords_with_keyframes(batch: int, frames: int, height: int, width: int, extra: int) -> torch.Tensor:
    """[B, 3, S + extra, 2] RoPE bounds: the grid's, as the model makes them, then keyframe tokens
    placed at the grid's first positions (as a keyframe condition at frame 0 would be)."""
    from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoRotaryPosEmbed

    rope = LTX2AudioVideoRotaryPosEmbed(dim=TINY_HEADS * TINY_HEAD_DIM, scale_factors=(VAE_TEMPORAL, VAE_SPATIAL, VAE_SPATIAL))
    coords = rope.prepare_video_coords(batch, frames, height, width, torch.device("cpu"))
    return torch.cat([coords, coords[:, :, :extra]], dim=2)


FAMILY = ltx_family(
    "LTX2VideoTransformer3DModel",
    processor_cls=LTX2VideoSparseAttnProcessor,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_ltx2_transformer,
    tiny_inputs=lambda transformer: ltx2_inputs(),
    name="LTX-2, video self-attention",
    pipelines=("LTX2Pipeline", "LTX2ImageToVideoPipeline", "LTX2ConditionPipeline", "LTX2InContextPipeline"),
    standard=StandardSize("512 x 768, 121 frames", {"patch_size": 1, "patch_size_t": 1}, (16, 16, 24)),
)
