"""The record that describes one model family, and the readers every family shares.

A family file (``pipelines/families/<family>.py``) builds one ``Family`` from its own functions;
the registry (``pipelines.families``) lists the records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs
from sparse_vdit.protocol import ModelInfo, config_fingerprint, public_config
from sparse_vdit.token_layout import TokenLayout

__all__ = ["Family", "config_value", "square_patch_size", "video_inputs"]


@dataclass(frozen=True)
class Family:
    """One supported transformer class (its subclasses are served too).

    Attributes:
        class_name: diffusers class name, e.g. "WanTransformer3DModel".
        processor_cls: our processor for its joint self-attention.
        patterns: regexes over module paths, in layer order: modules matching pattern 0 come first
            (by their block number, the regex's group 1), then pattern 1, ... Every other attention
            module keeps its stock processor (Wan ``attn2``, HunyuanVideo's token refiner).
        text_position: "none", "before" or "after" (see ``TokenLayout``).
        patch_size: ``config -> (t, h, w)`` patch of the latent grid.
        default_text_len: ``config -> int``, the text tokens of the joint sequence when a caller
            of ``token_layout`` does not say (None for a family without text).
        read_inputs: ``(transformer, forward arguments by name) -> ForwardInputs``: the latent
            grid, timestep and text length / padding of one forward.
        tiny_transformer: ``() -> transformer``, a tiny random-weight model (2 heads x 64).
        tiny_inputs: ``(tiny transformer) -> forward kwargs`` of a small latent.
    """

    class_name: str
    processor_cls: type[SparseAttnProcessorBase]
    patterns: tuple[str, ...]
    text_position: str
    patch_size: Callable[[Any], tuple[int, int, int]]
    default_text_len: Callable[[Any], int] | None
    read_inputs: Callable[[torch.nn.Module, dict], ForwardInputs]
    tiny_transformer: Callable[[], torch.nn.Module]
    tiny_inputs: Callable[[torch.nn.Module], dict]

    def layer_names(self, transformer: torch.nn.Module) -> list[str]:
        """Module paths of the attention modules our processors serve, by layer index."""
        names = [name for name, _ in transformer.named_modules()]
        ordered: list[str] = []
        for pattern in self.patterns:
            regex = re.compile(pattern)
            found = [(int(m.group(1)), name) for name in names if (m := regex.fullmatch(name))]
            ordered.extend(name for _, name in sorted(found))
        return ordered

    def token_layout(
        self, config: Any, latent_frames: int, latent_height: int, latent_width: int, *, text_len: int | None = None
    ) -> TokenLayout:
        """Layout of the joint attention for a latent of T x H x W (see ``token_layout_of``)."""
        if self.default_text_len is None:
            if text_len:
                raise ValueError(f"{self.class_name} self-attention has no text tokens; leave text_len unset")
            text = 0
        else:
            text = self.default_text_len(config) if text_len is None else int(text_len)
        return TokenLayout.from_latent(
            latent_frames,
            latent_height,
            latent_width,
            patch_size=self.patch_size(config),
            text_len=text,
            text_position=self.text_position if text else "none",
        )

    def model_info(self, transformer: torch.nn.Module) -> ModelInfo:
        """The ``ModelInfo`` of a transformer of this family (with its config and config fingerprint)."""
        names = self.layer_names(transformer)
        if not names:
            raise ValueError(f"found no attention layers in this {self.class_name}: is it a diffusers model?")
        attn = transformer.get_submodule(names[0])
        heads = int(attn.heads)
        config = public_config(transformer.config)
        return ModelInfo(
            family=self.class_name,
            num_layers=len(names),
            num_heads=heads,
            head_dim=attn.to_q.out_features // heads,
            layer_names=tuple(names),
            text_position=self.text_position,
            patch_size=self.patch_size(transformer.config),
            config_fingerprint=config_fingerprint(config),
            config=config,
        )


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` of a dict config (config.json) or an attribute-style config."""
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def square_patch_size(config: Any) -> tuple[int, int, int]:
    """(t, p, p) of a config with ``patch_size`` p and an optional ``patch_size_t`` (None = 1)."""
    p = int(config_value(config, "patch_size"))
    return int(config_value(config, "patch_size_t") or 1), p, p


def video_inputs(hidden_states: torch.Tensor, timestep, frames_dim: int) -> dict:
    """ForwardInputs fields of a latent video [B, C, T, H, W] (frames_dim 2) or [B, T, C, H, W] (frames_dim 1)."""
    if hidden_states.dim() != 5:
        raise ValueError(
            f"expected a latent video hidden_states of 5 dims, got {tuple(hidden_states.shape)}: "
            "sparse-vdit serves video transformers called with a 5-D latent"
        )
    shape = hidden_states.shape
    return dict(
        latent_frames=shape[frames_dim],
        latent_height=shape[-2],
        latent_width=shape[-1],
        timestep=timestep,
        batch_size=shape[0],
        device=hidden_states.device,
        dtype=hidden_states.dtype,
    )
