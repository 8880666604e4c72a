"""The proxy's texture bank: photographs and fractal noise that the procedural videos are cut from.

Natural images are locally correlated at every scale (their power spectrum falls as about 1/f^2),
which is what makes the attention of real video DiTs local; flat colours make every background
token alike, so nothing rewards attending nearby (the first proxy's lesson). The bank holds:

- photographs that scikit-image ships in its wheel (``skimage/data``: public-domain or CC0 images
  such as the astronaut, Chelsea the cat, coffee, a rocket, grass, gravel, bricks, the Hubble deep
  field, a motorcycle), read as files with imageio; scikit-image itself is never imported, it is only
  where the files come from (the ``train`` extra installs it);
- fractal noise: periodic 1/f^beta fields drawn from a fixed seed on the CPU in float64 ("clouds":
  smooth, beta 2.6; "sand": rough, beta 1.6), lightly tinted.

Every image is a square ``[3, S, S]`` in [-1, 1]; the bank keeps three sizes (``LEVELS``) so that a
frame is sampled from the level nearest its own resolution (bilinear sampling does not antialias).
The bank is the same on every device and every run: it depends on no seed of the caller.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["CONTENTS", "PHOTO_FILES", "FRACTALS", "LEVELS", "TextureBank", "texture_bank", "photo_folder", "fractal_noise"]

# Caption noun -> photo file in skimage/data (greyscale photos get a tint: RGB in [-1, 1] at full contrast).
PHOTO_FILES = {
    "an astronaut": ("astronaut.png", None),
    "a cat": ("chelsea.png", None),
    "coffee": ("coffee.png", None),
    "a rocket": ("rocket.jpg", None),
    "stars": ("hubble_deep_field.jpg", None),
    "a motorcycle": ("motorcycle_left.png", None),
    "grass": ("grass.png", (0.55, 0.85, 0.35)),
    "gravel": ("gravel.png", (0.85, 0.8, 0.7)),
    "bricks": ("brick.png", (0.9, 0.55, 0.45)),
}
# Caption noun -> (spectral exponent beta of the power spectrum 1/f^beta, tint); VARIANTS fields each.
FRACTALS = {"clouds": (2.6, (0.75, 0.85, 1.0)), "sand": (1.6, (0.95, 0.85, 0.6))}
FRACTAL_VARIANTS = 3
FRACTAL_SEED = 20261206
CONTENTS = tuple(PHOTO_FILES) + tuple(FRACTALS)  # the caption nouns, in bank order
LEVELS = (96, 192, 384)  # square sizes kept


def photo_folder() -> Path:
    """The folder of scikit-image's bundled photographs, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the proxy's training data needs the photographs scikit-image ships: pip install 'sparse-vdit[train]' "
            "(or pip install scikit-image)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name, _ in PHOTO_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-image's data folder {folder} lacks {missing}: reinstall scikit-image")
    return folder


def _square(image: torch.Tensor, size: int) -> torch.Tensor:
    """[3, H, W] -> [3, size, size]: centre crop to a square, antialiased resize."""
    _, h, w = image.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[:, top : top + s, left : left + s]
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def _read_photo(path: Path, tint) -> torch.Tensor:
    """[3, H, W] float64 in [-1, 1]."""
    import imageio.v3 as iio

    array = iio.imread(path)
    image = torch.from_numpy(array.copy()).double() / 255.0
    if image.dim() == 2:
        image = image[None].expand(3, -1, -1) * torch.tensor(tint, dtype=torch.float64)[:, None, None]
    else:
        image = image[..., :3].permute(2, 0, 1)
    return image * 2 - 1


def fractal_noise(size: int, beta: float, generator: torch.Generator) -> torch.Tensor:
    """[size, size] float64 periodic noise with power spectrum 1/f^beta, scaled to [-1, 1]."""
    fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(size, dtype=torch.float64)[None, :]
    f = torch.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amplitude = f.pow(-beta / 2)
    amplitude[0, 0] = 0.0  # zero mean
    white = torch.randn(size, size, generator=generator, dtype=torch.float64)
    field = torch.fft.ifft2(torch.fft.fft2(white) * amplitude).real
    field = field - field.mean()
    return (field / field.abs().max()).clamp(-1, 1)


def _fractal(beta: float, tint, generator: torch.Generator, size: int) -> torch.Tensor:
    """[3, size, size] in [-1, 1]: fractal luminance times a tint, with a little colour noise."""
    luminance = 0.5 + 0.5 * fractal_noise(size, beta, generator)  # [0, 1]
    hue = 0.15 * fractal_noise(size, beta, generator)  # slow colour variation
    rgb = luminance[None] * torch.tensor(tint, dtype=torch.float64)[:, None, None]
    rgb = rgb + torch.stack([hue, -hue, 0.5 * hue])
    return (rgb.clamp(0, 1) * 2 - 1)


@dataclass(frozen=True)
class TextureBank:
    """Images per level: ``images[S]`` is [N, 3, S, S] (N = len(names)) on ``device``.

    Attributes:
        names: per image, the caption noun (``CONTENTS``) it shows; fractal nouns have
            ``FRACTAL_VARIANTS`` images each.
        content_images: per noun of ``CONTENTS``, the indices of its images (a LongTensor each).
        fractal_images: indices of the fractal images (their luminance textures the objects).
    """

    images: dict
    names: tuple[str, ...]
    content_images: tuple[torch.Tensor, ...]
    fractal_images: torch.Tensor

    def level(self, height: int) -> int:
        """The smallest kept size that gives a frame of ``height`` pixels at least one texel per pixel
        when a frame shows a third of the image."""
        for size in LEVELS:
            if size >= 3 * height:
                return size
        return LEVELS[-1]


@functools.lru_cache(maxsize=4)
def _bank_cpu() -> tuple[tuple[torch.Tensor, ...], tuple[str, ...]]:
    folder = photo_folder()
    full = max(LEVELS)
    images, names = [], []
    for noun, (file, tint) in PHOTO_FILES.items():
        images.append(_square(_read_photo(folder / file, tint), full))
        names.append(noun)
    generator = torch.Generator().manual_seed(FRACTAL_SEED)
    for noun, (beta, tint) in FRACTALS.items():
        for _ in range(FRACTAL_VARIANTS):
            images.append(_fractal(beta, tint, generator, full))
            names.append(noun)
    stack = torch.stack(images).clamp(-1, 1)  # [N, 3, full, full] float64
    levels = tuple(
        stack if size == full else F.interpolate(stack, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for size in LEVELS
    )
    return levels, tuple(names)


@functools.lru_cache(maxsize=8)
def texture_bank(device: str = "cpu", dtype: torch.dtype = torch.float32) -> TextureBank:
    """The bank on ``device`` in ``dtype`` (built once per process on the CPU, then cached per device)."""
    levels, names = _bank_cpu()
    images = {size: level.to(dtype).to(device) for size, level in zip(LEVELS, levels)}
    content_images = tuple(torch.tensor([i for i, n in enumerate(names) if n == noun]) for noun in CONTENTS)
    fractal = torch.tensor([i for i, n in enumerate(names) if n in FRACTALS])
    return TextureBank(images=images, names=names, content_images=content_images, fractal_images=fractal)

