"""Kandinsky 6 (``Kandinsky6Transformer3DModel``): its video self-attention; everything else stays stock.

Each fused block ``visual_transformer_blocks.{i}`` runs a video self-attention
(``video_dec_block.self_attention``, video tokens only, 3-D RoPE on queries and keys), a video-text
cross-attention, an audio self-attention and text cross-attention, and the two audio-video
cross-attentions. Only the video self-attention is served: text reaches the video through the
cross-attention (its padded prompt, ``encoder_attention_mask``, never enters the served call), and
the audio, cross-modal and text-encoder attentions keep their stock processors. With or without
``audio_hidden_states`` the video self-attention is the same call.

Latent [B, T, H, W, C] (channels last; ``visual_cond``: the latent, an unused conditioning latent
and a mask are channels, on the grid); patch from ``config.patch_size``. Image-to-video
(``Kandinsky6TI2VAPipeline`` with ``image``) appends the clean reference frame as one more latent
frame after the video, at RoPE time position 0 (``visual_rope_pos``) with token type 1: it is not the
frame after the last one, so it is read as a conditioning suffix (``TokenLayout.suffix_len``),
computed densely. The NABLA-only super-resolution model is another class
(``Kandinsky6SRTransformer3DModel``, refused). No ``_cp_plan`` in diffusers 0.42.
"""

from __future__ import annotations

import torch

from pipelines.families.record import Family, StandardSize, triple_patch_size, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "Kandinsky6SparseAttnProcessor", "kandinsky6_inputs", "tiny_kandinsky6_transformer"]

TINY_POOLED_DIM = 16
TINY_AUDIO_DIM = 64  # one audio head of TINY_HEAD_DIM: ca_rope applies the audio RoPE to video-width heads


