"""The tiny models and inputs the family tests run, one ``Case`` per model family added for every
video DiT in diffusers (the first three families have their own tests), and per conditioning input
worth its own run (image-to-video, reference frames, per-token timesteps, history latents, keyframes).

A case builds a model with a given number of served attention layers and makes its forward inputs
for a latent grid (frames, height, width: the latent before patchify) at a timestep.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch

from pipelines.families import (
    allegro,
    anyflow,
    chronoedit,
    consisid,
    cosmos,
    easyanimate,
    helios,
    hunyuan_video15,
    hunyuan_video_framepack,
    kandinsky5,
    kandinsky6,
    ltx,
    ltx2,
    minimax_h3,
    mochi,
    motif_video,
    skyreels_v2,
    wan,
    wan_animate,
    wan_vace,
)

# Motif-Video's timestep features are float32, cast to the embedder's dtype for float16 / bfloat16 only.
MOTIF_TIMESTEP_EMBEDDER = ("time_text_embed.timestep_embedder",)
SEARCHED = dict(frames=3, height=12, width=10)  # a latent grid plans are made at (patch 2: 3 x 6 x 5 tokens)
ELSEWHERE = dict(frames=5, height=16, width=8)  # another one: other frames, rows and columns


@dataclass(frozen=True)
class Case:
    """One family (``family``: its class name) with one kind of inputs.

    Attributes:
        build: ``(layers) -> model`` with exactly ``layers`` served attention layers (>= 2).
        inputs: ``(model, frames, height, width, timestep) -> forward kwargs``.
        spatial: the latent size of one token (the patch's h, w): grids are scaled by 2 / spatial.
        padded: the inputs pad their text (so the forward has key lengths).
        batch: samples per forward.
        extra_frames: latent frames the inputs add to the grid's (a reference image).
        fp32_modules: submodules that compute in float32 whatever the model's dtype (the model's
            float64 twin keeps them in float32).
        float32_fed: submodules the model feeds a float32 tensor it casts to their dtype only for
            float16 / bfloat16 (the model's float64 twin casts their inputs to float64).
    """

    family: str
    build: Callable[[int], torch.nn.Module]
    inputs: Callable[..., dict]
    spatial: int = 2
    padded: bool = False
    batch: int = 1
    extra_frames: int = 0
    fp32_modules: tuple[str, ...] = ()
    float32_fed: tuple[str, ...] = ()

    def grid(self, grid: dict) -> dict:
        """``grid`` (latent sizes at patch 2) for this case's patch."""
        scale = 2 // self.spatial
        return dict(grid, height=grid["height"] // scale, width=grid["width"] // scale)

    def float64_twin(self, model) -> torch.nn.Module:
        """A float64 copy of ``model`` (the reference), ``fp32_modules`` left in float32,
        ``float32_fed`` modules' inputs cast to float64."""
        twin = copy.deepcopy(model).double()
        for name in self.fp32_modules:
            twin.get_submodule(name).float()
        for name in self.float32_fed:
            twin.get_submodule(name).register_forward_pre_hook(lambda module, args: cast(args, torch.float64))
        return twin

    def make_inputs(self, model, grid: dict = SEARCHED, timestep: float = 500.0) -> dict:
        g = self.grid(grid)
        return self.inputs(model, g["frames"], g["height"], g["width"], timestep)


CASES: dict[str, Case] = {
    "wan-vace": Case(
        "WanVACETransformer3DModel",
        lambda n: wan_vace.tiny_wan_vace_transformer(num_layers=n - 1, vace_layers=(0,)),
        lambda model, f, h, w, t: wan_vace.wan_vace_inputs(f, h, w, timestep=t),
    ),
    "wan-vace-reference-frames": Case(  # a reference image is one more latent frame; control latents shorter
        "WanVACETransformer3DModel",
        lambda n: wan_vace.tiny_wan_vace_transformer(num_layers=n - 1, vace_layers=(0,)),
        lambda model, f, h, w, t: wan_vace.wan_vace_inputs(f + 1, h, w, control_frames=f, timestep=t),
        extra_frames=1,
    ),
    "skyreels-v2": Case(
        "SkyReelsV2Transformer3DModel",
        lambda n: skyreels_v2.tiny_skyreels_v2_transformer(num_layers=n),
        lambda model, f, h, w, t: wan.wan_inputs(f, h, w, timestep=t),
    ),
    "skyreels-v2-diffusion-forcing": Case(  # per-frame timesteps
        "SkyReelsV2Transformer3DModel",
        lambda n: skyreels_v2.tiny_skyreels_v2_transformer(num_layers=n),
        lambda model, f, h, w, t: dict(
            wan.wan_inputs(f, h, w, timestep=t), timestep=torch.linspace(t, t / 2, f).view(1, f), enable_diffusion_forcing=True,
        ),
    ),
    "wan-animate": Case(
        "WanAnimateTransformer3DModel",
        lambda n: wan_animate.tiny_wan_animate_transformer(num_layers=n),
        lambda model, f, h, w, t: wan_animate.wan_animate_inputs(f, h, w, timestep=t),
    ),
    "chronoedit": Case(
        "ChronoEditTransformer3DModel",
        lambda n: chronoedit.tiny_chronoedit_transformer(num_layers=n),
        lambda model, f, h, w, t: wan.wan_inputs(f, h, w, timestep=t),
    ),
    "hunyuan-video-1.5-i2v": Case(
        "HunyuanVideo15Transformer3DModel",
        lambda n: hunyuan_video15.tiny_hunyuan15_transformer(num_layers=n),
        lambda model, f, h, w, t: hunyuan_video15.hunyuan15_inputs(f, h, w, timestep=t),
        spatial=1, padded=True, batch=2,
    ),
    "hunyuan-video-1.5-t2v": Case(  # all-zero image embeddings: every image token is padding
        "HunyuanVideo15Transformer3DModel",
        lambda n: hunyuan_video15.tiny_hunyuan15_transformer(num_layers=n),
        lambda model, f, h, w, t: hunyuan_video15.hunyuan15_inputs(f, h, w, image=False, timestep=t),
        spatial=1, padded=True, batch=2,
    ),
    "framepack": Case(  # history latents at 1x, 2x and 4x before the video; two padded prompts
        "HunyuanVideoFramepackTransformer3DModel",
        lambda n: hunyuan_video_framepack.tiny_framepack_transformer(num_layers=n - 1, num_single_layers=1),
        lambda model, f, h, w, t: hunyuan_video_framepack.framepack_inputs(f, h, w, timestep=t),
        padded=True, batch=2,
    ),
    "framepack-one-prompt": Case(  # one sample: the model drops the padded text itself
        "HunyuanVideoFramepackTransformer3DModel",
        lambda n: hunyuan_video_framepack.tiny_framepack_transformer(num_layers=n - 1, num_single_layers=1),
        lambda model, f, h, w, t: hunyuan_video_framepack.framepack_inputs(f, h, w, text_lens=(4,), history=(3, 2, 4),
                                                                           timestep=t),
    ),
    "ltx-video": Case(
        "LTXVideoTransformer3DModel",
        lambda n: ltx.tiny_ltx_transformer(num_layers=n),
        lambda model, f, h, w, t: ltx.ltx_inputs(f, h, w, timestep=t),
        spatial=1,
    ),
    "ltx-video-i2v": Case(  # per-token timesteps, 0 on the conditioning frame
        "LTXVideoTransformer3DModel",
        lambda n: ltx.tiny_ltx_transformer(num_layers=n),
        lambda model, f, h, w, t: ltx.ltx_inputs(f, h, w, condition_frames=1, timestep=t),
        spatial=1,
    ),
    "ltx-video-condition": Case(  # LTXConditionPipeline: extra conditioning frames before the grid, coords only
        "LTXVideoTransformer3DModel",
        lambda n: ltx.tiny_ltx_transformer(num_layers=n),
        lambda model, f, h, w, t: ltx_condition_inputs(f, h, w, t),
        spatial=1,
    ),
    "ltx-2": Case(
        "LTX2VideoTransformer3DModel",
        lambda n: ltx2.tiny_ltx2_transformer(num_layers=n),
        lambda model, f, h, w, t: ltx2.ltx2_inputs(f, h, w, timestep=t),
        spatial=1,
    ),
    "ltx-2-i2v-keyframes": Case(  # per-token timesteps and keyframe tokens after the grid
        "LTX2VideoTransformer3DModel",
        lambda n: ltx2.tiny_ltx2_transformer(num_layers=n),
        lambda model, f, h, w, t: ltx2.ltx2_inputs(f, h, w, condition_frames=1, keyframe_tokens=h * w, timestep=t),
        spatial=1,
    ),
    "ltx-2-gated-split-rope": Case(  # LTX-2.3's per-head gates and "split" RoPE
        "LTX2VideoTransformer3DModel",
        lambda n: ltx2.tiny_ltx2_transformer(num_layers=n, gated_attn=True, rope_type="split"),
        lambda model, f, h, w, t: ltx2.ltx2_inputs(f, h, w, timestep=t),
        spatial=1,
    ),
    "mochi": Case(
        "MochiTransformer3DModel",
        lambda n: mochi.tiny_mochi_transformer(num_layers=n),
        lambda model, f, h, w, t: mochi.mochi_inputs(f, h, w, timestep=t),
        padded=True, batch=2,
    ),
    "kandinsky-5-i2v": Case(
        "Kandinsky5Transformer3DModel",
        lambda n: kandinsky5.tiny_kandinsky5_transformer(num_layers=n),
        lambda model, f, h, w, t: kandinsky5.kandinsky5_inputs(f, h, w, timestep=t),
        fp32_modules=("time_embeddings",),  # its timestep features are float32 always
    ),
    "kandinsky-5-t2v": Case(
        "Kandinsky5Transformer3DModel",
        lambda n: kandinsky5.tiny_kandinsky5_transformer(num_layers=n, visual_cond=False),
        lambda model, f, h, w, t: kandinsky5.kandinsky5_inputs(f, h, w, visual_cond=False, timestep=t),
    ),
    "consisid": Case(  # an image latent in the channels, face identity through the perceiver cross-attention
        "ConsisIDTransformer3DModel",
        lambda n: consisid.tiny_consisid_transformer(num_layers=n),
        lambda model, f, h, w, t: consisid.consisid_inputs(model, f, h, w, timestep=int(t)),
    ),
    "cosmos": Case(
        "CosmosTransformer3DModel",
        lambda n: cosmos.tiny_cosmos_transformer(num_layers=n),
        lambda model, f, h, w, t: cosmos.cosmos_inputs(f, h, w, timestep=t),
        fp32_modules=("learnable_pos_embed",),  # its norm asks for float32 (diffusers keeps the module in float32)
    ),
    "cosmos-video2world": Case(  # conditioning frames in the condition mask, per-frame timesteps [B, 1, T, 1, 1]
        "CosmosTransformer3DModel",
        lambda n: cosmos.tiny_cosmos_transformer(num_layers=n),
        lambda model, f, h, w, t: cosmos.cosmos_inputs(f, h, w, condition_frames=1, batch=2, timestep=t),
        batch=2, fp32_modules=("learnable_pos_embed",),
    ),
    "easyanimate": Case(  # an MMDiT block, then blocks that concatenate the text; batched CFG
        "EasyAnimateTransformer3DModel",
        lambda n: easyanimate.tiny_easyanimate_transformer(num_layers=n),
        lambda model, f, h, w, t: easyanimate.easyanimate_inputs(f, h, w, timestep=t),
        batch=2,
    ),
    "easyanimate-inpaint": Case(  # mask and masked-video latents in the channels
        "EasyAnimateTransformer3DModel",
        lambda n: easyanimate.tiny_easyanimate_transformer(num_layers=n, inpaint=True),
        lambda model, f, h, w, t: easyanimate.easyanimate_inputs(f, h, w, inpaint=True, timestep=t),
        batch=2,
    ),
    "anyflow": Case(  # per-frame source and target timesteps; latent [B, F, C, H, W]; batched CFG
        "AnyFlowTransformer3DModel",
        lambda n: anyflow.tiny_anyflow_transformer(num_layers=n),
        lambda model, f, h, w, t: anyflow.anyflow_inputs(f, h, w, timestep=t),
        batch=2,
    ),
    "anyflow-i2v-context": Case(  # image embeddings in the cross-attention; a context frame at timestep 0
        "AnyFlowTransformer3DModel",
        lambda n: anyflow.tiny_anyflow_transformer(num_layers=n, image=True),
        lambda model, f, h, w, t: anyflow.anyflow_inputs(f, h, w, image=True, context_frames=1, timestep=t),
        batch=2,
    ),
    "kandinsky-6": Case(  # video and audio; batched CFG, the negative prompt padded (text only in the cross-attention)
        "Kandinsky6Transformer3DModel",
        lambda n: kandinsky6.tiny_kandinsky6_transformer(num_layers=n),
        lambda model, f, h, w, t: kandinsky6.kandinsky6_inputs(f, h, w, batch=2, text_lens=(6, 4), timestep=t),
        batch=2,
    ),
    "kandinsky-6-i2v": Case(  # the reference frame appended after the grid at RoPE time 0: a conditioning suffix
        "Kandinsky6Transformer3DModel",
        lambda n: kandinsky6.tiny_kandinsky6_transformer(num_layers=n),
        lambda model, f, h, w, t: kandinsky6.kandinsky6_inputs(f, h, w, batch=2, text_lens=(6, 4), reference=True,
                                                               timestep=t),
        batch=2,
    ),
    "kandinsky-6-video-only": Case(  # no audio latents: the fused blocks run their video path alone
        "Kandinsky6Transformer3DModel",
        lambda n: kandinsky6.tiny_kandinsky6_transformer(num_layers=n),
        lambda model, f, h, w, t: kandinsky6.kandinsky6_inputs(f, h, w, audio_frames=None, timestep=t),
    ),
    # Motif-Video: dual blocks, one encoder single block (with text cross-attention) and a stock decoder
    # block; more layers are more dual blocks, as for Framepack: a second single block takes views of the
    # first one's output and compiles once more for their strides (stock too). Batched CFG, padded prompts.
    "motif-video": Case(
        "MotifVideoTransformer3DModel",
        lambda n: motif_video.tiny_motif_transformer(num_layers=n - 1),
        lambda model, f, h, w, t: motif_video.motif_inputs(f, h, w, timestep=t),
        padded=True, batch=2, float32_fed=MOTIF_TIMESTEP_EMBEDDER,
    ),
    "motif-video-i2v": Case(  # first-frame latent and mask in the channels; image tokens before the padded prompts
        "MotifVideoTransformer3DModel",
        lambda n: motif_video.tiny_motif_transformer(num_layers=n - 1, image=True),
        lambda model, f, h, w, t: motif_video.motif_inputs(f, h, w, image_tokens=3, timestep=t),
        padded=True, batch=2, float32_fed=MOTIF_TIMESTEP_EMBEDDER,
    ),
    "helios": Case(  # no history (a plain forward); batched CFG, text only in the cross-attention
        "HeliosTransformer3DModel",
        lambda n: helios.tiny_helios_transformer(num_layers=n),
        lambda model, f, h, w, t: helios.helios_inputs(f, h, w, history=None, timestep=t),
        batch=2,
    ),
    "helios-history": Case(  # long, mid and short history latents before the grid, their keys amplified per head
        "HeliosTransformer3DModel",
        lambda n: helios.tiny_helios_transformer(num_layers=n),
        lambda model, f, h, w, t: helios.helios_inputs(f, h, w, history=(4, 2, 2), timestep=t),
        batch=2,
    ),
    "allegro": Case(  # 96-dim heads (zero-padded to 128 in the kernels); batched CFG, padded prompts in the cross-attention
        "AllegroTransformer3DModel",
        lambda n: allegro.tiny_allegro_transformer(num_layers=n),
        lambda model, f, h, w, t: allegro.allegro_inputs(model, f, h, w, timestep=t),
        batch=2,
    ),
    # MiniMax-H3: one packed sequence, laid out by its modular pipeline's own steps; the grid is the
    # generated video rows at its end, every row before it (text, conditioning, audio) a prefix.
    "minimax-h3": Case(  # t2va: [text | audio | video]
        "MiniMaxH3Transformer3DModel",
        lambda n: minimax_h3.tiny_minimax_h3_transformer(num_layers=n),
        lambda model, f, h, w, t: minimax_h3.minimax_h3_inputs(f, h, w, timestep=t),
    ),
    "minimax-h3-keyframes": Case(  # fl2va: first and last keyframes before the audio, at t = 0.999; the batch replicated
        "MiniMaxH3Transformer3DModel",
        lambda n: minimax_h3.tiny_minimax_h3_transformer(num_layers=n),
        lambda model, f, h, w, t: minimax_h3.minimax_h3_inputs(f, h, w, batch=2, keyframes=("first", "last"), timestep=t),
        batch=2,
    ),
    "minimax-h3-references": Case(  # ref2va: image, video (with its soundtrack) and audio references at their own size
        "MiniMaxH3Transformer3DModel",
        lambda n: minimax_h3.tiny_minimax_h3_transformer(num_layers=n),
        lambda model, f, h, w, t: minimax_h3.minimax_h3_inputs(f, h, w, references=minimax_references(), timestep=t),
    ),
}

# One case per family: the plan, AdaSpa and compile tests run these.
FAMILY_CASES = ["wan-vace", "skyreels-v2", "wan-animate", "chronoedit", "hunyuan-video-1.5-i2v", "framepack", "ltx-video",
                "ltx-2", "mochi", "kandinsky-5-i2v", "consisid", "cosmos", "easyanimate", "anyflow",
                "kandinsky-6", "motif-video", "helios", "allegro", "minimax-h3"]
# Cases whose token layout has conditioning tokens off the grid: the plan test runs these too.
OFF_GRID_CASES = ["ltx-video-condition", "ltx-2-i2v-keyframes", "kandinsky-6-i2v", "helios-history", "minimax-h3-keyframes",
                  "minimax-h3-references"]


def ltx_condition_inputs(frames: int, height: int, width: int, timestep: float, extra_frames: int = 1, frame_index: int = 8):
    """LTXConditionPipeline's forward: ``extra_frames`` conditioning frames (a video condition at
    ``frame_index``) packed before the ``frames`` x ``height`` x ``width`` grid, ``video_coords``
    made by the pipeline's own helpers, no grid arguments."""
    from diffusers import LTXConditionPipeline

    kwargs = ltx.ltx_inputs(frames + extra_frames, height, width, timestep=timestep)
    for key in ("num_frames", "height", "width", "rope_interpolation_scale"):
        del kwargs[key]

    def coords(n, index):
        ids = LTXConditionPipeline._prepare_video_ids(1, n, height, width)
        return LTXConditionPipeline._scale_video_ids(ids, ltx.VAE_SPATIAL, ltx.VAE_TEMPORAL, frame_index=index)

    video_coords = torch.cat([coords(extra_frames, frame_index), coords(frames, 0)], dim=2).float()
    video_coords[:, 0] = video_coords[:, 0] * (1.0 / ltx.PIPELINE_FRAME_RATE)
    return dict(kwargs, video_coords=video_coords)


def minimax_references() -> list:
    """A MiniMax-H3 ref2va request's references (media placeholders: the layout reads their kinds)."""
    import numpy as np
    from diffusers.modular_pipelines.minimax_h3 import MiniMaxH3AudioReference, MiniMaxH3ImageReference, MiniMaxH3VideoReference

    return [MiniMaxH3ImageReference(image=np.zeros((8, 8, 3), dtype=np.uint8)),
            MiniMaxH3VideoReference(frames=np.zeros((2, 8, 8, 3), dtype=np.uint8), audio=torch.zeros(2, 16)),
            MiniMaxH3AudioReference(audio=torch.zeros(2, 16))]


def cast(value, dtype):
    """``value`` (a tensor, or a tuple / list / dict of them) with floating tensors cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast(v, dtype) for k, v in value.items()}
    return value


def at_timestep(kwargs: dict, timestep: float, dtype=torch.float32) -> dict:
    """``kwargs`` cast to ``dtype`` with every timestep set to ``timestep`` (per-token ones too)."""
    out = cast(kwargs, dtype)
    out["timestep"] = torch.full_like(out["timestep"], timestep)
    return out
