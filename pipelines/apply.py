"""One call to put a method on a pipeline or transformer, and a handle that takes it off.

    from pipelines import apply_sparse_attention, StaticMaskAttention
    handle = apply_sparse_attention(pipe, StaticMaskAttention(mask_mod))
    video = pipe(prompt, ...).frames
    handle.remove()            # the stock processors are back

Or the diffusers way, with the processors in your hands:

    attached = attach_sparse_attention(pipe.transformer, method)   # step tracker on, nothing swapped yet
    pipe.transformer.set_attn_processor(attached.processors())     # every key, ours where they belong

A few transformers have no ``set_attn_processor`` (diffusers 0.42: Mochi, HunyuanVideo-Framepack);
``set_attention_processors(transformer, attached.processors())`` installs the dict on any of them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from kernels.fp8 import precision_error
from pipelines.context_parallel import ulysses_group
from pipelines.families import Family, family_of, model_info
from pipelines.processors import ProcessorConfig
from pipelines.step_tracking import StepTracker
from sparse_vdit.protocol import AttentionMethod, ModelInfo

__all__ = [
    "AttachedAttention",
    "SparseAttentionHandle",
    "attach_sparse_attention",
    "apply_sparse_attention",
    "attention_processors",
    "set_attention_processors",
]

_ATTACHED_ATTR = "_sparse_vdit_attached"
PROCESSOR_SUFFIX = ".processor"


@dataclass(frozen=True)
class AttachedAttention:
    """A method attached to one transformer: its step tracker and one processor per served layer.

    Attributes:
        transformer: the diffusers transformer (the uncompiled module).
        model: its ``ModelInfo``.
        tracker: the ``StepTracker`` hooked on it.
        ours: ``{"<module path>.processor": processor}`` for the layers the method serves.
        originals: every attention processor the transformer had when attached, same keys as
            ``transformer.attn_processors`` (``attention_processors``).
    """

    transformer: torch.nn.Module
    model: ModelInfo
    tracker: StepTracker
    ours: dict
    originals: dict

    def processors(self) -> dict:
        """A full ``set_attn_processor`` dict: ours where they belong, the originals elsewhere.

        A fresh dict each call (``set_attn_processor`` empties the dict it is given).
        """
        return {**self.originals, **self.ours}

    def detach(self) -> None:
        """Restore the original processors and remove the step tracker; a no-op once detached.

        Raises ``RuntimeError`` when another method was attached to the transformer after this one
        (this attachment is stale: restoring its originals would pull processors from under it).
        """
        current = getattr(self.transformer, _ATTACHED_ATTR, None)
        if current is not None and current is not self:
            raise RuntimeError(
                f"this attachment of {self.tracker.method!r} is stale: {current.tracker.method!r} is attached to "
                "the transformer now. Remove that one with its own handle (handle.remove() or detach()); "
                "this one was already detached"
            )
        if current is None:
            return
        set_attention_processors(self.transformer, dict(self.originals))
        self.tracker.remove()
        delattr(self.transformer, _ATTACHED_ATTR)


def attach_sparse_attention(transformer: torch.nn.Module, method: AttentionMethod, *,
                            precision: str | None = None) -> AttachedAttention:
    """Validate ``method`` against ``transformer``, hook a step tracker on it and build our processors.

    Nothing is swapped: pass ``.processors()`` to ``transformer.set_attn_processor`` (or use
    ``apply_sparse_attention``, which does). Raises ``TypeError`` for unsupported transformers,
    whatever ``method.validate`` raises for a method made for another model, and ``ValueError``
    when Ulysses context parallelism is on with a degree that does not divide the heads (the same
    check runs at the first forward when parallelism is enabled later).
    """
    transformer = getattr(transformer, "_orig_mod", transformer)
    family: Family = family_of(transformer)
    family.check_config(transformer.config)
    if getattr(transformer, _ATTACHED_ATTR, None) is not None:
        raise RuntimeError(
            "sparse attention is already applied to this transformer: call handle.remove() (or detach()) "
            "before applying another method"
        )
    _check_method(method)
    info = model_info(transformer, family)
    check_precision(precision, info.head_dim)
    method.validate(info)
    ulysses_group(getattr(transformer, "_parallel_config", None), info.num_heads)  # heads that do not split: raise now
    originals = attention_processors(transformer)
    tracker = StepTracker(transformer, method, info, family)
    ours = {}
    for index, name in enumerate(info.layer_names):
        key = name + PROCESSOR_SUFFIX
        if key not in originals:
            tracker.remove()
            raise RuntimeError(f"{name} has no attention processor slot ({key} is not among its attention processors)")
        config = ProcessorConfig(layer_index=index, layer_name=name, num_heads=info.num_heads, head_dim=info.head_dim,
                                 precision=precision)
        processor = family.processor_cls(config, method, tracker)
        stock = originals[key]
        # Keep the user's attention backend / context-parallel settings of the stock processor.
        processor._attention_backend = getattr(stock, "_attention_backend", None)
        processor._parallel_config = getattr(stock, "_parallel_config", None)
        ours[key] = processor
    attached = AttachedAttention(transformer, info, tracker, ours, originals)
    setattr(transformer, _ATTACHED_ATTR, attached)
    return attached


def check_precision(precision, head_dim: int) -> None:
    """Raise ``ValueError`` for a ``precision`` the kernels cannot serve on this model (the GPU and
    the layout's blocks are checked by the kernels at the first call)."""
    error = precision_error(precision, head_dim)
    if error is not None:
        raise ValueError(error)


def attention_processors(transformer: torch.nn.Module) -> dict:
    """``{"<module path>.processor": processor}`` of every attention module: diffusers'
    ``transformer.attn_processors``, or, for a model without it (Mochi, HunyuanVideo-Framepack in
    diffusers 0.42), every submodule's ``processor``."""
    if hasattr(transformer, "attn_processors"):
        return dict(transformer.attn_processors)
    return {
        f"{name}{PROCESSOR_SUFFIX}": module.processor
        for name, module in transformer.named_modules()
        if getattr(module, "processor", None) is not None
    }


def set_attention_processors(transformer: torch.nn.Module, processors: dict) -> None:
    """Install ``processors`` (keys as ``attention_processors`` gives them): through diffusers'
    ``set_attn_processor`` (which needs every key), or module by module on a model without it."""
    if hasattr(transformer, "set_attn_processor"):
        transformer.set_attn_processor(processors)
        return
    for key, processor in processors.items():
        module = transformer.get_submodule(key.removesuffix(PROCESSOR_SUFFIX))
        if hasattr(module, "set_processor"):
            module.set_processor(processor)
        else:
            module.processor = processor


def _check_method(method: Any) -> None:
    if isinstance(method, type):
        raise TypeError(
            f"{method.__name__} is a class, not an attention method: pass an instance, e.g. "
            f"apply_sparse_attention(pipe, {method.__name__}()) (with its arguments, if it takes any)"
        )
    missing = [m for m in ("validate", "new_state", "begin_forward", "__call__") if not callable(getattr(method, m, None))]
    if missing:
        raise TypeError(
            f"{type(method).__name__} is not an attention method (missing {', '.join(missing)}): "
            "subclass sparse_vdit.protocol.AttentionMethod, or use FullAttention() / StaticMaskAttention(mask_mod)"
        )


class SparseAttentionHandle:
    """What ``apply_sparse_attention`` returns: ``remove()`` restores the stock processors,
    ``reset()`` starts a new generation at the next forward. Usable as a context manager.
    """

    def __init__(self, attached: list[AttachedAttention], scheduler=None) -> None:
        self.attached = attached
        self._scheduler = scheduler
        self._removed = False

    @property
    def trackers(self) -> list[StepTracker]:
        return [a.tracker for a in self.attached]

    def reset(self) -> None:
        for tracker in self.trackers:
            tracker.reset()

    def remove(self) -> None:
        """Restore the stock processors; a no-op once removed, an error when it is stale (see ``detach``)."""
        for a in self.attached:
            a.detach()
        if not self._removed and self._scheduler is not None and "set_timesteps" in vars(self._scheduler):
            del self._scheduler.set_timesteps
        self._removed = True

    def __enter__(self) -> "SparseAttentionHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = ", ".join(f"{a.model.family} ({len(a.ours)} layers)" for a in self.attached)
        return f"SparseAttentionHandle({names}{', removed' if self._removed else ''})"


TRANSFORMER_COMPONENTS = ("transformer", "transformer_2", "transformer_ref")  # a pipeline's served components


def _transformers_of(obj) -> tuple[list[torch.nn.Module], Any]:
    """(transformers, scheduler) of a pipeline, or ([obj], None) for a transformer."""
    if isinstance(obj, torch.nn.Module):
        return [obj], None
    components = getattr(obj, "components", None)
    if not isinstance(components, dict):
        raise TypeError(
            f"expected a diffusers pipeline or transformer, got {type(obj).__name__}: pass `pipe` or `pipe.transformer`"
        )
    # transformer_2: Wan 2.2's second expert; transformer_ref: MiniMax-H3's ref2va partition (its
    # modular pipeline loads "transformer" or "transformer_ref", whichever the workflow runs).
    found = [m for key in TRANSFORMER_COMPONENTS if isinstance(m := components.get(key), torch.nn.Module)]
    if not found:
        raise TypeError(f"{type(obj).__name__} has no transformer component to apply sparse attention to")
    return found, components.get("scheduler")


def apply_sparse_attention(pipe_or_transformer, method: AttentionMethod, *,
                           precision: str | None = None) -> SparseAttentionHandle:
    """Install ``method`` on a pipeline's transformer(s) (Wan 2.2: both) or on one transformer.

    ``precision``: None (default) computes attention in the model's dtype; "fp8" quantises every
    self-attention call as SageAttention does (``kernels.fp8``: int8 Q and K, float8 V and P; a GPU with FP8 tensor
    cores, head dim 64 or 128): the method's sparse calls, and its dense ones through our dense
    kernel instead of diffusers' (so ``FullAttention()`` with "fp8" is dense FP8 attention).

    Our processors replace the stock ones on the video self-attention layers only (the record's
    ``patterns``: Wan ``attn1``; HunyuanVideo dual and single blocks; CogVideoX ``attn1``; ...);
    every other attention module (cross-attention, text refiners, audio) keeps its processor. For a pipeline, its scheduler's ``set_timesteps`` is wrapped so each call of the
    pipeline starts a new generation with a known timestep schedule.

    Raises:
        TypeError: unsupported transformer class (the message names the supported ones and, for a
            model that cannot be served, why), or a configuration of it that cannot be served.
        ValueError: ``method.validate`` found the method was made for another model.
    """
    transformers, scheduler = _transformers_of(pipe_or_transformer)
    for t in transformers:  # every check before any change
        family_of(t).check_config(getattr(t, "_orig_mod", t).config)
    attached: list[AttachedAttention] = []
    try:
        for t in transformers:
            a = attach_sparse_attention(t, method, precision=precision)
            attached.append(a)
            set_attention_processors(a.transformer, a.processors())
    except Exception:
        for a in attached:
            a.detach()
        raise
    if scheduler is not None and hasattr(scheduler, "set_timesteps"):
        _wrap_set_timesteps(scheduler, [a.tracker for a in attached])
    return SparseAttentionHandle(attached, scheduler if scheduler is not None else None)


def _wrap_set_timesteps(scheduler, trackers: list[StepTracker]) -> None:
    original = scheduler.set_timesteps

    @functools.wraps(original)
    def set_timesteps(*args, **kwargs):
        out = original(*args, **kwargs)
        timesteps = getattr(scheduler, "timesteps", None)
        schedule = [float(t) for t in timesteps.tolist()] if isinstance(timesteps, torch.Tensor) else None
        for tracker in trackers:
            tracker.start_generation(schedule)
        return out

    scheduler.set_timesteps = set_timesteps
