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
                                  rows in the first / last rows of each head
    heads 100% / d, dense last    skew across heads: the first half of the heads at d (random, equal
                                  rows), the second half every block (naturally launched last)
    plan mix                      a plan-like layer: heads shuffled over Full, MultiDiagonal,
                                  VerticalStripe, Diagonal and Skip modes (ModeBank, the shape's grid)
    FlexAttention                 compiled, on the random and the skewed layouts (the peer)
    cuDNN SDPA                    dense (the all-blocks bar)

Each of our layouts runs in two launch orders (``order`` column), same blocks, same output:
natural (``longest_first=False``: row after row, head after head) and longest-first (the default:
``BlockLayout.launch_order``, every (head, row) of the launch by descending block count). On the
skewed layouts a third, "coarse" (an experiment, not in the library), sorts by 16 length classes
only, so equal-class rows keep head-after-head order (K/V locality in L2) while the long rows still
come first.

TFLOP/s count computed blocks only (``common.layout_flops``); "of all-blocks" is each row's
TFLOP/s over the dense loop's. A gap between "band" and "random" is the gather; between natural
and longest-first, the launch order; between "all-blocks, indexed" and "dense loop", the index loads.
The last table puts the orders side by side.

    python benchmarks/bench_sparse_throughput.py                        # wan720 and hunyuan720 at 128, wan480 at 64
    python benchmarks/bench_sparse_throughput.py --cases wan720:128:0.2
    python benchmarks/bench_sparse_throughput.py --smoke                # tiny shapes, CPU interpreter without CUDA

Time on one H100: ~3 min before the launch-order rows (README); ESTIMATED ~3.5 min with them (ten
more rows per case, about 30 s in all, and a few more kernel compiles); --no-flex saves most of a
minute.
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


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, help=f"comma list of shape:block:density (default {','.join(DEFAULT_CASES)})")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compiles take most of the time)")
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
    """``kind``: "random" (bench_attention's: ``common.random_block_layout``), "band" (equal rows),
    "long-first" / "long-last" (random blocks per row, skewed row lengths), "heads-split" (the
    first half of the heads random at ``density``, the rest every block) or "plan-mix"."""
    from kernels.block_layout import BlockLayout

    if kind == "random":
        return common.random_block_layout(shape, block, density, device)
    if kind == "heads-split":
        full, part = common.random_block_layout(shape, block, density, device).block_maps()
        full[:, shape.h // 2 :] = True
        return BlockLayout.from_block_maps(full, part & ~full, block_size=block, seq_lengths=shape.s)
    if kind == "plan-mix":
        return plan_mix_layout(shape, block, device)
    nb = common.cdiv(shape.s, block)
    keep = max(1, min(nb, round(density * nb)))
    if kind != "band":
        return common.random_block_layout(shape, block, density, device, row_lengths=row_lengths(nb, keep, kind))
    # a window of `keep` blocks around the diagonal, shifted inside [0, nb)
    start = (torch.arange(nb, device=device) - keep // 2).clamp(0, nb - keep)
    cols = torch.arange(nb, device=device)
    full = (cols[None, :] >= start[:, None]) & (cols[None, :] < (start + keep)[:, None])
    return BlockLayout.from_block_maps(full.expand(1, 1, nb, nb), block_size=block, seq_lengths=shape.s)


def plan_mix_layout(shape: common.Shape, block: int, device: torch.device, seed: int = 0):
    """One layer of a plan-like mix: the heads cycle over eight modes (block densities at Wan 720p,
    128-blocks: 1.0, 0.25, 0.17, 0.25, 0.12, 0.01, 0.02, 0; mean 0.23), shuffled (a seeded
    permutation), one ModeBank view on the shape's latent grid and text."""
    from sparse_vdit.modes import Diagonal, Full, ModeBank, MultiDiagonal, Skip, VerticalStripe

    pool = (Full(), MultiDiagonal(4, None), MultiDiagonal(2, None), VerticalStripe((0, 5, 10, 15, -1), 1),
            MultiDiagonal(12, 2), Diagonal(4), Diagonal(8), Skip())
    perm = torch.randperm(shape.h, generator=torch.Generator().manual_seed(seed)).tolist()
    modes = [pool[i % len(pool)] for i in perm]
    return ModeBank(pool, shape.token_layout(), block_size=block, device=device).layout(modes)


def coarse_order(layout, classes: int = 16):
    """EXPERIMENT, not in the library: ``layout`` with a launch order by descending length class
    (16 classes of equal width up to the longest row), rows of one class in natural order."""
    full, part = layout.block_maps()
    count = (full | part).sum(-1).flatten()
    length_class = count * classes // (int(count.max()) + 1)
    twin = dataclasses.replace(layout)  # its own launch_order, replaced below
    order = torch.argsort(length_class, descending=True, stable=True).to(torch.int32)
    object.__setattr__(twin, "launch_order", order)
    return twin


# label, orders timed ("coarse" only where lengths vary within heads)
LAYOUT_KINDS = {
    "random": ("random {d}, equal rows", ("natural", "longest-first")),
    "band": ("band {d}, equal rows", ("natural", "longest-first")),
    "long-first": ("skewed {d}, long rows first", ("natural", "longest-first")),
    "long-last": ("skewed {d}, long rows last", ("natural", "longest-first", "coarse")),
    "heads-split": ("heads 100% / {d}, dense heads last", ("natural", "longest-first")),
    "plan-mix": ("plan mix", ("natural", "longest-first", "coarse")),
}
FLEX_KINDS = ("random", "long-first")


def in_order(layout, order: str):
    if order == "natural":
        return dataclasses.replace(layout, longest_first=False)
    return coarse_order(layout) if order == "coarse" else layout


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

    def timed(what: str, make, flops: float, layout=None, order: str = "-", keep_out: bool = False):
        """``make()`` builds the timed callable (a peer that cannot run here raises Skipped there)."""
        t0 = time.time()
        m = common.measure(make, device, keep_out=keep_out, **bench)
        rows.append({"case": spec, "layout": what, "order": order, "density": None if layout is None else layout.density(),
                     "ms": m.ms, "TFLOP/s": common.tflops(flops, m.ms), "note": m.status()})
        print(f"  {what}, {order}: {common.fmt(m.ms, 3)} ms, {common.fmt(common.tflops(flops, m.ms), 0)} TFLOP/s "
              f"{m.status()} ({time.time() - t0:.1f} s)", flush=True)
        return m

    def ours(layout):
        return lambda: lambda: ops.block_sparse_attention(q, k, v, layout)

    print(f"\n== {spec}: {shape.describe()}, {block}-token blocks, density {density}", flush=True)
    every = BlockLayout.dense(shape.s, block, device=device)
    timed("all-blocks, dense loop", ours(every), dense_flops, every)
    indexed = dataclasses.replace(every, is_dense=False)  # equal rows: longest-first is the natural order
    timed("all-blocks, indexed loop", ours(indexed), dense_flops, indexed, "longest-first")
    layouts = {kind: layout_of(shape, block, density, kind, device) for kind in LAYOUT_KINDS}
    labels = {kind: label.format(d=density) for kind, (label, _) in LAYOUT_KINDS.items()}
    for kind, layout in layouts.items():
        flops = common.layout_flops(layout, shape.b, shape.h, shape.d)
        natural = None
        for order in LAYOUT_KINDS[kind][1]:
            m = timed(labels[kind], ours(in_order(layout, order)), flops, layout, order, keep_out=True)
            if order == "natural":
                natural = m.out
            elif m.ok and natural is not None:  # the order changes when rows run, never what they compute
                rows[-1]["same output"] = bool(torch.equal(m.out, natural))
        del natural
    if not args.no_flex:
        for kind in FLEX_KINDS:
            layout = layouts[kind]
            flops = common.layout_flops(layout, shape.b, shape.h, shape.d)
            timed(f"FlexAttention, {labels[kind]}", lambda layout=layout: common.flex_fn(q, k, v, layout, allow_cpu=False),
                  flops, layout)
    timed("cuDNN SDPA, dense", lambda: common.sdpa_fn("CUDNN_ATTENTION", q, k, v), dense_flops)
    ceiling = next((r["TFLOP/s"] for r in rows if r["layout"] == "all-blocks, dense loop"), None)
    flex = {r["layout"]: r["ms"] for r in rows}
    for r in rows:
        r["of all-blocks"] = r["TFLOP/s"] / ceiling if r["TFLOP/s"] and ceiling else None
        peer = flex.get(f"FlexAttention, {r['layout']}")
        r["vs FlexAttention"] = peer / r["ms"] if peer and r["ms"] else None
    return rows


def order_summary(rows: list[dict]) -> list[dict]:
    """One row per (case, layout) timed in several orders: each order's ms, natural over it."""
    by_layout: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        if r["order"] in ("natural", "longest-first", "coarse"):
            by_layout.setdefault((r["case"], r["layout"]), {})[r["order"]] = r
    out = []
    for (case, layout), orders in by_layout.items():
        if "natural" not in orders:
            continue
        nat = orders["natural"]
        row = {"case": case, "layout": layout, "density": nat["density"], "natural ms": nat["ms"],
               "natural of all-blocks": nat["of all-blocks"]}
        same = []
        for order in ("longest-first", "coarse"):
            r = orders.get(order)
            if r is not None:
                row[f"{order} ms"] = r["ms"]
                row[f"{order} gain"] = nat["ms"] / r["ms"] if nat["ms"] and r["ms"] else None
                row[f"{order} of all-blocks"] = r["of all-blocks"]
                same.append(r.get("same output"))
        row["same output"] = None if None in same else all(same)
        out.append(row)
    return out


def main(argv=None) -> int:
    args = parse(argv)
    device = common.setup()
    cases = args.cases.split(",") if args.cases else list(SMOKE_CASES if args.smoke else DEFAULT_CASES)
    info = common.env_header(device, smoke=args.smoke, extra={"cases": cases, "flex": not args.no_flex,
                                                              "warmup": args.warmup, "rep": args.rep})
    common.print_header(info, "Block-sparse kernel throughput by layout (where the time goes)")
    rows: list[dict] = []
    for spec in cases:
        rows += run_case(spec.strip(), args, device)
    summary = order_summary(rows)
    common.write_json("bench_sparse_throughput", {"env": info, "rows": rows, "launch_orders": summary})
    common.print_table(rows, [("case", "case"), ("layout", "layout"), ("order", "order"), ("density", "density"),
                              ("ms", "ms"), ("TFLOP/s", "TFLOP/s (computed blocks)"),
                              ("of all-blocks", "of all-blocks (dense loop)"), ("vs FlexAttention", "Flex ms / ours"),
                              ("note", "note")],
                       title="Computed-block throughput (goal: >= 0.90 of all-blocks, >= 1.3x FlexAttention)")
    common.print_table(summary, [("case", "case"), ("layout", "layout"), ("density", "density"),
                                 ("natural ms", "natural ms"), ("longest-first ms", "longest-first ms"),
                                 ("longest-first gain", "natural / longest-first"), ("coarse ms", "coarse ms"),
                                 ("coarse gain", "natural / coarse"), ("natural of all-blocks", "of all-blocks, natural"),
                                 ("longest-first of all-blocks", "of all-blocks, longest-first"),
                                 ("same output", "bit-equal to natural")],
                       title="Launch order: natural vs longest-first (same layout, same output; gain > 1: faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
