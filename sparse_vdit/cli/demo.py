"""``sparse-vdit demo``: the main job, on the shipped proxy model, on any machine.

1. Loads the proxy model (``pipelines.proxy``): the trained checkpoint when it is there, else the
   same architecture with random weights, which it says loudly (quality numbers then mean nothing).
2. Searches a small Sparse-vDiT plan: one prompt (not the one generated later), one mode per kind
   as candidates, the demo's step count.
3. Generates one prompt and seed with dense attention, the plan, and AdaSpa (its 50-step schedule
   scaled to the demo's steps), after an untimed warm-up of each (``sparse_vdit.cli.evaluation``), with a
   progress bar.
4. Prints a table, what each number means (attention density, PSNR against dense and what a good
   value is, SSIM, seconds: on the CPU those of the PyTorch fallback, not the GPU kernels), and
   writes the side-by-side videos, CSV and JSON into ``--output-dir``.

Sizes: on the CPU 17 frames of 64 x 96 pixels (1,920 tokens), 8 steps (seconds per generation on
the fallback path); on a GPU the proxy's evaluation size, 81 frames of 128 x 192 (32,256 tokens), 20 steps.
"""

from __future__ import annotations

import argparse
import math
import sys

from pipelines.loading import PROXY_CPU_SEARCH_EPSILON
from sparse_vdit.cli.args import DefaultsFormatter, add_model_options, add_video_options, positive_int, seed

__all__ = ["DEMO_EPSILON", "DEMO_SPARSITY", "DEMO_OUTPUT_DIR", "add_parser", "run_demo"]

