"""The model families sparse-vdit adapts, and what is family-specific besides the processor:
which attention modules get ours (and their layer order), and how a transformer forward's
arguments give the token layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from pipelines.methods import ModelInfo
from pipelines.processors import (
    CogVideoXSparseAttnProcessor,
    HunyuanVideoSparseAttnProcessor,
    SparseAttnProcessorBase,
    WanSparseAttnProcessor,
)
from pipelines.step_tracking import ForwardInputs
from sparse_vdit.token_layout import COGVIDEOX, HUNYUAN, SUPPORTED_TRANSFORMERS, WAN

__all__ = ["Family", "family_of", "model_info"]


@dataclass(frozen=True)
class Family:
    """One supported transformer class.

    Attributes:
        class_name: diffusers class name.
        processor_cls: our processor for its joint self-attention.
        patterns: regexes over module paths, in layer order: modules matching pattern 0 come first
            (by their block number), then pattern 1, ... Every other attention module keeps its
            stock processor (Wan ``attn2``, HunyuanVideo's token refiner).
        text_position: "none", "before" or "after" (see ``TokenLayout``).
        read_inputs: ``(transformer, forward arguments by name) -> ForwardInputs``.
    """

    class_name: str
    processor_cls: type[SparseAttnProcessorBase]
    patterns: tuple[str, ...]
    text_position: str
    read_inputs: Callable[[torch.nn.Module, dict], ForwardInputs]

    def layer_names(self, transformer: torch.nn.Module) -> list[str]:
        """Module paths of the attention modules our processors serve, by layer index."""
        names = [name for name, _ in transformer.named_modules()]
        ordered: list[str] = []
        for pattern in self.patterns:
            regex = re.compile(pattern)
            found = [(int(m.group(1)), name) for name in names if (m := regex.fullmatch(name))]
            ordered.extend(name for _, name in sorted(found))
        return ordered


def _video_inputs(hidden_states: torch.Tensor, timestep, frames_dim: int) -> dict:
    """T/H/W of a latent video [B, C, T, H, W] (frames_dim 2) or [B, T, C, H, W] (frames_dim 1)."""
    if hidden_states.dim() != 5:
        raise ValueError(
            f"expected a latent video hidden_states of 5 dims, got {tuple(hidden_states.shape)}: "
            "sparse-vdit serves video transformers called with a 5-D latent"
        )
    b, t, h, w = hidden_states.shape[0], hidden_states.shape[frames_dim], hidden_states.shape[-2], hidden_states.shape[-1]
    return dict(
        latent_frames=t,
        latent_height=h,
        latent_width=w,
        timestep=timestep,
        batch_size=b,
        device=hidden_states.device,
        dtype=hidden_states.dtype,
    )


def _wan_inputs(transformer, args: dict) -> ForwardInputs:
    return ForwardInputs(**_video_inputs(args["hidden_states"], args["timestep"], 2), text_len=None, text_valid_lens=None)


def _hunyuan_inputs(transformer, args: dict) -> ForwardInputs:
    text = args["encoder_hidden_states"]
    mask = args.get("encoder_attention_mask")
    valid = None
    if mask is not None:
        # The stock model keeps the first sum(mask) text tokens of each sample (see its forward).
        lens = tuple(int(n) for n in mask.sum(dim=1).tolist())
        if any(n < text.shape[1] for n in lens):
            valid = lens
    return ForwardInputs(
        **_video_inputs(args["hidden_states"], args["timestep"], 2), text_len=text.shape[1], text_valid_lens=valid
    )


def _cogvideox_inputs(transformer, args: dict) -> ForwardInputs:
    inputs = _video_inputs(args["hidden_states"], args["timestep"], 1)
    return ForwardInputs(**inputs, text_len=args["encoder_hidden_states"].shape[1], text_valid_lens=None)


FAMILIES: dict[str, Family] = {
    WAN: Family(WAN, WanSparseAttnProcessor, (r"blocks\.(\d+)\.attn1",), "none", _wan_inputs),
    HUNYUAN: Family(
        HUNYUAN,
        HunyuanVideoSparseAttnProcessor,
        (r"transformer_blocks\.(\d+)\.attn", r"single_transformer_blocks\.(\d+)\.attn"),
        "after",
        _hunyuan_inputs,
    ),
    COGVIDEOX: Family(COGVIDEOX, CogVideoXSparseAttnProcessor, (r"transformer_blocks\.(\d+)\.attn1",), "before", _cogvideox_inputs),
}
assert set(FAMILIES) == set(SUPPORTED_TRANSFORMERS)


def family_of(transformer: torch.nn.Module) -> Family:
    """The family of a transformer; a clear error naming the supported classes otherwise."""
    model = getattr(transformer, "_orig_mod", transformer)  # a torch.compile'd module
    name = type(model).__name__
    if name not in FAMILIES:
        raise TypeError(
            f"sparse-vdit does not support {name}: supported transformers are {', '.join(SUPPORTED_TRANSFORMERS)}. "
            "Pass a pipeline using one of them or its .transformer"
        )
    return FAMILIES[name]


def model_info(transformer: torch.nn.Module, family: Family | None = None) -> ModelInfo:
    """The ``ModelInfo`` of a supported transformer."""
    family = family or family_of(transformer)
    names = family.layer_names(transformer)
    if not names:
        raise ValueError(f"found no attention layers in this {family.class_name}: is it a diffusers model?")
    attn = transformer.get_submodule(names[0])
    heads = int(attn.heads)
    head_dim = attn.to_q.out_features // heads
    cfg = transformer.config
    if family.class_name == WAN:
        patch = tuple(int(p) for p in cfg.patch_size)
    else:
        patch = (int(cfg.patch_size_t or 1), int(cfg.patch_size), int(cfg.patch_size))
    return ModelInfo(
        family=family.class_name,
        num_layers=len(names),
        num_heads=heads,
        head_dim=head_dim,
        layer_names=tuple(names),
        text_position=family.text_position,
        patch_size=patch,
    )
