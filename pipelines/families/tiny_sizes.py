"""Sizes every family's tiny random-weight test model shares.

2 heads x 64 head_dim (the kernels' tuned head dim; Allegro's keeps its 96, which its RoPE needs),
a 4-channel latent and 32-dim text embeddings: small enough for the CPU and the Triton interpreter.
"""

from __future__ import annotations

import torch

TINY_HEADS = 2
TINY_HEAD_DIM = 64
TINY_TEXT_DIM = 32
TINY_LATENT_CHANNELS = 4


def tiny_generator(seed: int) -> torch.Generator:
    """A CPU generator for tiny inputs (same seed, same inputs)."""
    return torch.Generator().manual_seed(seed)
