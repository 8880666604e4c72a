"""Baselines: what a user gets today, without sparse-vdit.

Per shape (bf16, B=1, random inputs in diffusers' [B, S, H, D] layout passed as transposed views):
    cuDNN SDPA dense, FlashAttention SDPA dense, compiled FlexAttention dense,
    compiled FlexAttention on a random block layout (default 10% of 128-token blocks, diagonal kept).
Prints time (ms, do_bench median) and effective TFLOP/s (computed blocks only) per row, the
figure published for the same configuration (H200, 2026-11-28; ``DOC_MS``) where one exists, a
markdown table last, JSON under $OUT.

    python benchmarks/bench_baselines.py                       # all four shapes (H200: < 4 min)
    python benchmarks/bench_baselines.py --shapes wan480,cogvideox15
    python benchmarks/bench_baselines.py --smoke               # tiny shapes; CPU if no CUDA
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py, next to this script)

# Figures measured before sparse-vdit existed (H200, 2026-11-28) at the same configuration, for eyeballing.
DOC_MS = {
    ("wan480", "cudnn"): 11.65, ("wan480", "flash"): 18.5, ("wan480", "flex-dense"): 15.3,
    ("wan480", "flex-sparse", 0.10, 128): 1.74,
    ("wan720", "cudnn"): 205.7, ("wan720", "flash"): 333.9,
    ("hunyuan720", "cudnn"): 287.4, ("hunyuan720", "flash"): 500.8,  # doc: 119,040 tokens
    ("hunyuan720", "flex-sparse", 0.10, 128): 44.6,
}
BIG_SHAPES = ("wan720", "hunyuan720")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(common.SHAPES),
                   help=f"comma list among {','.join(common.SHAPES)} (default: all)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, every path once, no timing claims")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--density", type=float, default=0.10, help="FlexAttention block density (default 0.10)")
    p.add_argument("--block", type=int, default=128, help="block size of the random layout (default 128)")
    p.add_argument("--skip-flash-big", action="store_true",
                   help=f"skip FlashAttention SDPA at {', '.join(BIG_SHAPES)} (saves ~10 s)")
    p.add_argument("--cpu-flex", choices=("compile", "skip"), default="compile",
                   help="on the CPU: run compiled FlexAttention (slow, ~1 min per case) or skip it")
    p.add_argument("--warmup", type=float, default=25, help="do_bench warmup, ms")
    p.add_argument("--rep", type=float, default=150, help="do_bench rep, ms (raised to >= 5 calls)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.setup(args.device)
    shapes = common.shapes_for(args.smoke)
    keys = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [k for k in keys if k not in shapes]
    if unknown:
        raise SystemExit(f"unknown shape(s) {unknown}; choose among {list(shapes)}")
    header = common.env_header(device, smoke=args.smoke, extra={"script": "bench_baselines.py", "args": vars(args)})
    common.print_header(header, "sparse-vdit baselines: dense SDPA / FlexAttention")
    bench = {"warmup": args.warmup, "rep": args.rep}
    allow_cpu_flex = args.cpu_flex == "compile"

    rows: list[dict] = []
    t_start = time.time()
    for key in keys:
        shape = shapes[key]
        q, k, v = common.random_qkv(shape, device, seed=1)
        dense = common.dense_flops(shape.b, shape.h, shape.s, shape.s, shape.d)
        layout = common.random_block_layout(shape, args.block, args.density, device, seed=2)
        density = layout.density()
        sparse = common.layout_flops(layout, shape.b, shape.h, shape.d)

        peers = [
            ("cudnn", "cuDNN SDPA dense", 1.0, dense, lambda: common.sdpa_fn("CUDNN_ATTENTION", q, k, v), ""),
            ("flash", "FlashAttention SDPA dense", 1.0, dense, lambda: common.sdpa_fn("FLASH_ATTENTION", q, k, v), ""),
            ("flex-dense", "FlexAttention dense (compiled)", 1.0, dense,
             lambda: common.flex_fn(q, k, v, None, allow_cpu=allow_cpu_flex), ""),
            ("flex-sparse", f"FlexAttention {args.density:.0%} random {args.block}-blocks (compiled)", density, sparse,
             lambda: common.flex_fn(q, k, v, layout, allow_cpu=allow_cpu_flex),
             f"kernel_options {common.flex_kernel_options(args.block)}" if common.flex_kernel_options(args.block) else ""),
        ]
        for peer_key, label, dens, flops, make, note in peers:
            t0 = time.time()
            if peer_key == "flash" and args.skip_flash_big and key in BIG_SHAPES:
                m = common.Measured(skipped="--skip-flash-big (time budget)")
            else:
                m = common.measure(make, device, label=f"{key}/{peer_key}", **bench)
            doc_key = (key, peer_key, args.density, args.block) if peer_key == "flex-sparse" else (key, peer_key)
            row = {
                "shape": shape.describe(), "peer": label, "density": dens, "ms": m.ms,
                "tflops": common.tflops(flops, m.ms), "doc_ms": None if args.smoke else DOC_MS.get(doc_key),
                "notes": "; ".join(x for x in (m.status(), note, f"wall {time.time() - t0:.1f} s") if x),
                "flops": flops,
            }
            rows.append(row)
            print(f"{key:12s} {label:52s} {common.fmt(m.ms):>9s} ms {common.fmt(row['tflops']):>8s} TFLOP/s  {row['notes']}",
                  flush=True)
        del q, k, v, layout
        if device.type == "cuda":
            torch_empty_cache()

    elapsed = time.time() - t_start
    path = common.write_json("bench_baselines", {"header": header, "rows": rows, "elapsed_s": elapsed})
    print(f"\nJSON: {path}\nelapsed: {elapsed:.0f} s")
    common.print_table(
        rows,
        [("shape", "shape"), ("peer", "peer"), ("density", "density"), ("ms", "time ms"),
         ("tflops", "eff. TFLOP/s"), ("doc_ms", "before ms"), ("notes", "notes")],
        title=f"Baselines ({header['gpu']}, torch {header['torch']}, triton {header['triton']}, commit {header['commit'][:12]})",
    )
    return 0


def torch_empty_cache() -> None:
    import torch

    torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
