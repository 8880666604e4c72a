"""One denoising step of full-size random-weight video transformers, sparse against dense, at
attention densities 0.1, 0.2 and 0.3; and the time of the Sparse-vDiT plan search.

Models are built from their configs (no download) in bf16 on the GPU, random weights. Tokens per
forward are the family's own token layout (``pipelines.token_layout_of``); the run prints the
layout of every model and checks it against the key length the attention layers really see:
    1.3b      Wan2.1-1.3B at 480p 81 frames: latent [1, 16, 21, 60, 104], 32,760 tokens
    14b       Wan2.1-14B at 720p 81 frames: latent [1, 16, 21, 90, 160], 75,600 tokens
    hunyuan   HunyuanVideo (13B) at 720p 129 frames: latent [1, 16, 33, 90, 160], 118,800 video
              tokens + 256 text tokens after them, of which the first 64 are real (the pipeline pads
              prompts to 256 and passes the mask, so the stock step runs SDPA with that mask)
``--models families`` (hv15,mochi,ltx2,skyreels720), text-to-video as each pipeline feeds its
transformer; params x 2 bytes = the bf16 weights (the build makes them in float32 first, x 4 bytes):
    hv15         HunyuanVideo-1.5 (8.33 B params, 16.7 GB) at 720p 121 frames (720 x 1280, the
                 pipeline's default size for the 720p checkpoint): latent [1, 32, 31, 45, 80] (model
                 input [1, 65, 31, 45, 80]: image-latent and mask channels, zeros in text-to-video),
                 111,600 video tokens + 1,985 conditioning tokens after them = 113,585: 1,000 MLLM
                 text (64 real), 256 ByT5 glyph (all padding: no quoted text) and 729 SigLIP image
                 tokens (all padding in text-to-video). Memory: the stock processor makes two
                 [1, 1, S, S] bool masks per layer (12.9 GB each at S = 113,585) and SDPA may turn the
                 mask into a bf16 bias (25.8 GB, padded to a multiple of 16 keys: another copy), so
                 dense (diffusers) needs ~70 to ~95 GB and dense (FullAttention) (one such mask) ~55
                 to ~80 GB: either may not fit an 80 GB H100 (such a row says "out of memory", the
                 run goes on; an H200 fits them). The sparse rows attend with key lengths (our
                 processor still makes its one mask per layer, then drops it: ~30 GB peak).
    mochi        Mochi 1 (10.0 B params, 20.1 GB) at 480 x 848, 163 frames: latent
                 [1, 12, 28, 60, 106], 44,520 video tokens + 256 text tokens (T5, 64 real) = 44,776
                 (the stock processor attends each sample's real text only: 44,584 keys)
    ltx2         LTX-2 (18.9 B params, 37.8 GB; 75.5 GB in float32 while it is built, which still
                 fits 80 GB) at 1024 x 1536, 121 frames (the second stage of diffusers' documented
                 two-stage generation: 512 x 768 upsampled by 2): latent [1, 128, 16, 32, 48] packed to
                 24,576 video tokens [1, 24576, 128]; its video self-attention is served, the audio
                 (126 latent frames: 121 frames at 24 fps) and every cross-attention stay stock
    skyreels720  SkyReels-V2 14B (14.3 B params, 28.6 GB: Wan2.1-14B's config) at 720p 121 frames
                 (720 x 1280, SkyReels-V2's 720P frame count): latent [1, 16, 31, 90, 160], 111,600 tokens
Configs from diffusers' own source: Wan, SkyReels-V2 (SkyReels-V2-DF-14B-720P) and HunyuanVideo-1.5
(720p_t2v) from scripts/convert_*_to_diffusers.py; Mochi and LTX-2 (version "2.0") are their model
classes' defaults, which their conversion scripts use.

One transformer forward = one denoising step of one CFG branch. Forwards timed (CUDA-synchronised
wall clock, median of --reps after --warmup untimed ones), with the peak GPU memory of each row:

    dense (diffusers)        the stock processors: diffusers' default attention (cuDNN SDPA on the
                             H200 for Wan; the note says how each other family's stock step attends)
    dense (FullAttention)    our processors, dense through dispatch_attention_fn
    plan (d)                 a Sparse-vDiT plan of measured density d: each head one mode, the two
                             modes of the pool nearest d from below and above mixed so the layer's
                             mean density is d (the density printed is the plan's own)
    AdaSpa (s = 1 - d)       AdaSpa's sparse step, after one first search on the same input

Random weights: these rows measure speed at a density, not quality (the proxy model's job).

``--search`` (1.3b only) times the plan search as ``search_plan`` runs it: the first forward
(measures every candidate's kernel cost at this shape, then searches), then per step one searching
forward (dense with LSE and every candidate per layer) and one forward of the other CFG branch that
reuses the step's decisions. The search of 50 steps x 2 prompts is COMPUTED from those times.

Time of ``--models families --densities 0.2 --reps 1 --warmup 1`` on one H100, ESTIMATED, not
measured (dense forward FLOPs at 400 TFLOP/s; 4 dense forwards, an AdaSpa first search of ~1.5 dense
and 4 sparse forwards a model, the sparse ones from the measured Wan2.1-14B / HunyuanVideo ratios;
build and Triton compiles ~45 s a model): hv15 ~2.5 min (dense forward 6.3 PFLOP, ~16 s; ~1.3 min if
its dense rows run out of memory), mochi ~1.3 min (1.7 PFLOP, ~4 s), ltx2 ~1.2 min (1.1 PFLOP, ~3 s),
skyreels720 ~4.5 min (12.9 PFLOP, ~32 s): ~9.5 min in all, past a 600-second call with no margin.
Run skyreels720 alone and hv15,mochi,ltx2 in a second call (~5 min each).

    python benchmarks/bench_end_to_end.py                              # all three (H200: ~8 minutes)
    python benchmarks/bench_end_to_end.py --models 1.3b,14b --search
    python benchmarks/bench_end_to_end.py --models 14b --densities 0.2 --kinds plan --compile
    python benchmarks/bench_end_to_end.py --models hv15,mochi,ltx2 --densities 0.2   # H100: ~5 min
    python benchmarks/bench_end_to_end.py --models skyreels720 --densities 0.2       # H100: ~5 min
    python benchmarks/bench_end_to_end.py --models 14b --densities 0.2 --kinds full,plan --compile --quant float8
    python benchmarks/bench_end_to_end.py --smoke                      # tiny models; CPU interpreter without CUDA
    python benchmarks/bench_end_to_end.py --smoke --models families    # the four families' tiny models
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_adaspa  # noqa: E402
import common  # noqa: E402
import torch  # noqa: E402

DENSITIES = (0.1, 0.2, 0.3)
SEARCH_STEPS, SEARCH_PROMPTS, SEARCH_CFG = 50, 2, 2
GIB = 2**30
DEFAULT_MODELS = ("1.3b", "14b", "hunyuan")
MODEL_SETS = {"families": ("hv15", "mochi", "ltx2", "skyreels720")}  # --models shorthands
REAL_TEXT = 64  # real tokens of each padded prompt (the rest is padding, masked)
HUNYUAN_TEXT = 256
HUNYUAN_CONFIG = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                      num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                      qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                      rope_theta=256.0, rope_axes_dim=(16, 56, 56))
# scripts/convert_hunyuan_video1_5_to_diffusers.py, TRANSFORMER_CONFIGS["720p_t2v"] (the class defaults but
# target_size and task_type)
HV15_CONFIG = dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
                   num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
                   text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0,
                   rope_axes_dim=(16, 56, 56), use_meanflow=False, target_size=960, task_type="t2v")
# MochiTransformer3DModel's defaults: the model scripts/convert_mochi_to_diffusers.py builds (Mochi 1 preview)
MOCHI_CONFIG = dict(patch_size=2, num_attention_heads=24, attention_head_dim=128, num_layers=48,
                    pooled_projection_dim=1536, in_channels=12, text_embed_dim=4096, time_embed_dim=256,
                    max_sequence_length=256)
# scripts/convert_ltx2_to_diffusers.py, version "2.0" (LTX-2 19B); the keys it does not name are the class defaults
LTX2_CONFIG = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                   attention_head_dim=128, cross_attention_dim=4096, audio_in_channels=128, audio_out_channels=128,
                   audio_num_attention_heads=32, audio_attention_head_dim=64, audio_cross_attention_dim=2048,
                   num_layers=48, caption_channels=3840)
LTX2_TEXT = 1024  # LTX2Pipeline's max_sequence_length
LTX2_FPS = 24.0
# LTX2Pipeline: round(num_frames / frame_rate * sampling rate / hop length / the audio VAE's temporal compression)
LTX2_AUDIO_FRAMES = round(121 / LTX2_FPS * 16000 / 160 / 4)


@dataclasses.dataclass(frozen=True)
class Model:
    """One transformer to time: its diffusers class and config, and its forward's inputs.

    Attributes:
        latent: [B, C, T, H, W] of the pipeline's latent before patchify.
        text: [B, L, dim] of the prompt embeddings, L the padded length.
        inputs: ``(spec, device, dtype, generator) -> forward kwargs``: how the family's pipeline
            feeds its transformer (one of the ``*_inputs`` functions below).
        real_text: real tokens of each padded prompt (the rest masked), for families with a mask.
        sizes: further input sizes a family's ``inputs`` reads (HunyuanVideo-1.5's glyph and image
            tokens, LTX-2's audio frames).
        stock: how the stock step attends (the note of the dense (diffusers) row).
    """

    key: str
    name: str
    cls: str
    config: dict
    latent: tuple[int, int, int, int, int]
    text: tuple[int, int, int]
    inputs: Callable[..., dict]
    real_text: int | None = None
    sizes: dict = dataclasses.field(default_factory=dict)
    stock: str = ""


# --------------------------------------------------------------------------- forward inputs
def wan_inputs(spec: Model, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    """Wan and SkyReels-V2: ``bench_adaspa.model_inputs``: latent, text, timestep [B]."""
    return bench_adaspa.model_inputs(spec, device, dtype, generator=gen)


def prompt_mask(spec: Model, device: torch.device) -> torch.Tensor:
    """[B, L] long: 1 on the first ``spec.real_text`` tokens of each padded prompt, 0 on its padding."""
    mask = torch.zeros(spec.text[:2], dtype=torch.long, device=device)
    mask[:, : spec.real_text] = 1
    return mask


def hunyuan_inputs(spec: Model, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    """HunyuanVideo: ``wan_inputs`` plus the text mask, the pooled CLIP text [B, pooled_projection_dim]
    and, for a guidance-distilled config, the guidance [B]."""
    kwargs = wan_inputs(spec, device, dtype, gen)
    kwargs.update(encoder_attention_mask=prompt_mask(spec, device),
                  pooled_projections=torch.randn(spec.text[0], spec.config["pooled_projection_dim"], generator=gen,
                                                 device=device, dtype=dtype))
    if spec.config.get("guidance_embeds"):
        kwargs["guidance"] = torch.full((spec.text[0],), 6000.0, device=device, dtype=dtype)
    return kwargs


def hunyuan15_inputs(spec: Model, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    """HunyuanVideo-1.5 text-to-video, as HunyuanVideo15Pipeline feeds it: the latent [B, C, T, H, W]
    with zero image-latent and mask channels after it ([B, in_channels, T, H, W]), the MLLM text
    [B, L, text_embed_dim] and its mask, the ByT5 glyph text [B, glyph, text_embed_2_dim] all padding
    (zeros, mask 0: a prompt without quoted text), the image embeds [B, image, image_embed_dim] all
    zeros (the model then masks every image token); the timestep in the model's dtype, as the
    pipeline casts it."""
    kwargs = wan_inputs(spec, device, dtype, gen)
    b, c, t, h, w = spec.latent
    latent = kwargs["hidden_states"]
    glyph, image = spec.sizes["glyph_text"], spec.sizes["image_tokens"]
    kwargs.update(
        hidden_states=torch.cat([latent, latent.new_zeros(b, spec.config["in_channels"] - c, t, h, w)], dim=1),
        timestep=kwargs["timestep"].to(dtype),
        encoder_attention_mask=prompt_mask(spec, device),
        encoder_hidden_states_2=torch.zeros(b, glyph, spec.config["text_embed_2_dim"], device=device, dtype=dtype),
        encoder_attention_mask_2=torch.zeros(b, glyph, dtype=torch.long, device=device),
        image_embeds=torch.zeros(b, image, spec.config["image_embed_dim"], device=device, dtype=dtype),
    )
    return kwargs


def mochi_inputs(spec: Model, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    """Mochi: ``wan_inputs`` plus the text mask (MochiPipeline pads the T5 prompt to 256)."""
    return dict(wan_inputs(spec, device, dtype, gen), encoder_attention_mask=prompt_mask(spec, device))


def ltx2_inputs(spec: Model, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict:
    """LTX-2 text-to-video, as LTX2Pipeline feeds it: the latent packed into tokens [B, T*H*W, C]
    (patch 1: token order frame, row, col) with the grid as ``num_frames`` / ``height`` / ``width``,
    audio latent tokens [B, audio_frames, audio_in_channels], the connectors' video and audio prompt
    embeddings [B, L, caption_channels] with all-ones masks (the connectors put registers in the
    padding), one timestep [B] for video and audio."""
    kwargs = wan_inputs(spec, device, dtype, gen)
    b, _, t, h, w = spec.latent
    audio = spec.sizes["audio_frames"]
    ones = torch.ones(spec.text[:2], dtype=torch.long, device=device)
    kwargs.update(
        hidden_states=kwargs["hidden_states"].flatten(2).transpose(1, 2).contiguous(),
        audio_hidden_states=torch.randn(b, audio, spec.config["audio_in_channels"], generator=gen, device=device,
                                        dtype=dtype),
        audio_encoder_hidden_states=torch.randn(spec.text, generator=gen, device=device, dtype=dtype),
        encoder_attention_mask=ones, audio_encoder_attention_mask=ones,
        num_frames=t, height=h, width=w, fps=LTX2_FPS, audio_num_frames=audio,
    )
    return kwargs


# --------------------------------------------------------------------------- models
def models(smoke: bool) -> dict[str, Model]:
    from pipelines.families import hunyuan_video15, ltx2, mochi, skyreels_v2

    stock = {
        "hunyuan": "SDPA with the [B, 1, 1, S] text mask",
        "hv15": "SDPA with a [B, 1, S, S] bool mask built per layer",
        "mochi": "SDPA per sample on its real text tokens",
        "ltx2": "SDPA; audio and cross-attention stock in every row",
    }
    if smoke:
        from sparse_vdit.protocol import public_config

        def tiny(build) -> dict:  # the config of a family's tiny test model (2 heads x 64, 2 layers)
            return public_config(build(num_layers=2).config)

        w = bench_adaspa.SMOKE_MODEL
        tiny_h = dict(HUNYUAN_CONFIG, num_attention_heads=2, attention_head_dim=64, num_layers=1, num_single_layers=1,
                      num_refiner_layers=1, mlp_ratio=1.0, guidance_embeds=False, text_embed_dim=32,
                      pooled_projection_dim=16, rope_axes_dim=(16, 24, 24))
        specs = [
            Model("1.3b", w.name, "WanTransformer3DModel", w.config, w.latent, w.text, wan_inputs),
            Model("hunyuan", "tiny HunyuanVideo (smoke)", "HunyuanVideoTransformer3DModel", tiny_h,
                  (1, 16, 3, 8, 12), (1, 8, 32), hunyuan_inputs, 5),
            Model("hv15", "tiny HunyuanVideo-1.5 (smoke)", "HunyuanVideo15Transformer3DModel",
                  tiny(hunyuan_video15.tiny_hunyuan15_transformer), (1, 4, 3, 6, 8), (1, 6, 32), hunyuan15_inputs, 5,
                  dict(glyph_text=4, image_tokens=3)),
            Model("mochi", "tiny Mochi (smoke)", "MochiTransformer3DModel", tiny(mochi.tiny_mochi_transformer),
                  (1, 4, 3, 8, 12), (1, 6, 32), mochi_inputs, 5),
            Model("ltx2", "tiny LTX-2 (smoke)", "LTX2VideoTransformer3DModel", tiny(ltx2.tiny_ltx2_transformer),
                  (1, 4, 3, 6, 8), (1, 6, 32), ltx2_inputs, sizes=dict(audio_frames=5)),
            Model("skyreels720", "tiny SkyReels-V2 (smoke)", "SkyReelsV2Transformer3DModel",
                  tiny(skyreels_v2.tiny_skyreels_v2_transformer), (1, 4, 3, 8, 12), (1, 6, 32), wan_inputs),
        ]
    else:
        specs = [Model(k, s.name, "WanTransformer3DModel", s.config, s.latent, s.text, wan_inputs)
                 for k, s in bench_adaspa.MODELS.items()]
        specs += [
            Model("hunyuan", "HunyuanVideo 720p", "HunyuanVideoTransformer3DModel", HUNYUAN_CONFIG,
                  (1, 16, 33, 90, 160), (1, HUNYUAN_TEXT, 4096), hunyuan_inputs, REAL_TEXT),
            Model("hv15", "HunyuanVideo-1.5 720p", "HunyuanVideo15Transformer3DModel", HV15_CONFIG, (1, 32, 31, 45, 80),
                  (1, hunyuan_video15.MLLM_TEXT_LEN, HV15_CONFIG["text_embed_dim"]), hunyuan15_inputs, REAL_TEXT,
                  dict(glyph_text=hunyuan_video15.GLYPH_TEXT_LEN, image_tokens=hunyuan_video15.IMAGE_TOKENS)),
            Model("mochi", "Mochi 480p 163 frames", "MochiTransformer3DModel", MOCHI_CONFIG, (1, 12, 28, 60, 106),
                  (1, mochi.PIPELINE_TEXT_LEN, MOCHI_CONFIG["text_embed_dim"]), mochi_inputs, REAL_TEXT),
            Model("ltx2", "LTX-2 1024 x 1536 121 frames", "LTX2VideoTransformer3DModel", LTX2_CONFIG,
                  (1, 128, 16, 32, 48), (1, LTX2_TEXT, LTX2_CONFIG["caption_channels"]), ltx2_inputs,
                  sizes=dict(audio_frames=LTX2_AUDIO_FRAMES)),
            Model("skyreels720", "SkyReels-V2 14B 720p 121 frames", "SkyReelsV2Transformer3DModel",
                  bench_adaspa.MODELS["14b"].config, (1, 16, 31, 90, 160), (1, 512, 4096), wan_inputs),
        ]
    return {s.key: dataclasses.replace(s, stock=stock.get(s.key, "")) for s in specs}


def forward_layout(model, kwargs: dict):
    """The ``TokenLayout`` of a forward with ``kwargs``, as the step tracker reads it."""
    from pipelines import family_of

    family = family_of(model)
    return family.forward_layout(model.config, family.read_inputs(model, kwargs))


def mode_pool():
    """Modes a plan mixes to reach a density: the search's kinds over a wider parameter grid."""
    from sparse_vdit.modes import Diagonal, MultiDiagonal, VerticalStripe

    pool = [Diagonal(r) for r in (1, 2, 4, 8, 16)]
    pool += [MultiDiagonal(w, None) for w in (1, 2, 3, 4, 6, 8, 12)]
    pool += [MultiDiagonal(w, r) for w in (4, 8, 12, 16, 24) for r in (1, 2, 4, 8)]
    pool += [VerticalStripe(f, 1) for f in ((0,), (0, -1), (0, 5, 10, 15, -1))]
    return pool


