"""The proxy model: sizes, the smoke training run, the checkpoint and loader, the missing-checkpoint error."""

import csv
import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from pipelines.proxy import (
    PROXY_CHECKPOINT,
    PROXY_CONFIG,
    PROXY_GENERATION,
    PROXY_VOCAB,
    SMOKE_CONFIG,
    ProxyConfig,
    ProxyCheckpointMissing,
    load_proxy_pipeline,
    proxy_parameter_count,
    read_proxy_metadata,
)
from pipelines.proxy.model import MAX_CHECKPOINT_BYTES
from pipelines.proxy.model import MAX_CHECKPOINT_BYTES, PROXY_SMALL, join_checkpoint, split_checkpoint
from pipelines.proxy.data import OBJECT_SIZE
from pipelines.proxy.train import (
    SMOKE_OPTIONS, TRAIN_SIZES, TrainSize, main, parse_args, stretch_lr, train, training_flops_per_video,
)


def test_proxy_size_and_geometry():
    n = proxy_parameter_count()
    assert 10e6 < n < 12e6
    assert 2 * n <= MAX_CHECKPOINT_BYTES - 0.5e6  # bfloat16 transformer; the text encoder adds < 0.5 MB
    assert PROXY_CONFIG.num_layers * PROXY_CONFIG.num_heads == 40  # heads for the search to choose among
    assert PROXY_CONFIG.tokens == (21, 32, 48)  # 32,256 tokens per forward at the evaluation size
    assert PROXY_CONFIG.latent_channels == 48
    assert (PROXY_GENERATION["num_frames"], PROXY_GENERATION["height"], PROXY_GENERATION["width"]) == (81, 128, 192)
    small = (PROXY_SMALL["num_frames"], PROXY_SMALL["height"], PROXY_SMALL["width"])
    assert PROXY_CONFIG.tokens_at(*small) == (5, 16, 24)  # 1,920 tokens: the CPU size
    trained = {s.video for s in TRAIN_SIZES}
    assert small in trained and (PROXY_GENERATION["num_frames"], PROXY_GENERATION["height"], PROXY_GENERATION["width"]) in trained
    t, h, w = PROXY_CONFIG.tokens
    assert t * h * w >= 16_000  # where the GPU kernels pay (issue 16)
    assert 3.2e13 < training_flops_per_video() < 3.5e13  # attention-dominated at 32k tokens (95%)
    assert training_flops_per_video(PROXY_CONFIG, small) < training_flops_per_video() / 20


def test_config_guards_the_output_width():
    """A token's outputs (channels x patch) must fit the width, else the noise outside proj_out's
    range is never removed: Wan's VAE-like 4x spatial factor (192 channels) does not fit 256."""
    with pytest.raises(ValueError, match="exceeds the transformer width 256"):
        ProxyConfig(scale_factor_spatial=4, height=128, width=192)
    assert ProxyConfig(scale_factor_spatial=4, height=128, width=192, num_heads=12).latent_channels == 192
    with pytest.raises(ValueError, match="multiples of 16"):
        ProxyConfig(height=72)


def test_missing_checkpoint_says_how_to_train(tmp_path):
    with pytest.raises(ProxyCheckpointMissing, match="python -m pipelines.proxy.train") as info:
        load_proxy_pipeline(path=tmp_path / "absent.safetensors")
    assert "build_proxy_pipeline" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    if not PROXY_CHECKPOINT.exists():
        with pytest.raises(ProxyCheckpointMissing, match=str(PROXY_CHECKPOINT)):
            load_proxy_pipeline()
    bogus = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(bogus))
    with pytest.raises(ValueError, match="not a proxy checkpoint"):
        load_proxy_pipeline(path=bogus)


def test_parse_args():
    smoke = parse_args(["--smoke", "--out", "x"])
    assert smoke.config == SMOKE_CONFIG and smoke.max_steps == SMOKE_OPTIONS["max_steps"] and smoke.out == "x"
    full = parse_args(["--minutes", "8.5", "--sizes", "17x64x96:48:0.5,81x128x192:4", "--no-samples", "--resume", "c.safetensors"])
    assert full.config == PROXY_CONFIG and full.minutes == 8.5 and not full.samples and full.resume == "c.safetensors"
    assert full.sizes == (TrainSize(17, 64, 96, 48, 0.5), TrainSize(81, 128, 192, 4, 1.0))
    assert full.max_steps is None and full.ema == 0.999 and parse_args([]).sizes == TRAIN_SIZES
    for bad in ("17x64:4", "17x64x96", "17x64x96:0", "17x64x96:4:-1"):
        with pytest.raises(SystemExit):
            parse_args(["--sizes", bad])
    with pytest.raises(ValueError, match="--install"):
        train(parse_args(["--smoke", "--install"]))


