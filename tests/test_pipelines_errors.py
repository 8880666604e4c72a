"""Bad input fails at apply time (or at the first forward, for a resolution) with a message that
says what differs and what to do."""

import pytest
import torch

from kernels.block_layout import BlockLayout
from pipelines import (
    AttentionMethod,
    FullAttention,
    SparseAttnProcessorBase,
    StaticMaskAttention,
    apply_sparse_attention,
    attach_sparse_attention,
    check_model_matches,
)
from pipelines import tiny
from pipelines.families import model_info
from pipelines import ProcessorConfig, WanSparseAttnProcessor
from sparse_vdit.token_layout import TokenLayout


class PlanFor(AttentionMethod):
    """A stand-in for an offline plan: it records the model it was made for."""

    def __init__(self, model):
        self.made_for = model_info(model)

    def validate(self, model):
        check_model_matches(self.made_for, model)


def test_unsupported_model_names_the_supported_ones():
    with pytest.raises(TypeError, match=r"WanTransformer3DModel \(Wan 2.1 / 2.2\), HunyuanVideoTransformer3DModel "
                                        r"\(HunyuanVideo\), CogVideoXTransformer3DModel"):
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


# --------------------------------------------------------------------------- bad input, pipelines side
class Returns(AttentionMethod):
    """A method whose __call__ returns ``make(call, q)``."""

    def __init__(self, make):
        self.make = make

    def __call__(self, call, q, k, v):
        return self.make(call, q)

    def __repr__(self):
        return "Returns(<bad result>)"


@torch.no_grad()
def test_float64_model_refuses_static_mask_and_sparse_layouts():
    wan = tiny.tiny_wan_transformer(num_layers=1).double()
    kwargs = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in tiny.wan_inputs().items()}
    stock = wan(**kwargs)[0]
    with apply_sparse_attention(wan, StaticMaskAttention(lambda b, h, q, kv: q >= kv, block_size=16)):
        with pytest.raises(ValueError, match=r"runs sparse in bfloat16, float16, float32.*float64.*pipe.to\(torch.bfloat16\)"):
            wan(**kwargs)
    layout = BlockLayout.dense(32, block_size=16)
    with apply_sparse_attention(wan, Returns(lambda call, q: layout)):
        with pytest.raises(ValueError, match=r"Returns\(<bad result>\) returned a BlockLayout.*float64.*bfloat16, float16, float32"):
            wan(**kwargs)
    with apply_sparse_attention(wan, FullAttention()):  # what the message offers: dense in float64
        torch.testing.assert_close(wan(**kwargs)[0], stock, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda call, q: "dense please", TypeError, r"Returns\(<bad result>\) returned a str: .*must return None"),
        (lambda call, q: (q, None), TypeError, r"returned a tuple: .*BlockLayout.*\[B, H, S, D\]"),
        (lambda call, q: q[:, :1].clone(), ValueError, r"Returns\(<bad result>\) returned a tensor \(1, 1, 32, 64\).*q is \(1, 2, 32, 64\)"),
        (lambda call, q: q.double(), ValueError, r"returned a tensor .*torch.float64.*q is .*torch.float32"),
        (lambda call, q: q.to("meta"), ValueError, r"returned a tensor .* on meta.*on cpu"),
    ],
    ids=["str", "tuple", "shape", "dtype", "device"],
)
@torch.no_grad()
def test_wrong_result_of_a_method_names_it(make, error, match):
    wan = tiny.tiny_wan_transformer(num_layers=1)
    with apply_sparse_attention(wan, Returns(make)):
        with pytest.raises(error, match=match):
            wan(**tiny.wan_inputs())


def test_method_class_instead_of_instance():
    wan = tiny.tiny_wan_transformer(num_layers=1)
    with pytest.raises(TypeError, match=r"FullAttention is a class.*apply_sparse_attention\(pipe, FullAttention\(\)\)"):
        apply_sparse_attention(wan, FullAttention)
    with pytest.raises(TypeError, match=r"StaticMaskAttention is a class.*StaticMaskAttention\(\)"):
        apply_sparse_attention(tiny.tiny_wan_pipeline(num_layers=1), StaticMaskAttention)
    assert not any(isinstance(p, SparseAttnProcessorBase) for p in wan.attn_processors.values())
    apply_sparse_attention(wan, FullAttention()).remove()  # nothing was left attached


def _methods_installed(model):
    return {p.method for p in model.attn_processors.values() if isinstance(p, SparseAttnProcessorBase)}


def test_stale_detach_is_refused_and_detaching_twice_is_harmless():
    wan = tiny.tiny_wan_transformer(num_layers=1)
    first, second = FullAttention(), FullAttention()
    old = attach_sparse_attention(wan, first)
    wan.set_attn_processor(old.processors())
    old.detach()
    old.detach()  # twice: nothing happens
    assert _methods_installed(wan) == set()
    new = attach_sparse_attention(wan, second)
    wan.set_attn_processor(new.processors())
    with pytest.raises(RuntimeError, match=r"stale.*attached to the transformer now.*its own handle"):
        old.detach()
    assert _methods_installed(wan) == {second} and new.tracker.current is None
    with torch.no_grad():
        wan(**tiny.wan_inputs())
    assert new.tracker.current is not None, "the newer method's step tracker must still run"
    new.detach()
    assert _methods_installed(wan) == set()

    handle = apply_sparse_attention(wan, first)
    handle.remove()
    handle.remove()  # twice: nothing happens
    newer = apply_sparse_attention(wan, second)
    with pytest.raises(RuntimeError, match="stale"):
        handle.remove()
    assert _methods_installed(wan) == {second}
    newer.remove()
    assert _methods_installed(wan) == set()


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_meta_device_says_to_load_the_weights(family):
    if family == "wan":
        model, kwargs = tiny.tiny_wan_transformer(num_layers=1), tiny.wan_inputs()
    else:
        model, kwargs = tiny.tiny_hunyuan_transformer(), tiny.hunyuan_inputs()
    model = model.to("meta")
    kwargs = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with apply_sparse_attention(model, FullAttention()):
        with pytest.raises(RuntimeError, match=r"needs real tensors.*meta device.*init_empty_weights"):
            with torch.no_grad():
                model(**kwargs)


def test_the_old_methods_module_still_imports_and_says_where_to_go():
    import importlib
    import sys

    sys.modules.pop("pipelines.methods", None)
    with pytest.warns(DeprecationWarning, match="import the protocol from sparse_vdit.protocol"):
        old = importlib.import_module("pipelines.methods")
    from sparse_vdit import FullAttention

    assert old.FullAttention is FullAttention
