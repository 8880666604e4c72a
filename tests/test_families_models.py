"""The families added for the video DiTs of diffusers, each on its tiny model with its conditioning
inputs (tests/family_cases.py): the token layout read from the forward is the sequence the
attention really sees (grid, text, conditioning tokens off the grid, key lengths), FullAttention
gives the stock output (padded prompts included), remove() restores the stock processors exactly;
the layouts at each family's standard size; what cannot be served is refused with the reason."""

from __future__ import annotations

import re

import pytest
import torch

from family_cases import CASES, SEARCHED
from pipelines import AttentionMethod, FullAttention, apply_sparse_attention, attach_sparse_attention, model_info, token_layout_of
from pipelines.apply import attention_processors, set_attention_processors
from pipelines.families import (
    FAMILIES, UNSUPPORTED, allegro, family_of, helios, kandinsky5, kandinsky6, ltx, ltx2, minimax_h3, mochi,
    skyreels_v2, wan,
)
from pipelines.processors import SparseAttnProcessorBase

diffusers = pytest.importorskip("diffusers")


class Recorder(AttentionMethod):
    """Records each call's token layout, sequence length and key lengths; dense attention."""

    def __init__(self):
        self.calls = []

    def __call__(self, call, q, k, v):
        self.calls.append((call.token_layout, q.shape[2], call.kv_lens))
        return None


def assert_stock(out, stock, what):
    torch.testing.assert_close(out, stock, rtol=1e-5, atol=1e-5 * float(stock.abs().max()), msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_full_attention_is_stock_and_the_layout_is_the_sequence(name):
    case = CASES[name]
    model = case.build(2)
    kwargs = case.make_inputs(model)
    stock = model(**kwargs)[0]
    method = Recorder()
    with apply_sparse_attention(model, method):
        ours = model(**kwargs)[0]
    info = model_info(model)
    assert len(method.calls) == info.num_layers == 2, "every served layer asks the method once"
    layout = method.calls[0][0]
    for call_layout, seq, kv_lens in method.calls:
        assert call_layout == layout and seq == layout.seq_len, f"the layout says {layout.describe()}, q has {seq}"
        assert (kv_lens is not None) == case.padded
        if kv_lens is not None:
            assert kv_lens.shape == (case.batch,) and bool((kv_lens > layout.video_end).all())
            assert bool((kv_lens <= layout.seq_len).all()) and bool((kv_lens < layout.seq_len).any())
    grid = case.grid(SEARCHED)
    pt, ph, pw = info.patch_size
    want = ((grid["frames"] + case.extra_frames) // pt, grid["height"] // ph, grid["width"] // pw)
    assert (layout.frames, layout.rows, layout.cols) == want
    assert_stock(ours, stock, "a dense method")
    with apply_sparse_attention(model, FullAttention()):
        assert_stock(model(**kwargs)[0], stock, "FullAttention")
    assert not any(isinstance(p, SparseAttnProcessorBase) for p in attention_processors(model).values())
    assert torch.equal(model(**kwargs)[0], stock), "remove() must restore the stock processors exactly"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.padded])
