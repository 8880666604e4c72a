"""MiniMax-H3 (``MiniMaxH3Transformer3DModel``): the self-attention of its blocks over one packed sequence.

The model runs one stack of blocks over **one packed sequence** of text, conditioning, audio and video
rows, each placed by index (``text_indices``, ``video_indices``, ``audio_indices``), with a (t, h, w)
rotary coordinate per row (``position_ids``) and a modality tag per row (``token_tags``, for AdaLN
only). Every block's ``attn`` is plain softmax self-attention over all rows (no mask, no
cross-attention, RoPE over the leading channels of each head); the text refiner's attention
(``token_refiner.refiner_blocks.{i}.attn``, text only) stays stock.

Its pipeline (``MiniMaxH3ModularPipeline``, modular only) packs

    [text | keyframe conditions or references | target audio | target video]

(``MiniMaxH3PrepareLayoutStep.build_packed_sequence``, ``MiniMaxH3Ref2VAPrepareLayoutStep``): the
generated video rows come last, frame-major then row-major, with one t per frame (rising, on a
non-uniform clock) and the frame's (h, w) raster. That run of rows is the video token grid; every
row before it (text, conditioning frames at their own time and resolution, audio) is a prefix and
any row after it a suffix (``TokenLayout.prefix_len`` / ``suffix_len``), computed densely like text.
The grid is read at every forward from ``video_indices`` and ``position_ids``: the last contiguous
run of video rows in the sequence, which must hold whole frames in raster order (a packing that does
not is refused with what to do). The batch axis replicates one packing (the model's contract), so
every sample has the same layout. The sequence carries no padding.

Timesteps are ``t = 1 - sigma`` in [0, 1], rising to 1 (clean) along a generation
(``MiniMaxH3Scheduler``), one per distinct noise level, addressed per row by ``timestep_indices``:
the record's ``clean_timestep`` makes the step tracker count steps on the grid rows' noise level
``1 - t``, for the forward and the scheduler's schedule alike. diffusers' ``_cp_plan`` splits the
packed sequence at ``transformer_blocks.0`` (and the per-row RoPE, AdaLN and output indices with it).
"""

from __future__ import annotations

import torch

from pipelines.families.record import Family, StandardSize, token_inputs, triple_patch_size
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "MiniMaxH3SparseAttnProcessor", "minimax_h3_inputs", "packed_grid", "tiny_minimax_h3_transformer"]

CLEAN_TIMESTEP = 1.0  # t = 1 - sigma: 1 is clean data
PACKING = (
    "sparse-vdit serves MiniMaxH3Transformer3DModel when the generated video rows of its packed sequence form one "
    "video token grid: the last contiguous run of video_indices (by sequence position) must hold whole frames in "
    "raster order, i.e. position_ids with one t per frame, rising from frame to frame, and the same (h, w) raster in "
    "every frame, h rising row by row and w column by column, as MiniMaxH3ModularPipeline packs them ([text | "
    "conditioning | audio | video]). "
)
PACKING_FIX = (
    ": pack the generated video rows that way (conditioning video rows before them, apart), or run this model with "
    "its stock attention (handle.remove())"
)


