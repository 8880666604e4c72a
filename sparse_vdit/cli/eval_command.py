"""``sparse-vdit eval``: dense against a Sparse-vDiT plan, AdaSpa and two baselines, on the same
prompts and seeds; a table on the screen, CSV / JSON / side-by-side videos / plots in ``--out``.

    sparse-vdit eval                                                   # the proxy, on this machine
    sparse-vdit eval --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --device cuda --plan plan.json --seed 0 --seed 1

``pipelines.loading.open_model`` (shared with the demo and ``search``) resolves the device, dtype
and block size, loads the model and says up front what changes how to read the numbers.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.loading import PROXY_CPU_METHOD_SETTINGS
from sparse_vdit.cli.evaluation.methods import default_method_names, method_names, parse_methods, registry
from sparse_vdit.cli.search_command import add_cost_option
from sparse_vdit.cli.args import (
    CPU_WARMUP_STEPS,
    DefaultsFormatter,
    add_model_options,
    add_video_options,
    comma_floats,
    comma_ints,
    non_negative_int,
    positive_int,
    seed,
)

__all__ = ["add_parser", "run"]


def _method_names(text: str) -> list[str]:
    try:
        return parse_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="evaluate dense vs a Sparse-vDiT plan, AdaSpa and two baselines: PSNR, SSIM, time, attention density",
        description="Dense attention against a Sparse-vDiT plan, AdaSpa and two baselines on the same prompts and "
                    "seeds: a table on the screen; CSV, JSON, side-by-side videos and plots in --out.",
        formatter_class=DefaultsFormatter,
    )
    add_model_options(p)
    add_video_options(p, steps=None, what="the model's: the proxy 8 steps of 17 x 64 x 96 on the CPU, 20 of "
                                          "81 x 128 x 192 on a GPU; other models 50 of 81 x 480 x 832")
    p.add_argument("--methods", type=_method_names, default=",".join(default_method_names()),
                   help=f"comma-separated, from {', '.join(method_names())}")
    p.add_argument("--plan", default=None,
                   help="a plan file, folder or Hub repo id (default: search one per --epsilons first, as the demo does)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a prompt to evaluate (repeatable; default: the model's built-in prompts)")
    p.add_argument("--seed", action="append", type=seed, default=None, help="a seed (repeatable; default: 0)")
    p.add_argument("--out", default="sparse-vdit-eval", help="folder for report.csv, report.json, videos/ and plots")
    for settings, entry in {e.settings: e for e in registry().values()}.items():  # each method's curve
        proxy_cpu = PROXY_CPU_METHOD_SETTINGS.get(settings)  # the proxy's own curve on the CPU
        p.add_argument(f"--{settings}", type=comma_floats if entry.kind is float else comma_ints,
                       default=list(entry.defaults) if proxy_cpu is None else None,
                       help=entry.help if proxy_cpu is None else
                       f"{entry.help} (default: {','.join(map(str, entry.defaults))}; the proxy on the CPU "
                       f"{','.join(map(str, proxy_cpu))}, where smaller values keep nearly every head Full)")
    p.add_argument("--search-prompt", action="append", default=None,
                   help="a prompt the plan is searched on (repeatable; default: the model's, not among the evaluated)")
    p.add_argument("--search-steps", type=positive_int, default=None, help="steps of the plan search (default: --steps)")
    add_cost_option(p)
    p.add_argument("--candidates", choices=("small", "default"), default=None,
                   help="plan search candidates: one per mode kind, or search.DEFAULT_CANDIDATES "
                        "(default: small on the CPU, default on a GPU)")
    p.add_argument("--warmup", type=non_negative_int, default=None,
                   help=f"steps of the untimed warm-up generation per method, 0 for none "
                        f"(default: --steps on a GPU, {CPU_WARMUP_STEPS} on the CPU)")
    p.add_argument("--compile", action="store_true",
                   help="diffusers' compile_repeated_blocks() on the transformer before dense and every method run "
                        "(fair speedups where kernel launches bound the step, as on the proxy); needs the full warm-up")
    p.add_argument("--precision", choices=("fp8",), default=None,
                   help="run every method with FP8 attention (apply_sparse_attention's precision; a GPU with FP8 "
                        "tensor cores) and add 'full' (FullAttention: dense FP8) to the methods; the dense reference "
                        "stays in the model's dtype (default: every method in the model's dtype)")
    p.add_argument("--no-videos", action="store_true", help="do not write the side-by-side videos")
    p.add_argument("--no-plots", action="store_true", help="do not write the plots")
    p.set_defaults(func=run)
    return p


def method_settings(args: argparse.Namespace, entry, defaults) -> list:
    """A method's curve: the command line's values, else the model's (GenerationDefaults.method_settings),
    else the method's own defaults."""
    given = getattr(args, entry.settings)
    if given is not None:
        return list(given)
    return list(defaults.method_settings.get(entry.settings, entry.defaults))