class Kandinsky6SparseAttnProcessor(SparseAttnProcessorBase):
    """Kandinsky 6 video self-attention: Kandinsky6AttnProcessor's computation (q/k RMS norm per
    head, RoPE in float32 on queries with ``rotary_emb`` and keys with ``rotary_emb_kv``,
    ``out_layer``) with the method's attention. hidden_states: [B, S, C]; returns [B, S, C]. A
    cross-attention call (installed on another module by mistake) goes to the stock processor."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, rotary_emb=None, rotary_emb_kv=None,
                 attn_mask=None):
        if encoder_hidden_states is not None:
            stock = self.stock_processor(attn)
            return stock(attn, hidden_states, encoder_hidden_states, rotary_emb, rotary_emb_kv, attn_mask)
        from diffusers.models.transformers.transformer_kandinsky6 import apply_rotary

        query, key, value = (proj(hidden_states).unflatten(-1, (attn.num_heads, -1))
                             for proj in (attn.to_query, attn.to_key, attn.to_value))
        query, key = attn.query_norm(query), attn.key_norm(key)
        if rotary_emb is not None:
            query = apply_rotary(query, rotary_emb).to(dtype=query.dtype)
        if rotary_emb_kv is not None:
            key = apply_rotary(key, rotary_emb_kv).to(dtype=key.dtype)
        out = self.attend(query, key, value, attn_mask)  # the model passes no mask here; one would run dense
        return attn.out_layer(out.flatten(-2, -1))


def grid_frames(visual_rope_pos, frames: int) -> int:
    """Patched frames on the grid: the leading frames whose RoPE time positions step by one (all
    ``frames`` when the forward passes no positions). Frames after them (the image-to-video
    reference frame, at position 0 again) are conditioning tokens after the grid."""
    if visual_rope_pos is None:
        return frames
    times = torch.as_tensor(visual_rope_pos[0]).tolist()[:frames]
    run = 1
    while run < len(times) and times[run] == times[run - 1] + 1:
        run += 1
    return run


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    inputs = video_inputs(args["hidden_states"], args["timestep"], 1, hw_dims=(2, 3))
    pt, ph, pw = triple_patch_size(transformer.config)
    frames = inputs["latent_frames"] // pt
    grid = grid_frames(args.get("visual_rope_pos"), frames)
    suffix = (frames - grid) * (inputs["latent_height"] // ph) * (inputs["latent_width"] // pw)
    return ForwardInputs(**dict(inputs, latent_frames=grid * pt), text_len=None, text_valid_lens=None,
                         suffix_len=suffix)


# ------------------------------------------------------------------------------- tiny test model
def tiny_kandinsky6_transformer(*, num_layers: int = 2, seed: int = 0):
    """Kandinsky6Transformer3DModel, video 2 heads x 64, audio 1 head x 64, ``num_layers`` fused
    blocks and one text block per branch, the released checkpoints' flags (``ca_rope``,
    ``cross_gates``, ``fix_modulation``, two visual token types, ``visual_cond``); random weights
    (its modulations are random in a fresh model)."""
    from diffusers import Kandinsky6Transformer3DModel

    torch.manual_seed(seed)
    return Kandinsky6Transformer3DModel(
        in_visual_dim=TINY_LATENT_CHANNELS, out_visual_dim=TINY_LATENT_CHANNELS, in_text_dim=TINY_TEXT_DIM,
        in_text_dim2=TINY_POOLED_DIM, time_dim=32, patch_size=(1, 2, 2), model_dim=TINY_HEADS * TINY_HEAD_DIM,
        ff_dim=64, num_text_blocks=1, num_visual_blocks=num_layers, axes_dims=(16, 24, 24), visual_cond=True,
        in_audio_dim=TINY_LATENT_CHANNELS, out_audio_dim=TINY_LATENT_CHANNELS, model_dim_a=TINY_AUDIO_DIM,
        text_token_padding=True, ca_rope=True, cross_gates=True, fix_modulation=True,
        visual_token_type_num_embeddings=2,
    ).eval()


def kandinsky6_inputs(frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 1, text_len: int = 6,
                      text_lens: tuple[int, ...] | None = None, audio_frames: int | None = 5, reference: bool = False,
                      timestep: float = 500.0, seed: int = 0):
    """kwargs of a Kandinsky6Transformer3DModel forward as Kandinsky6TI2VAPipeline makes them: latent
    [B, T, H, W, 2C + 1] (latent, zero conditioning latent, mask), prompts [B, L, D] and pooled
    [B, D2], audio latents [B, A, C] (None: video only). ``text_lens``: per-sample real prompt
    tokens (padding last, as the pipeline's mask), e.g. the prompt and negative prompt of batched
    CFG. ``reference``: image-to-video, the reference latent as one more frame after the ``frames``,
    mask 1, RoPE time position 0 and token type 1."""
    g = tiny_generator(seed)
    total = frames + 1 if reference else frames
    latent = torch.randn(batch, total, height, width, TINY_LATENT_CHANNELS, generator=g)
    mask = torch.zeros(batch, total, height, width, 1)
    mask[:, frames:] = 1.0  # the reference frame, if any
    kwargs = dict(
        hidden_states=torch.cat([latent, torch.zeros_like(latent), mask], dim=-1),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        pooled_projections=torch.randn(batch, TINY_POOLED_DIM, generator=g),
        timestep=torch.full((batch,), float(timestep)),
        audio_hidden_states=None if audio_frames is None else torch.randn(batch, audio_frames, TINY_LATENT_CHANNELS,
                                                                          generator=g),
        return_dict=False,
    )
    if text_lens is not None:
        kwargs["encoder_attention_mask"] = torch.arange(text_len) < torch.tensor(text_lens).view(-1, 1)
    if reference:
        kwargs["visual_rope_pos"] = (torch.cat([torch.arange(frames), torch.zeros(1, dtype=torch.long)]),
                                     torch.arange(height // 2), torch.arange(width // 2))
        kwargs["visual_token_type_ids"] = (torch.arange(total) == frames).long().expand(batch, total)
    return kwargs


FAMILY = Family(
    class_name="Kandinsky6Transformer3DModel",
    processor_cls=Kandinsky6SparseAttnProcessor,
    patterns=(r"visual_transformer_blocks\.(\d+)\.video_dec_block\.self_attention",),
    text_position="none",
    patch_size=triple_patch_size,
    default_text_len=None,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_kandinsky6_transformer,
    tiny_inputs=lambda transformer: kandinsky6_inputs(),
    name="Kandinsky 6 (video self-attention)",
    pipelines=("Kandinsky6TI2VAPipeline",),
    # The pipeline's default 512 x 768, 121 frames on the HunyuanVideo VAE (8x, 4x): 31 x 64 x 96;
    # image-to-video adds its reference frame, 32 x 48 tokens after the grid.
    standard=StandardSize("512 x 768, 121 frames", {"patch_size": (1, 2, 2)}, (31, 64, 96)),
)