# ---------------------------------------------------------------------------------- processor
class MiniMaxH3SparseAttnProcessor(SparseAttnProcessorBase):
    """MiniMax-H3 block self-attention (``transformer_blocks.{i}.attn``): MiniMaxH3AttnProcessor's
    computation (projections, fused or not, per-head q/k RMS norm, RoPE on each head's leading
    channels) with the method's attention. Called positionally by ``MiniMaxH3Attention.forward``.
    hidden_states: [B, S, C], the whole packed sequence; returns [B, S, C]."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from diffusers.models.transformers.transformer_minimax_h3 import _apply_rotary_emb

        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key, value = (x.unflatten(-1, (attn.heads, -1)) for x in (query, key, value))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)
        out = self.attend(query, key, value, attention_mask)  # the model passes no mask; one would run dense
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


# ------------------------------------------------------------------------------- forward inputs
def packed_grid(position_ids: torch.Tensor, video_indices: torch.Tensor) -> tuple[int, int, int, int]:
    """(start, frames, rows, cols) of the video token grid of a packed sequence: the last contiguous
    run of ``video_indices`` (positions in the sequence, any order), whose ``position_ids`` [S, 3]
    (t, h, w) must form whole frames in raster order. Raises ``ValueError`` saying what to do
    otherwise."""
    video = torch.sort(video_indices.detach().reshape(-1).cpu()).values
    if video.numel() == 0:
        raise ValueError(PACKING + "This forward has no video rows" + PACKING_FIX)
    breaks = torch.nonzero(video[1:] != video[:-1] + 1).flatten()
    first = int(breaks[-1]) + 1 if breaks.numel() else 0
    start, count = int(video[first]), video.numel() - first
    t, h, w = position_ids.detach()[start:start + count].cpu().unbind(-1)
    frame_len = _leading_run(t)
    cols = _leading_run(h[:frame_len])
    if count % frame_len or frame_len % cols:
        raise ValueError(
            PACKING + f"This forward's last run of video rows ({count} rows from row {start}) does not split into "
            f"frames of {frame_len} rows (one t each) of rows of {cols} (one h each)" + PACKING_FIX
        )
    frames, rows = count // frame_len, frame_len // cols
    t, h, w = (x.reshape(frames, rows, cols) for x in (t, h, w))
    problems = [
        what for what, bad in (
            ("t is not one value per frame", (t != t[:, :1, :1]).any()),
            ("the frames' (h, w) rasters differ", (h != h[:1]).any() or (w != w[:1]).any()),
            ("h is not one value per row", (h != h[:, :, :1]).any()),
            ("w is not one value per column", (w != w[:, :1]).any()),
            ("t does not rise from frame to frame", (t[1:, 0, 0] <= t[:-1, 0, 0]).any()),
            ("h does not rise row by row", (h[0, 1:, 0] <= h[0, :-1, 0]).any()),
            ("w does not rise column by column", (w[0, 0, 1:] <= w[0, 0, :-1]).any()),
        ) if bool(bad)
    ]
    if problems:
        raise ValueError(
            PACKING + f"In this forward's last run of video rows ({count} rows from row {start}, read as {frames} x "
            f"{rows} x {cols}) " + "; ".join(problems) + PACKING_FIX
        )
    return start, frames, rows, cols


def _leading_run(values: torch.Tensor) -> int:
    """How many leading entries equal the first."""
    differ = torch.nonzero(values != values[0]).flatten()
    return int(differ[0]) if differ.numel() else values.numel()


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    from diffusers.models.modeling_utils import get_parameter_dtype

    position_ids = args["position_ids"]
    start, frames, rows, cols = packed_grid(position_ids, args["video_indices"])
    pt, ph, pw = triple_patch_size(transformer.config)
    grid_rows = args["timestep_indices"][start:start + frames * rows * cols]
    inputs = token_inputs(args["hidden_states"], args["timestep"][grid_rows], (frames * pt, rows * ph, cols * pw))
    # The packed sequence takes the text stream's dtype (the model's own rule); the video latents
    # may come in float32 for the float32 patch projection of the released checkpoint.
    inputs["dtype"] = get_parameter_dtype(transformer.context_embedder)
    end = start + frames * rows * cols
    return ForwardInputs(**inputs, text_len=None, text_valid_lens=None, prefix_len=start,
                         suffix_len=position_ids.shape[0] - end)


# ------------------------------------------------------------------------------- tiny test model
TINY_AUDIO_CHANNELS = 8  # of an audio latent row (the released model: 32)
REFERENCE_LATENT = (4, 6)  # (height, width) of a tiny ref2va reference's latent frames


def tiny_minimax_h3_transformer(*, num_layers: int = 2, latent_channels: int = TINY_LATENT_CHANNELS,
                                audio_channels: int = TINY_AUDIO_CHANNELS, seed: int = 0):
    """MiniMaxH3Transformer3DModel, 2 heads x 64 (48 channels each rotated: 8 frequencies per
    axis), ``num_layers`` blocks, one text refiner block, patch (1, 2, 2), random weights; video and
    audio latents of ``latent_channels`` / ``audio_channels`` (the pipeline's: 24 / 32)."""
    from diffusers import MiniMaxH3Transformer3DModel

    torch.manual_seed(seed)
    return MiniMaxH3Transformer3DModel(
        num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM, hidden_size=64, num_layers=num_layers,
        num_refiner_layers=1, ffn_dim=64, in_channels=latent_channels, audio_in_channels=audio_channels,
        patch_size=(1, 2, 2), text_dim=TINY_TEXT_DIM, freq_dim=32, time_embed_hidden_dim=64, time_embed_dim=32,
        rope_freq_dim=8,
    ).eval()


def _shifted(sigma: float, shift: float) -> float:
    """MiniMaxH3Scheduler's sigma shift."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def minimax_h3_inputs(frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 1, text_len: int = 6,
                      audio_latents: int = 5, keyframes: tuple[str, ...] = (), references: list | None = None,
                      timestep: float = 500.0, seed: int = 0) -> dict:
    """kwargs of a MiniMaxH3Transformer3DModel forward as MiniMaxH3ModularPipeline makes them, its
    layout and row timesteps built by the pipeline's own steps: a ``frames`` x ``height`` x
    ``width`` latent (before patchify) and ``audio_latents`` stereo audio latents after ``text_len``
    text rows; ``keyframes`` ("first" / "last", fl2va): keyframe conditions of the video's size before
    the audio, held at t = 0.999, with a keyframe's vision rows in the text tagged video, as the
    pipeline tags them; ``references`` (ref2va: ``MiniMaxH3ImageReference`` / ``VideoReference`` /
    ``AudioReference``): [text | references | audio | video], each image reference one 4 x 6 latent
    frame (at its own resolution, as the pipeline encodes references), each video reference 2 such
    frames, each soundtrack 3 stereo latents.
    ``timestep``: the noise level on a 1000 scale, shifted as the pipeline's video (12) and audio
    (3) schedulers shift it. The batch replicates one packing (the model's contract)."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import (
        MiniMaxH3PrepareLayoutStep,
        MiniMaxH3Ref2VAPrepareLayoutStep,
        MiniMaxH3SetTimestepsStep,
    )
    from diffusers.modular_pipelines.minimax_h3.modular_pipeline import (
        MINIMAX_H3_AUDIO_CHANNELS as CHANNELS,
        MINIMAX_H3_AUDIO_TAG as AUDIO,
        MINIMAX_H3_TEXT_TAG as TEXT,
        MINIMAX_H3_VIDEO_TAG as VIDEO,
    )

    g = tiny_generator(seed)
    patch = (1, 2, 2)
    text_tags = torch.full((text_len,), TEXT, dtype=torch.long)
    if keyframes or references:
        text_tags[1:3] = VIDEO  # a vision block in the conditioner's presentation
    if references is None:
        packed = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
            text_tags, frames, height, width, audio_latents, patch, CHANNELS, AUDIO, VIDEO, tuple(keyframes))
    else:
        condition = [torch.zeros(1, TINY_LATENT_CHANNELS, 2 if r.kind == "video" else 1, *REFERENCE_LATENT)
                     for r in references if r.kind != "audio"]
        audio = [torch.zeros(3 * CHANNELS, TINY_AUDIO_CHANNELS) for r in references if r.has_audio]
        packed = MiniMaxH3Ref2VAPrepareLayoutStep.build_ref2va_packed_sequence(
            text_tags, references, condition, audio, frames, height, width, audio_latents, patch, CHANNELS, AUDIO,
            VIDEO)
    position_ids, token_tags, video_indices, audio_indices, text_indices, condition_video, condition_audio = packed
    sigma = timestep / 1000.0
    timesteps, timestep_indices = MiniMaxH3SetTimestepsStep.build_row_timesteps(
        video_indices, audio_indices, condition_video, condition_audio, text_len,
        1.0 - _shifted(sigma, 12.0), 1.0 - _shifted(sigma, 3.0), max(1.0 - _shifted(sigma, 12.0), 0.999), 1.0,
    )
    return dict(
        hidden_states=torch.randn(batch, video_indices.numel(), TINY_LATENT_CHANNELS * 4, generator=g),
        audio_hidden_states=torch.randn(batch, audio_indices.numel(), TINY_AUDIO_CHANNELS, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        timestep=timesteps,
        timestep_indices=timestep_indices,
        token_tags=token_tags,
        position_ids=position_ids,
        video_indices=video_indices,
        audio_indices=audio_indices,
        text_indices=text_indices,
        return_dict=False,
    )


FAMILY = Family(
    class_name="MiniMaxH3Transformer3DModel",
    processor_cls=MiniMaxH3SparseAttnProcessor,
    patterns=(r"transformer_blocks\.(\d+)\.attn",),  # not token_refiner.refiner_blocks.{i}.attn (text only)
    text_position="none",  # the text rows are a prefix of the grid with the conditioning and audio rows
    patch_size=triple_patch_size,
    default_text_len=None,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_minimax_h3_transformer,
    tiny_inputs=lambda transformer: minimax_h3_inputs(),
    name="MiniMax-H3 (video and audio in one sequence)",
    pipelines=("MiniMaxH3ModularPipeline",),
    # The pipeline's default: 16:9 at 768 x 1344, 124 frames (17 n + 5) on its 16x VAE: 37 x 48 x 84
    # latents, 37 x 24 x 42 tokens; 207 stereo audio latents (40 per second): 414 rows before the
    # grid, plus the prompt's rows (its length varies) and, for fl2va, 1,008 rows per keyframe.
    standard=StandardSize("768 x 1344, 124 frames; audio", {"patch_size": (1, 2, 2)}, (37, 48, 84), prefix_len=414),
    clean_timestep=CLEAN_TIMESTEP,
)
