"""HunyuanVideo-Framepack (``HunyuanVideoFramepackTransformer3DModel``): everything sparse-vdit
knows about it.

HunyuanVideo's dual- and single-stream joint attention (``transformer_blocks.{i}.attn``, then
``single_transformer_blocks.{j}.attn``; HunyuanVideo's processor) over

    [history 4x | history 2x | clean latents | video | image | text]

The history latents (the 1x clean latents, and the 2x and 4x ones patchified by larger kernels)
are on no grid the video's modes describe: the token layout holds them as a conditioning prefix
(``TokenLayout.prefix_len``), computed densely like text. The SigLIP image tokens come before the
prompt's tokens, both after the video, as text; with one sample the model drops the padded text
(no mask), with several it masks it (key lengths). The token refiner stays stock. Latent
[B, C, T, H, W], T = the section's latent window; patch (``patch_size_t``, ``patch_size``,
``patch_size``). diffusers 0.42 gives this model no ``set_attn_processor`` and no
``_repeated_blocks``: ``apply_sparse_attention`` installs the processors module by module.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from pipelines.families import hunyuan_video
from pipelines.families.hunyuan_video import PIPELINE_TEXT_LEN, hunyuan_inputs
from pipelines.families.record import StandardSize, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "framepack_inputs", "history_tokens", "tiny_framepack_transformer"]

IMAGE_TOKENS = 729  # SigLIP image embeddings of the released checkpoints
HISTORY_KERNELS = {"latents_clean": (1, 2, 2), "latents_history_2x": (2, 4, 4), "latents_history_4x": (4, 8, 8)}
TINY_IMAGE_DIM = 16


def history_tokens(latents: torch.Tensor | None, kernel: tuple[int, int, int]) -> int:
    """Tokens of a history latent [B, C, T, H, W] after the model pads it to the kernel and patchifies."""
    if latents is None:
        return 0
    return math.prod(-(-n // k) for n, k in zip(latents.shape[2:], kernel))


def _prefix_len(transformer, args: dict) -> int:
    if getattr(transformer, "clean_x_embedder", None) is None:
        return 0
    return sum(
        history_tokens(args.get(name), kernel)
        for name, kernel in HISTORY_KERNELS.items()
        if args.get("indices_" + name) is not None  # the model packs a history only with its frame indices
    )


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    text, mask, image = args["encoder_hidden_states"], args.get("encoder_attention_mask"), args.get("image_embeds")
    n_image = 0 if image is None else image.shape[1]
    real = None if mask is None else tuple(int(n) + n_image for n in mask.sum(dim=1).tolist())
    padded = n_image + text.shape[1]
    if text.shape[0] == 1 and real is not None:
        text_len, valid = real[0], None  # one sample: the model drops its padded text
    else:
        text_len, valid = padded, (real if real is not None and any(n < padded for n in real) else None)
    return ForwardInputs(
        **video_inputs(args["hidden_states"], args["timestep"], 2), text_len=text_len, text_valid_lens=valid,
        prefix_len=_prefix_len(transformer, args),
    )


# ------------------------------------------------------------------------------- tiny test model
def tiny_framepack_transformer(*, num_layers: int = 1, num_single_layers: int = 1, seed: int = 0):
    """HunyuanVideoFramepackTransformer3DModel, 2 heads x 64, 1 dual + 1 single block, history and
    image embedders, random weights."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(seed)
    return HunyuanVideoFramepackTransformer3DModel(
        in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, num_attention_heads=TINY_HEADS,
        attention_head_dim=TINY_HEAD_DIM, num_layers=num_layers, num_single_layers=num_single_layers,
        num_refiner_layers=1, mlp_ratio=1.0, patch_size=2, patch_size_t=1, guidance_embeds=False,
        text_embed_dim=TINY_TEXT_DIM, pooled_projection_dim=16, rope_axes_dim=(16, 24, 24), has_image_proj=True,
        image_proj_dim=TINY_IMAGE_DIM, has_clean_x_embedder=True,
    ).eval()


def framepack_inputs(frames: int = 2, height: int = 8, width: int = 8, *, history=(2, 2, 4), image_tokens: int = 3,
                     text_lens=(5, 3), text_len: int = 6, timestep: float = 500.0, seed: int = 0):
    """kwargs of a HunyuanVideoFramepackTransformer3DModel forward: HunyuanVideo's (one sample per
    entry of ``text_lens``), image embeddings, frame indices, and history latents of ``history``
    = (clean, 2x, 4x) frames at the video's size (0: none)."""
    g = tiny_generator(seed + 1)
    kwargs = hunyuan_inputs(frames, height, width, text_lens=text_lens, text_len=text_len, timestep=timestep, seed=seed)
    batch = len(text_lens)
    start = sum(history)
    kwargs.update(
        image_embeds=torch.randn(batch, image_tokens, TINY_IMAGE_DIM, generator=g),
        indices_latents=torch.arange(start, start + frames),
    )
    at = 0
    for (name, _), n in zip(HISTORY_KERNELS.items(), history):
        if n:
            kwargs[name] = torch.randn(batch, TINY_LATENT_CHANNELS, n, height, width, generator=g)
            kwargs["indices_" + name] = torch.arange(at, at + n)
            at += n
    return kwargs


FAMILY = dataclasses.replace(
    hunyuan_video.FAMILY,
    class_name="HunyuanVideoFramepackTransformer3DModel",
    default_text_len=lambda config: IMAGE_TOKENS + PIPELINE_TEXT_LEN,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_framepack_transformer,
    tiny_inputs=lambda transformer: framepack_inputs(),
    name="HunyuanVideo-Framepack",
    pipelines=("HunyuanVideoFramepackPipeline",),
    # 720p, a 9-frame window; history: 1 + 2 clean frames, 2 frames at 2x, 16 at 4x (inverted anti-drifting).
    standard=StandardSize(
        "720p, 9-frame window + history", {"patch_size": 2, "patch_size_t": 1}, (9, 90, 160),
        prefix_len=3 * 45 * 80 + 1 * 23 * 40 + 4 * 12 * 20,
    ),
    cp_plan=None,
)
