"""The proxy's latent map is exact, and WanPipeline decodes through it with no change to diffusers."""

import pytest
import torch

from pipelines.proxy import SMOKE_CONFIG, SpaceToDepthVideoVAE, build_proxy_pipeline


def _video(frames=33, height=64, width=96, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spatial", [2, 4])
def test_round_trip_is_exact(dtype, spatial):
    vae = SpaceToDepthVideoVAE(scale_factor_spatial=spatial)
    video = _video(height=32 * spatial, width=48 * spatial).to(dtype)
    z = vae.encode(video)
    assert z.shape == (2, 3 * 4 * spatial**2, 9, 32, 48) and z.dtype == dtype
    assert torch.equal(vae.decode(z, return_dict=False)[0], video)  # PSNR infinite
    assert torch.equal(vae.decode(z).sample, video)
    assert torch.equal(vae.denormalize(vae.normalize(z)), z)  # mean 0, std 1: exact too


def test_channel_layout():
    """Channel (colour, frame in group, row in block, col in block); latent frame 0 is frame 0 four times."""
    vae = SpaceToDepthVideoVAE()
    video = _video(frames=9, height=8, width=12, batch=1)
    z = vae.encode(video)
    assert z.shape == (1, 48, 3, 4, 6)
    for c, dt, sy, sx, j, y, x in [(0, 0, 0, 0, 0, 0, 0), (1, 3, 1, 0, 0, 3, 5), (2, 1, 1, 1, 1, 2, 4), (0, 3, 0, 1, 2, 1, 0)]:
        frame = 0 if j == 0 else 1 + 4 * (j - 1) + dt
        channel = c * 16 + dt * 4 + sy * 2 + sx
        assert z[0, channel, j, y, x] == video[0, c, frame, 2 * y + sy, 2 * x + sx]


def test_decode_averages_the_first_group_and_clamps():
    vae = SpaceToDepthVideoVAE()
    z = torch.zeros(1, 48, 2, 1, 1)
    z[0, :16, 0] = torch.arange(4.0).repeat_interleave(4)[:, None, None] / 10  # colour 0: copies 0, .1, .2, .3
    z[0, 16:32, 1] = 5.0  # colour 1 of the later frames: clamped
    video = vae.decode(z, return_dict=False)[0]
    assert video.shape == (1, 3, 5, 2, 2)
    torch.testing.assert_close(video[0, 0, 0], torch.full((2, 2), 0.15))
    assert torch.equal(video[0, 1, 1:], torch.ones(4, 2, 2))


def test_config_is_checked():
    vae = SpaceToDepthVideoVAE()
    assert vae.config.z_dim == 48 and len(vae.config.latents_mean) == 48
    assert vae.dtype == torch.float32 and vae.device.type == "cpu"
    assert SpaceToDepthVideoVAE.from_config(vae.config).config.z_dim == 48
    with pytest.raises(ValueError, match="z_dim 16"):
        SpaceToDepthVideoVAE(z_dim=16)
    with pytest.raises(ValueError, match="48 values"):
        SpaceToDepthVideoVAE(latents_mean=[0.0] * 16)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(_video(frames=8, height=16, width=16, batch=1))


def test_wan_pipeline_decodes_through_the_latent_map():
    """A 9 x 32 x 48 latent is a 33 x 64 x 96 video; the pipeline's decode is ours, denormalised."""
    mean = [0.1 * (c % 3) for c in range(48)]
    std = [0.5 + 0.01 * (c % 7) for c in range(48)]
    pipe = build_proxy_pipeline(SMOKE_CONFIG, latents_mean=mean, latents_std=std)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(height=64, width=96, num_frames=33, num_inference_steps=1, max_sequence_length=16, guidance_scale=1.0)
    latents = pipe("a red circle moves right", output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert latents.shape == (1, 48, 9, 32, 48)
    frames = pipe("a red circle moves right", output_type="pt", generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert frames.shape == (1, 33, 3, 64, 96)
    expected = pipe.vae.decode(pipe.vae.denormalize(latents), return_dict=False)[0]
    torch.testing.assert_close(frames, (expected / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4))
