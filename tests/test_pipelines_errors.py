"""Bad input fails at apply time (or at the first forward, for a resolution) with a message that
says what differs and what to do."""

import pytest
import torch

from pipelines import (
    AttentionMethod,
    FullAttention,
    StaticMaskAttention,
    apply_sparse_attention,
    check_model_matches,
)
from pipelines import tiny
from pipelines.families import model_info
from pipelines.processors import ProcessorConfig, WanSparseAttnProcessor
from sparse_vdit.token_layout import TokenLayout


class PlanFor(AttentionMethod):
    """A stand-in for an offline plan: it records the model it was made for."""

    def __init__(self, model):
        self.made_for = model_info(model)

    def validate(self, model):
        check_model_matches(self.made_for, model)


def test_unsupported_model_names_the_supported_ones():
    with pytest.raises(TypeError, match="WanTransformer3DModel, HunyuanVideoTransformer3DModel, CogVideoXTransformer3DModel"):
        apply_sparse_attention(torch.nn.Linear(4, 4), FullAttention())
    with pytest.raises(TypeError, match="diffusers pipeline or transformer"):
        apply_sparse_attention(object(), FullAttention())


def test_plan_for_another_model_says_what_differs():
    wan2 = tiny.tiny_wan_transformer(num_layers=2)
    wan1 = tiny.tiny_wan_transformer(num_layers=1)
    cog = tiny.tiny_cogvideox_transformer()
    with pytest.raises(ValueError, match=r"num_layers: 2 expected, 1 in this model"):
        apply_sparse_attention(wan1, PlanFor(wan2))
    with pytest.raises(ValueError, match=r"family: 'WanTransformer3DModel' expected.*text_position: 'none' expected, 'before'"):
        apply_sparse_attention(cog, PlanFor(wan2))
    # Nothing was left behind by the failed applies.
    handle = apply_sparse_attention(wan1, PlanFor(wan1))
    handle.remove()


def test_static_mask_checks_at_apply_time():
    wan = tiny.tiny_wan_transformer(num_layers=2)
    with pytest.raises(ValueError, match=r"layers \[5\] do not exist.*2 attention layers"):
        apply_sparse_attention(wan, StaticMaskAttention(lambda b, h, q, kv: q >= kv, layers=[0, 5]))
    hy = tiny.tiny_hunyuan_transformer()
    cog_layout = TokenLayout(frames=2, rows=4, cols=4, text_len=8, text_position="before")
    with pytest.raises(ValueError, match=r"text 'before'.*puts text 'after'"):
        apply_sparse_attention(hy, StaticMaskAttention(lambda b, h, q, kv: q >= kv, token_layout=cog_layout))


def test_pipeline_at_a_resolution_the_method_cannot_serve():
    pipe = tiny.tiny_wan_pipeline(num_layers=1)
    pipe.set_progress_bar_config(disable=True)
    method = StaticMaskAttention(lambda b, h, q, kv: q >= 0, token_layout=TokenLayout(frames=2, rows=4, cols=4))
    with apply_sparse_attention(pipe, method):
        with pytest.raises(ValueError, match=r"written for 2x4x4 video tokens.*runs 2x2x2"):
            pipe("a cat", num_frames=5, height=32, width=32, num_inference_steps=1, max_sequence_length=8, output_type="latent")


def test_applying_twice_and_non_methods():
    wan = tiny.tiny_wan_transformer(num_layers=1)
    handle = apply_sparse_attention(wan, FullAttention())
    with pytest.raises(RuntimeError, match=r"already applied.*handle.remove\(\)"):
        apply_sparse_attention(wan, FullAttention())
    handle.remove()
    with pytest.raises(TypeError, match="not an attention method"):
        apply_sparse_attention(wan, object())


def test_processor_without_tracker_says_how_to_install():
    wan = tiny.tiny_wan_transformer(num_layers=1)

    class NoTracker:
        current = None

    proc = WanSparseAttnProcessor(ProcessorConfig(0, "blocks.0.attn1", 2, 64), FullAttention(), NoTracker())
    wan.blocks[0].attn1.set_processor(proc)
    with pytest.raises(RuntimeError, match="apply_sparse_attention"):
        with torch.no_grad():
            wan(**tiny.wan_inputs())
