"""sparse-vdit: sparse attention for video diffusion transformers (Sparse-vDiT modes and AdaSpa).

Packages: ``sparse_vdit`` (the core, no diffusers import: the token layout every package shares,
the method protocol ``sparse_vdit.protocol``, the static methods ``sparse_vdit.static_methods`` and
the Sparse-vDiT modes), ``adaspa`` (AdaSpa), ``kernels`` (Triton kernels: ``kernels.attention``),
``search`` (offline plan search), ``pipelines`` (diffusers adapters: one record per model family,
processors, apply, step tracking).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparse-vdit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

from sparse_vdit.token_layout import TokenLayout  # noqa: E402

__all__ = ["TokenLayout", "__version__"]
