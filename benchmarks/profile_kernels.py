"""One launch of each kernel whose target is missed, for Nsight Compute (ncu) to profile.

    ncu --clock-control none -k regex:"block_attention_mass|block_sparse" --section SpeedOfLight \
        python benchmarks/profile_kernels.py

Launches, at the Wan 480p shape (12 heads x 32,760, D=128, bf16), after a warm-up call each:
block_attention_mass(block 128, cached LSE), and block_sparse_attention on a Diagonal(4) layout
(d ~ 2%) and on a 10% random 128-block layout (a target that is met, for contrast).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402


def main() -> int:
    device = common.setup()
    from kernels.attention import attention_with_lse, block_attention_mass, block_sparse_attention
    from sparse_vdit.modes import Diagonal, head_layout
    from sparse_vdit.token_layout import TokenLayout

    shape = common.SHAPES["wan480"]
    q, k, v = common.random_qkv(shape, device)
    _, lse = attention_with_lse(q, k, v)
    diag = head_layout([Diagonal(4)], TokenLayout(21, 30, 52), block_size=128, device=device)
    rand = common.random_block_layout(shape, 128, 0.10, device)
    for name, fn in (
        ("mass128", lambda: block_attention_mass(q, k, lse, 128)),
        ("diagonal4", lambda: block_sparse_attention(q, k, v, diag)),
        ("random10", lambda: block_sparse_attention(q, k, v, rand)),
    ):
        fn()  # compile and warm up (ncu's -k/-s/-c pick the launch to profile)
        torch.cuda.synchronize()
        fn()
        torch.cuda.synchronize()
        print(f"launched {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
