"""Attention processors for diffusers' video transformers, one per model family, one shared core.

Each family's processor follows the stock processor's
contract: the same ``__call__`` signature with the RoPE argument named explicitly (diffusers'
legacy ``Attention.forward`` drops keyword arguments a processor does not name), the same
projections, norms and RoPE as stock. Only the attention step differs, and it is this module's
``SparseAttnProcessorBase.attend``: the method is called with [B, H, S, D] views and its result is
run here (``sparse_vdit.protocol``): None (dense heads, warm-up steps, FullAttention) or a call the
sparse path cannot serve goes through diffusers' ``dispatch_attention_fn``, so the user's attention
backend (``transformer.set_attention_backend``) and context parallelism apply; a ``BlockLayout``
runs the block-sparse kernel with the forward's key lengths; a tensor is the method's own output.
Key padding is handled here, once, for every method.

Build processors with ``pipelines.apply_sparse_attention`` (or ``attach_sparse_attention`` for a
``set_attn_processor`` dict); a processor needs the transformer's ``StepTracker``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from kernels.block_layout import BlockLayout
from kernels.limits import dtype_names, dtype_supported, head_dim_error, head_dim_supported
from sparse_vdit.protocol import AttentionCall, AttentionMethod

if TYPE_CHECKING:
    from pipelines.step_tracking import StepTracker

__all__ = [
    "ProcessorConfig",
    "SparseAttnProcessorBase",
    "WanSparseAttnProcessor",
    "HunyuanVideoSparseAttnProcessor",
    "CogVideoXSparseAttnProcessor",
]

logger = logging.getLogger(__name__)

METHOD_RESULT = (
    "a method's __call__ must return None (dense attention), a kernels.block_layout.BlockLayout (run by "
    "the block-sparse kernel) or the attention output, a tensor [B, H, S, D] of q's dtype and device"
)


@dataclass(frozen=True)
class ProcessorConfig:
    """What one processor instance is for (fixed at install time)."""

    layer_index: int
    layer_name: str
    num_heads: int
    head_dim: int


class SparseAttnProcessorBase:
    """The shared attention step: call the method, else dense through ``dispatch_attention_fn``.

    ``_attention_backend`` / ``_parallel_config`` are the slots diffusers' ``set_attention_backend``
    and context-parallel setup write on every processor instance, as on the stock processors.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, config: ProcessorConfig, method: AttentionMethod, tracker: "StepTracker") -> None:
        self.config = config
        self.method = method
        self.tracker = tracker

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer {self.config.layer_index} {self.config.layer_name!r}, {self.method!r})"

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None,
        *,
        mask_is_key_padding: bool = False,
    ) -> torch.Tensor:
        """Self-attention of the joint sequence.

        Args:
            query, key, value: [B, S, H, D] (diffusers' layout; views are fine).
            attn_mask: the stock processor's mask, passed unchanged to the dense path.
            mask_is_key_padding: the mask only marks padded keys, which the tracker already
                exposes as ``call.kv_lens`` (HunyuanVideo); any other mask makes the call dense.

        Returns [B, S, H, D].
        """
        forward = self.tracker.current
        if forward is None:
            raise RuntimeError(
                f"{type(self).__name__} ran outside a tracked transformer forward: install processors with "
                "pipelines.apply_sparse_attention(pipe_or_transformer, method) (or attach_sparse_attention) "
                "rather than constructing them yourself"
            )
        if not self._asks_method(attn_mask, mask_is_key_padding):
            return self._dense(query, key, value, attn_mask)
        call = AttentionCall(
            layer_index=self.config.layer_index,
            layer_name=self.config.layer_name,
            num_heads=self.config.num_heads,
            head_dim=self.config.head_dim,
            forward=forward,
        )
        q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        out = self.method(call, q, k, v)
        if out is None:
            return self._dense(query, key, value, attn_mask)
        if isinstance(out, BlockLayout):
            self._check_layout_servable(q)
            out = call.block_sparse_attention(q, k, v, out)
        elif isinstance(out, torch.Tensor):
            self._check_output(out, q)
        else:
            raise TypeError(f"{self.method!r} returned a {type(out).__name__}: {METHOD_RESULT}")
        return out.transpose(1, 2)

    def _dense(self, query, key, value, attn_mask) -> torch.Tensor:
        """Dense attention through diffusers: [B, S, H, D] in and out, with the stock mask."""
        return dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )

    def _check_layout_servable(self, q: torch.Tensor) -> None:
        if not dtype_supported(q.dtype):
            raise ValueError(
                f"{self.method!r} returned a BlockLayout for a model that computes in "
                f"{str(q.dtype).replace('torch.', '')}, but the block-sparse kernel runs {dtype_names()}: cast the "
                "pipeline or transformer (e.g. pipe.to(torch.bfloat16)), or return None for dense attention"
            )
        if not head_dim_supported(q.shape[-1]):
            raise ValueError(f"{self.method!r} returned a BlockLayout, but " + head_dim_error(q.shape[-1]))

    def _check_output(self, out: torch.Tensor, q: torch.Tensor) -> None:
        if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
            raise ValueError(
                f"{self.method!r} returned a tensor {tuple(out.shape)} {out.dtype} on {out.device}, but q is "
                f"{tuple(q.shape)} {q.dtype} on {q.device}: {METHOD_RESULT}"
            )

    def _asks_method(self, attn_mask, mask_is_key_padding: bool) -> bool:
        """Whether the method is asked at all (else the call is dense, as stock)."""
        if self._parallel_config is not None:
            # Context parallelism shards the sequence; only dispatch_attention_fn does the exchange.
            _warn_once("context parallelism is on: sparse-vdit runs attention densely through diffusers")
            return False
        return attn_mask is None or mask_is_key_padding


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


