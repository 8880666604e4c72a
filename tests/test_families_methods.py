"""Sparse methods through the processors of every family added for the video DiTs of diffusers:
a plan's heads each equal the float64 reference of their mode's layout (and the key padding of
padded prompts; tokens off the grid dense), its all-Full layer runs dense through diffusers; AdaSpa
at sparsity 0 equals the float64 model at every phase. The same checks as the first families'
(tests/test_plan_pipelines.py, tests/test_adaspa_pipelines.py), on each family's tiny model."""

from __future__ import annotations

import contextlib

import pytest
import torch

from family_cases import CASES, ELSEWHERE, FAMILY_CASES, OFF_GRID_CASES, SEARCHED, at_timestep
from helpers import assert_close_to_reference
from pipelines import apply_sparse_attention, model_info
from test_adaspa_pipelines import STEPS, TIMESTEPS as ADASPA_TIMESTEPS, config as adaspa_config, selections
from test_plan_pipelines import DENSE_LAYER, STEP_MODES, dense_calls, TIMESTEPS, captured, check_heads_against_reference, plan_for  # noqa: F401

from adaspa.schedule import CACHED_SEARCH, DENSE, FIRST_SEARCH, SPARSE


ADASPA_GRID = dict(frames=2, height=8, width=12)  # 48 tokens at patch 2: three 16-token blocks of video
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "name, grid",
    [(n, SEARCHED) for n in FAMILY_CASES + OFF_GRID_CASES] + [(n, ELSEWHERE) for n in ("framepack", "ltx-2")],
    ids=lambda v: v if isinstance(v, str) else ("searched" if v is SEARCHED else "elsewhere"),
)
@torch.no_grad()
def test_each_head_matches_the_reference_of_its_mode(name, grid, captured):  # noqa: F811
    case = CASES[name]
    model = case.build(3)
    plan = plan_for(model, grid=case.grid(SEARCHED))
    patch = model_info(model).patch_size
    with apply_sparse_attention(model, plan) as handle:
        tracker = handle.trackers[0]
        tracker.start_generation(list(TIMESTEPS))
        for step, t in enumerate(TIMESTEPS):
            captured.__init__()
            model(**case.make_inputs(model, grid, t))
            forward = tracker.current
            assert (forward.step_index, forward.num_steps) == (step, len(TIMESTEPS))
            layout = forward.token_layout
            g = case.grid(grid)
            assert (layout.frames, layout.rows, layout.cols) == (g["frames"] // patch[0], g["height"] // patch[1],
                                                                 g["width"] // patch[2])
            assert captured.asked == [0, 1, 2]
            assert captured.dense == [DENSE_LAYER] * dense_calls(forward), \
                "the all-Full layer must run dense through dispatch_attention_fn"
            assert [c[0] for c in captured.sparse] == [0, 2], "the kernel must not run for the all-Full layer"
            assert all(c[1].shape[2] == layout.seq_len for c in captured.sparse)
            assert all((c[5] is not None) == case.padded for c in captured.sparse)
            check_heads_against_reference(captured, STEP_MODES[step], layout)


def _run_adaspa(model, kwargs, dtype=torch.float32):
    """The steps of ``adaspa_config(0.0)`` as a pipeline drives them; outputs by step, and the state."""
    handle = apply_sparse_attention(model, adaspa_config(0.0))
    handle.trackers[0].start_generation(list(ADASPA_TIMESTEPS))  # for a model without cache_context (ConsisID)
    outs = []
    try:
        for i in range(STEPS):
            context = model.cache_context("cond_uncond", step_index=i, num_inference_steps=STEPS) \
                if hasattr(model, "cache_context") else contextlib.nullcontext()
            with context:
                outs.append(model(**at_timestep(kwargs, ADASPA_TIMESTEPS[i], dtype))[0])
        return outs, handle.trackers[0].current.state
    finally:
        handle.remove()


@pytest.mark.parametrize("name", FAMILY_CASES)
@torch.no_grad()
def test_adaspa_at_sparsity_zero_equals_the_float64_model_at_every_step(name):
    """s = 0 keeps every block: the first search step (dense with LSE), the sparse steps and the
    cached search step all give the stock output within the kernels' tolerance."""
    case = CASES[name]
    model = case.build(2)
    model64 = case.float64_twin(model)
    kwargs = case.make_inputs(model, ADASPA_GRID)
    stock = [model(**at_timestep(kwargs, t))[0] for t in ADASPA_TIMESTEPS]
    ref64 = [model64(**at_timestep(kwargs, t, torch.float64))[0] for t in ADASPA_TIMESTEPS]
    outs, state = _run_adaspa(model, kwargs)
    phases = [adaspa_config(0.0).schedule(STEPS).phase(i) for i in range(STEPS)]
    assert phases == [DENSE, FIRST_SEARCH, SPARSE, CACHED_SEARCH, SPARSE]
    for i, out in enumerate(outs):
        assert_close_to_reference(out, ref64[i], stock[i], name=f"{name} step {i} ({phases[i]})")
    assert selections(state) and all(blocks.any(-1).any() for blocks in selections(state).values())
