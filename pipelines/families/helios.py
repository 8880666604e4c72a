"""Helios (``HeliosTransformer3DModel``): everything sparse-vdit knows about this family.

A Wan-like model: self-attention ``blocks.{i}.attn1`` (text only in the cross-attention ``attn2``,
which stays stock), q/k RMS-normed across heads, RoPE on interleaved pairs. Its joint sequence is

    [history long (4x) | history mid (2x) | history short (1x) | video]

The pipelines (``HeliosPipeline``, ``HeliosPyramidPipeline``) generate a long video chunk by chunk
and pass the latest generated latents as history: ``latents_history_short`` patchified like the
video (patch (t, h, w)), ``latents_history_mid`` and ``latents_history_long`` padded to (2, 4, 4) /
(4, 8, 8) and patchified by 2x / 4x the patch, each packed only with its ``indices_latents_history_*``.
The model concatenates each history segment *before* the video, so the video grid ends the sequence
(``original_context_length`` = the grid's tokens) and the history is a conditioning prefix
(``TokenLayout.prefix_len``) at other resolutions, computed densely like text.

With ``is_amplify_history`` the self-attention multiplies the history tokens' keys (after norm and
RoPE) by 1 + sigmoid(``history_key_scale``) x (``max_scale`` - 1), per head or one scalar: an
elementwise step before attention, reproduced here before ``attend``. The timestep is one per
sample ([B]); the model embeds the history at timestep 0 itself (``zero_history_timestep``).
Latent [B, C, T, H, W]; patch from ``config.patch_size``.

diffusers ships an attention-level ``_cp_plan`` (hidden states split at ``attn1``'s input); not run
here (README: no). Under it the stock processor reads the history length from its shard
(``hidden_states.shape[1] - original_context_length``); ours does the same, as stock.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from pipelines.families.record import StandardSize, triple_patch_size, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.families.wan import wan_family, wan_inputs
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "HeliosSparseAttnProcessor", "helios_inputs", "history_tokens", "tiny_helios_transformer"]

# The history segments as the model packs them, outermost first (it prepends short, then mid, then
# long): (latents argument, patch multiple of its embedder, the padding the model applies before
# patchifying (diffusers' ``pad_for_3d_conv``), None: none).
HISTORY = (
    ("latents_history_long", 4, (4, 8, 8)),
    ("latents_history_mid", 2, (2, 4, 4)),
    ("latents_history_short", 1, None),
)


# ---------------------------------------------------------------------------------- processor
def _amplify_history_keys(attn, key: torch.Tensor, history_len: int) -> torch.Tensor:
    """HeliosAttnProcessor's key amplification: key [B, S, H, D] with its first ``history_len``
    tokens multiplied by 1 + sigmoid(scale) x (max_scale - 1), scale [H] (per head) or [1]."""
    if history_len <= 0:
        return key
    scale = 1.0 + torch.sigmoid(attn.history_key_scale) * (attn.max_scale - 1.0)
    if attn.history_scale_mode == "per_head":
        scale = scale.view(1, 1, -1, 1)
    return torch.cat([key[:, :history_len] * scale, key[:, history_len:]], dim=1)


class HeliosSparseAttnProcessor(SparseAttnProcessorBase):
    """Helios self-attention (``attn1``): HeliosAttnProcessor's computation (projections, q/k RMS
    norm across heads, RoPE, the history keys' amplification) with the method's attention.

    Called positionally by ``HeliosAttention.forward``. hidden_states: [B, S, C], S = history
    tokens + video tokens (``original_context_length``, the grid, last); returns [B, S, C]. A
    cross-attention call (``encoder_hidden_states`` given: ``attn2``, installed by mistake) goes to
    the stock processor.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: torch.Tensor | None = None,
        original_context_length: int | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attn.is_cross_attention:
            stock = self.stock_processor(attn)
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, original_context_length)
        from diffusers.models.transformers.transformer_helios import _get_qkv_projections, apply_rotary_emb_transposed

        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query = apply_rotary_emb_transposed(query, rotary_emb)
            key = apply_rotary_emb_transposed(key, rotary_emb)
        if attn.is_amplify_history:
            # The history is the prefix the token layout reads (``_read_inputs``): the same count.
            key = _amplify_history_keys(attn, key, hidden_states.shape[1] - original_context_length)
        out = self.attend(query, key, value, attention_mask)  # the model passes no mask here; one would run dense
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


