"""The step index is right under CFG as separate calls (Wan), batched CFG (CogVideoX), several
generations in a row, any num_inference_steps, with and without the pipeline's help."""

import pytest
import torch

from pipelines import AttentionMethod, apply_sparse_attention
from pipelines import tiny


class Recorder(AttentionMethod):
    """Records (generation, step, branch) of every forward and counts per-generation states."""

    def __init__(self):
        self.log = []
        self.states = 0

    def new_state(self):
        self.states += 1
        return {"id": self.states}

    def begin_forward(self, forward):
        self.log.append((forward.generation, forward.step_index, forward.branch))
        return forward.state


def expected(steps_per_generation, branches):
    return [(g, s, b) for g, n in enumerate(steps_per_generation) for s in range(n) for b in range(branches)]


@pytest.fixture(scope="module")
def wan_pipe():
    pipe = tiny.tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, steps, guidance=5.0):
    return pipe(
        "a cat runs", negative_prompt="blurry", num_frames=5, height=32, width=32, num_inference_steps=steps,
        max_sequence_length=16, guidance_scale=guidance, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).frames


@pytest.mark.parametrize("target", ["pipeline", "transformer"])
def test_wan_pipeline_cfg_two_generations(wan_pipe, target):
    rec = Recorder()
    handle = apply_sparse_attention(wan_pipe if target == "pipeline" else wan_pipe.transformer, rec)
    _generate(wan_pipe, 3)
    _generate(wan_pipe, 2)
    _generate(wan_pipe, 2, guidance=1.0)  # no CFG: one call per step
    handle.remove()
    assert rec.log == expected([3, 2], 2) + [(2, 0, 0), (2, 1, 0)]
    assert rec.states == 2 + 2 + 1  # one state per generation and branch


def test_counting_by_timestep_separate_cfg_calls():
    """No cache context, no scheduler: equal timesteps are branches, smaller is the next step,
    larger starts a generation; reset() forces one."""
    model = tiny.tiny_wan_transformer(num_layers=1)
    rec = Recorder()
    handle = apply_sparse_attention(model, rec)
    with torch.no_grad():
        for t in (900, 900, 600, 600, 300, 300, 950, 950, 10, 10):
            model(**tiny.wan_inputs(timestep=t))
        handle.reset()
        model(**tiny.wan_inputs(timestep=10))
    handle.remove()
    assert rec.log == expected([3, 2], 2) + [(2, 0, 0)]


def test_repeated_branch_name_at_one_timestep_is_a_new_generation():
    """One-step generations in a row: same timestep each time, told apart by the cache context."""
    model = tiny.tiny_wan_transformer(num_layers=1)
    rec = Recorder()
    handle = apply_sparse_attention(model, rec)
    with torch.no_grad():
        for _ in range(2):
            for name in ("cond", "uncond"):
                with model.cache_context(name):
                    model(**tiny.wan_inputs(timestep=999))
    handle.remove()
    assert rec.log == expected([1, 1], 2)


def test_cogvideox_batched_cfg():
    model = tiny.tiny_cogvideox_transformer()
    rec = Recorder()
    handle = apply_sparse_attention(model, rec)
    with torch.no_grad():
        for t in (999, 666, 333, 999, 500):
            with model.cache_context("cond_uncond"):  # as CogVideoXPipeline: one forward, batch 2B
                model(**tiny.cogvideox_inputs(model, batch=2, timestep=t))
    handle.remove()
    assert rec.log == expected([3, 2], 1)


def test_state_is_per_generation_and_branch():
    model = tiny.tiny_wan_transformer(num_layers=1)
    rec = Recorder()
    handle = apply_sparse_attention(model, rec)
    seen = []
    with torch.no_grad():
        for t in (900, 900, 600, 600):
            model(**tiny.wan_inputs(timestep=t))
            seen.append(handle.trackers[0].current.prepared["id"])
    handle.remove()
    assert seen == [1, 2, 1, 2]


def test_schedule_lookup_without_cache_context(wan_pipe):
    """A pipeline that gives no step index (transformer called outside ``cache_context``): the
    wrapped ``scheduler.set_timesteps`` starts a generation and the step is the timestep's position
    in that schedule, so a skipped step is seen (counting by timestep order alone would say 1)."""
    rec = Recorder()
    seen = []
    rec.begin_forward = lambda forward: seen.append((forward.generation, forward.step_index, forward.num_steps))
    handle = apply_sparse_attention(wan_pipe, rec)
    try:
        for generation in range(2):
            wan_pipe.scheduler.set_timesteps(4)
            timesteps = [float(t) for t in wan_pipe.scheduler.timesteps]
            for step in (0, 2, 3):  # step 1 skipped
                inputs = tiny.wan_inputs(timestep=timesteps[step], seed=step)
                inputs["hidden_states"] = torch.randn(1, tiny.WAN_VAE_Z_DIM, 2, 8, 8)
                with torch.no_grad():
                    wan_pipe.transformer(**inputs)
    finally:
        handle.remove()
    assert seen == [(g, s, 4) for g in range(2) for s in (0, 2, 3)]
