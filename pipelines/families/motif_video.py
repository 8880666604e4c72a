"""Motif-Video (``MotifVideoTransformer3DModel``): everything sparse-vdit knows about this family.

HunyuanVideo's layout in three stages. Joint attention in ``transformer_blocks.{i}.attn`` (dual
stream, layers first) and in the encoder's ``single_transformer_blocks.{j}.attn`` (single stream,
after them) over [video | image | text]: hidden_states [B, Sv, C], encoder_hidden_states
[B, Si + St, C], the SigLIP image tokens (image-to-video; Si = 0 otherwise) before the prompt's,
which is padded to the pipeline's ``max_sequence_length`` (512). The forward turns
``encoder_attention_mask`` [B, St] into a key-padding mask [B, 1, 1, Sv + Si + St] (image tokens
always real), so sample b's real keys are the first ``Sv + Si + real_b``: key lengths, padding
last (a mask with holes is refused). RoPE on the video only; the processor is HunyuanVideo's.

The last ``num_decoder_layers`` single-stream blocks are a DDT decoder that attends
[decoder video | encoder output] (2 Sv tokens, RoPE on the first half, no text, no mask), not the
joint sequence of the token layout: they keep their stock processor (the record's
``stock_layers``), as do the text cross-attention modules (``cross_attn``) of the blocks that have
them. Motif-Video 2B has 12 dual + 16 encoder single + 8 decoder blocks: 28 of its 36
self-attentions are served; at 720p the decoder's 8 attend 4x the keys x queries of an encoder
layer, about half of the model's attention FLOPs, and stay dense.

Latent [B, C, T, H, W], C = latents | first-frame condition latents | condition mask (16 + 16 + 1;
all on the grid); patch (``patch_size_t``, ``patch_size``, ``patch_size``). No ``_cp_plan`` in
diffusers 0.42.
"""

from __future__ import annotations

import dataclasses

import torch

from pipelines.families import hunyuan_video
from pipelines.families.hunyuan_video import HunyuanVideoSparseAttnProcessor, hunyuan_inputs
from pipelines.families.record import StandardSize, config_value, prefix_text_lens, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "MotifVideoSparseAttnProcessor", "motif_inputs", "tiny_motif_transformer"]

PIPELINE_TEXT_LEN = 512  # MotifVideoPipeline's max_sequence_length: prompts are padded to it
TINY_IMAGE_DIM = 16


class MotifVideoSparseAttnProcessor(HunyuanVideoSparseAttnProcessor):
    """Motif-Video joint attention (``MotifVideoAttnProcessor2_0``'s signature): HunyuanVideo's
    dual-stream (``add_q_proj`` set) and single-stream computation, the same projections, norms,
    RoPE on the video and key-padding mask. hidden_states [B, Sv, C], encoder_hidden_states
    [B, St, C]; returns (video [B, Sv, C], text [B, St, C]). Without encoder_hidden_states stock
    projects the output through ``to_out`` and returns it alone (HunyuanVideo's leaves it raw)."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        hidden_states, text = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask,
                                               image_rotary_emb)
        if encoder_hidden_states is not None:
            return hidden_states, text
        if attn.to_out is not None:
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states


def _decoder_layers(config) -> list[str]:
    """The DDT decoder's attention modules: the last ``num_decoder_layers`` single-stream blocks."""
    single = int(config_value(config, "num_single_layers"))
    decoder = int(config_value(config, "num_decoder_layers") or 0)
    return [f"single_transformer_blocks.{i}.attn" for i in range(single - decoder, single)]


# ------------------------------------------------------------------------------- forward inputs
def _read_inputs(transformer, args: dict) -> ForwardInputs:
    text = args["encoder_hidden_states"]
    image = args.get("image_embeds")
    n_image = 0 if image is None else image.shape[1]
    mask = args.get("encoder_attention_mask")
    valid = prefix_text_lens(mask, text.shape[1], "Motif-Video's encoder_attention_mask")
    if valid is not None:  # the image tokens come first and are always real
        valid = tuple(n_image + n for n in valid)
    return ForwardInputs(**video_inputs(args["hidden_states"], args["timestep"], 2), text_len=n_image + text.shape[1],
                         text_valid_lens=valid)