def test_cooldown_and_object_size_options(tmp_path):
    constant = parse_args([])
    assert constant.cooldown_steps is None
    assert [stretch_lr(constant, s, 50) for s in (0, 49, 500)] == [constant.lr / 50, constant.lr, constant.lr]
    cool = parse_args(["--cooldown-steps", "1000"])
    lrs = [stretch_lr(cool, s, 50) for s in (0, 49, 500, 999, 1000)]
    assert lrs[0] == pytest.approx(cool.lr / 50) and lrs[1] == pytest.approx(cool.lr * (1 - 49 / 1000))
    assert lrs[2] == pytest.approx(cool.lr / 2) and 0 < lrs[3] < cool.lr / 500 and lrs[4] == 0.0
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # falls after the warm-up
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit):
            parse_args(["--cooldown-steps", bad])
    assert parse_args([]).object_size == OBJECT_SIZE and parse_args(["--object-size", "0.18,0.26"]).object_size == (0.18, 0.26)
    for bad in ("0.2", "0.3,0.2", "0.1,0.9", "a,b"):
        with pytest.raises(SystemExit):
            parse_args(["--object-size", bad])
    assert main(["--smoke", "--cooldown-steps", "3", "--object-size", "0.2,0.25", "--kind-weights", "moves:1",
                 "--no-samples", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["steps"] == 3  # stopped at the cooldown's last step, before the smoke's 40
    assert record["options"]["cooldown_steps"] == 3 and tuple(record["options"]["object_size"]) == (0.2, 0.25)
    assert record["options"]["kind_weights"] == [1.0, 0.0, 0.0, 0.0]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("proxy_smoke")
    assert main(["--smoke", "--out", str(out)]) == 0
    return out


def test_smoke_training_learns_and_writes_everything(smoke_run):
    record = json.loads((smoke_run / "training.json").read_text())
    steps = SMOKE_OPTIONS["max_steps"]
    assert record["steps"] == steps and record["seed"] == 0
    assert record["validation_loss"] < 0.85 * record["initial_validation_loss"]
    with open(smoke_run / "loss.csv") as f:
        curve = list(csv.DictReader(f))
    assert len(curve) == steps // SMOKE_OPTIONS["log_every"]
    val = [float(row["val_loss"]) for row in curve]
    assert val[-1] < val[0] and sum(val[-3:]) < sum(val[:3])
    assert {f"val_{s.label()}" for s in SMOKE_OPTIONS["sizes"]} <= set(curve[0])  # a validation loss per size
    assert all(float(row["val_motion_region"]) > 0 for row in curve) and "val_motion_direction" in curve[0]
    motion = record["motion_validation"]
    assert motion["size"] == "5x16x48" and set(motion["start"]) == set(motion["end"]) == {"region", "direction"}
    (stretch,) = record["stretches"]
    assert stretch["stretch"] == 1 and stretch["steps"] == steps and stretch["resumed_from"] is None
    assert sum(stretch["steps_per_size"].values()) == steps and all(stretch["steps_per_size"].values())  # both sizes
    assert stretch["videos"] == record["videos_seen"] == 4 * steps
    checkpoint = smoke_run / "proxy.safetensors"
    assert checkpoint.stat().st_size == record["checkpoint_bytes"] < MAX_CHECKPOINT_BYTES
    meta = read_proxy_metadata(checkpoint)
    assert meta["proxy_config"] == SMOKE_CONFIG.to_dict() and meta["training"]["steps"] == record["steps"]
    assert meta["vocab"] == list(PROXY_VOCAB)
    assert len(meta["latents_mean"]) == 48 and 0.2 < meta["latents_std"][0] < 0.7
    prompts = SMOKE_OPTIONS["sample_prompts"]
    assert len(list((smoke_run / "samples").glob("*.mp4"))) == len(prompts)
    assert (smoke_run / "samples_9x16x32.png").exists() and (smoke_run / "data.png").exists()
    assert [r["prompt"] for r in json.loads((smoke_run / "samples" / "samples.json").read_text())] == list(prompts)
    assert record["sample_summary"]["9x16x32"]["colour"][1] == len(prompts)


def test_resumed_stretch_continues_the_run(smoke_run, tmp_path):
    """A second stretch starts from the first's checkpoint: same latent statistics, new videos,
    both stretches recorded, the step count carried on; another architecture is refused."""
    first = smoke_run / "proxy.safetensors"
    result = train(replace(parse_args(["--smoke", "--resume", str(first), "--no-samples"]), max_steps=5,
                           out=str(tmp_path / "second"), parts=str(tmp_path / "parts")))
    record = result.info
    assert [s["stretch"] for s in record["stretches"]] == [1, 2] and record["stretches"][1]["resumed_from"] == str(first)
    assert record["steps"] == SMOKE_OPTIONS["max_steps"] + 5
    assert record["stretches"][1]["data_seed"] != record["stretches"][0]["data_seed"]
    before, after = read_proxy_metadata(first), read_proxy_metadata(result.checkpoint)
    assert after["latents_mean"] == before["latents_mean"] and after["latents_std"] == before["latents_std"]
    # It started from the first stretch's weights (stored in bfloat16): its starting validation loss
    # is the first stretch's final one, not the random start's.
    first_stretch, second_stretch = record["stretches"]
    assert second_stretch["initial_validation_loss"] == pytest.approx(first_stretch["validation_loss"], rel=0.03)
    assert all(second_stretch["initial_validation_loss"][k] < 0.9 * v for k, v in first_stretch["initial_validation_loss"].items())
    first_start = first_stretch["initial_validation_loss"]  # the record's start is the run's, not the stretch's
    assert record["initial_validation_loss"] == pytest.approx(sum(first_start.values()) / len(first_start))
    joined = join_checkpoint(tmp_path / "parts", tmp_path / "joined.safetensors")
    assert joined.read_bytes() == result.checkpoint.read_bytes()
    other = replace(SMOKE_CONFIG, num_layers=1)
    with pytest.raises(ValueError, match="architecture"):
        train(replace(parse_args(["--smoke", "--resume", str(first)]), proxy_config=other, out=str(tmp_path / "x")))


def test_checkpoint_parts_round_trip(smoke_run, tmp_path):
    checkpoint = smoke_run / "proxy.safetensors"
    parts = split_checkpoint(checkpoint, tmp_path, part_bytes=1 << 20)
    assert len(parts) > 1 and all(p.stat().st_size <= 1 << 20 for p in parts)
    assert join_checkpoint(tmp_path, tmp_path / "whole.safetensors").read_bytes() == checkpoint.read_bytes()
    split_checkpoint(checkpoint, tmp_path, part_bytes=4 << 20)  # fewer parts: the stale ones go
    assert not (tmp_path / f"proxy.safetensors.part{len(parts) - 1}").exists()
    parts = split_checkpoint(checkpoint, tmp_path, part_bytes=1 << 20)
    parts[-1].unlink()  # a part lost on the way
    with pytest.raises(ValueError, match="part missing"):
        join_checkpoint(tmp_path, tmp_path / "broken.safetensors")
    assert not (tmp_path / "broken.safetensors").exists()


def test_checkpoint_loads_and_generates(smoke_run):
    checkpoint = smoke_run / "proxy.safetensors"
    pipe = load_proxy_pipeline(path=checkpoint)
    assert pipe.transformer.config.num_layers == SMOKE_CONFIG.num_layers and pipe.proxy_training["steps"] == 40
    with safe_open(str(checkpoint), framework="pt") as f:
        stored = f.get_tensor("transformer.blocks.0.attn1.to_q.weight")
        assert stored.dtype == torch.bfloat16
        assert torch.equal(pipe.transformer.blocks[0].attn1.to_q.weight, stored.float())
        assert torch.equal(pipe.text_encoder.shared.weight, f.get_tensor("text_encoder.shared.weight"))
    kwargs = dict(height=SMOKE_CONFIG.height, width=SMOKE_CONFIG.width, num_frames=SMOKE_CONFIG.frames,
                  num_inference_steps=2, max_sequence_length=16, output_type="pt")
    video = pipe("a red circle moves right", generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert video.shape == (1, 9, 3, SMOKE_CONFIG.height, SMOKE_CONFIG.width) and torch.isfinite(video).all()
    again = load_proxy_pipeline(path=checkpoint)("a red circle moves right", generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert torch.equal(video, again)  # loading depends on no RNG

    low = load_proxy_pipeline("cpu", torch.bfloat16, path=checkpoint)
    assert low.transformer.dtype == torch.bfloat16 and low.transformer.blocks[0].scale_shift_table.dtype == torch.float32
    video16 = low("a red circle moves right", generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert video16.shape == video.shape and (video16.float() - video).abs().mean() < 0.05


def test_training_is_deterministic(tmp_path):
    opts = replace(parse_args(["--smoke"]), max_steps=3, samples=False, log_every=1)
    a = train(replace(opts, out=str(tmp_path / "a")))
    b = train(replace(opts, out=str(tmp_path / "b")))
    assert [row["loss"] for row in a.curve] == [row["loss"] for row in b.curve]
    with safe_open(str(a.checkpoint), framework="pt") as fa, safe_open(str(b.checkpoint), framework="pt") as fb:
        assert all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def test_training_objective_matches_the_pipeline():
    """A transformer predicting the training target exactly (an oracle that knows x0) makes
    WanPipeline reproduce x0's video: interpolation, target sign, timestep scale and latent
    normalisation of the training agree with the scheduler's Euler steps and the pipeline's decode."""
    from pipelines.proxy import build_proxy_pipeline, procedural_videos
    from pipelines.proxy.train import TIMESTEP_SCALE, flow_matching_example, latent_statistics

    c = SMOKE_CONFIG
    video = procedural_videos(1, frames=c.frames, height=c.height, width=c.width, seed=0, labels=["a red circle moves right"]).video
    mean, std = latent_statistics(c, 0, 2, "cpu")
    pipe = build_proxy_pipeline(c, latents_mean=mean, latents_std=std)
    pipe.set_progress_bar_config(disable=True)
    x0 = pipe.vae.normalize(pipe.vae.encode(video))
    seen = []

    def oracle(hidden_states, timestep, encoder_hidden_states, return_dict=False, **kwargs):
        sigma = timestep.float() / TIMESTEP_SCALE
        noise = (hidden_states - (1 - sigma) * x0) / sigma  # the noise that puts x_t on x0's line
        x_t, t, target = flow_matching_example(x0, noise, sigma)
        torch.testing.assert_close(x_t, hidden_states)
        torch.testing.assert_close(t, timestep.float())
        seen.append(float(sigma))
        return (target,)

    pipe.transformer.forward = oracle
    frames = pipe("a red circle moves right", height=c.height, width=c.width, num_frames=c.frames, num_inference_steps=4,
                  guidance_scale=1.0, max_sequence_length=16, output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    assert len(seen) == 4 and seen[0] == 1.0
    torch.testing.assert_close(frames, (video / 2 + 0.5).permute(0, 2, 1, 3, 4), atol=1e-4, rtol=0)


def test_the_pipeline_pads_prompts_to_the_trained_length_by_default():
    """``pipe(prompt)`` as a diffusers user calls it encodes the prompt at the proxy's trained text
    length (16), not WanPipeline's 512 (zero tokens the proxy never saw); another length warns."""
    from pipelines.proxy import build_proxy_pipeline

    c = SMOKE_CONFIG
    pipe = build_proxy_pipeline(c)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, __import__("diffusers").WanPipeline)
    lengths = []

    def record(hidden_states, timestep, encoder_hidden_states, return_dict=False, **kwargs):
        lengths.append(encoder_hidden_states.shape[1])
        return (torch.zeros_like(hidden_states),)

    pipe.transformer.forward = record
    kwargs = dict(height=c.height, width=c.width, num_frames=c.frames, num_inference_steps=1, guidance_scale=1.0,
                  output_type="latent")
    pipe("a red circle moves right", **kwargs)
    assert lengths == [c.max_sequence_length]
    with pytest.warns(UserWarning, match="trained with prompts padded to max_sequence_length=16"):
        pipe("a red circle moves right", max_sequence_length=64, **kwargs)
    assert lengths[-1] == 64


def test_the_pipeline_shifts_its_schedule_by_the_video_size():
    """The flow shift is config.shift up to the CPU size's tokens and grows as the square root of
    the token count beyond; the sigmas the transformer sees follow it; ``flow_shift`` overrides."""
    from pipelines.proxy import build_proxy_pipeline
    from pipelines.proxy.model import proxy_flow_shift

    assert proxy_flow_shift(PROXY_CONFIG, 17, 64, 96) == PROXY_CONFIG.shift
    assert proxy_flow_shift(PROXY_CONFIG, 81, 128, 192) == pytest.approx(PROXY_CONFIG.shift * (32256 / 1920) ** 0.5)
    c = SMOKE_CONFIG
    pipe = build_proxy_pipeline(c)
    pipe.set_progress_bar_config(disable=True)
    timesteps = []

    def record(hidden_states, timestep, encoder_hidden_states, return_dict=False, **kwargs):
        timesteps.append(float(timestep.flatten()[0]))
        return (torch.zeros_like(hidden_states),)

    pipe.transformer.forward = record

    def second_sigma(**size):
        timesteps.clear()
        pipe("a red circle moves right", num_inference_steps=4, guidance_scale=1.0, output_type="latent", **size)
        return timesteps[1] / 1000.0

    def expected(shift):  # the second of 4 steps of a fresh scheduler built with that shift
        from diffusers import FlowMatchEulerDiscreteScheduler

        fresh = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=shift)
        fresh.set_timesteps(4)
        return float(fresh.timesteps[1]) / 1000.0

    small = dict(height=64, width=96, num_frames=17)
    large = dict(height=128, width=192, num_frames=33)
    assert second_sigma(**small) == pytest.approx(expected(proxy_flow_shift(c, **small)), abs=1e-3)
    assert pipe.scheduler.shift == proxy_flow_shift(c, **small)
    assert second_sigma(**large) == pytest.approx(expected(proxy_flow_shift(c, **large)), abs=1e-3)
    assert proxy_flow_shift(c, **large) > proxy_flow_shift(c, **small)
    assert second_sigma(flow_shift=2.0, **large) == pytest.approx(expected(2.0), abs=1e-3)


def test_size_shift_draws_each_sizes_sigmas_with_its_sampler_shift():
    from pipelines.proxy.model import proxy_flow_shift
    from pipelines.proxy.train import training_shift

    small, large = TRAIN_SIZES[0], TRAIN_SIZES[-1]
    plain, shifted = parse_args([]), parse_args(["--size-shift"])
    assert not plain.size_shift and shifted.size_shift
    assert training_shift(plain, large) == training_shift(plain, small) == PROXY_CONFIG.shift
    assert training_shift(shifted, small) == PROXY_CONFIG.shift
    assert training_shift(shifted, large) == proxy_flow_shift(PROXY_CONFIG, *large.video) > PROXY_CONFIG.shift


def test_training_sigmas_have_the_schedules_density():
    """shifted_sigma of an even grid is the scheduler's sigma schedule: uniform u in training."""
    from pipelines.proxy import build_proxy_pipeline
    from pipelines.proxy.train import shifted_sigma

    scheduler = build_proxy_pipeline(SMOKE_CONFIG).scheduler
    scheduler.set_timesteps(20)
    sigma = scheduler.sigmas[:-1].double()
    shift = SMOKE_CONFIG.shift
    u = sigma / (shift - (shift - 1) * sigma)
    torch.testing.assert_close(shifted_sigma(u, shift), sigma)
    torch.testing.assert_close(u.diff(), torch.full((19,), float(u.diff().mean()), dtype=torch.float64), atol=1e-6, rtol=0)


def test_the_trained_checkpoint_ships_and_loads():
    """The package carries the trained proxy (issue: at most 25 MB), and it loads as a trained pipeline."""
    from pipelines.loading import weights_note

    assert PROXY_CHECKPOINT.exists(), f"{PROXY_CHECKPOINT} is missing: python -m pipelines.proxy.train --install"
    assert PROXY_CHECKPOINT.stat().st_size <= 25e6
    pipe = load_proxy_pipeline("cpu")
    record = pipe.proxy_training
    assert record["steps"] > 1000 and record["weights"] == "ema"
    first = record["stretches"][0]["initial_validation_loss"]  # per size, at the run's start
    assert record["initial_validation_loss"] == pytest.approx(sum(first.values()) / len(first), rel=1e-4)
    assert record["validation_loss"] < record["initial_validation_loss"] / 5  # it learned
    assert weights_note(pipe) is None


def test_default_prompts_are_known_to_the_shipped_checkpoint():
    """The demo's and eval's prompts are training captions whose every word the shipped checkpoint's
    tokenizer knows (no <unk>), and a plan is never searched on an evaluated prompt."""
    from pipelines.loading import PROXY_CPU_DEFAULTS, PROXY_DEFAULTS
    from pipelines.proxy import PROXY_CAPTIONS

    vocab = set(read_proxy_metadata()["vocab"])
    for defaults in (PROXY_CPU_DEFAULTS, PROXY_DEFAULTS):
        for prompt in defaults.prompts + defaults.search_prompts:
            assert prompt in PROXY_CAPTIONS and set(prompt.split()) <= vocab, prompt
        assert not set(defaults.prompts) & set(defaults.search_prompts)


@pytest.mark.distributed
def test_data_parallel_stretch_under_torchrun(tmp_path):
    """torchrun with two CPU processes (gloo): both ranks train on their own videos, stop at the same
    step, and rank 0 alone writes one checkpoint whose record counts both GPUs' videos."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
         "-m", "pipelines.proxy.train", "--smoke", "--max-steps", "4", "--log-every", "2", "--no-samples", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "training.json").read_text())
    (stretch,) = record["stretches"]
    assert stretch["gpus"] == 2 and stretch["steps"] == 4 and record["gpus"] == 2
    assert stretch["videos"] == 2 * 4 * 4  # two ranks x four steps x batch 4 (both smoke sizes batch 4)
    assert read_proxy_metadata(out / "proxy.safetensors")["training"]["steps"] == 4
    assert done.stdout.count("trained 4 steps") == 1  # rank 0 reports


def test_object_weight_counts_the_objects_latent_positions_more():
    """--object-weight: a uniform error gives the plain MSE; an error only where the object is
    counts (1 + W) / mean weight times more; the mask reaches exactly the latent positions (and
    channels) that hold the object's pixels."""
    from pipelines.proxy import SpaceToDepthVideoVAE, procedural_videos
    from pipelines.proxy.train import object_weighted_mse

    vae = SpaceToDepthVideoVAE()
    batch = procedural_videos(6, frames=9, height=16, width=24, generator=torch.Generator().manual_seed(3), device="cpu")
    mask = (batch.object_mask > 0.5).float()
    assert mask.sum() > 0, "the batch should hold an object"
    target = vae.encode(batch.video)
    assert parse_args(["--object-weight", "4"]).object_weight == 4.0 and parse_args([]).object_weight == 0.0
    with pytest.raises(SystemExit):
        parse_args(["--object-weight", "-1"])
    uniform = target + 0.5
    for w in (0.0, 4.0):
        assert object_weighted_mse(uniform, target, vae, mask, w) == pytest.approx(0.25, rel=1e-5)
    # An error of 1 on the pixels the object covers, in the latent: the same space-to-depth.
    on_object = target + vae.encode(mask[:, None].expand(-1, 3, -1, -1, -1))
    covered = vae.encode(mask[:, None].expand(-1, 3, -1, -1, -1)).mean()
    plain = object_weighted_mse(on_object, target, vae, mask, 0.0)
    assert plain == pytest.approx(float(covered), rel=1e-5)
    weighted = object_weighted_mse(on_object, target, vae, mask, 4.0)
    assert weighted == pytest.approx(5 * float(covered) / (1 + 4 * float(covered)), rel=1e-5)
    # Off the object, the error counts less than in the plain MSE.
    off_object = target + 1 - vae.encode(mask[:, None].expand(-1, 3, -1, -1, -1))
    assert object_weighted_mse(off_object, target, vae, mask, 4.0) < object_weighted_mse(off_object, target, vae, mask, 0.0)


def test_motion_weight_counts_where_the_object_arrives_and_leaves():
    """--motion-weight: nothing changes for an object that stays put; for a moving one, an error on
    the pixels whose coverage changed from the previous frame counts (1 + W) / mean weight times
    more; a uniform error still gives the plain MSE."""
    from pipelines.proxy import PROXY_CAPTIONS, SpaceToDepthVideoVAE, procedural_videos
    from pipelines.proxy.train import object_weighted_mse

    vae = SpaceToDepthVideoVAE()
    assert parse_args(["--motion-weight", "3"]).motion_weight == 3.0 and parse_args([]).motion_weight == 0.0
    with pytest.raises(SystemExit):
        parse_args(["--motion-weight", "-1"])
    labels = torch.tensor([i for i, c in enumerate(PROXY_CAPTIONS) if " moves " in c][:4])
    batch = procedural_videos(4, frames=9, height=16, width=24, generator=torch.Generator().manual_seed(5),
                              labels=labels, device="cpu")
    mask = (batch.object_mask > 0.5).float()
    target = vae.encode(batch.video)
    assert object_weighted_mse(target + 0.5, target, vae, mask, 0.0, 3.0) == pytest.approx(0.25, rel=1e-5)
    static = mask[:, :1].expand_as(mask).contiguous()
    on_static = target + vae.encode(static[:, None].expand(-1, 3, -1, -1, -1))
    assert object_weighted_mse(on_static, target, vae, static, 0.0, 3.0) == pytest.approx(
        float(object_weighted_mse(on_static, target, vae, static, 0.0, 0.0)), rel=1e-6)
    change = torch.cat([torch.zeros_like(mask[:, :1]), (mask[:, 1:] - mask[:, :-1]).abs()], dim=1)
    assert change.sum() > 0, "the objects should move"
    changed = vae.encode(change[:, None].expand(-1, 3, -1, -1, -1))
    on_change = target + changed.sqrt()  # squared error = the changed coverage
    plain = float(object_weighted_mse(on_change, target, vae, mask, 0.0, 0.0))
    weighted = float(object_weighted_mse(on_change, target, vae, mask, 0.0, 3.0))
    assert plain == pytest.approx(float(changed.mean()), rel=1e-5)
    assert weighted == pytest.approx(float((changed + 3 * changed.square()).sum() / (1 + 3 * changed).sum()), rel=1e-5)
    assert weighted > 2 * plain


def test_motion_validation_measures_what_the_direction_word_is_worth():
    """motion_batch: moving objects only, the opposite captions reversed, a region where they
    arrive and leave; motion_validation: 0 for a model that ignores the caption, > 0 for one that
    predicts well only with the true caption, the region's MSE either way."""
    from pipelines.proxy import PROXY_CAPTIONS, SpaceToDepthVideoVAE
    from pipelines.proxy.data import opposite_direction, scene_of
    from pipelines.proxy.train import motion_batch, motion_validation

    vae = SpaceToDepthVideoVAE()
    table = torch.randn(len(PROXY_CAPTIONS) + 1, 5, 8)  # one row per caption (and the empty prompt)
    batch = motion_batch(0, vae, table, "cpu", (9, 16, 24), videos=8)
    assert batch.region.shape == batch.x_t.shape and float(batch.region.sum()) > 0
    assert not torch.equal(batch.text, batch.opposite)
    index = {tuple(row.flatten().tolist()): i for i, row in enumerate(table)}
    for text, opposite in zip(batch.text, batch.opposite):
        caption = PROXY_CAPTIONS[index[tuple(text.flatten().tolist())]]
        assert scene_of(caption).kind == "moves"
        assert PROXY_CAPTIONS[index[tuple(opposite.flatten().tolist())]] == opposite_direction(caption)
    autocast = torch.autocast("cpu", enabled=False)

    def blind(hidden_states, timestep, encoder_hidden_states, return_dict):
        return (torch.zeros_like(hidden_states),)

    def reads_the_caption(hidden_states, timestep, encoder_hidden_states, return_dict):
        right = torch.equal(encoder_hidden_states, batch.text)
        return (batch.target * 0.5 if right else torch.zeros_like(hidden_states),)

    ignored = motion_validation(blind, batch, autocast)
    region = float((batch.target.square() * batch.region).sum() / batch.region.sum())
    assert ignored == {"region": pytest.approx(region, rel=1e-5), "direction": pytest.approx(0.0, abs=1e-9)}
    read = motion_validation(reads_the_caption, batch, autocast)
    assert read["region"] == pytest.approx(region / 4, rel=1e-5) and read["direction"] == pytest.approx(3.0, rel=1e-4)
