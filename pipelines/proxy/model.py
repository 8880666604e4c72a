"""The proxy model: architecture, checkpoint file and loader.

    from pipelines.proxy import load_proxy_pipeline, PROXY_GENERATION
    pipe = load_proxy_pipeline("cpu", torch.float32)          # the shipped checkpoint, no download
    video = pipe("a red circle moves right", **PROXY_GENERATION).frames

A ``WanPipeline`` of: the word-level tokenizer over ``PROXY_VOCAB``, a small frozen UMT5 encoder,
the exact latent map ``SpaceToDepthVideoVAE`` (4x temporal, 2x spatial, 48 channels), a
``WanTransformer3DModel`` (patch (1, 2, 2), 10 layers, 4 heads x 64, ffn 1024; 11.26M parameters)
and ``FlowMatchEulerDiscreteScheduler(shift=3)``. A token is 4 frames x 4 x 4 pixels. The model is
trained on a mix of sizes (``pipelines.proxy.train.TRAIN_SIZES``); two of them are named here:

- the evaluation size ``PROXY_GENERATION``: 81 frames of 128 x 192 pixels, 21 x 32 x 48 = 32,256
  tokens per forward (Wan 480p has 32,760), where the GPU kernels pay;
- the CPU size ``PROXY_SMALL``: 17 frames of 64 x 96, 5 x 16 x 24 = 1,920 tokens, a generation in
  seconds on two cores (the demo's).

Why 2x spatial and not Wan's 8x (or 4x): a token's output is (latent channels x 4 patch
positions) numbers made by a linear ``proj_out`` from the model width. At 4x it would be 192 x 4 =
768 from a width of 256: the velocity could only move the latents inside a 256-dimensional
subspace, and the noise in the other 512 directions of every token would reach the decoded video
untouched. At 2x it is 48 x 4 = 192 <= 256 (``ProxyConfig`` checks this).

The checkpoint is one safetensors file: the transformer in bfloat16, the text encoder in float32
(random init, frozen in training; shipped so that loading never depends on an RNG or a torch
version), and as metadata the proxy config, the latent statistics, the vocabulary and what the
training run recorded (seed, steps, final loss). Text padding matters: the model is trained with
prompts padded to ``max_sequence_length`` 16, which the pipeline (``ProxyWanPipeline``, a
``WanPipeline``) takes by default; another value gets a warning.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch

from pipelines.proxy.data import PROXY_VOCAB
from pipelines.proxy.latent import SpaceToDepthVideoVAE, latent_channels

__all__ = [
    "ProxyConfig",
    "PROXY_CONFIG",
    "SMOKE_CONFIG",
    "PROXY_CHECKPOINT",
    "PROXY_GENERATION",
    "ProxyCheckpointMissing",
    "build_proxy_pipeline",
    "proxy_transformer",
    "proxy_text_encoder",
    "proxy_tokenizer",
    "load_proxy_pipeline",
    "save_proxy_checkpoint",
    "read_proxy_metadata",
    "proxy_parameter_count",
    "place_proxy_pipeline",
    "split_checkpoint",
    "join_checkpoint",
]

PROXY_CHECKPOINT = Path(__file__).with_name("proxy.safetensors")
CHECKPOINT_FORMAT = "sparse-vdit-proxy/1"
PATCH_ELEMENTS = 4  # the transformer's patch (1, 2, 2)
MAX_CHECKPOINT_BYTES = 25 * 1000**2
PART_BYTES = 15 * 2**20  # the device tool brings back files of at most 16 MiB
TRAIN_COMMAND = "python -m pipelines.proxy.train --minutes 9"


@dataclass(frozen=True)
class ProxyConfig:
    """Architecture and training geometry of a proxy model.

    Attributes:
        num_layers, num_heads, head_dim, ffn_dim, freq_dim: of the ``WanTransformer3DModel``.
        text_dim, text_layers, text_heads, text_ff: of the UMT5 text encoder (d_model, layers,
            heads, d_ff; d_kv = text_dim / text_heads).
        frames, height, width: the pixel video the pipeline generates by default, the evaluation
            size (frames = 1 + 4k); training mixes sizes (``pipelines.proxy.train``).
        max_sequence_length: text tokens (prompts padded with zeros to this length).
        shift: flow-matching timestep shift, in training and in the scheduler.
        scale_factor_temporal, scale_factor_spatial: of the latent map.
    """

    num_layers: int = 10
    num_heads: int = 4
    head_dim: int = 64
    ffn_dim: int = 1024
    freq_dim: int = 256
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128
    frames: int = 81
    height: int = 128
    width: int = 192
    max_sequence_length: int = 16
    shift: float = 3.0
    scale_factor_temporal: int = 4
    scale_factor_spatial: int = 2

    def __post_init__(self) -> None:
        width = self.num_heads * self.head_dim
        if self.latent_channels * PATCH_ELEMENTS > width:
            raise ValueError(
                f"a token's output ({self.latent_channels} latent channels x {PATCH_ELEMENTS} patch positions = "
                f"{self.latent_channels * PATCH_ELEMENTS}) exceeds the transformer width {width}: proj_out could only "
                "move the latents inside a width-dimensional subspace and the noise in the other directions would "
                "never be removed. Widen the model or lower scale_factor_spatial"
            )
        s = self.scale_factor_spatial * 2
        if (self.frames - 1) % self.scale_factor_temporal or any(n % 16 or n % s for n in (self.height, self.width)):
            raise ValueError(
                f"video {self.frames} x {self.height} x {self.width}: frames must be 1 + {self.scale_factor_temporal}k, "
                f"height and width multiples of 16 (WanPipeline) and of {s}"
            )

    @property
    def latent_channels(self) -> int:
        return latent_channels(3, self.scale_factor_temporal, self.scale_factor_spatial)

    @property
    def tokens(self) -> tuple[int, int, int]:
        """(frames, rows, cols) of the transformer's token grid at the config's video size."""
        return self.tokens_at(self.frames, self.height, self.width)

    def tokens_at(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(frames, rows, cols) of the token grid of a pixel video of that size."""
        s = self.scale_factor_spatial * 2  # patch (1, 2, 2)
        return (frames - 1) // self.scale_factor_temporal + 1, height // s, width // s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProxyConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown proxy config keys {unknown} (a newer checkpoint format?): known keys are {sorted(known)}")
        return cls(**data)