@torch.no_grad()
def test_full_attention_gives_every_stream_the_stock_output(name):
    """Every attention module's whole output under FullAttention, the text stream and its padded
    rows included, is the stock module's: the dense path attends each sample's real keys unmasked,
    so a padded row must still get what stock gives it (the real keys' attention under a key-padding
    mask; 0 under HunyuanVideo-1.5's square mask)."""
    case = CASES[name]
    model = case.build(2)
    kwargs = case.make_inputs(model)
    modules = [m for m in model.modules() if hasattr(m, "processor")]

    def outputs() -> list:
        seen = []
        hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(out if isinstance(out, tuple) else (out,)))
                 for m in modules]
        try:
            model(**kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        return seen

    stock = outputs()
    with apply_sparse_attention(model, FullAttention()):
        ours = outputs()
    assert len(ours) == len(stock) > 0
    for i, (got, want) in enumerate(zip(ours, stock)):
        assert len(got) == len(want)
        for x, y in zip(got, want):
            assert (x is None) == (y is None)
            if x is not None:
                assert_stock(x, y, f"attention call {i}")


# --------------------------------------------------------------------------- what the layouts hold
def _layout(name, **grid):
    case = CASES[name]
    model = case.build(2)
    method = Recorder()
    with torch.no_grad(), apply_sparse_attention(model, method):
        model(**case.make_inputs(model, dict(SEARCHED, **grid)))
    return method.calls[0]


def test_framepack_history_is_a_prefix_and_image_plus_text_comes_after():
    layout, seq, kv_lens = _layout("framepack")  # 12 x 10 latent, history (2, 2, 4) frames, image 3 + text 6
    history = 2 * 6 * 5 + 1 * 3 * 3 + 1 * 2 * 2  # 1x clean latents; 2x and 4x after the model's padding
    assert (layout.prefix_len, layout.video_start, layout.video_len, layout.text_len) == (history, history, 90, 9)
    assert seq == 73 + 90 + 9 and kv_lens.tolist() == [163 + 3 + 5, 163 + 3 + 3]
    one, seq, kv_lens = _layout("framepack-one-prompt")  # one sample: the model keeps its 3 + 4 real tokens only
    assert (one.prefix_len, one.text_len, kv_lens) == (3 * 6 * 5 + 1 * 3 * 3 + 1 * 2 * 2, 7, None) and seq == one.seq_len


def test_hunyuan_video_15_counts_image_glyph_and_prompt_tokens():
    layout, _, kv_lens = _layout("hunyuan-video-1.5-i2v")  # video 3 x 6 x 5; image 3, glyph (2, 1) of 4, prompt (5, 3) of 6
    assert (layout.text_len, layout.text_position, kv_lens.tolist()) == (13, "after", [90 + 10, 90 + 7])
    t2v, _, kv_lens = _layout("hunyuan-video-1.5-t2v")  # text-to-video: the image tokens are padding
    assert kv_lens.tolist() == [90 + 5 + 2, 90 + 3 + 1]


def test_motif_video_image_tokens_lead_the_padded_prompt():
    layout, _, kv_lens = _layout("motif-video-i2v")  # video 3 x 6 x 5; image 3, then prompts (5, 3) of 6
    assert (layout.text_len, layout.text_position, kv_lens.tolist()) == (9, "after", [90 + 3 + 5, 90 + 3 + 3])


@torch.no_grad()
def test_motif_video_decoder_stays_stock_and_a_call_without_text_is_stock():
    """Motif-Video's decoder blocks attend [video | encoder output], not the joint sequence: they keep
    the stock processor. A served module called without text projects its output as stock does."""
    from diffusers.models.transformers.transformer_motif_video import MotifVideoAttnProcessor2_0

    case = CASES["motif-video"]
    model = case.build(2)  # dual block 0, encoder single block 0, decoder single block 1
    served = ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]
    assert model_info(model).layer_names == tuple(served)
    with apply_sparse_attention(model, FullAttention()):
        processors = attention_processors(model)
        ours = [k for k, p in processors.items() if isinstance(p, SparseAttnProcessorBase)]
        assert ours == [n + ".processor" for n in served]
        assert type(processors["single_transformer_blocks.1.attn.processor"]) is MotifVideoAttnProcessor2_0
        model(**case.make_inputs(model))  # a tracked forward: the processors have its context
        x = torch.randn(2, 30, model.config.num_attention_heads * model.config.attention_head_dim)
        for name in served:
            attn = model.get_submodule(name)
            assert_stock(attn(x), MotifVideoAttnProcessor2_0()(attn, x), f"{name} without text")


def test_ltx_conditioning_tokens_off_the_grid():
    layout, seq, _ = _layout("ltx-video-condition")  # one extra conditioning frame before a 3 x 6 x 5 grid, coords only
    assert (layout.prefix_len, layout.frames, layout.rows, layout.cols, seq) == (30, 3, 6, 5, 120)
    layout, seq, _ = _layout("ltx-2-i2v-keyframes")  # a keyframe of 6 x 5 tokens appended after the grid
    assert (layout.suffix_len, layout.video_start, seq) == (30, 0, 120)


