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

Here: the registry, ``family_of``, ``model_info`` and ``token_layout_of``.
"""

from __future__ import annotations

from typing import Any

import torch

from pipelines.families import cogvideox, hunyuan_video, wan
from pipelines.families.record import Family, config_value
from sparse_vdit.protocol import ModelInfo
from sparse_vdit.token_layout import TokenLayout

__all__ = ["Family", "FAMILIES", "SUPPORTED_TRANSFORMERS", "family_of", "model_info", "token_layout_of"]

FAMILIES: dict[str, Family] = {
    family.class_name: family
    for family in (
        wan.FAMILY,
        hunyuan_video.FAMILY,
        cogvideox.FAMILY,
    )
}
SUPPORTED_TRANSFORMERS: tuple[str, ...] = tuple(FAMILIES)


def _unsupported(name: str) -> TypeError:
    return TypeError(
        f"sparse-vdit does not support {name}: supported transformers are {', '.join(SUPPORTED_TRANSFORMERS)} "
        "(or subclasses of them). Pass a pipeline using one of them or its .transformer"
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
) -> TokenLayout:
    """Layout of a diffusers video transformer's joint attention for a latent of T x H x W.

    Args:
        transformer_or_config: the transformer, or a config dict that names its class
            (``_class_name``, as in the model's config.json).
        latent_frames, latent_height, latent_width: the latent video (after the VAE, before
            patchify), e.g. Wan 480p 81 frames: 21 x 60 x 104.
        text_len: text tokens in the joint sequence: HunyuanVideo's padded prompt length
            (default 256); CogVideoX defaults to ``max_text_seq_length``; Wan has none.
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
    return family.token_layout(config, latent_frames, latent_height, latent_width, text_len=text_len)
