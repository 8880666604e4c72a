"""Deprecated: where the method protocol and the static methods used to live (nothing in
sparse-vdit imports it; it warns once when imported).

The protocol (``AttentionMethod``, ``AttentionCall``, ``ForwardContext``, ``ModelInfo``,
``check_model_matches``) is ``sparse_vdit.protocol``; ``FullAttention`` and
``StaticMaskAttention`` are ``sparse_vdit.static_methods`` (all also ``from pipelines import ...``).
This module re-exports them so ``from pipelines.methods import ...`` keeps working.
"""

import warnings

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

warnings.warn(
    "pipelines.methods is deprecated: import the protocol from sparse_vdit.protocol and FullAttention / "
    "StaticMaskAttention from sparse_vdit (or pipelines)",
    DeprecationWarning,
    stacklevel=2,
)
