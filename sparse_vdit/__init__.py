"""sparse-vdit: sparse attention for video diffusion transformers (Sparse-vDiT modes and AdaSpa).

Packages: ``sparse_vdit`` (Sparse-vDiT modes and runtime, and the token layout every package
shares), ``adaspa`` (AdaSpa), ``kernels`` (Triton kernels: ``kernels.attention``), ``search``
(offline plan search), ``pipelines`` (diffusers processors).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparse-vdit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

from sparse_vdit.token_layout import TokenLayout  # noqa: E402

__all__ = ["TokenLayout", "__version__"]