PROXY_CONFIG = ProxyConfig()
# A micro config for CPU tests and `train --smoke`: 2 layers of 3 heads x 64 (the narrowest width that
# holds a token's 192 outputs), 9 frames of 16 x 32 pixels (3 x 4 x 8 = 96 tokens).
SMOKE_CONFIG = ProxyConfig(
    num_layers=2, num_heads=3, ffn_dim=256, freq_dim=64, text_dim=32, text_layers=1, text_heads=2, text_ff=64,
    frames=9, height=16, width=32,
)

# How to call the proxy pipeline at the evaluation size (a GPU's; the text length it was trained with).
PROXY_GENERATION = dict(
    height=PROXY_CONFIG.height,
    width=PROXY_CONFIG.width,
    num_frames=PROXY_CONFIG.frames,
    num_inference_steps=20,
    guidance_scale=5.0,
    max_sequence_length=PROXY_CONFIG.max_sequence_length,
)
# The size the CPU generates in seconds, one the model is trained at (17 frames of 64 x 96: 5 x 16 x
# 24 = 1,920 tokens), steps left to the caller: the demo's size.
PROXY_SMALL = dict(height=64, width=96, num_frames=17, guidance_scale=5.0,
                   max_sequence_length=PROXY_CONFIG.max_sequence_length)


