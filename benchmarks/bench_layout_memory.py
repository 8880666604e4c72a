"""Memory of every block layout of a whole Sparse-vDiT plan (issue: at most 64 MiB).

A plan gives each (step, layer, head) one mode. This script draws such a plan at random from a
grid of modes (the worst case for sharing: no two layers alike), builds every (step, layer)
layout the way the plan method does (one ``ModeBank`` of the distinct modes, a head table per
layer) and counts the bytes of all their tensors, shared storage once. For comparison it prints
what the same layouts take in the earlier format (int32 index lists as wide as the number of key
blocks, one copy per head and per (step, layer)), computed from the shapes.

Runs on the CPU in seconds (memory does not depend on the device):
    python benchmarks/bench_layout_memory.py                       # Wan2.1-14B 720p, 50 x 40 x 40
    python benchmarks/bench_layout_memory.py --smoke
"""

from __future__ import annotations

import argparse
import itertools
import random
import time

from common import env_header, print_header, print_table, setup, write_json

MIB = 1 << 20
GOAL_MIB = 64


def mode_grid():
    from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, Skip, VerticalStripe

    grid = [Full(), Skip()]
    grid += [Diagonal(r) for r in (1, 2, 4, 8)]
    grid += [MultiDiagonal(r, f) for r, f in itertools.product((1, 2, 4), (1, 2, 4, None))]
    grid += [VerticalStripe(frames, stride) for frames, stride in itertools.product(((0,), (0, -1)), (1, 2))]
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--frames", type=int, default=21, help="patched latent frames (Wan 720p 81 frames: 21)")
    parser.add_argument("--rows", type=int, default=45)
    parser.add_argument("--cols", type=int, default=80)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a tiny plan, every code path")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.layers, args.heads, args.frames, args.rows, args.cols = 3, 2, 4, 3, 4, 6
    device = setup("cpu")
    from sparse_vdit.modes import ModeBank
    from sparse_vdit.token_layout import TokenLayout

    info = env_header(device, smoke=args.smoke)
    print_header(info, "layout memory of a whole plan")
    tokens = TokenLayout(args.frames, args.rows, args.cols)
    grid = mode_grid()
    rng = random.Random(args.seed)
    plan = [[[rng.choice(grid) for _ in range(args.heads)] for _ in range(args.layers)] for _ in range(args.steps)]
    used = {m for step in plan for layer in step for m in layer}
    t0 = time.perf_counter()
    bank = ModeBank(used, tokens, block_size=args.block)
    t_bank = time.perf_counter() - t0
    t0 = time.perf_counter()
    storages: dict[int, int] = {}
    kept = [bank.layout(layer) for step in plan for layer in step]  # alive together, as in a plan
    for layout in kept:
        storages.update(layout.storages())
    layouts = len(kept)
    t_views = time.perf_counter() - t0
    total = sum(storages.values())
    b, _, qb, kb = bank.bank.shape
    # Earlier format: 3 int32 lists [H, QB, KB] + 2 int32 counts [H, QB] per layout (tiles: 1 x block^2).
    old_per_layout = 4 * args.heads * qb * (3 * kb + 2) + 2 * args.block * args.block
    old_total = old_per_layout * layouts
    rows = [
        {
            "shape": f"{tokens.describe()}, block {args.block}",
            "plan": f"{args.steps} steps x {args.layers} layers x {args.heads} heads, {len(used)} distinct modes",
            "layouts": layouts,
            "bank MiB": round(bank.bank.nbytes() / MIB, 2),
            "all layouts MiB": round(total / MIB, 2),
            "earlier format MiB": round(old_total / MIB, 1),
            "goal MiB": GOAL_MIB,
            "met": "yes" if total <= GOAL_MIB * MIB else "no",
            "build s (bank / views)": f"{t_bank:.1f} / {t_views:.1f}",
        }
    ]
    write_json("bench_layout_memory", {"env": info, "rows": rows})
    print_table(rows, [(key, key) for key in rows[0]])


if __name__ == "__main__":
    main()
