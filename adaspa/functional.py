"""``adaspa_attention``: AdaSpa on plain tensors, for models outside diffusers.

    from adaspa import AdaSpaAttention, AdaSpaState, adaspa_attention
    config = AdaSpaAttention(sparsity=0.8)
    state = AdaSpaState()                               # one per generation and CFG branch
    for step in range(num_steps):
        ...
        out = adaspa_attention(q, k, v, state, step=step, num_steps=num_steps, config=config, layer=i)
"""

from __future__ import annotations

import functools
import numbers
from types import SimpleNamespace

import torch

from adaspa.config import AdaSpaAttention
from adaspa.runtime import attend
from adaspa.search import BlockGeometry
from adaspa.state import AdaSpaState
from kernels import attention as kernel_ops
from sparse_vdit.token_layout import TokenLayout

__all__ = ["adaspa_attention"]

DEFAULT_CONFIG = AdaSpaAttention()


def adaspa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: AdaSpaState,
    *,
    step: int,
    num_steps: int | None = None,
    config: AdaSpaAttention = DEFAULT_CONFIG,
    layer: int = 0,
    kv_lens: torch.Tensor | None = None,
    token_layout: TokenLayout | None = None,
) -> torch.Tensor:
    """AdaSpa self-attention of one layer at one denoising step.

    Args:
        q, k, v: [B, H, S, D] (any strides: diffusers-style [B, S, H, D] as ``x.transpose(1, 2)``),
            bf16 / fp16 / fp32, D from 16 to 256 (not a power of two: zero-padded in the kernels).
        state: this generation's and CFG branch's ``AdaSpaState`` (a fresh one per generation;
            cond and uncond passes run as separate calls need one each).
        step: 0-based denoising step.
        num_steps: steps in the generation (the schedule scales to it, ``adaspa.schedule``);
            None: ``config.schedule_steps`` (50 by default).
        config: the ``AdaSpaAttention``.
        layer: the attention layer's index (each layer keeps its own LSE and selection).
        kv_lens: [B] integer tensor or None: sample b's keys at index >= kv_lens[b] are padding.
        token_layout: where text and other tokens off the video grid sit (their rows and columns are
            always computed); None: no text.

    Returns out [B, H, S, D] in q's dtype. Warm-up steps compute dense attention with our kernel
    (``attention_with_lse``); search and sparse steps as ``AdaSpaAttention`` does in diffusers.
    """
    if not isinstance(state, AdaSpaState):
        raise TypeError(f"state must be an adaspa.AdaSpaState (one per generation and branch), got {type(state).__name__}")
    if not isinstance(config, AdaSpaAttention):
        raise TypeError(f"config must be an adaspa.AdaSpaAttention, got {type(config).__name__}")
    if q.dim() != 4:
        raise ValueError("q, k, v must be [B, H, S, D]; for [B, S, H, D] tensors pass x.transpose(1, 2)")
    _check_index("step", step, 0)
    _check_index("layer", layer, 0)
    if num_steps is not None:
        _check_index("num_steps", num_steps, 1)
        if step >= num_steps:
            raise ValueError(f"step {step} is outside a {num_steps}-step generation (steps are 0 .. {num_steps - 1})")
    num_steps = config.schedule_steps if num_steps is None else int(num_steps)
    plan = config.plan(int(step), num_steps, BlockGeometry.of(q.shape[2], config.block_size, token_layout))
    ops = SimpleNamespace(
        kv_lens=kv_lens,
        attention_with_lse=functools.partial(kernel_ops.attention_with_lse, kv_lens=kv_lens),
        block_attention_mass=functools.partial(kernel_ops.block_attention_mass, kv_lens=kv_lens),
        block_sparse_attention=functools.partial(kernel_ops.block_sparse_attention, kv_lens=kv_lens),
    )
    out = attend(config, plan, state, int(layer), q, k, v, ops)
    if out is None:
        out, _ = ops.attention_with_lse(q, k, v)
    return out


def _check_index(name: str, value, minimum: int) -> None:
    """``ValueError`` unless ``value`` is an integer >= ``minimum`` (a float or a bool is not one)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
