"""LTX-Video (``LTXVideoTransformer3DModel``): everything sparse-vdit knows about this family.

Self-attention ``transformer_blocks.{i}.attn1`` over video tokens only (text in the cross-attention
``attn2``, which stays stock); q/k normed across heads and rotated (RoPE on interleaved pairs)
before the head split. The pipeline packs the latent: the transformer takes tokens [B, S, C] and
the latent grid as ``num_frames``, ``height``, ``width`` (patch (``patch_size_t``, ``patch_size``,
``patch_size``), 1 x 1 x 1 in the released models). Image-to-video: per-token timesteps [B, S]
(0 on the conditioning frame). ``LTXConditionPipeline`` passes no grid, only ``video_coords``, and
puts extra conditioning latents (whole frames of the grid's size, at frame coordinates >= 1)
before the video: the grid starts at the first token of frame coordinate 0, and the extra tokens
are a conditioning prefix (``TokenLayout.prefix_len``), computed densely. diffusers' ``_cp_plan``
splits the tokens at the transformer's input.

``LTXSelfAttention`` is the attention step LTX-2 shares (``pipelines.families.ltx2``).
"""

from __future__ import annotations

import torch

from pipelines.families.record import Family, StandardSize, square_patch_size, token_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "LTXSelfAttention", "LTXVideoSparseAttnProcessor", "grid_of_coords", "ltx_family", "ltx_inputs",
           "packed_grid_inputs", "tiny_ltx_transformer"]

VAE_TEMPORAL, VAE_SPATIAL = 8, 32  # LTX-Video's VAE compression
PIPELINE_FRAME_RATE = 25


# ---------------------------------------------------------------------------------- processor
def _interleaved_rotary(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """LTX's RoPE on interleaved pairs of x [B, S, H * D], as diffusers' ``apply_rotary_emb`` there."""
    cos, sin = freqs
    x_real, x_imag = x.unflatten(2, (-1, 2)).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(2)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


class LTXSelfAttention(SparseAttnProcessorBase):
    """The self-attention step of LTX-Video and LTX-2: projections, q/k norm across heads, RoPE on
    [B, S, H * D], heads split, the method's attention; the caller projects out."""

    def self_attention(self, attn, hidden_states, attention_mask, query_rotary_emb, key_rotary_emb, rotary, value=None):
        """hidden_states [B, S, C] -> attention output [B, S, H * D] (before ``to_out``); ``value``:
        the value projection when the caller already made it."""
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states) if value is None else value
        if query_rotary_emb is not None:
            query = rotary(query, query_rotary_emb)
            key = rotary(key, query_rotary_emb if key_rotary_emb is None else key_rotary_emb)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        out = self.attend(query, key, value, attention_mask)
        return out.flatten(2, 3).to(query.dtype)


