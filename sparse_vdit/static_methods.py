"""The two methods that need no search: every head dense, and a user's own static pattern.

Both follow the protocol in ``sparse_vdit.protocol`` and run on every model family the
``pipelines`` adapters serve. No diffusers import.
"""

from __future__ import annotations

from typing import Callable

import torch

from kernels.block_layout import BlockLayout
from kernels.limits import Q_BLOCK_SIZES, head_dim_error, head_dim_supported
from sparse_vdit.guards import check_kernel_dtype
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo
from sparse_vdit.token_layout import TokenLayout

__all__ = ["FullAttention", "StaticMaskAttention", "MaskMod"]

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class FullAttention(AttentionMethod):
    """Every head dense, through diffusers' ``dispatch_attention_fn``: reproduces the stock output.

    The baseline a sparse method is measured against, and a check that the adapters are faithful.
    """


class StaticMaskAttention(AttentionMethod):
    """A user's own static attention pattern, run through the block-sparse kernel.

    Args:
        mask_mod: FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` over indices
            of the model's joint sequence (True = attend), written with tensor ops on broadcastable
            index tensors. It is evaluated once per token layout (and device), turned into a
            ``BlockLayout`` and cached; ``b`` is always 0 (one pattern for the whole batch). Use
            ``StaticMaskAttention.per_layout(factory)`` when the pattern depends on the resolution.
        block_size: layout block size (64 or 128 on GPUs; 16 / 32 for tiny test models).
        per_head: set True if ``mask_mod`` reads ``h`` (it is then evaluated for every head).
        layers: layer indices that run the pattern; the others run dense. None = all layers.
        token_layout: the token layout a raw-index ``mask_mod`` was written for. Forwards with
            another layout raise instead of applying a pattern meant for a different resolution.

    The pattern is taken exactly as written: text tokens get no special treatment (keep them in
    ``mask_mod`` if you want a text sink). Padded text keys (HunyuanVideo) are masked by the
    processor, as in the stock model. Rows whose pattern keeps no key output zeros.
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
        if int(block_size) not in Q_BLOCK_SIZES:
            raise ValueError(
                f"block_size {block_size} is not served by the block-sparse kernel: use one of "
                f"{', '.join(map(str, Q_BLOCK_SIZES))} (64 or 128 on GPUs)"
            )
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
        if not head_dim_supported(model.head_dim):
            raise ValueError(f"{model.family}: " + head_dim_error(model.head_dim) + "; use FullAttention() for it")
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

    def begin_forward(self, forward: ForwardContext) -> BlockLayout:
        check_kernel_dtype(forward.dtype, "StaticMaskAttention", "use FullAttention() to stay in this dtype")
        layout = forward.token_layout
        if self.token_layout is not None and layout != self.token_layout:
            raise ValueError(
                f"this StaticMaskAttention was written for {self.token_layout.describe()}, but the pipeline "
                f"runs {layout.describe()}: generate at the resolution the mask was written for, or build it "
                "with StaticMaskAttention.per_layout(factory) so it follows the resolution"
            )
        heads = forward.model.num_heads if self.per_head else None
        key = (layout, heads, str(forward.device))
        cached = self._cache.get(key)
        if cached is None:
            mask_mod = self.mask_mod if self.factory is None else self.factory(layout)
            s = layout.seq_len
            # BlockLayout computes its host-side facts at build, outside any compiled graph.
            cached = BlockLayout.from_mask_mod(mask_mod, None, heads, s, s, block_size=self.block_size, device=forward.device)
            self._cache[key] = cached
        return cached

    def __call__(self, call: AttentionCall, q, k, v) -> BlockLayout | None:
        if self.layers is not None and call.layer_index not in self.layers:
            return None
        return call.prepared
