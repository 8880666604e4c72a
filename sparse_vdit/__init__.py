"""sparse-vdit: sparse attention for video diffusion transformers (Sparse-vDiT modes and AdaSpa).

Packages: ``sparse_vdit`` (the core, no diffusers import: the token layout every package shares,
the method protocol ``sparse_vdit.protocol``, the static methods ``sparse_vdit.static_methods``,
the Sparse-vDiT modes and plans: ``Plan``, ``load_plan``, ``save_plan``), ``adaspa`` (AdaSpa),
``kernels`` (Triton kernels: ``kernels.attention``), ``search`` (offline plan search),
``pipelines`` (diffusers adapters: one record per model family, processors, apply, step tracking).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparse-vdit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

from sparse_vdit.token_layout import TokenLayout  # noqa: E402

# Imported on first use, so ``import sparse_vdit`` stays light.
_LAZY = {
    "Plan": "sparse_vdit.plan",
    "PlanError": "sparse_vdit.plan",
    "load_plan": "sparse_vdit.plan_file",
    "save_plan": "sparse_vdit.plan_file",
}

__all__ = ["TokenLayout", "Plan", "PlanError", "load_plan", "save_plan", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