def test_kandinsky6_reference_frame_is_a_suffix_after_the_grid():
    layout, seq, _ = _layout("kandinsky-6-i2v")  # 3 x 6 x 5 grid, then the reference frame's 6 x 5 tokens at RoPE time 0
    assert (layout.frames, layout.rows, layout.cols, layout.suffix_len, layout.video_start, seq) == (3, 6, 5, 30, 0, 120)
    layout, seq, _ = _layout("kandinsky-6")  # no positions passed: every frame on the grid
    assert (layout.frames, layout.suffix_len, seq) == (3, 0, 90)
    assert kandinsky6.grid_frames(None, 4) == 4 and kandinsky6.grid_frames((torch.arange(2, 6),), 4) == 4
    assert kandinsky6.grid_frames((torch.tensor([0, 1, 0, 1]),), 4) == 2


def test_helios_history_is_a_prefix_at_three_resolutions():
    layout, seq, _ = _layout("helios-history")  # 3 x 6 x 5 grid; history (long, mid, short) = (4, 2, 2) frames of 12 x 10
    history = 1 * 2 * 2 + 1 * 3 * 3 + 2 * 6 * 5  # 4x and 2x after the model's padding to (4, 8, 8) / (2, 4, 4); 1x
    assert (layout.prefix_len, layout.video_start, layout.video_len, layout.text_len, seq) == (history, history, 90, 0, 163)
    kwargs = helios.helios_inputs(3, 12, 10)
    kwargs["indices_latents_history_long"] = None  # the model packs a history only with its frame indices
    inputs = helios.FAMILY.read_inputs(helios.tiny_helios_transformer(), kwargs)
    assert inputs.prefix_len == history - 4


@pytest.mark.parametrize("mode", ["per_head", "scalar"])
@torch.no_grad()
def test_helios_history_keys_are_amplified_as_stock(mode):
    """The history keys' amplification (one learned scale per head, or one for all) is reproduced
    under FullAttention and a method's dense call; it changes the output (else the checks of the
    history case could not see it missing)."""
    model = helios.tiny_helios_transformer(history_scale_mode=mode)
    kwargs = helios.helios_inputs(3, 12, 10)
    stock = model(**kwargs)[0]
    for method in (FullAttention(), Recorder()):
        with apply_sparse_attention(model, method):
            assert_stock(model(**kwargs)[0], stock, f"{mode} amplification, {type(method).__name__}")
    for block in model.blocks:
        block.attn1.is_amplify_history = False
    assert float((model(**kwargs)[0] - stock).abs().max()) > 1e-2 * float(stock.abs().max())


def test_minimax_h3_grid_is_the_generated_video_after_text_conditioning_and_audio():
    layout, seq, _ = _layout("minimax-h3")  # [6 text | 5 stereo audio latents | 3 x 6 x 5 video]
    assert (layout.frames, layout.rows, layout.cols, layout.prefix_len, layout.suffix_len, seq) == (3, 6, 5, 16, 0, 106)
    layout, seq, _ = _layout("minimax-h3-keyframes")  # two keyframes of 6 x 5 tokens between the text and the audio
    assert (layout.frames, layout.rows, layout.cols, layout.prefix_len, seq) == (3, 6, 5, 6 + 2 * 30 + 10, 166)
    # references: an image (1 x 2 x 3 tokens), a video (2 x 2 x 3, its 6 soundtrack rows first), an audio (6 rows)
    layout, seq, _ = _layout("minimax-h3-references")
    assert (layout.frames, layout.rows, layout.cols, layout.prefix_len, seq) == (3, 6, 5, 6 + 6 + 6 + 12 + 6 + 10, 136)


def _repacked(kwargs: dict, change: str) -> dict:
    """A t2va packing of a 3 x 6 x 5 grid, changed so its last run of video rows is no video grid."""
    kwargs = dict(kwargs, position_ids=kwargs["position_ids"].clone())
    position, video = kwargs["position_ids"], kwargs["video_indices"]
    grid = position[video[0]:].view(3, 6, 5, 3)
    if change == "frames out of order":
        position[video[0]:] = grid[[1, 0, 2]].reshape(-1, 3)
    elif change == "column-major":
        position[video[0]:] = grid.transpose(1, 2).reshape(-1, 3)
    elif change == "a keyframe right after the video":  # conditioning rows at frame 0's time, packed after it
        n = 30
        kwargs["position_ids"] = torch.cat([position, position[video[0]:video[0] + n]])
        kwargs["video_indices"] = torch.cat([video, torch.arange(position.shape[0], position.shape[0] + n)])
        kwargs["token_tags"] = torch.cat([kwargs["token_tags"], kwargs["token_tags"][video[:n]]])
        kwargs["timestep_indices"] = torch.cat([kwargs["timestep_indices"], kwargs["timestep_indices"][video[:n]]])
        kwargs["hidden_states"] = torch.cat([kwargs["hidden_states"], kwargs["hidden_states"][:, :n]], dim=1)
    return kwargs


