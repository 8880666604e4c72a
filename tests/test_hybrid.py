"""The hybrid of a plan and AdaSpa (``adaspa.hybrid``): stable heads compute exactly their plan mode,
unstable heads exactly what AdaSpa alone computes for them, at every phase of AdaSpa's schedule, with
and without text rows; one launch per layer outside the search steps; through diffusers it equals
the plan when nothing is unstable; bad plans are refused with what to do; the search records the
per-cell agreement it reads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adaspa import AdaSpaAttention, HybridAttention
from adaspa.schedule import CACHED_SEARCH, DENSE, FIRST_SEARCH, SPARSE
from kernels import attention as kernel_ops
from kernels.block_layout import BlockLayout
from search.calibration import combine_runs
from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, Skip, VerticalStripe
from sparse_vdit.plan import PlanError
from sparse_vdit.protocol import AttentionCall, ForwardContext, ModelInfo
from sparse_vdit.token_layout import TokenLayout
from test_plan import make_plan

BLOCK = 16
HEADS, D = 4, 32
STEPS = 5
PHASES = (DENSE, FIRST_SEARCH, SPARSE, CACHED_SEARCH, SPARSE)
MODES = ((Diagonal(1), MultiDiagonal(1, None), Skip(), VerticalStripe((0,), 1)),)  # one layer
UNSTABLE = (1, 3)  # heads whose runs disagreed
MODEL = ModelInfo("WanTransformer3DModel", 1, HEADS, D, ("blocks.0.attn1",), "none", (1, 2, 2))


def adaspa() -> AdaSpaAttention:
    return AdaSpaAttention(sparsity=0.6, block_size=BLOCK, warmup_steps=1, search_steps=(1, 3), schedule_steps=None)


def agreement(unstable=UNSTABLE, steps=1, share=0.5) -> list:
    return [[[share if h in unstable else 1.0 for h in range(HEADS)]] for _ in range(steps)]


def plan_with(layout: TokenLayout, model: ModelInfo = MODEL, modes=MODES, table=None, runs=2):
    calibration = {"runs": runs, "cell_agreement": agreement() if table is None else table}
    return make_plan([modes], model=model, layout=layout, calibration=calibration)


def run(method, layout: TokenLayout, q, k, v, model: ModelInfo = MODEL):
    """Drive ``method`` through STEPS forwards of one layer on fixed q, k, v as the processor would;
    per step the output [B, H, S, D] and what the method returned (None, a layout or a tensor)."""
    state = method.new_state()
    outputs, returned = [], []
    for step in range(STEPS):
        forward = ForwardContext(generation=0, step_index=step, branch=0, branch_name=None, timestep=1000.0 - step,
                                 num_steps=STEPS, token_layout=layout, kv_lens=None, text_valid_lens=None,
                                 batch_size=q.shape[0], device=q.device, dtype=q.dtype, model=model, state=state)
        forward = dataclasses.replace(forward, prepared=method.begin_forward(forward))
        call = AttentionCall(layer_index=0, layer_name="blocks.0.attn1", num_heads=HEADS, head_dim=D, forward=forward)
        result = method(call, q, k, v)
        if result is None:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        elif isinstance(result, BlockLayout):
            out = kernel_ops.block_sparse_attention(q, k, v, result)
        else:
            out = result
        outputs.append(out)
        returned.append(result)
    return outputs, returned


LAYOUTS = {
    "video only": TokenLayout(3, 4, 8),  # 96 tokens, 6 blocks
    "text after": TokenLayout(3, 4, 8, text_len=9, text_position="after"),  # 105 tokens: a partial block
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_head_computes_its_source(fallback, name):
    layout = LAYOUTS[name]
    model = dataclasses.replace(MODEL, text_position=layout.text_position) if layout.text_len else MODEL
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, HEADS, layout.seq_len, D, generator=g) for _ in range(3))
    plan = plan_with(layout, model)
    hybrid = HybridAttention(plan, adaspa())
    assert hybrid.unstable_share == 0.5 and "2 of 4 cells to AdaSpa" in repr(hybrid)
    got, returned = run(hybrid, layout, q, k, v, model)
    alone, _ = run(adaspa(), layout, q, k, v, model)
    planned, _ = run(plan, layout, q, k, v, model)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    stable = [h for h in range(HEADS) if h not in UNSTABLE]
    unstable = list(UNSTABLE)
    for step, phase in enumerate(PHASES):
        if phase == FIRST_SEARCH:  # AdaSpa's dense pass: every head dense
            torch.testing.assert_close(got[step], dense, atol=1e-5, rtol=1e-5)
            continue
        torch.testing.assert_close(got[step][:, stable], planned[step][:, stable], atol=1e-5, rtol=1e-5,
                                   msg=f"step {step} ({phase}): a stable head left its mode")
        torch.testing.assert_close(got[step][:, unstable], alone[step][:, unstable], atol=1e-5, rtol=1e-5,
                                   msg=f"step {step} ({phase}): an unstable head is not AdaSpa's")
    assert (got[2][:, 2] == 0).all()  # the stable Skip head computes nothing
    # AdaSpa's sparse heads really are sparse, and differ from dense.
    assert not torch.allclose(got[2][:, unstable], dense[:, unstable], atol=1e-3)
    # One launch per layer at the warm-up and the sparse steps: a layout, or (text rows) one tensor.
    assert isinstance(returned[0], BlockLayout)
    assert isinstance(returned[2], torch.Tensor if layout.text_len else BlockLayout)


def test_layers_without_unstable_heads_are_the_plan(fallback):
    layout = LAYOUTS["video only"]
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, HEADS, layout.seq_len, D, generator=g) for _ in range(3))
    plan = plan_with(layout, table=agreement(unstable=()))
    got, returned = run(HybridAttention(plan, adaspa()), layout, q, k, v)
    planned, plan_returned = run(plan, layout, q, k, v)
    assert all(a is b for a, b in zip(returned, plan_returned))  # the plan's own layouts, every step
    # An all-Full layer with every head unstable: dense warm-up (None), then AdaSpa for every head.
    full = plan_with(layout, modes=((Full(),) * HEADS,), table=agreement(unstable=range(HEADS)))
    got, returned = run(HybridAttention(full, adaspa()), layout, q, k, v)
    alone, _ = run(adaspa(), layout, q, k, v)
    assert returned[0] is None
    for step in range(STEPS):
        torch.testing.assert_close(got[step], alone[step], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_through_diffusers_nothing_unstable_is_the_plan():
    """A tiny Wan through ``apply_sparse_attention``: with every cell stable the hybrid's outputs are
    the plan's, bit for bit (the same layouts); with some unstable, the generation runs and differs."""
    from pipelines import apply_sparse_attention, model_info, tiny, token_layout_of
    from test_adaspa_pipelines import _at

    model = tiny.tiny_wan_transformer(num_layers=2)
    inputs = tiny.wan_inputs(frames=3, height=12, width=10)
    info = model_info(model)
    layout = token_layout_of(model, 3, 12, 10)
    modes = tuple((Diagonal(1), MultiDiagonal(1, None)) + (Full(),) * (info.num_heads - 2) for _ in range(info.num_layers))
    table = [[[1.0] * info.num_heads for _ in range(info.num_layers)]]

    def outputs(method):
        with apply_sparse_attention(model, method):
            result = []
            for step in range(STEPS):
                with model.cache_context("cond", step_index=step, num_inference_steps=STEPS):
                    result.append(model(**_at(inputs, 900.0 - 100 * step))[0])
        return result

    plan = make_plan([modes], model=info, layout=layout, calibration={"runs": 2, "cell_agreement": table})
    hybrid = HybridAttention(plan, adaspa())
    for a, b in zip(outputs(hybrid), outputs(plan)):
        assert torch.equal(a, b)
    table[0][1][0] = 0.5
    mixed = HybridAttention(make_plan([modes], model=info, layout=layout, calibration={"runs": 2, "cell_agreement": table}),
                            adaspa())
    got = outputs(mixed)
    assert all(torch.isfinite(x).all() for x in got)
    assert not torch.equal(got[-1], outputs(plan)[-1])