# ------------------------------------------------------------------------------- tiny test model
def tiny_motif_transformer(*, num_layers: int = 1, num_single_layers: int = 1, num_decoder_layers: int = 1,
                           image: bool = False, seed: int = 0):
    """MotifVideoTransformer3DModel, 2 heads x 64, ``num_layers`` dual-stream blocks,
    ``num_single_layers`` encoder single-stream blocks (with the text cross-attention, as in
    Motif-Video 2B) and ``num_decoder_layers`` decoder blocks after them; input channels latent |
    condition latent | mask; ``image``: SigLIP-like image embeddings in; random weights."""
    from diffusers import MotifVideoTransformer3DModel

    torch.manual_seed(seed)
    return MotifVideoTransformer3DModel(
        in_channels=2 * TINY_LATENT_CHANNELS + 1,
        out_channels=TINY_LATENT_CHANNELS,
        num_attention_heads=TINY_HEADS,
        attention_head_dim=TINY_HEAD_DIM,
        num_layers=num_layers,
        num_single_layers=num_single_layers + num_decoder_layers,
        num_decoder_layers=num_decoder_layers,
        mlp_ratio=1.0,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=TINY_TEXT_DIM,
        image_embed_dim=TINY_IMAGE_DIM if image else None,
        rope_axes_dim=(16, 24, 24),
        enable_text_cross_attention_single=True,
    ).eval()


def motif_inputs(frames: int = 2, height: int = 8, width: int = 8, *, text_lens=(5, 3), text_len: int = 6,
                 image_tokens: int = 0, timestep: float = 500.0, seed: int = 0) -> dict:
    """kwargs of a MotifVideoTransformer3DModel forward, one sample per entry of ``text_lens`` (the
    pipeline batches both CFG branches; real tokens of a prompt padded to ``text_len``): latent
    [B, 2C + 1, F, H, W] = noise | condition | mask. Text-to-video: zero condition and mask, as the
    pipeline passes them; ``image_tokens``: image-to-video, the first frame's latent and mask 1 on
    frame 0, and ``image_embeds`` [B, image_tokens, image_dim]."""
    kwargs = hunyuan_inputs(frames, height, width, text_lens=text_lens, text_len=text_len, timestep=timestep, seed=seed)
    del kwargs["pooled_projections"]
    noise = kwargs["hidden_states"]
    condition, mask = torch.zeros_like(noise), torch.zeros_like(noise[:, :1])
    if image_tokens:
        g = tiny_generator(seed + 1)
        condition[:, :, 0] = torch.randn(condition[:, :, 0].shape, generator=g)
        mask[:, :, 0] = 1.0
        kwargs["image_embeds"] = torch.randn(noise.shape[0], image_tokens, TINY_IMAGE_DIM, generator=g)
    kwargs["hidden_states"] = torch.cat([noise, condition, mask], dim=1)
    return kwargs


FAMILY = dataclasses.replace(  # HunyuanVideo's patterns (dual, then single-stream blocks), text after, patch
    hunyuan_video.FAMILY,
    class_name="MotifVideoTransformer3DModel",
    processor_cls=MotifVideoSparseAttnProcessor,
    default_text_len=lambda config: PIPELINE_TEXT_LEN,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_motif_transformer,
    tiny_inputs=lambda transformer: motif_inputs(),
    name="Motif-Video",
    pipelines=("MotifVideoPipeline", "MotifVideoImage2VideoPipeline"),
    # The pipelines' default size on the Wan 2.1 VAE (4x frames, 8x space); 512 prompt tokens.
    standard=StandardSize("736 x 1280, 121 frames", {"patch_size": 2, "patch_size_t": 1}, (31, 92, 160)),
    cp_plan=None,  # not HunyuanVideo's: the decoder's input is copied before transformer_blocks.0, where it splits
    stock_layers=_decoder_layers,
)