def plan_at(model, layout, density: float, block: int):
    """A one-step plan for the forward's ``layout`` whose heads mix the two pool modes bracketing
    ``density`` (mean = density)."""
    from pipelines import model_info
    from sparse_vdit import Plan
    from sparse_vdit.modes import mode_density
    from sparse_vdit.plan import CostTable

    info = model_info(model)
    dens = {m: mode_density(m, layout, block) for m in mode_pool()}
    below = max((m for m in dens if dens[m] <= density), key=dens.get, default=min(dens, key=dens.get))
    above = min((m for m in dens if dens[m] >= density), key=dens.get, default=max(dens, key=dens.get))
    heads = info.num_heads
    span = dens[above] - dens[below]
    n_above = heads if span <= 0 else round(heads * (density - dens[below]) / span)
    modes = tuple(above if i < n_above else below for i in range(heads))
    costs = CostTable("flops", None, "bench_end_to_end (unused)", tuple((m, dens[m]) for m in {below, above}))
    plan = Plan.from_step_modes([[modes] * info.num_layers], model=info, token_layout=layout, block_size=block,
                                lam=0.0, epsilon=0.0, cost=costs)
    return plan, f"{n_above} x {above!r} + {heads - n_above} x {below!r}"


class Timer:
    def __init__(self, device: torch.device, warmup: int, reps: int) -> None:
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, forward, warmup: int | None = None) -> float:
        times = []
        warm = self.warmup if warmup is None else warmup
        for i in range(warm + self.reps):
            common.sync(self.device)
            t0 = time.perf_counter()
            forward(i)
            common.sync(self.device)
            if i >= warm:
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def sequence_probe():
    """A ``FullAttention`` (every call dense through diffusers, as FullAttention) that records the key
    length of every call it serves in ``seen``: the joint sequence the model really attends."""
    from sparse_vdit import FullAttention

    class SequenceProbe(FullAttention):
        def __init__(self) -> None:
            self.seen: set[int] = set()

        def __call__(self, call, q, k, v):  # q, k, v: [B, H, S, D]
            self.seen.add(k.shape[2])
            return None

    return SequenceProbe()


