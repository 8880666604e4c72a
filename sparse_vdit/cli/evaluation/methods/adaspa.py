"""AdaSpa in an evaluation: one method per sparsity."""

from __future__ import annotations

from sparse_vdit.cli.evaluation.methods import EvaluatedMethod, EvaluationContext


def _build(sparsity: float, context: EvaluationContext):
    from adaspa import AdaSpaAttention

    return AdaSpaAttention(sparsity=sparsity, block_size=context.block_size)


def _check(sparsity: float) -> None:
    from adaspa import AdaSpaAttention

    AdaSpaAttention(sparsity=sparsity)


METHOD = EvaluatedMethod(
    name="adaspa",
    rank=1,
    settings="sparsities",
    defaults=(0.5, 0.8),
    kind=float,
    help="AdaSpa sparsities, one method each (0.8 keeps 20%% of the key blocks)",
    label=lambda s: f"s={s:g}",
    build=_build,
    check=_check,
    why_below_baseline=(
        "AdaSpa keeps the top-k blocks per query block, so a head whose mass is spread thinly loses mass that a "
        "contiguous window keeps; its search steps also run dense (density counts them)"
    ),
)
