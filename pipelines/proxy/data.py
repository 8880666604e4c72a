"""Procedural captioned videos for the proxy: moving and rotating shapes, textures, camera pans.

Each caption is a class; the videos carry the structures the sparse methods exploit:

- object scenes, ``"a {colour} {shape} moves {left|right|up|down}"`` and ``"a {colour} {shape}
  rotates"`` (squares and triangles: a rotating circle would look static): one anti-aliased shape
  over a static dim grey background (plain, stripes or checkers). The object's correspondence
  across frames gives temporal (multi-diagonal) attention, the static background too; its edges
  and the textures give local (diagonal) attention.
- camera pans, ``"camera pans {left|right|up|down} over {colour} {stripes|checkers}"``: the whole
  frame is a texture (caption colour on dark grey) that slides; a camera panning right makes the
  content move left. Global shifts: multi-diagonal at an offset, stripe-like heads.

Everything else (position, size, orientation, speed, background, texture frequency and angle) is
random. Geometry is in units of the frame height with y pointing down, and time runs over [0, 1]
whatever the frame count, so a 9-frame 32 x 48 clip shows the motion of a 33-frame 64 x 96 one.

Determinism: the per-video parameters are drawn from a CPU ``torch.Generator`` (a handful of
numbers per video) and the rendering is plain tensor math on ``device``, so a seed gives the same
videos on the CPU and on a GPU (up to float rounding). Rendering is vectorised over
[batch, frames, rows, cols]; no Python loop over pixels or videos.

``caption_checks(video, caption)`` tells whether a video (generated or procedural) looks like its
caption in ways a few lines can check: the colour, the direction of motion or pan, rotation in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "COLOURS",
    "SHAPES",
    "DIRECTIONS",
    "TEXTURES",
    "PROXY_CAPTIONS",
    "PROXY_VOCAB",
    "PROXY_SAMPLE_PROMPTS",
    "Scene",
    "VideoBatch",
    "scene_of",
    "procedural_videos",
    "caption_checks",
]

# RGB in [-1, 1]; saturated so that an object is the only bright thing in its scene.
COLOURS = {
    "red": (0.9, -0.9, -0.9),
    "green": (-0.9, 0.9, -0.9),
    "blue": (-0.9, -0.9, 0.9),
    "yellow": (0.9, 0.9, -0.9),
}
SHAPES = ("circle", "square", "triangle")
ROTATING_SHAPES = ("square", "triangle")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # y down
TEXTURES = ("stripes", "checkers")


@dataclass(frozen=True)
class Scene:
    """What a caption fixes. kind: "moves", "rotates" or "pan"; shape or texture as the kind needs."""

    caption: str
    kind: str
    colour: str
    shape: str | None = None
    direction: str | None = None
    texture: str | None = None


def _scenes() -> tuple[Scene, ...]:
    out = []
    for colour in COLOURS:
        for shape in SHAPES:
            for direction in DIRECTIONS:
                out.append(Scene(f"a {colour} {shape} moves {direction}", "moves", colour, shape=shape, direction=direction))
            if shape in ROTATING_SHAPES:
                out.append(Scene(f"a {colour} {shape} rotates", "rotates", colour, shape=shape))
    for direction in DIRECTIONS:
        for colour in COLOURS:
            for texture in TEXTURES:
                out.append(
                    Scene(f"camera pans {direction} over {colour} {texture}", "pan", colour, direction=direction, texture=texture)
                )
    return tuple(out)


SCENES = _scenes()
PROXY_CAPTIONS = tuple(s.caption for s in SCENES)  # the classes: label i is PROXY_CAPTIONS[i]
PROXY_VOCAB = tuple(dict.fromkeys(w for c in PROXY_CAPTIONS for w in c.split()))
# One prompt per kind of scene and motion, covering every colour, shape and texture.
PROXY_SAMPLE_PROMPTS = (
    "a red circle moves right",
    "a green square moves left",
    "a blue triangle moves up",
    "a yellow circle moves down",
    "a red triangle rotates",
    "a blue square rotates",
    "camera pans right over green stripes",
    "camera pans up over yellow checkers",
)
_SCENE_BY_CAPTION = {s.caption: s for s in SCENES}


def scene_of(caption: str) -> Scene:
    """The scene a caption describes (one of ``PROXY_CAPTIONS``, extra spaces ignored)."""
    scene = _SCENE_BY_CAPTION.get(" ".join(caption.split()))
    if scene is None:
        raise ValueError(f"{caption!r} is not a proxy caption; the captions are pipelines.proxy.PROXY_CAPTIONS")
    return scene


# Per-caption attribute table, indexed by label (built once).
_KIND = torch.tensor([("moves", "rotates", "pan").index(s.kind) for s in SCENES])
_COLOUR = torch.tensor([COLOURS[s.colour] for s in SCENES])
_SHAPE = torch.tensor([SHAPES.index(s.shape) if s.shape else 0 for s in SCENES])
_DIRECTION = torch.tensor([DIRECTIONS[s.direction] if s.direction else (0.0, 0.0) for s in SCENES])
_TEXTURE = torch.tensor([TEXTURES.index(s.texture) + 1 if s.texture else 0 for s in SCENES])  # 0 plain
KIND_MOVES, KIND_ROTATES, KIND_PAN = 0, 1, 2
PLAIN, STRIPES, CHECKERS = 0, 1, 2

# Ranges of the random parameters (frame-height units, whole clip).
OBJECT_SIZE = (0.12, 0.18)  # circle radius; square half-side 0.85x, triangle inradius 0.6x
TRAVEL_X, TRAVEL_Y = (0.5, 0.8), (0.3, 0.42)  # distance a moving object covers
ROTATION_TURNS = (0.15, 0.3)  # fraction of a full turn a rotating object makes (either sense)
PAN_TRAVEL = (0.3, 0.6)
PAN_FREQUENCY = (2.5, 5.0)  # texture cycles per frame height
BACKGROUND_FREQUENCY = (3.0, 8.0)
BACKGROUND_GREY = (-0.9, -0.6)  # darker texture level; the lighter one adds a contrast in
BACKGROUND_CONTRAST = (0.1, 0.45)
PAN_DARK = (-0.9, -0.6)
BRIGHT = 0.3  # a pixel is "bright" (object or pan texture) when its largest channel exceeds this


@dataclass(frozen=True)
class VideoBatch:
    """A batch of procedural videos.

    Attributes:
        video: [B, 3, T, H, W] in [-1, 1] (the layout the latent map encodes).
        labels: [B] int64 indices into ``PROXY_CAPTIONS``.
        captions: the B captions.
        object_mask: [B, T, H, W] in [0, 1], the object's coverage (zero in camera pans).
    """

    video: torch.Tensor
    labels: torch.Tensor
    captions: tuple[str, ...]
    object_mask: torch.Tensor


def _uniform(generator: torch.Generator, n: int, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def _labels_of(labels, batch: int, generator: torch.Generator) -> torch.Tensor:
    if labels is None:
        return torch.randint(len(PROXY_CAPTIONS), (batch,), generator=generator)
    out = [PROXY_CAPTIONS.index(scene_of(x).caption) if isinstance(x, str) else int(x) for x in labels]
    if len(out) != batch or not all(0 <= i < len(PROXY_CAPTIONS) for i in out):
        raise ValueError(f"labels must be {batch} captions or indices below {len(PROXY_CAPTIONS)}")
    return torch.tensor(out, dtype=torch.int64)


def _scene_parameters(labels: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random number of a batch, drawn in a fixed order on the CPU (float64)."""
    n = labels.numel()
    kind, direction = _KIND[labels], _DIRECTION[labels].double()
    horizontal = direction[:, 0] != 0
    travel = torch.where(horizontal, _uniform(generator, n, TRAVEL_X), _uniform(generator, n, TRAVEL_Y))
    along = _uniform(generator, n, (-0.05, 0.05))  # jitter of the start along the motion
    # Where the object sits across its motion (anywhere, when it does not move).
    anywhere = torch.stack([_uniform(generator, n, (-0.45, 0.45)), _uniform(generator, n, (-0.22, 0.22))], 1)
    start = torch.where(direction != 0, direction * (along - travel / 2)[:, None], anywhere)
    moves = (kind == KIND_MOVES).double()[:, None]
    turns = _uniform(generator, n, ROTATION_TURNS) * torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    pan_travel = _uniform(generator, n, PAN_TRAVEL)
    pan_normal = torch.atan2(direction[:, 1], direction[:, 0]) + _uniform(generator, n, (-math.pi / 4, math.pi / 4))
    background = torch.randint(3, (n,), generator=generator)
    is_pan = kind == KIND_PAN
    return dict(
        kind=kind,
        colour=_COLOUR[labels].double(),
        shape=_SHAPE[labels],
        size=_uniform(generator, n, OBJECT_SIZE),
        start=start,
        velocity=direction * (travel[:, None] * moves),  # per unit of clip time
        angle0=_uniform(generator, n, (0.0, 2 * math.pi)),
        spin=2 * math.pi * turns * (kind == KIND_ROTATES).double(),
        camera=torch.where(is_pan[:, None], direction * pan_travel[:, None], torch.zeros_like(direction)),
        texture=torch.where(is_pan, _TEXTURE[labels], background),
        texture_angle=torch.where(is_pan, pan_normal, _uniform(generator, n, (0.0, math.pi))),
        frequency=torch.where(is_pan, _uniform(generator, n, PAN_FREQUENCY), _uniform(generator, n, BACKGROUND_FREQUENCY)),
        phase=_uniform(generator, n, (0.0, 2 * math.pi)),
        phase2=_uniform(generator, n, (0.0, 2 * math.pi)),
        dark=torch.where(is_pan, _uniform(generator, n, PAN_DARK), _uniform(generator, n, BACKGROUND_GREY)),
        contrast=_uniform(generator, n, BACKGROUND_CONTRAST),
    )


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device; on CUDA through pinned memory without blocking (no stream sync per batch)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _soft_square(u: torch.Tensor, sharpness: torch.Tensor) -> torch.Tensor:
    """A square wave in [0, 1] of phase u (radians) with edges about one pixel wide."""
    return (0.5 + sharpness * torch.sin(u)).clamp(0.0, 1.0)


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
) -> VideoBatch:
    """``batch`` captioned videos [B, 3, frames, height, width] in [-1, 1].

    Args:
        generator: a CPU ``torch.Generator`` the parameters are drawn from (advanced by the call);
            or ``seed`` to start a fresh one. One of the two is required.
        labels: the captions (strings or indices into ``PROXY_CAPTIONS``); drawn uniformly when None.
        device, dtype: where and how the videos are rendered.
    """
    if (generator is None) == (seed is None):
        raise ValueError("pass either a CPU torch.Generator (generator=...) or a seed (seed=...)")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    if generator.device.type != "cpu":
        raise ValueError("the generator must be a CPU torch.Generator (the parameters are drawn on the CPU)")
    labels = _labels_of(labels, batch, generator)
    device = torch.device(device) if device is not None else torch.device("cpu")
    p = {k: to_device(v.to(dtype) if v.is_floating_point() else v, device) for k, v in _scene_parameters(labels, generator).items()}

    time = torch.linspace(0.0, 1.0, frames, device=device, dtype=dtype) if frames > 1 else torch.zeros(1, device=device, dtype=dtype)
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5 - height / 2) / height  # [H]
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5 - width / 2) / height  # [W]
    y, x = ys.view(1, 1, height, 1), xs.view(1, 1, 1, width)

    def per(v: torch.Tensor) -> torch.Tensor:  # [B] -> [B, 1, 1, 1]
        return v.view(-1, 1, 1, 1)

    def per_frame(v: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, 1, 1]
        return v.view(v.shape[0], -1, 1, 1)

    # Background / pan texture: [B, T, H, W] level in [0, 1], sampled at p + camera * t.
    cam = p["camera"][:, None, :] * time[None, :, None]  # [B, T, 2]
    cx, cy = per_frame(cam[..., 0]), per_frame(cam[..., 1])
    omega = 2 * math.pi * per(p["frequency"])
    sharp = per(height / (2 * math.pi * p["frequency"]))
    nx, ny = per(torch.cos(p["texture_angle"])), per(torch.sin(p["texture_angle"]))
    stripes = _soft_square(omega * ((x + cx) * nx + (y + cy) * ny) + per(p["phase"]), sharp)
    stripes_y = _soft_square(omega * (y + cy) + per(p["phase2"]), sharp)
    stripes_x = _soft_square(omega * (x + cx) + per(p["phase"]), sharp)
    checkers = stripes_x + stripes_y - 2 * stripes_x * stripes_y
    texture = per(p["texture"])
    level = torch.where(texture == STRIPES, stripes, torch.where(texture == CHECKERS, checkers, torch.zeros_like(stripes)))

    kind, colour = p["kind"], p["colour"]  # [B], [B, 3]
    dark = p["dark"][:, None].expand(-1, 3)
    light = torch.where((kind == KIND_PAN)[:, None], colour, dark + p["contrast"][:, None])
    background = dark[:, :, None, None, None] + (light - dark)[:, :, None, None, None] * level[:, None]  # [B, 3, T, H, W]

    # The object: signed distance (frame-height units) in its own rotating frame, anti-aliased.
    centre = p["start"][:, None, :] + p["velocity"][:, None, :] * time[None, :, None]  # [B, T, 2]
    angle = p["angle0"][:, None] + p["spin"][:, None] * time[None, :]  # [B, T]
    dx, dy = x - per_frame(centre[..., 0]), y - per_frame(centre[..., 1])
    cos, sin = per_frame(torch.cos(angle)), per_frame(torch.sin(angle))
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    size = per(p["size"])
    circle = torch.sqrt(u * u + v * v) - size
    square = torch.maximum(u.abs(), v.abs()) - 0.85 * size
    edges = [math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)]  # outward normals; apex up
    triangle = torch.stack([math.cos(a) * u + math.sin(a) * v for a in edges]).amax(0) - 0.6 * size
    shape = per(p["shape"])
    sdf = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))
    mask = (0.5 - sdf * height).clamp(0.0, 1.0) * per((kind != KIND_PAN).to(dtype))  # [B, T, H, W]

    video = background + (colour[:, :, None, None, None] - background) * mask[:, None]
    captions = tuple(PROXY_CAPTIONS[i] for i in labels.tolist())
    return VideoBatch(video=video.clamp(-1.0, 1.0), labels=labels, captions=captions, object_mask=mask)


