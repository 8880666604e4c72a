"""The static window baseline in an evaluation (``sparse_vdit.baselines``): one method per window
half-width."""

from __future__ import annotations

from sparse_vdit.cli.evaluation.methods import EvaluatedMethod, EvaluationContext


def _build(rows: int, context: EvaluationContext):
    from sparse_vdit.baselines import StaticWindowAttention

    return StaticWindowAttention(rows=rows, block_size=context.block_size)


def _check(rows: int) -> None:
    if not isinstance(rows, int) or rows < 0:
        raise ValueError(f"--windows must be half-widths >= 0 (latent rows), got {rows!r}")


METHOD = EvaluatedMethod(
    name="window",
    rank=4,
    settings="windows",
    defaults=(1, 2),
    kind=int,
    help="window half-widths in latent rows of the svg and window baselines",
    label=lambda rows: f"rows={rows}",
    build=_build,
    check=_check,
    baseline=True,
)
