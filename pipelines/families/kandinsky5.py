"""Kandinsky 5 (``Kandinsky5Transformer3DModel``): everything sparse-vdit knows about this family.

Visual self-attention ``visual_transformer_blocks.{i}.self_attention`` over video tokens only (text
reaches the video through ``cross_attention``; the text encoder blocks' self-attention is text
only: both stay stock). Latent [B, T, H, W, C] (channels last; image-to-video: the image latent
and a mask are extra channels, on the grid); patch from ``config.patch_size``. Its own sparse
attention, ``attention_type="nabla"`` (NABLA), reorders the tokens into 8 x 8 tiles and computes a
block-sparse mask itself: that configuration is refused (load the model with
``attention_type="regular"``). No ``_cp_plan`` in diffusers 0.42.
"""

from __future__ import annotations

import torch

from pipelines.families.record import Family, StandardSize, config_value, triple_patch_size, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "Kandinsky5SparseAttnProcessor", "kandinsky5_inputs", "tiny_kandinsky5_transformer"]

NABLA = (
    "attention_type='nabla' runs Kandinsky 5's own block-sparse attention (NABLA) on tokens it reorders into "
    "8 x 8 tiles; load the model with attention_type='regular' to use sparse-vdit's methods instead"
)
TINY_POOLED_DIM = 16


def _kandinsky_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Kandinsky 5's RoPE (2 x 2 rotation matrices) on x [B, S, H, D], as its stock processor,
    whose result goes through bfloat16."""
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2).to(torch.float32)
    return (rope * pairs).sum(dim=-1).reshape(*x.shape).to(torch.bfloat16)


class Kandinsky5SparseAttnProcessor(SparseAttnProcessorBase):
    """Kandinsky 5 visual self-attention: q/k RMS norm per head (in float32), RoPE, the method's
    attention, ``out_layer``. hidden_states: [B, S, C]; returns [B, S, C]. A cross-attention call
    (installed on ``cross_attention`` by mistake) or NABLA's ``sparse_params`` go to the stock processor."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, rotary_emb=None, sparse_params=None):
        if encoder_hidden_states is not None or sparse_params is not None:
            return self.stock_processor(attn)(attn, hidden_states, encoder_hidden_states, rotary_emb, sparse_params)
        query, key, value = (proj(hidden_states).unflatten(-1, (attn.num_heads, -1))
                             for proj in (attn.to_query, attn.to_key, attn.to_value))
        query = attn.query_norm(query.float()).type_as(query)
        key = attn.key_norm(key.float()).type_as(key)
        if rotary_emb is not None:
            query = _kandinsky_rotary(query, rotary_emb).type_as(query)
            key = _kandinsky_rotary(key, rotary_emb).type_as(key)
        out = self.attend(query, key, value, None)
        return attn.out_layer(out.flatten(-2, -1))


def _unsupported_config(config) -> str | None:
    return NABLA if config_value(config, "attention_type", "regular") == "nabla" else None


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    if args.get("sparse_params") is not None:
        raise ValueError(f"this forward passes sparse_params: {NABLA}")
    inputs = video_inputs(args["hidden_states"], args["timestep"], 1, hw_dims=(2, 3))
    return ForwardInputs(**inputs, text_len=None, text_valid_lens=None)


# ------------------------------------------------------------------------------- tiny test model
def tiny_kandinsky5_transformer(*, num_layers: int = 2, visual_cond: bool = True, attention_type: str = "regular",
                                seed: int = 0):
    """Kandinsky5Transformer3DModel, 2 heads x 64, ``num_layers`` visual blocks and one text block,
    image-to-video channels when ``visual_cond``; random weights (the modulations, zero in a fresh
    model, made random too so the blocks do something)."""
    from diffusers import Kandinsky5Transformer3DModel

    torch.manual_seed(seed)
    model = Kandinsky5Transformer3DModel(
        in_visual_dim=TINY_LATENT_CHANNELS, in_text_dim=TINY_TEXT_DIM, in_text_dim2=TINY_POOLED_DIM, time_dim=32,
        out_visual_dim=TINY_LATENT_CHANNELS, patch_size=(1, 2, 2), model_dim=TINY_HEADS * TINY_HEAD_DIM, ff_dim=64,
        num_text_blocks=1, num_visual_blocks=num_layers, axes_dims=(16, 24, 24), visual_cond=visual_cond,
        attention_type=attention_type,
    ).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modulation" in name:
                param.normal_(0.0, 0.05)
    return model


def kandinsky5_inputs(frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 1, text_len: int = 6,
                      visual_cond: bool = True, timestep: float = 500.0, seed: int = 0):
    """kwargs of a Kandinsky5Transformer3DModel forward as Kandinsky5T2VPipeline makes them: latent
    [B, T, H, W, C] (with ``visual_cond``: latent, image latent on frame 0, mask), RoPE positions."""
    g = tiny_generator(seed)
    channels = 2 * TINY_LATENT_CHANNELS + 1 if visual_cond else TINY_LATENT_CHANNELS
    latent = torch.randn(batch, frames, height, width, channels, generator=g)
    if visual_cond:
        latent[:, 1:, :, :, TINY_LATENT_CHANNELS:] = 0.0  # the image latent and its mask only on frame 0
        latent[:, :1, :, :, -1] = 1.0
    return dict(
        hidden_states=latent,
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        timestep=torch.full((batch,), float(timestep)),
        pooled_projections=torch.randn(batch, TINY_POOLED_DIM, generator=g),
        visual_rope_pos=[torch.arange(frames), torch.arange(height // 2), torch.arange(width // 2)],
        text_rope_pos=torch.arange(text_len),
        scale_factor=(1.0, 1.0, 1.0),
        return_dict=True,  # its tuple output is the tensor itself; the output object indexes as [0]
    )


FAMILY = Family(
    class_name="Kandinsky5Transformer3DModel",
    processor_cls=Kandinsky5SparseAttnProcessor,
    patterns=(r"visual_transformer_blocks\.(\d+)\.self_attention",),
    text_position="none",
    patch_size=triple_patch_size,
    default_text_len=None,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_kandinsky5_transformer,
    tiny_inputs=lambda transformer: kandinsky5_inputs(visual_cond=transformer.config.visual_cond),
    name="Kandinsky 5 video",
    pipelines=("Kandinsky5T2VPipeline", "Kandinsky5I2VPipeline"),
    standard=StandardSize("512 x 768, 121 frames", {"patch_size": (1, 2, 2)}, (31, 64, 96)),
    unsupported_config=_unsupported_config,
)
