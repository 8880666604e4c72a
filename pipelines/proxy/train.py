"""Train the proxy model: flow matching on procedural videos, within a wall-clock budget.

    python -m pipelines.proxy.train [--minutes 9] [--out DIR] [--install]   # one H200, bf16
    python -m pipelines.proxy.train --smoke                                 # micro config, CPU, seconds

What it does (the defaults are the shipped model's recipe):
- data: ``procedural_videos`` at the config's size (33 x 64 x 96), rendered on the training
  device, parameters from a CPU generator seeded with ``--seed``; latents through the exact latent
  map, normalised per colour channel with statistics measured on the data at the start (seed + 1).
- objective: rectified flow as Wan is trained: x_t = (1 - s) x_0 + s noise, the transformer
  predicts noise - x_0 (MSE); s = shift u / (1 + (shift - 1) u), u uniform: the distribution of
  the sigmas ``FlowMatchEulerDiscreteScheduler(shift=3)`` steps through; timestep input s x 1000 as
  the pipeline passes it. Captions through the frozen text encoder exactly as ``WanPipeline``
  encodes them (padded to 16 tokens); 10% replaced by the empty prompt (classifier-free guidance).
- optimiser: AdamW (lr 5e-4, betas 0.9 / 0.999, weight decay 0.01), 200 linear warm-up steps then
  constant, gradient clipping at 1, bf16 autocast on CUDA; EMA of the weights (0.999, with the
  usual (1 + n) / (10 + n) warm-up), which is what the checkpoint holds.
- budget: ``--minutes`` is the whole run's wall clock, counted from the start of this module (Python
  and the package imports, a few seconds, come before it): the loop stops ``--tail-seconds`` before it, leaving time to save and to generate the samples.
  ``--max-steps`` stops earlier. The lr schedule depends on the step only, so a run is reproducible
  from its seed and step count (up to nondeterministic GPU reductions).
- outputs, in ``--out`` (default ``$OUT``, else ``./proxy_out``): ``proxy.safetensors`` (also
  written every ``--save-every-minutes``, so a killed run leaves a checkpoint), ``training.json``
  (options, config, seed, steps, final loss, throughput), ``loss.csv``, ``samples/`` (one mp4 per
  prompt of ``PROXY_SAMPLE_PROMPTS`` from the saved checkpoint, ``samples.png`` contact sheet,
  ``samples.json`` with ``caption_checks``), ``data.png`` (the same prompts from the generator).
  ``--install`` copies the checkpoint to ``pipelines/proxy/proxy.safetensors``.
"""

from __future__ import annotations

import time

_PROCESS_START = time.monotonic()  # the --minutes budget of the command counts from here

import argparse
import csv
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from pipelines.evaluation.videos import slug, write_video
from pipelines.proxy.data import PROXY_CAPTIONS, PROXY_SAMPLE_PROMPTS, caption_checks, procedural_videos, to_device
from pipelines.proxy.model import (
    PROXY_CHECKPOINT,
    PROXY_CONFIG,
    SMOKE_CONFIG,
    ProxyConfig,
    build_proxy_pipeline,
    load_proxy_pipeline,
    save_proxy_checkpoint,
)

__all__ = [
    "TrainOptions",
    "TrainResult",
    "train",
    "main",
    "training_flops_per_video",
    "latent_statistics",
    "shifted_sigma",
    "flow_matching_example",
]

CHECKPOINT_NAME = "proxy.safetensors"
STATISTICS_BATCHES = 4
VALIDATION_VIDEOS = 8
TIMESTEP_SCALE = 1000.0  # the scheduler's num_train_timesteps: timestep = sigma x 1000
SHEET_FRAMES = 5  # frames per row of a contact sheet


