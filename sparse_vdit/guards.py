"""Checks that every attention method shares, written once (no diffusers import).

- ``check_kernel_dtype``: a method that runs the sparse kernels refuses a model computing in a
  dtype they do not serve (``kernels.limits.SUPPORTED_DTYPES``), saying to cast the pipeline.
- ``steps_or_assumed``: the number of denoising steps of a forward's generation, or, when the
  forward does not know it (a transformer called outside a pipeline), the number the method
  assumes, with one warning per method instance saying so.
"""

from __future__ import annotations

import torch

from kernels.helpers import warn_once
from kernels.limits import dtype_names, dtype_supported
from sparse_vdit.protocol import ForwardContext

__all__ = ["check_kernel_dtype", "steps_or_assumed", "UNKNOWN_STEPS"]

# The start of the warning of ``steps_or_assumed`` (filters match a warning's start).
UNKNOWN_STEPS = "the pipeline did not say how many denoising steps this generation has"


def check_kernel_dtype(dtype: torch.dtype, who: str, alternative: str = "") -> None:
    """``ValueError`` when the sparse kernels do not serve ``dtype``: "``who`` runs sparse in
    bfloat16, float16, float32, but this model computes in float64: cast ... ``alternative``"."""
    if dtype_supported(dtype):
        return
    raise ValueError(
        f"{who} runs sparse in {dtype_names()}, but this model computes in {str(dtype).replace('torch.', '')}: "
        "cast the pipeline or transformer first (e.g. pipe.to(torch.bfloat16))"
        + (f", or {alternative}" if alternative else "")
    )


def steps_or_assumed(forward: ForwardContext, assumed: int, who: str, why: str, seen: set) -> int:
    """``forward.num_steps``, or ``assumed`` with one warning per ``seen`` registry (the method's)
    when the forward does not know it; ``why`` says what the number is, e.g. "the number it was
    searched at"."""
    if forward.num_steps is not None:
        return forward.num_steps
    warn_once(
        seen, "unknown steps",
        f"{UNKNOWN_STEPS}: {who} is assuming {assumed}, {why}. Generate through the pipeline (its scheduler "
        "tells the step count), or call the transformer inside cache_context(name, num_inference_steps=N)",
        stacklevel=3,
    )
    return assumed
