"""The model families sparse-vdit adapts: one record per family, one file per record.

A new family is one new file plus one registry line: write ``pipelines/families/<family>.py``
holding its processor (a ``SparseAttnProcessorBase`` subclass with the stock processor's
signature) and a ``FAMILY = Family(...)`` record with these fields, then add ``<family>.FAMILY``
to ``FAMILIES`` below:

    class_name        the diffusers transformer class (its subclasses are served too)
    processor_cls     the processor of its joint self-attention
    patterns          the attention-module regexes, in layer order
    text_position     "none", "before" or "after" the video in the joint sequence
    patch_size        config -> (t, h, w)
    default_text_len  config -> text tokens when a caller does not say (None: no text)
    read_inputs       (transformer, forward arguments by name) -> ForwardInputs: latent grid,
                      timestep, text length and per-prompt real text length (padded text must
                      come last in the joint sequence)
    tiny_transformer  () -> a tiny random-weight model; tiny_inputs: (model) -> forward kwargs

A record may also say the model's ``name``, its ``pipelines``, its ``standard`` size (README),
an ``unsupported_config`` (a configuration of the class it cannot serve, with the reason), a
``cp_plan`` sparse-vdit provides where diffusers ships none, ``stock_layers`` (modules its
patterns match that attend another sequence and keep their stock processor) and ``clean_timestep``
(a timestep that rises toward clean data, MiniMax-H3's). A model whose read
differs (a grid passed as arguments, conditioning tokens off the grid) says so through
``read_inputs``'s ``ForwardInputs`` (``prefix_len`` / ``suffix_len``), never through a special
case elsewhere.

Video transformers diffusers ships that no record serves are in ``UNSUPPORTED`` with the reason:
either they cannot be served (no softmax attention over a video token grid) or no record serves
them yet. The error for an unsupported class names the supported ones and, for a listed one, why.

Here: the registry, ``family_of``, ``model_info`` and ``token_layout_of``.
"""

from __future__ import annotations

from typing import Any

import torch

from pipelines.families import (
    allegro,
    anyflow,
    chronoedit,
    cogvideox,
    consisid,
    cosmos,
    easyanimate,
    helios,
    hunyuan_video,
    hunyuan_video15,
    hunyuan_video_framepack,
    kandinsky5,
    kandinsky6,
    ltx,
    ltx2,
    minimax_h3,
    mochi,
    motif_video,
    skyreels_v2,
    wan,
    wan_animate,
    wan_vace,
)
from pipelines.families.record import Family, config_value
from sparse_vdit.protocol import ModelInfo
from sparse_vdit.token_layout import TokenLayout

__all__ = ["Family", "FAMILIES", "SUPPORTED_TRANSFORMERS", "UNSUPPORTED", "family_of", "model_info", "token_layout_of"]

FAMILIES: dict[str, Family] = {
    family.class_name: family
    for family in (
        wan.FAMILY,
        hunyuan_video.FAMILY,
        cogvideox.FAMILY,
        wan_vace.FAMILY,
        skyreels_v2.FAMILY,
        wan_animate.FAMILY,
        hunyuan_video15.FAMILY,
        hunyuan_video_framepack.FAMILY,
        ltx.FAMILY,
        ltx2.FAMILY,
        mochi.FAMILY,
        kandinsky5.FAMILY,
        consisid.FAMILY,
        chronoedit.FAMILY,
        cosmos.FAMILY,
        easyanimate.FAMILY,
        anyflow.FAMILY,
        kandinsky6.FAMILY,
        motif_video.FAMILY,
        helios.FAMILY,
        allegro.FAMILY,
        minimax_h3.FAMILY,
    )
}
SUPPORTED_TRANSFORMERS: tuple[str, ...] = tuple(FAMILIES)

