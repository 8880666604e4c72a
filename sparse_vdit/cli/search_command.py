"""``sparse-vdit search``: search a Sparse-vDiT plan and write it.

    sparse-vdit search --out plan.json                                  # the shipped proxy, on this machine
    sparse-vdit search --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --device cuda --out plan.json
"""

from __future__ import annotations

import argparse

from pipelines.loading import PROXY_CPU_SEARCH_EPSILON
from search.defaults import COST_SOURCES, DEFAULT_EPSILON, DEFAULT_LAMBDA
from sparse_vdit.cli.args import DefaultsFormatter, add_model_options, add_video_options, seed


def add_cost_option(p: argparse.ArgumentParser) -> None:
    """--cost, shared by the commands that search plans (search, eval)."""
    p.add_argument("--cost", choices=COST_SOURCES, default="auto",
                   help="mode costs of the plan search: measured kernel time (GPU), FLOP density, or auto (measured "
                        "when on a GPU). At toy sizes a GPU is launch-bound and every measured cost exceeds dense's, "
                        "so the search keeps heads Full: use flops there to judge quality per density")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "search",
        help="search a Sparse-vDiT plan (mode per step, layer and head) for a model and write it as JSON",
        description="Search a Sparse-vDiT plan: generate each prompt and seed with every candidate mode tried per "
                    "step, layer and head, keep the cheapest whose error is below epsilon, and write the plan as "
                    "JSON (apply it with load_plan and apply_sparse_attention).",
        formatter_class=DefaultsFormatter,
    )
    add_model_options(p)
    p.add_argument("--out", required=True, help="where to write the plan (JSON; a folder: its plan.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out even when it is not a plan file")
    p.add_argument("--prompt", action="append", default=None,
                   help="a prompt to search with (repeatable; default: the model's built-in prompts)")
    p.add_argument("--seed", action="append", type=seed, default=None, help="a seed (repeatable; default: 0)")
    add_video_options(p, steps=None)
    p.add_argument("--lam", type=float, default=DEFAULT_LAMBDA, help="weight of the cost in the loss")
    p.add_argument("--epsilon", type=float, default=None,
                   help="a head takes its best mode only if its loss (normalised MSE + lam * cost) is below this; "
                        f"larger, sparser (default: {DEFAULT_EPSILON:g}; the proxy on the CPU {PROXY_CPU_SEARCH_EPSILON:g}, "
                        "where smaller ones keep nearly every head Full)")
    add_cost_option(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Bad values and the library's errors raise; ``sparse_vdit.cli.args.run_command`` prints them in one line."""
    import warnings

    from pipelines.loading import generation_kwargs, open_model
    from search.run import DensePlanWarning, dense_plan_note, search_plan
    from sparse_vdit.cli.args import check_output_file
    from sparse_vdit.plan_file import looks_like_plan, save_plan
    from sparse_vdit.plan_show import format_plan

    from search.candidates import DEFAULT_CANDIDATES
    from search.greedy import check_lambda_epsilon

    # bad values and the output path: before the model loads
    check_lambda_epsilon(args.lam, DEFAULT_EPSILON if args.epsilon is None else args.epsilon)
    out = check_output_file(args.out, "--out", is_ours=looks_like_plan, force=args.force)
    session = open_model(args.model, args.device, args.dtype, args.block_size)  # says its notes before the bars
    epsilon = args.epsilon if args.epsilon is not None else (session.defaults.search_epsilon or DEFAULT_EPSILON)
    print(f"searching with epsilon {epsilon:g}, lam {args.lam:g}", flush=True)
    kwargs = generation_kwargs(session.defaults, args.height, args.width, args.frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DensePlanWarning)  # said below, after the table
        plan = search_plan(
            session.pipe, args.prompt or list(session.defaults.prompts), args.seed or [0],
            num_inference_steps=args.steps or session.defaults.num_inference_steps, candidates=DEFAULT_CANDIDATES,
            lam=args.lam, epsilon=epsilon, block_size=session.block_size, cost=args.cost, **kwargs,
        )
    path = save_plan(plan, out)
    print(format_plan(plan, str(path)))
    print(f"plan written to {path} ({path.stat().st_size} bytes)")
    note = dense_plan_note(plan)
    if note:
        print(f"NOTE: {note} (--epsilon, --lam)")
    return 0
