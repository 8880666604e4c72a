"""Pipelines by name for the commands: the shipped proxy model, a local folder or a Hub repo id.

    load_pipeline("proxy", "cpu", torch.float32)                      # the embedded default
    load_pipeline("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "cuda", torch.bfloat16)
    load_pipeline("/models/wan-1.3b", "cuda", torch.bfloat16)          # a local diffusers folder

"proxy" is the project's proxy model (``pipelines.proxy``): the trained checkpoint
``pipelines/proxy/proxy.safetensors`` when it is there, else the same architecture with random
weights (``build_proxy_pipeline``), which ``weights_note(pipe)`` then says loudly. It needs no
download. Anything else goes through diffusers' ``DiffusionPipeline.from_pretrained`` with
``torch_dtype`` (the local Hub cache serves it offline). Every pipeline is built in its dtype the
way ``from_pretrained`` does it (modules diffusers keeps in float32 stay so), never cast with
``pipe.to(dtype)``, which makes diffusers warn.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where it is used: the commands' --help reads this module
    import torch

from kernels.limits import DEVICE_KINDS, default_block_size

PROXY = "proxy"
UNTRAINED_NOTE = "proxy checkpoint not trained yet: random weights, quality numbers mean nothing"


@dataclass(frozen=True)
class GenerationDefaults:
    """What a pipeline is called with unless the command line says otherwise.

    Attributes:
        height, width, num_frames, guidance_scale, negative_prompt, extra: pipeline call arguments.
        num_inference_steps: denoising steps.
        prompts: prompts to generate (evaluate) with.
        search_prompts: prompts a plan is searched on, kept apart from ``prompts`` so an evaluation
            never judges a plan on the prompts it was made from.
        search_epsilon: ``sparse-vdit search``'s epsilon on this model (None: the search's own default).
        method_settings: ``sparse-vdit eval``'s curve per method setting where this model needs other
            values than the method's defaults, e.g. ``{"epsilons": (0.1, 0.2, 0.3)}``.
    """

    height: int
    width: int
    num_frames: int
    guidance_scale: float
    prompts: tuple[str, ...]
    negative_prompt: str | None = None
    extra: dict = field(default_factory=dict)
    num_inference_steps: int = 50
    search_prompts: tuple[str, ...] = ()
    search_epsilon: float | None = None
    method_settings: dict = field(default_factory=dict)

    def call_kwargs(self) -> dict:
        out = dict(height=self.height, width=self.width, num_frames=self.num_frames,
                   guidance_scale=self.guidance_scale, **self.extra)
        if self.negative_prompt is not None:
            out["negative_prompt"] = self.negative_prompt
        return out


# The prompts evaluated, and those a plan is searched on (none of them among the evaluated ones):
# captions of the proxy's training data that the shipped checkpoint (the first proxy; see
# pipelines/proxy) also knows word for word, so they serve it and the checkpoints the training
# code makes now.
PROXY_PROMPTS = ("a red circle moves right", "a blue square rotates")
PROXY_SEARCH_PROMPTS = ("a green triangle moves down", "a yellow square rotates")
# Plan-search epsilons for the proxy on the CPU. At its CPU size (1,920 tokens, 16-token blocks) a
# head's error under any sparse mode is larger than at the evaluation size, and the search's own
# defaults (0.05; eval 0.02, 0.05, 0.1) keep nearly every head Full (density 0.99 at 0.05 on the first
# checkpoint); on the shipped one 0.1, 0.2 and 0.3 give 0.97, 0.62 and 0.47 (the notebook at its
# defaults, measured). The demo takes 0.3 too: DEMO_EPSILON in sparse_vdit/cli/demo.py.
PROXY_CPU_SEARCH_EPSILON = 0.3
PROXY_CPU_METHOD_SETTINGS = {"epsilons": (0.1, 0.2, 0.3)}  # eval's curves (method_settings)


def _proxy_defaults(cpu: bool, num_inference_steps: int) -> GenerationDefaults:
    from pipelines.proxy import PROXY_GENERATION, PROXY_SMALL

    size = PROXY_SMALL if cpu else PROXY_GENERATION
    return GenerationDefaults(
        height=size["height"], width=size["width"], num_frames=size["num_frames"], guidance_scale=PROXY_GENERATION["guidance_scale"],
        prompts=PROXY_PROMPTS,
        extra={"max_sequence_length": PROXY_GENERATION["max_sequence_length"]},
        # Two search runs on a GPU (the plan records how they agreed per cell: the hybrid reads it),
        # one on the CPU, where each costs about as much as the whole evaluation.
        num_inference_steps=num_inference_steps, search_prompts=PROXY_SEARCH_PROMPTS[:1] if cpu else PROXY_SEARCH_PROMPTS,
        search_epsilon=PROXY_CPU_SEARCH_EPSILON if cpu else None,
        method_settings=PROXY_CPU_METHOD_SETTINGS if cpu else {},
    )


# The proxy at its evaluation size (81 frames of 128 x 192: 32,256 tokens, where the GPU kernels
# pay), 20 steps, for GPUs (PROXY_DEFAULTS); on the CPU, where attention runs the PyTorch fallback,
# 17 frames of 64 x 96 (1,920 tokens, a size the model is trained at), 8 steps, so a generation
# takes seconds (PROXY_CPU_DEFAULTS). Both are built on first use (module __getattr__): the sizes
# live with the model, which imports torch, and the commands' --help imports this module without it.
_PROXY_STEPS = {"PROXY_DEFAULTS": (False, 20), "PROXY_CPU_DEFAULTS": (True, 8)}


def proxy_defaults(on_gpu: bool) -> GenerationDefaults:
    """PROXY_DEFAULTS on a GPU, else PROXY_CPU_DEFAULTS."""
    return __getattr__("PROXY_DEFAULTS" if on_gpu else "PROXY_CPU_DEFAULTS")


def __getattr__(name: str):
    if name in _PROXY_STEPS:
        value = globals()[name] = _proxy_defaults(*_PROXY_STEPS[name])
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MODEL_DEFAULTS = GenerationDefaults(
    height=480, width=832, num_frames=81, guidance_scale=5.0,
    prompts=("A cat walks on the grass, realistic", "A red car drives along a coastal road at sunset"),
    search_prompts=("A dog runs along the beach at sunrise, realistic",),
)


def load_proxy(device: str | torch.device, dtype: torch.dtype):
    """The proxy pipeline: the trained checkpoint if it is there, else random weights (see
    ``weights_note``). Built in ``dtype`` with the float32 modules kept, progress bar off."""
    from pipelines.proxy import ProxyCheckpointMissing, build_proxy_pipeline, load_proxy_pipeline, place_proxy_pipeline

    try:
        return load_proxy_pipeline(device, dtype)
    except ProxyCheckpointMissing:
        pipe = build_proxy_pipeline()
        pipe.set_progress_bar_config(disable=True)
        return place_proxy_pipeline(pipe, device, dtype)


def weights_note(pipe) -> str | None:
    """``UNTRAINED_NOTE`` for a proxy pipeline with random weights (no checkpoint loaded), else None."""
    if getattr(pipe, "proxy_config", None) is not None and getattr(pipe, "proxy_training", None) is None:
        return UNTRAINED_NOTE
    return None


def load_pipeline(model: str, device: str | torch.device, dtype: torch.dtype):
    """(pipeline on ``device`` in ``dtype``, its GenerationDefaults for that device)."""
    if model == PROXY:
        on_gpu = str(device).split(":")[0] == "cuda"
        return load_proxy(device, dtype), proxy_defaults(on_gpu)
    check_model_name(model)
    from diffusers import DiffusionPipeline

    try:
        with warnings.catch_warnings():  # newer diffusers renamed it `dtype`; older ones know only torch_dtype
            warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds; the message is what matters
        reason = " ".join(str(exc).split()).split(". ")[0][:MAX_REASON]
        raise ValueError(
            f"could not load the pipeline {model!r} ({type(exc).__name__}: {reason}): pass '{PROXY}', a local "
            "diffusers folder or a Hub repo id (SPARSE_VDIT_DEBUG=1 shows the traceback)"
        ) from exc
    return pipe.to(device), MODEL_DEFAULTS


MAX_REASON = 120  # characters of the loader's own message quoted in ours


def check_model_name(model: str) -> None:
    """``ValueError`` for a ``--model`` that is neither "proxy", an existing folder nor of the form of a
    Hub repo id (namespace/name), naming the closest known name: a typo never reaches the Hub."""
    from pathlib import Path

    from sparse_vdit.plan_file import is_hub_repo_id

    if model == PROXY or Path(model).expanduser().exists() or is_hub_repo_id(model):
        return
    close = difflib.get_close_matches(model, [PROXY], n=1)
    raise ValueError(
        f"could not load the pipeline {model!r}: it is not '{PROXY}', an existing folder, nor a Hub repo id "
        "(namespace/name)"
        + (f": did you mean '{close[0]}'?" if close else "")
    )


# ------------------------------------------------------------------ for the commands
CPU_FALLBACK_NOTE = (
    "no CUDA device: attention runs on the PyTorch fallback path (float32, every score computed then masked), "
    "so times here are of that path, not of the GPU kernels"
)


@dataclass
class Session:
    """A loaded model and what the run needs to know about it."""

    pipe: object
    defaults: object
    device: str
    block_size: int
    notes: list
    untrained: str | None = None  # ``loading.UNTRAINED_NOTE`` for a proxy with random weights

    def meta(self, model: str) -> dict:
        """What an ``EvalReport`` records about the model."""
        return {"model": model, "note": self.untrained, "random_weights": self.untrained is not None,
                "block_size": self.block_size}

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


def open_model(model: str, device: str | None, dtype: str | None, block_size: int | None) -> Session:
    """Load ``model`` on the resolved device; print the notes (untrained weights, CPU fallback)
    before any progress bar starts, and keep the fallback's own warning out of the bars."""
    device = resolve_device(device)
    pipe, defaults = load_pipeline(model, device, resolve_dtype(dtype, device))
    untrained = weights_note(pipe)
    notes = [untrained] if untrained else []
    if not device.startswith("cuda"):
        notes.append(CPU_FALLBACK_NOTE)
        warnings.filterwarnings("ignore", message="sparse-vdit: no CUDA device", category=RuntimeWarning)
    for note in notes:
        print(f"NOTE: {note}", flush=True)
    return Session(pipe, defaults, device, resolve_block_size(block_size, device), notes, untrained)


