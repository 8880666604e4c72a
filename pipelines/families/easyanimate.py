"""EasyAnimate (``EasyAnimateTransformer3DModel``): joint [text | video] attention, as CogVideoX's.

Joint attention ``transformer_blocks.{i}.attn1`` over [text | video]: the first ``mmdit_layers``
blocks project the text with their own ``add_{q,k,v}_proj`` and ``to_add_out`` (MMDiT), the others
concatenate it before the shared projections; per-head LayerNorm on q and k, RoPE on the video part.
Latent [B, C, F, H, W]; patch (1, ``patch_size``, ``patch_size``), tokens in (frame, row, column)
order. The text is the prompt padded to the pipeline's ``max_sequence_length`` (256), plus the
T5 prompt when the model has one; the stock forward attends all of it with no mask, and so does
ours (no key padding). The stock processor calls ``F.scaled_dot_product_attention`` directly; our
dense calls go through ``dispatch_attention_fn`` (the same SDPA with the default backend). No
``_repeated_blocks`` and no ``_cp_plan`` in diffusers 0.42.
"""

from __future__ import annotations

import torch

from pipelines.families.cogvideox import cogvideox_family
from pipelines.families.record import StandardSize, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "EasyAnimateSparseAttnProcessor", "easyanimate_inputs", "tiny_easyanimate_transformer"]

PROMPT_TOKENS = 256  # EasyAnimatePipeline's max_sequence_length: prompts are padded to it


class EasyAnimateSparseAttnProcessor(SparseAttnProcessorBase):
    """EasyAnimate joint attention: hidden_states [B, Sv, C] video, encoder_hidden_states [B, St, C]
    text; returns (video [B, Sv, C], text [B, St, C]) as stock."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        from diffusers.models.embeddings import apply_rotary_emb

        n_text = encoder_hidden_states.shape[1]
        mmdit = attn.add_q_proj is not None
        if not mmdit:
            hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, S, H * D] -> [B, H, S, D], where stock's norms and RoPE act
            return x.unflatten(2, (attn.heads, -1)).transpose(1, 2)

        query, key, value = (heads(proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if mmdit:
            text_q, text_k, text_v = (heads(proj(encoder_hidden_states))
                                      for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                text_q = attn.norm_added_q(text_q)
            if attn.norm_added_k is not None:
                text_k = attn.norm_added_k(text_k)
            query = torch.cat([text_q, query], dim=2)
            key = torch.cat([text_k, key], dim=2)
            value = torch.cat([text_v, value], dim=2)
        if image_rotary_emb is not None:
            query[:, :, n_text:] = apply_rotary_emb(query[:, :, n_text:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, n_text:] = apply_rotary_emb(key[:, :, n_text:], image_rotary_emb)

        hidden_states = self.attend(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask, text_tokens=n_text
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        encoder_hidden_states, hidden_states = hidden_states[:, :n_text], hidden_states[:, n_text:]
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    text = args.get("encoder_hidden_states")
    if text is None:
        raise ValueError("EasyAnimateTransformer3DModel was called without encoder_hidden_states: pass the prompt embeddings")
    t5 = args.get("encoder_hidden_states_t5")
    text_len = text.shape[1] + (t5.shape[1] if t5 is not None else 0)  # the forward appends the T5 prompt
    return ForwardInputs(**video_inputs(args["hidden_states"], args["timestep"], 2), text_len=text_len, text_valid_lens=None)


def tiny_easyanimate_transformer(*, num_layers: int = 2, mmdit_layers: int = 1, inpaint: bool = False, seed: int = 0):
    """EasyAnimateTransformer3DModel, 2 heads x 64, ``num_layers`` blocks of which the first
    ``mmdit_layers`` are MMDiT blocks (text projected apart), patch 2; ``inpaint``: the inpainting
    model's input channels (latent + mask + masked-video latent); random weights."""
    from diffusers import EasyAnimateTransformer3DModel

    torch.manual_seed(seed)
    return EasyAnimateTransformer3DModel(
        num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM,
        in_channels=(2 * TINY_LATENT_CHANNELS + 1) if inpaint else TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, patch_size=2, sample_width=16, sample_height=16, num_layers=num_layers,
        mmdit_layers=mmdit_layers, time_embed_dim=16, text_embed_dim=TINY_TEXT_DIM,
    ).eval()


def easyanimate_inputs(frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 2, text_len: int = 6,
                       inpaint: bool = False, timestep: float = 500.0, seed: int = 0) -> dict:
    """kwargs of an EasyAnimateTransformer3DModel forward: latent [B, C, F, H, W], text
    [B, L, text_dim], the timestep [B] (the pipeline batches both CFG branches: B = 2); with
    ``inpaint``, ``inpaint_latents`` [B, 1 + C, F, H, W] (mask, masked video) as the inpainting
    pipeline passes them, concatenated on the grid's channels by the model."""
    g = tiny_generator(seed)
    kwargs = dict(
        hidden_states=torch.randn(batch, TINY_LATENT_CHANNELS, frames, height, width, generator=g),
        timestep=torch.full((batch,), float(timestep)),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        return_dict=False,
    )
    if inpaint:
        mask = torch.zeros(batch, 1, frames, height, width)
        mask[:, :, 1:] = 1.0  # the first frame is given, the rest generated
        masked = torch.randn(batch, TINY_LATENT_CHANNELS, frames, height, width, generator=g)
        kwargs["inpaint_latents"] = torch.cat([mask, masked], 1)
    return kwargs


FAMILY = cogvideox_family(  # [text | video] on transformer_blocks.{i}.attn1, as CogVideoX
    "EasyAnimateTransformer3DModel",
    processor_cls=EasyAnimateSparseAttnProcessor,
    default_text_len=lambda config: PROMPT_TOKENS,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_easyanimate_transformer,
    tiny_inputs=lambda transformer: easyanimate_inputs(),
    name="EasyAnimate",
    pipelines=("EasyAnimatePipeline", "EasyAnimateInpaintPipeline", "EasyAnimateControlPipeline"),
    # The pipeline's default size on the Magvit VAE (4x frames, 8x space); 256 prompt tokens.
    standard=StandardSize("512 x 512, 49 frames", {"patch_size": 2}, (13, 64, 64)),
)