@pytest.mark.parametrize("change, problem", [
    ("frames out of order", "t does not rise from frame to frame"),
    ("column-major", "h does not rise row by row"),
    ("a keyframe right after the video", r"\(120 rows from row 16, read as 4 x 6 x 5\) t does not rise"),
])
@torch.no_grad()
def test_minimax_h3_packing_without_a_video_grid_is_refused(change, problem):
    """A packing whose last run of video rows is not whole frames in raster order is refused at the
    forward, saying what the layout needs and what to do; the stock model runs it."""
    model = minimax_h3.tiny_minimax_h3_transformer()
    kwargs = _repacked(minimax_h3.minimax_h3_inputs(3, 12, 10), change)
    model(**kwargs)
    with apply_sparse_attention(model, FullAttention()), pytest.raises(ValueError) as error:
        model(**kwargs)
    message = str(error.value)
    assert re.search(problem, message), message
    assert "the last contiguous run of video_indices" in message and "pack the generated video rows that way" in message
    assert "handle.remove()" in message


@torch.no_grad()
def test_minimax_h3_modular_pipeline_steps_and_layout():
    """MiniMaxH3ModularPipeline's t2va denoising blocks (layout, noise, row timesteps, the loop,
    unpacking) drive a tiny transformer: every forward's layout is the pipeline's packing, its steps
    are counted on the rising timesteps of the wrapped MiniMaxH3Scheduler, and dense attention
    through our processors gives the stock latents."""
    from diffusers import MiniMaxH3Scheduler
    from diffusers.modular_pipelines.minimax_h3.modular_blocks_minimax_h3 import MiniMaxH3CoreDenoiseStep

    pipe = MiniMaxH3CoreDenoiseStep().init_pipeline()
    pipe.update_components(transformer=minimax_h3.tiny_minimax_h3_transformer(latent_channels=24, audio_channels=32),
                           scheduler=MiniMaxH3Scheduler(shift=12.0), audio_scheduler=MiniMaxH3Scheduler(shift=3.0))
    request = dict(text_token_tags=torch.ones(6, dtype=torch.long), prompt_embeds=torch.randn(1, 6, 32), height=64,
                   width=64, num_frames=124, num_inference_steps=4, output=["latents", "audio_latents"])

    def generate():
        return pipe(**request, generator=torch.Generator().manual_seed(0))

    stock = generate()
    method = StepRecorder()
    with apply_sparse_attention(pipe, method):
        ours = generate()
    for name in ("latents", "audio_latents"):
        assert_stock(ours[name], stock[name], name)
    # 124 frames: 37 latent frames of 4 x 4 (2 x 2 tokens) after 6 text rows and 207 stereo audio latents
    layouts = {layout for layout, _, _ in method.calls}
    assert layouts == {token_layout_of(pipe.transformer, 37, 4, 4, prefix_len=6 + 414)}
    assert [(step, num) for _, step, num in method.calls] == [(0, 3), (0, 3), (1, 3), (1, 3), (2, 3), (2, 3)]


