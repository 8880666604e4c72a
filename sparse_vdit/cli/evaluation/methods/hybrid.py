"""The hybrid in an evaluation: each plan of the plan method (searched per epsilon, or the given
file) with AdaSpa at ``HYBRID_SPARSITY`` for its unstable cells (``adaspa.hybrid``). Not evaluated
by default: ask for it (``--methods plan,adaspa,hybrid,svg,window``)."""

from __future__ import annotations

from typing import Any, Sequence

from sparse_vdit.cli.evaluation.methods import EvaluatedMethod, EvaluationContext
from sparse_vdit.cli.evaluation.methods import plan as plan_method

HYBRID_SPARSITY = 0.8  # AdaSpa's default, for the heads whose search runs disagreed


def _hybrids(epsilons: Sequence[float], context: EvaluationContext) -> dict[str, Any]:
    from adaspa import AdaSpaAttention
    from adaspa.hybrid import HybridAttention

    return {
        f"{label} s={HYBRID_SPARSITY:g}": HybridAttention(plan, AdaSpaAttention(sparsity=HYBRID_SPARSITY,
                                                                                 block_size=context.block_size))
        for label, plan in plan_method.plans(epsilons, context).items()
    }


METHOD = EvaluatedMethod(
    name="hybrid",
    rank=2,
    settings=plan_method.METHOD.settings,  # the plans' --epsilons curve: the hybrid of each plan
    defaults=plan_method.METHOD.defaults,
    kind=float,
    help=plan_method.METHOD.help,
    label=lambda eps: f"eps={eps:g} s={HYBRID_SPARSITY:g}",
    build=lambda eps, context: _hybrids([eps], context)[f"eps={eps:g} s={HYBRID_SPARSITY:g}"],
    check=plan_method.METHOD.check,
    build_all=_hybrids,
    why_below_baseline=(
        "its stable heads keep a mode fixed offline and its unstable ones are AdaSpa's, so it falls below a baseline "
        "where both of those do; a plan searched on two runs calls every disagreement unstable"
    ),
    exports={"HybridAttention": "adaspa.hybrid"},
    in_default=False,
)
