"""What a generation computed and how long it took: attention density per call, step times.

``MeteredMethod(method)`` wraps any attention method (``sparse_vdit.protocol``) and records, per
attention call, the fraction of the S x S attention it computed:

- the call returned ``None`` (dense through diffusers' attention): 1.0;
- it returned a ``BlockLayout``: ``computed_fraction(layout)``;
- it returned a tensor: what it computed through the call's bound ops, summed: each
  ``attention_with_lse`` 1.0, each ``block_sparse_attention`` its layout's fraction (a tensor made
  without the bound ops counts 1.0). ``block_attention_mass`` passes (AdaSpa's searches) are
  counted apart, as ``scan`` (1.0 per pass over the whole Q K^T), since they compute no output.

So AdaSpa's first search step counts 1.0 (its output is dense) plus one scan, its cached search
step its layout's fraction plus one scan, its sparse steps their layout's fraction; dense warm-up
steps count 1.0, as they compute everything. The densities are summed on the device and read
once, after the generation (``reading()``), so metering never synchronises a GPU mid-generation.

``StepClock`` times a generation: per-step times through the pipeline's ``callback_on_step_end``,
and the transformer's own time (its forwards) through forward hooks, CUDA synchronised at each
timestamp so the times are the GPU's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import torch

from kernels.block_layout import BlockLayout
from kernels.helpers import cdiv
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo

__all__ = ["computed_fraction", "MeteredMethod", "MeterReading", "StepClock"]


def computed_fraction(layout: BlockLayout) -> torch.Tensor:
    """0-dim float32 tensor on the layout's device: the fraction of the Q_LEN x KV_LEN score matrix
    the layout computes, averaged over its batch and heads. Blocks count at their size clipped at
    the sequence ends; partial (element-masked) blocks count whole, as the kernel computes them
    whole; nothing is excluded (key padding is the processor's). Read from the per-row counts,
    no host synchronisation."""
    qblk, kvblk = layout.block_size
    q_len, kv_len = layout.seq_lengths
    kb = cdiv(kv_len, kvblk)
    device = layout.full_kv_num_blocks.device
    partial = layout.kv_num_blocks.long()
    # The crossing key block is never full and, the lists being ascending, the last partial entry.
    last = layout.kv_indices.long().gather(-1, (partial - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
    crossing = (partial > 0) & (last == kb - 1)
    cols = (layout.full_kv_num_blocks.long() + partial) * kvblk - crossing.long() * (kb * kvblk - kv_len)
    rows = torch.clamp(q_len - torch.arange(cols.shape[-1], device=device) * qblk, max=qblk)
    per_pattern = (cols * rows).sum(-1).float() / (q_len * kv_len)  # [B, P]
    if layout.head_patterns is not None:
        per_pattern = per_pattern[:, layout.head_patterns.long()]
    return per_pattern.mean()


@dataclass(frozen=True)
class MeterReading:
    """One generation's attention work: mean over attention calls.

    Attributes:
        density: fraction of the attention computed per call (1.0 = dense).
        scan: block-mass passes over the whole Q K^T per call (AdaSpa's searches).
        calls: attention calls metered.
    """

    density: float
    scan: float
    calls: int


@dataclass(frozen=True)
class _MeteredCall(AttentionCall):
    """The call a metered method sees: the bound ops also report what they compute."""

    def block_sparse_attention(self, q, k, v, layout, *, return_lse: bool = False):
        self._meter.add_attention(computed_fraction(layout))
        return super().block_sparse_attention(q, k, v, layout, return_lse=return_lse)

    def attention_with_lse(self, q, k, v):
        self._meter.add_attention(1.0)
        return super().attention_with_lse(q, k, v)

    def block_attention_mass(self, q, k, lse, block_size: int, *, return_lse: bool = False):
        self._meter.add_scan(1.0)
        return super().block_attention_mass(q, k, lse, block_size, return_lse=return_lse)


class MeteredMethod(AttentionMethod):
    """``method`` unchanged, with the attention it computes recorded (see the module docstring).

    ``reading()`` returns the mean over the calls since the last ``reset()`` (a ``MeterReading``);
    it synchronises once.
    """

    def __init__(self, method: Any) -> None:
        self.method = method
        self._fractions: dict[int, tuple[BlockLayout, torch.Tensor]] = {}  # id -> (layout kept alive, fraction)
        self.reset()

    def __repr__(self) -> str:
        return f"MeteredMethod({self.method!r})"

    def reset(self) -> None:
        self._density: Any = 0.0
        self._scan: Any = 0.0
        self._calls = 0
        self._in_call: list[float | torch.Tensor] | None = None

    # the bound ops of a _MeteredCall report here
    def add_attention(self, fraction) -> None:
        if self._in_call is not None:
            self._in_call.append(fraction)

    def add_scan(self, passes: float) -> None:
        self._scan = self._scan + passes

    def _fraction(self, layout: BlockLayout) -> torch.Tensor:
        cached = self._fractions.get(id(layout))
        if cached is None or cached[0] is not layout:
            cached = self._fractions[id(layout)] = (layout, computed_fraction(layout))
        return cached[1]

    # ------------------------------------------------------------------ the protocol, delegated
    def validate(self, model: ModelInfo) -> None:
        return self.method.validate(model)

    def new_state(self) -> Any:
        return self.method.new_state()

    def begin_forward(self, forward: ForwardContext) -> Any:
        return self.method.begin_forward(forward)

    def __call__(self, call: AttentionCall, q, k, v):
        metered = _MeteredCall(**{f.name: getattr(call, f.name) for f in fields(call)})
        object.__setattr__(metered, "_meter", self)
        self._in_call = []
        try:
            out = self.method(metered, q, k, v)
        finally:
            computed, self._in_call = self._in_call, None
        if out is None:
            work: Any = 1.0
        elif isinstance(out, BlockLayout):
            work = self._fraction(out)
        else:
            work = sum(computed) if computed else 1.0
        self._density = self._density + work
        self._calls += 1
        return out

    def reading(self) -> MeterReading:
        if self._calls == 0:
            return MeterReading(density=1.0, scan=0.0, calls=0)
        return MeterReading(density=float(self._density) / self._calls, scan=float(self._scan) / self._calls,
                            calls=self._calls)


class StepClock:
    """Times one generation of a pipeline: use ``with StepClock(pipe) as clock: pipe(...,
    callback_on_step_end=clock.callback)``, then read ``step_s`` (seconds per denoising step),
    ``transformer_s`` (time inside the transformer forwards) and ``total_s`` (the whole ``with``
    block: text encoding, the denoising loop and the decode). On CUDA every timestamp synchronises
    first. ``on_step(i)`` is called after each step (progress bars)."""

    def __init__(self, pipe, on_step=None) -> None:
        components = getattr(pipe, "components", {}) or {}
        self.transformers = [m for key in ("transformer", "transformer_2")
                             if isinstance(m := components.get(key), torch.nn.Module)]
        device = getattr(pipe, "device", torch.device("cpu"))
        self.cuda = torch.device(device).type == "cuda"
        self.on_step = on_step
        self.step_s: list[float] = []
        self.transformer_s = 0.0
        self.total_s = 0.0
        self._hooks: list = []

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def __enter__(self) -> "StepClock":
        self._start = self._last = self.now()
        self._loop_start: float | None = None
        self._forward_start = 0.0

        def pre(module, args, kwargs=None):
            self._forward_start = self.now()
            if self._loop_start is None:
                self._loop_start = self._last = self._forward_start

        def post(module, args, output):
            self.transformer_s += self.now() - self._forward_start

        for t in self.transformers:
            self._hooks += [t.register_forward_pre_hook(pre), t.register_forward_hook(post)]
        return self

    def callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """A diffusers ``callback_on_step_end``: timestamps the end of each denoising step."""
        t = self.now()
        self.step_s.append(t - self._last)
        self._last = t
        if self.on_step is not None:
            self.on_step(step)
        return callback_kwargs

    def __exit__(self, *exc) -> None:
        self.total_s = self.now() - self._start
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @property
    def denoise_s(self) -> float:
        """The denoising loop: from the first transformer forward to the end of the last step."""
        return sum(self.step_s)
