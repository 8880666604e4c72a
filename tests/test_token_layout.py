"""TokenLayout: where video and text tokens sit, built from diffusers transformer configs."""

from __future__ import annotations

import pytest
import torch

from sparse_vdit.token_layout import HUNYUAN_DEFAULT_TEXT_LEN, TokenLayout

diffusers = pytest.importorskip("diffusers")


# --------------------------------------------------------------------------- tiny diffusers models
@pytest.fixture(scope="module")
def tiny_wan():
    return diffusers.WanTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=16, ffn_dim=16, num_layers=1, rope_max_seq_len=32,
    )


@pytest.fixture(scope="module")
def tiny_hunyuan():
    return diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4),
    )


def _tiny_cogvideox(**extra):
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=5, **extra,
    )


@pytest.fixture(scope="module")
def tiny_cogvideox():
    return _tiny_cogvideox()


@pytest.fixture(scope="module")
def tiny_cogvideox15():
    return _tiny_cogvideox(patch_size_t=2, ofs_embed_dim=8, use_rotary_positional_embeddings=True)


# --------------------------------------------------------------------------- from models / configs
def test_wan_from_model(tiny_wan):
    assert tuple(tiny_wan.config.patch_size) == (1, 2, 2)
    layout = TokenLayout.from_transformer_config(tiny_wan, 3, 6, 10)
    assert (layout.frames, layout.rows, layout.cols) == (3, 3, 5)
    assert (layout.text_len, layout.text_position) == (0, "none")
    assert layout.seq_len == layout.video_len == 45
    assert layout.video_slice == slice(0, 45)


def test_hunyuan_from_model_text_after(tiny_hunyuan):
    layout = TokenLayout.from_transformer_config(tiny_hunyuan, 5, 8, 12)
    assert (layout.frames, layout.rows, layout.cols) == (5, 4, 6)
    assert layout.text_len == HUNYUAN_DEFAULT_TEXT_LEN == 256
    assert layout.text_position == "after"
    assert layout.video_start == 0 and layout.text_start == 120
    assert layout.text_slice == slice(120, 376) and layout.seq_len == 376
    short = TokenLayout.from_transformer_config(tiny_hunyuan, 5, 8, 12, text_len=77)
    assert (short.text_len, short.text_position, short.seq_len) == (77, "after", 197)
    none = TokenLayout.from_transformer_config(tiny_hunyuan, 5, 8, 12, text_len=0)
    assert (none.text_len, none.text_position, none.seq_len) == (0, "none", 120)


def test_cogvideox_from_model_text_before(tiny_cogvideox):
    assert tiny_cogvideox.config.patch_size_t is None
    layout = TokenLayout.from_transformer_config(tiny_cogvideox, 13, 60, 90)
    assert (layout.frames, layout.rows, layout.cols) == (13, 30, 45)
    assert (layout.text_len, layout.text_position) == (226, "before")
    assert layout.video_start == 226 and layout.text_start == 0
    assert layout.video_slice == slice(226, 226 + 13 * 30 * 45)
    assert layout.seq_len == 226 + 17550


def test_cogvideox15_from_model_patch_t(tiny_cogvideox15):
    layout = TokenLayout.from_transformer_config(tiny_cogvideox15, 4, 6, 10)
    assert (layout.frames, layout.rows, layout.cols) == (2, 3, 5)
    assert (layout.text_len, layout.text_position) == (226, "before")
    with pytest.raises(ValueError, match="frames 5 is not a multiple of the patch size 2"):
        TokenLayout.from_transformer_config(tiny_cogvideox15, 5, 6, 10)


def test_plain_dict_configs():
    wan = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2]}
    assert TokenLayout.from_transformer_config(wan, 21, 60, 104).seq_len == 32_760
    hy = {"_class_name": "HunyuanVideoTransformer3DModel", "patch_size": 2, "patch_size_t": 1}
    assert TokenLayout.from_transformer_config(hy, 1, 2, 2).seq_len == 1 + 256
    cog = {"_class_name": "CogVideoXTransformer3DModel", "patch_size": 2, "patch_size_t": None, "max_text_seq_length": 226}
    assert TokenLayout.from_transformer_config(cog, 1, 2, 2, text_len=10).seq_len == 11
    # A model's config (a FrozenDict without _class_name) works with an explicit class_name.
    layout = TokenLayout.from_transformer_config({"patch_size": (1, 2, 2)}, 2, 4, 4, class_name="WanTransformer3DModel")
    assert (layout.frames, layout.rows, layout.cols) == (2, 2, 2)


def test_model_config_object_needs_class_name(tiny_wan):
    with pytest.raises(ValueError, match="unsupported transformer None"):
        TokenLayout.from_transformer_config(tiny_wan.config, 3, 6, 10)
    layout = TokenLayout.from_transformer_config(tiny_wan.config, 3, 6, 10, class_name="WanTransformer3DModel")
    assert layout == TokenLayout.from_transformer_config(tiny_wan, 3, 6, 10)


# --------------------------------------------------------------------------- full-size numbers
def test_full_size_wan_480p():
    wan = {"_class_name": "WanTransformer3DModel", "patch_size": (1, 2, 2)}
    layout = TokenLayout.from_transformer_config(wan, 21, 60, 104)
    assert (layout.frames, layout.rows, layout.cols) == (21, 30, 52)
    assert layout.frame_len == 1560 and layout.seq_len == 32_760


def test_full_size_hunyuan_720p(tiny_hunyuan):
    layout = TokenLayout.from_transformer_config(tiny_hunyuan, 33, 90, 160)
    assert (layout.frames, layout.rows, layout.cols) == (33, 45, 80)
    assert layout.video_len == 118_800 and layout.text_len == 256
    assert layout.seq_len == 118_800 + 256
    assert layout.text_slice == slice(118_800, 119_056)


def test_full_size_cogvideox15(tiny_cogvideox15):
    layout = TokenLayout.from_transformer_config(tiny_cogvideox15, 22, 96, 170)
    assert (layout.frames, layout.rows, layout.cols) == (11, 48, 85)
    assert layout.video_len == 44_880 and layout.seq_len == 44_880 + 226
    assert layout.video_start == 226


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
def test_unsupported_class():
    with pytest.raises(ValueError, match="unsupported transformer 'FluxTransformer2DModel'.*WanTransformer3DModel"):
        TokenLayout.from_transformer_config({"_class_name": "FluxTransformer2DModel", "patch_size": 2}, 1, 2, 2)


@pytest.mark.parametrize(
    "config, shape, what",
    [
        ({"_class_name": "WanTransformer3DModel", "patch_size": (1, 2, 2)}, (21, 60, 105), "width 105"),
        ({"_class_name": "WanTransformer3DModel", "patch_size": (1, 2, 2)}, (21, 61, 104), "height 61"),
        ({"_class_name": "HunyuanVideoTransformer3DModel", "patch_size": 2, "patch_size_t": 1}, (33, 90, 161), "width 161"),
        (
            {"_class_name": "CogVideoXTransformer3DModel", "patch_size": 2, "patch_size_t": 2, "max_text_seq_length": 226},
            (21, 96, 170),
            "frames 21",
        ),
    ],
)
def test_non_divisible_latent(config, shape, what):
    with pytest.raises(ValueError, match=f"latent {what} is not a multiple of the patch size"):
        TokenLayout.from_transformer_config(config, *shape)


def test_wan_rejects_text_len():
    with pytest.raises(ValueError, match="no text tokens"):
        TokenLayout.from_transformer_config({"_class_name": "WanTransformer3DModel", "patch_size": (1, 2, 2)}, 1, 2, 2, text_len=5)


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
