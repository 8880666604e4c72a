"""Plan as data and as a method, without a model: identical steps merge into ranges, the step
mapping rule (50 -> 30, 30 -> 50, 50 -> 50, one step), ``modes_at``, computed density and speedup,
``with_block_size``, validation against a model (structure: error; config only: one warning) and
the per-forward layouts (all-Full layers dense, shared per layer and step range, Skip heads empty).
Also the builders shared by the other plan tests (``make_plan``, ``uniform_steps``)."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from sparse_vdit import save_plan
from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, Skip, VerticalStripe, head_layout, mode_density
from sparse_vdit.plan import CostTable, Plan, PlanError, StepRange
from sparse_vdit.protocol import ForwardContext, ModelInfo, config_fingerprint
from sparse_vdit.token_layout import TokenLayout

BLOCK = 16
CONFIG = {"num_layers": 3, "num_attention_heads": 2, "attention_head_dim": 64, "rope_max_seq_len": 64, "eps": 1e-6}
MODEL = ModelInfo(
    "WanTransformer3DModel", 3, 2, 64, ("blocks.0.attn1", "blocks.1.attn1", "blocks.2.attn1"), "none", (1, 2, 2),
    config_fingerprint=config_fingerprint(CONFIG), config=CONFIG,
)
LAYOUT = TokenLayout(3, 6, 5)
A = ((Diagonal(1), Skip()), (Full(), Full()), (MultiDiagonal(1, None), VerticalStripe((0, -1), 2)))
B = ((Full(), Diagonal(0)), (Full(), Full()), (Skip(), MultiDiagonal(0, 1)))
COSTS = {Full(): 1.0, Skip(): 0.0, Diagonal(1): 0.3, Diagonal(0): 0.2, MultiDiagonal(1, None): 0.6,
         MultiDiagonal(0, 1): 0.4, VerticalStripe((0, -1), 2): 0.25}


def cost_table(modes=None, source: str = "flops") -> CostTable:
    modes = COSTS if modes is None else modes
    return CostTable(source, None, "test shape", tuple((m, COSTS.get(m, 0.5)) for m in modes))


def make_plan(step_modes, model: ModelInfo = MODEL, layout: TokenLayout = LAYOUT, **fields) -> Plan:
    """A plan over ``step_modes[s][l][h]`` with test defaults for every other field."""
    used = {m for step in step_modes for layer in step for m in layer}
    fields = {"token_layout": layout, "block_size": BLOCK, "lam": 0.5, "epsilon": 1.0, "cost": cost_table(used), **fields}
    return Plan.from_step_modes(step_modes, model=model, **fields)


def uniform_steps(layers, num_steps: int):
    return [layers] * num_steps


def forward_context(plan_model: ModelInfo, step: int, num_steps: int | None, layout: TokenLayout = LAYOUT) -> ForwardContext:
    return ForwardContext(0, step, 0, None, 1.0, num_steps, layout, None, None, 1, torch.device("cpu"), torch.float32, plan_model)


# ------------------------------------------------------------------------------ data
def test_identical_consecutive_steps_merge_into_ranges():
    plan = make_plan([A, A, B, B, B, A])
    assert [(r.start, r.end) for r in plan.steps] == [(0, 2), (2, 5), (5, 6)]
    assert [r.layers for r in plan.steps] == [A, B, A]
    assert plan.num_steps == 6
    assert plan.distinct_modes()[:3] == (Diagonal(1), Skip(), Full())


def test_density_and_speedup_are_means_over_steps_layers_heads():
    plan = make_plan([A, B, B])
    heads = [m for step in (A, B, B) for layer in step for m in layer]
    density = sum(mode_density(m, LAYOUT, BLOCK) for m in heads) / len(heads)
    assert plan.expected_density == pytest.approx(density)
    assert plan.predicted_speedup == pytest.approx(len(heads) / sum(COSTS[m] for m in heads))
    given = make_plan([A], expected_density=0.25, predicted_speedup=3.0)
    assert (given.expected_density, given.predicted_speedup) == (0.25, 3.0)


def test_full_costs_one_when_the_table_leaves_it_out():
    plan = make_plan([B], cost=cost_table([Diagonal(0), Skip(), MultiDiagonal(0, 1)]))
    assert plan.cost.cost_of(Full()) == 1.0
    with pytest.raises(PlanError, match=r"no cost for Diagonal\(rows=1\)"):
        make_plan([A], cost=cost_table([Skip()]))


@pytest.mark.parametrize(
    "searched, generated",
    [(50, 30), (30, 50), (50, 50), (50, 1), (1, 50), (2, 4), (7, 3)],
)
def test_step_mapping_rule(searched, generated):
    plan = make_plan(uniform_steps(A, searched))
    mapped = [plan.searched_step(j, generated) for j in range(generated)]
    assert mapped == [min(searched - 1, math.floor((j + 0.5) * searched / generated)) for j in range(generated)]
    assert mapped == sorted(mapped) and 0 <= mapped[0] and mapped[-1] <= searched - 1
    if searched == generated:
        assert mapped == list(range(generated))


def test_step_mapping_examples():
    plan = make_plan(uniform_steps(A, 50))
    assert (plan.searched_step(0, 30), plan.searched_step(29, 30)) == (0, 49)
    assert plan.searched_step(0, 1) == 25  # the midpoint of the schedule
    assert [make_plan(uniform_steps(A, 30)).searched_step(j, 50) for j in (0, 1, 2, 49)] == [0, 0, 1, 29]
    with pytest.raises(ValueError, match="outside a 30-step generation"):
        plan.searched_step(30, 30)


def test_modes_at_follows_the_mapping():
    plan = make_plan([A] * 5 + [B] * 5)
    assert plan.modes_at(0, 4) == A and plan.modes_at(1, 4) == A  # searched steps 1, 3
    assert plan.modes_at(2, 4) == B and plan.modes_at(3, 4) == B  # searched steps 6, 8
    assert [plan.modes_at(j, 10) for j in range(10)] == [A] * 5 + [B] * 5


def test_with_block_size_recomputes_density_and_refuses_unserved_sizes():
    plan = make_plan([A, B])
    bigger = plan.with_block_size(32)
    assert bigger.block_size == 32 and plan.block_size == BLOCK
    assert bigger.expected_density == pytest.approx(bigger.computed_density())
    assert bigger.expected_density >= plan.expected_density  # coarser blocks keep at least as much
    assert bigger.steps == plan.steps and bigger.predicted_speedup == plan.predicted_speedup
    with pytest.raises(PlanError, match=r"block_size 48 is not served.*16, 32, 64, 128"):
        plan.with_block_size(48)


# ------------------------------------------------------------------------------ construction errors
def _replace_steps(plan: Plan, steps) -> Plan:
    return dataclasses.replace(plan, steps=tuple(steps))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: _replace_steps(p, [StepRange(0, 1, A), StepRange(2, 3, B)]), r"leaves steps 1..1 out"),
        (lambda p: _replace_steps(p, [StepRange(0, 2, A), StepRange(1, 3, B)]), r"overlaps the range before it"),
        (lambda p: _replace_steps(p, [StepRange(0, 2, A), StepRange(2, 4, B)]), r"out of range: the plan has 3 steps"),
        (lambda p: _replace_steps(p, [StepRange(0, 2, A)]), r"steps 2..2 have no modes"),
        (lambda p: _replace_steps(p, [StepRange(0, 3, A[:2])]), r"has 2 layers, but the plan's model .* has 3"),
        (lambda p: _replace_steps(p, [StepRange(0, 3, (A[0], A[1], (Full(),)))]), r"layer 2 has 1 heads.* has 2"),
        (lambda p: _replace_steps(p, [StepRange(0, 3, (A[0], A[1], (Full(), "diag")))]), r"'diag' is not a mode"),
        (lambda p: dataclasses.replace(p, lam=-0.5), r"lam must be a finite number >= 0, got -0.5"),
        (lambda p: dataclasses.replace(p, epsilon=float("nan")), r"epsilon must be a finite number"),
        (lambda p: dataclasses.replace(p, epsilon="1"), r"epsilon must be a finite number"),
        (lambda p: dataclasses.replace(p, num_steps=0), r"num_steps must be an integer >= 1"),
        (lambda p: dataclasses.replace(p, block_size=100), r"block_size 100 is not served"),
        (lambda p: dataclasses.replace(p, expected_density=1.5), r"expected_density must be a number in \[0, 1\]"),
        (lambda p: dataclasses.replace(p, predicted_speedup=0), r"predicted_speedup must be a finite number > 0"),
        (lambda p: dataclasses.replace(p, calibration={"seeds": {0, 1}}), r"calibration must hold JSON values"),
        (lambda p: dataclasses.replace(p, model_config={**CONFIG, "eps": 1.0}), r"model_config does not match"),
        (lambda p: dataclasses.replace(p, token_layout=TokenLayout(2, 2, 2, 4, "before")), r"puts text 'before'"),
        (lambda p: dataclasses.replace(p, cost=CostTable("guessed", None, "", ())), r"cost source 'guessed' is unknown"),
        (lambda p: dataclasses.replace(p, cost=cost_table([Skip()])), r"no cost for"),
    ],
)
def test_inconsistent_plans_are_refused(change, message):
    plan = make_plan([A, A, B])
    with pytest.raises(PlanError, match=message):
        change(plan)


def test_cost_table_checks_its_costs():
    with pytest.raises(PlanError, match=r"cost of Skip\(\) must be a finite number >= 0, got -1"):
        CostTable("flops", None, "", ((Skip(), -1),))
    with pytest.raises(PlanError, match=r"lists Skip\(\) more than once"):
        CostTable("flops", None, "", ((Skip(), 0.0), (Skip(), 0.1)))
    with pytest.raises(PlanError, match="num_steps=4 but step_modes holds 3 steps"):
        make_plan([A, A, B], num_steps=4)


# ------------------------------------------------------------------------------ validate
def test_validate_refuses_another_structure_naming_each_difference():
    plan = make_plan([A])
    other = dataclasses.replace(MODEL, num_heads=4, head_dim=128)
    with pytest.raises(PlanError, match=r"num_heads: 2 expected, 4 in this model; head_dim: 64 expected, 128.*Make a plan for this model"):
        plan.validate(other)
    with pytest.raises(PlanError, match=r"family: 'WanTransformer3DModel' expected, 'CogVideoXTransformer3DModel'.*text_position"):
        plan.validate(dataclasses.replace(MODEL, family="CogVideoXTransformer3DModel", text_position="before"))
    plan.validate(MODEL)


def test_validate_warns_once_when_only_the_config_differs():
    plan = make_plan([A])
    config = {**CONFIG, "rope_max_seq_len": 128, "new_key": True}
    other = dataclasses.replace(MODEL, config_fingerprint=config_fingerprint(config), config=config)
    with pytest.warns(UserWarning, match=r"same structure but another config \(new_key: absent expected, True in this model; rope_max_seq_len: 64 expected, 128"):
        plan.validate(other)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan.validate(other)  # once per plan
        make_plan([A]).validate(MODEL)  # same config: silent


# ------------------------------------------------------------------------------ run time
def test_begin_forward_gives_a_layout_per_sparse_layer_and_none_for_dense_ones():
    plan = make_plan([A, B])
    prepared = plan.begin_forward(forward_context(MODEL, 0, 2))
    assert prepared[1] is None  # all Full: dense through diffusers
    for layer in (0, 2):
        expected = head_layout(A[layer], LAYOUT, block_size=BLOCK).to_dense()
        assert torch.equal(prepared[layer].to_dense(), expected)
        assert prepared[layer].shape == (1, 2, 6, 6)
    assert not prepared[0].to_dense()[0, 1].any(), "a Skip head has no blocks"
    assert plan.begin_forward(forward_context(MODEL, 0, 2)) is prepared  # cached per step range
    later = plan.begin_forward(forward_context(MODEL, 1, 2))
    assert torch.equal(later[2].to_dense(), head_layout(B[2], LAYOUT, block_size=BLOCK).to_dense())
    # One ModeBank (one copy of each pattern) serves every layer and step range of a layout.
    assert len(plan._banks) == 1
    assert prepared[0].kv_indices.data_ptr() == later[2].kv_indices.data_ptr()


def test_layers_with_the_same_modes_share_one_layout():
    plan = make_plan([(A[0], A[1], A[0])])
    prepared = plan.begin_forward(forward_context(MODEL, 0, 1))
    assert prepared[0] is prepared[2]


def test_unknown_step_count_assumes_the_searched_one_and_warns_once():
    plan = make_plan([A, B])
    with pytest.warns(UserWarning, match="assuming 2, the number it was searched at"):
        first = plan.begin_forward(forward_context(MODEL, 0, None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan.begin_forward(forward_context(MODEL, 1, None))[2] is not first[2]
        assert plan.begin_forward(forward_context(MODEL, 7, None)) is plan.begin_forward(forward_context(MODEL, 1, 2))


def test_another_resolution_gets_its_own_layouts():
    plan = make_plan([A])
    other = TokenLayout(2, 4, 4)
    prepared = plan.begin_forward(forward_context(MODEL, 0, 1, other))
    assert torch.equal(prepared[2].to_dense(), head_layout(A[2], other, block_size=BLOCK).to_dense())
    stripe_beyond_the_video = make_plan([((VerticalStripe((5,), 1), Full()), A[1], A[2])], layout=TokenLayout(8, 4, 4))
    with pytest.raises(ValueError, match=r"cannot run at 2x4x4 video tokens.*outside a 2-frame video"):
        stripe_beyond_the_video.begin_forward(forward_context(MODEL, 0, 1, other))


# ------------------------------------------------------------------------------ the core alone
WITHOUT_DIFFUSERS = """
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("diffusers", "pipelines"):
            raise ImportError(f"{name} is made unimportable by this test")

sys.meta_path.insert(0, Refuse())
import torch
from sparse_vdit import Plan, load_plan
from sparse_vdit.protocol import ForwardContext
plan = load_plan(sys.argv[1])
forward = ForwardContext(0, 0, 0, None, 1.0, 1, plan.token_layout, None, None, 1, torch.device("cpu"), torch.float32, plan.model)
print([None if layout is None else list(layout.shape) for layout in plan.begin_forward(forward)])
"""


def test_plans_load_and_run_without_diffusers(tmp_path):
    path = save_plan(make_plan([A]), tmp_path / "plan.json")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", WITHOUT_DIFFUSERS, str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[[1, 2, 6, 6], None, [1, 2, 6, 6]]"
