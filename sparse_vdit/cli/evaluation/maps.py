"""Block attention maps of a dense generation, to show what each head attends next to the mode a
plan gave it (``plots.plot_attention_maps``)."""

from __future__ import annotations

from typing import Sequence

import torch

from sparse_vdit.protocol import AttentionCall, AttentionMethod

__all__ = ["AttentionMapRecorder", "record_attention_maps"]


class AttentionMapRecorder(AttentionMethod):
    """Records, at one step and for some layers, each head's attention mass per (query block, key
    block) ([H, QB, KB], summing to the block's rows; first sample of the batch, first call of the
    step), and returns None: the generation stays the stock dense one."""

    def __init__(self, step: int, layers: Sequence[int], block_size: int) -> None:
        self.step, self.layers, self.block_size = step, frozenset(layers), block_size
        self.maps: dict[int, torch.Tensor] = {}
        self.token_layout = None

    def __call__(self, call: AttentionCall, q, k, v):
        if call.step_index == self.step and call.layer_index in self.layers and call.layer_index not in self.maps:
            _, lse = call.attention_with_lse(q, k, v)
            self.maps[call.layer_index] = call.block_attention_mass(q, k, lse, self.block_size)[0].float().cpu()
            self.token_layout = call.token_layout
        return None


def record_attention_maps(pipe, prompt: str, seed: int, *, step: int, layers: Sequence[int], block_size: int,
                          num_inference_steps: int, **call_kwargs) -> AttentionMapRecorder:
    """Run one dense generation (latents only) with an ``AttentionMapRecorder``; returns it."""
    from pipelines.apply import apply_sparse_attention

    recorder = AttentionMapRecorder(step, layers, block_size)
    call_kwargs = {**call_kwargs, "output_type": "latent"}
    with apply_sparse_attention(pipe, recorder), torch.no_grad():
        pipe(prompt, num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed), **call_kwargs)
    return recorder
