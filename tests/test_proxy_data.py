"""Procedural proxy videos: deterministic per seed, the right shapes, natural textures, and each looks like its caption."""

import pytest
import torch

from pipelines.proxy import PROXY_CAPTIONS, PROXY_SAMPLE_PROMPTS, PROXY_VOCAB, caption_checks, procedural_videos
from pipelines.proxy.data import CONTENTS, KINDS, scene_of
from pipelines.proxy.model import proxy_tokenizer
from pipelines.proxy.textures import LEVELS, fractal_noise, texture_bank

SMALL = dict(frames=17, height=64, width=96)  # the CPU size: the same scene as any other size


def test_shapes_range_and_labels():
    batch = procedural_videos(6, seed=0)
    assert batch.video.shape == (6, 3, 33, 64, 96) and batch.video.dtype == torch.float32
    assert batch.video.min() >= -1 and batch.video.max() <= 1
    assert batch.object_mask.shape == (6, 33, 64, 96)
    assert batch.captions == tuple(PROXY_CAPTIONS[i] for i in batch.labels.tolist())


def test_deterministic_per_seed_and_different_across_seeds():
    a = procedural_videos(4, seed=7, **SMALL)
    b = procedural_videos(4, generator=torch.Generator().manual_seed(7), **SMALL)
    assert torch.equal(a.video, b.video) and torch.equal(a.labels, b.labels)
    c = procedural_videos(4, seed=8, **SMALL)
    assert not torch.equal(a.video, c.video)
    # Fixed labels, other seed: same captions, other videos (positions, speeds, views).
    d = procedural_videos(4, seed=9, labels=a.labels, **SMALL)
    assert d.captions == a.captions and not torch.equal(a.video, d.video)
    # A generator advances: two draws differ.
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(procedural_videos(4, generator=g, **SMALL).video, procedural_videos(4, generator=g, **SMALL).video)


def test_kinds_are_drawn_by_weight():
    labels = procedural_videos(200, seed=3, frames=5, height=16, width=32).labels
    kinds = [scene_of(PROXY_CAPTIONS[i]).kind for i in labels.tolist()]
    counts = {k: kinds.count(k) for k in KINDS}
    assert counts["moves"] > counts["pan"] > counts["zoom"] > 0 and counts["rotates"] > 0, counts


@pytest.mark.parametrize("size", [SMALL, dict(frames=9, height=32, width=48), dict(frames=33, height=64, width=160)])
def test_captions_look_like_themselves(size):
    """Every fourth caption (all kinds, colours, shapes, directions, contents) at several sizes and aspects."""
    labels = list(range(0, len(PROXY_CAPTIONS), 4))
    for start in range(0, len(labels), 48):
        part = labels[start : start + 48]
        batch = procedural_videos(len(part), seed=start, labels=part, **size)
        for video, caption in zip(batch.video, batch.captions):
            checks = caption_checks(video, caption)
            assert all(checks.values()), (caption, size, checks)


@pytest.mark.parametrize("object_size", [(0.18, 0.26), (0.3, 0.3)])
def test_larger_objects_still_look_like_their_captions(object_size):
    """Training may draw larger objects (``object_size``, up to MAX_OBJECT_SIZE): every fourth object
    caption still passes its checks, and the objects cover more of the frame than the default's."""
    labels = [i for i in range(0, len(PROXY_CAPTIONS), 4) if scene_of(PROXY_CAPTIONS[i]).kind in ("moves", "rotates")][:48]
    default = procedural_videos(len(labels), seed=5, labels=labels, **SMALL)
    large = procedural_videos(len(labels), seed=5, labels=labels, object_size=object_size, **SMALL)
    for video, caption in zip(large.video, large.captions):
        checks = caption_checks(video, caption)
        assert all(checks.values()), (caption, object_size, checks)
    assert large.object_mask.mean() > 2 * default.object_mask.mean()
    for bad in ((0.0, 0.1), (0.2, 0.1), (0.1, 0.5), (0.1,)):
        with pytest.raises(ValueError, match="object_size"):
            procedural_videos(1, seed=0, object_size=bad, **SMALL)


def test_checks_can_fail():
    prompts = ["a red circle moves right over grass", "camera pans left over bricks", "a yellow triangle rotates over sand",
               "a green square moves up", "camera zooms in over a cat"]
    videos = procedural_videos(len(prompts), seed=1, labels=prompts, **SMALL).video
    assert caption_checks(videos[0], "a red circle moves left over grass") == {"colour": True, "motion": False}
    assert caption_checks(videos[0], "a blue circle moves right") == {"colour": False, "motion": True}
    assert caption_checks(videos[1], "camera pans right over bricks") == {"pan": False}
    assert caption_checks(videos[1], "camera pans up over bricks") == {"pan": False}
    assert caption_checks(videos[2], "a yellow triangle moves right")["motion"] is False
    assert caption_checks(videos[3], "a green square rotates")["rotation"] is False
    assert caption_checks(videos[4], "camera zooms out over a cat") == {"zoom": False}
    assert caption_checks(videos[0], "camera zooms in over grass") == {"zoom": False}  # a still view
    still = videos[1][:, :1].expand_as(videos[1])
    assert caption_checks(still, "camera pans left over bricks") == {"pan": False}
    assert caption_checks(torch.full_like(videos[0], -0.8), "a red circle moves right") == {"colour": False, "motion": False}


