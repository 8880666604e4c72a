"""The record that describes one model family, and the readers every family shares.

A family file (``pipelines/families/<family>.py``) builds one ``Family`` from its own functions;
the registry (``pipelines.families``) lists the records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs
from sparse_vdit.protocol import ModelInfo, config_fingerprint, public_config
from sparse_vdit.token_layout import TokenLayout

__all__ = ["Family", "StandardSize", "config_value", "square_patch_size", "token_inputs", "triple_patch_size", "video_inputs"]


@dataclass(frozen=True)
class StandardSize:
    """The size a family's models are usually run at, for the README's table (tokens per forward).

    Attributes:
        label: e.g. "480p, 81 frames".
        config: the full-size model's config keys the token layout reads (patch sizes, text length).
        latent: (frames, height, width) of the latent at that size, before patchify.
        text_len, prefix_len, suffix_len: as ``Family.token_layout`` takes them (None: the default).
    """

    label: str
    config: dict
    latent: tuple[int, int, int]
    text_len: int | None = None
    prefix_len: int = 0
    suffix_len: int = 0


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
            grid, timestep, text length / padding and conditioning tokens off the grid of one
            forward; raises ``ValueError`` saying what to do for a forward it cannot serve.
        tiny_transformer: ``() -> transformer``, a tiny random-weight model (2 heads x 64, or the
            family's own head dim where its RoPE needs it).
        tiny_inputs: ``(tiny transformer) -> forward kwargs`` of a small latent.
        name: the model's name for people, e.g. "Wan 2.1 / 2.2".
        pipelines: the diffusers pipelines that run it.
        standard: the size it is usually run at (README: tokens per forward), or None.
        unsupported_config: ``config -> reason or None``: a configuration of this class that
            cannot be served (refused at apply time with the reason), e.g. a built-in sparse
            attention that reorders the tokens.
        cp_plan: ``() -> cp_plan`` that sparse-vdit provides where diffusers ships none for the
            class (None: diffusers' own ``_cp_plan``, or none at all).
        stock_layers: ``config -> module paths`` that ``patterns`` match but that keep their stock
            processor, for a configuration whose blocks of one class do not all attend the joint
            sequence (Motif-Video's decoder blocks attend [video | encoder output], not
            [video | text]); None: every match is served.
        clean_timestep: for a model whose timestep rises toward clean data along a generation
            (MiniMax-H3: t = 1 - sigma, 1.0 clean), that clean value: the step tracker counts steps
            on the noise level ``clean_timestep - t`` of the forward and of the pipeline's schedule.
            None: the timestep falls along a generation, as diffusers' schedulers make it.
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
    name: str = ""
    pipelines: tuple[str, ...] = ()
    standard: StandardSize | None = None
    unsupported_config: Callable[[Any], str | None] | None = None
    cp_plan: Callable[[], dict] | None = None
    stock_layers: Callable[[Any], Iterable[str]] | None = None
    clean_timestep: float | None = None

    def layer_names(self, transformer: torch.nn.Module) -> list[str]:
        """Module paths of the attention modules our processors serve, by layer index."""
        stock = set(self.stock_layers(transformer.config)) if self.stock_layers is not None else set()
        names = [name for name, _ in transformer.named_modules() if name not in stock]
        ordered: list[str] = []
        for pattern in self.patterns:
            regex = re.compile(pattern)
            found = [(int(m.group(1)), name) for name in names if (m := regex.fullmatch(name))]
            ordered.extend(name for _, name in sorted(found))
        return ordered

    def token_layout(
        self,
        config: Any,
        latent_frames: int,
        latent_height: int,
        latent_width: int,
        *,
        text_len: int | None = None,
        prefix_len: int = 0,
        suffix_len: int = 0,
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
            prefix_len=prefix_len,
            suffix_len=suffix_len,
        )

    def forward_layout(self, config: Any, inputs: ForwardInputs) -> TokenLayout:
        """The layout of one forward, from what ``read_inputs`` read of its arguments."""
        return self.token_layout(config, inputs.latent_frames, inputs.latent_height, inputs.latent_width,
                                 text_len=inputs.text_len, prefix_len=inputs.prefix_len, suffix_len=inputs.suffix_len)

    def standard_layout(self) -> TokenLayout | None:
        """The token layout at the family's standard size (None when it has none)."""
        if self.standard is None:
            return None
        size = self.standard
        return self.token_layout(size.config, *size.latent, text_len=size.text_len, prefix_len=size.prefix_len,
                                 suffix_len=size.suffix_len)

    def check_config(self, config: Any) -> None:
        """Raise ``TypeError`` when this configuration of the class cannot be served (``unsupported_config``)."""
        reason = None if self.unsupported_config is None else self.unsupported_config(config)
        if reason:
            raise TypeError(f"sparse-vdit cannot serve this {self.class_name}: {reason}")

    def model_info(self, transformer: torch.nn.Module) -> ModelInfo:
        """The ``ModelInfo`` of a transformer of this family (with its config and config fingerprint)."""
        names = self.layer_names(transformer)
        if not names:
            raise ValueError(f"found no attention layers in this {self.class_name}: is it a diffusers model?")
        attn = transformer.get_submodule(names[0])
        # diffusers' attention modules name these heads / to_q, Kandinsky 5's num_heads / to_query.
        heads = int(getattr(attn, "heads", None) or attn.num_heads)
        query = getattr(attn, "to_q", None) or attn.to_query
        config = public_config(transformer.config)
        return ModelInfo(
            family=self.class_name,
            num_layers=len(names),
            num_heads=heads,
            head_dim=query.out_features // heads,
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


def triple_patch_size(config: Any) -> tuple[int, int, int]:
    """(t, h, w) of a config whose ``patch_size`` is already a triple (Wan and its kin, Kandinsky)."""
    return tuple(int(p) for p in config_value(config, "patch_size"))


def video_inputs(hidden_states: torch.Tensor, timestep, frames_dim: int, hw_dims: tuple[int, int] = (-2, -1)) -> dict:
    """ForwardInputs fields of a latent video: [B, C, T, H, W] (frames_dim 2), [B, T, C, H, W]
    (frames_dim 1) or [B, T, H, W, C] (frames_dim 1, ``hw_dims`` (2, 3))."""
    if hidden_states.dim() != 5:
        raise ValueError(
            f"expected a latent video hidden_states of 5 dims, got {tuple(hidden_states.shape)}: "
            "sparse-vdit serves video transformers called with a 5-D latent"
        )
    shape = hidden_states.shape
    return token_inputs(hidden_states, timestep, (shape[frames_dim], shape[hw_dims[0]], shape[hw_dims[1]]))


def token_inputs(hidden_states: torch.Tensor, timestep, grid: tuple[int, int, int]) -> dict:
    """ForwardInputs fields of a forward whose latent (T, H, W) is ``grid`` (the model may take it
    as a 5-D latent or as packed tokens [B, S, C] with the grid as arguments, as LTX-Video does)."""
    frames, height, width = (int(n) for n in grid)
    return dict(
        latent_frames=frames,
        latent_height=height,
        latent_width=width,
        timestep=timestep,
        batch_size=hidden_states.shape[0],
        device=hidden_states.device,
        dtype=hidden_states.dtype,
    )


def prefix_text_lens(mask: torch.Tensor | None, padded_len: int, what: str) -> tuple[int, ...] | None:
    """Per-sample real text tokens of a [B, L] text mask whose real tokens lead (padding last);
    None when no sample is padded. Raises ``ValueError`` for a mask with holes (real tokens after
    padding), which per-sample key lengths cannot describe."""
    if mask is None:
        return None
    real = mask.bool()
    lens = real.sum(dim=1)
    leading = torch.arange(real.shape[1], device=real.device) < lens.view(-1, 1)
    if not bool((real == leading).all()):
        raise ValueError(
            f"{what} marks real text tokens after padded ones; sparse-vdit needs each prompt's real tokens first "
            "and its padding last (as the tokenizers pad): pad on the right"
        )
    lens = tuple(int(n) for n in lens.tolist())
    return lens if any(n < padded_len for n in lens) else None
