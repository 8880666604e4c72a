"""TokenLayout: where video and text tokens sit, built from a latent's size and patch (geometry only;
the diffusers families' layouts are tested in test_pipelines_families.py)."""

from __future__ import annotations

import pytest
import torch

from sparse_vdit.token_layout import TokenLayout


# --------------------------------------------------------------------------- from a latent
def test_from_latent_patchifies():
    layout = TokenLayout.from_latent(21, 60, 104, patch_size=(1, 2, 2))
    assert (layout.frames, layout.rows, layout.cols) == (21, 30, 52)
    assert (layout.text_len, layout.text_position) == (0, "none")
    assert layout.frame_len == 1560 and layout.seq_len == 32_760
    with_text = TokenLayout.from_latent(22, 96, 170, patch_size=(2, 2, 2), text_len=226, text_position="before")
    assert (with_text.frames, with_text.rows, with_text.cols) == (11, 48, 85)
    assert with_text.video_start == 226 and with_text.seq_len == 44_880 + 226
    assert TokenLayout.from_latent(3, 4, 5) == TokenLayout(3, 4, 5)  # patch (1, 1, 1)


@pytest.mark.parametrize(
    "shape, patch, what",
    [
        ((21, 60, 105), (1, 2, 2), "width 105"),
        ((21, 61, 104), (1, 2, 2), "height 61"),
        ((21, 96, 170), (2, 2, 2), "frames 21"),
    ],
)
def test_from_latent_non_divisible(shape, patch, what):
    with pytest.raises(ValueError, match=f"latent {what} is not a multiple of the patch size"):
        TokenLayout.from_latent(*shape, patch_size=patch)


def test_from_latent_bad_patch_and_text():
    with pytest.raises(ValueError, match="patch sizes must be >= 1"):
        TokenLayout.from_latent(2, 4, 4, patch_size=(0, 2, 2))
    with pytest.raises(ValueError, match="disagree"):
        TokenLayout.from_latent(2, 4, 4, text_len=5)


# --------------------------------------------------------------------------- index <-> position
LAYOUTS = [
    pytest.param(TokenLayout(3, 4, 5), id="no-text"),
    pytest.param(TokenLayout(3, 4, 5, text_len=7, text_position="before"), id="text-before"),
    pytest.param(TokenLayout(2, 3, 7, text_len=7, text_position="after"), id="text-after"),
    pytest.param(TokenLayout(1, 1, 113), id="1x1x113"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_token_index_position_round_trip(layout):
    f, r, c = torch.meshgrid(
        torch.arange(layout.frames), torch.arange(layout.rows), torch.arange(layout.cols), indexing="ij"
    )
    idx = layout.token_index(f, r, c)
    # Frame-major, row-major, contiguous: the video tokens are exactly the video slice, in order.
    assert torch.equal(idx.flatten(), torch.arange(layout.video_start, layout.video_start + layout.video_len))
    pf, pr, pc = layout.position(idx)
    assert torch.equal(pf, f) and torch.equal(pr, r) and torch.equal(pc, c)
    # Ints work as well as tensors.
    assert layout.token_index(layout.frames - 1, layout.rows - 1, layout.cols - 1) == layout.video_start + layout.video_len - 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_position_of_every_index_and_is_text(layout):
    idx = torch.arange(layout.seq_len)
    f, r, c = layout.position(idx)
    text = layout.is_text(idx)
    assert int(text.sum()) == layout.text_len
    assert torch.equal(text[layout.text_slice], torch.ones(layout.text_len, dtype=torch.bool))
    assert not bool(text[layout.video_slice].any())
    # Text tokens map to -1 everywhere; video tokens to a valid grid position that maps back.
    assert bool((f[text] == -1).all() and (r[text] == -1).all() and (c[text] == -1).all())
    vid = ~text
    assert bool((f[vid] >= 0).all() and (f[vid] < layout.frames).all())
    assert bool((r[vid] >= 0).all() and (r[vid] < layout.rows).all())
    assert bool((c[vid] >= 0).all() and (c[vid] < layout.cols).all())
    assert torch.equal(layout.token_index(f[vid], r[vid], c[vid]), idx[vid])


def test_position_broadcast_shapes():
    layout = TokenLayout(2, 3, 4, text_len=5, text_position="before")
    q = torch.arange(layout.seq_len).view(1, 1, -1, 1)
    k = torch.arange(layout.seq_len).view(1, 1, 1, -1)
    fq, _, _ = layout.position(q)
    fk, _, _ = layout.position(k)
    same = fq == fk
    assert same.shape == (1, 1, layout.seq_len, layout.seq_len)
    assert bool(same[0, 0, 5, 5 + 11]) and not bool(same[0, 0, 5, 5 + 12])


def test_describe_mentions_sizes():
    text = TokenLayout(21, 30, 52, text_len=512, text_position="after").describe()
    assert "21x30x52" in text and "512 text after" in text and str(32_760 + 512) in text


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(text_len=5), "disagree"),  # text without a position
        (dict(text_len=0, text_position="before"), "disagree"),
        (dict(text_len=3, text_position="middle"), "text_position must be"),
        (dict(frames=0), ">= 1"),
        (dict(cols=-1), ">= 1"),
    ],
)
def test_inconsistent_constructor_args(kwargs, match):
    args = dict(frames=2, rows=3, cols=4) | kwargs
    with pytest.raises(ValueError, match=match):
        TokenLayout(**args)


def test_frozen():
    layout = TokenLayout(2, 3, 4)
    with pytest.raises(Exception):
        layout.frames = 3  # type: ignore[misc]


def test_text_length_is_a_count():
    with pytest.raises(ValueError, match=r"text_len must be an integer >= 0, got -3"):
        TokenLayout(2, 3, 4, text_len=-3)
    with pytest.raises(ValueError, match=r"rows must be an integer, got 2.5"):
        TokenLayout(2, 2.5, 4)
    assert TokenLayout(torch.tensor(2).item(), 3, 4) == TokenLayout(2, 3, 4)
