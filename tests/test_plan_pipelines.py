"""A plan runs through the processors of every family: each head's attention output equals the
float64 reference under its mode's blockified mask and the key padding (HunyuanVideo's padded
text), Skip heads are exact zeros, an all-Full layer goes through ``dispatch_attention_fn`` and
never the kernel, at the searched resolution and another one; a plan for another model is refused
at apply time (another config only warns); a 4-step generation uses a 2-step plan's mapped steps.

The kernel call is captured inside the processor (``kernels.attention.block_sparse_attention``,
which the processor reaches through ``call.block_sparse_attention``) with its q, k, v, layout and
kv_lens, and compared with ``kernels.reference.attention_ref``."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import kernels.attention as kernel_ops
import pipelines.processors as processors_mod
from helpers import assert_close_to_reference
from kernels.reference import attention_ref, key_padding_ref
from pipelines import apply_sparse_attention, attach_sparse_attention, model_info, tiny, token_layout_of
from sparse_vdit import Plan, PlanError, load_plan, save_plan
from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, Skip, VerticalStripe, head_layout
from sparse_vdit.protocol import config_fingerprint
from test_plan import cost_table

BLOCK = 16
SEARCHED = dict(frames=3, height=12, width=10)  # latent grid the plans are made at
ELSEWHERE = dict(frames=4, height=16, width=8)  # another resolution: other frames, rows and columns
TIMESTEPS = (900.0, 600.0)
# Two searched steps x three layers x two heads: every mode, a Skip head, an all-Full layer (1) and
# a layer mixing Full with a sparse mode.
STEP_MODES = [
    ((Diagonal(1), Skip()), (Full(), Full()), (MultiDiagonal(1, 1), VerticalStripe((0, -1), 2))),
    ((VerticalStripe((-1,), 1), Full()), (Full(), Full()), (Skip(), Diagonal(0))),
]
DENSE_LAYER = 1

FAMILIES = {
    "wan": (lambda: tiny.tiny_wan_transformer(num_layers=3), lambda m, t, grid: tiny.wan_inputs(**grid, timestep=t)),
    "hunyuan": (
        lambda: tiny.tiny_hunyuan_transformer(num_layers=2, num_single_layers=1),
        lambda m, t, grid: tiny.hunyuan_inputs(**grid, text_lens=(5, 3), timestep=t),
    ),
    "cogvideox": (lambda: tiny.tiny_cogvideox_transformer(num_layers=3), lambda m, t, grid: tiny.cogvideox_inputs(m, **grid, timestep=int(t))),
}


def plan_for(transformer, step_modes=STEP_MODES, grid=SEARCHED, **fields) -> Plan:
    """A plan for ``transformer`` made at latent ``grid`` (``fields`` override the defaults)."""
    used = {m for step in step_modes for layer in step for m in layer}
    layout = token_layout_of(transformer, grid["frames"], grid["height"], grid["width"])
    fields = {"model": model_info(transformer), "token_layout": layout, "block_size": BLOCK, "lam": 0.5,
              "epsilon": 1.0, "cost": cost_table(used), **fields}
    return Plan.from_step_modes(step_modes, **fields)


@dataclasses.dataclass
class Captured:
    """What happened inside the processors during one forward."""

    asked: list = dataclasses.field(default_factory=list)  # layer index of every plan call
    sparse: list = dataclasses.field(default_factory=list)  # (layer, q, k, v, layout, kv_lens, out) per kernel call
    dense: list = dataclasses.field(default_factory=list)  # layer of every dispatch_attention_fn call


@pytest.fixture
def captured(monkeypatch) -> Captured:
    record = Captured()
    plan_call, kernel, dispatch = Plan.__call__, kernel_ops.block_sparse_attention, processors_mod.dispatch_attention_fn

    def asked(self, call, q, k, v):
        record.asked.append(call.layer_index)
        return plan_call(self, call, q, k, v)

    def sparse(q, k, v, layout, **kwargs):
        out = kernel(q, k, v, layout, **kwargs)
        record.sparse.append((record.asked[-1], q, k, v, layout, kwargs.get("kv_lens"), out))
        return out

    def dense(*args, **kwargs):
        record.dense.append(record.asked[-1])
        return dispatch(*args, **kwargs)

    monkeypatch.setattr(Plan, "__call__", asked)
    monkeypatch.setattr(kernel_ops, "block_sparse_attention", sparse)
    monkeypatch.setattr(processors_mod, "dispatch_attention_fn", dense)
    return record


def check_heads_against_reference(record: Captured, modes, token_layout) -> None:
    """Every captured kernel call: head h equals attention_ref under its mode's block mask & key padding."""
    seq = token_layout.seq_len
    for layer, q, k, v, layout, kv_lens, out in record.sparse:
        assert layout.shape[1:] == (2, -(-seq // BLOCK), -(-seq // BLOCK))
        padding = key_padding_ref(kv_lens, seq)
        for h, mode in enumerate(modes[layer]):
            name = f"layer {layer} head {h} {mode}"
            if isinstance(mode, Skip):
                assert torch.equal(out[:, h], torch.zeros_like(out[:, h])), f"{name}: not all zeros"
                continue
            mask = head_layout([mode], token_layout, block_size=BLOCK).to_dense()[:, :1]  # [1, 1, S, S]
            if not isinstance(mode, Full):
                assert mask.any() and not mask.all(), f"{name}: the mask must be sparse, or the test proves nothing"
            if padding is not None:
                mask = mask & padding
            qh, kh, vh = (t[:, h : h + 1] for t in (q, k, v))
            ref64, _ = attention_ref(qh, kh, vh, mask)
            lowp, _ = attention_ref(qh, kh, vh, mask, upcast=False)
            assert_close_to_reference(out[:, h : h + 1], ref64, lowp, name=name)


def dense_calls(forward) -> int:
    """dispatch_attention_fn calls of one dense layer: a key-padded batch runs once per distinct key
    length (each sample on its real keys, unmasked), any other batch once."""
    return 1 if forward.kv_lens is None else len(set(forward.kv_lens.tolist()))


@pytest.mark.parametrize("grid", [SEARCHED, ELSEWHERE], ids=["searched-resolution", "other-resolution"])
@pytest.mark.parametrize("family", list(FAMILIES))
@torch.no_grad()
def test_each_head_matches_the_reference_of_its_mode(family, grid, captured):
    build, inputs = FAMILIES[family]
    model = build()
    plan = plan_for(model)
    with apply_sparse_attention(model, plan) as handle:
        tracker = handle.trackers[0]
        tracker.start_generation(list(TIMESTEPS))
        for step, t in enumerate(TIMESTEPS):
            captured.__init__()
            model(**inputs(model, t, grid))
            forward = tracker.current
            assert (forward.step_index, forward.num_steps) == (step, len(TIMESTEPS))
            layout = forward.token_layout
            assert (layout.frames, layout.rows, layout.cols) == (grid["frames"], grid["height"] // 2, grid["width"] // 2)
            assert captured.asked == [0, 1, 2]
            assert captured.dense == [DENSE_LAYER] * dense_calls(forward), \
                "the all-Full layer must run dense through dispatch_attention_fn"
            assert [c[0] for c in captured.sparse] == [0, 2], "the kernel must not run for the all-Full layer"
            if family == "hunyuan":
                assert captured.sparse[0][5].tolist() == [layout.video_len + 5, layout.video_len + 3]
            check_heads_against_reference(captured, STEP_MODES[step], layout)


@pytest.mark.filterwarnings("ignore:the pipeline did not say how many denoising steps")
@torch.no_grad()
def test_a_loaded_plan_and_the_diffusers_way_give_the_same_output(tmp_path):
    model = tiny.tiny_wan_transformer(num_layers=3)
    plan = plan_for(model)
    kwargs = tiny.wan_inputs(**SEARCHED, timestep=TIMESTEPS[0])
    with apply_sparse_attention(model, plan):
        ours = model(**kwargs)[0]
    loaded = load_plan(save_plan(plan, tmp_path / "plan.json"))
    attached = attach_sparse_attention(model, loaded)
    model.set_attn_processor(attached.processors())
    again = model(**kwargs)[0]
    attached.detach()
    assert torch.equal(again, ours)


# ------------------------------------------------------------------------------ another model
def test_a_plan_for_another_model_is_refused_at_apply_time():
    wan3 = tiny.tiny_wan_transformer(num_layers=3)
    plan = plan_for(wan3)
    with pytest.raises(PlanError, match=r"num_layers: 3 expected, 2 in this model.*Make a plan for this model"):
        apply_sparse_attention(tiny.tiny_wan_transformer(num_layers=2), plan)
    with pytest.raises(PlanError, match=r"family: 'WanTransformer3DModel' expected, 'CogVideoXTransformer3DModel'"):
        apply_sparse_attention(tiny.tiny_cogvideox_transformer(num_layers=3), plan)
    four_heads = dataclasses.replace(model_info(wan3), num_heads=4, config_fingerprint="")
    with pytest.raises(PlanError, match=r"num_heads: 4 expected, 2 in this model"):
        apply_sparse_attention(wan3, plan_for(wan3, [((Full(),) * 4, (Full(),) * 4, (Skip(),) * 4)], model=four_heads, model_config={}))
    handle = apply_sparse_attention(wan3, plan)  # nothing was left behind by the refusals
    handle.remove()


def test_same_structure_with_another_config_warns_naming_the_keys():
    model = tiny.tiny_wan_transformer(num_layers=3)
    info = model_info(model)
    config = {**info.config, "rope_max_seq_len": 128}
    plan = plan_for(model, model=dataclasses.replace(info, config_fingerprint=config_fingerprint(config)), model_config=config)
    with pytest.warns(UserWarning, match=r"same structure but another config \(rope_max_seq_len: 128 expected, 64 in this model\)"):
        handle = apply_sparse_attention(model, plan)
    handle.remove()


# ------------------------------------------------------------------------------ step mapping
def test_a_4_step_generation_uses_the_mapped_steps_of_a_2_step_plan(monkeypatch):
    pipe = tiny.tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    step_modes = [((Diagonal(1), Skip()), (Full(), Full())), ((Full(), Full()), (VerticalStripe((0,), 1), Skip()))]
    plan = plan_for(pipe.transformer, step_modes, grid=dict(frames=2, height=4, width=4))
    seen = []
    begin_forward = Plan.begin_forward

    def record(self, forward):
        prepared = begin_forward(self, forward)
        seen.append((forward.step_index, forward.num_steps, prepared))
        return prepared

    monkeypatch.setattr(Plan, "begin_forward", record)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the pipeline tells the step count: no warning
        with apply_sparse_attention(pipe, plan):
            pipe("a cat runs", negative_prompt="blurry", num_frames=5, height=32, width=32, num_inference_steps=4,
                 max_sequence_length=16, guidance_scale=5.0, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert [(step, n) for step, n, _ in seen] == [(s, 4) for s in range(4) for _ in range(2)]  # CFG: 2 forwards a step
    by_step = {step: prepared for step, _, prepared in seen}
    assert by_step[0] is by_step[1] and by_step[2] is by_step[3] and by_step[1] is not by_step[2]
    # Steps 0, 1 -> searched step 0 (layer 1 dense); steps 2, 3 -> searched step 1 (layer 0 dense).
    assert by_step[0][1] is None and by_step[2][0] is None
    layout = token_layout_of(pipe.transformer, 2, 4, 4)
    for step, searched, sparse_layer in ((0, 0, 0), (2, 1, 1)):
        expected = head_layout(step_modes[searched][sparse_layer], layout, block_size=BLOCK).to_dense()
        assert torch.equal(by_step[step][sparse_layer].to_dense(), expected)