# ------------------------------------------------------------------ the commands' --device, --dtype, --block-size
def resolve_device(value: str | None) -> str:
    """The device to run on (None: cuda if available, else cpu); ValueError naming --device for an
    empty value, a device the kernels do not serve, or a CUDA device torch does not see."""
    import torch

    if value is not None and not value.strip():
        raise ValueError("--device is empty: use cuda, cuda:N or cpu (or leave --device out: cuda if available)")
    device = value or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device: use cuda, cuda:N or cpu") from None
    if parsed.type not in DEVICE_KINDS:
        raise ValueError(f"--device {device} is not supported: use cuda, cuda:N or cpu (the kernels run on CUDA; "
                         "the CPU runs their PyTorch path)")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}, but torch sees no CUDA device here: use --device cpu "
                         "(or install a CUDA build of torch on a GPU machine)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"--device {device}, but torch sees {count} CUDA device(s): use cuda:0 .. cuda:{count - 1}")
    return device


def resolve_dtype(value: str | None, device: str):
    """The torch dtype: ``value``, else bfloat16 on a GPU and float32 on the CPU."""
    import torch

    return getattr(torch, value or ("bfloat16" if device.startswith("cuda") else "float32"))


def resolve_block_size(value: int | None, device: str) -> int:
    """``value``, else the device's default (``kernels.limits.default_block_size``: 128 on a GPU, 16 on the CPU)."""
    return value or default_block_size(device)


def generation_kwargs(defaults, height: int | None, width: int | None, frames: int | None) -> dict:
    """The defaults' call arguments with the command line's size."""
    kwargs = defaults.call_kwargs()
    for name, value in (("height", height), ("width", width), ("num_frames", frames)):
        if value is not None:
            kwargs[name] = value
    return kwargs