# ------------------------------------------------------------------------------ caption checks
COLOUR_MARGIN = 0.3  # the caption's channels exceed the others by this much (mean over bright pixels)
MIN_TRAVEL = 0.1  # frame heights an object or the content must travel over the clip
MAX_DRIFT = 0.08  # frame heights a rotating object's centre may drift
MIN_SHAPE_CHANGE = 0.1  # a rotating object's mask changes by this share of its area
PAN_SEARCH_PX = 4  # largest per-frame content shift (pixels) searched between consecutive frames


def _bright(video: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] -> [T, H, W] float: pixels whose largest channel exceeds ``BRIGHT``."""
    return (video.amax(0) > BRIGHT).float()


def _colour_ok(video: torch.Tensor, colour: str) -> bool:
    bright = _bright(video)
    if bright.sum() == 0:
        return False
    mean = (video * bright).flatten(1).sum(1) / bright.sum()  # [3]
    wanted = torch.tensor(COLOURS[colour]) > 0
    return bool(mean[wanted].min() > mean[~wanted].max() + COLOUR_MARGIN)


def _centroids(video: torch.Tensor) -> torch.Tensor:
    """[T, 2] centre (x, y) of the bright pixels per frame, frame-height units (NaN when none)."""
    bright = _bright(video)
    _, h, w = bright.shape
    ys = (torch.arange(h) + 0.5 - h / 2) / h
    xs = (torch.arange(w) + 0.5 - w / 2) / h
    area = bright.sum((1, 2))
    cx = (bright * xs).sum((1, 2)) / area
    cy = (bright * ys[:, None]).sum((1, 2)) / area
    return torch.stack([cx, cy], 1)


def _quarter_travel(track: torch.Tensor) -> torch.Tensor:
    """Mean of the last quarter of a [T, 2] track minus the mean of its first quarter."""
    q = max(1, track.shape[0] // 4)
    return track[-q:].nanmean(0) - track[:q].nanmean(0)


def _content_shift(video: torch.Tensor, axis: int) -> float:
    """Total content shift (pixels, summed over consecutive frame pairs) along ``axis`` (0 x, 1 y):
    per pair, the integer shift within +-PAN_SEARCH_PX that best aligns the frames."""
    frames = video.float()
    r = PAN_SEARCH_PX
    total = 0
    for t in range(frames.shape[1] - 1):
        a, b = frames[:, t], frames[:, t + 1]
        errors = []
        for s in range(-r, r + 1):  # content moved by s: b[p] == a[p - s]
            if axis == 0:
                errors.append(float((b[:, :, r:-r] - a[:, :, r - s : a.shape[2] - r - s]).pow(2).mean()))
            else:
                errors.append(float((b[:, r:-r] - a[:, r - s : a.shape[1] - r - s]).pow(2).mean()))
        total += min(range(len(errors)), key=errors.__getitem__) - r
    return float(total)


def caption_checks(video: torch.Tensor, caption: str) -> dict[str, bool]:
    """Checks that ``video`` [3, T, H, W] in [-1, 1] looks like ``caption``; {check name: passed}.

    - "colour": the mean colour of the bright pixels (largest channel > 0.3) has the caption
      colour's positive channels above the others by ``COLOUR_MARGIN``;
    - "motion" (moves): the bright pixels' centre travels at least ``MIN_TRAVEL`` frame heights in
      the caption's direction (last quarter of the clip against the first), more than across it;
    - "rotation" (rotates): the centre drifts less than ``MAX_DRIFT`` and the shape changes by at
      least ``MIN_SHAPE_CHANGE`` of its area;
    - "pan" (camera pans): the content moves against the camera's direction, by at least
      ``MIN_TRAVEL`` frame heights (shift search between consecutive frames along the pan axis).
    """
    scene = scene_of(caption)
    video = video.detach().float().cpu()
    checks = {"colour": _colour_ok(video, scene.colour)}
    height = video.shape[2]
    if scene.kind == "moves":
        travel = _quarter_travel(_centroids(video))
        dx, dy = DIRECTIONS[scene.direction]
        along = float(travel[0] * dx + travel[1] * dy)
        across = float((travel[0] * dy - travel[1] * dx).abs())
        checks["motion"] = bool(along >= MIN_TRAVEL and along > across)
    elif scene.kind == "rotates":
        track = _centroids(video)
        drift = float((track - track.nanmean(0)).norm(dim=1).nan_to_num(math.inf).max())
        bright = _bright(video)
        change = float((bright - bright[0]).abs().sum((1, 2)).max() / bright[0].sum().clamp_min(1))
        checks["rotation"] = bool(drift < MAX_DRIFT and change >= MIN_SHAPE_CHANGE)
    else:
        dx, dy = DIRECTIONS[scene.direction]
        axis = 0 if dx else 1
        shift = _content_shift(video, axis) / height
        checks["pan"] = bool(-shift * (dx + dy) >= MIN_TRAVEL)
    return checks