@torch.no_grad()
def build(spec: Model, device: torch.device, dtype: torch.dtype, quant: str | None = None):
    """``spec``'s random-weight transformer (linear layers quantised by ``quant``, see
    ``bench_adaspa.quantize_linears``), its inputs and its token layout; prints what was built."""
    t0 = time.perf_counter()
    model = bench_adaspa.build_model(spec, device, dtype, cls=spec.cls)
    quantized = bench_adaspa.quantize_linears(model, quant)  # before any compile: every kind, stock included
    kwargs = spec.inputs(spec, device, dtype, torch.Generator(device=device).manual_seed(0))
    layout = forward_layout(model, kwargs)
    print(f"[{spec.key}] built in {time.perf_counter() - t0:.0f} s"
          f"{f'; {quantized} linear layers {quant} (torchao)' if quant else ''}; "
          f"tokens per forward: {layout.describe()}", flush=True)
    return model, kwargs, layout


def step_rows(spec: Model, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """One row per kind of forward (stock dense, ``args.kinds`` at ``args.densities``) of ``spec``."""
    from adaspa import AdaSpaAttention
    from pipelines import apply_sparse_attention

    model, kwargs, layout = build(spec, device, dtype, args.quant)
    timer = Timer(device, args.warmup, args.reps)

    def at_step(step: int, steps: int):
        with model.cache_context("cond", step_index=step, num_inference_steps=steps):
            return model(**kwargs)[0]

    # Each kind: () -> (ms, attention density, note). A kind that runs out of GPU memory is a row
    # saying so; the next kinds still run (they may need less: no S x S mask, say).
    def stock_row():
        return timer(lambda i: model(**kwargs)), 1.0, spec.stock

    def full_row():
        probe = sequence_probe()
        with apply_sparse_attention(model, probe):
            ms = timer(lambda i: at_step(0, 1))
        if probe.seen != {layout.seq_len}:  # the layout every plan and search uses must be the model's sequence
            raise RuntimeError(f"[{spec.key}] attention calls saw key lengths {sorted(probe.seen)}, but the family's "
                               f"token layout says {layout.seq_len}: {layout.describe()}")
        return ms, 1.0, f"{layout.seq_len:,} keys per call, as the token layout says"

    def plan_row(d: float):
        plan, mix = plan_at(model, layout, d, args.plan_block)
        with apply_sparse_attention(model, plan):
            ms = timer(lambda i: at_step(0, 1))
        return ms, plan.expected_density, f"blocks {args.plan_block}: {mix}"

    def sparsity(d: float) -> float:
        return round(1.0 - d, 6)

    def adaspa_row(d: float):
        config = AdaSpaAttention(sparsity=sparsity(d), block_size=args.adaspa_block, warmup_steps=0,
                                 search_steps=(0,), schedule_steps=None)
        with apply_sparse_attention(model, config) as handle:
            common.sync(device)
            t1 = time.perf_counter()
            at_step(0, 1000)  # the first search: the selection the sparse steps use
            common.sync(device)
            search_ms = (time.perf_counter() - t1) * 1e3
            # the kernel compiled at the first density's warm-up; later densities need none
            ms = timer(lambda i: at_step(1 + i, 1000), warmup=args.warmup if d == args.densities[0] else 0)
            state = handle.trackers[0].current.state
            density = statistics.mean(float(state.selected_blocks(layer).float().mean()) for layer in state.selections)
        return ms, density, f"blocks {args.adaspa_block}; its first search {search_ms / 1e3:.1f} s"

    kinds = [("dense (diffusers)", stock_row)]
    kinds += [("dense (FullAttention)", full_row)] if "full" in args.kinds else []
    kinds += [(f"plan (d = {d})", lambda d=d: plan_row(d)) for d in args.densities if "plan" in args.kinds]
    kinds += [(f"AdaSpa sparse step (s = {sparsity(d)})", lambda d=d: adaspa_row(d))
              for d in args.densities if "adaspa" in args.kinds]

    if args.compile:
        model.compile_repeated_blocks()  # diffusers' regional compile of the transformer blocks
        print(f"[{spec.key}] compile_repeated_blocks set (compiles at the warm-up forwards)", flush=True)
    rows = []
    for kind, run in kinds:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            ms, density, note = run()
        except torch.cuda.OutOfMemoryError as exc:
            ms, density, note = None, None, f"out of memory: {str(exc).splitlines()[0]}"
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / GIB
            torch.cuda.empty_cache()  # after an out-of-memory row: its tensors are freed, hand their blocks back
        else:
            peak = None
        dense = rows[0]["ms"] if rows else ms
        rows.append({"model": spec.name, "forward": kind, "ms": ms, "attention density": density,
                     "speedup vs diffusers": dense / ms if dense and ms else None, "peak GiB": peak, "note": note})
        print(f"[{spec.key}] {kind}: {common.fmt(ms, 1)} ms (density {common.fmt(density)}, peak "
              f"{common.fmt(peak, 1)} GiB) {note}", flush=True)
    del model, kwargs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


@torch.no_grad()
def search_rows(spec: Model, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Times of the plan search's forwards, and the 50-step 2-prompt search computed from them."""
    from pipelines import apply_sparse_attention
    from search import PlanSearch

    model = bench_adaspa.build_model(spec, device, dtype, cls=spec.cls)
    kwargs = spec.inputs(spec, device, dtype, torch.Generator(device=device).manual_seed(0))
    cost = "measured" if device.type == "cuda" else "flops"
    os.environ["SPARSE_VDIT_CACHE"] = tempfile.mkdtemp()  # an empty cost cache: the costs are measured here
    method = PlanSearch(cost=cost, block_size=args.plan_block)

    def forward(step: int, branch: str) -> float:
        common.sync(device)
        t0 = time.perf_counter()
        with model.cache_context(branch, step_index=step, num_inference_steps=SEARCH_STEPS):
            model(**kwargs)
        common.sync(device)
        return (time.perf_counter() - t0) * 1e3

    with apply_sparse_attention(model, method):
        first = forward(0, "cond")  # measures the candidates' costs (not cached: cleared above), then searches
        forward(0, "uncond")
        searching = [forward(s, "cond") for s in (1, 2)]
        reusing = [forward(s, "uncond") for s in (1, 2)]
    search_ms, reuse_ms = statistics.median(searching), statistics.median(reusing)
    dense_ms = Timer(device, 1, 2)(lambda i: model(**kwargs))
    per_run = (first - search_ms) + SEARCH_STEPS * (search_ms + reuse_ms)
    total = SEARCH_PROMPTS * per_run - (SEARCH_PROMPTS - 1) * (first - search_ms)  # costs measured once
    chosen = [m for s in (0, 1, 2) for modes in method.decisions[s].values() for m in modes]
    full = sum(type(m).__name__ == "Full" for m in chosen) / len(chosen)
    rows = [
        {"what": "dense forward (diffusers)", "s": dense_ms / 1e3},
        {"what": "first forward (cost measurement + search)", "s": first / 1e3},
        {"what": "searching forward (one step, one CFG branch)", "s": search_ms / 1e3},
        {"what": "reusing forward (the step's other CFG branch)", "s": reuse_ms / 1e3},
        {"what": f"search of {SEARCH_STEPS} steps x {SEARCH_PROMPTS} prompts x {SEARCH_CFG} CFG forwards (computed)",
         "s": total / 1e3},
    ]
    for r in rows:
        r["model"] = spec.name
    print(f"[{spec.key}] search: {total / 6e4:.1f} min computed; share of heads kept Full in 3 steps {full:.2f}",
          flush=True)
    del model, kwargs
    return rows


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models (CPU interpreter without CUDA)")
    p.add_argument("--models", default=None, help="comma-separated keys or shorthands (default: 1.3b,14b,hunyuan; "
                   "families: hv15,mochi,ltx2,skyreels720)")
    p.add_argument("--densities", default=",".join(map(str, DENSITIES)), help="attention densities (default 0.1,0.2,0.3)")
    p.add_argument("--search", action="store_true", help="also time the plan search (Wan2.1-1.3B 480p)")
    p.add_argument("--no-steps", action="store_true", help="only the search timing")
    p.add_argument("--plan-block", type=int, default=None, help="plan block size (default 128; smoke on CPU 16)")
    p.add_argument("--adaspa-block", type=int, default=None, help="AdaSpa block size (default 64; smoke on CPU 16)")
    p.add_argument("--reps", type=int, default=1, help="timed forwards of each kind (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards first (kernel compiles; default 1)")
    p.add_argument("--kinds", default="full,plan,adaspa", help="forwards besides stock dense (default full,plan,adaspa)")
    p.add_argument("--compile", action="store_true",
                   help="diffusers' compile_repeated_blocks() on the transformer, for every kind (stock included)")
    p.add_argument("--quant", choices=bench_adaspa.QUANT_CONFIGS, default=None,
                   help="torchao quantisation of the linear layers, for every kind (stock included), as "
                        "diffusers' TorchAoConfig: float8 (float8 weights and activations, per row; CUDA SM 8.9+) "
                        "or float8-weight (weights only; also on the CPU)")
    p.add_argument("--name", default="bench_end_to_end", help="JSON file name stem")
    args = p.parse_args(argv)
    args.densities = tuple(float(x) for x in args.densities.split(","))
    args.kinds = tuple(k.strip() for k in args.kinds.split(","))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    device = common.setup()
    cpu_block = 16 if device.type == "cpu" else None
    args.plan_block = args.plan_block or cpu_block or 128
    args.adaspa_block = args.adaspa_block or cpu_block or 64
    table = models(args.smoke)
    # the default set is the keys of DEFAULT_MODELS the table has (--smoke has no tiny 14b)
    asked = args.models.split(",") if args.models else [k for k in DEFAULT_MODELS if k in table]
    keys = [key for name in asked for key in MODEL_SETS.get(name, (name,))]
    unknown = [k for k in keys if k not in table]
    if unknown:
        raise SystemExit(f"unknown model keys {unknown}: use {', '.join(table)} or {', '.join(MODEL_SETS)}")
    dtype = torch.bfloat16
    info = common.env_header(device, smoke=args.smoke, extra={
        "models": keys, "densities": args.densities, "plan block": args.plan_block,
        "AdaSpa block": args.adaspa_block, "reps": args.reps, "warmup": args.warmup, "kinds": args.kinds,
        "compile": args.compile, "quant": args.quant})
    common.print_header(info, "One denoising step, sparse vs dense, at densities " + ", ".join(map(str, args.densities)))
    steps, search = [], []
    if args.search:
        search = search_rows(table["1.3b"], args, device, dtype)
    if not args.no_steps:
        for key in keys:
            steps += step_rows(table[key], args, device, dtype)
    common.write_json(args.name, {"env": info, "steps": steps, "search": search})
    if search:
        common.print_table(search, [("model", "model"), ("what", "what"), ("s", "s")],
                           title="Plan search time (Wan2.1-1.3B 480p, measured costs)")
    if steps:
        common.print_table(steps, [(k, k) for k in steps[0]],
                           title=f"One transformer forward (median of {args.reps} after {args.warmup} warm-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
