"""Train the proxy model: flow matching on procedural videos of several sizes, in stretches.

    python -m pipelines.proxy.train --minutes 9 [--resume pipelines/proxy/proxy.safetensors]   # one GPU
    torchrun --nproc_per_node N -m pipelines.proxy.train --minutes 9 --resume ...              # N GPUs
    python -m pipelines.proxy.train --smoke                                                    # CPU, seconds

Training goes on across sessions: each run is one *stretch* that starts from a checkpoint
(``--resume``; without it, random weights) and ends within its wall-clock budget; the checkpoint
records every stretch (steps, videos, minutes, losses, GPUs, date) and the total.

What a stretch does (the defaults are the shipped model's recipe):
- data: ``procedural_videos`` rendered on the training device, parameters from a CPU generator
  seeded with ``--seed`` + 1000 x (stretches before) + rank (a resumed run sees new videos). Each
  step draws one size of ``TRAIN_SIZES`` (``--sizes``) by its weight and a batch of that size's
  count: the CPU size (17 x 64 x 96, 1,920 tokens), 33 x 64 x 96, 33 x 128 x 192 and the
  evaluation size (81 x 128 x 192, 32,256 tokens). Latents through the exact latent map,
  normalised per colour channel with statistics measured on the data at the first stretch (seed + 1)
  and kept by every later one.
- objective: rectified flow as Wan is trained: x_t = (1 - s) x_0 + s noise, the transformer
  predicts noise - x_0 (MSE); s = shift u / (1 + (shift - 1) u), u uniform: the distribution of
  the sigmas ``FlowMatchEulerDiscreteScheduler(shift=3)`` steps through; timestep input s x 1000 as
  the pipeline passes it. ``--object-weight W`` counts the error on the object's pixels 1 + W
  times (the object covers about 3% of the latent; its error, measured on the stretch-5 checkpoint,
  was 7-12x the background's); ``--motion-weight W`` counts W times more where the object's
  coverage changed from the previous frame (where it arrives and leaves: swapping the direction
  word cost under 1% of the loss, RESULTS 2026-12-07 23:00); the validation loss stays the plain
  MSE. Beside it, every log also measures 16 moving objects at the run's smallest size
  (``motion_validation``): the MSE where they arrive and leave, and how much it grows with the
  direction word reversed (what the caption's direction is worth; RESULTS 2026-12-08 01:05).
  Captions through the frozen text encoder exactly as ``WanPipeline`` encodes them (padded to 16
  tokens); 10% replaced by the empty prompt (classifier-free guidance).
- optimiser: AdamW (lr 5e-4, betas 0.9 / 0.999, weight decay 0.01), linear warm-up (200 steps; 50
  on a resumed stretch, whose optimiser moments start afresh) then constant (``--cooldown-steps N``:
  then falling linearly to 0 at the stretch's step N, where the stretch stops; a plateau at a
  constant lr is partly the noise of the steps, which a decay takes off), gradient clipping at 1,
  bf16 autocast on CUDA; EMA of the weights (0.999; a fresh run warms it up as (1 + n) / (10 + n),
  a resumed one continues the checkpoint's EMA), which is what the checkpoint holds.
- several GPUs: under ``torchrun`` every rank trains on its own videos with the same per-rank batch
  (DistributedDataParallel, NCCL); rank 0 logs, saves and samples.
- budget: ``--minutes`` is the whole run's wall clock, counted from the start of this module; the
  loop stops ``--tail-seconds`` before it, leaving time to save and to generate the samples.
  ``--max-steps`` stops earlier. The lr schedule depends on the step only.
- outputs, in ``--out`` (default ``$OUT``, else ``./proxy_out``): ``proxy.safetensors`` (also
  written every ``--save-every-minutes``, so a killed run leaves a checkpoint), ``training.json``
  (options, config, stretches, the loss curve, sample checks, ``motion_validation``), ``loss.csv``, ``samples/`` (one mp4 per
  prompt of ``PROXY_SAMPLE_PROMPTS`` and size of ``--sample-sizes`` from the saved checkpoint,
  ``samples_{F}x{H}x{W}.png`` contact sheets, ``samples.json`` with ``caption_checks``), ``data.png``
  (the same prompts from the generator). ``--parts DIR`` also writes the checkpoint there as
  ``proxy.safetensors.part0``, ``.part1``, ... of at most 15 MiB each at every save
  (``pipelines.proxy.model.join_checkpoint`` puts them together). ``--install`` copies the
  checkpoint to ``pipelines/proxy/proxy.safetensors``.
"""

from __future__ import annotations

import time

_PROCESS_START = time.monotonic()  # the --minutes budget of the command counts from here

import argparse
import csv
import datetime
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from pipelines.videos import slug, write_video
from pipelines.proxy.data import (
    KIND_WEIGHTS, KINDS, OBJECT_SIZE, PROXY_CAPTIONS, PROXY_SAMPLE_PROMPTS, PROXY_VOCAB, caption_checks, check_kind_weights,
    check_object_size, opposite_direction, procedural_videos, scene_of, to_device,
)
from pipelines.proxy.model import (
    PROXY_CHECKPOINT,
    PROXY_CONFIG,
    SMOKE_CONFIG,
    ProxyConfig,
    build_proxy_pipeline,
    load_proxy_pipeline,
    proxy_flow_shift,
    read_proxy_metadata,
    save_proxy_checkpoint,
    split_checkpoint,
)

__all__ = [
    "TrainSize",
    "TRAIN_SIZES",
    "TrainOptions",
    "TrainResult",
    "train",
    "main",
    "training_flops_per_video",
    "latent_statistics",
    "shifted_sigma",
    "training_shift",
    "flow_matching_example",
]

