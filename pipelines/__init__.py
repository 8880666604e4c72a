"""diffusers integration of sparse-vdit: attention processors, one-call apply, step tracking.

    from pipelines import apply_sparse_attention, FullAttention, StaticMaskAttention
    handle = apply_sparse_attention(pipe, StaticMaskAttention(mask_mod))   # or pipe.transformer
    ...
    handle.remove()

Supported transformers: every family in ``pipelines.families.FAMILIES`` (Wan 2.1 / 2.2 and its
variants, HunyuanVideo and 1.5 and Framepack, CogVideoX and ConsisID, LTX-Video, LTX-2, Mochi,
Kandinsky 5; README "Supported models"), and subclasses, one record each in ``pipelines.families``. A method is any object following the protocol in
``sparse_vdit.protocol`` (subclass ``AttentionMethod``); the protocol and the static methods are
re-exported here.
"""

from pipelines.apply import AttachedAttention, SparseAttentionHandle, apply_sparse_attention, attach_sparse_attention
from pipelines.families import Family, family_of, model_info, token_layout_of
from pipelines.families.cogvideox import CogVideoXSparseAttnProcessor
from pipelines.families.hunyuan_video import HunyuanVideoSparseAttnProcessor
from pipelines.families.hunyuan_video15 import HunyuanVideo15SparseAttnProcessor
from pipelines.families.kandinsky5 import Kandinsky5SparseAttnProcessor
from pipelines.families.ltx import LTXVideoSparseAttnProcessor
from pipelines.families.ltx2 import LTX2VideoSparseAttnProcessor
from pipelines.families.mochi import MochiSparseAttnProcessor
from pipelines.families.wan import WanSparseAttnProcessor
from pipelines.processors import ProcessorConfig, SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs, StepTracker
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo, check_model_matches
from sparse_vdit.static_methods import FullAttention, StaticMaskAttention

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
    "ForwardInputs",
    "Family",
    "family_of",
    "model_info",
    "token_layout_of",
    "ProcessorConfig",
    "SparseAttnProcessorBase",
    "WanSparseAttnProcessor",
    "HunyuanVideoSparseAttnProcessor",
    "CogVideoXSparseAttnProcessor",
    "HunyuanVideo15SparseAttnProcessor",
    "LTXVideoSparseAttnProcessor",
    "LTX2VideoSparseAttnProcessor",
    "MochiSparseAttnProcessor",
    "Kandinsky5SparseAttnProcessor",
]
