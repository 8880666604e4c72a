"""AdaSpa: online, blockified top-k sparse attention with LSE-cached search (arXiv 2502.21079).

    from adaspa import AdaSpaAttention
    from pipelines import apply_sparse_attention
    handle = apply_sparse_attention(pipe, AdaSpaAttention(sparsity=0.8))   # diffusers

    from adaspa import AdaSpaState, adaspa_attention                    # any model
    out = adaspa_attention(q, k, v, state, step=i, num_steps=50, layer=j)

``AdaSpaConfig`` is the old name of ``AdaSpaAttention`` (kept). Modules: ``config`` (the method
and its settings), ``schedule`` (which step does what),
``search`` (mass -> top-k -> tiers -> layout), ``state`` (per generation and branch: LSE cache and
selections), ``runtime`` (one call), ``functional`` (plain tensors), ``hybrid`` (a searched plan's
stable cells with AdaSpa for the rest). No diffusers import.
"""

from kernels.helpers import lazy_exports

# Loaded on first use: ``import adaspa`` imports no torch.
_EXPORTS = {"AdaSpaAttention": "adaspa.config", "AdaSpaConfig": "adaspa.config", "AdaSpaState": "adaspa.state",
            "adaspa_attention": "adaspa.functional", "HybridAttention": "adaspa.hybrid"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
