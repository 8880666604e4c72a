"""precision="fp8" against our bf16 kernel on the same layouts (issue 19 item 2: >= 1.6x), in one run.

Per case (shape:block:density; density 1 is the all-blocks layout, which runs the dense loop), with
``triton.testing.do_bench`` medians, B = 1, random bf16 inputs (keys offset by a shared vector, as
DiT keys are):

    bf16                  block_sparse_attention(q, k, v, layout): the baseline
    fp8 kernel only, {e4m3,int8} QK, {mma,tile} accumulation   the FP8 kernel on inputs quantised
                          beforehand (what the kernel costs), with Q and K as float8 e4m3 or int8
                          (SPARSE_VDIT_FP8_QK) and the output's running sum in the MMA's accumulator
                          or each key tile's P x V added into fp32 (SPARSE_VDIT_FP8_ACCUMULATE=tile,
                          SageAttention 2's two-level accumulation); tile only on a GPU
    fp8 kernel only, int8 QK, tile accumulation, exp2 {half,poly}   the softmax's exponentials half
                          or wholly by a polynomial on the FMA pipe (SPARSE_VDIT_FP8_EXP2)
    fp8 whole call, int8 QK, tile accumulation, {torch,triton} quantiser
                          block_sparse_attention(..., precision="fp8") at SageAttention's choices:
                          quantisation (eager PyTorch ops, or SPARSE_VDIT_FP8_QUANTISER=triton:
                          kernels.triton_fp8_quant, two reads of K and V, one of Q) + kernel
    quantise, torch / triton / torch compiled   kernels.fp8.quantize_qkv alone (a compiled model
                          fuses the torch ops into few passes)
    cuDNN SDPA dense      the dense bar, same run

Accuracy of each FP8 output against the bf16 kernel's on the same layout: cosine similarity of
each (head, query row) output vector (the minimum and the mean), and the relative L2 error.
``--proxy`` instead runs the shipped proxy (bf16, its evaluation size 81 x 128 x 192, 20 steps,
CFG) with a probe on every self-attention call that computes the bf16 kernel's output and the FP8
one from the same q, k, v, for each of PROXY_VARIANTS (Q/K format, accumulation; the generation
itself stays stock), and
reports, per layer over every call, the cosine similarity of the whole output tensor (SageAttention's measure; goal >= 0.999)
and of the worst (head, row) vector.
``--sweep`` first times FP8 tile configurations (BLOCK_N x warps x stages) on each case and uses
the fastest for that case's rows (``--write-tables`` stores the winners in kernels/tuning_tables.json).

    python benchmarks/bench_fp8.py                                   # the four default cases
    python benchmarks/bench_fp8.py --sweep --cases wan480:128:1.0,wan720:128:0.2
    python benchmarks/bench_fp8.py --smoke                           # tiny shapes, CPU interpreter
    python benchmarks/bench_fp8.py --proxy                           # the proxy's real activations

Time on one H100 (measured 2026-12-08): three cases with --sweep and --no-compiled-quantise 88 s
(before this run's exp2 rows were added); --proxy --steps 6 30 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

DEFAULT_CASES = ("wan480:128:1.0", "wan720:128:0.2", "hunyuan720:128:0.1", "wan480:64:0.1")
SMOKE_CASES = ("wan480:64:1.0", "wan720:64:0.4")
# --proxy: (Q and K's format, accumulation) pairs compared on the same activations
PROXY_VARIANTS = (("e4m3", "mma"), ("e4m3", "tile"), ("int8", "mma"), ("int8", "tile"))
SWEEP = [(bn, w, st) for bn in (64, 128) for w in (4, 8) for st in (2, 3)]
KEY_OFFSET = 2.0  # keys get KEY_OFFSET x a random shared vector (per head): what smoothing removes


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, help=f"comma list of shape:block:density (default {','.join(DEFAULT_CASES)})")
    p.add_argument("--sweep", action="store_true", help="time FP8 tile configs per case first and use the fastest")
    p.add_argument("--write-tables", action="store_true", help="with --sweep: store the winners in the tuning tables")
    p.add_argument("--smoke", action="store_true", help="tiny shapes; CPU interpreter without CUDA")
    p.add_argument("--no-compiled-quantise", action="store_true",
                   help="skip timing the torch.compile'd quantiser (its compile takes ~20 s a case)")
    p.add_argument("--proxy", action="store_true", help="per-layer FP8 vs bf16 on the proxy's real activations")
    p.add_argument("--steps", type=int, default=20, help="--proxy: denoising steps")
    p.add_argument("--size", default=None, help="--proxy: FRAMESxHEIGHTxWIDTH (default: the proxy's evaluation size)")
    p.add_argument("--warmup", type=float, default=25, help="do_bench warmup, ms")
    p.add_argument("--rep", type=float, default=150, help="do_bench rep, ms")
    return p.parse_args(argv)


def inputs(shape: common.Shape, device: torch.device):
    q, k, v = common.random_qkv(shape, device)
    gen = torch.Generator(device=device).manual_seed(1)
    offset = KEY_OFFSET * torch.randn(1, shape.h, 1, shape.d, generator=gen, device=device, dtype=k.dtype)
    return q, (k + offset), v  # k + offset is contiguous [B, H, S, D]


def accuracy(out: torch.Tensor, ref: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity(out.float(), ref.float(), dim=-1)  # [B, H, S]
    return {"cos min": float(cos.min()), "cos mean": float(cos.mean()), "rel err": common.rel_err(out, ref)}


def run_case(spec: str, args, device: torch.device) -> list[dict]:
    from kernels import attention as ops
    from kernels import tuning
    from kernels.block_layout import BlockLayout
    from kernels import fp8 as fp8_mod
    from kernels.fp8 import quantize_qkv

    name, block, density = spec.split(":")
    block, density = int(block), float(density)
    shape = common.shapes_for(args.smoke)[name]
    q, k, v = inputs(shape, device)
    if density >= 1.0:
        layout = BlockLayout.dense(shape.s, block, device=device)
        flops = common.dense_flops(shape.b, shape.h, shape.s, shape.s, shape.d)
    else:
        layout = common.random_block_layout(shape, block, density, device)
        flops = common.layout_flops(layout, shape.b, shape.h, shape.d)
    bench = dict(warmup=args.warmup, rep=args.rep)
    scale = shape.d ** -0.5
    rows: list[dict] = []
    print(f"\n== {spec}: {shape.describe()}, {block}-token blocks, density {layout.density():.3f}", flush=True)

    # Q and K's formats (kernels.fp8.FP8_QK): float8 e4m3, or int8 as SageAttention
    quantised = {qk: quantize_qkv(q, k, v, None, scale=scale, qk=qk) for qk in ("e4m3", "int8")}
    kind = "dense_fp8" if layout.is_dense else "attention_fp8"
    key = (shape.d,) if layout.is_dense else (shape.d, block)
    tensors = (layout.full_kv_num_blocks, layout.full_kv_indices, layout.kv_num_blocks, layout.kv_indices,
               layout.tile_ids, layout.tile_masks_i8, None)

    def kernel_only(qk: str):
        fp8 = quantised[qk]

        def run():
            return ops._block_sparse_attention_fp8_op(
                fp8.q8, fp8.q_scale, fp8.k8, fp8.k_scale, fp8.v8t, fp8.v_scale, fp8.lse_shift, *tensors, None,
                block, block, scale, layout.has_partial, layout.is_dense, q.dtype)[0]
        return run

    best = None
    if args.sweep and device.type == "cuda":  # on the int8-QK kernel; the tables do not tell formats apart
        timings = []
        for cfg in SWEEP:
            if not layout.is_dense and cfg[0] > block:
                continue
            tuning.override(kind, key, cfg)
            m = common.measure(lambda: kernel_only("int8"), device, label=f"fp8 {cfg}", **bench)
            timings.append((m.ms if m.ms is not None else float("inf"), cfg))
            print(f"  sweep {kind} {key} {cfg}: {common.fmt(m.ms, 3)} ms {m.status()}", flush=True)
        tuning.override(kind, key, None)
        ms, best = min(timings)
        if ms == float("inf"):
            best = None
        else:
            tuning.override(kind, key, best)
            print(f"  fastest: {best} ({ms:.3f} ms)", flush=True)

    def timed(what: str, make, count_flops: bool = True, keep_out: bool = False, **extra) -> common.Measured:
        t0 = time.time()
        m = common.measure(make, device, keep_out=keep_out, label=what, **bench)
        row = {"case": spec, "what": what, "density": layout.density(), "ms": m.ms,
               "TFLOP/s": common.tflops(flops, m.ms) if count_flops else None, "note": m.status(), **extra}
        rows.append(row)
        print(f"  {what}: {common.fmt(m.ms, 3)} ms {m.status()} ({time.time() - t0:.1f} s)", flush=True)
        return m

    defaults = fp8_mod.FP8_QK, ops.FP8_ACCUMULATE, fp8_mod.FP8_QUANTISER, ops.FP8_EXP2
    base = timed("bf16", lambda: lambda: ops.block_sparse_attention(q, k, v, layout), keep_out=True)
    config = None if best is None else str(best)  # the kernel-only rows' swept tile
    compared = []  # (measurement, its row's name): accuracy against the bf16 kernel's output
    accumulations = ("mma", "tile") if device.type == "cuda" else ("mma",)  # the interpreter has one
    for qk in ("e4m3", "int8"):
        for accumulate in accumulations:
            ops.FP8_ACCUMULATE = accumulate
            what = f"fp8 kernel only, {qk} QK, {accumulate} accumulation"
            compared.append((timed(what, lambda: kernel_only(qk), keep_out=True,
                                   config=config), what))
    # The softmax's exponentials partly or wholly on the FMA pipe (kernels.attention.FP8_EXP2), at
    # the default formats
    ops.FP8_ACCUMULATE = accumulations[-1]
    for exp2 in ("half", "poly"):
        ops.FP8_EXP2 = exp2
        what = f"fp8 kernel only, int8 QK, {accumulations[-1]} accumulation, exp2 {exp2}"
        compared.append((timed(what, lambda: kernel_only("int8"), keep_out=True,
                               config=config), what))
    ops.FP8_EXP2 = defaults[3]
    # The whole call at SageAttention's choices (int8 Q K, P x V summed per key tile in fp32)
    fp8_mod.FP8_QK, ops.FP8_ACCUMULATE = "int8", accumulations[-1]
    whole_call = f"fp8 whole call, int8 QK, {accumulations[-1]} accumulation"
    for quantiser in ("torch", "triton"):
        fp8_mod.FP8_QUANTISER = quantiser
        what = f"{whole_call}, {quantiser} quantiser"
        compared.append((timed(what, lambda: lambda: ops.block_sparse_attention(q, k, v, layout, precision="fp8"),
                               keep_out=True), what))
        timed(f"quantise, {quantiser}", lambda: lambda: quantize_qkv(q, k, v, None, scale=scale), count_flops=False)
    fp8_mod.FP8_QUANTISER = "torch"
    if device.type == "cuda" and not args.no_compiled_quantise:
        compiled = torch.compile(lambda q, k, v: quantize_qkv(q, k, v, None, scale=scale))
        timed("quantise, torch compiled", lambda: lambda: compiled(q, k, v), count_flops=False)
    fp8_mod.FP8_QK, ops.FP8_ACCUMULATE, fp8_mod.FP8_QUANTISER, ops.FP8_EXP2 = defaults
    timed("cuDNN SDPA, dense", lambda: common.sdpa_fn("CUDNN_ATTENTION", q, k, v), count_flops=False)
    rows[-1]["TFLOP/s"] = common.tflops(common.dense_flops(shape.b, shape.h, shape.s, shape.s, shape.d), rows[-1]["ms"])
    if base.out is not None:
        by_what = {r["what"]: r for r in rows}
        for m, what in compared:
            if m.out is not None:
                row = by_what[what]
                row.update(accuracy(m.out, base.out))
                print(f"    {row['what']} vs bf16: cos min {row['cos min']:.5f}, mean {row['cos mean']:.6f}, "
                      f"rel err {row['rel err']:.2e}", flush=True)
    for row in rows:
        if row["what"].startswith("fp8") and row["ms"] and base.ms:
            row["x bf16"] = base.ms / row["ms"]
    if best is not None:
        tuning.override(kind, key, None)
        if args.write_tables:
            cap = torch.cuda.get_device_capability(device)
            tuning.write_tables(cap, torch.cuda.get_device_name(device), {kind: {key: best}},
                                f"bench_fp8.py --sweep, {time.strftime('%Y-%m-%d')} (benchmarks/RESULTS.md)")
    return rows


def proxy_layers(args, device: torch.device) -> list[dict]:
    """Per layer: cosine similarity of FP8 to bf16 attention outputs on the proxy's own q, k, v."""
    from kernels import attention as kernel_ops
    from kernels import fp8 as fp8_mod
    from pipelines.apply import apply_sparse_attention
    from pipelines.proxy.model import PROXY_GENERATION, load_proxy_pipeline
    from sparse_vdit.protocol import AttentionMethod

    class Probe(AttentionMethod):
        def __init__(self):
            self.calls: list[tuple[int, float, float, float]] = []

        def __call__(self, call, q, k, v):
            ref, _ = call.attention_with_lse(q, k, v)
            reading = [call.layer_index]
            defaults = fp8_mod.FP8_QK, kernel_ops.FP8_ACCUMULATE
            for qk, accumulate in PROXY_VARIANTS:
                fp8_mod.FP8_QK, kernel_ops.FP8_ACCUMULATE = qk, accumulate
                out, _ = kernel_ops.attention_with_lse(q, k, v, kv_lens=call.kv_lens, precision="fp8")
                whole = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0)
                rows = torch.nn.functional.cosine_similarity(out.float(), ref.float(), dim=-1)
                reading += [float(whole), float(rows.min()), common.rel_err(out, ref)]
            fp8_mod.FP8_QK, kernel_ops.FP8_ACCUMULATE = defaults
            self.calls.append(tuple(reading))
            return None

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = load_proxy_pipeline(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.proxy_config
    frames, height, width = ((config.frames, config.height, config.width) if args.size is None and not args.smoke
                             else (9, 32, 48) if args.size is None else (int(x) for x in args.size.lower().split("x")))
    size = dict(num_frames=frames, height=height, width=width)
    probe = Probe()
    t0 = time.time()
    with apply_sparse_attention(pipe, probe), torch.no_grad():
        pipe("a red circle moves right over grass", generator=torch.Generator().manual_seed(0),
             **{**PROXY_GENERATION, **size, "num_inference_steps": args.steps, "output_type": "latent"})
    print(f"proxy generation with the probe: {time.time() - t0:.1f} s, {len(probe.calls)} attention calls", flush=True)
    rows = []
    for layer in sorted({c[0] for c in probe.calls}):
        mine = [c for c in probe.calls if c[0] == layer]
        row = {"layer": layer, "calls": len(mine)}
        for n, variant in enumerate(PROXY_VARIANTS):
            i, name = 1 + 3 * n, "/".join(variant)
            row |= {f"cos whole min {name}": min(c[i] for c in mine),
                    f"cos whole mean {name}": sum(c[i] for c in mine) / len(mine),
                    f"cos worst row {name}": min(c[i + 1] for c in mine),
                    f"rel err max {name}": max(c[i + 2] for c in mine)}
        rows.append(row)
    return rows


def main(argv=None) -> int:
    args = parse(argv)
    device = common.setup()
    if args.proxy:
        info = common.env_header(device, smoke=args.smoke, extra={"proxy": True, "steps": args.steps})
        common.print_header(info, "FP8 vs bf16 attention on the proxy's activations, per layer")
        rows = proxy_layers(args, device)
        common.write_json("bench_fp8_proxy", {"env": info, "rows": rows})
        rows = [{k: f"{v:.5f}" if k.startswith("cos") else v for k, v in r.items()} for r in rows]
        columns = [("layer", "layer"), ("calls", "calls")]
        for a in ("/".join(variant) for variant in PROXY_VARIANTS):
            columns += [(f"cos whole min {a}", f"{a}: cos, min"), (f"cos whole mean {a}", "mean"),
                        (f"cos worst row {a}", "worst (head, row)")]
        common.print_table(rows, columns,
                           title="FP8 vs bf16 per layer (goal: cos >= 0.999 per layer)")
        return 0
    cases = args.cases.split(",") if args.cases else list(SMOKE_CASES if args.smoke else DEFAULT_CASES)
    info = common.env_header(device, smoke=args.smoke, extra={"cases": cases, "sweep": args.sweep,
                                                              "warmup": args.warmup, "rep": args.rep})
    common.print_header(info, "FP8 attention (precision='fp8') against the bf16 kernel, same layouts")
    rows: list[dict] = []
    for spec in cases:
        rows += run_case(spec.strip(), args, device)
    common.write_json("bench_fp8", {"env": info, "rows": rows})
    rows = [{k: f"{v:.5f}" if k.startswith("cos") and v is not None else v for k, v in r.items()} for r in rows]
    common.print_table(rows, [("case", "case"), ("what", "call"), ("density", "density"), ("ms", "ms"),
                              ("TFLOP/s", "TFLOP/s (computed blocks)"), ("x bf16", "x bf16 kernel"),
                              ("cos min", "cos min vs bf16"), ("cos mean", "cos mean"), ("rel err", "rel L2 err"),
                              ("config", "fp8 tile"), ("note", "note")],
                       title="FP8 vs bf16 (goal: >= 1.6x the bf16 kernel on the same layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
