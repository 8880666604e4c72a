"""Where a sparse layout's time goes: the block-sparse kernel's TFLOP/s on computed blocks across
layouts that each isolate one cost (issue 19 item 1: computed blocks of sparse layouts at >= 90%
of the all-blocks kernel's TFLOP/s, >= 1.3x FlexAttention).

Per shape and block size, one run times (``triton.testing.do_bench`` median, bf16, B = 1):

    all-blocks, dense loop        the index-free loop (what a complete layout runs): the ceiling
    all-blocks, indexed loop      the same blocks through the block-list loop (``is_dense=False``):
                                  what reading block indices costs alone
    random d, equal rows          d of each row's key blocks at random (bench_attention's layouts):
                                  + gathered key tiles
    band d, equal rows            d of each row's key blocks contiguous around the diagonal:
                                  + nothing but shorter rows (gathered vs contiguous: the row above)
    skewed d, long rows first /   row lengths spread 0..2x the mean (mode mixes: diagonal rows are
    long rows last                short, stripe rows long), the same lengths in both, the longest
                                  rows in the first / last programs launched: load imbalance and
                                  the tail
    ..., merged to 128 x 64       64-token cases only: each layout above with each pair of query-block
                                  rows merged into one 128-row block (``merge_query_blocks``; issue 19
                                  item 1's hypothesis: 64-row programs reuse each K/V tile for half the
                                  rows). Same pairs computed; its output checked against the 64-row
                                  layout's (bf16 allclose); its TFLOP/s count the ORIGINAL layout's
                                  blocks (the useful work), "extra pairs" the masked pairs it adds
    FlexAttention                 compiled, on the random and the skewed layouts (the peer)
    cuDNN SDPA                    dense (the all-blocks bar)

TFLOP/s count computed blocks only (``common.layout_flops``); "of all-blocks" is each row's
TFLOP/s over the dense loop's. A gap between "band" and "random" is the gather; between the two
skewed rows, the launch order; between "all-blocks, indexed" and "dense loop", the index loads.

    python benchmarks/bench_sparse_throughput.py                        # wan720 and hunyuan720 at 128, wan480 at 64
    python benchmarks/bench_sparse_throughput.py --cases wan720:128:0.2
    python benchmarks/bench_sparse_throughput.py --smoke                # tiny shapes, CPU interpreter without CUDA

Time on one H100, ESTIMATED, not measured: each case ~1 min (FlexAttention compiles twice, ~20 s
each; our kernel compiles once per block size); the merged rows add ~20 s to a 64-token case.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

# shape:block:density; the large shapes (Wan 720p 20%, HunyuanVideo 720p 10%, Wan 480p 10%)
DEFAULT_CASES = ("wan720:128:0.2", "hunyuan720:128:0.1", "wan480:64:0.1")
SMOKE_CASES = ("wan720:64:0.4", "hunyuan720:64:0.3")
MERGE_BLOCK, MERGE_FACTOR = 64, 2  # 64-token query blocks are also timed merged to 128 x 64
# Merged vs original output, both bf16 from the same inputs: only the fp32 summation order differs.
SAME_OUTPUT = dict(rtol=1.6e-2, atol=1e-2)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, help=f"comma list of shape:block:density (default {','.join(DEFAULT_CASES)})")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compiles take most of the time)")
    p.add_argument("--no-merge", action="store_true", help="skip the 64-token layouts merged to 128 x 64")
    p.add_argument("--smoke", action="store_true", help="tiny shapes; CPU interpreter without CUDA")
    p.add_argument("--warmup", type=float, default=25, help="do_bench warmup, ms")
    p.add_argument("--rep", type=float, default=150, help="do_bench rep, ms")
    return p.parse_args(argv)


def row_lengths(nb: int, keep: int, skew: str) -> torch.Tensor:
    """[nb] key blocks per query-block row, summing to nb * keep (within rounding), spread linearly
    from ~0 to ~2 x keep ("long-first": decreasing with the row, "long-last": increasing); every
    row keeps at least its diagonal block."""
    ramp = torch.linspace(0.0, 2.0 * keep, nb).round().long().clamp(1, nb)
    return ramp.flip(0) if skew == "long-first" else ramp


def layout_of(shape: common.Shape, block: int, density: float, kind: str, device: torch.device):
    """``kind``: "random" (bench_attention's: ``common.random_block_layout``), "band" (equal rows)
    or "long-first" / "long-last" (random blocks per row, skewed row lengths)."""
    from kernels.block_layout import BlockLayout

    if kind == "random":
        return common.random_block_layout(shape, block, density, device)
    nb = common.cdiv(shape.s, block)
    keep = max(1, min(nb, round(density * nb)))
    if kind != "band":
        return common.random_block_layout(shape, block, density, device, row_lengths=row_lengths(nb, keep, kind))
    # a window of `keep` blocks around the diagonal, shifted inside [0, nb)
    start = (torch.arange(nb, device=device) - keep // 2).clamp(0, nb - keep)
    cols = torch.arange(nb, device=device)
    full = (cols[None, :] >= start[:, None]) & (cols[None, :] < (start + keep)[:, None])
    return BlockLayout.from_block_maps(full.expand(1, 1, nb, nb), block_size=block, seq_lengths=shape.s)


def run_case(spec: str, args, device: torch.device) -> list[dict]:
    from kernels import attention as ops
    from kernels.block_layout import BlockLayout

    name, block, density = spec.split(":")
    block, density = int(block), float(density)
    shape = common.shapes_for(args.smoke)[name]
    q, k, v = common.random_qkv(shape, device)
    dense_flops = common.dense_flops(shape.b, shape.h, shape.s, shape.s, shape.d)
    bench = dict(warmup=args.warmup, rep=args.rep)
    rows: list[dict] = []

    def timed(what: str, make, flops: float, layout=None, note: str = "", keep_out: bool = False,
              **extra) -> common.Measured:
        """``make()`` builds the timed callable (a peer that cannot run here raises Skipped there)."""
        t0 = time.time()
        m = common.measure(make, device, keep_out=keep_out, **bench)
        rows.append({"case": spec, "layout": what, "density": None if layout is None else layout.density(),
                     "ms": m.ms, "TFLOP/s": common.tflops(flops, m.ms), "note": m.status() or note, **extra})
        print(f"  {what}: {common.fmt(m.ms, 3)} ms, {common.fmt(common.tflops(flops, m.ms), 0)} TFLOP/s "
              f"{m.status()} ({time.time() - t0:.1f} s)", flush=True)
        return m

    print(f"\n== {spec}: {shape.describe()}, {block}-token blocks, density {density}", flush=True)
    every = BlockLayout.dense(shape.s, block, device=device)
    timed("all-blocks, dense loop", lambda: lambda: ops.block_sparse_attention(q, k, v, every), dense_flops, every)
    indexed = dataclasses.replace(every, is_dense=False)
    timed("all-blocks, indexed loop", lambda: lambda: ops.block_sparse_attention(q, k, v, indexed), dense_flops, indexed)
    layouts = {kind: layout_of(shape, block, density, kind, device) for kind in ("random", "band", "long-first", "long-last")}
    labels = {"random": f"random {density}, equal rows", "band": f"band {density}, equal rows",
              "long-first": f"skewed {density}, long rows first", "long-last": f"skewed {density}, long rows last"}
    for kind, layout in layouts.items():
        flops = common.layout_flops(layout, shape.b, shape.h, shape.d)
        timed(labels[kind], lambda layout=layout: lambda: ops.block_sparse_attention(q, k, v, layout), flops, layout)
    if block == MERGE_BLOCK and not args.no_merge:
        for kind, layout in layouts.items():
            merged = layout.merge_query_blocks(MERGE_FACTOR)  # on the device, no host synchronisation
            useful = common.layout_flops(layout, shape.b, shape.h, shape.d)
            extra = common.layout_flops(merged, shape.b, shape.h, shape.d) / useful - 1.0
            want = ops.block_sparse_attention(q, k, v, layout)
            m = timed(f"{labels[kind]}, merged to {merged.block_size[0]} x {merged.block_size[1]}",
                      lambda merged=merged: lambda: ops.block_sparse_attention(q, k, v, merged), useful, merged,
                      keep_out=True, base=labels[kind], **{"extra pairs": extra})
            if m.out is not None:
                diff = float((m.out.float() - want.float()).abs().max())
                rows[-1]["same output"] = bool(torch.allclose(m.out.float(), want.float(), **SAME_OUTPUT))
                rows[-1]["note"] = f"max abs diff to the 64-row output {diff:.1e}"
                print(f"    same output as the 64-row layout: {common.fmt(rows[-1]['same output'])} (max diff {diff:.1e}); "
                      f"extra pairs {extra:+.1%}", flush=True)
            del m, want
    if not args.no_flex:
        for kind in ("random", "long-first"):
            layout = layouts[kind]
            flops = common.layout_flops(layout, shape.b, shape.h, shape.d)
            timed(f"FlexAttention, {labels[kind]}", lambda layout=layout: common.flex_fn(q, k, v, layout, allow_cpu=False),
                  flops, layout)
    timed("cuDNN SDPA, dense", lambda: common.sdpa_fn("CUDNN_ATTENTION", q, k, v), dense_flops)
    ceiling = next((r["TFLOP/s"] for r in rows if r["layout"] == "all-blocks, dense loop"), None)
    ours = {r["layout"]: r["ms"] for r in rows}
    for r in rows:
        r["of all-blocks"] = r["TFLOP/s"] / ceiling if r["TFLOP/s"] and ceiling else None
        peer = ours.get(f"FlexAttention, {r.get('base', r['layout'])}")
        r["vs FlexAttention"] = peer / r["ms"] if peer and r["ms"] else None
    return rows


def main(argv=None) -> int:
    args = parse(argv)
    device = common.setup()
    cases = args.cases.split(",") if args.cases else list(SMOKE_CASES if args.smoke else DEFAULT_CASES)
    info = common.env_header(device, smoke=args.smoke, extra={"cases": cases, "flex": not args.no_flex,
                                                              "merge": not args.no_merge,
                                                              "warmup": args.warmup, "rep": args.rep})
    common.print_header(info, "Block-sparse kernel throughput by layout (where the time goes)")
    rows: list[dict] = []
    for spec in cases:
        rows += run_case(spec.strip(), args, device)
    common.write_json("bench_sparse_throughput", {"env": info, "rows": rows})
    common.print_table(rows, [("case", "case"), ("layout", "layout"), ("density", "density"), ("ms", "ms"),
                              ("TFLOP/s", "TFLOP/s (computed blocks)"), ("of all-blocks", "of all-blocks (dense loop)"),
                              ("vs FlexAttention", "Flex ms / ours"), ("same output", "merged = 64-row output"),
                              ("extra pairs", "merge's extra pairs / useful"), ("note", "note")],
                       title="Computed-block throughput (goal: >= 0.90 of all-blocks, >= 1.3x FlexAttention)")
    if any("base" in r for r in rows):
        print(f"\nMerged rows: the 64-token layout with each pair of query-block rows run as one {MERGE_BLOCK * MERGE_FACTOR}-row "
              "block (BlockLayout.merge_query_blocks). Their TFLOP/s, 'of all-blocks' and 'Flex ms / ours' count the "
              "ORIGINAL layout's computed blocks (the useful work; Flex on the original layout), so they compare with "
              "the row they come from; their density is of their own 128 x 64 block grid; 'extra pairs' is the masked "
              "pairs the merged blocks compute beyond the original's, over the original's. 'merged = 64-row output': "
              f"bf16 allclose {SAME_OUTPUT}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
