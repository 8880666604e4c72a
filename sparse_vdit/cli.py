"""The ``sparse-vdit`` command. Subcommands are added by the features that need them."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    from sparse_vdit import __version__

    parser = argparse.ArgumentParser(
        prog="sparse-vdit",
        description="Sparse attention for video diffusion transformers in diffusers.",
    )
    parser.add_argument("--version", action="version", version=f"sparse-vdit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="run the attention kernels on a small video token layout and compare with the float64 reference",
    )
    check.add_argument("--frames", type=int, default=4)
    check.add_argument("--rows", type=int, default=8)
    check.add_argument("--cols", type=int, default=16)
    check.add_argument("--heads", type=int, default=2)
    check.add_argument("--head-dim", type=int, default=64)
    check.set_defaults(func=_check)
    demo = sub.add_parser(
        "demo",
        help="generate with the shipped proxy model (tiny WanPipeline), stock vs a sparse mode; time and PSNR",
    )
    demo.add_argument("--mode", choices=["diagonal", "multi_diagonal", "vertical_stripe", "full"], default="diagonal")
    demo.add_argument("--frames", type=int, default=9, help="video frames (4k+1)")
    demo.add_argument("--height", type=int, default=64)
    demo.add_argument("--width", type=int, default=96)
    demo.add_argument("--steps", type=int, default=4)
    demo.add_argument("--layers", type=int, default=2)
    demo.add_argument("--block-size", type=int, default=16, help="layout block (64 or 128 on a GPU)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    demo.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    demo.add_argument("--output-dir", default=None, help="write stock.mp4 and sparse.mp4 here")
    demo.set_defaults(func=_demo)
    plan = sub.add_parser("plan", help="inspect Sparse-vDiT plan files")
    plan_sub = plan.add_subparsers(dest="plan_command", metavar="PLAN_COMMAND", required=True)
    show = plan_sub.add_parser(
        "show", help="print a plan: its model, search settings, and the modes per step range and layer with densities"
    )
    show.add_argument("plan", help="a plan file, a folder holding plan.json, or a Hugging Face Hub repo id")
    show.add_argument("--filename", default="plan.json", help="the plan's file name in a folder or Hub repo")
    show.add_argument("--revision", default=None, help="Hub branch, tag or commit")
    show.set_defaults(func=_plan_show)
    from search.command import add_parser as add_search_parser

    add_search_parser(sub)
    return parser


def _plan_show(args: argparse.Namespace) -> int:
    from sparse_vdit.plan import PlanError
    from sparse_vdit.plan_file import load_plan
    from sparse_vdit.plan_show import format_plan

    try:
        plan = load_plan(args.plan, filename=args.filename, revision=args.revision)
    except PlanError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    print(format_plan(plan, str(args.plan)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(args)


def _check(args: argparse.Namespace) -> int:
    from sparse_vdit.selfcheck import run_selfcheck

    return run_selfcheck(args.frames, args.rows, args.cols, args.heads, args.head_dim)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
