"""AdaSpa through the diffusers processors: at sparsity 0 every step equals the stock model (Wan,
HunyuanVideo with prompts of different padded lengths, CogVideoX with batched CFG); state is per
generation and per CFG branch, with nothing leaking across either; a whole WanPipeline runs the
scaled default schedule.

Tests of bookkeeping (which selection lands in which state) run the ops' PyTorch path (the
``fallback`` fixture); the output tests run the Triton kernels (on the CPU interpreter here)."""

from __future__ import annotations

import copy

import pytest
import torch

from adaspa import AdaSpaConfig, AdaSpaState
from adaspa.schedule import CACHED_SEARCH, DENSE, FIRST_SEARCH, SPARSE
from helpers import assert_close_to_reference
from pipelines import apply_sparse_attention, tiny

BLOCK = 16
STEPS = 5  # dense, first search, sparse, cached search, sparse
TIMESTEPS = (900.0, 700.0, 500.0, 300.0, 100.0)


def config(sparsity: float) -> AdaSpaConfig:
    return AdaSpaConfig(sparsity=sparsity, block_size=BLOCK, warmup_steps=1, search_steps=(1, 3), schedule_steps=None)


def _cast(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value


def _at(kwargs: dict, timestep: float, dtype=torch.float32) -> dict:
    out = {k: _cast(v, dtype) for k, v in kwargs.items()}
    out["timestep"] = torch.full_like(kwargs["timestep"], timestep)
    return out


def run_steps(model, handle, branches: dict, steps=range(STEPS), *, forward=None) -> dict:
    """Drive the transformer as a pipeline does (``cache_context`` with the step index), one call
    per branch and step, through ``forward`` (default: the model; e.g. its compiled wrapper).
    Returns {branch name: (outputs by step, the branch's state)}."""
    forward = model if forward is None else forward
    seen = {name: ([], None) for name in branches}
    for i in steps:
        for name, kwargs in branches.items():
            with model.cache_context(name, step_index=i, num_inference_steps=STEPS):
                out = forward(**_at(kwargs, TIMESTEPS[i]))[0]
            seen[name] = (seen[name][0] + [out], handle.trackers[0].current.state)
    return seen


def selections(state: AdaSpaState) -> dict[int, torch.Tensor]:
    return {layer: state.selected_blocks(layer) for layer in sorted(state.selections)}


def assert_same_selections(a: AdaSpaState, b: AdaSpaState) -> None:
    sa, sb = selections(a), selections(b)
    assert sa.keys() == sb.keys() and sa, "both states must hold selections for the same layers"
    for layer in sa:
        assert torch.equal(sa[layer], sb[layer]), f"layer {layer}: the selections differ"


CASES = {
    "wan": (tiny.tiny_wan_transformer, lambda m: tiny.wan_inputs(frames=3, height=12, width=10)),
    "hunyuan-padded-prompts": (
        tiny.tiny_hunyuan_transformer,
        lambda m: tiny.hunyuan_inputs(frames=2, height=12, width=12, text_lens=(10, 3), text_len=12),
    ),
    "cogvideox-batched-cfg": (
        tiny.tiny_cogvideox_transformer,
        lambda m: tiny.cogvideox_inputs(m, frames=2, height=16, width=12, batch=2),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_sparsity_zero_equals_the_stock_model_at_every_step(name):
    """s = 0 keeps every block: the first search step (dense with LSE), sparse steps and the cached
    search step all give the stock output within the kernels' tolerance (float64 reference)."""
    make, inputs = CASES[name]
    model = make()
    model64 = copy.deepcopy(model).double()
    kwargs = inputs(model)
    stock = [model(**_at(kwargs, t))[0] for t in TIMESTEPS]
    ref64 = [model64(**_at(kwargs, t, torch.float64))[0] for t in TIMESTEPS]
    handle = apply_sparse_attention(model, config(0.0))
    phases = []
    try:
        outs, state = run_steps(model, handle, {"cond_uncond": kwargs})["cond_uncond"]
        phases = [config(0.0).schedule(STEPS).phase(i) for i in range(STEPS)]
    finally:
        handle.remove()
    assert phases == [DENSE, FIRST_SEARCH, SPARSE, CACHED_SEARCH, SPARSE]
    for i, out in enumerate(outs):
        assert_close_to_reference(out, ref64[i], stock[i], name=f"{name} step {i} ({phases[i]})")
    assert all(blocks.any(-1).any() for blocks in selections(state).values())


@torch.no_grad()
def test_hunyuan_padded_prompts_swap_with_their_samples(fallback):
    """Per-sample selections under key padding: swapping the two prompts (10 and 3 real tokens of
    12) swaps the outputs and the selections, and garbage in the padded text changes nothing."""
    model = tiny.tiny_hunyuan_transformer()
    kwargs = CASES["hunyuan-padded-prompts"][1](model)
    swapped = {k: v.flip(0) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    garbage = copy.deepcopy(kwargs)
    garbage["encoder_hidden_states"][1, 3:] = 1e3 * torch.randn(9, garbage["encoder_hidden_states"].shape[-1])
    results = {}
    for name, inputs in (("as given", kwargs), ("swapped", swapped), ("garbage", garbage)):
        with apply_sparse_attention(model, config(0.5)) as handle:
            results[name] = run_steps(model, handle, {"cond": inputs})["cond"]
    (outs, state), (outs_swapped, state_swapped) = results["as given"], results["swapped"]
    for out, other in zip(outs, outs_swapped):
        torch.testing.assert_close(other, out.flip(0), rtol=1e-5, atol=1e-5 * float(out.abs().max()))
    for layer, blocks in selections(state).items():
        assert torch.equal(selections(state_swapped)[layer], blocks.flip(0))
    for out, other in zip(outs, results["garbage"][0]):
        torch.testing.assert_close(other, out, rtol=1e-5, atol=1e-5 * float(out.abs().max()))


@torch.no_grad()
def test_no_state_leaks_between_generations(fallback):
    """Two generations in a row (the step index going back to 0 starts the second): the second gets
    a fresh state whose selections are those a first-ever generation on its inputs computes."""
    model = tiny.tiny_wan_transformer()
    first = tiny.wan_inputs(frames=3, height=12, width=10, seed=1)
    second = tiny.wan_inputs(frames=3, height=12, width=10, seed=2)
    with apply_sparse_attention(model, config(0.5)) as handle:
        _, state_first = run_steps(model, handle, {"cond": first})["cond"]
        outs, state_second = run_steps(model, handle, {"cond": second})["cond"]
        assert handle.trackers[0].current.generation == 1
    with apply_sparse_attention(model, config(0.5)) as handle:
        alone_outs, alone = run_steps(model, handle, {"cond": second})["cond"]
    assert state_second is not state_first
    assert_same_selections(state_second, alone)
    for out, want in zip(outs, alone_outs):
        assert torch.equal(out, want)
    assert any(not torch.equal(a, b) for a, b in zip(selections(state_first).values(), selections(state_second).values())), \
        "the two prompts should select differently (else this test shows nothing)"


@torch.no_grad()
def test_cfg_branches_keep_separate_selections(fallback):
    """Wan runs cond and uncond as separate calls of one step: each branch has its own state, and
    each equals the state of a generation that ran only that branch's inputs."""
    model = tiny.tiny_wan_transformer()
    cond = tiny.wan_inputs(frames=3, height=12, width=10, seed=3)
    uncond = dict(cond, encoder_hidden_states=torch.randn_like(cond["encoder_hidden_states"]))
    with apply_sparse_attention(model, config(0.5)) as handle:
        both = run_steps(model, handle, {"cond": cond, "uncond": uncond})
    assert both["cond"][1] is not both["uncond"][1]
    for name, inputs in (("cond", cond), ("uncond", uncond)):
        with apply_sparse_attention(model, config(0.5)) as handle:
            outs, alone = run_steps(model, handle, {name: inputs})[name]
        assert_same_selections(both[name][1], alone)
        assert all(torch.equal(a, b) for a, b in zip(both[name][0], outs))


@torch.no_grad()
def test_cogvideox_batched_cfg_selects_per_sample(fallback):
    """CogVideoX batches cond and uncond (B = 2) in one forward: sample b's selection is the one
    the sample gets on its own."""
    model = tiny.tiny_cogvideox_transformer()
    kwargs = CASES["cogvideox-batched-cfg"][1](model)
    with apply_sparse_attention(model, config(0.5)) as handle:
        _, batched = run_steps(model, handle, {"cond_uncond": kwargs})["cond_uncond"]
    for b in range(2):
        one = {k: v[b:b + 1] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        with apply_sparse_attention(model, config(0.5)) as handle:
            _, alone = run_steps(model, handle, {"cond_uncond": one})["cond_uncond"]
        for layer, blocks in selections(alone).items():
            assert torch.equal(selections(batched)[layer][b:b + 1], blocks)


class RecordingAdaSpa(AdaSpaConfig):
    """AdaSpaConfig that records (generation, step, branch, phase, state) of every forward."""

    def begin_forward(self, forward):
        plan = super().begin_forward(forward)
        LOG.append((forward.generation, forward.step_index, forward.branch, plan.phase, forward.state))
        return plan


LOG: list = []


@torch.no_grad()
def test_wan_pipeline_runs_the_scaled_default_schedule():
    """The default schedule (dense before 10, search at 10 and 30 of 50) scaled to 4 steps: dense,
    first search, cached search, sparse; two generations with CFG get four fresh states."""
    LOG.clear()
    pipe = tiny.tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with apply_sparse_attention(pipe, RecordingAdaSpa(block_size=BLOCK)):
        for seed in (0, 1):
            video = pipe(
                "a cat runs", negative_prompt="blurry", num_frames=5, height=64, width=64, num_inference_steps=4,
                max_sequence_length=16, guidance_scale=5.0, output_type="latent",
                generator=torch.Generator().manual_seed(seed),
            ).frames
            assert torch.isfinite(video).all()
    phases = [DENSE, FIRST_SEARCH, CACHED_SEARCH, SPARSE]
    assert [entry[:4] for entry in LOG] == [(g, s, b, phases[s]) for g in range(2) for s in range(4) for b in range(2)]
    states = {id(entry[4]): entry[4] for entry in LOG}
    assert len(states) == 4 and all(isinstance(s, AdaSpaState) for s in states.values())
    assert all(len(s.selections) == 2 and not s.lse for s in states.values()), "LSE dropped after the last search"


@torch.no_grad()
def test_a_generation_inside_another_keeps_the_outer_state(fallback):
    """One transformer, two interleaved generations (a second pipeline sharing the transformer, run
    from the first one's step callback): the outer generation resumes with its own AdaSpa state,
    so its outputs are those of the same generation run alone."""
    model = tiny.tiny_wan_transformer()
    outer = tiny.wan_inputs(frames=3, height=12, width=10, seed=1)
    inner = tiny.wan_inputs(frames=3, height=12, width=10, seed=2)
    with apply_sparse_attention(model, config(0.5)) as handle:
        alone, alone_state = run_steps(model, handle, {"cond": outer})["cond"]
    with apply_sparse_attention(model, config(0.5)) as handle:
        before, outer_state = run_steps(model, handle, {"cond": outer}, steps=range(2))["cond"]
        _, inner_state = run_steps(model, handle, {"cond": inner})["cond"]
        after, resumed_state = run_steps(model, handle, {"cond": outer}, steps=range(2, STEPS))["cond"]
        assert handle.trackers[0].current.generation == 0, "the outer generation resumes under its own index"
    assert inner_state is not outer_state and resumed_state is outer_state
    assert_same_selections(resumed_state, alone_state)
    for out, want in zip(before + after, alone):
        assert torch.equal(out, want)


@torch.no_grad()
def test_a_generation_given_up_and_resumed_says_it_continues_afresh(fallback):
    """Two generations one after the other inside another: the outer one is given up when the
    second starts (as after a generation stopped by an error); resuming it later warns."""
    model = tiny.tiny_wan_transformer()
    outer = tiny.wan_inputs(frames=3, height=12, width=10, seed=1)
    inner = tiny.wan_inputs(frames=3, height=12, width=10, seed=2)
    with apply_sparse_attention(model, config(0.5)) as handle:
        _, outer_state = run_steps(model, handle, {"cond": outer}, steps=range(2))["cond"]
        run_steps(model, handle, {"cond": inner})
        run_steps(model, handle, {"cond": inner})
        with pytest.warns(UserWarning, match=r"resumes at step 2 of 5 .* was dropped, so it continues afresh"):
            _, state = run_steps(model, handle, {"cond": outer}, steps=range(2, STEPS))["cond"]
    assert state is not outer_state