CHECKPOINT_NAME = "proxy.safetensors"
STATISTICS_BATCHES = 4
VALIDATION_VIDEOS = 4  # per size
MOTION_VIDEOS = 16  # moving objects in the motion validation (at the run's smallest size)
MOTION_SIGMAS = (0.9, 0.7, 0.5, 0.3)  # cycled over its videos
TIMESTEP_SCALE = 1000.0  # the scheduler's num_train_timesteps: timestep = sigma x 1000
SHEET_FRAMES = 6  # frames per row of a contact sheet
RESUME_WARMUP_STEPS = 50
STRETCH_SEED_STRIDE = 1000


@dataclass(frozen=True)
class TrainSize:
    """One size of the training mix: pixel video ``frames`` x ``height`` x ``width``, ``batch``
    videos per step (per GPU), drawn with probability ``weight`` (weights are normalised)."""

    frames: int
    height: int
    width: int
    batch: int
    weight: float = 1.0

    @property
    def video(self) -> tuple[int, int, int]:
        return self.frames, self.height, self.width

    def label(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    @classmethod
    def parse(cls, text: str) -> "TrainSize":
        """``FxHxW:batch[:weight]``, e.g. ``33x64x96:32:0.25``."""
        try:
            video, batch, *weight = text.split(":")
            frames, height, width = (int(v) for v in video.lower().split("x"))
            size = cls(frames, height, width, int(batch), float(weight[0]) if weight else 1.0)
        except ValueError:
            raise ValueError(f"--sizes entry {text!r}: expected FRAMESxHEIGHTxWIDTH:BATCH[:WEIGHT], e.g. 33x64x96:32:0.25") from None
        if size.batch < 1 or not size.weight > 0 or len(weight) > 1:
            raise ValueError(f"--sizes entry {text!r}: the batch must be >= 1 and the weight > 0")
        return size


# The shipped recipe. Tokens per forward: 1,920 (the CPU size, PROXY_SMALL); 3,456; 13,824; 32,256
# (the evaluation size, PROXY_GENERATION). Batches keep 90-130k tokens per step.
TRAIN_SIZES = (
    TrainSize(17, 64, 96, 48, 0.3),
    TrainSize(33, 64, 96, 32, 0.25),
    TrainSize(33, 128, 192, 8, 0.25),
    TrainSize(81, 128, 192, 4, 0.2),
)
SMOKE_SIZES = (TrainSize(9, 16, 32, 4, 0.6), TrainSize(5, 16, 48, 4, 0.4))


@dataclass(frozen=True)
class TrainOptions:
    """Every knob of a run (``--smoke`` changes the defaults marked so in ``SMOKE_OPTIONS``)."""

    minutes: float = 9.0
    smoke: bool = False
    out: str | None = None
    resume: str | None = None
    parts: str | None = None
    seed: int = 0
    sizes: tuple[TrainSize, ...] = TRAIN_SIZES
    lr: float = 5e-4
    warmup_steps: int = 200
    max_steps: int | None = None
    # Decay the lr linearly from its warm-up value to 0 at this step of the stretch, and stop there.
    cooldown_steps: int | None = None
    ema: float = 0.999
    cfg_dropout: float = 0.1
    # Draw each size's sigmas with the sampler's shift for that size (model.proxy_flow_shift: more
    # high-noise steps at the large sizes, where the layout of the video is decided) rather than
    # config.shift at every size. Validation keeps config.shift, so its losses stay comparable.
    size_shift: bool = False
    # Loss weight 1 + object_weight on the latent positions the object covers (0: the plain MSE), plus
    # motion_weight where its coverage changed from the previous frame (object_weighted_mse).
    object_weight: float = 0.0
    motion_weight: float = 0.0
    # The range the training videos' object sizes are drawn from; validation and the sample data keep
    # the generator's default (OBJECT_SIZE), so losses stay comparable across stretches.
    object_size: tuple[float, float] = OBJECT_SIZE
    # How often each kind (moves, rotates, pan, zoom) is drawn for training; validation keeps KIND_WEIGHTS.
    kind_weights: tuple[float, ...] = KIND_WEIGHTS
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 50
    save_every_minutes: float = 2.0
    tail_seconds: float = 75.0
    samples: bool = True
    sample_steps: int = 20
    sample_prompts: tuple[str, ...] = PROXY_SAMPLE_PROMPTS
    sample_sizes: tuple[tuple[int, int, int], ...] = ((17, 64, 96), (81, 128, 192))
    device: str | None = None
    compile: bool = False
    install: bool = False
    proxy_config: ProxyConfig | None = None  # another architecture or size (not on the command line)

    @property
    def config(self) -> ProxyConfig:
        if self.proxy_config is not None:
            return self.proxy_config
        return SMOKE_CONFIG if self.smoke else PROXY_CONFIG


SMOKE_OPTIONS = dict(
    minutes=5.0, sizes=SMOKE_SIZES, lr=2e-3, warmup_steps=5, max_steps=40, ema=0.9, log_every=5,
    tail_seconds=10.0, sample_steps=2, sample_prompts=PROXY_SAMPLE_PROMPTS[:2], sample_sizes=((9, 16, 32),),
)


@dataclass
class TrainResult:
    """What a run produced: the checkpoint path, the steps done and the loss curve."""

    checkpoint: Path
    steps: int
    final_loss: float
    curve: list[dict]
    info: dict


# ------------------------------------------------------------------------------ arithmetic
def training_flops_per_video(config: ProxyConfig = PROXY_CONFIG, video: tuple[int, int, int] | None = None) -> float:
    """FLOPs of one training example (forward + backward = 3 x forward) at ``video`` (frames, height,
    width; default the config's size): matmuls and attention only (2 FLOPs per multiply-add)."""
    t, h, w = config.tokens_at(*video) if video is not None else config.tokens
    s, d, text = t * h * w, config.num_heads * config.head_dim, config.max_sequence_length
    patch = config.latent_channels * 4
    per_layer = (
        2 * s * d * d * 4  # self-attention q, k, v, out
        + 2 * 2 * s * s * d  # q k^T and p v
        + 2 * s * d * d * 2 + 2 * text * d * d * 2  # cross-attention q, out; k, v over the text
        + 2 * 2 * s * text * d
        + 2 * s * d * config.ffn_dim * 2  # feed-forward
    )
    forward = config.num_layers * per_layer + 2 * s * patch * d * 2  # + patch embedding and proj_out
    return 3.0 * forward


def training_shift(opts: "TrainOptions", size: "TrainSize") -> float:
    """The shift of ``size``'s training sigmas: ``config.shift``, or with ``opts.size_shift`` the
    sampler's shift for that size (``proxy_flow_shift``)."""
    return proxy_flow_shift(opts.config, *size.video) if opts.size_shift else opts.config.shift


def shifted_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching shift: sigma = shift u / (1 + (shift - 1) u); u uniform gives the density
    of the sigmas ``FlowMatchEulerDiscreteScheduler(shift=shift)`` steps through."""
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_example(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
    """(x_t, timestep, target) of rectified flow: x_t = (1 - sigma) x0 + sigma noise [B, C, T, H, W],
    timestep = sigma x ``TIMESTEP_SCALE`` (what the pipeline passes the transformer), target =
    noise - x0 (the velocity the scheduler's Euler step integrates from sigma 1 to 0)."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise, sigma * TIMESTEP_SCALE, noise - x0


# ------------------------------------------------------------------------------ pieces
def object_weighted_mse(prediction: torch.Tensor, target: torch.Tensor, vae, object_mask: torch.Tensor,
                        object_weight: float, motion_weight: float = 0.0) -> torch.Tensor:
    """MSE with the object's latent positions counted 1 + ``object_weight`` times, and the pixels its
    coverage changes on from the previous frame (where it arrives and leaves: what its direction
    decides) ``motion_weight`` times more, normalised by the weights' sum (so a uniform error gives
    the plain MSE). prediction, target: [B, C, T, h, w] latents; object_mask: [B, F, H, W] pixel
    coverage in [0, 1], mapped to the latent's layout by the same space-to-depth as the video (each
    latent channel holds one pixel)."""
    error = (prediction.float() - target.float()).square()
    if object_weight == 0 and motion_weight == 0:
        return error.mean()
    weight = 1 + object_weight * mask_to_latent(vae, object_mask)
    if motion_weight:
        weight = weight + motion_weight * mask_to_latent(vae, coverage_change(object_mask))
    return weighted_mean(error, weight)


def weighted_mean(error: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(weight * error) / sum(weight): the loss weightings' and region errors' common form."""
    return (weight * error).sum() / weight.sum()


def mask_to_latent(vae, mask: torch.Tensor) -> torch.Tensor:
    """[B, F, H, W] pixel mask -> [B, C, T, h, w] float32 latent layout, by the video's own
    space-to-depth (each latent channel holds one pixel)."""
    return vae.encode(mask[:, None].expand(-1, vae.config.in_channels, -1, -1, -1).float())


def coverage_change(object_mask: torch.Tensor) -> torch.Tensor:
    """[B, F, H, W]: |coverage - the previous frame's| (0 in the first frame): where the object
    arrives and leaves, which its direction decides."""
    change = (object_mask[:, 1:] - object_mask[:, :-1]).abs()
    return torch.cat([torch.zeros_like(object_mask[:, :1]), change], dim=1)


def latent_statistics(config: ProxyConfig, seed: int, batch_size: int, device,
                      video: tuple[int, int, int] | None = None) -> tuple[list[float], list[float]]:
    """Per latent channel mean and std of the procedural data at ``video`` (default the config's
    size), measured per colour channel (the latent channels of one colour hold the same pixels) on
    ``STATISTICS_BATCHES`` batches drawn with seed + 1, rounded to 4 decimals."""
    frames, height, width = video or (config.frames, config.height, config.width)
    generator = torch.Generator().manual_seed(seed + 1)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for _ in range(STATISTICS_BATCHES):
        batch = procedural_videos(batch_size, frames=frames, height=height, width=width, generator=generator, device=device)
        v = batch.video.double()
        total += v.sum((0, 2, 3, 4)).cpu()
        total_sq += v.square().sum((0, 2, 3, 4)).cpu()
        count += v.numel() // 3
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-6).sqrt()
    per_colour = config.latent_channels // 3
    return ([round(float(m), 4) for m in mean for _ in range(per_colour)],
            [round(float(s), 4) for s in std for _ in range(per_colour)])


@torch.no_grad()
def caption_embeddings(pipe, config: ProxyConfig, device) -> torch.Tensor:
    """[len(PROXY_CAPTIONS) + 1, max_sequence_length, text_dim] float32: every caption encoded as
    ``WanPipeline`` encodes prompts, then the empty prompt (the unconditional row)."""
    embeds, _ = pipe.encode_prompt(
        list(PROXY_CAPTIONS) + [""], do_classifier_free_guidance=False,
        max_sequence_length=config.max_sequence_length, device=device, dtype=torch.float32,
    )
    return embeds


@dataclass(frozen=True)
class ValidationBatch:
    """A fixed batch (videos, captions, noise, sigmas spread evenly over the shifted schedule) whose
    loss tracks training without sampling noise. x_t and target are in the pipeline's latent space."""

    x_t: torch.Tensor
    target: torch.Tensor
    timestep: torch.Tensor
    text: torch.Tensor


def validation_batch(config: ProxyConfig, seed: int, size: int, vae, text_table: torch.Tensor, device,
                     video: tuple[int, int, int] | None = None) -> ValidationBatch:
    """``size`` videos at ``video`` (default the config's size) drawn with seed + 2 (CPU
    generators: the same batch on every device)."""
    frames, height, width = video or (config.frames, config.height, config.width)
    generator = torch.Generator().manual_seed(seed + 2)
    batch = procedural_videos(size, frames=frames, height=height, width=width, generator=generator, device=device)
    x0 = vae.normalize(vae.encode(batch.video))
    noise = torch.randn(x0.shape, generator=generator).to(device)
    sigma = shifted_sigma((torch.arange(size, dtype=torch.float32) + 0.5) / size, config.shift).to(device)
    x_t, timestep, target = flow_matching_example(x0, noise, sigma)
    return ValidationBatch(x_t=x_t, target=target, timestep=timestep, text=text_table[batch.labels.to(device)])


@dataclass(frozen=True)
class MotionBatch:
    """Moving objects whose direction decides the error where they arrive and leave: x_t, target and
    timestep as ``ValidationBatch``; ``text`` their captions, ``opposite`` the same captions with the
    direction reversed; ``region`` [B, C, T, h, w] the coverage change in the latent's layout."""

    x_t: torch.Tensor
    target: torch.Tensor
    timestep: torch.Tensor
    text: torch.Tensor
    opposite: torch.Tensor
    region: torch.Tensor


def motion_batch(seed: int, vae, text_table: torch.Tensor, device, video: tuple[int, int, int],
                 videos: int = MOTION_VIDEOS) -> MotionBatch:
    """``videos`` moving-object videos at ``video``, captions drawn uniformly (seed + 3, CPU
    generators), at the fixed ``MOTION_SIGMAS`` in turn."""
    frames, height, width = video
    generator = torch.Generator().manual_seed(seed + 3)
    moves = torch.tensor([i for i, c in enumerate(PROXY_CAPTIONS) if scene_of(c).kind == "moves"])
    labels = moves[torch.randint(len(moves), (videos,), generator=generator)]
    batch = procedural_videos(videos, frames=frames, height=height, width=width, generator=generator, labels=labels,
                              device=device)
    x0 = vae.normalize(vae.encode(batch.video))
    noise = torch.randn(x0.shape, generator=generator).to(device)
    sigma = torch.tensor(MOTION_SIGMAS, dtype=torch.float32).repeat(-(-videos // len(MOTION_SIGMAS)))[:videos]
    x_t, timestep, target = flow_matching_example(x0, noise, sigma.to(device))
    opposite = torch.tensor([PROXY_CAPTIONS.index(opposite_direction(c)) for c in batch.captions])
    return MotionBatch(x_t=x_t, target=target, timestep=timestep, text=text_table[labels.to(device)],
                       opposite=text_table[opposite.to(device)],
                       region=mask_to_latent(vae, coverage_change(batch.object_mask)))


@torch.no_grad()
def motion_validation(model, batch: MotionBatch, autocast) -> dict[str, float]:
    """{"region": the velocity MSE where the objects arrive and leave, with their own captions;
    "direction": how much more it is with the direction reversed (a ratio - 1)}: what the
    direction word is worth where it decides (``benchmarks/proxy_direction_gap.py`` in the loop)."""
    errors = []
    for text in (batch.text, batch.opposite):
        with autocast:
            prediction = model(hidden_states=batch.x_t, timestep=batch.timestep, encoder_hidden_states=text,
                               return_dict=False)[0]
        errors.append(float(weighted_mean((prediction.float() - batch.target).square(), batch.region)))
    return {"region": round(errors[0], 6), "direction": round(errors[1] / errors[0] - 1, 6)}


@torch.no_grad()
def validation_loss(model, val: ValidationBatch, autocast) -> float:
    """MSE of the velocity prediction on the fixed batch."""
    with autocast:
        prediction = model(hidden_states=val.x_t, timestep=val.timestep, encoder_hidden_states=val.text, return_dict=False)[0]
    return float(F.mse_loss(prediction.float(), val.target))


def _sheet(videos: list[torch.Tensor]):
    """A contact sheet (uint8 HxWx3 array): one row per video [3, T, H, W] in [-1, 1], SHEET_FRAMES frames."""
    rows = []
    for v in videos:
        index = torch.linspace(0, v.shape[1] - 1, SHEET_FRAMES).round().long()
        rows.append(torch.cat([v[:, int(i)] for i in index], dim=2))
    image = torch.cat(rows, dim=1).permute(1, 2, 0)
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def write_samples(checkpoint: Path, out: Path, opts: TrainOptions, device) -> list[dict]:
    """Generate one video per sample prompt and sample size with the pipeline loaded from
    ``checkpoint`` (bfloat16 on a GPU, float32 on the CPU); write mp4s, a contact sheet per size,
    ``samples.json`` (each prompt's ``caption_checks``) and ``data.png``; return the checks."""
    import importlib.util

    import imageio

    config = opts.config
    mp4 = importlib.util.find_spec("imageio_ffmpeg") is not None
    if not mp4:
        _log("imageio-ffmpeg is not installed: samples as contact sheets only, no mp4s")
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    pipe = load_proxy_pipeline(device, dtype, path=checkpoint)
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    report = []
    for frames_n, height, width in opts.sample_sizes:
        label = f"{frames_n}x{height}x{width}"
        videos = []
        for i, prompt in enumerate(opts.sample_prompts):
            frames = pipe(
                prompt, height=height, width=width, num_frames=frames_n,
                num_inference_steps=opts.sample_steps, guidance_scale=5.0, max_sequence_length=config.max_sequence_length,
                output_type="pt", generator=torch.Generator().manual_seed(opts.seed + i),
            ).frames[0]  # [T, 3, H, W] in [0, 1]
            video = (frames.permute(1, 0, 2, 3).float() * 2 - 1).cpu()
            videos.append(video)
            if mp4:
                write_video(frames.float(), folder / f"{label}_{i:02d}_{slug(prompt)}.mp4")
            report.append({"prompt": prompt, "size": label, "checks": caption_checks(video, prompt)})
        imageio.imwrite(str(out / f"samples_{label}.png"), _sheet(videos))
    frames_n, height, width = opts.sample_sizes[-1]
    data = procedural_videos(len(opts.sample_prompts), frames=frames_n, height=height, width=width,
                             seed=opts.seed, labels=list(opts.sample_prompts))
    imageio.imwrite(str(out / "data.png"), _sheet(list(data.video)))
    (folder / "samples.json").write_text(json.dumps(report, indent=1))
    return report


def check_summary(report: list[dict]) -> dict:
    """{size: {check: [passed, of]}} over a samples report."""
    out: dict = {}
    for r in report:
        for name, ok in r["checks"].items():
            cell = out.setdefault(r["size"], {}).setdefault(name, [0, 0])
            cell[0] += int(ok)
            cell[1] += 1
    return out


# ------------------------------------------------------------------------------ the run
def _out_dir(opts: TrainOptions) -> Path:
    return Path(opts.out or os.environ.get("OUT") or "proxy_out")


def _log(message: str) -> None:
    print(message, flush=True)


@dataclass
class _Distributed:
    """This process's place in a torchrun job (world 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start_distributed(device_kind: str) -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return _Distributed(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def _previous(opts: TrainOptions, config: ProxyConfig) -> dict | None:
    """The checkpoint ``--resume`` names, checked against this run: its metadata, or None."""
    if opts.resume is None:
        return None
    meta = read_proxy_metadata(opts.resume)
    if meta["proxy_config"] != config.to_dict():
        raise ValueError(
            f"--resume {opts.resume}: its architecture {meta['proxy_config']} is not this run's {config.to_dict()}; "
            "resume a checkpoint of the same ProxyConfig, or start a fresh run without --resume"
        )
    if list(meta["vocab"]) != list(PROXY_VOCAB):
        raise ValueError(
            f"--resume {opts.resume}: it was trained on other captions (its vocabulary differs from PROXY_VOCAB); "
            "start a fresh run without --resume"
        )
    return meta


def train(opts: TrainOptions, *, started_at: float | None = None) -> TrainResult:
    """Run one training stretch described by ``opts``; see the module docstring.

    ``started_at``: ``time.monotonic()`` the ``--minutes`` budget counts from (default: now; the
    command line passes the time its module started).
    """
    if opts.install and opts.smoke:
        raise ValueError("--install copies the checkpoint into the package: not with --smoke")
    config = opts.config
    device_kind = (opts.device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
    dist = _start_distributed(device_kind)
    device = torch.device("cuda", dist.local_rank) if device_kind == "cuda" and dist.world > 1 else torch.device(opts.device or device_kind)
    cuda = device.type == "cuda"
    out = _out_dir(opts)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    started_at = time.monotonic() if started_at is None else started_at
    deadline = started_at + opts.minutes * 60 - opts.tail_seconds
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for the float32 parts (validation)
    previous = _previous(opts, config)
    stretches = list(previous["training"].get("stretches", [])) if previous else []
    steps_before = int(previous["training"].get("steps", 0)) if previous else 0
    videos_before = int(previous["training"].get("videos_seen", 0)) if previous else 0
    data_seed = opts.seed + STRETCH_SEED_STRIDE * len(stretches) + dist.rank
    torch.manual_seed(data_seed)

    if previous:
        pipe = load_proxy_pipeline(device, torch.float32, path=opts.resume)
        mean, std = previous["latents_mean"], previous["latents_std"]
    else:
        mean, std = latent_statistics(config, opts.seed, 16, device, video=opts.sizes[0].video)
        pipe = build_proxy_pipeline(config, seed=opts.seed, latents_mean=mean, latents_std=std).to(device)
    vae, transformer = pipe.vae, pipe.transformer
    text_table = caption_embeddings(pipe, config, device)
    unconditional = len(PROXY_CAPTIONS)
    names = [n for n, _ in transformer.named_parameters()]
    params = [p for _, p in transformer.named_parameters()]
    n_params = sum(p.numel() for p in params)
    sizes = opts.sizes
    weights = torch.tensor([s.weight for s in sizes], dtype=torch.float64)
    if dist.main:
        gpu = torch.cuda.get_device_name(device) if cuda else str(device)
        _log(f"proxy training on {dist.world} x {gpu}: {n_params / 1e6:.2f}M parameters; "
             f"{'resuming ' + str(opts.resume) + f' after {steps_before} steps in {len(stretches)} stretches' if previous else 'fresh weights'}; "
             f"budget {opts.minutes} min; out {out}")
        for s in sizes:
            t = config.tokens_at(*s.video)
            _log(f"  size {s.label()}: {t[0]}x{t[1]}x{t[2]} = {t[0] * t[1] * t[2]:,} tokens, batch {s.batch} per GPU, "
                 f"weight {s.weight / float(weights.sum()):.2f}, {training_flops_per_video(config, s.video) * s.batch / 1e12:.2f} TFLOP per step")
        _log(f"latent statistics per colour: mean {mean[:: config.latent_channels // 3]}, std {std[:: config.latent_channels // 3]}")

    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=opts.lr, betas=(0.9, 0.999), weight_decay=opts.weight_decay,
                                  **({"fused": True} if cuda else {}))
    ema = [p.detach().clone() for p in params] if opts.ema > 0 else None
    model = transformer
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(transformer, device_ids=[device.index] if cuda else None)
    if opts.compile:
        model = torch.compile(model)
    data_generator = torch.Generator().manual_seed(data_seed)
    noise_generator = torch.Generator(device).manual_seed(data_seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    warmup = RESUME_WARMUP_STEPS if previous else opts.warmup_steps

    vals = {s.label(): validation_batch(config, opts.seed, min(VALIDATION_VIDEOS, s.batch), vae, text_table, device, video=s.video)
            for s in sizes} if dist.main else {}

    smallest = min(sizes, key=lambda s: s.frames * s.height * s.width)
    motion = motion_batch(opts.seed, vae, text_table, device, smallest.video) if dist.main else None

    def validate() -> dict[str, float]:
        return {label: round(validation_loss(transformer, val, autocast), 6) for label, val in vals.items()}

    def validate_motion() -> dict[str, float]:
        return motion_validation(transformer, motion, autocast)

    initial_val = validate()
    if dist.main:
        initial_motion = validate_motion()
        _log(f"validation loss at the start: {initial_val}; moving objects at {smallest.label()}: "
             f"{_motion_text(initial_motion)}")

    def ema_state() -> dict:
        state = transformer.state_dict()
        if ema is not None:
            state.update(zip(names, ema))
        return state

    size_steps = {s.label(): 0 for s in sizes}
    size_seconds = {s.label(): 0.0 for s in sizes}
    pending: list = []  # (size label, start, end) CUDA events of steps not yet added to size_seconds

    def settle_timings() -> None:
        """Add the GPU time of the pending steps to size_seconds (synchronises once)."""
        if pending:
            pending[-1][2].synchronize()
            for label, begin, end in pending:
                size_seconds[label] += begin.elapsed_time(end) / 1000
            pending.clear()

    def stretch_record(step: int, final_loss: float, elapsed: float, val: dict | None) -> dict:
        return {
            "stretch": len(stretches) + 1, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "steps": step, "videos": dist.world * sum(s.batch * size_steps[s.label()] for s in sizes),
            "minutes": round(elapsed / 60, 2), "gpus": dist.world,
            "device": torch.cuda.get_device_name(device) if cuda else str(device),
            "resumed_from": opts.resume, "data_seed": opts.seed + STRETCH_SEED_STRIDE * len(stretches),
            "initial_validation_loss": initial_val, "validation_loss": val, "final_loss": final_loss,
            "steps_per_size": dict(size_steps),
            "seconds_per_step": {k: round(size_seconds[k] / max(1, size_steps[k]), 4) for k in size_steps},
        }

    def info(step: int, final_loss: float, elapsed: float, val: dict | None) -> dict:
        stretch = stretch_record(step, final_loss, elapsed, val)
        return {
            "seed": opts.seed, "steps": steps_before + step, "videos_seen": videos_before + stretch["videos"],
            "final_loss": final_loss, "train_seconds": round(elapsed, 1),
            "parameters": n_params, "device": stretch["device"], "gpus": dist.world,
            "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
            "validation_loss": None if val is None else _mean(val),
            # the run's start (its first stretch), so a resumed checkpoint still says how far it came
            "initial_validation_loss": _mean(stretches[0]["initial_validation_loss"] if stretches else initial_val),
            "weights": "ema" if ema is not None else "last", "options": _json_options(opts), "config": config.to_dict(),
            "sizes": [asdict(s) for s in sizes], "stretches": stretches + [stretch],
        }

    def save(step: int, final_loss: float, elapsed: float, val: dict | None, state=None) -> dict:
        record = info(step, final_loss, elapsed, val)
        record["checkpoint_bytes"] = save_proxy_checkpoint(pipe, checkpoint, config=config, transformer_state=state,
                                                           training=record)
        if opts.parts:
            record["checkpoint_parts"] = [p.name for p in split_checkpoint(checkpoint, Path(opts.parts))]
        return record

    curve: list[dict] = []
    loss_sum = torch.zeros((), device=device)
    interval_steps, step, last_loss = 0, 0, math.nan
    t_start = time.monotonic()
    next_save = t_start + opts.save_every_minutes * 60
    last_step = min((n for n in (opts.max_steps, opts.cooldown_steps) if n is not None), default=None)
    while last_step is None or step < last_step:
        stop = time.monotonic() >= deadline
        if dist.world > 1:  # every rank stops at the same step
            import torch.distributed as tdist

            flag = torch.tensor([float(stop)], device=device)
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            break
        t_step = time.monotonic()
        if cuda:
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()
        size = sizes[int(torch.multinomial(weights, 1, generator=data_generator))]
        batch = procedural_videos(size.batch, frames=size.frames, height=size.height, width=size.width,
                                  object_size=opts.object_size, kind_weights=opts.kind_weights,
                                  generator=data_generator, device=device)
        drop = torch.rand(size.batch, generator=data_generator) < opts.cfg_dropout
        text = text_table[to_device(torch.where(drop, unconditional, batch.labels), device)]
        with torch.no_grad():
            x0 = vae.normalize(vae.encode(batch.video))
        sigma = shifted_sigma(torch.rand(size.batch, generator=noise_generator, device=device), training_shift(opts, size))
        noise = torch.randn(x0.shape, generator=noise_generator, device=device)
        x_t, timestep, target = flow_matching_example(x0, noise, sigma)
        with autocast:
            prediction = model(hidden_states=x_t, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        loss = object_weighted_mse(prediction, target, vae, batch.object_mask, opts.object_weight, opts.motion_weight)

        lr = stretch_lr(opts, step, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        optimizer.step()
        step += 1
        if ema is not None:
            decay = opts.ema if previous else min(opts.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        loss_sum += loss.detach()
        interval_steps += 1
        size_steps[size.label()] += 1
        if cuda:  # timed on the GPU without waiting for it (settled at the next log)
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            pending.append((size.label(), begin, end))
        else:
            size_seconds[size.label()] += time.monotonic() - t_step

        if step % opts.log_every == 0 and dist.main:
            settle_timings()
            last_loss = float(loss_sum) / interval_steps
            val = validate()
            moving = validate_motion()
            elapsed = time.monotonic() - t_start
            curve.append({"step": step, "loss": round(last_loss, 6), "val_loss": round(sum(val.values()) / len(val), 6),
                          "lr": lr, "elapsed_s": round(elapsed, 2), **{f"val_{k}": v for k, v in val.items()},
                          "val_motion_region": moving["region"], "val_motion_direction": moving["direction"]})
            _log(f"step {step:6d}  loss {last_loss:.4f}  val {curve[-1]['val_loss']:.4f} {val}  {_motion_text(moving)}  lr {lr:.2e}  "
                 f"{step / elapsed:6.2f} steps/s  {elapsed:6.0f} s  ({time.monotonic() - started_at:.0f} s since start)")
            loss_sum.zero_()
            interval_steps = 0
            _write_curve(out, curve)
        if time.monotonic() >= next_save:
            if dist.main:
                save(step, last_loss, time.monotonic() - t_start, None, state=ema_state())
            next_save += opts.save_every_minutes * 60
    if cuda:
        torch.cuda.synchronize(device)
    settle_timings()
    elapsed = time.monotonic() - t_start
    if interval_steps:
        last_loss = float(loss_sum) / interval_steps
        curve.append({"step": step, "loss": round(last_loss, 6), "val_loss": None, "lr": opts.lr, "elapsed_s": round(elapsed, 2)})
    if not dist.main:
        _finish_distributed(dist)
        return TrainResult(checkpoint=checkpoint, steps=step, final_loss=last_loss, curve=curve, info={})
    _write_curve(out, curve)

    transformer.eval()
    if ema is not None:  # the shipped weights
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in params], ema)
    final_val = validate()
    final_motion = validate_motion()
    record = save(step, last_loss, elapsed, final_val)
    record["curve"] = curve
    record["motion_validation"] = {"size": smallest.label(), "videos": MOTION_VIDEOS, "start": initial_motion,
                                   "end": final_motion, "weights_at_end": record["weights"]}
    size = record["checkpoint_bytes"]
    _log(f"trained {step} steps ({steps_before + step} in all) in {elapsed:.0f} s, final loss {last_loss:.4f}, "
         f"validation loss {_mean(initial_val):.4f} -> {record['validation_loss']:.4f} {final_val} "
         f"({record['weights']} weights); checkpoint {checkpoint} ({size / 1e6:.2f} MB)")
    _log(f"moving objects at {smallest.label()} (where they arrive and leave): {_motion_text(initial_motion)} -> "
         f"{_motion_text(final_motion)} ({record['weights']} weights)")
    _log("seconds per step by size: " + json.dumps(record["stretches"][-1]["seconds_per_step"]))
    (out / "training.json").write_text(json.dumps(record, indent=1))  # kept if the samples fail
    if opts.samples:
        report = write_samples(checkpoint, out, opts, device)
        record["sample_checks"] = report
        record["sample_summary"] = check_summary(report)
        for r in report:
            _log(f"  sample {r['size']} {r['prompt']!r}: " + ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in r["checks"].items()))
        _log("caption checks passed / tried, by size: " + json.dumps(record["sample_summary"]))
    (out / "training.json").write_text(json.dumps(record, indent=1))
    if opts.install:
        shutil.copyfile(checkpoint, PROXY_CHECKPOINT)
        _log(f"installed as {PROXY_CHECKPOINT}")
    _log(f"done {time.monotonic() - started_at:.0f} s after start")
    _finish_distributed(dist)
    return TrainResult(checkpoint=checkpoint, steps=step, final_loss=last_loss, curve=curve, info=record)


def _motion_text(motion: dict[str, float]) -> str:
    return f"region {motion['region']:.4f}, reversed direction {motion['direction']:+.1%}"


def _finish_distributed(dist: _Distributed) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()


def _json_options(opts: TrainOptions) -> dict:
    return json.loads(json.dumps(asdict(opts), default=str))


def _write_curve(out: Path, curve: list[dict]) -> None:
    names = list(dict.fromkeys(k for row in curve for k in row)) or ["step", "loss", "val_loss", "lr", "elapsed_s"]
    with open(out / "loss.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(curve)


# ------------------------------------------------------------------------------ command line
def _sizes(text: str) -> tuple[TrainSize, ...]:
    return tuple(TrainSize.parse(part) for part in text.split(",") if part.strip())


def _object_size(text: str) -> tuple[float, float]:
    try:
        return check_object_size(text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _kind_weights(text: str) -> tuple[float, ...]:
    try:
        pairs = [part.split(":") for part in text.split(",") if part.strip()]
        return check_kind_weights({kind.strip(): float(weight) for kind, weight in pairs})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc} (e.g. moves:0.6,rotates:0.15,pan:0.15,zoom:0.1)") from None


def _videos(text: str) -> tuple[tuple[int, int, int], ...]:
    try:
        return tuple(tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip())  # type: ignore[misc]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FRAMESxHEIGHTxWIDTH[,...], e.g. 17x64x96,81x128x192") from None


def stretch_lr(opts: TrainOptions, step: int, warmup: int) -> float:
    """The lr of the stretch's step ``step`` (0-based): linear warm-up over ``warmup`` steps, then
    ``opts.lr``, or with ``opts.cooldown_steps`` N that times (1 - step / N), reaching 0 at step N."""
    lr = opts.lr * min(1.0, (step + 1) / max(1, warmup))
    if opts.cooldown_steps is not None:
        lr *= max(0.0, 1.0 - step / opts.cooldown_steps)
    return lr


def parse_args(argv=None) -> TrainOptions:
    parser = argparse.ArgumentParser(prog="python -m pipelines.proxy.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="micro config, a few dozen steps on the CPU (a check, not a model)")
    parser.add_argument("--minutes", type=float, help="wall-clock budget of the whole run (default 9; smoke 5)")
    parser.add_argument("--out", help="output folder (default $OUT, else ./proxy_out)")
    parser.add_argument("--resume", help="continue from this checkpoint (same architecture and captions); default: fresh weights")
    parser.add_argument("--parts", help="also write the checkpoint here in parts of at most 15 MiB at every save")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--sizes", type=_sizes, help="training sizes FxHxW:BATCH:WEIGHT, comma-separated "
                        f"(default {','.join(f'{s.label()}:{s.batch}:{s.weight}' for s in TRAIN_SIZES)})")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--cooldown-steps", type=int,
                        help="decay the lr linearly to 0 at this step of the stretch and stop there (default: constant lr)")
    parser.add_argument("--ema", type=float, help="EMA decay (0: ship the last weights)")
    parser.add_argument("--cfg-dropout", type=float)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--save-every-minutes", type=float)
    parser.add_argument("--tail-seconds", type=float, help="seconds kept after the loop to save and sample")
    parser.add_argument("--sample-steps", type=int)
    parser.add_argument("--sample-sizes", type=_videos, help="sizes to sample at, FxHxW comma-separated (default 17x64x96,81x128x192)")
    parser.add_argument("--no-samples", action="store_true")
    parser.add_argument("--device")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer (compile time counts)")
    parser.add_argument("--size-shift", action="store_true",
                        help="draw each size's training sigmas with the sampler's shift for that size (proxy_flow_shift)")
    parser.add_argument("--object-weight", type=float,
                        help="count the loss on the object's pixels 1 + W times (default 0: the plain MSE)")
    parser.add_argument("--motion-weight", type=float,
                        help="also count the loss where the object's coverage changed from the previous frame "
                             "(where it arrives and leaves) W times more (default 0)")
    parser.add_argument("--object-size", type=_object_size,
                        help=f"LOW,HIGH: draw the training objects' size (frame heights) from this range (default {OBJECT_SIZE[0]},{OBJECT_SIZE[1]})")
    parser.add_argument("--kind-weights", type=_kind_weights,
                        help="KIND:WEIGHT,...: how often each kind is drawn for training (default "
                             + ",".join(f"{k}:{w}" for k, w in zip(KINDS, KIND_WEIGHTS)) + "; kinds left out weigh 0)")
    parser.add_argument("--install", action="store_true", help=f"copy the checkpoint to {PROXY_CHECKPOINT}")
    try:
        args = parser.parse_args(argv)
    except ValueError as exc:  # a --sizes entry
        parser.error(str(exc))
    base = TrainOptions(smoke=args.smoke)
    if args.smoke:
        base = replace(base, **SMOKE_OPTIONS)
    if args.cooldown_steps is not None and args.cooldown_steps < 1:
        parser.error(f"--cooldown-steps {args.cooldown_steps}: give the stretch's last step, >= 1")
    for flag, value in (("--object-weight", args.object_weight), ("--motion-weight", args.motion_weight)):
        if value is not None and not value >= 0:
            parser.error(f"{flag} {value}: give a weight >= 0 (0: the plain MSE)")
    given = {f.name: getattr(args, f.name) for f in fields(TrainOptions) if getattr(args, f.name, None) is not None}
    given.pop("smoke", None)
    given["samples"] = not args.no_samples
    given["compile"], given["install"], given["size_shift"] = args.compile, args.install, args.size_shift
    return replace(base, **given)


def _mean(per_size: dict) -> float:
    """The mean of a per-size loss dict ({"17x64x96": loss, ...})."""
    return sum(per_size.values()) / max(1, len(per_size))


def main(argv=None, *, started_at: float | None = None) -> int:
    opts = parse_args(argv)
    result = train(opts, started_at=started_at)
    return 0 if math.isfinite(result.final_loss) else 1


if __name__ == "__main__":
    sys.exit(main(started_at=_PROCESS_START))
