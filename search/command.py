"""``sparse-vdit search``: search a Sparse-vDiT plan and write it.

    sparse-vdit search --out plan.json                                  # the shipped proxy, on this machine
    sparse-vdit search --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --device cuda --out plan.json
"""

from __future__ import annotations

import argparse
import sys

from search.candidates import DEFAULT_CANDIDATES
from search.cost_model import SOURCES
from search.greedy import DEFAULT_EPSILON, DEFAULT_LAMBDA

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, except where the help text explains a None default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS) and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "search",
        help="search a Sparse-vDiT plan (mode per step, layer and head) for a model and write it as JSON",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--model", default="proxy",
                   help="'proxy' (the shipped proxy model, no download), a local diffusers folder or a Hub repo id")
    p.add_argument("--out", required=True, help="where to write the plan (JSON)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a prompt to search with (repeatable; default: the model's built-in prompts)")
    p.add_argument("--seed", action="append", type=int, default=None, help="a seed (repeatable; default: 0)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps of each search run")
    p.add_argument("--height", type=int, default=None, help="video height (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="video width (default: the model's)")
    p.add_argument("--frames", type=int, default=None, help="video frames, 4k+1 (default: the model's)")
    p.add_argument("--lam", type=float, default=DEFAULT_LAMBDA, help="weight of the cost in the loss")
    p.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON,
                   help="a head takes its best mode only if its loss (normalised MSE + lam * cost) is below this")
    p.add_argument("--block-size", type=int, default=None, help="layout block size (default: 128 on a GPU, 16 on the CPU)")
    p.add_argument("--cost", choices=SOURCES, default="auto",
                   help="mode costs: measured kernel time (GPU), FLOP density, or auto (measured when on a GPU)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="model dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from pipelines.loading import load_pipeline
    from search.run import search_plan
    from sparse_vdit.plan_file import save_plan
    from sparse_vdit.plan_show import format_plan

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device here: use --device cpu", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    try:
        pipe, defaults = load_pipeline(args.model, device, dtype)
        kwargs = defaults.call_kwargs()
        for name, value in (("height", args.height), ("width", args.width), ("num_frames", args.frames)):
            if value is not None:
                kwargs[name] = value
        plan = search_plan(
            pipe, args.prompt or list(defaults.prompts), args.seed or [0], num_inference_steps=args.steps,
            candidates=DEFAULT_CANDIDATES, lam=args.lam, epsilon=args.epsilon, block_size=args.block_size,
            cost=args.cost, **kwargs,
        )
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = save_plan(plan, args.out)
    print(format_plan(plan, str(path)))
    print(f"plan written to {path} ({path.stat().st_size} bytes)")
    return 0