@dataclass(frozen=True)
class TrainOptions:
    """Every knob of a run (``--smoke`` changes the defaults marked so in ``SMOKE_OPTIONS``)."""

    minutes: float = 9.0
    smoke: bool = False
    out: str | None = None
    seed: int = 0
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 200
    max_steps: int | None = None
    ema: float = 0.999
    cfg_dropout: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 50
    save_every_minutes: float = 2.0
    tail_seconds: float = 30.0
    samples: bool = True
    sample_steps: int = 30
    sample_prompts: tuple[str, ...] = PROXY_SAMPLE_PROMPTS
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
    minutes=5.0, batch_size=4, lr=2e-3, warmup_steps=5, max_steps=40, ema=0.9, log_every=5,
    tail_seconds=10.0, sample_steps=2, sample_prompts=PROXY_SAMPLE_PROMPTS[:2],
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
def training_flops_per_video(config: ProxyConfig = PROXY_CONFIG) -> float:
    """FLOPs of one training example (forward + backward = 3 x forward) at the config's video size:
    matmuls and attention only (2 FLOPs per multiply-add)."""
    t, h, w = config.tokens
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
def latent_statistics(config: ProxyConfig, seed: int, batch_size: int, device) -> tuple[list[float], list[float]]:
    """Per latent channel mean and std of the procedural data, measured per colour channel (the
    latent channels of one colour hold the same pixels) on ``STATISTICS_BATCHES`` batches drawn
    with seed + 1, rounded to 4 decimals."""
    generator = torch.Generator().manual_seed(seed + 1)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for _ in range(STATISTICS_BATCHES):
        video = procedural_videos(batch_size, frames=config.frames, height=config.height, width=config.width,
                                  generator=generator, device=device).video.double()
        total += video.sum((0, 2, 3, 4)).cpu()
        total_sq += video.square().sum((0, 2, 3, 4)).cpu()
        count += video.numel() // 3
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


def validation_batch(config: ProxyConfig, seed: int, size: int, vae, text_table: torch.Tensor, device) -> ValidationBatch:
    """``size`` videos drawn with seed + 2 (CPU generators: the same batch on every device)."""
    generator = torch.Generator().manual_seed(seed + 2)
    batch = procedural_videos(size, frames=config.frames, height=config.height, width=config.width,
                              generator=generator, device=device)
    x0 = vae.normalize(vae.encode(batch.video))
    noise = torch.randn(x0.shape, generator=generator).to(device)
    sigma = shifted_sigma((torch.arange(size, dtype=torch.float32) + 0.5) / size, config.shift).to(device)
    x_t, timestep, target = flow_matching_example(x0, noise, sigma)
    return ValidationBatch(x_t=x_t, target=target, timestep=timestep, text=text_table[batch.labels.to(device)])


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
    """Generate one video per sample prompt with the pipeline loaded from ``checkpoint``; write mp4s,
    a contact sheet and ``samples.json`` (each prompt's ``caption_checks``); return the checks."""
    import imageio

    config = opts.config
    pipe = load_proxy_pipeline(device, torch.float32, path=checkpoint)
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    videos, report = [], []
    for i, prompt in enumerate(opts.sample_prompts):
        frames = pipe(
            prompt, height=config.height, width=config.width, num_frames=config.frames,
            num_inference_steps=opts.sample_steps, guidance_scale=5.0, max_sequence_length=config.max_sequence_length,
            output_type="pt", generator=torch.Generator().manual_seed(opts.seed + i),
        ).frames[0]  # [T, 3, H, W] in [0, 1]
        video = (frames.permute(1, 0, 2, 3) * 2 - 1).float().cpu()
        videos.append(video)
        write_video(frames, folder / f"{i:02d}_{slug(prompt)}.mp4")
        report.append({"prompt": prompt, "checks": caption_checks(video, prompt)})
    imageio.imwrite(str(folder / "samples.png"), _sheet(videos))
    data = procedural_videos(len(opts.sample_prompts), frames=config.frames, height=config.height, width=config.width,
                             seed=opts.seed, labels=list(opts.sample_prompts))
    imageio.imwrite(str(out / "data.png"), _sheet(list(data.video)))
    (folder / "samples.json").write_text(json.dumps(report, indent=1))
    return report


# ------------------------------------------------------------------------------ the run
def _out_dir(opts: TrainOptions) -> Path:
    return Path(opts.out or os.environ.get("OUT") or "proxy_out")


def _log(message: str) -> None:
    print(message, flush=True)


