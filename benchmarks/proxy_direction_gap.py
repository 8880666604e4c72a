"""Does a proxy checkpoint read the direction word? The velocity loss with each video's own caption,
with the direction swapped ("moves right" <-> "moves left", "pans up" <-> "pans down") and with the
empty prompt, on procedural videos at fixed sigmas (issue 16's motion target; RESULTS.md
2026-12-07 23:00: the stretch-6 checkpoint's objects lose under 1% to a swapped direction, its
pans 4-8%). A gap that grows for "moves" is what a training change for motion should show before
the caption checks do.

    python benchmarks/proxy_direction_gap.py                         # the shipped checkpoint, CPU (~6 min)
    python benchmarks/proxy_direction_gap.py --checkpoint out/proxy.safetensors --device cuda

Prints one table per kind (moves, pans), last. For moving objects it adds the same MSE over the
region where the object arrives and leaves (its coverage change from the previous frame, mapped to
the latent): the direction decides the error there, which is a small share of the whole latent's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

SIGMAS = (0.9, 0.7, 0.5, 0.3)
PROMPTS = ("true caption", "opposite direction", "empty prompt")


@torch.no_grad()
def direction_gap(pipe, kind: str, videos: int, seed: int, size: tuple[int, int, int], device) -> list[dict]:
    from pipelines.proxy.data import PROXY_CAPTIONS, opposite_direction, procedural_videos
    from pipelines.proxy.train import (caption_embeddings, coverage_change, flow_matching_example, mask_to_latent,
                                       weighted_mean)

    table = caption_embeddings(pipe, pipe.proxy_config, device)  # last row: the empty prompt
    index = {c: i for i, c in enumerate(PROXY_CAPTIONS)}
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([i for i, c in enumerate(PROXY_CAPTIONS) if f" {kind} " in f" {c} " and opposite_direction(c) != c])
    labels = labels[torch.randperm(len(labels), generator=generator)[:videos]]
    frames, height, width = size
    batch = procedural_videos(len(labels), frames=frames, height=height, width=width, generator=generator,
                              labels=labels, device=device)
    x0 = pipe.vae.normalize(pipe.vae.encode(batch.video.to(pipe.transformer.dtype)))
    # Where the object arrives and leaves (moves; pans have no object mask): the error there is what
    # the direction decides, and a small share of the whole latent's.
    region = mask_to_latent(pipe.vae, coverage_change(batch.object_mask)) if kind == "moves" else None
    prompts = {"true caption": labels, "opposite direction": torch.tensor([index[opposite_direction(c)] for c in batch.captions]),
               "empty prompt": torch.full_like(labels, len(PROXY_CAPTIONS))}
    rows = []
    for sigma in SIGMAS:
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t, timestep, target = flow_matching_example(x0, noise, torch.full((len(labels),), sigma, device=x0.device))
        row = {"kind": kind, "sigma": sigma}
        for name, rows_of in prompts.items():
            text = table[rows_of.to(table.device)].to(x0.dtype)
            pred = pipe.transformer(hidden_states=x_t, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
            error = (pred.float() - target.float()).square()
            row[name] = float(error.mean())
            if region is not None:
                row[f"{name}, region"] = float(weighted_mean(error, region))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a proxy checkpoint (default: the shipped one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--videos", type=int, default=24, help="videos per kind")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--size", default="17x64x96", help="FRAMESxHEIGHTxWIDTH of the videos")
    args = p.parse_args(argv)

    from pipelines.proxy.model import load_proxy_pipeline

    pipe = load_proxy_pipeline(args.device, torch.float32, path=args.checkpoint)
    size = tuple(int(x) for x in args.size.lower().split("x"))
    for kind in ("moves", "pans"):
        rows = direction_gap(pipe, kind, args.videos, args.seed, size, args.device)
        print(f"\n## {kind}: velocity MSE ({args.videos} videos at {args.size}, seed {args.seed})")
        regions = ("", ", region") if kind == "moves" else ("",)
        heads = [f"{name}{where}" for where in regions for name in PROMPTS]
        print("| sigma | " + " | ".join(heads) + " |")
        print("|---" * (1 + len(heads)) + "|")
        for r in rows:
            cells = []
            for where in regions:
                t = r[f"true caption{where}"]
                cells += [f"{t:.4f}"] + [f"{r[name + where]:.4f} ({r[name + where] / t - 1:+.1%})" for name in PROMPTS[1:]]
            print(f"| {r['sigma']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
