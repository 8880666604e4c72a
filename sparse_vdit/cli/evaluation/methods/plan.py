"""Sparse-vDiT in an evaluation: a given plan file, or one plan searched per epsilon."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from sparse_vdit.cli.evaluation.methods import EvaluatedMethod, EvaluationContext


def _check(epsilon: float) -> None:
    from search.greedy import DEFAULT_LAMBDA, check_lambda_epsilon

    check_lambda_epsilon(DEFAULT_LAMBDA, epsilon)


def _search(epsilon: float, context: EvaluationContext):
    """The plan searched at ``epsilon`` on the context's search prompts (once per context)."""
    if epsilon not in context.searched:
        context.searched[epsilon] = _run_search(epsilon, context)
    return context.searched[epsilon]


def _run_search(epsilon: float, context: EvaluationContext):
    from search import run

    if not context.search_prompts:
        raise ValueError("no plan given and no prompt to search one with: pass plan=... or search_prompts=[...]")
    kwargs = {k: v for k, v in context.call_kwargs.items() if k != "output_type"}
    from search.candidates import SMALL_CANDIDATES

    return run.search_plan(context.pipe, list(context.search_prompts), list(context.search_seeds),
                           num_inference_steps=context.num_inference_steps,
                           candidates=context.candidates or SMALL_CANDIDATES,
                           epsilon=epsilon, block_size=context.block_size, cost=context.cost,
                           progress=context.progress, **kwargs)


def plans(epsilons: Sequence[float], context: EvaluationContext) -> dict[str, Any]:
    """The given plan (at the evaluation's block size), else one searched plan per epsilon."""
    from sparse_vdit.plan import Plan
    from sparse_vdit.plan_file import load_plan

    plan = context.plan
    if plan is None:
        return {f"eps={eps:g}": _search(eps, context) for eps in epsilons}
    if not isinstance(plan, Plan):
        plan = load_plan(str(plan) if isinstance(plan, Path) else plan)
    if plan.block_size != context.block_size:
        plan = plan.with_block_size(context.block_size)
    return {f"eps={plan.epsilon:g}": plan}


METHOD = EvaluatedMethod(
    name="plan",
    rank=0,
    settings="epsilons",
    defaults=(0.02, 0.05, 0.1),
    kind=float,
    help="plan search epsilons, one plan each (a curve); ignored with --plan",
    label=lambda eps: f"eps={eps:g}",
    build=_search,
    check=_check,
    build_all=plans,
    why_below_baseline=(
        "a plan is fixed offline on its search prompts, seeds and steps; the online baselines adapt to each prompt, "
        "and a plan searched on few runs may not generalise (search with more prompts and seeds)"
    ),
)