# ------------------------------------------------------------------------------- forward inputs
def history_tokens(latents: torch.Tensor | None, kernel: tuple[int, ...], pad: tuple[int, ...] | None) -> int:
    """Tokens of a history latent [B, C, T, H, W] after the model pads it to ``pad`` (None: no
    padding) and patchifies it with a ``kernel``-strided convolution (0 for None)."""
    if latents is None:
        return 0
    dims = latents.shape[2:]
    if pad is not None:
        dims = [-(-n // p) * p for n, p in zip(dims, pad)]
    return math.prod(n // k for n, k in zip(dims, kernel))


def _prefix_len(transformer, args: dict) -> int:
    patch = triple_patch_size(transformer.config)
    return sum(
        history_tokens(args.get(name), tuple(m * p for p in patch), pad)
        for name, m, pad in HISTORY
        if args.get(name.replace("latents_", "indices_latents_")) is not None  # packed only with its frame indices
    )


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    return ForwardInputs(**video_inputs(args["hidden_states"], args["timestep"], 2), text_len=None, text_valid_lens=None,
                         prefix_len=_prefix_len(transformer, args))


# ------------------------------------------------------------------------------- tiny test model
def tiny_helios_transformer(*, num_layers: int = 2, history_scale_mode: str = "per_head", seed: int = 0):
    """HeliosTransformer3DModel, 2 heads x 64, ``num_layers`` blocks, patch (1, 2, 2), multi-term
    memory patches, key amplification of the history on (``history_scale_mode``), random weights;
    the history key scales are drawn at random too (one per head differs from the other), where the
    model starts them all at 1."""
    from diffusers import HeliosTransformer3DModel

    torch.manual_seed(seed)
    model = HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM,
        in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, text_dim=TINY_TEXT_DIM, freq_dim=32,
        ffn_dim=64, num_layers=num_layers, rope_dim=(24, 20, 20), is_amplify_history=True,
        history_scale_mode=history_scale_mode,
    ).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn1.history_key_scale.normal_(0.0, 2.0)
    return model


def helios_inputs(frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 2, history=(4, 2, 2),
                  text_len: int = 6, timestep: float = 500.0, seed: int = 0) -> dict:
    """kwargs of a HeliosTransformer3DModel forward as ``HeliosPipeline`` makes them: latent
    [B, C, T, H, W], one timestep per sample [B], text [B, L, text_dim] (B = 2: both CFG branches
    in one batch), frame indices [1, n]; ``history`` = (long, mid, short) frames of history latents
    at the video's height and width, their indices before the video's (None: no history)."""
    kwargs = wan_inputs(frames, height, width, batch=batch, text_len=text_len, timestep=timestep, seed=seed)
    g = tiny_generator(seed + 1)
    at = 0
    for (name, _, _), n in zip(HISTORY, history or (0, 0, 0)):
        kwargs[name] = torch.randn(batch, TINY_LATENT_CHANNELS, n, height, width, generator=g) if n else None
        kwargs[name.replace("latents_", "indices_latents_")] = torch.arange(at, at + n).unsqueeze(0) if n else None
        at += n
    kwargs["indices_hidden_states"] = torch.arange(at, at + frames).unsqueeze(0)
    return kwargs


FAMILY = dataclasses.replace(
    wan_family(
        "HeliosTransformer3DModel",
        processor_cls=HeliosSparseAttnProcessor,
        tiny_transformer=tiny_helios_transformer,
        tiny_inputs=lambda transformer: helios_inputs(),
        name="Helios",
        pipelines=("HeliosPipeline", "HeliosPyramidPipeline"),
        # 384 x 640 (the pipelines' default), a 9-latent-frame (33-frame) chunk on the Wan VAE; history of
        # (16, 2, 1 + 1 first frame) latent frames: long 4 x 6 x 10, mid 1 x 12 x 20, short 2 x 24 x 40 tokens.
        standard=StandardSize(
            "384 x 640, 33-frame chunk + history", {"patch_size": (1, 2, 2)}, (9, 48, 80),
            prefix_len=4 * 6 * 10 + 1 * 12 * 20 + 2 * 24 * 40,
        ),
    ),
    read_inputs=_read_inputs,  # history latents before the grid: a conditioning prefix
)