def run(args: argparse.Namespace) -> int:
    """Bad values and the library's errors raise; ``sparse_vdit.cli.args.run_command`` prints them in one line."""
    from sparse_vdit.cli.evaluation.methods import build_methods
    from pipelines.loading import generation_kwargs, open_model
    from sparse_vdit.cli.evaluation.plots import write_plots
    from sparse_vdit.cli.evaluation.report import legend
    from sparse_vdit.cli.evaluation.run import check_compile_warmup, evaluate
    import warnings

    from search.candidates import DEFAULT_CANDIDATES
    from search.run import DensePlanWarning, dense_plan_note
    from sparse_vdit.cli.args import check_output_dir

    from search.candidates import SMALL_CANDIDATES

    for name in args.methods:  # bad settings and the output folder: before the model loads
        entry = registry()[name]
        for value in getattr(args, entry.settings) or ():
            entry.check(value)
    check_output_dir(args.out, "--out")
    if args.warmup is not None and args.steps is not None:  # before the model loads, when both are given
        check_compile_warmup(args.compile, args.warmup, args.steps)
    session = open_model(args.model, args.device, args.dtype, args.block_size)
    pipe, defaults = session.pipe, session.defaults
    settings = {entry.settings: method_settings(args, entry, defaults) for entry in registry().values()}
    kwargs = generation_kwargs(defaults, args.height, args.width, args.frames)
    steps = args.steps or defaults.num_inference_steps
    prompts, seeds = args.prompt or list(defaults.prompts), args.seed or [0]
    small = args.candidates == "small" or (args.candidates is None and not session.on_gpu)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DensePlanWarning)  # said below, per plan
        methods = build_methods(
            pipe, args.methods, block_size=session.block_size, plan=args.plan,
            search_prompts=args.search_prompt or defaults.search_prompts, num_inference_steps=args.search_steps or steps,
            candidates=SMALL_CANDIDATES if small else DEFAULT_CANDIDATES, cost=args.cost, **settings, **kwargs,
        )
    if args.precision is not None:  # dense attention at that precision, against the stock reference
        from sparse_vdit.static_methods import FullAttention

        methods = {"full": FullAttention(), **methods}
    for setting, plan in methods.get("plan", {}).items():
        note = dense_plan_note(plan)
        if note:
            print(f"NOTE: plan ({setting}): {note} (--epsilons)", flush=True)
    default_warmup = steps if session.on_gpu or args.compile else CPU_WARMUP_STEPS
    warmup = args.warmup if args.warmup is not None else default_warmup
    report = evaluate(
        pipe, methods, prompts, seeds, num_inference_steps=steps, out_dir=args.out, warmup=warmup,
        videos=not args.no_videos, meta=dict(session.meta(args.model), compiled=args.compile),
        compile=args.compile, precision=args.precision, **kwargs,
    )
    print(report.table())
    print(legend(report))
    for line in report.findings():
        print(f"FINDING: {line}")
    if not args.no_plots:
        for line in write_plots(report, methods, pipe, args.out, prompt=prompts[0], seed=seeds[0],
                                num_inference_steps=steps, **kwargs):
            print(line)
    print(f"written to {args.out}/: report.csv, report.json" + ("" if args.no_videos else ", videos/"))
    sys.stdout.flush()
    return 0