class ProxyCheckpointMissing(FileNotFoundError):
    """The proxy checkpoint file is not there (it is made by the training script)."""


# ------------------------------------------------------------------------------ components
def proxy_tokenizer(vocab=PROXY_VOCAB):
    """Word-level tokenizer over ``vocab`` (+ <pad>, </s>, <unk>)."""
    from pipelines.tiny import tiny_word_tokenizer

    return tiny_word_tokenizer(tuple(vocab))


def proxy_text_encoder(config: ProxyConfig, vocab_size: int):
    """A small UMT5 encoder (random weights; eval mode, no dropout)."""
    from transformers import UMT5Config, UMT5EncoderModel

    if config.text_dim % config.text_heads:
        raise ValueError(f"text_dim {config.text_dim} must be a multiple of text_heads {config.text_heads}")
    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size, d_model=config.text_dim, d_kv=config.text_dim // config.text_heads,
            d_ff=config.text_ff, num_layers=config.text_layers, num_heads=config.text_heads,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
            pad_token_id=0, eos_token_id=1,
        )
    ).eval()


def proxy_transformer(config: ProxyConfig):
    """The ``WanTransformer3DModel`` of ``config`` (random weights)."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        text_dim=config.text_dim,
        freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    )


def proxy_parameter_count(config: ProxyConfig = PROXY_CONFIG) -> int:
    """Parameters of the transformer of ``config`` (counted on the meta device, nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in proxy_transformer(config).parameters())


WAN_CALL_SIZE = {"num_frames": 81, "height": 480, "width": 832}  # WanPipeline.__call__'s defaults
PROXY_SHIFT_BASE_TOKENS = 1920  # the CPU size (PROXY_SMALL): config.shift as trained


def proxy_flow_shift(config: ProxyConfig, num_frames: int, height: int, width: int) -> float:
    """The sampler's flow shift for a video size: ``config.shift`` (3) up to the CPU size's 1,920
    tokens, growing with the square root of the token count beyond (SD3's rule; Wan's own
    checkpoints take 3 at 480p and 5 at 720p): 8.0 at 33 x 128 x 192 (13,824 tokens), 12.3 at the
    evaluation size (32,256). Measured on the CPU at 33 x 128 x 192, 12 steps: shift 3 scattered
    the object into specks, shift 9 kept one coherent object in every frame."""
    tokens = math.prod(config.tokens_at(num_frames, height, width))
    return config.shift * math.sqrt(max(1.0, tokens / PROXY_SHIFT_BASE_TOKENS))


@functools.cache
def proxy_pipeline_class():
    """``ProxyWanPipeline``: diffusers' ``WanPipeline`` whose ``max_sequence_length`` defaults to the
    text length the proxy was trained with (16) instead of Wan's 512. Wan zero-pads the prompt
    embeddings to that length and its cross-attention has no text mask, so 496 zero tokens the
    proxy never saw would take attention from the prompt (measured: the object and the named
    texture fade out of the video). Another length still runs, with a warning.

    Its scheduler's flow shift is set per call for the video's size (``proxy_flow_shift``), unless
    the call passes ``flow_shift``."""
    from diffusers import WanPipeline

    class ProxyWanPipeline(WanPipeline):
        __doc__ = proxy_pipeline_class.__doc__

        def __call__(self, *args, max_sequence_length: int | None = None, flow_shift: float | None = None, **kwargs):
            if len(args) > 2:
                raise TypeError("pass height, width and num_frames to the proxy pipeline by keyword")
            size = {name: kwargs.get(name, default) for name, default in WAN_CALL_SIZE.items()}
            shift = flow_shift if flow_shift is not None else proxy_flow_shift(self.proxy_config, **size)
            self.scheduler.set_shift(shift)
            trained = self.proxy_config.max_sequence_length
            if max_sequence_length is None:
                max_sequence_length = trained
            elif max_sequence_length != trained:
                warnings.warn(
                    f"the proxy was trained with prompts padded to max_sequence_length={trained}; "
                    f"{max_sequence_length} pads them with zero tokens its cross-attention never saw, which degrades "
                    f"the video: leave max_sequence_length out (or pass {trained})", UserWarning, stacklevel=2)
            return super().__call__(*args, max_sequence_length=max_sequence_length, **kwargs)

    return ProxyWanPipeline


