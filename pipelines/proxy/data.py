"""Procedural captioned videos for the proxy: natural textures, moving objects, camera pans and zooms.

Real video DiTs become local because natural video is locally correlated at every scale, and
temporal because it moves smoothly; the proxy learns from data like that (nothing in the model,
its masks or its initialisation imposes a mode). Every video is cut from the texture bank
(``pipelines.proxy.textures``: photographs scikit-image ships and 1/f fractal noise) through a
camera window, and is one of four kinds of scene, named by its caption:

- ``"a {colour} {shape} moves {left|right|up|down}[ over {content}]"``: a saturated, textured shape
  (its texture moves with it) travels along a smooth arc over a static, desaturated view of the
  content; in about a third of them a post of another texture stands across its path and hides it
  for a while (occlusion). Without "over ..." the content is any image of the bank.
- ``"a {colour} {square|triangle} rotates[ over {content}]"``: the same, turning in place.
- ``"camera pans {left|right|up|down} over {content}"``: the window slides over the content (a
  camera panning right makes the content move left); in half of them a dark foreground layer
  slides 1.6-2.4x faster (parallax).
- ``"camera zooms {in|out} over {content}"``: the window shrinks (in) or grows (out).

Colours are saturated (an object is the only saturated thing in its video: the backgrounds keep
0.35 of their colour), so a check can find it. Geometry is in units of the frame height with y
pointing down, and time runs over [0, 1] whatever the frame count, so any size shows the same scene.

Determinism: the per-video parameters are drawn from a CPU ``torch.Generator`` (a few dozen
numbers per video, in a fixed order) and the rendering is tensor math and bilinear sampling on
``device`` (the bank is the same everywhere), so a seed gives the same videos on the CPU and on a
GPU up to float rounding. Rendering is vectorised over [batch, frames, rows, cols].

``caption_checks(video, caption)`` tells whether a video (generated or procedural) looks like its
caption in ways a few lines can check: the colour, the direction of motion, rotation in place, the
direction of a pan, zooming in or out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipelines.proxy.textures import CONTENTS, texture_bank

__all__ = [
    "COLOURS",
    "SHAPES",
    "DIRECTIONS",
    "CONTENTS",
    "KINDS",
    "PROXY_CAPTIONS",
    "PROXY_VOCAB",
    "PROXY_SAMPLE_PROMPTS",
    "Scene",
    "VideoBatch",
    "scene_of",
    "procedural_videos",
    "caption_checks",
]

# RGB in [-1, 1] of the full-strength object colour: positive channels are lit, the others dark.
COLOURS = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
}
SHAPES = ("circle", "square", "triangle")
ROTATING_SHAPES = ("square", "triangle")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # y down
ZOOMS = ("in", "out")
KINDS = ("moves", "rotates", "pan", "zoom")
# How often each kind is drawn when labels are not given (then a caption of that kind, uniformly).
KIND_WEIGHTS = (0.4, 0.2, 0.25, 0.15)


@dataclass(frozen=True)
class Scene:
    """What a caption fixes. kind: one of ``KINDS``; colour and shape for objects; direction
    ("left", ..., or "in" / "out" for zooms); content: a noun of ``CONTENTS`` or None (any)."""

    caption: str
    kind: str
    colour: str | None = None
    shape: str | None = None
    direction: str | None = None
    content: str | None = None


def _scenes() -> tuple[Scene, ...]:
    out = []
    backgrounds = (None,) + CONTENTS
    for colour in COLOURS:
        for shape in SHAPES:
            for direction in DIRECTIONS:
                for content in backgrounds:
                    tail = f" over {content}" if content else ""
                    out.append(Scene(f"a {colour} {shape} moves {direction}{tail}", "moves", colour, shape, direction, content))
            if shape in ROTATING_SHAPES:
                for content in backgrounds:
                    tail = f" over {content}" if content else ""
                    out.append(Scene(f"a {colour} {shape} rotates{tail}", "rotates", colour, shape, None, content))
    for content in CONTENTS:
        for direction in DIRECTIONS:
            out.append(Scene(f"camera pans {direction} over {content}", "pan", direction=direction, content=content))
        for zoom in ZOOMS:
            out.append(Scene(f"camera zooms {zoom} over {content}", "zoom", direction=zoom, content=content))
    return tuple(out)


SCENES = _scenes()
PROXY_CAPTIONS = tuple(s.caption for s in SCENES)  # the classes: label i is PROXY_CAPTIONS[i]
PROXY_VOCAB = tuple(dict.fromkeys(w for c in PROXY_CAPTIONS for w in c.split()))
# Four prompts per checked kind of motion (every direction, both shapes that rotate, every colour),
# then both zooms: what the trainer samples and the caption checks are counted on.
PROXY_SAMPLE_PROMPTS = (
    "a red circle moves right over grass",
    "a green square moves left over bricks",
    "a blue triangle moves up over sand",
    "a yellow circle moves down over a cat",
    "a red triangle rotates over gravel",
    "a blue square rotates over clouds",
    "a yellow square rotates over coffee",
    "a green triangle rotates over stars",
    "camera pans right over an astronaut",
    "camera pans left over grass",
    "camera pans up over a rocket",
    "camera pans down over a motorcycle",
    "camera zooms in over a cat",
    "camera zooms out over bricks",
)
_SCENE_BY_CAPTION = {s.caption: s for s in SCENES}


def scene_of(caption: str) -> Scene:
    """The scene a caption describes (one of ``PROXY_CAPTIONS``, extra spaces ignored)."""
    scene = _SCENE_BY_CAPTION.get(" ".join(caption.split()))
    if scene is None:
        raise ValueError(
            f"{caption!r} is not a proxy caption; the captions are pipelines.proxy.PROXY_CAPTIONS, e.g. "
            f"{PROXY_SAMPLE_PROMPTS[0]!r}, {PROXY_SAMPLE_PROMPTS[4]!r}, {PROXY_SAMPLE_PROMPTS[8]!r}"
        )
    return scene


OPPOSITE_DIRECTIONS = {"left": "right", "right": "left", "up": "down", "down": "up"}


def opposite_direction(caption: str) -> str:
    """The same proxy caption with its motion's direction reversed ("moves right" <-> "moves left",
    "pans up" <-> "pans down"); a caption with no direction (rotations, zooms) comes back as it is."""
    scene = scene_of(caption)
    if scene.direction not in OPPOSITE_DIRECTIONS:
        return scene.caption
    words = scene.caption.split()
    at = words.index(scene.direction, words.index("moves" if scene.kind == "moves" else "pans"))
    words[at] = OPPOSITE_DIRECTIONS[scene.direction]
    return scene_of(" ".join(words)).caption


# Per-caption attribute tables, indexed by label (built once).
_KIND = torch.tensor([KINDS.index(s.kind) for s in SCENES])
_COLOUR = torch.tensor([COLOURS[s.colour] if s.colour else (0.0, 0.0, 0.0) for s in SCENES])
_SHAPE = torch.tensor([SHAPES.index(s.shape) if s.shape else 0 for s in SCENES])
_DIRECTION = torch.tensor([DIRECTIONS.get(s.direction, (0.0, 0.0)) for s in SCENES])
_ZOOM_IN = torch.tensor([s.direction == "in" for s in SCENES])
_CONTENT = torch.tensor([CONTENTS.index(s.content) if s.content else -1 for s in SCENES])
_BY_KIND = tuple(torch.nonzero(_KIND == k).flatten() for k in range(len(KINDS)))
KIND_MOVES, KIND_ROTATES, KIND_PAN, KIND_ZOOM = range(len(KINDS))

# Ranges of the random parameters (frame-height units, whole clip).
OBJECT_SIZE = (0.1, 0.16)  # circle radius; square half-side 0.85x, triangle inradius 0.6x
MAX_OBJECT_SIZE = 0.3  # radius 0.3 still passes its caption checks at 17 x 64 x 96 (tests/test_proxy_data.py)
TRAVEL_X, TRAVEL_Y = (0.5, 0.8), (0.3, 0.42)  # distance a moving object covers
BEND = (-0.08, 0.08)  # the arc's sideways bulge at mid-clip
ROTATION_TURNS = (0.15, 0.3)  # fraction of a full turn a rotating object makes (either sense)
OBJECT_TEXTURE_SCALE = (1.5, 3.0)  # bank units per frame height of the object's own texture
SHADE = (0.45, 0.95)  # a lit channel of an object goes from SHADE[0] (dark texel) to SHADE[1]
DARK_CHANNEL = -0.9  # an object's unlit channels
WINDOW = (0.3, 0.45)  # the frame's height as a share of the bank image's side
PAN_TRAVEL = (0.3, 0.6)
ZOOM_RATIO = (1.35, 1.9)
OCCLUDER_SHARE, OCCLUDER_WIDTH = 0.35, (0.06, 0.12)
PARALLAX_SHARE, PARALLAX_FACTOR, PARALLAX_COVER = 0.5, (1.6, 2.4), (0.15, 0.35)
BACKGROUND_SATURATION = 0.35  # of the photo's own colour
BACKGROUND_RANGE = (-0.9, 0.5)  # where the background's [-1, 1] is mapped
FOREGROUND_RANGE = (-0.95, -0.2)  # occluders and parallax layers: darker
SATURATED = 0.9  # a pixel is the object's when its largest channel exceeds its smallest by this


@dataclass(frozen=True)
class VideoBatch:
    """A batch of procedural videos.

    Attributes:
        video: [B, 3, T, H, W] in [-1, 1] (the layout the latent map encodes).
        labels: [B] int64 indices into ``PROXY_CAPTIONS``.
        captions: the B captions.
        object_mask: [B, T, H, W] in [0, 1], the object's visible coverage (zero in pans and zooms).
    """

    video: torch.Tensor
    labels: torch.Tensor
    captions: tuple[str, ...]
    object_mask: torch.Tensor


def _uniform(generator: torch.Generator, n: int, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def _pick(generator: torch.Generator, options: torch.Tensor, n: int) -> torch.Tensor:
    """[n] uniform picks from ``options`` (a 1-D tensor)."""
    return options[torch.randint(options.numel(), (n,), generator=generator)]


def check_kind_weights(weights) -> tuple[float, ...]:
    """``weights`` as one float per kind of ``KINDS`` (a sequence in that order, or a {kind: weight}
    dict whose missing kinds weigh 0), or a ValueError saying what is expected."""
    if isinstance(weights, dict):
        unknown = set(weights) - set(KINDS)
        if unknown:
            raise ValueError(f"kind weights: unknown kinds {sorted(unknown)}; the kinds are {KINDS}")
        weights = [weights.get(kind, 0.0) for kind in KINDS]
    values = tuple(float(w) for w in weights)
    if len(values) != len(KINDS) or min(values) < 0 or sum(values) <= 0:
        raise ValueError(f"kind weights {values}: give {len(KINDS)} weights >= 0, for {KINDS}, not all 0")
    return values


def _labels_of(labels, batch: int, generator: torch.Generator, kind_weights=KIND_WEIGHTS) -> torch.Tensor:
    if labels is None:
        kinds = torch.multinomial(torch.tensor(kind_weights, dtype=torch.float64), batch, replacement=True, generator=generator)
        index = torch.rand(batch, generator=generator, dtype=torch.float64)
        return torch.stack([_BY_KIND[k][int(u * _BY_KIND[k].numel())] for k, u in zip(kinds.tolist(), index)])
    out = [PROXY_CAPTIONS.index(scene_of(x).caption) if isinstance(x, str) else int(x) for x in labels]
    if len(out) != batch or not all(0 <= i < len(PROXY_CAPTIONS) for i in out):
        raise ValueError(f"labels must be {batch} captions or indices below {len(PROXY_CAPTIONS)}")
    return torch.tensor(out, dtype=torch.int64)


def _scene_parameters(labels: torch.Tensor, generator: torch.Generator, bank,
                      object_size: tuple[float, float] = OBJECT_SIZE) -> dict[str, torch.Tensor]:
    """Every random number of a batch, drawn in a fixed order on the CPU (float64)."""
    n = labels.numel()
    kind, direction = _KIND[labels], _DIRECTION[labels].double()
    content = _CONTENT[labels]
    every = torch.arange(len(bank.names))
    image = torch.stack([
        _pick(generator, bank.content_images[c] if c >= 0 else every, 1)[0] for c in content.tolist()
    ])
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    window = _uniform(generator, n, WINDOW)
    centre = _uniform(generator, 2 * n, (-1.0, 1.0)).view(n, 2)  # where the window sits in its slack
    pan_travel = _uniform(generator, n, PAN_TRAVEL) * (kind == KIND_PAN).double()
    zoom = torch.log(_uniform(generator, n, ZOOM_RATIO)) * (kind == KIND_ZOOM).double()
    # The object.
    horizontal = direction[:, 0] != 0
    moves = kind == KIND_MOVES
    travel = torch.where(horizontal, _uniform(generator, n, TRAVEL_X), _uniform(generator, n, TRAVEL_Y)) * moves.double()
    along = _uniform(generator, n, (-0.05, 0.05))
    anywhere = torch.stack([_uniform(generator, n, (-0.45, 0.45)), _uniform(generator, n, (-0.22, 0.22))], 1)
    start = torch.where(moves[:, None], direction * (along - travel / 2)[:, None] + anywhere * (direction == 0), anywhere)
    bend = _uniform(generator, n, BEND) * moves.double()
    turns = _uniform(generator, n, ROTATION_TURNS) * torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    object_texture = _pick(generator, bank.fractal_images, n)
    object_texture_scale = _uniform(generator, n, OBJECT_TEXTURE_SCALE)
    object_texture_offset = _uniform(generator, 2 * n, (-0.5, 0.5)).view(n, 2)
    # The occluder (objects that move) and the parallax layer (pans).
    occluded = (torch.rand(n, generator=generator) < OCCLUDER_SHARE) & moves
    occluder_at = _uniform(generator, n, (-0.2, 0.2))  # along the path, from its middle
    occluder_width = _uniform(generator, n, OCCLUDER_WIDTH)
    foreground_image = _pick(generator, every, n)
    parallax = (torch.rand(n, generator=generator) < PARALLAX_SHARE) & (kind == KIND_PAN)
    parallax_factor = _uniform(generator, n, PARALLAX_FACTOR)
    parallax_cover = _uniform(generator, n, PARALLAX_COVER)
    parallax_mask = _pick(generator, bank.fractal_images, n)
    foreground_offset = _uniform(generator, 2 * n, (-0.5, 0.5)).view(n, 2)
    return dict(
        kind=kind, colour=_COLOUR[labels].double(), shape=_SHAPE[labels], direction=direction, image=image, flip=flip,
        window=window, centre=centre, pan_travel=pan_travel, zoom=zoom, zoom_in=_ZOOM_IN[labels],
        size=_uniform(generator, n, object_size), start=start, velocity=direction * travel[:, None], bend=bend,
        angle0=_uniform(generator, n, (0.0, 2 * math.pi)),
        spin=2 * math.pi * turns * (kind == KIND_ROTATES).double(),
        object_texture=object_texture, object_texture_scale=object_texture_scale, object_texture_offset=object_texture_offset,
        occluded=occluded, occluder_at=occluder_at, occluder_width=occluder_width, foreground_image=foreground_image,
        parallax=parallax, parallax_factor=parallax_factor, parallax_cover=parallax_cover, parallax_mask=parallax_mask,
        foreground_offset=foreground_offset,
    )


def check_object_size(bounds) -> tuple[float, float]:
    """``bounds`` as a (low, high) pair of floats, or a ValueError saying what range is served."""
    values = tuple(float(b) for b in bounds)
    if len(values) != 2 or not 0 < values[0] <= values[1] <= MAX_OBJECT_SIZE:
        raise ValueError(f"object_size {values}: give (low, high) with 0 < low <= high <= {MAX_OBJECT_SIZE} frame heights")
    return values


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device; on CUDA through pinned memory without blocking (no stream sync per batch)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _sample(images: torch.Tensor, index: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of bank images: images [N, 3, S, S], index [B], gx / gy broadcasting to
    [B, T, H, W] in the bank's normalised coordinates ([-1, 1], reflected beyond) -> [B, 3, T, H, W]."""
    gx, gy = torch.broadcast_tensors(gx, gy)
    b, t, h, w = gx.shape
    grid = torch.stack([gx, gy], -1).view(b, t * h, w, 2)
    out = F.grid_sample(images[index], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.view(b, 3, t, h, w)


def _grade(rgb: torch.Tensor, saturation: float, bounds: tuple[float, float]) -> torch.Tensor:
    """Keep ``saturation`` of the colour and map [-1, 1] into ``bounds`` (dim 1 is colour)."""
    grey = rgb.mean(1, keepdim=True)
    rgb = grey + saturation * (rgb - grey)
    lo, hi = bounds
    return lo + (hi - lo) * (rgb + 1) / 2


def _band(distance: torch.Tensor, height: int) -> torch.Tensor:
    """Anti-aliased coverage of a signed distance (frame-height units, negative inside)."""
    return (0.5 - distance * height).clamp(0.0, 1.0)


def procedural_videos(
    batch: int,
    *,
    frames: int = 33,
    height: int = 64,
    width: int = 96,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    labels=None,
    device=None,
    dtype: torch.dtype = torch.float32,
    object_size: tuple[float, float] = OBJECT_SIZE,
    kind_weights: tuple[float, ...] = KIND_WEIGHTS,
) -> VideoBatch:
    """``batch`` captioned videos [B, 3, frames, height, width] in [-1, 1].

    Args:
        generator: a CPU ``torch.Generator`` the parameters are drawn from (advanced by the call);
            or ``seed`` to start a fresh one. One of the two is required.
        labels: the captions (strings or indices into ``PROXY_CAPTIONS``); drawn when None (a kind by
            ``KIND_WEIGHTS``, then a caption of that kind uniformly).
        device, dtype: where and how the videos are rendered.
        object_size: the range the objects' size is drawn from (frame heights: a circle's radius;
            see ``OBJECT_SIZE``, the default); larger objects give their motion more of the loss.
        kind_weights: how often each kind of ``KINDS`` is drawn when labels are None (default
            ``KIND_WEIGHTS``; ``check_kind_weights`` reads other forms).
    """
    if (generator is None) == (seed is None):
        raise ValueError("pass either a CPU torch.Generator (generator=...) or a seed (seed=...)")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    if generator.device.type != "cpu":
        raise ValueError("the generator must be a CPU torch.Generator (the parameters are drawn on the CPU)")
    device = torch.device(device) if device is not None else torch.device("cpu")
    bank = texture_bank(str(device), dtype)
    images = bank.images[bank.level(height)]
    labels = _labels_of(labels, batch, generator, check_kind_weights(kind_weights))
    p = {k: to_device(v.to(dtype) if v.is_floating_point() else v, device)
         for k, v in _scene_parameters(labels, generator, bank, check_object_size(object_size)).items()}
    aspect = width / height

    time = torch.linspace(0.0, 1.0, frames, device=device, dtype=dtype) if frames > 1 else torch.zeros(1, device=device, dtype=dtype)
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5 - height / 2) / height  # [H]
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5 - width / 2) / height  # [W]
    y, x = ys.view(1, 1, height, 1), xs.view(1, 1, 1, width)

    def per(v: torch.Tensor) -> torch.Tensor:  # [B] -> [B, 1, 1, 1]
        return v.view(-1, 1, 1, 1)

    def per_frame(v: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, 1, 1]
        return v.view(v.shape[0], -1, 1, 1)

    # The camera window: the frame's height spans 2k of the bank's [-1, 1]; it slides (pans) or
    # scales (zooms) with time. k is capped so that the whole path stays inside the image.
    direction = p["direction"]
    travel_x, travel_y = p["pan_travel"] * direction[:, 0].abs(), p["pan_travel"] * direction[:, 1].abs()
    k_max = torch.minimum(p["window"], 0.98 / torch.maximum(aspect + 2 * travel_x, 1 + 2 * travel_y))
    zoom_t = torch.where(p["zoom_in"][:, None], time[None, :], 1 - time[None, :])  # [B, T]
    k = k_max[:, None] * torch.exp(-p["zoom"][:, None] * zoom_t)  # [B, T]
    path = 2 * k_max[:, None, None] * p["pan_travel"][:, None, None] * direction[:, None, :] * (time[None, :, None] - 0.5)
    slack = torch.stack([1 - k_max * aspect - k_max * 2 * travel_x, 1 - k_max - k_max * 2 * travel_y], 1).clamp_min(0)
    cam = p["centre"][:, None, :] * slack[:, None, :] + path  # [B, T, 2]
    kk = per_frame(2 * k)
    gx = (per_frame(cam[..., 0]) + kk * x) * per(p["flip"])  # a mirrored view pans the same way
    gy = per_frame(cam[..., 1]) + kk * y
    video = _grade(_sample(images, p["image"], gx, gy), BACKGROUND_SATURATION, BACKGROUND_RANGE)

    # Parallax (pans): a dark layer cut from fractal luminance, sliding parallax_factor x faster.
    fx = per_frame(cam[..., 0] - cam[:, :1, 0]) * per(p["parallax_factor"]) + per_frame(cam[:, :1, 0])
    fy = per_frame(cam[..., 1] - cam[:, :1, 1]) * per(p["parallax_factor"]) + per_frame(cam[:, :1, 1])
    lx = fx + kk * x + per(p["foreground_offset"][:, 0])
    ly = fy + kk * y + per(p["foreground_offset"][:, 1])
    cover = _sample(images, p["parallax_mask"], lx, ly).mean(1)  # [B, T, H, W] in [-1, 1]
    threshold = per(1 - 2 * p["parallax_cover"]) * 0.5
    layer_alpha = ((cover - threshold) * 12).clamp(0, 1) * per(p["parallax"].to(dtype))
    layer = _grade(_sample(images, p["foreground_image"], lx, ly), BACKGROUND_SATURATION, FOREGROUND_RANGE)
    video = video + (layer - video) * layer_alpha[:, None]

    # The object: signed distance in its own rotating frame; its texture is drawn in that frame.
    velocity, start = p["velocity"], p["start"]
    normal = torch.stack([-direction[:, 1], direction[:, 0]], 1)
    arc = p["bend"][:, None, None] * torch.sin(math.pi * time)[None, :, None] * normal[:, None, :]
    centre = start[:, None, :] + velocity[:, None, :] * time[None, :, None] + arc  # [B, T, 2]
    angle = p["angle0"][:, None] + p["spin"][:, None] * time[None, :]  # [B, T]
    dx, dy = x - per_frame(centre[..., 0]), y - per_frame(centre[..., 1])
    cos, sin = per_frame(torch.cos(angle)), per_frame(torch.sin(angle))
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    size = per(p["size"])
    circle = torch.sqrt(u * u + v * v) - size
    square = torch.maximum(u.abs(), v.abs()) - 0.85 * size
    edges = [math.pi / 2 + 2 * math.pi * j / 3 for j in range(3)]  # outward normals; apex up
    triangle = torch.stack([math.cos(a) * u + math.sin(a) * v for a in edges]).amax(0) - 0.6 * size
    shape = per(p["shape"])
    sdf = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    is_object = (p["kind"] == KIND_MOVES) | (p["kind"] == KIND_ROTATES)
    mask = _band(sdf, height) * per(is_object.to(dtype))  # [B, T, H, W]
    scale = per(p["object_texture_scale"])
    shade = _sample(images, p["object_texture"], u * scale + per(p["object_texture_offset"][:, 0]),
                    v * scale + per(p["object_texture_offset"][:, 1])).mean(1, keepdim=True)  # [B, 1, T, H, W]
    lit = SHADE[0] + (SHADE[1] - SHADE[0]) * (shade + 1) / 2
    colour = p["colour"][:, :, None, None, None]
    paint = torch.where(colour > 0, lit, torch.full_like(lit, DARK_CHANNEL))  # [B, 3, T, H, W]
    video = video + (paint - video) * mask[:, None]

    # The occluder: a post across the moving object's path, standing in front of it.
    mid = start + velocity / 2  # [B, 2]
    horizontal = direction[:, 0] != 0
    post_x = mid[:, 0] + p["occluder_at"]
    post_y = mid[:, 1] + p["occluder_at"]
    across = torch.where(per(horizontal), (x - per(post_x)).abs(), (y - per(post_y)).abs())  # [B, 1, H, W] or broadcast
    post = _band(across - per(p["occluder_width"]) / 2, height) * per(p["occluded"].to(dtype))
    post = post.expand(-1, frames, -1, -1)
    full = (batch, frames, height, width)
    px = (2 * per(p["window"]) * x + per(p["foreground_offset"][:, 0])).expand(full)  # a still view
    py = (2 * per(p["window"]) * y + per(p["foreground_offset"][:, 1])).expand(full)
    post_paint = _grade(_sample(images, p["foreground_image"], px, py), BACKGROUND_SATURATION, FOREGROUND_RANGE)
    video = video + (post_paint - video) * post[:, None]
    visible = mask * (1 - post)

    captions = tuple(PROXY_CAPTIONS[i] for i in labels.tolist())
    return VideoBatch(video=video.clamp(-1.0, 1.0), labels=labels, captions=captions, object_mask=visible)


