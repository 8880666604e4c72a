"""diffusers integration of sparse-vdit: attention processors, one-call apply, step tracking.

    from pipelines import apply_sparse_attention, FullAttention, StaticMaskAttention
    handle = apply_sparse_attention(pipe, StaticMaskAttention(mask_mod))   # or pipe.transformer
    ...
    handle.remove()

Supported transformers: every family in ``pipelines.families.FAMILIES`` (Wan 2.1 / 2.2 and its
variants, HunyuanVideo and 1.5 and Framepack, CogVideoX and ConsisID, LTX-Video, LTX-2, Mochi,
Kandinsky 5; README "Supported models"), and subclasses, one record each in ``pipelines.families``.
A method is any object following the protocol in ``sparse_vdit.protocol`` (subclass
``AttentionMethod``); the protocol and the static methods are re-exported here.
"""

from kernels.helpers import lazy_exports

# Loaded on first use: ``import pipelines`` imports neither torch nor diffusers.
_EXPORTS = {
    "apply_sparse_attention": "pipelines.apply",
    "attach_sparse_attention": "pipelines.apply",
    "SparseAttentionHandle": "pipelines.apply",
    "AttachedAttention": "pipelines.apply",
    "AttentionMethod": "sparse_vdit.protocol",
    "AttentionCall": "sparse_vdit.protocol",
    "ForwardContext": "sparse_vdit.protocol",
    "ModelInfo": "sparse_vdit.protocol",
    "check_model_matches": "sparse_vdit.protocol",
    "FullAttention": "sparse_vdit.static_methods",
    "StaticMaskAttention": "sparse_vdit.static_methods",
    "StepTracker": "pipelines.step_tracking",
    "ForwardInputs": "pipelines.step_tracking",
    "Family": "pipelines.families",
    "family_of": "pipelines.families",
    "model_info": "pipelines.families",
    "token_layout_of": "pipelines.families",
    "ProcessorConfig": "pipelines.processors",
    "SparseAttnProcessorBase": "pipelines.processors",
    "WanSparseAttnProcessor": "pipelines.families.wan",
    "HunyuanVideoSparseAttnProcessor": "pipelines.families.hunyuan_video",
    "CogVideoXSparseAttnProcessor": "pipelines.families.cogvideox",
    "HunyuanVideo15SparseAttnProcessor": "pipelines.families.hunyuan_video15",
    "LTXVideoSparseAttnProcessor": "pipelines.families.ltx",
    "LTX2VideoSparseAttnProcessor": "pipelines.families.ltx2",
    "MochiSparseAttnProcessor": "pipelines.families.mochi",
    "Kandinsky5SparseAttnProcessor": "pipelines.families.kandinsky5",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
