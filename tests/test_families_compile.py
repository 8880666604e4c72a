"""Regional compilation on every family added for the video DiTs of diffusers: with our processors,
diffusers' ``compile_repeated_blocks()`` compiles the same frames for 4 layers as for 2 (one per
block class, none per layer), over two denoising steps, and no more than with the stock processors
(Mochi's stock processor, a per-sample loop, breaks the graph: ours compiles fewer); the compiled
model gives the eager output. Models without ``_repeated_blocks`` in diffusers 0.42 (Mochi,
HunyuanVideo-Framepack, ConsisID) compile each block with ``block.compile()``, which is what
regional compilation does."""

from __future__ import annotations

import re

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from family_cases import CASES, FAMILY_CASES
from pipelines import FullAttention, StaticMaskAttention, apply_sparse_attention

pytestmark = pytest.mark.slow

LAYERS = 4
GRID = dict(frames=2, height=8, width=8)
BLOCK_LISTS = re.compile(r"(\w+_)?blocks\.\d+")


def compile_blocks(model, backend) -> None:
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(backend=backend)
        return
    for name, module in model.named_modules():
        if BLOCK_LISTS.fullmatch(name):
            module.compile(backend=backend)


def frames_and_output(model, kwargs) -> tuple[int, torch.Tensor]:
    """Frames dynamo compiles over two steps, and the second step's output."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compile_blocks(model, counter)
    for t in (900.0, 500.0):
        kwargs["timestep"] = torch.full_like(kwargs["timestep"], t)
        out = model(**kwargs)[0]
    return counter.frame_count, out


METHODS = {
    "full": FullAttention,
    "static": lambda: StaticMaskAttention(lambda b, h, q, kv: (q - kv).abs() < 24, block_size=16),
}


# FullAttention on every family; a sparse layout (the same opaque op, through the kernel) on two.
@pytest.mark.parametrize("name, method", [(n, "full") for n in FAMILY_CASES] + [("framepack", "static"), ("ltx-2", "static")])
@torch.no_grad()
def test_regional_compile_compiles_each_block_class_once(name, method):
    case = CASES[name]
    kwargs = case.make_inputs(case.build(LAYERS), GRID)
    stock, _ = frames_and_output(case.build(LAYERS), dict(kwargs))
    frames = {}
    for layers in (2, LAYERS):
        model = case.build(layers)
        with apply_sparse_attention(model, METHODS[method]()):
            eager = model(**dict(kwargs, timestep=torch.full_like(kwargs["timestep"], 500.0)))[0]
            frames[layers], compiled = frames_and_output(model, dict(kwargs))
    torch._dynamo.reset()
    assert frames[LAYERS] == frames[2], f"our blocks compiled {frames[2]} frames for 2 layers, {frames[LAYERS]} for {LAYERS}"
    assert 0 < frames[LAYERS] <= stock, f"stock blocks compiled {stock} frames, ours {frames[LAYERS]} for {LAYERS} layers"
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5 * float(eager.abs().max()))