def train(opts: TrainOptions, *, started_at: float | None = None) -> TrainResult:
    """Run the training described by ``opts``; see the module docstring.

    ``started_at``: ``time.monotonic()`` the ``--minutes`` budget counts from (default: now; the
    command line passes the time its module started).
    """
    if opts.install and opts.smoke:
        raise ValueError("--install copies the checkpoint into the package: not with --smoke")
    config = opts.config
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    out = _out_dir(opts)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    started_at = time.monotonic() if started_at is None else started_at
    deadline = started_at + opts.minutes * 60 - opts.tail_seconds
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for the float32 parts (validation, samples)
    torch.manual_seed(opts.seed)

    mean, std = latent_statistics(config, opts.seed, opts.batch_size, device)
    pipe = build_proxy_pipeline(config, seed=opts.seed, latents_mean=mean, latents_std=std).to(device)
    vae, transformer = pipe.vae, pipe.transformer
    text_table = caption_embeddings(pipe, config, device)
    unconditional = len(PROXY_CAPTIONS)
    names = [n for n, _ in transformer.named_parameters()]
    params = [p for _, p in transformer.named_parameters()]
    n_params = sum(p.numel() for p in params)
    flops = training_flops_per_video(config)
    _log(f"proxy training on {torch.cuda.get_device_name(device) if cuda else device}: {n_params / 1e6:.2f}M parameters, "
         f"{'x'.join(map(str, config.tokens))} tokens, batch {opts.batch_size}, "
         f"{flops * opts.batch_size / 1e12:.2f} TFLOP per step; budget {opts.minutes} min; out {out}")
    per_colour = config.latent_channels // 3
    _log(f"latent statistics per colour: mean {mean[::per_colour]}, std {std[::per_colour]}")

    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=opts.lr, betas=(0.9, 0.999), weight_decay=opts.weight_decay,
                                  **({"fused": True} if cuda else {}))
    ema = [p.detach().clone() for p in params] if opts.ema > 0 else None
    model = torch.compile(transformer) if opts.compile else transformer
    data_generator = torch.Generator().manual_seed(opts.seed)
    noise_generator = torch.Generator(device).manual_seed(opts.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    val = validation_batch(config, opts.seed, min(VALIDATION_VIDEOS, opts.batch_size), vae, text_table, device)
    initial_val = validation_loss(model, val, autocast)
    _log(f"validation loss at step 0: {initial_val:.4f}")

    def ema_state() -> dict:
        state = transformer.state_dict()
        if ema is not None:
            state.update(zip(names, ema))
        return state

    def info(step: int, final_loss: float, elapsed: float) -> dict:
        return {
            "seed": opts.seed, "steps": step, "videos_seen": step * opts.batch_size, "final_loss": final_loss,
            "train_seconds": round(elapsed, 1), "steps_per_second": round(step / max(elapsed, 1e-9), 3),
            "parameters": n_params, "device": torch.cuda.get_device_name(device) if cuda else str(device),
            "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
            "initial_validation_loss": initial_val, "weights": "ema" if ema is not None else "last", "options": _json_options(opts), "config": config.to_dict(),
        }

    curve: list[dict] = []
    loss_sum = torch.zeros((), device=device)
    interval_steps, step, last_loss = 0, 0, math.nan
    t_start = time.monotonic()
    next_save = t_start + opts.save_every_minutes * 60
    while time.monotonic() < deadline and (opts.max_steps is None or step < opts.max_steps):
        batch = procedural_videos(opts.batch_size, frames=config.frames, height=config.height, width=config.width,
                                  generator=data_generator, device=device)
        drop = torch.rand(opts.batch_size, generator=data_generator) < opts.cfg_dropout
        text = text_table[to_device(torch.where(drop, unconditional, batch.labels), device)]
        with torch.no_grad():
            x0 = vae.normalize(vae.encode(batch.video))
        sigma = shifted_sigma(torch.rand(opts.batch_size, generator=noise_generator, device=device), config.shift)
        noise = torch.randn(x0.shape, generator=noise_generator, device=device)
        x_t, timestep, target = flow_matching_example(x0, noise, sigma)
        with autocast:
            prediction = model(hidden_states=x_t, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), target)

        lr = opts.lr * min(1.0, (step + 1) / max(1, opts.warmup_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        optimizer.step()
        step += 1
        if ema is not None:
            decay = min(opts.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        loss_sum += loss.detach()
        interval_steps += 1

        if step % opts.log_every == 0:
            last_loss = float(loss_sum) / interval_steps
            val_loss = validation_loss(model, val, autocast)
            elapsed = time.monotonic() - t_start
            curve.append({"step": step, "loss": round(last_loss, 6), "val_loss": round(val_loss, 6), "lr": lr,
                          "elapsed_s": round(elapsed, 2)})
            _log(f"step {step:6d}  loss {last_loss:.4f}  val {val_loss:.4f}  lr {lr:.2e}  {step / elapsed:6.2f} steps/s  "
                 f"{elapsed:6.0f} s  ({time.monotonic() - started_at:.0f} s since start)")
            loss_sum.zero_()
            interval_steps = 0
            _write_curve(out, curve)
        if time.monotonic() >= next_save:
            save_proxy_checkpoint(pipe, checkpoint, config=config, transformer_state=ema_state(),
                                  training=info(step, last_loss, time.monotonic() - t_start))
            next_save += opts.save_every_minutes * 60
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.monotonic() - t_start
    if interval_steps:
        last_loss = float(loss_sum) / interval_steps
        curve.append({"step": step, "loss": round(last_loss, 6), "val_loss": None, "lr": opts.lr, "elapsed_s": round(elapsed, 2)})
    _write_curve(out, curve)

    transformer.eval()
    if ema is not None:  # the shipped weights
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in params], ema)
    record = info(step, last_loss, elapsed)
    record["validation_loss"] = validation_loss(transformer, val, autocast)
    record["checkpoint_bytes"] = save_proxy_checkpoint(pipe, checkpoint, config=config, training=record)
    size = record["checkpoint_bytes"]
    _log(f"trained {step} steps ({step * opts.batch_size} videos) in {elapsed:.0f} s, final loss {last_loss:.4f}, "
         f"validation loss {initial_val:.4f} -> {record['validation_loss']:.4f} ({record['weights']} weights); "
         f"checkpoint {checkpoint} ({size / 1e6:.2f} MB)")
    (out / "training.json").write_text(json.dumps(record, indent=1))  # kept if the samples fail
    if opts.samples:
        report = write_samples(checkpoint, out, opts, device)
        record["sample_checks"] = report
        passed = sum(all(r["checks"].values()) for r in report)
        for r in report:
            _log(f"  sample {r['prompt']!r}: " + ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in r["checks"].items()))
        _log(f"samples in {out / 'samples'}: {passed}/{len(report)} look like their caption (caption_checks)")
    (out / "training.json").write_text(json.dumps(record, indent=1))
    if opts.install:
        shutil.copyfile(checkpoint, PROXY_CHECKPOINT)
        _log(f"installed as {PROXY_CHECKPOINT}")
    _log(f"done {time.monotonic() - started_at:.0f} s after start")
    return TrainResult(checkpoint=checkpoint, steps=step, final_loss=last_loss, curve=curve, info=record)