def test_bad_plans_and_settings_are_refused():
    layout = LAYOUTS["video only"]
    with pytest.raises(PlanError, match="cell_agreement.*search it again"):
        HybridAttention(make_plan([MODES], model=MODEL, layout=layout), adaspa())
    with pytest.raises(PlanError, match="one run"):
        HybridAttention(plan_with(layout, runs=1), adaspa())
    with pytest.raises(PlanError, match=r"\[steps\]\[layers\]\[heads\]"):
        HybridAttention(plan_with(layout, table=[[[1.0, 1.0]]]), adaspa())
    with pytest.raises(ValueError, match="min_agreement"):
        HybridAttention(plan_with(layout), adaspa(), min_agreement=0)
    with pytest.raises(TypeError, match="needs a Plan"):
        HybridAttention("plan.json", adaspa())
    # AdaSpa runs at the plan's block size: one block grid for both.
    assert HybridAttention(plan_with(layout), AdaSpaAttention(block_size=64)).adaspa.block_size == BLOCK
    # min_agreement decides what is unstable: at 0.5 a half-agreed cell keeps its mode.
    assert HybridAttention(plan_with(layout), adaspa(), min_agreement=0.5).unstable_share == 0


def test_search_records_the_agreement_per_cell():
    """``combine_runs`` keeps, per (step, layer, head), the share of runs that chose the plan's mode."""
    a, b, c = Diagonal(1), MultiDiagonal(1, None), Full()
    runs = [  # three runs of 1 step x 2 layers x 2 heads
        [[(a, c), (b, b)]],
        [[(a, b), (b, b)]],
        [[(b, a), (b, c)]],
    ]
    _, report = combine_runs(runs, {a: 0.1, b: 0.3, c: 1.0})
    assert report["cell_agreement"] == [[[0.6667, 0.3333], [1.0, 0.6667]]]


def test_evaluation_builds_it_on_the_plans_searches_and_not_by_default():
    """``sparse-vdit eval --methods ...,hybrid``: the hybrid of each plan the plan method searched (one
    search per epsilon, shared), AdaSpa at the evaluation's block size; not among the default methods."""
    from sparse_vdit.cli.evaluation.methods import EvaluationContext, default_method_names, method_names, registry

    assert "hybrid" in method_names() and "hybrid" not in default_method_names()
    plan = plan_with(LAYOUTS["video only"])
    context = EvaluationContext(pipe=None, block_size=BLOCK, num_inference_steps=STEPS, searched={0.1: plan})
    built = registry()["hybrid"].methods([0.1], context)
    (label, method), = built.items()
    assert label == "eps=0.1 s=0.8" and isinstance(method, HybridAttention) and method.plan is plan
    assert method.adaspa.sparsity == 0.8 and method.adaspa.block_size == BLOCK
    assert registry()["plan"].methods([0.1], context) == {"eps=0.1": plan}  # the same search serves both