def test_minimax_h3_ref2va_pipeline_serves_its_transformer_ref():
    """The ref2va workflow runs the checkpoint's ``transformer_ref`` partition: handed the pipeline,
    apply_sparse_attention serves that component (and restores its stock processors on remove)."""
    from diffusers.modular_pipelines.minimax_h3.modular_blocks_minimax_h3 import MiniMaxH3Ref2VACoreDenoiseStep

    pipe = MiniMaxH3Ref2VACoreDenoiseStep().init_pipeline()
    model = minimax_h3.tiny_minimax_h3_transformer()
    pipe.update_components(transformer_ref=model)
    stock = {name: type(m.processor) for name, m in model.named_modules() if hasattr(m, "processor")}
    with apply_sparse_attention(pipe, StepRecorder()):
        served = {name for name, m in model.named_modules() if isinstance(getattr(m, "processor", None), SparseAttnProcessorBase)}
        assert served == set(FAMILIES["MiniMaxH3Transformer3DModel"].layer_names(model))
    assert {name: type(m.processor) for name, m in model.named_modules() if hasattr(m, "processor")} == stock


class StepRecorder(AttentionMethod):
    """Records each call's token layout, step index and step count; dense attention."""

    def __init__(self):
        self.calls = []

    def __call__(self, call, q, k, v):
        self.calls.append((call.token_layout, call.forward.step_index, call.forward.num_steps))
        return None


def test_ltx_grid_from_coordinates_and_its_errors():
    from family_cases import ltx_condition_inputs

    coords = ltx_condition_inputs(3, 6, 5, 500.0, extra_frames=2)["video_coords"]
    assert ltx.grid_of_coords(coords) == (60, 3, 6, 5)
    with pytest.raises(ValueError, match="cannot read the latent grid from video_coords.*pass num_frames, height and width"):
        ltx.grid_of_coords(coords[:, :, :-1])
    model = ltx2.tiny_ltx2_transformer()
    kwargs = ltx2.ltx2_inputs()
    del kwargs["num_frames"]
    with apply_sparse_attention(model, FullAttention()), pytest.raises(ValueError, match="without num_frames, height and width"):
        model(**kwargs)
    kwargs = ltx.ltx_inputs(2, 4, 4)
    kwargs["num_frames"] = 3
    model = ltx.tiny_ltx_transformer()
    with apply_sparse_attention(model, FullAttention()), pytest.raises(ValueError, match="describe 48 tokens.*holds 32"):
        model(**kwargs)


# --------------------------------------------------------------------------- inputs that change the path
@torch.no_grad()
def test_skyreels_causal_blocks_run_dense_as_stock():
    """Diffusion forcing's causal frame blocks put a mask on the self-attention: the method is not
    asked, the call runs dense through diffusers with that mask, and the output is stock."""
    model = skyreels_v2.tiny_skyreels_v2_transformer(num_frame_per_block=2)
    kwargs = wan.wan_inputs(4, 8, 8)
    stock = model(**kwargs)[0]
    method = Recorder()
    with apply_sparse_attention(model, method):
        assert_stock(model(**kwargs)[0], stock, "causal blocks")
    assert method.calls == []


@torch.no_grad()
def test_ltx2_spatio_temporal_guidance():
    """LTX-2 with perturbed attention (STG): the perturbation mask mixes values into the output as
    stock, and a fully perturbed block skips attention."""
    model = ltx2.tiny_ltx2_transformer(num_layers=2, perturbed_attn=True)
    for mask in (torch.tensor([1.0]), torch.tensor([0.0])):
        kwargs = dict(ltx2.ltx2_inputs(), spatio_temporal_guidance_blocks=[1], perturbation_mask=mask)
        stock = model(**kwargs)[0]
        method = Recorder()
        with apply_sparse_attention(model, method):
            assert_stock(model(**kwargs)[0], stock, f"perturbation mask {mask.item()}")
        assert len(method.calls) == (2 if mask.item() else 1), "a fully perturbed block computes no attention"


@torch.no_grad()
def test_the_diffusers_way_on_a_model_without_set_attn_processor():
    model = mochi.tiny_mochi_transformer()
    assert not hasattr(model, "set_attn_processor")
    kwargs = mochi.mochi_inputs()
    stock = model(**kwargs)[0]
    attached = attach_sparse_attention(model, FullAttention())
    set_attention_processors(model, attached.processors())
    assert sum(isinstance(p, SparseAttnProcessorBase) for p in attention_processors(model).values()) == 2
    assert_stock(model(**kwargs)[0], stock, "set_attention_processors")
    attached.detach()
    assert torch.equal(model(**kwargs)[0], stock)


