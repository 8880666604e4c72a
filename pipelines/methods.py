"""Where the method protocol and the static methods used to live: they are in the core now.

The protocol (``AttentionMethod``, ``AttentionCall``, ``ForwardContext``, ``ModelInfo``,
``check_model_matches``) is ``sparse_vdit.protocol``; ``FullAttention`` and
``StaticMaskAttention`` are ``sparse_vdit.static_methods``. This module re-exports them so
``from pipelines.methods import ...`` keeps working.
"""

from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo, check_model_matches
from sparse_vdit.static_methods import FullAttention, MaskMod, StaticMaskAttention

__all__ = [
    "ModelInfo",
    "AttentionCall",
    "AttentionMethod",
    "ForwardContext",
    "FullAttention",
    "StaticMaskAttention",
    "MaskMod",
    "check_model_matches",
]
