"""FullAttention reproduces the stock processors on all three families; remove() restores them exactly;
ours go only where they belong; dense work goes through diffusers' dispatch_attention_fn."""

import pytest
import torch

import pipelines.processors as processors_mod
from pipelines import FullAttention, WanSparseAttnProcessor, apply_sparse_attention, attach_sparse_attention
from pipelines import tiny
from pipelines.processors import SparseAttnProcessorBase

FAMILIES = {
    "wan": (tiny.tiny_wan_transformer, lambda m: tiny.wan_inputs(frames=2, height=8, width=8)),
    "hunyuan": (tiny.tiny_hunyuan_transformer, lambda m: tiny.hunyuan_inputs(text_lens=(5, 3))),
    "cogvideox": (tiny.tiny_cogvideox_transformer, lambda m: tiny.cogvideox_inputs(m, batch=2)),
    "cogvideox1.5": (lambda: tiny.tiny_cogvideox_transformer(patch_size_t=2), lambda m: tiny.cogvideox_inputs(m)),
}


@pytest.fixture(params=list(FAMILIES), scope="module")
def model_and_inputs(request):
    build, make_inputs = FAMILIES[request.param]
    model = build()
    return request.param, model, make_inputs(model)


@torch.no_grad()
def test_full_attention_matches_stock_and_remove_restores(model_and_inputs):
    name, model, kwargs = model_and_inputs
    stock = model(**kwargs)[0]
    handle = apply_sparse_attention(model, FullAttention())
    ours = model(**kwargs)[0]
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5 * stock.abs().max().item())
    handle.remove()
    assert not any(isinstance(p, SparseAttnProcessorBase) for p in model.attn_processors.values())
    assert torch.equal(model(**kwargs)[0], stock)


@torch.no_grad()
def test_processors_only_where_they_belong():
    wan = tiny.tiny_wan_transformer()
    before = dict(wan.attn_processors)
    handle = apply_sparse_attention(wan, FullAttention())
    after = wan.attn_processors
    for key, proc in after.items():
        if ".attn1." in key:
            assert isinstance(proc, WanSparseAttnProcessor)
            assert proc.config.layer_index == int(key.split(".")[1])
        else:
            assert proc is before[key], key  # attn2 keeps its stock processor
    handle.remove()
    assert all(wan.attn_processors[k] is before[k] for k in before)

    hy = tiny.tiny_hunyuan_transformer()
    handle = apply_sparse_attention(hy, FullAttention())
    ours = {k: p.config.layer_index for k, p in hy.attn_processors.items() if isinstance(p, SparseAttnProcessorBase)}
    assert ours == {"transformer_blocks.0.attn.processor": 0, "single_transformer_blocks.0.attn.processor": 1}
    handle.remove()


@torch.no_grad()
def test_set_attn_processor_the_diffusers_way():
    model = tiny.tiny_wan_transformer()
    kwargs = tiny.wan_inputs()
    stock = model(**kwargs)[0]
    attached = attach_sparse_attention(model, FullAttention())
    model.set_attn_processor(attached.processors())
    assert sum(isinstance(p, SparseAttnProcessorBase) for p in model.attn_processors.values()) == 2
    torch.testing.assert_close(model(**kwargs)[0], stock, rtol=1e-5, atol=1e-6)
    attached.detach()
    assert torch.equal(model(**kwargs)[0], stock)


@torch.no_grad()
def test_dense_goes_through_dispatch_with_the_users_backend(monkeypatch):
    seen = []
    real = processors_mod.dispatch_attention_fn

    def spy(*args, **kw):
        seen.append(str(kw.get("backend")))
        return real(*args, **kw)

    monkeypatch.setattr(processors_mod, "dispatch_attention_fn", spy)
    wan = tiny.tiny_wan_transformer()
    try:
        wan.set_attention_backend("_native_math")  # before apply: carried over from the stock processors
        handle = apply_sparse_attention(wan, FullAttention())
        wan(**tiny.wan_inputs())
        assert len(seen) == 2 and all(b.endswith("_NATIVE_MATH") for b in seen)
        handle.remove()

        cog = tiny.tiny_cogvideox_transformer()  # its stock processor calls SDPA directly: no dispatch at all
        handle = apply_sparse_attention(cog, FullAttention())
        cog.set_attention_backend("native")  # after apply: reaches our processors
        cog(**tiny.cogvideox_inputs(cog))
        assert len(seen) == 3 and seen[-1].endswith(".NATIVE")
        handle.remove()
    finally:
        wan.reset_attention_backend()
