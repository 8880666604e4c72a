"""The family registry: one record per model family, token layouts read from diffusers transformers
and configs, subclasses of supported classes, and every record's tiny model served end to end."""

from __future__ import annotations

import pytest
import torch

from pipelines import AttentionMethod, FullAttention, apply_sparse_attention, family_of, model_info, token_layout_of
from pipelines.families import FAMILIES, SUPPORTED_TRANSFORMERS, hunyuan_video

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
    layout = token_layout_of(tiny_wan, 3, 6, 10)
    assert (layout.frames, layout.rows, layout.cols) == (3, 3, 5)
    assert (layout.text_len, layout.text_position) == (0, "none")
    assert layout.seq_len == layout.video_len == 45
    assert layout.video_slice == slice(0, 45)


def test_hunyuan_from_model_text_after(tiny_hunyuan):
    layout = token_layout_of(tiny_hunyuan, 5, 8, 12)
    assert (layout.frames, layout.rows, layout.cols) == (5, 4, 6)
    assert layout.text_len == hunyuan_video.PIPELINE_TEXT_LEN == 256
    assert layout.text_position == "after"
    assert layout.video_start == 0 and layout.text_start == 120
    assert layout.text_slice == slice(120, 376) and layout.seq_len == 376
    short = token_layout_of(tiny_hunyuan, 5, 8, 12, text_len=77)
    assert (short.text_len, short.text_position, short.seq_len) == (77, "after", 197)
    none = token_layout_of(tiny_hunyuan, 5, 8, 12, text_len=0)
    assert (none.text_len, none.text_position, none.seq_len) == (0, "none", 120)


def test_cogvideox_from_model_text_before(tiny_cogvideox):
    assert tiny_cogvideox.config.patch_size_t is None
    layout = token_layout_of(tiny_cogvideox, 13, 60, 90)
    assert (layout.frames, layout.rows, layout.cols) == (13, 30, 45)
    assert (layout.text_len, layout.text_position) == (226, "before")
    assert layout.video_start == 226 and layout.text_start == 0
    assert layout.video_slice == slice(226, 226 + 13 * 30 * 45)
    assert layout.seq_len == 226 + 17550


def test_cogvideox15_from_model_patch_t(tiny_cogvideox15):
    layout = token_layout_of(tiny_cogvideox15, 4, 6, 10)
    assert (layout.frames, layout.rows, layout.cols) == (2, 3, 5)
    assert (layout.text_len, layout.text_position) == (226, "before")
    with pytest.raises(ValueError, match="frames 5 is not a multiple of the patch size 2"):
        token_layout_of(tiny_cogvideox15, 5, 6, 10)


def test_plain_dict_configs():
    wan = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2]}
    assert token_layout_of(wan, 21, 60, 104).seq_len == 32_760
    hy = {"_class_name": "HunyuanVideoTransformer3DModel", "patch_size": 2, "patch_size_t": 1}
    assert token_layout_of(hy, 1, 2, 2).seq_len == 1 + 256
    cog = {"_class_name": "CogVideoXTransformer3DModel", "patch_size": 2, "patch_size_t": None, "max_text_seq_length": 226}
    assert token_layout_of(cog, 1, 2, 2, text_len=10).seq_len == 11
    # A model's config (a FrozenDict without _class_name) works once it names its class.
    layout = token_layout_of({"patch_size": (1, 2, 2), "_class_name": "WanTransformer3DModel"}, 2, 4, 4)
    assert (layout.frames, layout.rows, layout.cols) == (2, 2, 2)


def test_model_config_object_needs_class_name(tiny_wan):
    with pytest.raises(ValueError, match="no _class_name.*pass the transformer"):
        token_layout_of(tiny_wan.config, 3, 6, 10)
    layout = token_layout_of({**tiny_wan.config, "_class_name": "WanTransformer3DModel"}, 3, 6, 10)
    assert layout == token_layout_of(tiny_wan, 3, 6, 10)


# --------------------------------------------------------------------------- full-size numbers
def test_full_size_wan_480p():
    wan = {"_class_name": "WanTransformer3DModel", "patch_size": (1, 2, 2)}
    layout = token_layout_of(wan, 21, 60, 104)
    assert (layout.frames, layout.rows, layout.cols) == (21, 30, 52)
    assert layout.frame_len == 1560 and layout.seq_len == 32_760


def test_full_size_hunyuan_720p(tiny_hunyuan):
    layout = token_layout_of(tiny_hunyuan, 33, 90, 160)
    assert (layout.frames, layout.rows, layout.cols) == (33, 45, 80)
    assert layout.video_len == 118_800 and layout.text_len == 256
    assert layout.seq_len == 118_800 + 256
    assert layout.text_slice == slice(118_800, 119_056)


