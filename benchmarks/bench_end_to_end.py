"""One denoising step of full-size random-weight video transformers, sparse against dense, at
attention densities 0.1, 0.2 and 0.3; and the time of the Sparse-vDiT plan search.

Models are built from their configs (no download) in bf16 on the GPU, random weights:
    1.3b      Wan2.1-1.3B at 480p 81 frames: latent [1, 16, 21, 60, 104], 32,760 tokens
    14b       Wan2.1-14B at 720p 81 frames: latent [1, 16, 21, 90, 160], 75,600 tokens
    hunyuan   HunyuanVideo (13B) at 720p 129 frames: latent [1, 16, 33, 90, 160], 118,800 video
              tokens + 256 text tokens after them, of which the first 64 are real (the pipeline pads
              prompts to 256 and passes the mask, so the stock step runs SDPA with that mask)
One transformer forward = one denoising step of one CFG branch. Forwards timed (CUDA-synchronised
wall clock, median of --reps after --warmup untimed ones):

    dense (diffusers)        the stock processors: diffusers' default attention (cuDNN SDPA on the
                             H200 for Wan; SDPA with the text mask for HunyuanVideo)
    dense (FullAttention)    our processors, dense through dispatch_attention_fn
    plan (d)                 a Sparse-vDiT plan of measured density d: each head one mode, the two
                             modes of the pool nearest d from below and above mixed so the layer's
                             mean density is d (the density printed is the plan's own)
    AdaSpa (s = 1 - d)       AdaSpa's sparse step, after one first search on the same input

Random weights: these rows measure speed at a density, not quality (the proxy model's job).

``--search`` (1.3b only) times the plan search as ``search_plan`` runs it: the first forward
(measures every candidate's kernel cost at this shape, then searches), then per step one searching
forward (dense with LSE and every candidate per layer) and one forward of the other CFG branch that
reuses the step's decisions. The search of 50 steps x 2 prompts is COMPUTED from those times.

    python benchmarks/bench_end_to_end.py                              # all three (H200: ~8 minutes)
    python benchmarks/bench_end_to_end.py --models 1.3b,14b --search
    python benchmarks/bench_end_to_end.py --models 14b --densities 0.2 --kinds plan --compile
    python benchmarks/bench_end_to_end.py --smoke                      # tiny models; CPU interpreter without CUDA
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_adaspa  # noqa: E402
import common  # noqa: E402
import torch  # noqa: E402

DENSITIES = (0.1, 0.2, 0.3)
SEARCH_STEPS, SEARCH_PROMPTS, SEARCH_CFG = 50, 2, 2
HUNYUAN_TEXT, HUNYUAN_REAL_TEXT = 256, 64
HUNYUAN_CONFIG = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                      num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                      qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                      rope_theta=256.0, rope_axes_dim=(16, 56, 56))


@dataclasses.dataclass(frozen=True)
class Model:
    key: str
    name: str
    cls: str
    config: dict
    latent: tuple[int, int, int, int, int]
    text: tuple[int, int, int]
    real_text: int | None = None  # HunyuanVideo: real tokens of the padded prompt


def models(smoke: bool) -> dict[str, Model]:
    if smoke:
        w = bench_adaspa.SMOKE_MODEL
        tiny_h = dict(HUNYUAN_CONFIG, num_attention_heads=2, attention_head_dim=64, num_layers=1, num_single_layers=1,
                      num_refiner_layers=1, mlp_ratio=1.0, guidance_embeds=False, text_embed_dim=32,
                      pooled_projection_dim=16, rope_axes_dim=(16, 24, 24))
        return {
            "1.3b": Model("1.3b", w.name, "WanTransformer3DModel", w.config, w.latent, w.text),
            "hunyuan": Model("hunyuan", "tiny HunyuanVideo (smoke)", "HunyuanVideoTransformer3DModel", tiny_h,
                             (1, 16, 3, 8, 12), (1, 8, 32), 5),
        }
    wan = {k: Model(k, s.name, "WanTransformer3DModel", s.config, s.latent, s.text)
           for k, s in bench_adaspa.MODELS.items()}
    return {**wan, "hunyuan": Model("hunyuan", "HunyuanVideo 720p", "HunyuanVideoTransformer3DModel", HUNYUAN_CONFIG,
                                    (1, 16, 33, 90, 160), (1, HUNYUAN_TEXT, 4096), HUNYUAN_REAL_TEXT)}


def inputs(spec: Model, device: torch.device, dtype: torch.dtype) -> dict:
    """``bench_adaspa.model_inputs`` plus HunyuanVideo's text mask, pooled text and guidance."""
    gen = torch.Generator(device=device).manual_seed(0)
    kwargs = bench_adaspa.model_inputs(spec, device, dtype, generator=gen)
    if spec.real_text is not None:
        mask = torch.zeros(spec.text[:2], dtype=torch.long, device=device)
        mask[:, : spec.real_text] = 1
        kwargs.update(encoder_attention_mask=mask,
                      pooled_projections=torch.randn(spec.text[0], spec.config["pooled_projection_dim"], generator=gen,
                                                     device=device, dtype=dtype))
        if spec.config.get("guidance_embeds"):
            kwargs["guidance"] = torch.full((spec.text[0],), 6000.0, device=device, dtype=dtype)
    return kwargs


