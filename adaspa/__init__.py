"""AdaSpa: online, blockified top-k sparse attention with LSE-cached search (arXiv 2502.21079).

    from adaspa import AdaSpaConfig
    from pipelines import apply_sparse_attention
    handle = apply_sparse_attention(pipe, AdaSpaConfig(sparsity=0.8))   # diffusers

    from adaspa import AdaSpaState, adaspa_attention                    # any model
    out = adaspa_attention(q, k, v, state, step=i, num_steps=50, layer=j)

Modules: ``config`` (the settings and the diffusers method), ``schedule`` (which step does what),
``search`` (mass -> top-k -> tiers -> layout), ``state`` (per generation and branch: LSE cache and
selections), ``runtime`` (one call), ``functional`` (plain tensors). No diffusers import.
"""

from adaspa.config import AdaSpaConfig
from adaspa.functional import adaspa_attention
from adaspa.state import AdaSpaState

__all__ = ["AdaSpaConfig", "AdaSpaState", "adaspa_attention"]