def test_full_size_cogvideox15(tiny_cogvideox15):
    layout = token_layout_of(tiny_cogvideox15, 22, 96, 170)
    assert (layout.frames, layout.rows, layout.cols) == (11, 48, 85)
    assert layout.video_len == 44_880 and layout.seq_len == 44_880 + 226
    assert layout.video_start == 226


# --------------------------------------------------------------------------- errors
def test_unsupported_class():
    with pytest.raises(TypeError, match="does not support FluxTransformer2DModel.*WanTransformer3DModel"):
        token_layout_of({"_class_name": "FluxTransformer2DModel", "patch_size": 2}, 1, 2, 2)
    with pytest.raises(TypeError, match="does not support Linear: supported transformers are WanTransformer3DModel"):
        token_layout_of(torch.nn.Linear(2, 2), 1, 2, 2)


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
        token_layout_of(config, *shape)


def test_wan_rejects_text_len():
    with pytest.raises(ValueError, match="no text tokens"):
        token_layout_of({"_class_name": "WanTransformer3DModel", "patch_size": (1, 2, 2)}, 1, 2, 2, text_len=5)




# --------------------------------------------------------------------------- the registry
class SeenSequence(AttentionMethod):
    """Records what the family's token layout says and what the processor hands the method."""

    def __init__(self):
        self.seen = []

    def __call__(self, call, q, k, v):
        self.seen.append((call.token_layout.seq_len, q.shape[2], call.kv_lens))
        return None


@pytest.mark.parametrize("name", list(FAMILIES))
@torch.no_grad()
def test_every_record_serves_its_tiny_model(name):
    """A record's tiny model runs with our processors on every listed layer, the token layout it
    computes is the sequence the processor sees, and FullAttention reproduces the stock output."""
    family = FAMILIES[name]
    model = family.tiny_transformer()
    kwargs = family.tiny_inputs(model)
    assert family_of(model) is family
    info = model_info(model)
    assert info.family == family.class_name == name and info.num_layers == len(family.layer_names(model)) >= 1
    stock = model(**kwargs)[0]
    method = SeenSequence()
    with apply_sparse_attention(model, method):
        ours = model(**kwargs)[0]
    assert len(method.seen) == info.num_layers
    assert all(layout_len == q_len for layout_len, q_len, _ in method.seen)
    batch = kwargs["hidden_states"].shape[0]
    for seq_len, _, kv_lens in method.seen:  # the tiny prompts of families with text after the video are padded
        assert (kv_lens is not None) == (family.text_position == "after")
        assert kv_lens is None or (kv_lens.dtype == torch.int32 and kv_lens.shape == (batch,) and bool((kv_lens <= seq_len).all()))
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5 * stock.abs().max().item())
    with apply_sparse_attention(model, FullAttention()):
        torch.testing.assert_close(model(**kwargs)[0], stock, rtol=1e-5, atol=1e-5 * stock.abs().max().item())


def test_registry_lists_the_supported_classes():
    assert SUPPORTED_TRANSFORMERS == (
        "WanTransformer3DModel", "HunyuanVideoTransformer3DModel", "CogVideoXTransformer3DModel",
        "WanVACETransformer3DModel", "SkyReelsV2Transformer3DModel", "WanAnimateTransformer3DModel",
        "HunyuanVideo15Transformer3DModel", "HunyuanVideoFramepackTransformer3DModel", "LTXVideoTransformer3DModel",
        "LTX2VideoTransformer3DModel", "MochiTransformer3DModel", "Kandinsky5Transformer3DModel",
        "ConsisIDTransformer3DModel", "ChronoEditTransformer3DModel", "CosmosTransformer3DModel",
        "EasyAnimateTransformer3DModel", "AnyFlowTransformer3DModel", "Kandinsky6Transformer3DModel",
        "MotifVideoTransformer3DModel", "HeliosTransformer3DModel", "AllegroTransformer3DModel",
        "MiniMaxH3Transformer3DModel",
    )
    assert all(f.class_name == name for name, f in FAMILIES.items())


@torch.no_grad()
def test_subclass_of_a_supported_transformer_is_served():
    class MyWan(diffusers.WanTransformer3DModel):
        pass

    base = FAMILIES["WanTransformer3DModel"].tiny_transformer()
    model = MyWan.from_config(base.config).eval()
    model.load_state_dict(base.state_dict())
    kwargs = FAMILIES["WanTransformer3DModel"].tiny_inputs(model)
    stock = model(**kwargs)[0]
    assert family_of(model) is FAMILIES["WanTransformer3DModel"]
    assert model_info(model) == model_info(base)
    assert token_layout_of(model, 2, 8, 8) == token_layout_of(base, 2, 8, 8)
    with apply_sparse_attention(model, FullAttention()) as handle:
        torch.testing.assert_close(model(**kwargs)[0], stock, rtol=1e-5, atol=1e-5 * stock.abs().max().item())
        assert handle.trackers[0].current.token_layout == token_layout_of(model, 2, 8, 8)
