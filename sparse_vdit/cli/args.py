"""What every ``sparse-vdit`` command shares: its argument parser, the model / device / video
options, their validation, and one-line errors.

- Every option's help shows its default (``DefaultsFormatter``).
- Bad values are refused before anything is loaded, in one line (``error: ...``)
  with exit status 2: ``--device cuda`` without CUDA, a device torch has but the kernels do not
  serve (meta, mps), a height or width that is not a multiple of 16 or past 4096, a frame count
  diffusers would round (frames must be 4k + 1), a non-positive count, a seed outside 64 bits, an
  output path that cannot be written (checked before a search, not after it) or that would
  overwrite a file the command did not write.
- ``run_command`` runs a command and turns the library's errors (``ValueError``, ``TypeError``,
  ``PlanError``, a file that cannot be read or written, running out of memory) into one ``error:``
  line and exit status 2, no traceback (``SPARSE_VDIT_DEBUG=1`` shows the traceback).

Importing it imports neither torch nor diffusers (``--help`` stays fast); ``resolve_block_size``
reads the search's per-device default, which imports diffusers.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Callable

from kernels.helpers import lazy_exports

__all__ = [
    "CliError",
    "DefaultsFormatter",
    "OneLineErrorParser",
    "SPATIAL_MULTIPLE",
    "TEMPORAL_FACTOR",
    "add_model_options",
    "add_video_options",
    "bounded_int",
    "check_output_dir",
    "check_output_file",
    "comma_floats",
    "comma_ints",
    "frame_count",
    "non_negative_int",
    "positive_int",
    "resolve_block_size",
    "resolve_device",
    "resolve_dtype",
    "run_command",
    "seed",
    "video_side",
]

# diffusers' video pipelines refuse a height or width that is not a multiple of 16 (Wan checks it
# outright; 16 = the VAE's 8x times the 2x2 patch; the proxy needs only 4 = its 2x latent map times
# the patch, but it runs through WanPipeline's check), and round num_frames to 1 + 4k (4x temporal VAE).
SPATIAL_MULTIPLE = 16
TEMPORAL_FACTOR = 4
DTYPES = ("float32", "bfloat16", "float16")
# Past these a generation cannot be allocated on any machine these models run on (a 4K side, 1025
# frames: over 10 million latent tokens at Wan's factors).
MAX_VIDEO_SIDE = 4096
MAX_FRAMES = 1025
SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 64 bits
CPU_WARMUP_STEPS = 1  # untimed warm-up steps on the CPU: nothing to compile, one step fills the caches


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
def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def bounded_int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum] (no maximum: None)."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is more than {maximum}")
        return value

    parse.__name__ = "integer"
    return parse


positive_int = bounded_int(1)
non_negative_int = bounded_int(0)


def seed(text: str) -> int:
    """A generator seed: an integer in 0 .. 2^64 - 1 (what ``torch.Generator.manual_seed`` takes)."""
    value = _integer(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 .. 2^64 - 1")
    return value


def video_side(text: str) -> int:
    """A height or width: a positive multiple of 16 up to 4096; the error names the nearest valid values."""
    value = bounded_int(1, MAX_VIDEO_SIDE)(text)
    if value % SPATIAL_MULTIPLE:
        low = value // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE
        options = " or ".join(str(v) for v in (low, low + SPATIAL_MULTIPLE) if v > 0)
        raise argparse.ArgumentTypeError(
            f"{value} is not a multiple of {SPATIAL_MULTIPLE} (the VAE's spatial factor times the 2x2 patch; "
            f"diffusers refuses it): use {options}"
        )
    return value


def frame_count(text: str) -> int:
    """A frame count diffusers keeps as given: 1 + 4k, up to 1025; the error names the nearest valid values."""
    value = bounded_int(1, MAX_FRAMES)(text)
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
    """--steps, --height, --width, --frames in one group; what a None default means (``what``) is
    said once, in the group's description."""
    group = p.add_argument_group("size and steps", f"Defaults: {what}.")
    unset = " (default: the model's, above)"
    group.add_argument("--steps", type=positive_int, default=steps,
                       help="denoising steps" + ("" if steps is not None else unset))
    for name, kind, value in (("height", video_side, height), ("width", video_side, width)):
        group.add_argument(f"--{name}", type=kind, default=value,
                           help=f"video {name}, a multiple of {SPATIAL_MULTIPLE}" + ("" if value is not None else unset))
    group.add_argument("--frames", type=frame_count, default=frames,
                       help=f"video frames, 1 + {TEMPORAL_FACTOR}k" + ("" if frames is not None else unset))


# ------------------------------------------------------------------ resolution
# --device, --dtype and --block-size resolve where the pipelines load (pipelines.loading, below
# this floor); their names are re-exported here, where every command's options live, on first use
# (pipelines.loading imports diffusers: --help must not).
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(("resolve_block_size", "resolve_device", "resolve_dtype"),
                                                             "pipelines.loading"), globals())


# ------------------------------------------------------------------ output paths
def _writable_folder(path: Path, option: str, shown: str) -> None:
    """CliError unless ``path``'s nearest existing ancestor is a folder we may write in (the
    folders below it are made when the command writes)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CliError(f"{option} {shown}: {ancestor} is a file, not a folder: choose a path in a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CliError(f"{option} {shown}: cannot write in {ancestor} (permission denied): choose another path")


def check_output_file(text: str, option: str, *, is_ours: Callable[[Path], bool], force: bool = False,
                      default_name: str = "plan.json") -> Path:
    """The file a command will write for ``option`` (a folder: its ``default_name``), checked before
    the command does its work. CliError for an empty value, a path that cannot be written, or an
    existing file that ``is_ours`` does not recognise (unless ``force``)."""
    if not text.strip():
        raise CliError(f"{option} is empty: give the plan's file name, e.g. {option} {default_name}")
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / default_name
    _writable_folder(path, option, text)
    if path.exists() and not force and not (path.is_file() and is_ours(path)):
        raise CliError(f"{option} {text} exists and is not a sparse-vdit plan: pass another {option}, or --force "
                       "to overwrite it")
    return path


def check_output_dir(text: str, option: str) -> Path:
    """The folder a command writes into for ``option``, checked before the command does its work."""
    if not text.strip():
        raise CliError(f"{option} is empty: give a folder, e.g. {option} sparse-vdit-out")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise CliError(f"{option} {text} is a file, not a folder: give a folder")
    _writable_folder(path / "report.json", option, text)
    return path


# ------------------------------------------------------------------ running
_NO_MEMORY = re.compile(r"can't allocate memory|out of memory|OutOfMemory", re.IGNORECASE)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``func(args)``, with bad values and the library's errors as one ``error:`` line and exit 2."""
    from sparse_vdit.plan import PlanError

    try:
        return func(args)
    except (CliError, PlanError, ValueError, TypeError, OSError, MemoryError, RuntimeError) as exc:
        if os.environ.get("SPARSE_VDIT_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and _NO_MEMORY.search(message)):
            first = message[:160] + ("..." if len(message) > 160 else "")
            message = (f"out of memory ({first}): lower --height, --width or --frames (or use a GPU with more memory; "
                       "SPARSE_VDIT_DEBUG=1 shows the traceback)")
        elif isinstance(exc, RuntimeError):
            raise  # a bug, not a bad value: the traceback is what helps
        print(f"error: {message}", file=sys.stderr)
        return 2
