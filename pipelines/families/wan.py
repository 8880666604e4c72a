"""Wan 2.1 / 2.2 (``WanTransformer3DModel``): everything sparse-vdit knows about this family.

Self-attention ``blocks.{i}.attn1`` over video tokens only (cross-attention ``attn2`` stays stock);
latent [B, C, T, H, W]; patch (t, h, w) from ``config.patch_size``; RoPE on interleaved pairs.
Image-to-video (Wan 2.1 I2V's image tokens, Wan 2.2 TI2V's per-token timesteps) changes only the
cross-attention and the timesteps, never the self-attention's tokens.

``wan_family`` builds the record of a Wan variant (Wan-VACE, SkyReels-V2, Wan-Animate,
ChronoEdit): the same processor and forward reader on another class and other attention modules.
"""

from __future__ import annotations

import torch

from pipelines.families.record import Family, StandardSize, triple_patch_size, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "WanSparseAttnProcessor", "tiny_wan_like", "tiny_wan_transformer", "wan_family", "wan_inputs"]


# ---------------------------------------------------------------------------------- processor
def _wan_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on interleaved pairs, as in diffusers' WanAttnProcessor. hidden_states: [B, S, H, D]."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class WanSparseAttnProcessor(SparseAttnProcessorBase):
    """Wan 2.1 / 2.2 self-attention (``attn1``): stock projections, across-heads RMS norm, RoPE.

    Called positionally by ``WanAttention.forward`` (and the same-shaped attention modules of the
    Wan variants). hidden_states: [B, S, C] video tokens, S = frames x rows x cols; returns
    [B, S, C]. A cross-attention call (``encoder_hidden_states`` given, i.e. installed on ``attn2``
    by mistake) is handed to the module's stock processor. A self-attention mask (SkyReels-V2's
    frame-block causal mask) makes the call dense, as stock.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return self.stock_processor(attn)(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _wan_rotary(query, *rotary_emb)
            key = _wan_rotary(key, *rotary_emb)
        hidden_states = self.attend(query, key, value, attention_mask)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


# ------------------------------------------------------------------------------- forward inputs
def _read_inputs(transformer, args: dict) -> ForwardInputs:
    return ForwardInputs(**video_inputs(args["hidden_states"], args["timestep"], 2), text_len=None, text_valid_lens=None)


# ------------------------------------------------------------------------------- tiny test model
def tiny_wan_like(cls, *, num_layers: int = 2, in_channels: int = TINY_LATENT_CHANNELS, seed: int = 0, **config):
    """A tiny random-weight model of Wan or a Wan variant ``cls``: 2 heads x 64, patch (1, 2, 2),
    ``num_layers`` blocks; ``config``: the variant's own keys (or overrides)."""
    torch.manual_seed(seed)
    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM, in_channels=in_channels,
        out_channels=TINY_LATENT_CHANNELS, text_dim=TINY_TEXT_DIM,
        freq_dim=32, ffn_dim=64, num_layers=num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    ) | config
    return cls(**config).eval()


def tiny_wan_transformer(*, num_layers: int = 2, in_channels: int = TINY_LATENT_CHANNELS, seed: int = 0):
    """WanTransformer3DModel, 2 heads x 64, ``num_layers`` blocks, random weights."""
    from diffusers import WanTransformer3DModel

    return tiny_wan_like(WanTransformer3DModel, num_layers=num_layers, in_channels=in_channels, out_channels=in_channels,
                         seed=seed)


def wan_inputs(frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 1, text_len: int = 6, timestep: float = 500.0, seed: int = 0):
    """kwargs of a WanTransformer3DModel forward: latent [B, C, T, H, W], text [B, L, text_dim]."""
    g = tiny_generator(seed)
    return dict(
        hidden_states=torch.randn(batch, TINY_LATENT_CHANNELS, frames, height, width, generator=g),
        timestep=torch.full((batch,), float(timestep)),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        return_dict=False,
    )


def wan_family(class_name: str, *, patterns: tuple[str, ...] = (r"blocks\.(\d+)\.attn1",),
               processor_cls: type[SparseAttnProcessorBase] = WanSparseAttnProcessor, **fields) -> Family:
    """The record of Wan, a Wan variant or a model read the same way (video-only self-attention):
    ``processor_cls`` on ``patterns``, no text in self-attention, patch from ``config.patch_size``,
    the latent [B, C, T, H, W] of the forward's ``hidden_states``; ``fields``: the rest of the
    record (tiny model, name, pipelines, ...)."""
    return Family(
        class_name=class_name,
        processor_cls=processor_cls,
        patterns=patterns,
        text_position="none",
        patch_size=triple_patch_size,
        default_text_len=None,
        read_inputs=_read_inputs,
        **fields,
    )


def wan_standard(label: str = "720p, 81 frames", latent: tuple[int, int, int] = (21, 90, 160)) -> StandardSize:
    """A Wan-VAE latent (4x temporal, 8x spatial) at patch (1, 2, 2): 720p 81 frames by default."""
    return StandardSize(label, {"patch_size": (1, 2, 2)}, latent)


FAMILY = wan_family(
    "WanTransformer3DModel",
    tiny_transformer=tiny_wan_transformer,
    tiny_inputs=lambda transformer: wan_inputs(),
    name="Wan 2.1 / 2.2",
    pipelines=("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline"),
    standard=wan_standard(),
)
