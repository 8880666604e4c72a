"""Which denoising step, CFG branch and generation each transformer forward belongs to.

A ``StepTracker`` sits on a transformer as a forward pre-hook. Before every forward it reads the
forward's inputs (latent T/H/W, text length and padding, timestep) through the model's family
record, works out the step index and branch and the per-sample key lengths (``kv_lens``), calls the
method's ``begin_forward`` and publishes a frozen ``ForwardContext`` (``sparse_vdit.protocol``)
that the processors read. The hook runs eagerly (``torch.compiler.disable``), so a torch.compile'd
transformer keeps one graph: the context object changes, not the traced code.

How the step index is found, most reliable first:
1. the pipeline's ``transformer.cache_context(name, step_index=i, ...)`` (WanPipeline 0.42 passes
   both the branch name "cond"/"uncond" and the step index);
2. the pipeline's timestep schedule, when the pipeline was handed to ``apply_sparse_attention``
   (its ``scheduler.set_timesteps`` is wrapped: every call starts a generation);
3. counting distinct timesteps: a smaller timestep is the next step, the same timestep is another
   branch of the same step (CFG as separate calls), a larger one starts a new generation.

A new generation starts when ``set_timesteps`` runs, when ``reset()`` is called, when the
timestep goes up, when the cache context's step index goes down, or when a branch name repeats
within one step. Batched CFG (CogVideoX: one forward with 2B samples) is one branch.

Generations inside generations: one transformer shared by two pipelines, the second run from the
first one's step callback. A generation replaced before its last step (its step count known) is
suspended, with its method states; a later forward that continues it (the next step of its
schedule, or another branch of its current step, and no ``set_timesteps`` in between) resumes it
with those states. Suspended generations are given up (their states freed) when a new generation
starts after a finished one (the usual end of a generation stopped by an error), on ``reset()``,
and beyond the ``MAX_SUSPENDED`` latest; one given up that resumes later is said, in one warning,
to continue afresh (a step callback that runs two generations one after the other).

Context parallelism: the hook sees the transformer's whole inputs (diffusers splits the sequence
later, at the module its ``_cp_plan`` names, e.g. Wan's ``blocks.0``), so the token layout and the
key lengths always describe the whole sequence. Under Ulysses, the forward's ``head_shard`` (a
``pipelines.context_parallel.UlyssesGroup``) says which heads this process computes.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from kernels.helpers import warn_once
from pipelines.context_parallel import UlyssesGroup, ulysses_group
from sparse_vdit.protocol import AttentionMethod, ForwardContext, ModelInfo
from sparse_vdit.token_layout import TokenLayout

__all__ = ["ForwardContext", "ForwardInputs", "StepTracker"]

# Timesteps of one schedule differ by far more than this; two equal timesteps are one step.
TIMESTEP_MATCH_TOL = 1e-4
MAX_SUSPENDED = 4  # unfinished generations kept for resumption (each holds its method states)


@dataclass
class ForwardInputs:
    """What a family adapter reads from a transformer forward's arguments.

    ``prefix_len`` / ``suffix_len``: conditioning tokens off the latent grid, right before / after
    it in the joint sequence (``TokenLayout``); 0 for most models.
    """

    latent_frames: int
    latent_height: int
    latent_width: int
    text_len: int | None
    text_valid_lens: tuple[int, ...] | None
    timestep: torch.Tensor | float
    batch_size: int
    device: torch.device
    dtype: torch.dtype
    prefix_len: int = 0
    suffix_len: int = 0


@dataclass
class _Generation:
    """Mutable bookkeeping of one generation (host side only)."""

    index: int
    schedule: list[float] | None = None
    num_steps: int | None = None
    last_timestep: float | None = None
    last_step: int | None = None
    calls_at_step: int = 0
    names_at_step: list = field(default_factory=list)
    branch_names: list = field(default_factory=list)
    states: dict = field(default_factory=dict)


class InputReader(Protocol):
    """What the tracker uses of a family record (``pipelines.families.record.Family`` has these; this
    module does not import it: the record imports this module's ``ForwardInputs``)."""

    clean_timestep: float | None  # a timestep rising toward this clean value: steps counted on clean - t

    def read_inputs(self, transformer: torch.nn.Module, arguments: dict[str, Any]) -> ForwardInputs: ...

    def token_layout(self, config: Any, latent_frames: int, latent_height: int, latent_width: int, *,
                     text_len: int | None = None) -> TokenLayout: ...


class StepTracker:
    """Step / branch / generation tracking of one transformer (installed by ``apply_sparse_attention``).

    Args:
        transformer: the diffusers transformer.
        method: the attention method (its ``new_state`` and ``begin_forward`` are called here).
        model: the transformer's ``ModelInfo``.
        family: the transformer's family record (reads a forward's inputs, builds its token layout).
    """

    def __init__(self, transformer: torch.nn.Module, method: AttentionMethod, model: ModelInfo,
                 family: InputReader) -> None:
        self.transformer = transformer
        self.method = method
        self.model = model
        self.family = family
        self._signature = inspect.signature(type(transformer).forward)
        self._generation: _Generation | None = None
        self._generations = 0
        self._pending_schedule: list[float] | None = None
        self._reset_pending = False
        self._suspended: list[_Generation] = []  # unfinished generations another one interrupted
        self._dropped: list[_Generation] = []  # suspended ones given up, without their states
        self._warned: set = set()
        self.current: ForwardContext | None = None
        self._parallel_config = None
        self._head_shard: UlyssesGroup | None = None
        self._context_hook = _CacheContextListener.install(transformer)
        self._hook = transformer.register_forward_pre_hook(
            torch.compiler.disable(self._pre_forward), with_kwargs=True
        )

    # ------------------------------------------------------------------ control
    def reset(self) -> None:
        """Start a new generation at the next forward (fresh method state, step 0); forget the
        suspended ones."""
        self._reset_pending = True
        self._pending_schedule = None
        self._suspended, self._dropped = [], []

    def start_generation(self, timesteps: list[float] | None = None) -> None:
        """A pipeline is starting a generation with this timestep schedule (called by the pipeline hook)."""
        self._reset_pending = True
        clean = self.family.clean_timestep
        self._pending_schedule = timesteps if timesteps is None or clean is None else [clean - t for t in timesteps]

    def remove(self) -> None:
        self._hook.remove()
        self._context_hook.remove()
        self.current = None
        self._generation = None
        self._suspended, self._dropped = [], []

    @property
    def generation_index(self) -> int | None:
        return None if self._generation is None else self._generation.index

    # ------------------------------------------------------------------ hook
    def _pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        bound = self._signature.bind_partial(module, *args, **kwargs).arguments
        if any(isinstance(value, torch.Tensor) and value.is_meta for value in bound.values()):
            raise RuntimeError(
                "sparse-vdit needs real tensors: the transformer's inputs are on the meta device. Load the "
                "weights (accelerate's init_empty_weights leaves them on meta) and move the transformer and "
                "its inputs to a real device before generating"
            )
        inputs = self.family.read_inputs(module, bound)
        t = _timestep_value(inputs.timestep, self.family.clean_timestep)
        name, ctx_step, ctx_num = self._context_hook.current()
        gen = self._advance(t, name, ctx_step, ctx_num)
        layout = self.family.forward_layout(module.config, inputs)
        branch = gen.branch_names.index(name) if name is not None else gen.calls_at_step
        gen.calls_at_step += 1
        gen.names_at_step.append(name)
        if branch not in gen.states:
            gen.states[branch] = self.method.new_state()
        num_steps = ctx_num if ctx_num is not None else (len(gen.schedule) if gen.schedule else None)
        gen.num_steps = num_steps
        ctx = ForwardContext(
            generation=gen.index,
            step_index=gen.last_step,
            branch=branch,
            branch_name=name,
            timestep=t,
            num_steps=num_steps,
            token_layout=layout,
            kv_lens=_key_lengths(layout, inputs.text_valid_lens, inputs.device),
            text_valid_lens=inputs.text_valid_lens,
            batch_size=inputs.batch_size,
            device=inputs.device,
            dtype=inputs.dtype,
            model=self.model,
            state=gen.states[branch],
            head_shard=self.head_shard(module),
        )
        self.current = dataclasses.replace(ctx, prepared=self.method.begin_forward(ctx))

    def head_shard(self, module: torch.nn.Module) -> UlyssesGroup | None:
        """The heads this process computes under the transformer's Ulysses context parallelism
        (None without it, or with ring attention); made once per parallel config.

        Raises ``ValueError`` when the heads do not split over the Ulysses degree."""
        config = getattr(module, "_parallel_config", None)
        if config is not self._parallel_config:
            self._head_shard = None if config is None else ulysses_group(config, self.model.num_heads)
            self._parallel_config = config
        return self._head_shard

    def _advance(self, t: float, name: str | None, ctx_step: int | None, ctx_num: int | None) -> _Generation:
        """Update the bookkeeping for a forward at timestep ``t``; returns the current generation."""
        gen = self._generation
        new = gen is None or self._reset_pending
        if not new:
            repeated_name = name is not None and name in gen.names_at_step
            if ctx_step is not None and gen.last_step is not None:
                new = ctx_step < gen.last_step or (ctx_step == gen.last_step and repeated_name)
            else:
                same = gen.last_timestep is not None and abs(t - gen.last_timestep) <= TIMESTEP_MATCH_TOL
                new = (gen.last_timestep is not None and t > gen.last_timestep + TIMESTEP_MATCH_TOL) or (same and repeated_name)
        if new:
            gen = self._switch(gen, t, name, ctx_step, ctx_num)
        step = self._step_of(gen, t, ctx_step)
        if step != gen.last_step:
            gen.calls_at_step = 0
            gen.names_at_step = []
        gen.last_step, gen.last_timestep = step, t
        if name is not None and name not in gen.branch_names:
            gen.branch_names.append(name)
        return gen

    def _switch(self, current: _Generation | None, t: float, name: str | None, ctx_step: int | None,
                ctx_num: int | None) -> _Generation:
        """The generation of a forward that does not continue ``current``: a suspended one it
        continues, else a new one. ``current`` is suspended when it has steps left; a new one after a
        finished one drops the suspended (abandoned: stopped by an error, say), keeping their
        bookkeeping without states so that a later forward continuing one is said to start afresh."""
        if current is not None and current.num_steps is not None and current.last_step is not None \
                and current.last_step < current.num_steps - 1:
            self._suspended = [*self._suspended, current][-MAX_SUSPENDED:]
        if not self._reset_pending:  # set_timesteps and reset() start a generation: they resume none
            for i in range(len(self._suspended) - 1, -1, -1):
                if self._continues(self._suspended[i], t, name, ctx_step, ctx_num):
                    self._generation = self._suspended.pop(i)
                    return self._generation
            dropped = [g for g in self._dropped if self._continues(g, t, name, ctx_step, ctx_num)]
            if dropped:
                self._dropped.remove(dropped[-1])
                warn_once(
                    self._warned, "dropped",
                    f"a generation resumes at step {dropped[-1].last_step + 1} of {dropped[-1].num_steps} after "
                    "another generation finished and a third started inside it: its method state (AdaSpa's "
                    "selections, a search's decisions) was dropped, so it continues afresh. Run one generation "
                    "at a time inside a step callback, or give each pipeline its own transformer",
                    stacklevel=4,
                )
        if current is not None and current not in self._suspended and self._suspended:
            self._dropped = [*self._dropped, *(dataclasses.replace(g, states={}) for g in self._suspended)][-MAX_SUSPENDED:]
            self._suspended = []
        schedule = self._pending_schedule if self._reset_pending else None
        gen = _Generation(index=self._generations, schedule=schedule)
        self._generations += 1
        self._generation = gen
        self._reset_pending = False
        self._pending_schedule = None
        return gen

    @staticmethod
    def _continues(gen: _Generation, t: float, name: str | None, ctx_step: int | None, ctx_num: int | None) -> bool:
        """A forward at ``t`` (cache context ``name``, ``ctx_step`` of ``ctx_num``) is ``gen``'s next
        step, or another branch of its current step."""
        if ctx_num is not None and gen.num_steps is not None and ctx_num != gen.num_steps:
            return False
        other_branch = name is not None and name not in gen.names_at_step
        if ctx_step is None and gen.schedule:
            dist = [abs(s - t) for s in gen.schedule]
            best = min(range(len(dist)), key=dist.__getitem__)
            ctx_step = best if dist[best] <= TIMESTEP_MATCH_TOL * max(1.0, abs(t)) else None
            if ctx_step is None:
                return False
        if ctx_step is not None:
            return ctx_step == gen.last_step + 1 or (ctx_step == gen.last_step and other_branch)
        return t < gen.last_timestep - TIMESTEP_MATCH_TOL or (abs(t - gen.last_timestep) <= TIMESTEP_MATCH_TOL and other_branch)

    @staticmethod
    def _step_of(gen: _Generation, t: float, ctx_step: int | None) -> int:
        if ctx_step is not None:
            return int(ctx_step)
        if gen.schedule:
            dist = [abs(s - t) for s in gen.schedule]
            best = min(range(len(dist)), key=dist.__getitem__)
            if dist[best] <= TIMESTEP_MATCH_TOL * max(1.0, abs(t)):
                return best
        if gen.last_step is None:
            return 0
        return gen.last_step + 1 if t < gen.last_timestep - TIMESTEP_MATCH_TOL else gen.last_step


def _key_lengths(layout: TokenLayout, text_valid_lens: tuple[int, ...] | None, device) -> torch.Tensor | None:
    """[B] int32 on ``device``: per sample, the real keys, which lead the sequence (its padded text ends it)."""
    if text_valid_lens is None:
        return None
    if layout.text_position != "after":
        raise ValueError(
            f"a family with padded text must put the text last (after the video), not {layout.text_position!r}: "
            "per-sample key lengths describe padding only at the end of the joint sequence"
        )
    return torch.tensor(layout.real_key_counts(text_valid_lens), dtype=torch.int32, device=device)


def _timestep_value(timestep, clean: float | None = None) -> float:
    """The step clock of a forward: its timestep, or the noise level ``clean - t`` of a model whose
    timestep rises toward ``clean`` (the family's ``clean_timestep``); the largest of per-token ones."""
    if isinstance(timestep, torch.Tensor):
        # Per-token timesteps (Wan 2.2 TI2V) hold 0 on conditioning frames: the max is the step's t
        # (the min, of a timestep rising toward clean). On the host in float64 (MPS has none).
        flat = timestep.detach().reshape(-1)
        return float(flat.max()) if clean is None else clean - float(flat.min())
    value = float(timestep) if clean is None else clean - float(timestep)
    if math.isnan(value):
        raise ValueError("the transformer was called with a NaN timestep")
    return value


class _CacheContextListener:
    """Receives diffusers' ``transformer.cache_context(name, step_index=...)``.

    diffusers hands the context to every stateful hook's ``StateManager`` in the model's
    ``HookRegistry``; this registers a passive hook (no forward change) to get it.
    """

    HOOK_NAME = "sparse_vdit_cache_context"

    def __init__(self, registry, manager) -> None:
        self._registry = registry
        self._manager = manager

    @classmethod
    def install(cls, transformer: torch.nn.Module) -> "_CacheContextListener":
        try:
            from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
        except ImportError:  # pragma: no cover - older diffusers: counting by timestep still works
            return cls(None, None)

        class _Listener(ModelHook):
            _is_stateful = True

            def __init__(self) -> None:
                super().__init__()
                self.state_manager = StateManager(BaseState)

            def reset_state(self, module):
                self.state_manager.reset()
                return module

        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        if registry.get_hook(cls.HOOK_NAME) is not None:
            registry.remove_hook(cls.HOOK_NAME, recurse=False)
        hook = _Listener()
        registry.register_hook(hook, cls.HOOK_NAME)
        return cls(registry, hook.state_manager)

    def current(self) -> tuple[str | None, int | None, int | None]:
        """(name, step_index, num_inference_steps) of the active cache context, Nones when unset."""
        ctx = None if self._manager is None else self._manager._context
        if ctx is None:
            return None, None, None
        return ctx.name, getattr(ctx, "step_index", None), getattr(ctx, "num_inference_steps", None)

    def remove(self) -> None:
        if self._registry is not None:
            self._registry.remove_hook(self.HOOK_NAME, recurse=False)
