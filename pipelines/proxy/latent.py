"""The proxy's latent map: an exact, invertible stand-in for Wan's VAE (space-to-depth).

Wan's VAE groups pixel frames as 1 + 4k (the first frame alone, then groups of 4) and
downsamples 8x in space. A trained VAE would make pixel PSNR measure the VAE as much as the
transformer; this map loses nothing, so the round trip is exact (PSNR infinite: ``decode(encode(v))``
equals ``v`` bit for bit in float32 and in bfloat16).

    pixel video [B, 3, 1 + 4k, H, W] in [-1, 1]
      -> frame 0 repeated 4 times, then the other frames:     [B, 3, 4 (k + 1), H, W]
      -> latent frame j holds pixel frames 4j .. 4j + 3 of that; each s x s pixel block is one
         latent position:                                     [B, 3 * 4 * s * s, k + 1, H / s, W / s]

Latent channel order: (colour, frame in group, row in block, column in block), colour slowest.
With s = 2 (``scale_factor_spatial``, the proxy's) a 33 x 64 x 96 video is a 48 x 9 x 32 x 48
latent, i.e. 9 x 16 x 24 = 3,456 tokens after Wan's (1, 2, 2) patchify; any s works (s = 4: 192
channels, see ``pipelines.proxy.model`` for why the proxy does not use it).

``WanPipeline`` reads ``config.z_dim``, ``config.latents_mean`` / ``config.latents_std`` (it
denormalises its latents as ``latents * std + mean`` before ``decode``), ``config.scale_factor_temporal``
and ``config.scale_factor_spatial`` (its latent grid is ``(num_frames - 1) // 4 + 1`` x
``height // s`` x ``width // s``), ``dtype`` and ``decode(latents, return_dict=False)[0]``.
Training normalises the other way (``normalize(encode(video))``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin

__all__ = ["SpaceToDepthVideoVAE", "latent_channels"]


def latent_channels(in_channels: int = 3, scale_factor_temporal: int = 4, scale_factor_spatial: int = 2) -> int:
    """Channels of the latent: every pixel of a (frames x rows x cols) group becomes a channel."""
    return in_channels * scale_factor_temporal * scale_factor_spatial**2


def _pairwise_mean(frames: torch.Tensor) -> torch.Tensor:
    """Mean over dim 2 of [B, C, n, H, W], summed as a balanced tree when n is a power of two, so
    that n equal values give that value exactly ((a + a) + (a + a) = 4a in any float format)."""
    n = frames.shape[2]
    if n & (n - 1):
        return frames.mean(dim=2, keepdim=True)
    while frames.shape[2] > 1:
        frames = frames[:, :, 0::2] + frames[:, :, 1::2]
    return frames / n


class SpaceToDepthVideoVAE(ModelMixin, ConfigMixin):
    """A fixed invertible latent map with the interface ``WanPipeline`` uses of ``AutoencoderKLWan``.

    Args:
        in_channels: pixel channels (3).
        scale_factor_temporal: frames per latent frame after the first (Wan: 4).
        scale_factor_spatial: pixels per latent position along each side (2 for the proxy; Wan's VAE: 8).
        latents_mean, latents_std: per latent channel (``z_dim`` values); the pipeline's latents are
            ``(z - mean) / std``. Defaults 0 and 1.
        z_dim: latent channels; derived from the three factors (given only when read back from a config).

    Has no parameters; two non-persistent buffers (mean and std) give it a device and a dtype.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        scale_factor_temporal: int = 4,
        scale_factor_spatial: int = 2,
        latents_mean: Sequence[float] | None = None,
        latents_std: Sequence[float] | None = None,
        z_dim: int | None = None,
    ) -> None:
        super().__init__()
        channels = latent_channels(in_channels, scale_factor_temporal, scale_factor_spatial)
        if z_dim is not None and z_dim != channels:
            raise ValueError(
                f"z_dim {z_dim} disagrees with the factors: {in_channels} x {scale_factor_temporal} x "
                f"{scale_factor_spatial}^2 = {channels} latent channels"
            )
        mean = [0.0] * channels if latents_mean is None else [float(v) for v in latents_mean]
        std = [1.0] * channels if latents_std is None else [float(v) for v in latents_std]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"latents_mean and latents_std need {channels} values each, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError("latents_std must be positive")
        self.register_to_config(z_dim=channels, latents_mean=mean, latents_std=std)
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1, 1), persistent=False)

    # ------------------------------------------------------------------ sizes
    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(channels, frames, rows, cols) of the latent of a ``num_frames x height x width`` video."""
        ft, s = self.config.scale_factor_temporal, self.config.scale_factor_spatial
        if (num_frames - 1) % ft or height % s or width % s:
            raise ValueError(
                f"a {num_frames} x {height} x {width} video does not map to a latent: frames must be 1 + "
                f"{ft}k and height, width multiples of {s}"
            )
        return self.config.z_dim, (num_frames - 1) // ft + 1, height // s, width // s

    # ------------------------------------------------------------------ the map
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixel video [B, C, 1 + 4k, H, W] -> latent [B, z_dim, k + 1, H / s, W / s] (not normalised)."""
        b, c, t, h, w = video.shape
        ft, s = self.config.scale_factor_temporal, self.config.scale_factor_spatial
        _, lt, lh, lw = self.latent_shape(t, h, w)
        if c != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} pixel channels, got {c}")
        grouped = torch.cat([video[:, :, :1].expand(-1, -1, ft, -1, -1), video[:, :, 1:]], dim=2)
        x = grouped.reshape(b, c, lt, ft, lh, s, lw, s)
        return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, self.config.z_dim, lt, lh, lw)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Latent [B, z_dim, T, h, w] -> pixel video [B, C, 1 + 4 (T - 1), h s, w s], clamped to [-1, 1].

        The first latent frame holds frame 0 four times; it is decoded as their mean (exact on a
        round trip, the best estimate of one frame when generated copies differ).
        """
        b, z_dim, lt, lh, lw = z.shape
        if z_dim != self.config.z_dim:
            raise ValueError(f"expected a latent of {self.config.z_dim} channels, got {z_dim}")
        c, ft, s = self.config.in_channels, self.config.scale_factor_temporal, self.config.scale_factor_spatial
        x = z.reshape(b, c, ft, s, s, lt, lh, lw).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c, lt * ft, lh * s, lw * s)
        video = torch.cat([_pairwise_mean(x[:, :, :ft]), x[:, :, ft:]], dim=2).clamp(-1.0, 1.0)
        if not return_dict:
            return (video,)
        return DecoderOutput(sample=video)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent -> the pipeline's latent space: ``(z - mean) / std`` per channel."""
        return (z - self.mean.to(z.dtype)) / self.std.to(z.dtype)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's latents -> raw latent, as ``WanPipeline`` does before ``decode``."""
        return latents * self.std.to(latents.dtype) + self.mean.to(latents.dtype)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """The round trip (``decode(encode(video))``)."""
        return self.decode(self.encode(video), return_dict=False)[0]
