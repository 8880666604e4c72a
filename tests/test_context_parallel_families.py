"""Two processes on the CPU (gloo) run the new families whose diffusers model ships a working
``_cp_plan`` (LTX-Video, which splits the tokens at the transformer's input, ChronoEdit, Wan's
plan, and MiniMax-H3, which splits its whole packed sequence at the first block) under diffusers' Ulysses context parallelism with FullAttention, a Sparse-vDiT plan (a
different mode per head) and AdaSpa (every phase), and match the same model in one process; the
step tracker sees the whole sequence; FullAttention gives what the stock processors give under
the same parallelism. The machinery is tests/test_context_parallel_gloo.py's (same tolerance).

LTX-2's ``_cp_plan`` fails in diffusers 0.42 with the stock processors alone (its audio-video
cross-attention RoPE is not split with the video), so it is not run here (README: no)."""

from __future__ import annotations

import functools

import pytest

from test_context_parallel_gloo import ADASPA_STEPS, WORLD, _methods, assert_matches, check_case, runs, spawn_cases

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

GRIDS = {  # latent grids whose token count splits evenly over the ranks (diffusers' gloo gather needs it)
    "ltx": dict(frames=3, height=6, width=5),
    "chronoedit": dict(frames=3, height=12, width=10),
    "minimax-h3": dict(frames=3, height=12, width=10),  # 106 rows: 6 text, 10 audio, 90 video
}


def _case(name: str) -> dict:
    from diffusers import ContextParallelConfig

    from pipelines.families import chronoedit, ltx, minimax_h3, wan

    grid = GRIDS[name]
    build, inputs = {
        # No prompt mask: diffusers 0.42's stock LTX cross-attention fails under Ulysses with one
        # (its [B, heads, 1, L] mask keeps every head after the exchange), with or without sparse-vdit.
        "ltx": (lambda: ltx.tiny_ltx_transformer(num_layers=3), lambda: dict(ltx.ltx_inputs(**grid), encoder_attention_mask=None)),
        "chronoedit": (lambda: chronoedit.tiny_chronoedit_transformer(num_layers=3), lambda: wan.wan_inputs(**grid)),
        # The packed sequence is split whole at transformer_blocks.0 (text and audio rows with the video's).
        "minimax-h3": (lambda: minimax_h3.tiny_minimax_h3_transformer(num_layers=3), lambda: minimax_h3.minimax_h3_inputs(**grid)),
    }[name]
    model, kwargs = build(), inputs()
    methods = {**_methods(model, grid), "stock": (lambda: None, 1)}
    one = runs(model, kwargs, methods)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
    return {"one": one, "cp": runs(model, kwargs, methods)}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return spawn_cases(tmp_path_factory.mktemp("gloo_families"), {name: functools.partial(_case, name) for name in GRIDS})


@pytest.mark.parametrize("case", list(GRIDS))
def test_context_parallel_matches_one_process(ranks, case):
    for rank, results in enumerate(ranks):
        check_case(results[case], rank, case)


@pytest.mark.parametrize("case", list(GRIDS))
def test_full_attention_equals_diffusers_own_context_parallelism(ranks, case):
    for rank, results in enumerate(ranks):
        cp = results[case]["cp"]
        assert_matches(cp["full"]["out"][0], cp["stock"]["out"][0], f"{case} rank {rank}: FullAttention vs stock")


@pytest.mark.parametrize("case", list(GRIDS))
def test_sparse_methods_compute_sparse_under_context_parallelism(ranks, case):
    """The plan and AdaSpa's sparse steps differ from dense attention (else the checks above would
    pass on a dense fallback), and each rank computes one of the two heads."""
    for rank, results in enumerate(ranks):
        cp = results[case]["cp"]
        assert cp["full"]["heads"][0] == range(rank, rank + 1)
        dense = cp["full"]["out"]
        for method, steps in (("plan", range(2)), ("adaspa", range(2, ADASPA_STEPS))):
            for step in steps:
                gap = float((cp[method]["out"][step] - dense[step]).abs().max())
                assert gap > 1e-3 * max(1.0, float(dense[step].abs().max())), f"{case} {method} step {step} is dense"
