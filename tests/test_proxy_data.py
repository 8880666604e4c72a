"""Procedural proxy videos: deterministic per seed, the right shapes, and each looks like its caption."""

import pytest
import torch

from pipelines.proxy import PROXY_CAPTIONS, PROXY_SAMPLE_PROMPTS, PROXY_VOCAB, caption_checks, procedural_videos
from pipelines.proxy.data import scene_of
from pipelines.proxy.model import proxy_tokenizer

SMALL = dict(frames=17, height=64, width=96)  # the same motion in frame-height units, 4x fewer pixels


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
    # Fixed labels, other seed: same captions, other videos (positions, speeds, backgrounds).
    d = procedural_videos(4, seed=9, labels=a.labels, **SMALL)
    assert d.captions == a.captions and not torch.equal(a.video, d.video)
    # A generator advances: two draws differ.
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(procedural_videos(4, generator=g, **SMALL).video, procedural_videos(4, generator=g, **SMALL).video)


def test_every_caption_looks_like_itself():
    for start in range(0, len(PROXY_CAPTIONS), 30):
        labels = list(range(start, min(start + 30, len(PROXY_CAPTIONS))))
        batch = procedural_videos(len(labels), seed=start, labels=labels, **SMALL)
        for video, caption in zip(batch.video, batch.captions):
            checks = caption_checks(video, caption)
            assert all(checks.values()), (caption, checks)


def test_checks_can_fail():
    prompts = ["a red circle moves right", "camera pans left over blue stripes", "a yellow triangle rotates", "a green square moves up"]
    videos = procedural_videos(len(prompts), seed=1, labels=prompts, **SMALL).video
    assert caption_checks(videos[0], "a red circle moves left") == {"colour": True, "motion": False}
    assert caption_checks(videos[0], "a blue circle moves right") == {"colour": False, "motion": True}
    assert caption_checks(videos[1], "camera pans right over blue stripes")["pan"] is False
    assert caption_checks(videos[1], "camera pans up over blue stripes")["pan"] is False
    assert caption_checks(videos[2], "a yellow triangle moves right")["motion"] is False
    assert caption_checks(videos[3], "a green square rotates")["rotation"] is False
    assert caption_checks(torch.full_like(videos[0], -0.8), "a red circle moves right") == {"colour": False, "motion": False}


def test_what_the_captions_promise():
    batch = procedural_videos(3, seed=2, labels=["a red circle moves right", "a blue square moves down", "camera pans right over green checkers"], **SMALL)
    red, blue, pan = batch.video
    mask = batch.object_mask[0] > 0.99
    assert (red[0][mask] > red[1][mask] + 1).all()  # the object is red
    xs = torch.arange(96.0)
    cx = (batch.object_mask[0] * xs).sum((1, 2)) / batch.object_mask[0].sum((1, 2))
    assert (cx.diff() > 0).all()  # and moves right every frame
    ys = torch.arange(64.0)[:, None]
    cy = (batch.object_mask[1] * ys).sum((1, 2)) / batch.object_mask[1].sum((1, 2))
    assert (cy.diff() > 0).all()  # image rows grow downwards
    assert batch.object_mask[2].abs().sum() == 0  # a pan has no object
    assert pan[1].mean() > pan[0].mean() + 0.5 and pan[1].mean() > pan[2].mean() + 0.5  # green texture


def test_vocabulary_and_sample_prompts():
    tokenizer = proxy_tokenizer()
    unk = tokenizer.unk_token_id
    for caption in PROXY_CAPTIONS:
        ids = tokenizer(caption)["input_ids"]
        assert unk not in ids and len(ids) == len(caption.split()) <= 16
    assert len(set(PROXY_VOCAB)) == len(PROXY_VOCAB)
    assert set(PROXY_SAMPLE_PROMPTS) <= set(PROXY_CAPTIONS)
    kinds = {(scene_of(p).kind, scene_of(p).direction) for p in PROXY_SAMPLE_PROMPTS}
    assert len(kinds) == len(PROXY_SAMPLE_PROMPTS) - 1  # every kind and direction of motion, two rotations


def test_argument_errors():
    with pytest.raises(ValueError, match="either"):
        procedural_videos(1, **SMALL)
    with pytest.raises(ValueError, match="either"):
        procedural_videos(1, seed=0, generator=torch.Generator(), **SMALL)
    with pytest.raises(ValueError, match="not a proxy caption"):
        procedural_videos(1, seed=0, labels=["a purple cat"], **SMALL)
    with pytest.raises(ValueError, match="2 captions"):
        procedural_videos(2, seed=0, labels=[0], **SMALL)