def test_what_the_captions_promise():
    batch = procedural_videos(3, seed=2, labels=["a red circle moves right", "a blue square moves down over coffee",
                                                 "camera pans right over an astronaut"], **SMALL)
    red, blue, pan = batch.video
    mask = batch.object_mask[0] > 0.99
    assert mask.any() and (red[0][mask] > red[1][mask] + 1).all()  # the object is red
    xs = torch.arange(96.0)
    visible = batch.object_mask[0].sum((1, 2)) > 0
    cx = (batch.object_mask[0] * xs).sum((1, 2)) / batch.object_mask[0].sum((1, 2))
    assert (cx[visible][-1] - cx[visible][0]) > 20  # it moves right
    ys = torch.arange(64.0)[:, None]
    cy = (batch.object_mask[1] * ys).sum((1, 2)) / batch.object_mask[1].sum((1, 2))
    assert cy[-1] - cy[0] > 10  # image rows grow downwards
    assert batch.object_mask[2].abs().sum() == 0  # a pan has no object
    saturation = pan.amax(0) - pan.amin(0)
    assert saturation.max() < 0.9 < (red.amax(0) - red.amin(0)).max()  # only objects are saturated


def test_backgrounds_are_natural_and_local():
    """Nearby pixels are alike, far ones are not: the structure that rewards local attention (the first
    proxy's flat backgrounds had none)."""
    video = procedural_videos(8, seed=4, labels=[f"camera pans left over {c}" for c in CONTENTS[:8]], frames=9, height=64, width=96).video
    frame = video[:, :, 0].mean(1)  # [B, H, W] luminance
    frame = frame - frame.mean((1, 2), keepdim=True)

    def correlation(shift: int) -> float:
        a, b = frame[:, :, :-shift], frame[:, :, shift:]
        return float((a * b).mean() / (a.std() * b.std()))

    assert correlation(1) > 0.6 and correlation(1) > correlation(4) > correlation(32)
    assert float(frame.std()) > 0.05  # textured, not flat


def test_texture_bank():
    bank = texture_bank()
    assert set(bank.images) == set(LEVELS)
    n = len(bank.names)
    assert all(bank.images[s].shape == (n, 3, s, s) for s in LEVELS)
    assert all(bank.images[s].min() >= -1 and bank.images[s].max() <= 1 for s in LEVELS)
    assert [bank.names[int(i[0])] for i in bank.content_images] == list(CONTENTS)
    assert bank.level(64) == 192 and bank.level(16) == 96 and bank.level(128) == 384
    # Fractal noise: periodic and with the spectrum it was asked for (power falls as 1/f^beta).
    g = torch.Generator().manual_seed(0)
    field = fractal_noise(128, 2.0, g)
    power = torch.fft.fft2(field).abs().square()
    low, high = power[1:4, 1:4].mean(), power[30:34, 30:34].mean()
    assert float(low / high) > 50


def test_vocabulary_and_sample_prompts():
    tokenizer = proxy_tokenizer()
    unk = tokenizer.unk_token_id
    for caption in PROXY_CAPTIONS:
        ids = tokenizer(caption)["input_ids"]
        assert unk not in ids and len(ids) == len(caption.split()) <= 16
    assert len(set(PROXY_VOCAB)) == len(PROXY_VOCAB) and len(set(PROXY_CAPTIONS)) == len(PROXY_CAPTIONS)
    assert set(PROXY_SAMPLE_PROMPTS) <= set(PROXY_CAPTIONS)
    scenes = [scene_of(p) for p in PROXY_SAMPLE_PROMPTS]
    for kind, n in (("moves", 4), ("rotates", 4), ("pan", 4), ("zoom", 2)):  # the issue counts 3 of 4 per kind
        assert sum(s.kind == kind for s in scenes) == n
    assert {s.direction for s in scenes if s.kind in ("moves", "pan")} == {"left", "right", "up", "down"}


def test_argument_errors():
    with pytest.raises(ValueError, match="either"):
        procedural_videos(1, **SMALL)
    with pytest.raises(ValueError, match="either"):
        procedural_videos(1, seed=0, generator=torch.Generator(), **SMALL)
    with pytest.raises(ValueError, match="not a proxy caption"):
        procedural_videos(1, seed=0, labels=["a purple cat"], **SMALL)
    with pytest.raises(ValueError, match="2 captions"):
        procedural_videos(2, seed=0, labels=[0], **SMALL)


def test_missing_photographs_say_what_to_install(monkeypatch):
    import importlib.util

    from pipelines.proxy import textures

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"sparse-vdit\[train\]"):
        textures.photo_folder()


def test_kind_weights_choose_the_mix():
    """procedural_videos(kind_weights=...): only the weighted kinds are drawn, the default draw is
    unchanged, and bad weights are refused; the training option parses KIND:WEIGHT lists."""
    from pipelines.proxy.data import KIND_WEIGHTS, KINDS, check_kind_weights, scene_of
    from pipelines.proxy.train import parse_args

    def kinds(**kwargs):
        batch = procedural_videos(24, frames=2, height=16, width=24, seed=3, **kwargs)
        return [scene_of(c).kind for c in batch.captions]

    assert kinds() == kinds(kind_weights=KIND_WEIGHTS) == kinds(kind_weights=dict(zip(KINDS, KIND_WEIGHTS)))
    assert set(kinds(kind_weights={"moves": 1.0})) == {"moves"}
    assert set(kinds(kind_weights=(0, 0, 1, 1))) == {"pan", "zoom"}
    for bad in ((1, 2), (1, -1, 0, 0), (0, 0, 0, 0), {"walks": 1.0}):
        with pytest.raises(ValueError, match="kind"):
            check_kind_weights(bad)
    assert parse_args(["--kind-weights", "moves:0.6,pan:0.4"]).kind_weights == (0.6, 0.0, 0.4, 0.0)
    assert parse_args([]).kind_weights == KIND_WEIGHTS
    with pytest.raises(SystemExit):
        parse_args(["--kind-weights", "moves"])
