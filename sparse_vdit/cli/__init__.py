"""The top floor: the ``sparse-vdit`` command, its subcommands and the evaluation they run.

Nothing in the floors below imports from here (``tests/test_floors.py``). Modules: ``args`` (what
every command shares: options, validation, one-line errors), ``demo``, ``eval_command``,
``search_command``, ``check`` (the commands), ``evaluation`` (``evaluate``, the methods' registry,
metrics, reports, plots).

    sparse-vdit demo                      the main job: the proxy model, dense vs Sparse-vDiT vs AdaSpa
    sparse-vdit eval [--model ...]        dense vs a plan, AdaSpa and two baselines: PSNR, SSIM, time, density
    sparse-vdit search --out plan.json    search a Sparse-vDiT plan
    sparse-vdit plan show PLAN            print a plan
    sparse-vdit check                     the kernels against the float64 reference

Every option's help shows its default; bad values and the library's errors print one ``error:``
line and exit with status 2 (``sparse_vdit.cli.args``).
"""

from __future__ import annotations

import argparse

from kernels.limits import MAX_HEAD_DIM, MIN_HEAD_DIM
from sparse_vdit.cli.args import CliError, DefaultsFormatter, OneLineErrorParser, bounded_int, run_command

# The check's float64 reference holds [heads, S, S] scores: keep S = frames x rows x cols small.
CHECK_MAX_TOKENS = 4096


def _build_parser() -> argparse.ArgumentParser:
    from sparse_vdit import __version__

    parser = OneLineErrorParser(
        prog="sparse-vdit",
        description="Sparse attention for video diffusion transformers in diffusers.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sparse-vdit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="run the attention kernels on a small video token layout and compare with the float64 reference",
        description="Run the three attention kernels (or their PyTorch path without CUDA) on a small video token "
                    "layout and compare each with the float64 reference: a quick check of an installation.",
        formatter_class=DefaultsFormatter,
    )
    check.add_argument("--frames", type=bounded_int(1, 64), default=4, help="latent frames of the token layout")
    check.add_argument("--rows", type=bounded_int(1, 64), default=8, help="latent rows per frame")
    check.add_argument("--cols", type=bounded_int(1, 64), default=16, help="latent columns per frame")
    check.add_argument("--heads", type=bounded_int(1, 16), default=2, help="attention heads")
    check.add_argument("--head-dim", type=bounded_int(MIN_HEAD_DIM, MAX_HEAD_DIM), default=64,
                       help="head dimension (not a power of two: zero-padded to the next one)")
    check.set_defaults(func=_check)

    from sparse_vdit.cli.demo import add_parser as add_demo_parser
    from sparse_vdit.cli.eval_command import add_parser as add_eval_parser
    from sparse_vdit.cli.search_command import add_parser as add_search_parser

    add_demo_parser(sub)
    add_eval_parser(sub)
    add_search_parser(sub)
    plan = sub.add_parser("plan", help="inspect Sparse-vDiT plan files", formatter_class=DefaultsFormatter,
                          description="Inspect Sparse-vDiT plan files (plan show).")
    plan_sub = plan.add_subparsers(dest="plan_command", metavar="PLAN_COMMAND", required=True)
    show = plan_sub.add_parser(
        "show", help="print a plan: its model, search settings, and the modes per step range and layer with densities",
        description="Print a plan: its model, search settings and calibration, then per step range a line per layer "
                    "with its mode counts and attention density.",
        formatter_class=DefaultsFormatter,
    )
    show.add_argument("plan", help="a plan file, a folder holding plan.json, or a Hugging Face Hub repo id")
    show.add_argument("--filename", default="plan.json", help="the plan's file name in a folder or Hub repo")
    show.add_argument("--revision", default=None, help="Hub branch, tag or commit (default: the default branch)")
    show.set_defaults(func=_plan_show)
    return parser


def _plan_show(args: argparse.Namespace) -> int:
    from sparse_vdit.plan_file import load_plan
    from sparse_vdit.plan_show import format_plan

    plan = load_plan(args.plan, filename=args.filename, revision=args.revision)
    print(format_plan(plan, str(args.plan)))
    return 0


def _check(args: argparse.Namespace) -> int:
    from sparse_vdit.cli.check import run_selfcheck

    tokens = args.frames * args.rows * args.cols
    if tokens > CHECK_MAX_TOKENS:
        raise CliError(f"--frames x --rows x --cols = {tokens:,} tokens, more than the {CHECK_MAX_TOKENS:,} the float64 "
                       "reference holds comfortably: lower one of them")

    return run_selfcheck(args.frames, args.rows, args.cols, args.heads, args.head_dim)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return run_command(args.func, args)
