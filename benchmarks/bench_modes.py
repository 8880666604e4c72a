"""Sparse-vDiT modes on the GPU: each mode against cuDNN dense at its density, and a fused layer
of mixed modes against the same heads run one by one, in the same run.

Per mode, d = the fraction of the S x S score matrix the mode computes (its block density, see
sparse_vdit/modes.py); target: speedup over cuDNN SDPA dense >= 0.8 / d.
Shapes (bf16, B=1): Wan 480p (12 x 21x30x52), Wan 720p (40 x 21x45x80), HunyuanVideo 720p
(24 x 33x45x80 + 256 text after = 119,056). The mixed layer: 12 heads at Wan 480p.

    python benchmarks/bench_modes.py            # H200: ~3 min
    python benchmarks/bench_modes.py --smoke    # tiny layouts; CPU interpreter if no CUDA
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

# name: (TokenLayout args, heads); smoke variants keep the text placement.
LAYOUTS = {
    "wan480": ((21, 30, 52), 12),
    "wan720": ((21, 45, 80), 40),
    "hunyuan720": ((33, 45, 80, 256, "after"), 24),
}
SMOKE_LAYOUTS = {
    "wan480": ((3, 6, 10), 2),
    "wan720": ((3, 8, 12), 2),
    "hunyuan720": ((3, 6, 12, 24, "after"), 2),
}
MIX_480P = "2 full, 1 skip, 4 diagonal(4), 3 multi_diagonal(1), 2 vertical_stripe(0)"


def modes_to_time():
    from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, VerticalStripe

    return [Full(), Diagonal(4), Diagonal(8), MultiDiagonal(1), MultiDiagonal(1, frames=3), VerticalStripe((0,))]


def mixed_modes():
    from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, Skip, VerticalStripe

    return [Full()] * 2 + [Skip()] + [Diagonal(4)] * 4 + [MultiDiagonal(1)] * 3 + [VerticalStripe((0,))] * 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--shapes", default=",".join(LAYOUTS))
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--rep", type=float, default=100)
    args = p.parse_args(argv)
    device = common.setup()
    from kernels.attention import block_sparse_attention
    from sparse_vdit.modes import head_layout, mode_density
    from sparse_vdit.token_layout import TokenLayout

    info = common.env_header(device, smoke=args.smoke)
    common.print_header(info, "Sparse-vDiT modes vs cuDNN dense")
    layouts = SMOKE_LAYOUTS if args.smoke else LAYOUTS
    block = 32 if args.smoke and device.type == "cpu" else args.block
    rows, checks = [], []
    for key in args.shapes.split(","):
        dims, heads = layouts[key]
        tl = TokenLayout(*dims[:3], *( (dims[3], dims[4]) if len(dims) > 3 else ()))
        shape = common.Shape(key, tl.describe(), 1, heads, tl.seq_len, 128, tl.text_len, tl.text_position == "before")
        q, k, v = common.random_qkv(shape, device)
        dense = common.measure(lambda: common.sdpa_fn("CUDNN_ATTENTION", q, k, v), device, label="cudnn", rep=args.rep)
        for mode in modes_to_time():
            lay = head_layout([mode], tl, block_size=block, device=device)  # H = 1: broadcast over heads
            d = mode_density(mode, tl, block)
            ours = common.measure(lambda: (lambda: block_sparse_attention(q, k, v, lay)), device, keep_out=True,
                                  label=str(mode), rep=args.rep)
            err = None
            if ours.ok:
                hs, qbs = common.check_heads(heads), common.check_qblocks(lay.shape[2])
                rws, ref, _ = common.ref_attention_rows(q, k, v, lay, hs, qbs, block)
                err = common.rel_err(common.take_rows(ours.out, hs, rws), ref)
                checks.append(err)
            speed = dense.ms / ours.ms if dense.ok and ours.ok else None
            target = 0.8 / d if d > 0 else None
            rows.append(dict(shape=key, mode=str(mode), density=d, ours=ours.ms, cudnn=dense.ms, speedup=speed,
                             target=target, met=None if speed is None or target is None else speed >= target,
                             err=err, note=ours.status() or dense.status()))
            del ours
    # Fused mixed layer vs the same heads one by one (Wan 480p shape).
    dims, heads = layouts["wan480"]
    tl = TokenLayout(*dims)
    modes = mixed_modes()[: heads] if args.smoke else mixed_modes()
    shape = common.Shape("wan480", tl.describe(), 1, len(modes), tl.seq_len, 128)
    q, k, v = common.random_qkv(shape, device, seed=1)
    fused_layout = head_layout(modes, tl, block_size=block, device=device)
    per_head = [head_layout([m], tl, block_size=block, device=device) for m in modes]

    def one_by_one():
        return [block_sparse_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], per_head[h]) for h in range(len(modes))]

    fused = common.measure(lambda: (lambda: block_sparse_attention(q, k, v, fused_layout)), device, keep_out=True,
                           label="fused", rep=args.rep)
    serial = common.measure(lambda: one_by_one, device, keep_out=True, label="one-by-one", rep=args.rep)
    dense = common.measure(lambda: common.sdpa_fn("CUDNN_ATTENTION", q, k, v), device, label="cudnn", rep=args.rep)
    same = None
    if fused.ok and serial.ok:
        same = common.rel_err(fused.out, torch.cat(serial.out, dim=1))
    d_mix = fused_layout.density()
    mix = dict(fused=fused.ms, one_by_one=serial.ms, cudnn=dense.ms, density=d_mix,
               fused_speedup_vs_serial=(serial.ms / fused.ms) if fused.ok and serial.ok else None,
               fused_speedup_vs_cudnn=(dense.ms / fused.ms) if fused.ok and dense.ok else None,
               target_vs_cudnn=0.8 / d_mix, fused_vs_serial_err=same,
               note=fused.status() or serial.status() or dense.status())
    common.write_json("bench_modes", dict(env=info, rows=rows, mixed=dict(mix, heads=MIX_480P)))
    common.print_table(rows, [("shape", "shape"), ("mode", "mode"), ("density", "d"), ("ours", "ours ms"),
                              ("cudnn", "cuDNN ms"), ("speedup", "speedup"), ("target", "target 0.8/d"),
                              ("met", "met"), ("err", "rel err"), ("note", "note")],
                       title="Each mode vs cuDNN SDPA dense (all heads one mode, one launch)")
    common.print_table([mix], [("density", "d"), ("fused", "fused ms"), ("one_by_one", "one-by-one ms"),
                               ("cudnn", "cuDNN ms"), ("fused_speedup_vs_serial", "fused / serial speedup"),
                               ("fused_speedup_vs_cudnn", "vs cuDNN"), ("target_vs_cudnn", "target 0.8/d"),
                               ("fused_vs_serial_err", "rel diff"), ("note", "note")],
                       title=f"Mixed layer at Wan 480p, 12 heads: {MIX_480P}")
    bad = [e for e in checks + ([same] if same is not None else []) if e is None or e > 1e-2]
    if bad:
        print(f"CORRECTNESS FAILED: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
