"""The method protocol: what an attention method sees, and what it may return.

A *method* decides how the self-attention of one layer is computed; the processors in
``pipelines`` adapt diffusers' models to it, so every method runs on every model family without
touching the adapters. This module imports no diffusers. A method is any object with these four
members (subclass ``AttentionMethod`` to get the no-op defaults):

``validate(model: ModelInfo) -> None``
    Called once by ``apply_sparse_attention`` / ``attach_sparse_attention``. Raise ``ValueError``
    saying what differs when the method (e.g. an offline plan) was made for another model.

``new_state() -> Any``
    A fresh per-generation state object (AdaSpa's LSE cache and block selection, say). The step
    tracker makes one per generation and CFG branch, and hands it back as ``call.state``.

``begin_forward(forward: ForwardContext) -> Any``
    Runs eagerly (outside ``torch.compile``) before every transformer forward, when the step index,
    branch, token layout and key lengths of that forward are known. Do host-side, step-dependent
    work here: build block layouts, pick this step's plan. The return value is ``call.prepared`` in
    every attention call of that forward. May raise ``ValueError`` when it cannot serve the forward.

``__call__(call: AttentionCall, q, k, v) -> None | BlockLayout | Tensor``
    One attention call. ``q``, ``k``, ``v`` are [B, H, S, D] views (RoPE and norms applied, the
    model's joint token order, see ``call.token_layout``). Return one of:

    - ``None``: the processor computes dense attention through diffusers' ``dispatch_attention_fn``
      (so the user's attention backend applies);
    - a ``kernels.block_layout.BlockLayout`` over (S, S): the processor runs the block-sparse kernel
      on it, with the forward's key padding applied;
    - a Tensor [B, H, S, D] (q's dtype and device, any strides): the output, computed by the method.
      Compute it with the call's bound ops (``call.block_sparse_attention``,
      ``call.attention_with_lse``, ``call.block_attention_mass``), which apply the key padding.

    Key padding is never a method's job: padded keys (HunyuanVideo's padded text) are the keys at
    index >= ``call.kv_lens[b]``, and the processor and the bound ops exclude them. Anything else
    returned is an error naming the method.

Heads: q, k, v hold ``call.num_heads`` heads, the model's heads ``call.heads`` (all of them on one
GPU; under Ulysses context parallelism each process attends the whole sequence for its share of
the heads, e.g. ``range(20, 40)`` of 40). A returned ``BlockLayout`` may cover the call's heads, one
broadcast head, or every model head (the processor then keeps the call's heads). A method keeping
per-head results keeps them for ``call.heads``; ``call.gather_heads(x)`` collects a per-head value
from every process when a decision needs all heads of a layer (AdaSpa's head tiers).

torch.compile: ``__call__`` is traced. Everything it reads off ``call`` becomes a guard, so read
the step index there only if the computation really changes per step; otherwise decide in
``begin_forward`` and read the decision (``call.prepared``), which keeps one graph for all steps.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch

from kernels import attention as kernel_ops
from sparse_vdit.token_layout import TokenLayout

__all__ = [
    "ModelInfo",
    "HeadShard",
    "ForwardContext",
    "AttentionCall",
    "AttentionMethod",
    "check_model_matches",
    "model_mismatch",
    "public_config",
    "config_fingerprint",
    "config_differences",
]


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
        config_fingerprint: ``config_fingerprint`` of the transformer config ("" when unknown):
            models of one structure but other settings (RoPE, norms, sizes of other parts) differ
            only here. ``differences`` leaves it out.
        config: the transformer config, ``public_config`` form (None when unknown); not compared.
    """

    family: str
    num_layers: int
    num_heads: int
    head_dim: int
    layer_names: tuple[str, ...]
    text_position: str
    patch_size: tuple[int, int, int]
    config_fingerprint: str = ""
    config: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def differences(self, other: "ModelInfo") -> list[str]:
        """Human-readable list of the structural fields that differ ("num_heads: 12 here, 40 there")."""
        out = []
        for f in fields(self):
            if f.name in _NOT_STRUCTURE:
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                out.append(f"{f.name}: {mine!r} expected, {theirs!r} in this model")
        if not out and self.layer_names != other.layer_names:
            out.append("layer_names: the attention modules are named differently")
        return out


_NOT_STRUCTURE = frozenset({"layer_names", "config_fingerprint", "config"})


