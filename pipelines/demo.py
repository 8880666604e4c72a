"""``sparse-vdit demo``: the main job on the embedded default.

Generates a short video with the project's own proxy model (a whole tiny WanPipeline with random
weights, built from configs: no downloads) twice: stock attention, then a Sparse-vDiT-style
pattern (one mode for every head, e.g. a spatial window inside each frame) through
``apply_sparse_attention``. Prints wall time of each and the PSNR of the sparse video against the
stock one, and writes both videos (mp4) when ``--output-dir`` is given.

Random weights make the pictures noise; what the demo shows is the whole path (processors, step
tracking, block layouts from layout units, the kernel or its fallback) running end to end.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from pipelines.apply import apply_sparse_attention
from pipelines.tiny import tiny_wan_pipeline
from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, VerticalStripe, mode_mask_mod
from sparse_vdit.static_methods import StaticMaskAttention

DEMO_MODES = {
    "diagonal": Diagonal(1),
    "multi_diagonal": MultiDiagonal(0),
    "vertical_stripe": VerticalStripe((0,)),
    "full": Full(),
}
PROMPT = "a red bird flies over the river"
NEGATIVE = "blurry low quality"


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of videos in [0, 1]."""
    mse = float(((x.double() - ref.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _generate(pipe, args) -> tuple[torch.Tensor, float]:
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    video = pipe(
        PROMPT, negative_prompt=NEGATIVE, num_frames=args.frames, height=args.height, width=args.width,
        num_inference_steps=args.steps, max_sequence_length=16, guidance_scale=5.0, output_type="pt",
        generator=torch.Generator().manual_seed(args.seed),
    ).frames
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    return video.float().cpu().clamp(0, 1), time.perf_counter() - t0


def run_demo(args) -> int:
    mode = DEMO_MODES[args.mode]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = tiny_wan_pipeline(num_layers=args.layers, seed=args.seed).to(device, getattr(torch, args.dtype))
    stock, t_stock = _generate(pipe, args)
    method = StaticMaskAttention.per_layout(lambda layout: mode_mask_mod(mode, layout), block_size=args.block_size)
    with apply_sparse_attention(pipe, method):
        sparse, t_sparse = _generate(pipe, args)
    again, _ = _generate(pipe, args)
    print(f"proxy model: tiny WanPipeline ({args.layers} layers, random weights), {args.frames} frames "
          f"{args.height}x{args.width}, {args.steps} steps, CFG on; {device}, {args.dtype}")
    print(f"mode: {mode} (text dense), block size {args.block_size}")
    print(f"{'run':<10} {'seconds':>8} {'PSNR vs stock':>14}")
    print(f"{'stock':<10} {t_stock:>8.2f} {'-':>14}")
    print(f"{'sparse':<10} {t_sparse:>8.2f} {psnr(sparse, stock):>14.2f}")
    if device == "cuda":
        print("(the sparse run includes Triton's one-time kernel compilation; the proxy model is far too "
              "small for timings to mean anything: benchmarks/ measures speed)")
    restored = torch.equal(again, stock)
    print(f"after remove(): stock output restored exactly: {restored}")
    if args.output_dir:
        from diffusers.utils import export_to_video

        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, video in (("stock", stock), ("sparse", sparse)):
            frames = [f.permute(1, 2, 0).numpy() for f in video[0]]
            export_to_video(frames, str(out / f"{name}.mp4"), fps=8)
        print(f"videos written to {out}/stock.mp4 and {out}/sparse.mp4")
    return 0 if restored and torch.isfinite(sparse).all() else 1