def _json_options(opts: TrainOptions) -> dict:
    return json.loads(json.dumps(asdict(opts), default=str))


def _write_curve(out: Path, curve: list[dict]) -> None:
    with open(out / "loss.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "val_loss", "lr", "elapsed_s"])
        writer.writeheader()
        writer.writerows(curve)


# ------------------------------------------------------------------------------ command line
def parse_args(argv=None) -> TrainOptions:
    parser = argparse.ArgumentParser(prog="python -m pipelines.proxy.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="micro config, a few dozen steps on the CPU (a check, not a model)")
    parser.add_argument("--minutes", type=float, help="wall-clock budget of the whole run (default 9; smoke 5)")
    parser.add_argument("--out", help="output folder (default $OUT, else ./proxy_out)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--ema", type=float, help="EMA decay (0: ship the last weights)")
    parser.add_argument("--cfg-dropout", type=float)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--save-every-minutes", type=float)
    parser.add_argument("--tail-seconds", type=float, help="seconds kept after the loop to save and sample")
    parser.add_argument("--sample-steps", type=int)
    parser.add_argument("--no-samples", action="store_true")
    parser.add_argument("--device")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer (compile time counts)")
    parser.add_argument("--install", action="store_true", help=f"copy the checkpoint to {PROXY_CHECKPOINT}")
    args = parser.parse_args(argv)
    base = TrainOptions(smoke=args.smoke)
    if args.smoke:
        base = replace(base, **SMOKE_OPTIONS)
    given = {f.name: getattr(args, f.name) for f in fields(TrainOptions) if getattr(args, f.name, None) is not None}
    given.pop("smoke", None)
    given["samples"] = not args.no_samples
    given["compile"], given["install"] = args.compile, args.install
    return replace(base, **given)


def main(argv=None, *, started_at: float | None = None) -> int:
    opts = parse_args(argv)
    result = train(opts, started_at=started_at)
    return 0 if math.isfinite(result.final_loss) else 1


if __name__ == "__main__":
    sys.exit(main(started_at=_PROCESS_START))
