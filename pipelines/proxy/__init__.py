"""The proxy model: a small Wan video DiT trained here on procedural videos with known structure.

Real checkpoints cannot be downloaded on our machines and random weights have no attention
structure; the proxy gives quality numbers that mean something (README, "Proxy model").

    from pipelines.proxy import load_proxy_pipeline, PROXY_SMALL
    pipe = load_proxy_pipeline("cpu")                      # WanPipeline, no download
    video = pipe("a red circle moves right", num_inference_steps=8, **PROXY_SMALL).frames   # GPU: PROXY_GENERATION

    python -m pipelines.proxy.train --minutes 9 [--resume CKPT] [--smoke]   # a training stretch
    python -m pipelines.proxy.attention_stats                    # does it have structure?

Modules: ``latent`` (the exact latent map standing in for the VAE), ``textures`` (the photographs and
fractal noise videos are cut from), ``data`` (procedural captioned videos, caption checks), ``model``
(architecture, checkpoint, loader, checkpoint parts), ``train`` (stretches, sizes, torchrun),
``attention_stats``.
"""

from pipelines.proxy.data import PROXY_CAPTIONS, PROXY_SAMPLE_PROMPTS, PROXY_VOCAB, VideoBatch, caption_checks, procedural_videos
from pipelines.proxy.latent import SpaceToDepthVideoVAE
from pipelines.proxy.model import (
    PROXY_CHECKPOINT,
    PROXY_CONFIG,
    PROXY_GENERATION,
    PROXY_SMALL,
    SMOKE_CONFIG,
    ProxyCheckpointMissing,
    ProxyConfig,
    build_proxy_pipeline,
    load_proxy_pipeline,
    place_proxy_pipeline,
    proxy_parameter_count,
    read_proxy_metadata,
    save_proxy_checkpoint,
)

__all__ = [
    # the data and the latent map
    "PROXY_CAPTIONS", "PROXY_SAMPLE_PROMPTS", "PROXY_VOCAB", "VideoBatch", "procedural_videos", "caption_checks",
    "SpaceToDepthVideoVAE",
    # the model: configs, loader, checkpoint
    "ProxyConfig", "PROXY_CONFIG", "SMOKE_CONFIG", "PROXY_CHECKPOINT", "PROXY_GENERATION", "PROXY_SMALL", "ProxyCheckpointMissing",
    "build_proxy_pipeline", "load_proxy_pipeline", "place_proxy_pipeline", "save_proxy_checkpoint",
    "read_proxy_metadata", "proxy_parameter_count",
]
