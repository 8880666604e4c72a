"""sparse-vdit: sparse attention for video diffusion transformers (Sparse-vDiT modes and AdaSpa).

Packages: ``sparse_vdit`` (the core, no diffusers import: the token layout every package shares,
the method protocol ``sparse_vdit.protocol``, the static methods ``sparse_vdit.static_methods``,
the Sparse-vDiT modes and plans: ``Plan``, ``load_plan``, ``save_plan``), ``adaspa`` (AdaSpa),
``kernels`` (Triton kernels: ``kernels.attention``), ``search`` (offline plan search),
``pipelines`` (diffusers adapters: one record per model family, processors, apply, step tracking).

The user-facing API is importable from here (``from sparse_vdit import apply_sparse_attention,
AdaSpaAttention, load_plan, search_plan, evaluate, ...``; see ``__all__``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparse-vdit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

# The public face: everything a user of diffusers needs, importable from here. Imported on first
# use, so ``import sparse_vdit`` stays light (no torch, no diffusers: ``sparse-vdit --help`` is
# fast) and the core never imports diffusers by itself.
_LAZY = {
    "TokenLayout": "sparse_vdit.token_layout",
    # apply a method to a pipeline (diffusers adapters)
    "apply_sparse_attention": "pipelines.apply",
    "attach_sparse_attention": "pipelines.apply",
    "token_layout_of": "pipelines.families",
    # methods
    "FullAttention": "sparse_vdit.static_methods",
    "StaticMaskAttention": "sparse_vdit.static_methods",
    "AttentionMethod": "sparse_vdit.protocol",
    "AdaSpaAttention": "adaspa.config",
    "AdaSpaConfig": "adaspa.config",  # the old name of AdaSpaAttention
    # Sparse-vDiT: modes, plans, the search
    "Full": "sparse_vdit.modes",
    "Skip": "sparse_vdit.modes",
    "Diagonal": "sparse_vdit.modes",
    "MultiDiagonal": "sparse_vdit.modes",
    "VerticalStripe": "sparse_vdit.modes",
    "Plan": "sparse_vdit.plan_core",
    "PlanError": "sparse_vdit.plan_core",
    "load_plan": "sparse_vdit.plan_file",
    "save_plan": "sparse_vdit.plan_file",
    "search_plan": "search.run",
    # evaluation
    "evaluate": "sparse_vdit.cli.evaluation",
    "build_methods": "sparse_vdit.cli.evaluation",
}

__all__ = ["__version__", *_LAZY]


_METHODS = "sparse_vdit.cli.evaluation.methods"  # the evaluated methods' registry: their files export names too


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name.startswith("_"):
        try:
            return importlib.import_module(_METHODS).exported(name)
        except AttributeError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
