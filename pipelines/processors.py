"""The shared core of our attention processors: one attention step for every model family.

Each family's processor (in ``pipelines.families.<family>``) follows the stock processor's
contract: the same ``__call__`` signature with the RoPE argument named explicitly (diffusers'
legacy ``Attention.forward`` drops keyword arguments a processor does not name), the same
projections, norms and RoPE as stock. Only the attention step differs, and it is this module's
``SparseAttnProcessorBase.attend``: the method is called with [B, H, S, D] views and its result is
run here (``sparse_vdit.protocol``): None (dense heads, warm-up steps, FullAttention) or a call the
sparse path cannot serve goes through diffusers' ``dispatch_attention_fn``, so the user's attention
backend (``transformer.set_attention_backend``) and context parallelism apply; a ``BlockLayout``
runs the block-sparse kernel with the forward's key lengths; a tensor is the method's own output.
Key padding and context parallelism are handled here, once, for every method: under diffusers'
Ulysses context parallelism the local sequence shards are exchanged for the whole sequence of this
process's heads (``pipelines.context_parallel``), the method runs on those heads (``call.heads``;
dense through ``dispatch_attention_fn`` on the exchanged tensors), and the output is exchanged
back; under ring attention the processors run dense through diffusers (logged once).

Under ``torch.compile`` the attention step is one opaque op (``sparse_vdit::processor_attend``):
dynamo compiles the block around it (projections, norms, RoPE, the MLP) and never traces the
per-layer and per-step Python (the tracker, the method, the layout it picks, the launch), which
runs eagerly inside the op as it does without compile. The op's only per-layer input is a CPU
scalar tensor naming the processor, so nothing per-layer is guarded: diffusers' regional
compilation (``compile_repeated_blocks``) compiles one block for every layer, and a whole
compiled transformer is one graph for every step, branch and method phase.

Build processors with ``pipelines.apply_sparse_attention`` (or ``attach_sparse_attention`` for a
``set_attn_processor`` dict); a processor needs the transformer's ``StepTracker``.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from kernels.block_layout import BlockLayout
from kernels.helpers import warn_once
from kernels.limits import dtype_names, dtype_supported, head_dim_error, head_dim_supported
from pipelines.context_parallel import UlyssesGroup, local_heads
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext

if TYPE_CHECKING:
    from pipelines.step_tracking import StepTracker

__all__ = ["ProcessorConfig", "SparseAttnProcessorBase", "legacy_attention_heads"]

logger = logging.getLogger(__name__)

RING_DENSE = (
    "context parallelism with ring attention (ring_degree > 1) is on: sparse-vdit runs attention densely there, "
    "through diffusers' ring attention; use ContextParallelConfig(ulysses_degree=N) for sparse attention under "
    "context parallelism"
)
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
    precision: str | None = None  # the kernels' precision (apply_sparse_attention's precision)


class SparseAttnProcessorBase:
    """The shared attention step: call the method, else dense through ``dispatch_attention_fn``.

    ``_attention_backend`` / ``_parallel_config`` are the slots diffusers' ``set_attention_backend``
    and context-parallel setup write on every processor instance, as on the stock processors.
    """

    _attention_backend = None
    _parallel_config = None
    # A dense call of a key-padded forward attends each sample's real keys (a prefix, kv_lens[b])
    # with no mask, through the backends' unmasked kernels (flash / cuDNN) instead of SDPA's masked
    # one (measured: Mochi 480p ran at 0.83x of its stock step, which drops the padded text
    # itself; HunyuanVideo-1.5 720p could not take flash at all with its square mask). True where
    # the stock mask masks the padded query rows too (SDPA gives a fully masked row 0): those rows
    # are then zeroed; else they attend the real keys, as under a key-padding mask.
    dense_zeroes_padded_rows = False

    def __init__(self, config: ProcessorConfig, method: AttentionMethod, tracker: "StepTracker") -> None:
        self.config = config
        self.method = method
        self.tracker = tracker
        # Names this processor to the opaque op under torch.compile: a tensor, so dynamo guards its
        # metadata (the same for every layer), never its value.
        slot = next(_SLOTS)
        _PROCESSORS[slot] = weakref.ref(self)
        weakref.finalize(self, _PROCESSORS.pop, slot, None)
        self._slot = torch.tensor(slot, dtype=torch.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer {self.config.layer_index} {self.config.layer_name!r}, {self.method!r})"

    def stock_processor(self, attn, processor_cls=None):
        """The attention module's own stock processor (its ``_default_processor_cls``, or
        ``processor_cls`` for a module whose class has none, e.g. diffusers' generic ``Attention``)
        with this processor's attention backend and parallel config: for calls a family leaves stock
        (a cross-attention call on a module shared with self-attention)."""
        stock = (processor_cls or attn._default_processor_cls)()
        stock._attention_backend = self._attention_backend
        stock._parallel_config = self._parallel_config
        return stock

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None,
        *,
        mask_is_key_padding: bool = False,
        text_tokens: int = 0,
    ) -> torch.Tensor:
        """Self-attention of the joint sequence.

        Args:
            query, key, value: [B, S, H, D] (diffusers' layout; views are fine). Under context
                parallelism, this process's shard of the sequence.
            attn_mask: the stock processor's mask, passed unchanged to the dense path.
            mask_is_key_padding: the mask only marks padded keys, which the tracker already
                exposes as ``call.kv_lens`` (HunyuanVideo); any other mask makes the call dense.
            text_tokens: text tokens in this call's sequence (the shard's, under context
                parallelism: it places them in the whole sequence after the exchange).

        Returns [B, S, H, D].
        """
        if torch.compiler.is_compiling():
            return torch.ops.sparse_vdit.processor_attend(query, key, value, attn_mask, self._slot,
                                                          mask_is_key_padding, text_tokens)
        return self._attend_eager(query, key, value, attn_mask, mask_is_key_padding, text_tokens)

    def _attend_eager(self, query, key, value, attn_mask, mask_is_key_padding: bool, text_tokens: int) -> torch.Tensor:
        forward = self.tracker.current
        if forward is None:
            raise RuntimeError(
                f"{type(self).__name__} ran outside a tracked transformer forward: install processors with "
                "pipelines.apply_sparse_attention(pipe_or_transformer, method) (or attach_sparse_attention) "
                "rather than constructing them yourself"
            )
        if not self._asks_method(attn_mask, mask_is_key_padding):
            return self._dense(query, key, value, attn_mask)
        if self._parallel_config is not None or forward.head_shard is not None:
            return self._attend_context_parallel(forward, query, key, value, attn_mask, text_tokens)
        out = self._run_method(forward, query, key, value, self.config.num_heads)
        if out is not None:
            return out
        if mask_is_key_padding:
            return self._dense_on_real_keys(forward, query, key, value, attn_mask)
        return self._dense(query, key, value, attn_mask)

    def _dense_on_real_keys(self, forward: ForwardContext, query, key, value, attn_mask) -> torch.Tensor:
        """Dense attention of a key-padded call, [B, S, H, D] in and out: each sample's rows attend
        its leading ``forward.kv_lens`` keys, unmasked (one call when every sample has the same
        length, else one per sample): the stock masked attention of every row (padded rows zeroed
        where ``dense_zeroes_padded_rows``)."""
        if attn_mask is None or forward.text_valid_lens is None:
            return self._dense(query, key, value, attn_mask)
        ends = forward.token_layout.real_key_counts(forward.text_valid_lens)  # forward.kv_lens, on the host
        if len(set(ends)) == 1:
            out = self._dense(query, key[:, :ends[0]], value[:, :ends[0]], None)
        else:
            out = torch.cat([self._dense(query[b:b + 1], key[b:b + 1, :n], value[b:b + 1, :n], None)
                             for b, n in enumerate(ends)])
        return self._zero_padded_rows(out, forward)

    def _zero_padded_rows(self, out: torch.Tensor, forward: ForwardContext) -> torch.Tensor:
        """[B, S, H, D] dense output with the padded query rows zeroed where the stock mask zeroes
        them (``dense_zeroes_padded_rows``)."""
        if self.dense_zeroes_padded_rows and forward.key_padding_mask is not None:
            out = out.masked_fill(~forward.key_padding_mask[:, :, None, None], 0.0)
        return out

    def _run_method(
        self, forward: ForwardContext, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int
    ) -> torch.Tensor | None:
        """The method's attention on [B, S, h, D] inputs of ``forward.heads``: [B, S, h, D], or None (dense)."""
        call = AttentionCall(
            layer_index=self.config.layer_index,
            layer_name=self.config.layer_name,
            num_heads=num_heads,
            head_dim=self.config.head_dim,
            forward=forward,
            precision=self.config.precision,
        )
        q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        out = self.method(call, q, k, v)
        if out is None:
            if call.precision is None:
                return None  # dense through diffusers' dispatch (the caller)
            # A quantised precision covers the dense calls too (a method's dense steps, FullAttention):
            # our dense kernel over the real keys, padded rows zeroed where the stock mask zeroes them.
            return self._zero_padded_rows(call.attention_with_lse(q, k, v)[0].transpose(1, 2), forward)
        if isinstance(out, BlockLayout):
            self._check_layout_servable(q)
            if forward.head_shard is not None:
                out = self._local_layout(out, forward)
            out = call.block_sparse_attention(q, k, v, out)
        elif isinstance(out, torch.Tensor):
            self._check_output(out, q)
        else:
            raise TypeError(f"{self.method!r} returned a {type(out).__name__}: {METHOD_RESULT}")
        return out.transpose(1, 2)

    def _attend_context_parallel(self, forward: ForwardContext, query, key, value, attn_mask, text_tokens: int):
        """Ulysses: exchange the shards for this process's heads of the whole sequence, attend, exchange back."""
        group = forward.head_shard
        if not isinstance(group, UlyssesGroup):
            warn_once(_WARNED, RING_DENSE, RING_DENSE, log=logger.warning)
            return self._dense(query, key, value, attn_mask)
        split = group.token_split(forward.token_layout, query.shape[1], text_tokens)
        q, k, v = group.to_heads((query, key, value), split)
        out = self._run_method(forward, q, k, v, len(group.heads))
        if out is None:
            # Dense on the exchanged heads (diffusers' Ulysses would exchange again); the key
            # padding mask is rebuilt in the model's token order from the tracker's kv_lens.
            padding = forward.key_padding_mask
            mask = None if padding is None else padding[:, None, None, :]
            out = self._dense(q, k, v, mask, parallel=False)
        return group.to_sequence(out, split)

    def _local_layout(self, layout: BlockLayout, forward: ForwardContext) -> BlockLayout:
        try:
            return local_heads(layout, forward.head_shard.heads, forward.model.num_heads)
        except ValueError as exc:
            raise ValueError(f"{self.method!r} returned a BlockLayout it cannot serve here: {exc}") from None

    def _dense(self, query, key, value, attn_mask, *, parallel: bool = True) -> torch.Tensor:
        """Dense attention through diffusers: [B, S, H, D] in and out, with the stock mask; with
        diffusers' context parallelism unless ``parallel`` is False (tensors already exchanged)."""
        return dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config if parallel else None,
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

    @staticmethod
    def _asks_method(attn_mask, mask_is_key_padding: bool) -> bool:
        """Whether the method is asked at all (else the call is dense, as stock)."""
        return attn_mask is None or mask_is_key_padding