CANNOT = "cannot be served: "
# The video transformers of diffusers 0.42 that no record serves, and why (README: "Supported models").
UNSUPPORTED: dict[str, str] = {
    "SanaVideoTransformer3DModel": CANNOT + "its self-attention is linear attention (ReLU kernels), which forms no "
    "softmax attention map to make sparse",
    "SanaWMTransformer3DModel": CANNOT + "three of four blocks run gated-delta-net linear attention and the "
    "softmax blocks carry camera-conditioned extra paths; no softmax attention over the whole token grid to make sparse",
    "LatteTransformer3DModel": CANNOT + "its attention is factorised: spatial blocks attend within one frame and "
    "temporal blocks within one position, never over the joint frames x rows x cols grid",
    "AnyFlowFARTransformer3DModel": CANNOT + "frame-autoregressive generation attends a causal block mask over a KV "
    "cache of earlier frames, not a self-attention of the whole grid",
    "WanAnimate2Transformer3DModel": CANNOT + "it already attends through its own flex BlockMask over generation and "
    "cached reference tokens (a KV cache), not a dense self-attention of one grid",
    "SanaWMLTX2RefinerTransformer3DModel": CANNOT + "the refiner attends a KV cache of earlier chunks, not a "
    "self-attention of one grid",
    "Kandinsky6SRTransformer3DModel": CANNOT + "the super-resolution model always runs its own NABLA block-sparse "
    "attention (flex BlockMask) on tokens it reorders into tiles",
    "Cosmos3OmniTransformer": CANNOT + "an omni model over packed understanding (causal) and generation tokens, not "
    "a video self-attention over one grid",
}


def _unsupported(name: str) -> TypeError:
    supported = ", ".join(f"{f.class_name} ({f.name})" if f.name else f.class_name for f in FAMILIES.values())
    why = f" ({UNSUPPORTED[name]})" if name in UNSUPPORTED else ""
    return TypeError(
        f"sparse-vdit does not support {name}{why}: supported transformers are {supported}, and subclasses of "
        "them. Pass a pipeline using one of them or its .transformer"
    )


def family_of(transformer: torch.nn.Module) -> Family:
    """The family of a transformer (its class or a base class of it); a clear error naming the
    supported classes otherwise."""
    model = getattr(transformer, "_orig_mod", transformer)  # a torch.compile'd module
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise _unsupported(type(model).__name__)


def model_info(transformer: torch.nn.Module, family: Family | None = None) -> ModelInfo:
    """The ``ModelInfo`` of a supported transformer."""
    return (family or family_of(transformer)).model_info(transformer)


def token_layout_of(
    transformer_or_config: Any,
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    *,
    text_len: int | None = None,
    prefix_len: int = 0,
    suffix_len: int = 0,
) -> TokenLayout:
    """Layout of a diffusers video transformer's joint attention for a latent of T x H x W.

    Args:
        transformer_or_config: the transformer, or a config dict that names its class
            (``_class_name``, as in the model's config.json).
        latent_frames, latent_height, latent_width: the latent video (after the VAE, before
            patchify), e.g. Wan 480p 81 frames: 21 x 60 x 104.
        text_len: text tokens in the joint sequence: HunyuanVideo's padded prompt length
            (default 256); CogVideoX defaults to ``max_text_seq_length``; Wan has none (each
            record's ``default_text_len``).
        prefix_len, suffix_len: conditioning tokens off the grid, before / after it
            (HunyuanVideo-Framepack's and Helios's history latents, LTX's extra conditioning, LTX-2's keyframes,
            MiniMax-H3's text, conditioning and audio rows).
    """
    if isinstance(transformer_or_config, torch.nn.Module):
        family = family_of(transformer_or_config)
        config = getattr(transformer_or_config, "_orig_mod", transformer_or_config).config
    else:
        config = transformer_or_config
        name = config_value(config, "_class_name")
        if name is None:
            raise ValueError(
                "this config does not name its transformer class (no _class_name): pass the transformer "
                "itself, or the config as saved in its config.json"
            )
        if name not in FAMILIES:
            raise _unsupported(name)
        family = FAMILIES[name]
    return family.token_layout(config, latent_frames, latent_height, latent_width, text_len=text_len,
                               prefix_len=prefix_len, suffix_len=suffix_len)