# ------------------------------------------------------------------------------ caption checks
COLOUR_MARGIN = 0.3  # the caption's channels exceed the others by this much (mean over saturated pixels)
MIN_TRAVEL = 0.1  # frame heights an object or the content must travel over the clip
MAX_DRIFT = 0.08  # frame heights a rotating object's centre may drift
MIN_SHAPE_CHANGE = 0.1  # a rotating object's mask changes by this share of its area
MIN_ZOOM = 1.15  # the scale between the first and last frame of a zoom
ZOOM_SEARCH = tuple(1.0 + 0.05 * i for i in range(1, 17))  # 1.05 .. 1.8
PAN_PAIRS = 8  # frame pairs a pan's shift is measured over


def _saturated(video: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] -> [T, H, W] float: the object's pixels (largest channel minus smallest > ``SATURATED``)."""
    return ((video.amax(0) - video.amin(0)) > SATURATED).float()


def _colour_ok(video: torch.Tensor, colour: str) -> bool:
    sat = _saturated(video)
    if sat.sum() == 0:
        return False
    mean = (video * sat).flatten(1).sum(1) / sat.sum()  # [3]
    wanted = torch.tensor(COLOURS[colour]) > 0
    return bool(mean[wanted].min() > mean[~wanted].max() + COLOUR_MARGIN)


