"""The Sparse-VideoGen-style baseline in an evaluation (``sparse_vdit.baselines``): one method per
window half-width."""

from __future__ import annotations

from sparse_vdit.cli.evaluation.methods import EvaluatedMethod, EvaluationContext
from sparse_vdit.cli.evaluation.methods.window import METHOD as WINDOW


def _build(rows: int, context: EvaluationContext):
    from sparse_vdit.baselines import SpatialTemporalAttention

    return SpatialTemporalAttention(rows=rows, block_size=context.block_size)


METHOD = EvaluatedMethod(
    name="svg",
    rank=3,
    settings=WINDOW.settings,  # one --windows curve serves both window baselines
    defaults=WINDOW.defaults,
    kind=int,
    help=WINDOW.help,
    label=WINDOW.label,
    build=_build,
    check=WINDOW.check,
    baseline=True,
)
