"""The whole generation: a 50-step text-to-video generation with classifier-free guidance of
full-size random-weight Wan2.1-14B 720p (issue 19 item 4), stock against a Sparse-vDiT plan at
d = 0.2 and AdaSpa at s = 0.8, each with and without FP8 attention (``--precision``) and compile
(``--compile``: a separate run).

THE GENERATION TIME IS COMPUTED, NOT MEASURED. A 14B 720p forward takes ~11.4 s compiled and
~12.3 s eager on an H200 (benchmarks/RESULTS.md, 2026-12-04 21:16 and 2026-11-29 11:40), so a
50-step CFG generation of 100 forwards takes ~19 minutes, past one 10-minute device call. Instead
every *distinct kind of step* of each schedule is timed (one forward of the cond branch: median of
--reps after --warmup untimed passes), and

    generation = sum over kinds of (forwards of that kind) x (ms of one)

with 2 forwards per step: diffusers 0.42.1's WanPipeline runs CFG as two batch-1 forwards per step
(``cache_context("cond")``, then ``cache_context("uncond")``; no batch concatenation), and each
branch has its own method state (AdaSpa searches in both). The total covers **the transformer's
forwards only**: text encoding, the scheduler's arithmetic and the VAE decode are not in a
random-weight transformer and are left out (they are the same for every row; counting them would
lower every speedup a little).

Step kinds and their counts in 50 steps x 2 CFG forwards:
    stock        diffusers' stock processors (default attention: cuDNN SDPA on Hopper), 100 forwards
    plan         a 50-step ``Plan`` whose first D steps are all Full (every head of every layer
                 dense, so the processor runs diffusers' dense attention) and whose other steps are
                 ``bench_end_to_end.plan_at``'s mix of two modes at density d (default 0.2):
                 "dense step" x 2 x D, "sparse step" x 2 x (50 - D). D: a dense-first share
                 (--dense-share, below) mapped to 50 steps as a plan maps its searched steps
                 (``Plan.searched_step``: step j is dense iff 2j + 1 < 2 x 50 x share; 0.156 -> 8).
    AdaSpa       AdaSpaAttention(sparsity=0.8), its own 50-step schedule (``adaspa.scaled_schedule``:
                 dense steps 0-9, searches at 10 and 30): "dense warm-up" x 20, "first search" x 2,
                 "sparse on the first search's selection" x 38, "cached search" x 2, "sparse on the
                 cached search's selection" x 38 (the last two kinds are 19 steps each; every kind
                 timed at its first step, in one generation: steps 0, 10, 11, 30, 31).
The plan and AdaSpa run through ``pipelines.apply_sparse_attention`` with their real step indices
(``cache_context(step_index=j, num_inference_steps=50)``), so the plan's step mapping and AdaSpa's
schedule decide what each timed forward does.

The dense-first share (--dense-share, a comma list: one plan total per share, all from the same
timed steps, since a share only changes how many dense and sparse steps a generation has). The
default 0.156,0 was measured on 2026-12-07 on the CPU from a plan searched on the shipped proxy
(``sparse-vdit search --out /tmp/p.json --steps 8``: the proxy's CPU size 5x16x24 latent, 1,920
tokens, 10 layers x 4 heads, its CPU epsilon 0.3, lambda 0.5, flops costs, 2 prompts; 40 min on
2 shared cores) and read with the Plan API (``plan.modes_at(s, 8)``, ``plan.mean_over_heads``):
    share of heads Full per searched step: 0.42, 0.33, 0.15, 0.15, 0.10, 0.05, 0.05, 0.00
    steps with every head Full: none, so the strict share of leading all-Full steps is 0
    Full cells over the whole plan: 0.15625 (the plan's density 0.345)
The searched plan is not dense-first step by step: its early steps keep more heads Full. 0.156
front-loads that much dense work as whole dense steps (8 of 50: its density over the generation
0.156 + 0.844 x 0.2 = 0.33, near the searched plan's 0.345); 0 is the strict reading (no dense
step, the plan's d = 0.2 step throughout: the generation speedup is then the step's). The GPU
evaluation of 2026-12-06 23:57 (RESULTS.md) searched its plans at 20 steps with measured costs;
those plan files were not kept. Pass another share if a GPU-searched plan shows one.

FP8 (``--precision bf16,fp8``, default both): the fp8 rows apply each method with
``apply_sparse_attention(..., precision="fp8")``, so every attention call of the method runs our FP8
kernels, its dense steps included (our FP8 dense kernel, not diffusers' SDPA): every kind is timed
again. A "dense FP8 (FullAttention)" row times ``FullAttention()`` at fp8, the stock generation with
FP8 attention. Builds whose ``apply_sparse_attention`` has no ``precision`` print "fp8: not
available in this build" and time bf16 only.

Goals (issue 19): the 14B 720p sparse step at d = 0.2 >= 2.8x over compiled stock, and the whole
generation >= 2.3x (Sparse VideoGen 2's best reported end-to-end) at the plan's and AdaSpa's own
schedules. The last table says whether each row meets them (against this run's stock: compiled
only with --compile).

Time on one H100, ESTIMATED, not measured: the H200 step times above (compiled: stock and dense
11.4 s, plan d = 0.2 4.8 s, AdaSpa sparse 5.5 s, first search ~18 s, cached search ~12 s; eager
~0.9 s more each), H100 taken as ~10% slower; fp8 steps guessed ~15% faster than bf16; start and
build ~45 s; the first compile of the repeated block ~1 min and one recompile when our processors
replace the stock ones (the 2026-12-04 entry saw exactly one); each kind once untimed (dense kinds
of a method skipped there: see ``time_kinds``) and once timed (--warmup 1 --reps 1):
    --models 14b --compile                   ~7.5 min  (start 0.8, stock 1.5, plan bf16 1.6, plan
                                                        fp8 0.25, AdaSpa bf16 1.9, AdaSpa fp8 1.45)
    --models 14b --compile --kinds plan      ~4.5 min
    --models 14b --compile --kinds adaspa    ~7 min
    --models 14b                             ~6 min    (eager, both methods, bf16 and fp8)
Without fp8 in the build, ~1.5 min less. The one-call compiled run should fit a 600-second call
with ~2.5 minutes to spare; for more margin split it with --kinds (stock is timed in every call,
so each call's speedups are against its own stock). Every kind prints its line as it finishes and
the rows so far are rewritten to ``$OUT/<name>-partial.json`` after every method, so a call
stopped at its limit still brings back what it measured.

    python benchmarks/bench_generation.py --models 14b --compile                  # H100: ~7.5 min
    python benchmarks/bench_generation.py --models 14b --compile --kinds plan     # H100: ~4.5 min
    python benchmarks/bench_generation.py --models 14b --compile --kinds adaspa   # H100: ~7 min
    python benchmarks/bench_generation.py --models 14b                            # eager, H100: ~6 min
    python benchmarks/bench_generation.py --models 1.3b --compile                 # ~3 min
    python benchmarks/bench_generation.py --smoke          # tiny Wan, 32-token blocks; CPU interpreter (~1.5 min)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_adaspa  # noqa: E402
import bench_end_to_end as e2e  # noqa: E402
import common  # noqa: E402
import torch  # noqa: E402

STEPS = 50
CFG_FORWARDS = 2  # WanPipeline: cond and uncond as two batch-1 forwards per step
DENSITY = 0.2
SPARSITY = 0.8
# Measured on a plan searched on the proxy (see the docstring): 0.15625 of its (step, layer, head)
# cells are Full, front-loaded (42% of the heads at step 0, none at the last); none of its steps has
# every head Full (the strict leading all-Full share: 0).
DENSE_SHARES = (0.156, 0.0)
STEP_GOAL = 2.8
GENERATION_GOAL = 2.3
FP8_UNAVAILABLE = "fp8: not available in this build"
GIB = 2**30


@dataclasses.dataclass(eq=False)
class Kind:
    """One distinct kind of forward in a schedule: its first step index, forwards in the generation."""

    label: str
    step: int | None  # None: the stock model, no method
    forwards: int
    kernels: bool = True  # calls our kernels (timed again under fp8); False: diffusers' dense attention
    ms: float | None = None
    density: float | None = None
    peak: float | None = None
    note: str = ""


# --------------------------------------------------------------------------- precision
def fp8_precision() -> tuple[str | None, tuple[str, ...]]:
    """("fp8", where it is set) when ``apply_sparse_attention`` takes ``precision=``, else (None, ())."""
    from pipelines import apply_sparse_attention

    if "precision" in inspect.signature(apply_sparse_attention).parameters:
        return "fp8", ("apply_sparse_attention(precision=)",)
    return None, ()


# --------------------------------------------------------------------------- schedules
def dense_steps(share: float, steps: int = STEPS) -> int:
    """Leading dense steps of a ``steps``-step generation from a plan whose searched steps are dense
    for the first ``share`` of them: step j maps to searched step floor((2j + 1) N_s / 2 steps),
    which is among the first share x N_s iff 2j + 1 < 2 x steps x share."""
    return sum(1 for j in range(steps) if 2 * j + 1 < 2 * steps * share - 1e-9)


def generation_plan(model, layout, density: float, block: int, n_dense: int, steps: int = STEPS):
    """A ``steps``-step plan: ``n_dense`` all-Full steps, then ``plan_at``'s one-step mix at
    ``density``. Returns (plan, the sparse step's density, the mix's description)."""
    from sparse_vdit import Plan
    from sparse_vdit.modes import Full
    from sparse_vdit.plan import CostTable

    one_step, mix = e2e.plan_at(model, layout, density, block)
    sparse = one_step.steps[0].layers
    dense = tuple((Full(),) * len(layer) for layer in sparse)
    costs = CostTable("flops", None, "bench_generation (unused)", tuple(one_step.cost.costs) + ((Full(), 1.0),))
    plan = Plan.from_step_modes([dense] * n_dense + [sparse] * (steps - n_dense), model=one_step.model,
                                token_layout=layout, block_size=block, lam=0.0, epsilon=0.0, cost=costs)
    return plan, one_step.expected_density, mix


def plan_kinds(n_dense: int, density: float, steps: int = STEPS) -> list[Kind]:
    kinds = [Kind("dense step (all heads Full)", 0, CFG_FORWARDS * n_dense, kernels=False)] if n_dense else []
    if n_dense < steps:
        kinds.append(Kind(f"sparse step (d = {density})", n_dense, CFG_FORWARDS * (steps - n_dense)))
    return kinds


def adaspa_kinds(config, steps: int = STEPS) -> list[Kind]:
    """One kind per phase of ``config``'s schedule, sparse steps split by the search whose selection
    they use; each at its first step, counted over the generation."""
    from adaspa.schedule import CACHED_SEARCH, DENSE, FIRST_SEARCH

    schedule = config.schedule(steps)
    kinds: dict[str, Kind] = {}
    for j in range(steps):
        phase = schedule.phase(j)
        if phase == DENSE:
            label = "dense warm-up"
        elif phase == FIRST_SEARCH:
            label = f"first search (step {j})"
        elif phase == CACHED_SEARCH:
            label = f"cached search (step {j})"
        else:
            label = f"sparse (selection of step {max(s for s in schedule.search_steps if s < j)})"
        if label not in kinds:
            kinds[label] = Kind(label, j, 0, kernels=phase != DENSE)
        kinds[label].forwards += CFG_FORWARDS
    return list(kinds.values())


# --------------------------------------------------------------------------- timing
def time_kinds(model, kwargs: dict, kinds: list[Kind], args, device: torch.device, *, state=None) -> None:
    """Fills each kind's ms (median of ``args.reps`` passes after ``args.warmup`` untimed ones) and
    peak GiB. A pass is one generation: the kinds' steps in order (AdaSpa's state carries from its
    search to its sparse steps); a pass starting at a lower step than the last one ended is a new
    generation (the step tracker's rule). The untimed passes skip a method's dense kinds (diffusers'
    dense attention needs no kernel compile, and the one dynamo recompile for our processors happens
    at the pass's other kinds) unless nothing else is in the pass. ``state``: () -> the AdaSpa
    state (reads the sparse steps' selected density)."""
    times: dict[str, list[float]] = {k.label: [] for k in kinds}
    passes = args.warmup + args.reps
    warm_kinds = [k for k in kinds if k.kernels or k.step is None] or kinds
    for p in range(passes):
        timed = p >= args.warmup
        for kind in kinds if timed else warm_kinds:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            common.sync(device)
            t0 = time.perf_counter()
            if kind.step is None:
                model(**kwargs)
            else:
                with model.cache_context("cond", step_index=kind.step, num_inference_steps=STEPS):
                    model(**kwargs)
            common.sync(device)
            ms = (time.perf_counter() - t0) * 1e3
            if timed:
                times[kind.label].append(ms)
            if device.type == "cuda":
                kind.peak = torch.cuda.max_memory_allocated(device) / GIB
            if state is not None and kind.label.startswith(("sparse", "cached search")):
                s = state()
                kind.density = statistics.mean(float(s.selected_blocks(layer).float().mean()) for layer in s.selections)
    for kind in kinds:
        kind.ms = statistics.median(times[kind.label])


def reuse_dense_times(method: str, kinds: list, timed: list, bf16_ms: dict) -> None:
    """Kinds without our kernels run diffusers' dense attention: time them once per method and
    reuse that time (at fp8 every kind is timed: its dense steps run our FP8 dense kernel)."""
    for k in kinds:
        if k not in timed:
            k.ms, k.note = bf16_ms[(method, k.label)], "bf16 time reused (diffusers' dense attention)"
        elif not k.kernels and (method, k.label) not in bf16_ms:
            bf16_ms[(method, k.label)] = k.ms


def partial_path(name: str) -> Path:
    return common.out_dir() / f"{name}-partial.json"


def save_partial(name: str, rows: list[dict]) -> None:
    """The rows so far, rewritten after every method: what a call stopped at its time limit still
    brings back (removed once the run's JSON is written)."""
    partial_path(name).write_text(json.dumps(common._jsonable({"kinds": rows}), indent=1) + "\n")


def run_method(label: str, body, device: torch.device) -> tuple[list[Kind], str]:
    """``body()`` -> kinds. A method that fails (out of memory; fp8 refused by the kernels at this
    shape, say) is a note, and the run goes on (SPARSE_VDIT_BENCH_TRACEBACK=1 prints the traceback)."""
    try:
        return body(), ""
    except Exception as exc:  # noqa: BLE001 - one method's failure is a result, not the end of the call
        if os.environ.get("SPARSE_VDIT_BENCH_TRACEBACK"):
            traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return [], f"out of memory: {str(exc).splitlines()[0]}"
        return [], f"failed: {common.short_error(exc, 300)}"


@torch.no_grad()
def model_rows(spec, args, device: torch.device, dtype: torch.dtype, fp8: str | None,
               fp8_ops: tuple[str, ...], done: list[dict]) -> list[dict]:
    """Every method's kinds on ``spec``, one row per (method, precision, kind); ``done``: the rows
    of the models before (for the partial file)."""
    from adaspa import AdaSpaAttention
    from pipelines import FullAttention, apply_sparse_attention

    model, kwargs, layout = e2e.build(spec, device, dtype, args.quant)
    if args.compile:
        model.compile_repeated_blocks()
        print(f"[{spec.key}] compile_repeated_blocks set (compiles at the first forwards)", flush=True)
    precisions = [p for p in args.precision if p == "bf16" or fp8]
    rows: list[dict] = []

    def record(method: str, precision: str, kinds: list[Kind], note: str = "") -> None:
        for k in kinds:
            rows.append({"model": spec.name, "method": method, "precision": precision, "compile": args.compile,
                         "kind": k.label, "step": k.step, "forwards": k.forwards, "ms": k.ms,
                         "generation s": k.forwards * k.ms / 1e3 if k.ms is not None else None,
                         "attention density": k.density, "peak GiB": k.peak, "note": k.note})
            print(f"[{spec.key}] {method} {precision} {k.label}: {common.fmt(k.ms, 1)} ms x {k.forwards} forwards "
                  f"(density {common.fmt(k.density)}) {k.note}", flush=True)
        if note:
            rows.append({"model": spec.name, "method": method, "precision": precision, "compile": args.compile,
                         "kind": "-", "note": note})
            print(f"[{spec.key}] {method} {precision}: {note}", flush=True)
        save_partial(args.name, done + rows)

    # stock: the reference of every speedup
    def stock():
        kinds = [Kind("dense (diffusers)", None, CFG_FORWARDS * STEPS, kernels=False, density=1.0)]
        time_kinds(model, kwargs, kinds, args, device)
        return kinds

    kinds, note = run_method("stock", stock, device)
    record("stock", "bf16", kinds, note)

    def at_precision(precision: str) -> dict:
        """apply_sparse_attention's keyword for a row's precision (none for bf16: older builds)."""
        return {"precision": fp8} if precision == "fp8" else {}

    if "fp8" in precisions:  # the stock generation with FP8 attention: FullAttention at fp8
        def dense_fp8():
            kinds = [Kind("dense FP8 (ours)", None, CFG_FORWARDS * STEPS, kernels=True, density=1.0)]
            with apply_sparse_attention(model, FullAttention(), **at_precision("fp8")):
                time_kinds(model, kwargs, kinds, args, device)
            return kinds

        kinds, note = run_method("dense FP8", dense_fp8, device)
        record("dense FP8 (FullAttention)", "fp8", kinds, note)

    bf16_ms: dict[tuple[str, str], float] = {}
    if "plan" in args.kinds:
        # One plan with the most dense steps any --dense-share asks for; its dense and sparse steps
        # take the same time whatever the share, which only sets how many of each a generation has.
        n_timed = max(dense_steps(share) for share in args.dense_share)
        plan, density, mix = generation_plan(model, layout, args.density, args.plan_block, n_timed)
        print(f"[{spec.key}] plan: {n_timed} dense steps of {STEPS}, then {mix} (density {density:.3f}); "
              f"dense shares {', '.join(f'{x} -> {dense_steps(x)} steps' for x in args.dense_share)}", flush=True)
        for precision in precisions:
            def body(precision=precision):
                kinds = plan_kinds(n_timed, args.density)
                for k in kinds:
                    k.density = 1.0 if not k.kernels else density
                    k.note = f"blocks {args.plan_block}: {mix}" if k.kernels else ""
                timed = [k for k in kinds if k.kernels or precision == "fp8" or ("plan", k.label) not in bf16_ms]
                with apply_sparse_attention(model, plan, **at_precision(precision)):
                    time_kinds(model, kwargs, timed, args, device)
                reuse_dense_times("plan", kinds, timed, bf16_ms)
                return kinds
            kinds, note = run_method("plan", body, device)
            for share in args.dense_share:  # the same timed kinds, each share's counts
                counted = plan_kinds(dense_steps(share), args.density)
                for k in counted:
                    same = next((t for t in kinds if t.label == k.label), None)
                    if same is not None:
                        k.step, k.ms, k.density, k.peak, k.note = same.step, same.ms, same.density, same.peak, same.note
                record(f"plan (d = {args.density}, dense share {share})", precision,
                       counted if kinds else [], note)

    if "adaspa" in args.kinds:
        config = AdaSpaAttention(sparsity=args.sparsity, block_size=args.adaspa_block)
        for precision in precisions:
            def body(precision=precision):
                kinds = adaspa_kinds(config)
                for k in kinds:
                    k.density = 1.0 if k.label.startswith(("dense", "first search")) else None  # else: selected
                    k.note = f"blocks {args.adaspa_block}" if k.kernels else ""
                timed = [k for k in kinds if k.kernels or precision == "fp8" or ("adaspa", k.label) not in bf16_ms]
                with apply_sparse_attention(model, config, **at_precision(precision)) as handle:
                    time_kinds(model, kwargs, timed, args, device, state=lambda: handle.trackers[0].current.state)
                reuse_dense_times("adaspa", kinds, timed, bf16_ms)
                return kinds
            kinds, note = run_method("adaspa", body, device)
            record(f"AdaSpa (s = {args.sparsity})", precision, kinds, note)
    del model, kwargs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def totals(rows: list[dict], args, device: torch.device) -> list[dict]:
    """One row per (model, method, precision): the computed generation and its speedups."""
    out: list[dict] = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["precision"]), []).append(r)
    goals_apply = device.type == "cuda" and args.compile and not args.smoke
    for (model, method, precision), group in groups.items():
        kinds = [r for r in group if r.get("ms") is not None]
        stock = next((o for o in out if o["model"] == model and o["method"] == "stock"), None)
        if not kinds or len(kinds) != len(group):
            out.append({"model": model, "method": method, "precision": precision, "forwards (count x ms)": "-",
                        "note": "; ".join(r["note"] for r in group if r.get("note"))})
            continue
        total = sum(r["generation s"] for r in kinds)
        sparse = [r for r in kinds if r["kind"].startswith("sparse")]  # AdaSpa: two, weighted by their forwards
        step_ms = sum(r["ms"] * r["forwards"] for r in sparse) / sum(r["forwards"] for r in sparse) if sparse else None
        row = {"model": model, "method": method, "precision": precision,
               "forwards (count x ms)": ", ".join(f"{r['forwards']} x {r['ms']:.0f}" for r in kinds),
               "generation s": total,
               "speedup (generation)": (1.0 if method == "stock" else stock["generation s"] / total
                                        if stock and stock.get("generation s") else None),
               "sparse step ms": step_ms,
               "speedup (step)": stock["stock ms"] / step_ms if stock and step_ms else None,
               "stock ms": kinds[0]["ms"] if method == "stock" else None}
        if method != "stock":
            met = []
            if method.startswith("plan") and row["speedup (step)"] is not None:
                met.append(f"step >= {STEP_GOAL}x: {'yes' if row['speedup (step)'] >= STEP_GOAL else 'no'}")
            if row["speedup (generation)"] is not None:
                met.append(f"generation >= {GENERATION_GOAL}x: "
                           f"{'yes' if row['speedup (generation)'] >= GENERATION_GOAL else 'no'}")
            row["goals"] = "; ".join(met) if goals_apply else "- (goals are against compiled stock on the GPU)"
        out.append(row)
    return out


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny Wan (CPU interpreter without CUDA)")
    p.add_argument("--models", default="14b", help="comma-separated: 14b (default), 1.3b")
    p.add_argument("--kinds", default="plan,adaspa", help="methods beside stock, which every run times "
                   "(default plan,adaspa; split them into two calls to fit one device call)")
    p.add_argument("--precision", default="bf16,fp8",
                   help="bf16, fp8 or both (default bf16,fp8; fp8 where the kernels take precision=)")
    p.add_argument("--compile", action="store_true",
                   help="diffusers' compile_repeated_blocks() on the transformer, for every row (stock included)")
    p.add_argument("--density", type=float, default=DENSITY, help=f"the plan's sparse-step density (default {DENSITY})")
    p.add_argument("--sparsity", type=float, default=SPARSITY, help=f"AdaSpa's sparsity (default {SPARSITY})")
    p.add_argument("--dense-share", default=",".join(map(str, DENSE_SHARES)),
                   help="shares of the plan's steps that run dense (all heads Full), first; one total per share "
                   f"from the same timed steps (default {','.join(map(str, DENSE_SHARES))}: measured on a plan "
                   "searched on the proxy, see the docstring)")
    p.add_argument("--plan-block", type=int, default=None, help="plan block size (default 128; on the CPU 32)")
    p.add_argument("--adaspa-block", type=int, default=None, help="AdaSpa block size (default 64; on the CPU 32)")
    p.add_argument("--reps", type=int, default=1, help="timed passes over the kinds (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes first (compiles; default 1)")
    p.add_argument("--quant", choices=bench_adaspa.QUANT_CONFIGS, default=None,
                   help="torchao quantisation of the linear layers for every row, stock included (see "
                        "bench_end_to_end --quant)")
    p.add_argument("--name", default="bench_generation", help="JSON file name stem")
    args = p.parse_args(argv)
    args.models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    args.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    args.precision = tuple(x.strip() for x in args.precision.split(",") if x.strip())
    bad = ([m for m in args.models if m not in ("14b", "1.3b")] + [k for k in args.kinds if k not in ("plan", "adaspa")]
           + [x for x in args.precision if x not in ("bf16", "fp8")])
    if bad:
        p.error(f"unknown values {bad}: --models 14b,1.3b; --kinds plan,adaspa; --precision bf16,fp8")
    args.dense_share = tuple(float(x) for x in args.dense_share.split(",") if x.strip())
    if not args.dense_share or not all(0.0 <= x <= 1.0 for x in args.dense_share):
        p.error("--dense-share: shares of the steps, each in [0, 1]")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    device = common.setup()
    cpu_block = 64 if device.type == "cpu" else None  # fp8 needs Q_BLOCK >= 64; the tiny Wan's 72 tokens: 2 blocks
    args.plan_block = args.plan_block or cpu_block or 128
    args.adaspa_block = args.adaspa_block or cpu_block or 64
    table = e2e.models(args.smoke)
    # --smoke: the tiny Wan (bench_end_to_end's "1.3b" key there) stands in for every model asked
    specs = [table["1.3b"]] if args.smoke else [table[m] for m in args.models]
    fp8, fp8_ops = fp8_precision()
    if "fp8" in args.precision and fp8 is None:
        print(FP8_UNAVAILABLE, flush=True)
    info = common.env_header(device, smoke=args.smoke, extra={
        "models": [s.name for s in specs], "kinds": ("stock",) + args.kinds, "precision": args.precision,
        "fp8": f"{fp8!r} through {', '.join(fp8_ops)}" if fp8 else FP8_UNAVAILABLE,
        "compile": args.compile, "quant": args.quant, "steps": STEPS, "CFG forwards per step": CFG_FORWARDS,
        "plan density": args.density, "dense shares": args.dense_share,
        "dense steps": tuple(dense_steps(x) for x in args.dense_share),
        "AdaSpa sparsity": args.sparsity, "plan block": args.plan_block, "AdaSpa block": args.adaspa_block,
        "reps": args.reps, "warmup": args.warmup})
    common.print_header(info, f"A {STEPS}-step CFG generation, computed from per-step-kind times "
                              "(transformer forwards only)")
    rows: list[dict] = []
    for spec in specs:
        rows += model_rows(spec, args, device, torch.bfloat16, fp8, fp8_ops, rows)
    summary = totals(rows, args, device)
    common.write_json(args.name, {"env": info, "kinds": rows, "totals": summary})
    partial_path(args.name).unlink(missing_ok=True)
    common.print_table(rows, [("model", "model"), ("method", "method"), ("precision", "precision"),
                              ("kind", "step kind"), ("step", "timed at step"), ("forwards", "forwards"), ("ms", "ms"),
                              ("generation s", "s in generation"), ("attention density", "attention density"),
                              ("peak GiB", "peak GiB"), ("note", "note")],
                       title=f"Per step kind (one forward, median of {args.reps} after {args.warmup} warm-up; "
                             f"{'compiled' if args.compile else 'eager'})")
    common.print_table(summary, [("model", "model"), ("method", "method"), ("precision", "precision"),
                                 ("forwards (count x ms)", "forwards (count x ms)"),
                                 ("generation s", "generation s (COMPUTED)"),
                                 ("speedup (generation)", "speedup vs stock"), ("sparse step ms", "sparse step ms"),
                                 ("speedup (step)", "step speedup vs stock"), ("goals", "goals"), ("note", "note")],
                       title=f"{STEPS}-step CFG generation ({STEPS} x {CFG_FORWARDS} forwards), transformer only, "
                             f"COMPUTED from the kinds above ({'compiled' if args.compile else 'eager'}; stock bf16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
