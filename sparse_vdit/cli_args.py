"""What every ``sparse-vdit`` command shares: its argument parser, the model / device / video
options, their validation, and one-line errors.

- Every option's help shows its default (``DefaultsFormatter``).
- Bad values are refused before anything is loaded, in one line (``error: ...``)
  with exit status 2: ``--device cuda`` without CUDA, a height or width that is not a multiple
  of 16, a frame count diffusers would round (frames must be 4k + 1), a non-positive count.
- ``run_command`` runs a command and turns the library's errors (``ValueError``, ``TypeError``,
  ``PlanError``, a missing file) into one ``error:`` line and exit status 2, no traceback
  (``SPARSE_VDIT_DEBUG=1`` shows the traceback).

Importing it imports neither torch nor diffusers (``--help`` stays fast); ``resolve_block_size``
reads the search's per-device default, which imports diffusers.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

__all__ = [
    "CliError",
    "DefaultsFormatter",
    "OneLineErrorParser",
    "SPATIAL_MULTIPLE",
    "TEMPORAL_FACTOR",
    "add_model_options",
    "add_video_options",
    "comma_floats",
    "comma_ints",
    "frame_count",
    "positive_int",
    "resolve_block_size",
    "resolve_device",
    "resolve_dtype",
    "run_command",
    "video_side",
]

# diffusers' video pipelines refuse a height or width that is not a multiple of 16 (Wan checks it
# outright; 16 = the VAE's 8x times the 2x2 patch; the proxy needs only 4 = its 2x latent map times
# the patch, but it runs through WanPipeline's check), and round num_frames to 1 + 4k (4x temporal VAE).
SPATIAL_MULTIPLE = 16
TEMPORAL_FACTOR = 4
DTYPES = ("float32", "bfloat16", "float16")


class CliError(Exception):
    """A bad command-line value: printed as one ``error:`` line, exit status 2."""


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, except where the help text explains a None default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS) and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) pointing at --help."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ value types
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def video_side(text: str) -> int:
    """A height or width: a positive multiple of 16; the error names the nearest valid values."""
    value = positive_int(text)
    if value % SPATIAL_MULTIPLE:
        low = value // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE
        options = " or ".join(str(v) for v in (low, low + SPATIAL_MULTIPLE) if v > 0)
        raise argparse.ArgumentTypeError(
            f"{value} is not a multiple of {SPATIAL_MULTIPLE} (the VAE's spatial factor times the 2x2 patch; "
            f"diffusers refuses it): use {options}"
        )
    return value


def frame_count(text: str) -> int:
    """A frame count diffusers keeps as given: 1 + 4k; the error names the nearest valid values."""
    value = positive_int(text)
    if (value - 1) % TEMPORAL_FACTOR:
        low = (value - 1) // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1
        raise argparse.ArgumentTypeError(
            f"{value} frames would be rounded by diffusers (frames must be 1 + {TEMPORAL_FACTOR}k for the "
            f"{TEMPORAL_FACTOR}x temporal VAE): use {low} or {low + TEMPORAL_FACTOR}"
        )
    return value


def _comma_list(convert: Callable, what: str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            values = [convert(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one of {what}")
        return values

    parse.__name__ = f"comma-separated {what}"
    return parse


comma_floats = _comma_list(float, "numbers")
comma_ints = _comma_list(int, "integers")


# ------------------------------------------------------------------ shared options
def add_model_options(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    """--model, --device, --dtype, --block-size."""
    from kernels.limits import Q_BLOCK_SIZES

    if model:
        p.add_argument("--model", default="proxy",
                       help="'proxy' (the shipped proxy model, no download), a local diffusers folder or a Hub repo id")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="model dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    p.add_argument("--block-size", type=int, choices=Q_BLOCK_SIZES, default=None,
                   help="layout block size of the sparse methods (default: 128 on a GPU, 16 on the CPU)")


def add_video_options(p: argparse.ArgumentParser, *, steps: int | None, frames: int | None = None,
                      height: int | None = None, width: int | None = None, what: str = "the model's") -> None:
    """--steps, --height, --width, --frames (None defaults: ``what``)."""
    p.add_argument("--steps", type=positive_int, default=steps,
                   help="denoising steps" + ("" if steps is not None else f" (default: {what})"))
    for name, kind, value in (("height", video_side, height), ("width", video_side, width)):
        p.add_argument(f"--{name}", type=kind, default=value,
                       help=f"video {name}, a multiple of {SPATIAL_MULTIPLE}" + ("" if value is not None else f" (default: {what})"))
    p.add_argument("--frames", type=frame_count, default=frames,
                   help=f"video frames, 1 + {TEMPORAL_FACTOR}k" + ("" if frames is not None else f" (default: {what})"))


# ------------------------------------------------------------------ resolution
def resolve_device(value: str | None) -> str:
    """The device to run on; CliError for CUDA where torch sees none."""
    import torch

    device = value or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise CliError(f"--device {device!r} is not a device: use cuda, cuda:N or cpu") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device}, but torch sees no CUDA device here: use --device cpu "
                       "(or install a CUDA build of torch on a GPU machine)")
    return device


def resolve_dtype(value: str | None, device: str):
    """The torch dtype: ``value``, else bfloat16 on a GPU and float32 on the CPU."""
    import torch

    return getattr(torch, value or ("bfloat16" if device.startswith("cuda") else "float32"))


def resolve_block_size(value: int | None, device: str) -> int:
    """``value``, else the device's default (``search.run.default_block_size``: 128 on a GPU, 16 on the CPU)."""
    from search.run import default_block_size  # imports diffusers: only commands that load a model get here

    return value or default_block_size(device)


# ------------------------------------------------------------------ running
def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``func(args)``, with bad values and the library's errors as one ``error:`` line and exit 2."""
    from sparse_vdit.plan import PlanError

    try:
        return func(args)
    except (CliError, PlanError, ValueError, TypeError, FileNotFoundError) as exc:
        if os.environ.get("SPARSE_VDIT_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