def _centroids(video: torch.Tensor) -> torch.Tensor:
    """[T, 2] centre (x, y) of the saturated pixels per frame, frame-height units (NaN when none)."""
    sat = _saturated(video)
    _, h, w = sat.shape
    ys = (torch.arange(h) + 0.5 - h / 2) / h
    xs = (torch.arange(w) + 0.5 - w / 2) / h
    area = sat.sum((1, 2))
    cx = (sat * xs).sum((1, 2)) / area
    cy = (sat * ys[:, None]).sum((1, 2)) / area
    return torch.stack([cx, cy], 1)


def _quarter_travel(track: torch.Tensor) -> torch.Tensor:
    """Mean of the last quarter of a [T, 2] track minus the mean of its first quarter."""
    q = max(1, track.shape[0] // 4)
    return track[-q:].nanmean(0) - track[:q].nanmean(0)


def _best_shift(a: torch.Tensor, b: torch.Tensor, axis: int, reach: int) -> int:
    """The integer shift s within +-reach (pixels along ``axis``: 0 x, 1 y) for which b[p] best
    matches a[p - s] (mean squared error over the overlap; a, b [3, H, W])."""
    errors = []
    for s in range(-reach, reach + 1):
        if axis == 0:
            errors.append(float((b[:, :, reach:-reach] - a[:, :, reach - s : a.shape[2] - reach - s]).pow(2).mean()))
        else:
            errors.append(float((b[:, reach:-reach] - a[:, reach - s : a.shape[1] - reach - s]).pow(2).mean()))
    return min(range(len(errors)), key=errors.__getitem__) - reach


def _content_shift(video: torch.Tensor, axis: int) -> float:
    """Total content shift along ``axis`` in frame heights: summed over up to ``PAN_PAIRS`` pairs of
    frames ``gap`` apart, each the best integer shift within a reach that covers the fastest pan."""
    frames = video.float()
    t, h = frames.shape[1], frames.shape[2]
    if t < 2:
        return 0.0
    gap = max(1, (t - 1) // PAN_PAIRS)
    reach = max(2, math.ceil(1.3 * PAN_TRAVEL[1] * h * gap / (t - 1)) + 1)
    reach = min(reach, frames.shape[3 - axis] // 4)  # at most a quarter of the frame along the axis
    total = 0
    for i in range(0, t - gap, gap):
        total += _best_shift(frames[:, i], frames[:, i + gap], axis, reach)
    return total / h


def _zoom_of(video: torch.Tensor) -> float:
    """The magnification from the first frame to the last: > 1 when the content grows (zoom in).
    Searched over ``ZOOM_SEARCH`` (and their inverses) by the centre crop of one frame that, resized,
    best matches the other."""
    first, last = video[:, 0].float(), video[:, -1].float()
    _, h, w = first.shape

    def grown(frame: torch.Tensor, ratio: float) -> torch.Tensor:
        ch, cw = max(2, round(h / ratio)), max(2, round(w / ratio))
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = frame[:, top : top + ch, left : left + cw]
        return F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]

    best, best_error = 1.0, float((last - first).pow(2).mean())
    for r in ZOOM_SEARCH:
        for ratio, error in ((r, float((last - grown(first, r)).pow(2).mean())),
                             (1 / r, float((first - grown(last, r)).pow(2).mean()))):
            if error < best_error:
                best, best_error = ratio, error
    return best


def caption_checks(video: torch.Tensor, caption: str) -> dict[str, bool]:
    """Checks that ``video`` [3, T, H, W] in [-1, 1] looks like ``caption``; {check name: passed}.

    - "colour" (objects): the mean colour of the saturated pixels (largest channel minus smallest >
      ``SATURATED``) has the caption colour's lit channels above the others by ``COLOUR_MARGIN``;
    - "motion" (moves): the saturated pixels' centre travels at least ``MIN_TRAVEL`` frame heights in
      the caption's direction (last quarter of the clip against the first), more than across it;
    - "rotation" (rotates): the centre drifts less than ``MAX_DRIFT`` and the shape changes by at
      least ``MIN_SHAPE_CHANGE`` of its area;
    - "pan" (camera pans): the content moves against the camera's direction by at least
      ``MIN_TRAVEL`` frame heights (best shifts between frames along the pan's axis);
    - "zoom" (camera zooms): the content grows (in) or shrinks (out) by at least ``MIN_ZOOM``.
    """
    scene = scene_of(caption)
    video = video.detach().float().cpu()
    checks = {}
    if scene.kind in ("moves", "rotates"):
        checks["colour"] = _colour_ok(video, scene.colour)
    if scene.kind == "moves":
        travel = _quarter_travel(_centroids(video))
        dx, dy = DIRECTIONS[scene.direction]
        along = float(travel[0] * dx + travel[1] * dy)
        across = float((travel[0] * dy - travel[1] * dx).abs())
        checks["motion"] = bool(along >= MIN_TRAVEL and along > across)
    elif scene.kind == "rotates":
        track = _centroids(video)
        drift = float((track - track.nanmean(0)).norm(dim=1).nan_to_num(math.inf).max())
        sat = _saturated(video)
        change = float((sat - sat[0]).abs().sum((1, 2)).max() / sat[0].sum().clamp_min(1))
        checks["rotation"] = bool(drift < MAX_DRIFT and change >= MIN_SHAPE_CHANGE)
    elif scene.kind == "pan":
        dx, dy = DIRECTIONS[scene.direction]
        shift = _content_shift(video, 0 if dx else 1)
        checks["pan"] = bool(-shift * (dx + dy) >= MIN_TRAVEL)
    else:
        zoom = _zoom_of(video)
        checks["zoom"] = bool(zoom >= MIN_ZOOM if scene.direction == "in" else zoom <= 1 / MIN_ZOOM)
    return checks
