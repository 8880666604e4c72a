"""diffusers integration of sparse-vdit: attention processors, one-call apply, step tracking.

    from pipelines import apply_sparse_attention, FullAttention, StaticMaskAttention
    handle = apply_sparse_attention(pipe, StaticMaskAttention(mask_mod))   # or pipe.transformer
    ...
    handle.remove()

Supported transformers: Wan 2.1 / 2.2, HunyuanVideo, CogVideoX / CogVideoX1.5. A method is any
object following the protocol in ``pipelines.methods`` (subclass ``AttentionMethod``).
"""

from pipelines.apply import AttachedAttention, SparseAttentionHandle, apply_sparse_attention, attach_sparse_attention
from pipelines.methods import (
    AttentionCall,
    AttentionMethod,
    FullAttention,
    ModelInfo,
    StaticMaskAttention,
    check_model_matches,
)
from pipelines.processors import (
    CogVideoXSparseAttnProcessor,
    HunyuanVideoSparseAttnProcessor,
    WanSparseAttnProcessor,
)
from pipelines.step_tracking import ForwardContext, StepTracker

__all__ = [
    "apply_sparse_attention",
    "attach_sparse_attention",
    "SparseAttentionHandle",
    "AttachedAttention",
    "AttentionMethod",
    "AttentionCall",
    "ForwardContext",
    "ModelInfo",
    "FullAttention",
    "StaticMaskAttention",
    "check_model_matches",
    "StepTracker",
    "WanSparseAttnProcessor",
    "HunyuanVideoSparseAttnProcessor",
    "CogVideoXSparseAttnProcessor",
]
