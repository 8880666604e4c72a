"""The methods an evaluation compares, one file each in this folder, read by ``build_methods``, the
``sparse-vdit eval`` options and the report alike:

    plan     Sparse-vDiT: a plan file, or one plan searched per epsilon (``search_plan``)
    adaspa   AdaSpa, one method per sparsity
    hybrid   the plan's stable cells and AdaSpa for the rest (``adaspa.hybrid``), one per plan;
             not in the default list (asked for by name)
    svg      the Sparse-VideoGen-style baseline, one per window half-width (latent rows)
    window   the static window baseline, one per window half-width

A new method is one new file here holding ``METHOD = EvaluatedMethod(...)``: its name, its
settings (a curve: the ``build_methods`` keyword and the ``--<settings>`` option of
``sparse-vdit eval``, with their defaults), how a setting is labelled, checked and built, and
whether it is a simple baseline the others should beat (with why a method may fall below one).
Nothing else lists the methods. The files import nothing heavy at module level (``--help`` stays
fast): a method's own modules are imported when it is built or checked.

    methods = build_methods(pipe, ["plan", "adaspa"], block_size=16, epsilons=[0.05, 0.2],
                            sparsities=[0.5, 0.8], num_inference_steps=8, height=64, width=96, num_frames=9)
    report = evaluate(pipe, methods, prompts, ...)
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["EvaluatedMethod", "EvaluationContext", "registry", "method_names", "default_method_names", "baseline_names", "parse_methods",
           "build_methods", "METHOD_NAMES", "SMALL_CANDIDATES", "DEFAULT_EPSILONS", "DEFAULT_SPARSITIES",
           "DEFAULT_WINDOWS"]


def _accept(value: Any) -> None:
    return None


@dataclass(frozen=True)
class EvaluationContext:
    """What building an evaluated method may need besides its setting.

    Attributes:
        pipe: the diffusers pipeline evaluated.
        block_size: of every method's layouts (``kernels.limits.default_block_size`` per device).
        num_inference_steps: steps of a search the method runs first (the plan's).
        plan: a ``Plan``, or a path / Hub id for ``load_plan``, given instead of searching; or None.
        search_prompts, search_seeds: what a searched plan is searched on (kept apart from the
            evaluated prompts).
        candidates, cost: of a plan search (``search.greedy.PlanSearch``; no candidates: one per
            mode kind, ``search.candidates.SMALL_CANDIDATES``).
        progress: progress bars of the searches.
        call_kwargs: the generation's size and guidance, for the searches.
        searched: plans searched so far, by epsilon (methods built on the same plans share them).
    """

    pipe: Any
    block_size: int
    num_inference_steps: int
    plan: Any = None
    search_prompts: Sequence[str] = ()
    search_seeds: Sequence[int] = (0,)
    candidates: Sequence = ()
    cost: str = "auto"
    progress: bool = True
    call_kwargs: dict = field(default_factory=dict)
    searched: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluatedMethod:
    """One method an evaluation compares, over a curve of settings.

    Attributes:
        name: as in ``--methods`` and the report ("adaspa").
        rank: order among the methods (lower first), also in ``--methods``' default.
        settings: the name of its settings ("sparsities"): the ``build_methods`` keyword and the
            ``sparse-vdit eval --<settings>`` option.
        defaults: the default settings, one result each.
        kind: ``float`` or ``int``: the option reads a comma-separated list of it.
        help: what one setting is, for ``--help``.
        label: setting -> its label in the report ("s=0.8").
        build: (setting, EvaluationContext) -> the attention method.
        check: setting -> None, or ``ValueError`` saying what is wrong (run before a model loads).
        baseline: a simple baseline the other methods should beat (the report's findings).
        why_below_baseline: why this method may fall below a baseline (the report's findings).
        build_all: (settings, EvaluationContext) -> {label: method}, for a method whose settings
            are not built one by one (the plan: one given file instead of a search per epsilon).
        exports: {public name: module}: names ``from sparse_vdit import ...`` finds (the method's
            class, when the file defines a new one).
        in_default: evaluated when no method list is given (an experimental method is not).
    """

    name: str
    rank: int
    settings: str
    defaults: tuple
    kind: type
    help: str
    label: Callable[[Any], str]
    build: Callable[[Any, EvaluationContext], Any]
    check: Callable[[Any], None] = _accept
    baseline: bool = False
    why_below_baseline: str = "see the per-prompt rows"
    build_all: Callable[[Sequence, EvaluationContext], dict] | None = None
    exports: dict = field(default_factory=dict)
    in_default: bool = True

    def methods(self, settings: Sequence, context: EvaluationContext) -> dict[str, Any]:
        """{label: method} over ``settings``."""
        if self.build_all is not None:
            return self.build_all(settings, context)
        return {self.label(value): self.build(value, context) for value in settings}


@functools.lru_cache(maxsize=None)
def registry() -> dict[str, EvaluatedMethod]:
    """{name: EvaluatedMethod} of every module in this folder, by rank."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        entry = getattr(module, "METHOD", None)
        if not isinstance(entry, EvaluatedMethod):
            raise TypeError(f"{module.__name__} holds no METHOD = EvaluatedMethod(...): every module here is one method")
        found.append(entry)
    names = [entry.name for entry in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two evaluated methods share a name: {sorted(names)}")
    return {entry.name: entry for entry in sorted(found, key=lambda e: (e.rank, e.name))}


def method_names() -> tuple[str, ...]:
    return tuple(registry())


def default_method_names() -> tuple[str, ...]:
    """The methods evaluated when no list is given."""
    return tuple(name for name, entry in registry().items() if entry.in_default)


def baseline_names() -> tuple[str, ...]:
    """The simple baselines a method should beat."""
    return tuple(name for name, entry in registry().items() if entry.baseline)


def exported(name: str) -> Any:
    """The object a method's file exports as ``name`` (``EvaluatedMethod.exports``); AttributeError."""
    for entry in registry().values():
        if name in entry.exports:
            return getattr(importlib.import_module(entry.exports[name]), name)
    raise AttributeError(name)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """"plan,adaspa" -> ["plan", "adaspa"]; ValueError naming the known methods for anything else."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    known = method_names()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def build_methods(
    pipe,
    names: Sequence[str] | str | None = None,
    *,
    block_size: int,
    num_inference_steps: int,
    plan: Any = None,
    search_prompts: Sequence[str] = (),
    search_seeds: Sequence[int] = (0,),
    candidates: Sequence | None = None,
    cost: str = "auto",
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """``{name: {setting: method}}`` for ``evaluate``: the methods ``names`` (default: the default ones), each
    over its settings (keyword ``<settings>``, e.g. ``epsilons=[0.05, 0.2]``, ``sparsities=[0.8]``,
    ``windows=[1, 2]``; default: the method's defaults). Every other keyword is a pipeline call
    argument (size, guidance) for the searches. See ``EvaluationContext`` for the rest."""
    entries = registry()
    settings = {name: kwargs.get(entry.settings, entry.defaults) for name, entry in entries.items()}
    for entry in entries.values():  # what is left are the pipeline's call arguments
        kwargs.pop(entry.settings, None)
    context = EvaluationContext(pipe, block_size, num_inference_steps, plan, tuple(search_prompts), tuple(search_seeds),
                                tuple(candidates or ()), cost, progress, kwargs)
    return {name: entries[name].methods(settings[name], context) for name in parse_methods(names or default_method_names())}


def __getattr__(name: str):
    # The old module-level names, derived from the registry (no second list of methods or defaults).
    derived = {"METHOD_NAMES": lambda: default_method_names(),
               "SMALL_CANDIDATES": lambda: importlib.import_module("search.candidates").SMALL_CANDIDATES,
               "DEFAULT_EPSILONS": lambda: registry()["plan"].defaults,
               "DEFAULT_SPARSITIES": lambda: registry()["adaspa"].defaults,
               "DEFAULT_WINDOWS": lambda: registry()["window"].defaults}
    if name in derived:
        return derived[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