def legacy_attention_heads(attn, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None):
    """The preamble of the processors of diffusers' generic ``Attention`` (CogVideoX's, Allegro's),
    as stock: ``attention_mask`` prepared for SDPA ([B, H, Sq or 1, S]) and q, k, v projected from
    ``hidden_states`` [B, S, C] to [B, H, S, D], the layout their q/k norms and RoPE act on.

    Returns (query, key, value, attention_mask).
    """
    batch_size, sequence_length, _ = hidden_states.shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    return query, key, value, attention_mask


_SLOTS = itertools.count()
_PROCESSORS: dict[int, "weakref.ref[SparseAttnProcessorBase]"] = {}


@torch.library.custom_op("sparse_vdit::processor_attend", mutates_args=())
def _processor_attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor],
    slot: torch.Tensor,
    mask_is_key_padding: bool,
    text_tokens: int,
) -> torch.Tensor:
    """``SparseAttnProcessorBase.attend`` of the processor ``slot`` names, run eagerly (see the module
    docstring). [B, S, H, D] in, [B, S, H, D] out, contiguous and never an alias of an input."""
    ref = _PROCESSORS.get(int(slot.item()))
    processor = ref() if ref is not None else None
    if processor is None:
        raise RuntimeError("sparse-vdit: a compiled graph called a processor that no longer exists: compile again "
                           "after apply_sparse_attention (torch._dynamo.reset() clears the old graphs)")
    out = processor._attend_eager(query, key, value, attn_mask, mask_is_key_padding, text_tokens).contiguous()
    return out.clone() if any(out.data_ptr() == t.data_ptr() for t in (query, key, value)) else out


@_processor_attend.register_fake
def _(query, key, value, attn_mask, slot, mask_is_key_padding, text_tokens):
    return torch.empty_like(query, memory_format=torch.contiguous_format)


_WARNED: set = set()  # warn_once's registry: once per process
