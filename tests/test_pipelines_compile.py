"""torch.compile(transformer, fullgraph=True) with our processors: no graph break, and one graph
for every denoising step and CFG branch (the step tracker runs eagerly, outside the graph)."""

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from pipelines import FullAttention, StaticMaskAttention, apply_sparse_attention
from pipelines import tiny

METHODS = {
    "full": lambda: FullAttention(),
    "static": lambda: StaticMaskAttention(lambda b, h, q, kv: (q - kv).abs() < 16, block_size=32),
}


@pytest.mark.parametrize("name", list(METHODS))
@torch.no_grad()
def test_compiled_wan_one_graph_across_steps(name):
    torch._dynamo.reset()
    model = tiny.tiny_wan_transformer()
    method = METHODS[name]()
    handle = apply_sparse_attention(model, method)
    kwargs = tiny.wan_inputs(frames=2, height=8, width=12)
    eager = model(**kwargs)[0]
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for t in (900.0, 900.0, 500.0, 500.0, 100.0):  # 3 steps, CFG as separate calls
        kwargs["timestep"] = torch.full((1,), t)
        out = compiled(**kwargs)[0]
    assert counter.frame_count == 1, "a step or branch change recompiled the transformer"
    assert handle.trackers[0].current.step_index == 2
    kwargs["timestep"] = torch.full((1,), 500.0)
    torch.testing.assert_close(compiled(**kwargs)[0], eager, rtol=1e-5, atol=1e-5)
    handle.remove()


@torch.no_grad()
def test_compiled_hunyuan_static_mask_no_graph_break():
    torch._dynamo.reset()
    model = tiny.tiny_hunyuan_transformer()
    handle = apply_sparse_attention(model, StaticMaskAttention(lambda b, h, q, kv: (q - kv).abs() < 24, block_size=32))
    kwargs = tiny.hunyuan_inputs(text_lens=(5, 3))
    eager = model(**kwargs)[0]
    explanation = torch._dynamo.explain(model)(**kwargs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(**kwargs)[0], eager, rtol=1e-5, atol=1e-5)
    handle.remove()


def _regional_frame_count(model, kwargs, steps=(900.0, 500.0)) -> int:
    """Frames dynamo compiles when diffusers' compile_repeated_blocks() runs ``steps`` forwards."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    model.compile_repeated_blocks(backend=counter)
    for t in steps:
        kwargs["timestep"] = torch.full((1,), t)
        model(**kwargs)
    return counter.frame_count


@torch.no_grad()
def test_regional_compile_compiles_the_block_once_for_every_layer():
    """diffusers' compile_repeated_blocks(): one compiled block serves every layer, as with stock
    processors (the attention step is an opaque op; before it, dynamo recompiled per layer on the
    layer index and ran the blocks past its recompile limit eagerly)."""
    kwargs = tiny.wan_inputs(frames=2, height=8, width=12)
    stock = _regional_frame_count(tiny.tiny_wan_transformer(num_layers=4), dict(kwargs))
    model = tiny.tiny_wan_transformer(num_layers=4)
    handle = apply_sparse_attention(model, FullAttention())
    ours = _regional_frame_count(model, dict(kwargs))
    handle.remove()
    torch._dynamo.reset()
    assert ours == stock, f"stock blocks compiled {stock} frames, ours {ours} for 4 layers"