# --------------------------------------------------------------------------------------------- Wan
def _wan_rotary(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on interleaved pairs, as in diffusers' WanAttnProcessor. hidden_states: [B, S, H, D]."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class WanSparseAttnProcessor(SparseAttnProcessorBase):
    """Wan 2.1 / 2.2 self-attention (``attn1``): stock projections, across-heads RMS norm, RoPE.

    Called positionally by ``WanAttention.forward``. hidden_states: [B, S, C] video tokens, S =
    frames x rows x cols; returns [B, S, C]. A cross-attention call (``encoder_hidden_states``
    given, i.e. installed on ``attn2`` by mistake) is handed to diffusers' stock processor.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            return self._stock()(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _wan_rotary(query, *rotary_emb)
            key = _wan_rotary(key, *rotary_emb)
        hidden_states = self.attend(query, key, value, attention_mask)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)

    def _stock(self):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        stock = WanAttnProcessor()
        stock._attention_backend = self._attention_backend
        stock._parallel_config = self._parallel_config
        return stock


# ------------------------------------------------------------------------------------ HunyuanVideo
class HunyuanVideoSparseAttnProcessor(SparseAttnProcessorBase):
    """HunyuanVideo joint attention, dual-stream (``add_q_proj`` set) and single-stream blocks.

    hidden_states: [B, Sv, C] video tokens, encoder_hidden_states: [B, St, C] text (padded to St),
    attention_mask: [B, 1, 1, Sv + St] bool, False on padded text keys. The joint sequence is
    [video, text]; RoPE touches video only. Returns (video [B, Sv, C], text [B, St, C]) as stock.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        from diffusers.models.embeddings import apply_rotary_emb

        single_stream = attn.add_q_proj is None and encoder_hidden_states is not None
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            if single_stream:
                n_text = encoder_hidden_states.shape[1]
                query = torch.cat(
                    [apply_rotary_emb(query[:, :-n_text], image_rotary_emb, sequence_dim=1), query[:, -n_text:]], dim=1
                )
                key = torch.cat(
                    [apply_rotary_emb(key[:, :-n_text], image_rotary_emb, sequence_dim=1), key[:, -n_text:]], dim=1
                )
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            enc_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            enc_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            enc_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                enc_query = attn.norm_added_q(enc_query)
            if attn.norm_added_k is not None:
                enc_key = attn.norm_added_k(enc_key)
            query = torch.cat([query, enc_query], dim=1)
            key = torch.cat([key, enc_key], dim=1)
            value = torch.cat([value, enc_value], dim=1)

        hidden_states = self.attend(query, key, value, attention_mask, mask_is_key_padding=True)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            n_text = encoder_hidden_states.shape[1]
            hidden_states, encoder_hidden_states = hidden_states[:, :-n_text], hidden_states[:, -n_text:]
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


# --------------------------------------------------------------------------------------- CogVideoX
class CogVideoXSparseAttnProcessor(SparseAttnProcessorBase):
    """CogVideoX / CogVideoX1.5 joint attention ([text, video], head_dim 64).

    hidden_states: [B, Sv, C] video, encoder_hidden_states: [B, St, C] text; returns
    (video [B, Sv, C], text [B, St, C]) as stock. Unlike the stock processor, which calls
    ``F.scaled_dot_product_attention`` directly (so attention backends never reach CogVideoX),
    dense attention here goes through ``dispatch_attention_fn``: with the default native backend
    that is the same SDPA call, and a backend the user sets now applies.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        from diffusers.models.embeddings import apply_rotary_emb

        n_text = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        # [B, H, S, D], as stock: the q/k norms and RoPE act on this layout.
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, n_text:] = apply_rotary_emb(query[:, :, n_text:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, n_text:] = apply_rotary_emb(key[:, :, n_text:], image_rotary_emb)

        hidden_states = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask)
        hidden_states = hidden_states.reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split([n_text, hidden_states.size(1) - n_text], dim=1)
        return hidden_states, encoder_hidden_states