def model_mismatch(expected: ModelInfo, actual: ModelInfo, what: str = "this plan") -> str | None:
    """The message naming every structural difference between the model ``what`` was made for and
    ``actual``, and what to do; None when they match."""
    diffs = expected.differences(actual)
    if not diffs:
        return None
    return (
        f"{what} was made for a different model ({expected.family}, {expected.num_layers} layers x "
        f"{expected.num_heads} heads x {expected.head_dim}): " + "; ".join(diffs)
        + ". Make a plan for this model (or apply the plan to the model it was made for)."
    )


def check_model_matches(expected: ModelInfo, actual: ModelInfo, what: str = "this plan") -> None:
    """Raise ``ValueError`` naming every difference between the model ``what`` was made for and ``actual``."""
    message = model_mismatch(expected, actual, what)
    if message is not None:
        raise ValueError(message)


# ------------------------------------------------------------------------ model config
def public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A transformer config as plain JSON values: private keys (``_name_or_path``,
    ``_diffusers_version``, ``_class_name``, ... anything starting with "_") dropped, tuples as
    lists, anything JSON cannot hold as its ``str``. Idempotent."""
    public = {str(k): v for k, v in dict(config).items() if not str(k).startswith("_")}
    return json.loads(json.dumps(public, sort_keys=True, default=str))


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``public_config(config)``: equal configs, equal prints."""
    canonical = json.dumps(public_config(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """``"key: <expected value> expected, <value> in this model"`` for each config key whose value
    differs (both taken in ``public_config`` form; a key one side lacks shows as "absent")."""
    mine, theirs = public_config(expected), public_config(actual)

    def shown(config: dict, key: str) -> str:
        return repr(config[key]) if key in config else "absent"

    return [
        f"{key}: {shown(mine, key)} expected, {shown(theirs, key)} in this model"
        for key in sorted(set(mine) | set(theirs))
        if key not in mine or key not in theirs or mine[key] != theirs[key]
    ]


@dataclass(frozen=True)
class HeadShard:
    """The heads of every attention layer that this process computes, when a layer's heads are
    split across processes (Ulysses context parallelism: each process attends the whole sequence
    for some heads). The adapters make it (``pipelines.context_parallel``); methods read it through
    ``ForwardContext.head_shard`` / ``AttentionCall.heads``.

    Attributes:
        heads: the model's head ids computed here, ascending and contiguous, e.g. range(20, 40).
        num_heads: the model's heads per layer.
    """

    heads: range
    num_heads: int

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head values of this process's heads [..., len(heads)] -> every head's [..., num_heads],
        in head order. A collective: every process of the group calls it at the same point."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to gather heads from the other processes")


@dataclass(frozen=True)
class ForwardContext:
    """Everything per transformer forward that a method may read (``AttentionCall.forward``).

    Attributes:
        generation: 0-based count of generations since the tracker was installed.
        step_index: denoising step (0-based), shared by the CFG branches of a step.
        branch: CFG branch: 0 ("cond" or the batched "cond_uncond"), 1 ("uncond"), ...
        branch_name: the pipeline's cache-context name, or None.
        timestep: the forward's timestep (the largest, for per-token timesteps); for a model whose
            timestep rises toward clean data (MiniMax-H3), its noise level ``clean - t`` instead.
        num_steps: number of denoising steps when known (pipeline cache context or schedule).
        token_layout: layout of the joint attention sequence of this forward.
        kv_lens: [B] int32 on ``device``: per sample, the number of leading keys that are real
            (keys at index >= kv_lens[b] are padding); None when no key is padded.
        text_valid_lens: per sample, the number of real text tokens (host ints); None when none
            is padded.
        batch_size, device, dtype: of the attention inputs.
        model: the ``ModelInfo`` of the transformer.
        state: the method's per-generation state of this branch.
        prepared: what the method's ``begin_forward`` returned.
        head_shard: the heads this process computes when heads are split across processes
            (Ulysses context parallelism), else None (every head here).
    """

    generation: int
    step_index: int
    branch: int
    branch_name: str | None
    timestep: float
    num_steps: int | None
    token_layout: TokenLayout
    kv_lens: torch.Tensor | None
    text_valid_lens: tuple[int, ...] | None
    batch_size: int
    device: torch.device
    dtype: torch.dtype
    model: ModelInfo
    state: Any = None
    prepared: Any = None
    head_shard: HeadShard | None = None

    @property
    def heads(self) -> range:
        """The model's heads this process computes: all of them, or the shard's."""
        return range(self.model.num_heads) if self.head_shard is None else self.head_shard.heads

    @property
    def key_padding_mask(self) -> torch.Tensor | None:
        """[B, S] bool, True = a real key; derived from ``kv_lens`` (None when no key is padded)."""
        if self.kv_lens is None:
            return None
        keys = torch.arange(self.token_layout.seq_len, device=self.kv_lens.device)
        return keys.unsqueeze(0) < self.kv_lens.unsqueeze(1)


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
        num_heads: heads in this call's q, k, v (``len(heads)``: the layer's heads, or this
            process's share of them under Ulysses context parallelism).
        head_dim: of this layer.
        forward: the ``ForwardContext`` of the transformer forward this call belongs to.
        precision: the kernels' precision for this call's attention (``apply_sparse_attention``'s
            ``precision``): None computes in the inputs' dtype, "fp8" quantises (``kernels.fp8``);
            the bound kernel ops below pass it on.
    """

    layer_index: int
    layer_name: str
    num_heads: int
    head_dim: int
    forward: ForwardContext
    precision: str | None = None

    @property
    def step_index(self) -> int:
        """Denoising step of this forward, 0-based (both CFG branches of one step share it)."""
        return self.forward.step_index

    @property
    def heads(self) -> range:
        """The model's head ids of this call's heads, in order (q[:, i] is head ``heads[i]``):
        ``range(num_heads)``, or this process's share under Ulysses context parallelism."""
        shard = self.forward.head_shard
        return range(self.num_heads) if shard is None else shard.heads

    def gather_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head values of this call's heads [..., num_heads] -> the layer's every head [..., H]:
        ``x`` itself on one process; under Ulysses context parallelism an all-gather over the
        processes sharing the layer (a collective: call it at the same point on every process)."""
        shard = self.forward.head_shard
        return x if shard is None else shard.gather(x)

    @property
    def branch(self) -> int:
        """CFG branch of this forward: 0 for the first call of a step ("cond"), 1 for "uncond"; 0 when batched."""
        return self.forward.branch

    @property
    def token_layout(self) -> TokenLayout:
        return self.forward.token_layout

    @property
    def kv_lens(self) -> torch.Tensor | None:
        """[B] int32: per sample, the number of leading real keys; None when no key is padded."""
        return self.forward.kv_lens

    @property
    def key_padding_mask(self) -> torch.Tensor | None:
        """[B, S] bool, True = a real key (derived from ``kv_lens``); None when all keys are real."""
        return self.forward.key_padding_mask

    @property
    def state(self) -> Any:
        """The method's per-generation state for this branch (``method.new_state()``)."""
        return self.forward.state

    @property
    def prepared(self) -> Any:
        """What ``method.begin_forward`` returned for this forward."""
        return self.forward.prepared

    # The kernel ops with this forward's key padding and the processors' precision applied
    # (``kernels.attention``, kv_lens and precision bound).
    def block_sparse_attention(self, q, k, v, layout, *, return_lse: bool = False):
        """``kernels.attention.block_sparse_attention`` on [B, H, S, D] q, k, v, padded keys excluded."""
        return kernel_ops.block_sparse_attention(q, k, v, layout, return_lse=return_lse, kv_lens=self.kv_lens,
                                                 precision=self.precision)

    def attention_with_lse(self, q, k, v):
        """``kernels.attention.attention_with_lse``, padded keys excluded: (out [B, H, S, D], lse [B, H, S])."""
        return kernel_ops.attention_with_lse(q, k, v, kv_lens=self.kv_lens, precision=self.precision)

    def block_attention_mass(self, q, k, lse, block_size: int, *, return_lse: bool = False):
        """``kernels.attention.block_attention_mass``, padded keys excluded: mass [B, H, QB, KB]."""
        return kernel_ops.block_attention_mass(q, k, lse, block_size, return_lse=return_lse, kv_lens=self.kv_lens)


class AttentionMethod:
    """Base class with the protocol's defaults: accepts every model, no state, dense everywhere."""

    def validate(self, model: ModelInfo) -> None:
        return None

    def new_state(self) -> Any:
        return None

    def begin_forward(self, forward: ForwardContext) -> Any:
        return None

    def __call__(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