def test_mochi_prompts_must_be_padded_on_the_right():
    model = mochi.tiny_mochi_transformer()
    kwargs = mochi.mochi_inputs()
    kwargs["encoder_attention_mask"] = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with apply_sparse_attention(model, FullAttention()), pytest.raises(ValueError, match="pad on the right"):
        model(**kwargs)


@torch.no_grad()
def test_allegro_rope_reaches_the_output_and_a_video_mask_runs_dense_as_stock():
    """Allegro's 3-D RoPE changes the output (else the stock checks could not see it missing). The
    model's optional 4-D video mask (a bias on the self-attention; AllegroPipeline never passes
    one) makes the call dense through diffusers: the method is not asked, the output is stock."""
    model = allegro.tiny_allegro_transformer()
    kwargs = allegro.allegro_inputs(model, 3, 12, 10)
    stock = model(**kwargs)[0]
    unrotated = model(**dict(kwargs, image_rotary_emb=None))[0]
    assert float((unrotated - stock).abs().max()) > 1e-3 * float(stock.abs().max())  # the stock checks: 1e-5
    mask = torch.ones(2, 3, 12, 10)
    mask[0, 1:] = 0.0  # sample 0 sees only its first frame
    masked = dict(kwargs, attention_mask=mask)
    stock_masked = model(**masked)[0]
    assert float((stock_masked - stock).abs().max()) > 1e-3 * float(stock.abs().max())
    method = Recorder()
    with apply_sparse_attention(model, method):
        assert_stock(model(**masked)[0], stock_masked, "a video mask")
    assert method.calls == []


# --------------------------------------------------------------------------- refused, with the reason
def test_kandinsky_nabla_is_refused_with_the_reason():
    model = kandinsky5.tiny_kandinsky5_transformer(attention_type="nabla")
    before = dict(model.attn_processors)
    with pytest.raises(TypeError, match="attention_type='nabla'.*load the model with attention_type='regular'"):
        apply_sparse_attention(model, FullAttention())
    assert {k: type(v) for k, v in model.attn_processors.items()} == {k: type(v) for k, v in before.items()}
    regular = kandinsky5.tiny_kandinsky5_transformer()
    kwargs = dict(kandinsky5.kandinsky5_inputs(), sparse_params={"to_fractal": True})
    with apply_sparse_attention(regular, FullAttention()), pytest.raises(ValueError, match="passes sparse_params"):
        regular(**kwargs)


def test_kandinsky6_super_resolution_stays_refused():
    """The SR model is its own class (not a Kandinsky6Transformer3DModel) running NABLA: refused, with the reason."""
    model = diffusers.Kandinsky6SRTransformer3DModel(in_visual_dim=4, out_visual_dim=4, time_dim=32, model_dim=64,
                                                     ff_dim=64, num_visual_blocks=1)
    assert not isinstance(model, diffusers.Kandinsky6Transformer3DModel)
    with pytest.raises(TypeError, match=r"does not support Kandinsky6SRTransformer3DModel \(cannot be served: the "
                                        r"super-resolution model always runs its own NABLA"):
        apply_sparse_attention(model, FullAttention())


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_models_say_why_and_name_the_supported_ones(name):
    cls = getattr(diffusers, name)
    fake = type(name, (torch.nn.Module,), {})()  # the class name is what the registry reads
    assert isinstance(cls, type)
    with pytest.raises(TypeError) as error:
        family_of(fake)
    message = str(error.value)
    assert f"does not support {name} ({UNSUPPORTED[name]})" in message
    assert UNSUPPORTED[name].startswith("cannot be served: ")
    assert all(f"{f.class_name} ({f.name})" in message for f in FAMILIES.values())


def test_every_video_transformer_of_diffusers_is_served_or_listed():
    """Each diffusers class named *Transformer3DModel (the video DiTs) has a record or an entry
    saying why not; JoyImage's are image-editing models (one image, no frames)."""
    video = {n for n in dir(diffusers) if n.endswith("Transformer3DModel")} | {"Cosmos3OmniTransformer"}
    not_video = {"JoyImageEditTransformer3DModel", "JoyImageEditPlusTransformer3DModel"}
    assert video - not_video <= set(FAMILIES) | set(UNSUPPORTED), sorted(video - set(FAMILIES) - set(UNSUPPORTED))
    assert not set(FAMILIES) & set(UNSUPPORTED)