def mode_pool():
    """Modes a plan mixes to reach a density: the search's kinds over a wider parameter grid."""
    from sparse_vdit.modes import Diagonal, MultiDiagonal, VerticalStripe

    pool = [Diagonal(r) for r in (1, 2, 4, 8, 16)]
    pool += [MultiDiagonal(w, None) for w in (1, 2, 3, 4, 6, 8, 12)]
    pool += [MultiDiagonal(w, r) for w in (4, 8, 12, 16, 24) for r in (1, 2, 4, 8)]
    pool += [VerticalStripe(f, 1) for f in ((0,), (0, -1), (0, 5, 10, 15, -1))]
    return pool


def plan_at(model, spec: Model, density: float, block: int):
    """A one-step plan whose heads mix the two pool modes bracketing ``density`` (mean = density)."""
    from pipelines import model_info, token_layout_of
    from sparse_vdit import Plan
    from sparse_vdit.modes import mode_density
    from sparse_vdit.plan import CostTable

    info = model_info(model)
    _, _, t, h, w = spec.latent
    layout = token_layout_of(model, t, h, w)
    dens = {m: mode_density(m, layout, block) for m in mode_pool()}
    below = max((m for m in dens if dens[m] <= density), key=dens.get, default=min(dens, key=dens.get))
    above = min((m for m in dens if dens[m] >= density), key=dens.get, default=max(dens, key=dens.get))
    heads = info.num_heads
    span = dens[above] - dens[below]
    n_above = heads if span <= 0 else round(heads * (density - dens[below]) / span)
    modes = tuple(above if i < n_above else below for i in range(heads))
    costs = CostTable("flops", None, "bench_end_to_end (unused)", tuple((m, dens[m]) for m in {below, above}))
    plan = Plan.from_step_modes([[modes] * info.num_layers], model=info, token_layout=layout, block_size=block,
                                lam=0.0, epsilon=0.0, cost=costs)
    return plan, f"{n_above} x {above!r} + {heads - n_above} x {below!r}"


class Timer:
    def __init__(self, device: torch.device, warmup: int, reps: int) -> None:
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, forward, warmup: int | None = None) -> float:
        times = []
        warm = self.warmup if warmup is None else warmup
        for i in range(warm + self.reps):
            common.sync(self.device)
            t0 = time.perf_counter()
            forward(i)
            common.sync(self.device)
            if i >= warm:
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