class LTXVideoSparseAttnProcessor(LTXSelfAttention):
    """LTX-Video self-attention (``attn1``). hidden_states: [B, S, C] video tokens; returns
    [B, S, C]. A cross-attention call (installed on ``attn2`` by mistake) goes to the stock processor."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return self.stock_processor(attn)(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        out = self.self_attention(attn, hidden_states, attention_mask, image_rotary_emb, None, _interleaved_rotary)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


# ------------------------------------------------------------------------------- forward inputs
def grid_of_coords(coords: torch.Tensor) -> tuple[int, int, int, int]:
    """(first grid token, frames, rows, cols) of LTXConditionPipeline's ``video_coords`` [B, 3, S]
    (frame, y, x of every token): the grid starts at the first token of frame coordinate 0 (extra
    conditioning latents sit at frame coordinates >= 1) and ends the sequence. Raises ``ValueError``
    when the coordinates do not describe such a grid."""
    frame, y = coords[0, 0], coords[0, 1]
    first = frame == 0
    seq = frame.numel()
    frame_len = int(first.sum())
    cols = int((first & (y == 0)).sum())
    start = int(first.nonzero()[0]) if frame_len else seq
    grid = seq - start
    if not frame_len or not cols or frame_len % cols or grid % frame_len or not bool(first[start : start + frame_len].all()):
        raise ValueError(
            "cannot read the latent grid from video_coords (no frame at coordinate 0 ending the sequence in whole "
            "frames): pass num_frames, height and width to the LTX transformer"
        )
    return start, grid // frame_len, frame_len // cols, cols


def packed_grid_inputs(transformer, args: dict, extra: str) -> ForwardInputs:
    """ForwardInputs of a forward on packed tokens [B, S, C] whose latent grid is ``num_frames``,
    ``height``, ``width`` (LTX-Video, LTX-2): tokens beyond the grid are conditioning tokens, before
    it (``extra`` "prefix") or after it ("suffix")."""
    hidden_states = args["hidden_states"]
    grid = tuple(args.get(k) for k in ("num_frames", "height", "width"))
    pt, ph, pw = square_patch_size(transformer.config)
    seq = hidden_states.shape[1]
    if None in grid:
        coords = args.get("video_coords")
        if coords is None or coords.dim() != 3 or extra != "prefix":
            raise ValueError(
                f"{type(transformer).__name__} was called without num_frames, height and width: sparse-vdit reads the "
                "latent grid from them (the diffusers pipelines pass them); pass them with the tokens"
            )
        start, frames, rows, cols = grid_of_coords(coords)
        grid = (frames * pt, rows * ph, cols * pw)
    tokens = (grid[0] // pt) * (grid[1] // ph) * (grid[2] // pw)
    if tokens > seq:
        raise ValueError(
            f"num_frames, height and width ({', '.join(map(str, grid))}) describe {tokens} tokens at patch "
            f"{(pt, ph, pw)}, but hidden_states holds {seq}: pass the latent grid of these tokens"
        )
    where = {"prefix_len" if extra == "prefix" else "suffix_len": seq - tokens}
    return ForwardInputs(**token_inputs(hidden_states, args["timestep"], grid), text_len=None, text_valid_lens=None, **where)


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    return packed_grid_inputs(transformer, args, "prefix")


# ------------------------------------------------------------------------------- tiny test model
def tiny_ltx_transformer(*, num_layers: int = 2, seed: int = 0):
    """LTXVideoTransformer3DModel, 2 heads x 64, ``num_layers`` blocks, patch 1, random weights."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(
        in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, patch_size=1, patch_size_t=1,
        num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM, cross_attention_dim=TINY_HEADS * TINY_HEAD_DIM,
        num_layers=num_layers, caption_channels=TINY_TEXT_DIM,
    ).eval()


def ltx_inputs(frames: int = 2, height: int = 4, width: int = 4, *, batch: int = 1, text_len: int = 6,
               timestep: float = 500.0, condition_frames: int = 0, seed: int = 0):
    """kwargs of an LTXVideoTransformer3DModel forward as LTXPipeline makes them: packed tokens of a
    ``frames`` x ``height`` x ``width`` latent, the grid, RoPE scale, a padded prompt;
    ``condition_frames``: as LTXImageToVideoPipeline, per-token timesteps 0 on the first frames."""
    g = tiny_generator(seed)
    tokens = frames * height * width
    t = torch.full((batch, tokens), float(timestep))
    t[:, : condition_frames * height * width] = 0.0
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[:, text_len // 2 + 1 :] = 0
    return dict(
        hidden_states=torch.randn(batch, tokens, TINY_LATENT_CHANNELS, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        timestep=t if condition_frames else t[:, 0],
        encoder_attention_mask=mask,
        num_frames=frames,
        height=height,
        width=width,
        rope_interpolation_scale=(VAE_TEMPORAL / PIPELINE_FRAME_RATE, VAE_SPATIAL, VAE_SPATIAL),
        return_dict=False,
    )


def ltx_family(class_name: str, **fields) -> Family:
    """The record of LTX-Video or LTX-2: the self-attention ``transformer_blocks.{i}.attn1`` over
    video tokens, no text in it, patch (``patch_size_t``, ``patch_size``, ``patch_size``); ``fields``:
    the rest (processor, forward reader, tiny model, ...)."""
    return Family(
        class_name=class_name,
        patterns=(r"transformer_blocks\.(\d+)\.attn1",),
        text_position="none",
        patch_size=square_patch_size,
        default_text_len=None,
        **fields,
    )


FAMILY = ltx_family(
    "LTXVideoTransformer3DModel",
    processor_cls=LTXVideoSparseAttnProcessor,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_ltx_transformer,
    tiny_inputs=lambda transformer: ltx_inputs(),
    name="LTX-Video",
    pipelines=("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline", "LTXI2VLongMultiPromptPipeline"),
    standard=StandardSize("512 x 704, 161 frames", {"patch_size": 1, "patch_size_t": 1}, (21, 16, 22)),
)