# --------------------------------------------------------------------------- standard sizes (README)
STANDARD_TOKENS = {
    "WanTransformer3DModel": 75_600,  # 720p 81 frames: 21 x 45 x 80
    "HunyuanVideoTransformer3DModel": 118_800 + 256,
    "CogVideoXTransformer3DModel": 44_880 + 226,
    "WanVACETransformer3DModel": 75_600,
    "SkyReelsV2Transformer3DModel": 25 * 34 * 60,  # 540p 97 frames
    "WanAnimateTransformer3DModel": 75_600,
    "HunyuanVideo15Transformer3DModel": 31 * 45 * 80 + 1000 + 256 + 729,  # 720p 121 frames, patch 1 on a 16x VAE
    "HunyuanVideoFramepackTransformer3DModel": 9 * 45 * 80 + 12_680 + 729 + 256,
    "LTXVideoTransformer3DModel": 21 * 16 * 22,
    "LTX2VideoTransformer3DModel": 16 * 16 * 24,
    "MochiTransformer3DModel": 28 * 30 * 53 + 256,
    "Kandinsky5Transformer3DModel": 31 * 32 * 48,
    "ConsisIDTransformer3DModel": 13 * 30 * 45 + 226,
    "ChronoEditTransformer3DModel": 21 * 30 * 52,
    "CosmosTransformer3DModel": 24 * 44 * 80,  # Cosmos 2.5, 704 x 1280, 93 frames on the Wan VAE
    "EasyAnimateTransformer3DModel": 256 + 13 * 32 * 32,  # 512 x 512, 49 frames; the prompt before the video
    "AnyFlowTransformer3DModel": 21 * 30 * 52,  # 480 x 832, 81 frames on the Wan VAE
    "Kandinsky6Transformer3DModel": 31 * 32 * 48,  # 512 x 768, 121 frames (the pipeline's default) on HunyuanVideo's VAE
    "MotifVideoTransformer3DModel": 31 * 46 * 80 + 512,  # 736 x 1280, 121 frames on the Wan VAE; 512 prompt tokens
    # 384 x 640, a 9-latent-frame chunk on the Wan VAE; history 16 + 2 + (1 + 1) frames at 4x, 2x and 1x
    "HeliosTransformer3DModel": 9 * 24 * 40 + 4 * 6 * 10 + 1 * 12 * 20 + 2 * 24 * 40,
    "AllegroTransformer3DModel": 22 * 45 * 80,  # 720 x 1280, 88 frames (the pipeline's default) on a 4x / 8x VAE
    # 768 x 1344, 124 frames on its 16x VAE (37 latent frames); 207 stereo audio latents before the grid
    "MiniMaxH3Transformer3DModel": 37 * 24 * 42 + 2 * 207,
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_standard_size_tokens(name):
    family = FAMILIES[name]
    assert family.name and family.pipelines and all(hasattr(diffusers, p) for p in family.pipelines)
    assert family.standard_layout().seq_len == STANDARD_TOKENS[name]


# Ulysses runs through a cp_plan, tested on gloo (tests/test_context_parallel_gloo.py, test_context_parallel_families.py);
# LTX-2's diffusers plan fails with the stock processors too.
CONTEXT_PARALLEL = {"WanTransformer3DModel", "HunyuanVideoTransformer3DModel", "LTXVideoTransformer3DModel",
                    "ChronoEditTransformer3DModel", "MiniMaxH3Transformer3DModel"}


def test_readme_table_lists_every_family_with_its_tokens():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "Transformer3DModel" in line]
    for name, family in FAMILIES.items():
        row = next((r for r in rows if f"`{name}`" in r), None)
        assert row is not None, f"README's supported-models table has no row for {name}"
        assert f"{family.standard_layout().seq_len:,}" in row, f"{name}: tokens per forward"
        assert row.split("|")[-2].strip().startswith("yes") == (name in CONTEXT_PARALLEL), f"{name}: context parallelism"
    for name in UNSUPPORTED:
        assert any(f"`{name}`" in r for r in readme.splitlines()), f"README does not say why {name} is not served"