# The search's threshold: larger, sparser (search.greedy's default is 0.05). The demo runs the proxy,
# whose CPU-size plans stay nearly all Full below it (pipelines/loading.py says what was measured).
DEMO_EPSILON = PROXY_CPU_SEARCH_EPSILON
DEMO_SPARSITY = 0.8  # AdaSpa's default: each query block keeps 20% of the key blocks
DEMO_OUTPUT_DIR = "sparse-vdit-demo"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="the proxy model: a small plan search, then dense, Sparse-vDiT and AdaSpa generations; density, PSNR, time",
        description="The main job, on the shipped proxy model, on any machine: a small Sparse-vDiT plan search, then "
                    "one prompt generated with dense attention, the plan and AdaSpa; prints each one's attention "
                    "density, PSNR and SSIM against dense, and time, and writes side-by-side videos.",
        formatter_class=DefaultsFormatter,
    )
    add_model_options(p, model=False)
    add_video_options(p, steps=None, what="8 steps of 17 x 64 x 96 on the CPU, 20 of 81 x 128 x 192 on a GPU")
    p.add_argument("--prompt", default=None, help="the prompt to generate (default: the proxy's first sample prompt)")
    p.add_argument("--seed", type=seed, default=0, help="the generation's seed")
    p.add_argument("--epsilon", type=float, default=DEMO_EPSILON,
                   help="plan search threshold on the normalised error + cost (larger: sparser)")
    p.add_argument("--sparsity", type=float, default=DEMO_SPARSITY, help="AdaSpa's sparsity (0.8 keeps 20%% of blocks)")
    p.add_argument("--search-steps", type=positive_int, default=None, help="steps of the plan search (default: --steps on a GPU, half of them on the CPU: a plan "
                        "serves any step count)")
    p.add_argument("--output-dir", default=DEMO_OUTPUT_DIR, help="where the videos, report.csv and report.json go")
    p.set_defaults(func=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    """Bad values and the library's errors raise; ``sparse_vdit.cli.args.run_command`` prints them in one line."""
    from adaspa import AdaSpaAttention
    from pipelines.loading import generation_kwargs, open_model
    from sparse_vdit.cli.args import CPU_WARMUP_STEPS
    from search.candidates import SMALL_CANDIDATES
    from sparse_vdit.cli.evaluation.metrics import psnr_quality
    from sparse_vdit.cli.evaluation.report import legend
    from sparse_vdit.cli.evaluation.run import evaluate
    import warnings

    from search.run import DensePlanWarning, dense_plan_note, search_plan
    from sparse_vdit.cli.args import check_output_dir

    from search.greedy import DEFAULT_LAMBDA, check_lambda_epsilon

    check_lambda_epsilon(DEFAULT_LAMBDA, args.epsilon)  # bad values and the output folder: before the model loads
    AdaSpaAttention(sparsity=args.sparsity)
    check_output_dir(args.output_dir, "--output-dir")
    session = open_model("proxy", args.device, args.dtype, args.block_size)
    pipe, defaults = session.pipe, session.defaults
    kwargs = generation_kwargs(defaults, args.height, args.width, args.frames)
    steps = args.steps or defaults.num_inference_steps
    prompt = args.prompt or defaults.prompts[0]
    config = pipe.transformer.config
    print(f"proxy model: WanPipeline, {config.num_layers} layers x {config.num_attention_heads} heads, "
          f"{kwargs['num_frames']} frames of {kwargs['height']} x "
          f"{kwargs['width']}, {steps} steps, CFG {kwargs['guidance_scale']}; {session.device}, "
          f"{str(pipe.dtype).replace('torch.', '')}, block size {session.block_size}", flush=True)
    adaspa = AdaSpaAttention(sparsity=args.sparsity, block_size=session.block_size)
    search_steps = args.search_steps or (steps if session.on_gpu else max(2, steps // 2))
    print(f"1/2 searching a plan: prompt {defaults.search_prompts[0]!r}, {search_steps} steps, "
          f"candidates {', '.join(map(str, SMALL_CANDIDATES))}, epsilon {args.epsilon}", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DensePlanWarning)  # said below, as a note
        plan = search_plan(pipe, list(defaults.search_prompts[:1]), [args.seed],
                           num_inference_steps=search_steps, candidates=SMALL_CANDIDATES,
                           epsilon=args.epsilon, block_size=session.block_size, **kwargs)
    note = dense_plan_note(plan)
    print(f"    plan: attention density {plan.expected_density:.3f}" + (f"\nNOTE: {note} (--epsilon)" if note else ""),
          flush=True)
    schedule = adaspa.schedule(steps)
    print(f"2/2 generating {prompt!r} (seed {args.seed}): dense, the plan, AdaSpa (s = {args.sparsity}: dense before "
          f"step {schedule.warmup_steps}, searches at steps {list(schedule.search_steps)}), each after a warm-up", flush=True)
    warmup = steps if session.on_gpu else CPU_WARMUP_STEPS
    report = evaluate(pipe, {"plan": {f"eps={args.epsilon:g}": plan}, "adaspa": {f"s={args.sparsity:g}": adaspa}},
                      [prompt], [args.seed], num_inference_steps=steps, out_dir=args.output_dir, warmup=warmup,
                      meta=session.meta("proxy"), **kwargs)
    print()
    print(report.table())
    print()
    print(legend(report))
    for s in report.summary():
        if s.method != "dense":
            print(f"{s.label}: {s.psnr:.1f} dB = {psnr_quality(s.psnr)}, {s.density:.0%} of the attention computed")
        if s.method == "adaspa" and s.density >= 0.5:  # say why, rather than leave a dense-looking number
            print(f"    why AdaSpa computes this much: {schedule.warmup_steps} dense warm-up steps and "
                  f"{len(schedule.search_steps)} search steps (every score computed) of {steps}; "
                  "more --steps or a higher --sparsity lower its density")
    for line in report.findings():
        print(f"FINDING: {line}")
    print(f"videos (dense | method | difference x4), report.csv and report.json written to {args.output_dir}/")
    sys.stdout.flush()
    return 1 if any(math.isnan(r.psnr) for r in report.rows) else 0