def build_proxy_pipeline(
    config: ProxyConfig = PROXY_CONFIG,
    *,
    seed: int = 0,
    latents_mean=None,
    latents_std=None,
    vocab=PROXY_VOCAB,
):
    """The proxy ``ProxyWanPipeline`` (a ``WanPipeline``) with random weights (seeded; for tests and as the start of training).

    ``latents_mean`` / ``latents_std``: per latent channel (default 0 / 1).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = proxy_tokenizer(vocab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = proxy_text_encoder(config, len(tokenizer))
        transformer = proxy_transformer(config).eval()
    vae = SpaceToDepthVideoVAE(
        scale_factor_temporal=config.scale_factor_temporal, scale_factor_spatial=config.scale_factor_spatial,
        latents_mean=latents_mean, latents_std=latents_std,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=config.shift)
    pipe = proxy_pipeline_class()(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                  scheduler=scheduler)
    pipe.proxy_config = config
    return pipe


# ------------------------------------------------------------------------------ checkpoint
def save_proxy_checkpoint(pipe, path: str | Path, *, config: ProxyConfig, training: Mapping[str, Any] | None = None,
                          transformer_state: Mapping[str, torch.Tensor] | None = None) -> int:
    """Write the proxy checkpoint (one safetensors file); returns its size in bytes.

    Args:
        pipe: a proxy pipeline (``build_proxy_pipeline``); its text encoder, latent statistics and
            vocabulary are written.
        config: its ``ProxyConfig``.
        training: what the training run wants recorded (JSON values: seed, steps, final loss...).
        transformer_state: transformer weights to write instead of ``pipe.transformer``'s (the EMA).
    """
    from safetensors.torch import save_file

    state = transformer_state if transformer_state is not None else pipe.transformer.state_dict()
    tensors = {f"transformer.{k}": v.detach().to("cpu", torch.bfloat16).contiguous().clone() for k, v in state.items()}
    for k, v in pipe.text_encoder.state_dict().items():  # tied embeddings are written twice (small)
        tensors[f"text_encoder.{k}"] = v.detach().to("cpu", torch.float32).contiguous().clone()
    specials = set(pipe.tokenizer.all_special_tokens)
    vocab = [t for t, _ in sorted(pipe.tokenizer.get_vocab().items(), key=lambda item: item[1]) if t not in specials]
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "proxy_config": json.dumps(config.to_dict()),
        "latents_mean": json.dumps(list(pipe.vae.config.latents_mean)),
        "latents_std": json.dumps(list(pipe.vae.config.latents_std)),
        "vocab": json.dumps(vocab),
        "training": json.dumps(dict(training or {})),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path.stat().st_size


def split_checkpoint(path: str | Path, folder: str | Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """Write ``path`` into ``folder`` as ``<name>.part0``, ``.part1``, ... of at most ``part_bytes``
    each (removing parts of an earlier, longer split); returns the parts in order."""
    path, folder = Path(path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = path.read_bytes()
    parts = []
    for i, start in enumerate(range(0, max(len(data), 1), part_bytes)):
        part = folder / f"{path.name}.part{i}"
        tmp = part.with_name(part.name + ".tmp")
        tmp.write_bytes(data[start : start + part_bytes])
        tmp.replace(part)
        parts.append(part)
    stale = len(parts)
    while (folder / f"{path.name}.part{stale}").exists():
        (folder / f"{path.name}.part{stale}").unlink()
        stale += 1
    return parts


def join_checkpoint(folder: str | Path, dest: str | Path, name: str = "proxy.safetensors") -> Path:
    """Put ``<folder>/<name>.part0, .part1, ...`` back together as ``dest`` and check that it reads
    as a complete proxy checkpoint (safetensors refuses a file shorter than its header says)."""
    from safetensors.torch import load_file

    folder, dest = Path(folder), Path(dest)
    parts = []
    while (folder / f"{name}.part{len(parts)}").is_file():
        parts.append(folder / f"{name}.part{len(parts)}")
    if not parts:
        raise FileNotFoundError(f"no {name}.part0 in {folder}: split_checkpoint writes the parts")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(b"".join(p.read_bytes() for p in parts))
    try:
        read_proxy_metadata(tmp)
        load_file(str(tmp))  # every tensor: a short file fails here
    except Exception as exc:
        tmp.unlink()
        raise ValueError(f"the parts in {folder} do not make a complete checkpoint ({exc}); is a part missing?") from exc
    tmp.replace(dest)
    return dest


def _missing_message(path: Path) -> str:
    return (
        f"the proxy checkpoint {path} is not there. Train it (about 10 minutes on one H200): "
        f"`{TRAIN_COMMAND}` writes proxy.safetensors into $OUT (or --out DIR); copy it to {PROXY_CHECKPOINT} "
        "or pass load_proxy_pipeline(path=...). For an untrained proxy of the same architecture (tests), "
        "use pipelines.proxy.build_proxy_pipeline()"
    )


def read_proxy_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """The checkpoint's metadata, JSON-decoded (format, proxy_config, latents_mean / _std, vocab, training)."""
    from safetensors import safe_open

    path = Path(path) if path is not None else PROXY_CHECKPOINT
    if not path.is_file():
        raise ProxyCheckpointMissing(_missing_message(path))
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if raw.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a proxy checkpoint (format {raw.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
    return {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}


def load_proxy_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *, path: str | Path | None = None):
    """The trained proxy as a ``WanPipeline`` on ``device`` in ``dtype``; no network.

    ``path``: a checkpoint written by ``pipelines.proxy.train`` (default: the shipped
    ``pipelines/proxy/proxy.safetensors``). Raises ``ProxyCheckpointMissing`` (a
    ``FileNotFoundError``) saying how to train it when the file is not there.
    Call the pipeline with ``PROXY_GENERATION`` (size, steps, guidance, text length).
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else PROXY_CHECKPOINT
    meta = read_proxy_metadata(path)
    config = ProxyConfig.from_dict(meta["proxy_config"])
    pipe = build_proxy_pipeline(config, latents_mean=meta["latents_mean"], latents_std=meta["latents_std"], vocab=meta["vocab"])
    tensors = load_file(str(path))
    for name in ("transformer", "text_encoder"):
        prefix = name + "."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        getattr(pipe, name).load_state_dict(state, strict=True)
    pipe.proxy_training = meta["training"]
    pipe.set_progress_bar_config(disable=True)
    return place_proxy_pipeline(pipe, device, dtype)


def place_proxy_pipeline(pipe, device: str | torch.device, dtype: torch.dtype = torch.float32):
    """Move a proxy pipeline to ``device`` and cast it to ``dtype`` the way diffusers'
    ``from_pretrained(torch_dtype=...)`` does: the transformer's ``_keep_in_fp32_modules`` (RoPE,
    time embedder, modulation tables, norms) stay in float32. Returns ``pipe``."""
    pipe.to(device)
    if dtype == torch.float32:
        return pipe
    for name in ("text_encoder", "vae"):
        torch.nn.Module.to(getattr(pipe, name), dtype)  # not ModelMixin.to: it warns about any dtype
    transformer = pipe.transformer
    keep = tuple(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    for param_name, param in transformer.named_parameters():
        if not any(part in keep for part in param_name.split(".")):
            param.data = param.data.to(dtype)
    return pipe
