"""The methods an evaluation compares, by name, each over several settings (a curve):

    plan     Sparse-vDiT: a plan file, or one plan searched per epsilon (``search_plan``)
    adaspa   AdaSpa, one config per sparsity
    svg      the Sparse-VideoGen-style baseline, one per window half-width (latent rows)
    window   the static window baseline, one per window half-width

    methods = build_methods(pipe, ["plan", "adaspa"], block_size=16, epsilons=[0.05, 0.2],
                            sparsities=[0.5, 0.8], num_inference_steps=8, height=64, width=96, num_frames=9)
    report = evaluate(pipe, methods, prompts, ...)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from sparse_vdit.modes import Diagonal, MultiDiagonal, Skip, VerticalStripe

__all__ = ["METHOD_NAMES", "SMALL_CANDIDATES", "DEFAULT_EPSILONS", "DEFAULT_SPARSITIES", "DEFAULT_WINDOWS",
           "build_methods", "parse_methods"]

METHOD_NAMES = ("plan", "adaspa", "svg", "window")
# One candidate per mode kind: a search the CPU fallback finishes in seconds on the proxy.
SMALL_CANDIDATES = (Skip(), Diagonal(1), MultiDiagonal(1, None), VerticalStripe((0,), 1))
DEFAULT_EPSILONS = (0.02, 0.05, 0.1)
DEFAULT_SPARSITIES = (0.5, 0.8)
DEFAULT_WINDOWS = (1, 2)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """"plan,adaspa" -> ["plan", "adaspa"]; ValueError naming the known methods for anything else."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(METHOD_NAMES)}")
    return list(dict.fromkeys(names))


def build_methods(
    pipe,
    names: Sequence[str] = METHOD_NAMES,
    *,
    block_size: int,
    plan: Any = None,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    search_prompts: Sequence[str] = (),
    search_seeds: Sequence[int] = (0,),
    num_inference_steps: int,
    candidates: Sequence = SMALL_CANDIDATES,
    cost: str = "auto",
    progress: bool = True,
    **call_kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """``{name: {setting: method}}`` for ``evaluate``.

    Args:
        block_size: of every method's layouts (``search.run.default_block_size`` per device).
        plan: a ``Plan``, or a path / Hub id for ``load_plan``; None: search one per epsilon on
            ``search_prompts`` x ``search_seeds`` at ``num_inference_steps`` over ``candidates``, with
            ``cost`` ("auto", "measured" or "flops", as ``search.greedy.PlanSearch``)
            (keep the search prompts apart from the evaluation's, so the plan is not judged on the
            prompts it was made from).
        call_kwargs: the generation's size and guidance, for the search runs.
    """
    from adaspa import AdaSpaAttention
    from sparse_vdit.baselines import SpatialTemporalAttention, StaticWindowAttention

    methods: dict[str, dict[str, Any]] = {}
    for name in parse_methods(names):
        if name == "plan":
            methods[name] = _plans(pipe, plan, epsilons, search_prompts, search_seeds, num_inference_steps,
                                   candidates, block_size, cost, progress, call_kwargs)
        elif name == "adaspa":
            methods[name] = {f"s={s:g}": AdaSpaAttention(sparsity=s, block_size=block_size) for s in sparsities}
        elif name == "svg":
            methods[name] = {f"rows={r}": SpatialTemporalAttention(rows=r, block_size=block_size) for r in windows}
        else:
            methods[name] = {f"rows={r}": StaticWindowAttention(rows=r, block_size=block_size) for r in windows}
    return methods


def _plans(pipe, plan, epsilons, prompts, seeds, steps, candidates, block_size, cost, progress, call_kwargs) -> dict:
    from search.run import search_plan
    from sparse_vdit.plan import Plan
    from sparse_vdit.plan_file import load_plan

    if plan is not None:
        if not isinstance(plan, Plan):
            plan = load_plan(str(plan) if isinstance(plan, Path) else plan)
        if plan.block_size != block_size:
            plan = plan.with_block_size(block_size)
        return {f"eps={plan.epsilon:g}": plan}
    if not prompts:
        raise ValueError("no plan given and no prompt to search one with: pass plan=... or search_prompts=[...]")
    kwargs = {k: v for k, v in call_kwargs.items() if k != "output_type"}
    return {
        f"eps={eps:g}": search_plan(pipe, list(prompts), list(seeds), num_inference_steps=steps, candidates=candidates,
                                    epsilon=eps, block_size=block_size, cost=cost, progress=progress, **kwargs)
        for eps in epsilons
    }
