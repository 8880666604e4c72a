"""The method protocol: what an attention method sees, what it returns, and the two methods shipped here.

A *method* decides how the self-attention of one layer is computed; the processors in
``pipelines.processors`` adapt diffusers' models to it, so every method runs on every model family
without touching the adapters. A method is any object with these four members (subclass
``AttentionMethod`` to get the no-op defaults):

``validate(model: ModelInfo) -> None``
    Called once by ``apply_sparse_attention`` / ``sparse_attention_processors``. Raise ``ValueError``
    saying what differs when the method (e.g. an offline plan) was made for another model.

``new_state() -> Any``
    A fresh per-generation state object (AdaSpa's LSE cache and block selection, say). The step
    tracker makes one per generation and CFG branch, and hands it back as ``call.state``.

``begin_forward(forward: ForwardContext) -> Any``
    Runs eagerly (outside ``torch.compile``) before every transformer forward, when the step index,
    branch and token layout of that forward are known. Do host-side, step-dependent work here:
    build block layouts, pick this step's plan. The return value is ``call.prepared`` in every
    attention call of that forward. May raise ``ValueError`` when it cannot serve the token layout.

``__call__(call: AttentionCall, q, k, v) -> Tensor | None``
    One attention call. ``q``, ``k``, ``v`` are [B, H, S, D] views (RoPE and norms applied, the
    model's joint token order, see ``call.token_layout``). Return the [B, H, S, D] output (any
    strides), or ``None`` to have it computed densely through diffusers' ``dispatch_attention_fn``
    (so the user's attention backend applies).

torch.compile: ``__call__`` is traced. Everything it reads off ``call`` becomes a guard, so read
the step index there only if the computation really changes per step; otherwise decide in
``begin_forward`` and read the decision (``call.prepared``), which keeps one graph for all steps.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable

import torch

from kernels.attention import block_sparse_attention
from kernels.block_layout import BlockLayout
from sparse_vdit.token_layout import TokenLayout

if TYPE_CHECKING:
    from pipelines.step_tracking import ForwardContext

__all__ = [
    "ModelInfo",
    "AttentionCall",
    "AttentionMethod",
    "FullAttention",
    "StaticMaskAttention",
    "check_model_matches",
]

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelInfo:
    """What a method may depend on in a model, read from the transformer at apply time.

    Attributes:
        family: diffusers transformer class name, e.g. "WanTransformer3DModel".
        num_layers: number of attention layers our processors serve (layer indices 0..num_layers-1).
        num_heads, head_dim: per layer (all layers of the supported models agree).
        layer_names: module path of each layer's attention, by layer index.
        text_position: where text sits in the joint sequence: "none", "before" or "after".
        patch_size: (t, h, w) patch of the latent grid.
    """

    family: str
    num_layers: int
    num_heads: int
    head_dim: int
    layer_names: tuple[str, ...]
    text_position: str
    patch_size: tuple[int, int, int]

    def differences(self, other: "ModelInfo") -> list[str]:
        """Human-readable list of the fields that differ ("num_heads: 12 here, 40 there")."""
        out = []
        for f in fields(self):
            if f.name == "layer_names":
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                out.append(f"{f.name}: {mine!r} expected, {theirs!r} in this model")
        if not out and self.layer_names != other.layer_names:
            out.append("layer_names: the attention modules are named differently")
        return out


def check_model_matches(expected: ModelInfo, actual: ModelInfo, what: str = "this plan") -> None:
    """Raise ``ValueError`` naming every difference between the model ``what`` was made for and ``actual``."""
    diffs = expected.differences(actual)
    if diffs:
        raise ValueError(
            f"{what} was made for a different model ({expected.family}, {expected.num_layers} layers x "
            f"{expected.num_heads} heads x {expected.head_dim}): " + "; ".join(diffs)
            + ". Make a plan for this model (or apply the plan to the model it was made for)."
        )


@dataclass(frozen=True)
class AttentionCall:
    """What a method sees about one attention call.

    Per-layer fields are stored; per-forward ones are read through ``forward`` (the tracker's
    ``ForwardContext``) only when a method asks, so a torch.compile'd model guards only on what the
    method uses.

    Attributes:
        layer_index: 0-based attention layer (Wan ``blocks.i.attn1`` -> i; HunyuanVideo dual blocks
            first, then single blocks; CogVideoX ``transformer_blocks.i.attn1`` -> i).
        layer_name: the attention module's path, e.g. "blocks.3.attn1".
        num_heads, head_dim: of this layer.
        forward: the ``ForwardContext`` of the transformer forward this call belongs to.
    """

    layer_index: int
    layer_name: str
    num_heads: int
    head_dim: int
    forward: "ForwardContext"

    @property
    def step_index(self) -> int:
        """Denoising step of this forward, 0-based (both CFG branches of one step share it)."""
        return self.forward.step_index

    @property
    def branch(self) -> int:
        """CFG branch of this forward: 0 for the first call of a step ("cond"), 1 for "uncond"; 0 when batched."""
        return self.forward.branch

    @property
    def token_layout(self) -> TokenLayout:
        return self.forward.token_layout

    @property
    def key_padding_mask(self) -> torch.Tensor | None:
        """[B, S] bool, True = a real key (HunyuanVideo's padded text is False); None when all keys are real."""
        return self.forward.key_padding_mask

    @property
    def state(self) -> Any:
        """The method's per-generation state for this branch (``method.new_state()``)."""
        return self.forward.state

    @property
    def prepared(self) -> Any:
        """What ``method.begin_forward`` returned for this forward."""
        return self.forward.prepared


class AttentionMethod:
    """Base class with the protocol's defaults: accepts every model, no state, dense everywhere."""

    def validate(self, model: ModelInfo) -> None:
        return None

    def new_state(self) -> Any:
        return None

    def begin_forward(self, forward: "ForwardContext") -> Any:
        return None

    def __call__(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FullAttention(AttentionMethod):
    """Every head dense, through diffusers' ``dispatch_attention_fn``: reproduces the stock output.

    The baseline a sparse method is measured against, and a check that the adapters are faithful.
    """


class StaticMaskAttention(AttentionMethod):
    """A user's own static attention pattern, run through the block-sparse kernel.

    Args:
        mask_mod: FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` over indices
            of the model's joint sequence (True = attend), written with tensor ops on broadcastable
            index tensors. It is evaluated once per token layout (and per padding pattern of
            HunyuanVideo's text), turned into a ``BlockLayout`` and cached. Use
            ``StaticMaskAttention.per_layout(factory)`` when the pattern depends on the resolution.
        block_size: layout block size (64 or 128 on GPUs; 16 / 32 for tiny test models).
        per_head: set True if ``mask_mod`` reads ``h`` (it is then evaluated for every head).
        layers: layer indices that run the pattern; the others run dense. None = all layers.
        token_layout: the token layout a raw-index ``mask_mod`` was written for. Forwards with
            another layout raise instead of applying a pattern meant for a different resolution.

    The pattern is taken exactly as written: text tokens get no special treatment (keep them in
    ``mask_mod`` if you want a text sink). Padded text keys (HunyuanVideo) are always masked, as
    in the stock model. Rows whose pattern keeps no key output zeros.
    """

    def __init__(
        self,
        mask_mod: MaskMod | None = None,
        *,
        block_size: int = 128,
        per_head: bool = False,
        layers: list[int] | tuple[int, ...] | set[int] | None = None,
        token_layout: TokenLayout | None = None,
        _factory: Callable[[TokenLayout], MaskMod] | None = None,
    ) -> None:
        if (mask_mod is None) == (_factory is None):
            raise ValueError("give a mask_mod, or use StaticMaskAttention.per_layout(factory)")
        self.mask_mod = mask_mod
        self.factory = _factory
        self.block_size = int(block_size)
        self.per_head = bool(per_head)
        self.layers = None if layers is None else frozenset(int(i) for i in layers)
        self.token_layout = token_layout
        self._cache: dict[tuple, BlockLayout] = {}

    @classmethod
    def per_layout(cls, factory: Callable[[TokenLayout], MaskMod], **kwargs) -> "StaticMaskAttention":
        """A pattern that depends on the token layout: ``factory(token_layout) -> mask_mod``."""
        return cls(None, _factory=factory, **kwargs)

    def __repr__(self) -> str:
        return f"StaticMaskAttention(block_size={self.block_size}, per_head={self.per_head}, layers={self.layers})"

    def validate(self, model: ModelInfo) -> None:
        d = model.head_dim
        if d < 16 or d > 256 or d & (d - 1):
            raise ValueError(
                f"{model.family} has head_dim {d}; the block-sparse kernel needs a power of two from 16 to 256"
            )
        if self.layers is not None:
            bad = sorted(i for i in self.layers if not 0 <= i < model.num_layers)
            if bad:
                raise ValueError(
                    f"StaticMaskAttention layers {bad} do not exist: {model.family} has {model.num_layers} "
                    f"attention layers (0..{model.num_layers - 1})"
                )
        if self.token_layout is not None and self.token_layout.text_position != model.text_position:
            raise ValueError(
                f"StaticMaskAttention was written for a token layout with text {self.token_layout.text_position!r}, "
                f"but {model.family} puts text {model.text_position!r}: its token indices mean different "
                "tokens here; rewrite the mask for this model or use StaticMaskAttention.per_layout"
            )

    def begin_forward(self, forward: "ForwardContext") -> BlockLayout:
        layout = forward.token_layout
        if self.token_layout is not None and layout != self.token_layout:
            raise ValueError(
                f"this StaticMaskAttention was written for {self.token_layout.describe()}, but the pipeline "
                f"runs {layout.describe()}: generate at the resolution the mask was written for, or build it "
                "with StaticMaskAttention.per_layout(factory) so it follows the resolution"
            )
        valid = forward.text_valid_lens
        key = (layout, valid, forward.model.num_heads if self.per_head else 1, str(forward.device))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._build(layout, valid, forward.model.num_heads, forward.device)
            self._cache[key] = cached
        return cached

    def _build(self, layout: TokenLayout, valid: tuple[int, ...] | None, num_heads: int, device) -> BlockLayout:
        mask_mod = self.mask_mod if self.factory is None else self.factory(layout)
        if valid is not None:
            # Key padding: keys of text beyond each prompt's length are masked (per batch).
            kv_len_b = torch.tensor([layout.text_start + n for n in valid], device=device)
            user = mask_mod

            def mask_mod(b, h, q_idx, kv_idx):  # noqa: F811 - composed pattern
                real = (kv_idx < layout.text_start) | (kv_idx < kv_len_b[b])
                return user(b, h, q_idx, kv_idx) & real

        s = layout.seq_len
        built = BlockLayout.from_mask_mod(
            mask_mod,
            None if valid is None else len(valid),
            num_heads if self.per_head else None,
            s,
            s,
            block_size=self.block_size,
            device=device,
        )
        return built  # BlockLayout computes its host-side facts at build, outside any compiled graph

    def __call__(self, call: AttentionCall, q, k, v):
        if self.layers is not None and call.layer_index not in self.layers:
            return None
        return block_sparse_attention(q, k, v, call.prepared)