@torch.no_grad()
def step_rows(spec: Model, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    from adaspa import AdaSpaAttention
    from pipelines import FullAttention, apply_sparse_attention

    t0 = time.perf_counter()
    model = bench_adaspa.build_model(spec, device, dtype, cls=spec.cls)
    kwargs = inputs(spec, device, dtype)
    print(f"[{spec.key}] built in {time.perf_counter() - t0:.0f} s", flush=True)
    timer = Timer(device, args.warmup, args.reps)

    def at_step(step: int, steps: int):
        with model.cache_context("cond", step_index=step, num_inference_steps=steps):
            return model(**kwargs)[0]

    rows = []

    def add(kind: str, ms: float, density: float | None, note: str = "") -> None:
        dense = rows[0]["ms"] if rows else ms
        rows.append({"model": spec.name, "forward": kind, "ms": ms, "attention density": density,
                     "speedup vs diffusers": dense / ms, "note": note})
        print(f"[{spec.key}] {kind}: {ms:.1f} ms (density {common.fmt(density)}) {note}", flush=True)

    if args.compile:
        model.compile_repeated_blocks()  # diffusers' regional compile of the transformer blocks
        print(f"[{spec.key}] compile_repeated_blocks set (compiles at the warm-up forwards)", flush=True)
    add("dense (diffusers)", timer(lambda i: model(**kwargs)), 1.0)
    if "full" in args.kinds:
        with apply_sparse_attention(model, FullAttention()):
            add("dense (FullAttention)", timer(lambda i: at_step(0, 1)), 1.0)
    for d in args.densities if "plan" in args.kinds else ():
        plan, mix = plan_at(model, spec, d, args.plan_block)
        with apply_sparse_attention(model, plan):
            add(f"plan (d = {d})", timer(lambda i: at_step(0, 1)), plan.expected_density,
                f"blocks {args.plan_block}: {mix}")
    for d in args.densities if "adaspa" in args.kinds else ():
        s = round(1.0 - d, 6)
        config = AdaSpaAttention(sparsity=s, block_size=args.adaspa_block, warmup_steps=0, search_steps=(0,),
                              schedule_steps=None)
        with apply_sparse_attention(model, config) as handle:
            common.sync(device)
            t1 = time.perf_counter()
            at_step(0, 1000)  # the first search: the selection the sparse steps use
            common.sync(device)
            search_ms = (time.perf_counter() - t1) * 1e3
            # the kernel compiled at the first density's warm-up; later densities need none
            ms = timer(lambda i: at_step(1 + i, 1000), warmup=args.warmup if d == args.densities[0] else 0)
            state = handle.trackers[0].current.state
            density = statistics.mean(float(state.selected_blocks(layer).float().mean()) for layer in state.selections)
        add(f"AdaSpa sparse step (s = {s})", ms, density,
            f"blocks {args.adaspa_block}; its first search {search_ms / 1e3:.1f} s")
    del model, kwargs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


@torch.no_grad()
def search_rows(spec: Model, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Times of the plan search's forwards, and the 50-step 2-prompt search computed from them."""
    from pipelines import apply_sparse_attention
    from search import PlanSearch

    model = bench_adaspa.build_model(spec, device, dtype, cls=spec.cls)
    kwargs = inputs(spec, device, dtype)
    cost = "measured" if device.type == "cuda" else "flops"
    os.environ["SPARSE_VDIT_CACHE"] = tempfile.mkdtemp()  # an empty cost cache: the costs are measured here
    method = PlanSearch(cost=cost, block_size=args.plan_block)

    def forward(step: int, branch: str) -> float:
        common.sync(device)
        t0 = time.perf_counter()
        with model.cache_context(branch, step_index=step, num_inference_steps=SEARCH_STEPS):
            model(**kwargs)
        common.sync(device)
        return (time.perf_counter() - t0) * 1e3

    with apply_sparse_attention(model, method):
        first = forward(0, "cond")  # measures the candidates' costs (not cached: cleared above), then searches
        forward(0, "uncond")
        searching = [forward(s, "cond") for s in (1, 2)]
        reusing = [forward(s, "uncond") for s in (1, 2)]
    search_ms, reuse_ms = statistics.median(searching), statistics.median(reusing)
    dense_ms = Timer(device, 1, 2)(lambda i: model(**kwargs))
    per_run = (first - search_ms) + SEARCH_STEPS * (search_ms + reuse_ms)
    total = SEARCH_PROMPTS * per_run - (SEARCH_PROMPTS - 1) * (first - search_ms)  # costs measured once
    chosen = [m for s in (0, 1, 2) for modes in method.decisions[s].values() for m in modes]
    full = sum(type(m).__name__ == "Full" for m in chosen) / len(chosen)
    rows = [
        {"what": "dense forward (diffusers)", "s": dense_ms / 1e3},
        {"what": "first forward (cost measurement + search)", "s": first / 1e3},
        {"what": "searching forward (one step, one CFG branch)", "s": search_ms / 1e3},
        {"what": "reusing forward (the step's other CFG branch)", "s": reuse_ms / 1e3},
        {"what": f"search of {SEARCH_STEPS} steps x {SEARCH_PROMPTS} prompts x {SEARCH_CFG} CFG forwards (computed)",
         "s": total / 1e3},
    ]
    for r in rows:
        r["model"] = spec.name
    print(f"[{spec.key}] search: {total / 6e4:.1f} min computed; share of heads kept Full in 3 steps {full:.2f}",
          flush=True)
    del model, kwargs
    return rows


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models (CPU interpreter without CUDA)")
    p.add_argument("--models", default=None, help="comma-separated keys (default: 1.3b,14b,hunyuan)")
    p.add_argument("--densities", default=",".join(map(str, DENSITIES)), help="attention densities (default 0.1,0.2,0.3)")
    p.add_argument("--search", action="store_true", help="also time the plan search (Wan2.1-1.3B 480p)")
    p.add_argument("--no-steps", action="store_true", help="only the search timing")
    p.add_argument("--plan-block", type=int, default=None, help="plan block size (default 128; smoke on CPU 16)")
    p.add_argument("--adaspa-block", type=int, default=None, help="AdaSpa block size (default 64; smoke on CPU 16)")
    p.add_argument("--reps", type=int, default=1, help="timed forwards of each kind (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards first (kernel compiles; default 1)")
    p.add_argument("--kinds", default="full,plan,adaspa", help="forwards besides stock dense (default full,plan,adaspa)")
    p.add_argument("--compile", action="store_true",
                   help="diffusers' compile_repeated_blocks() on the transformer, for every kind (stock included)")
    p.add_argument("--name", default="bench_end_to_end", help="JSON file name stem")
    args = p.parse_args(argv)
    args.densities = tuple(float(x) for x in args.densities.split(","))
    args.kinds = tuple(k.strip() for k in args.kinds.split(","))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    device = common.setup()
    cpu_block = 16 if device.type == "cpu" else None
    args.plan_block = args.plan_block or cpu_block or 128
    args.adaspa_block = args.adaspa_block or cpu_block or 64
    table = models(args.smoke)
    keys = args.models.split(",") if args.models else list(table)
    unknown = [k for k in keys if k not in table]
    if unknown:
        raise SystemExit(f"unknown model keys {unknown}: use {', '.join(table)}")
    dtype = torch.bfloat16
    info = common.env_header(device, smoke=args.smoke, extra={
        "models": keys, "densities": args.densities, "plan block": args.plan_block,
        "AdaSpa block": args.adaspa_block, "reps": args.reps, "warmup": args.warmup, "kinds": args.kinds,
        "compile": args.compile})
    common.print_header(info, "One denoising step, sparse vs dense, at densities " + ", ".join(map(str, args.densities)))
    steps, search = [], []
    if args.search:
        search = search_rows(table["1.3b"], args, device, dtype)
    if not args.no_steps:
        for key in keys:
            steps += step_rows(table[key], args, device, dtype)
    common.write_json(args.name, {"env": info, "steps": steps, "search": search})
    if search:
        common.print_table(search, [("model", "model"), ("what", "what"), ("s", "s")],
                           title="Plan search time (Wan2.1-1.3B 480p, measured costs)")
    if steps:
        common.print_table(steps, [(k, k) for k in steps[0]],
                           title=f"One transformer forward (median of {args.reps} after {args.warmup} warm-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
