"""Key padding is the processor's job: HunyuanVideo with prompts of different real lengths gives the
stock output whether the method runs dense, returns a cached all-true StaticMaskAttention layout or
builds a per-forward head layout; the layout cache does not depend on prompt length."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import assert_close_to_reference
from pipelines import AttentionMethod, FullAttention, StaticMaskAttention, apply_sparse_attention
from pipelines import tiny
from sparse_vdit.modes import Full, head_layout

BLOCK = 16
TEXT_LEN = 12  # padded prompt length; 2 x 8 x 8 video tokens + 12 text = 140, not a multiple of 16
LATENT = dict(frames=2, height=16, width=16)


class FullHeadLayout(AttentionMethod):
    """Every head ``Full()`` through ``sparse_vdit.modes.head_layout``, built per forward."""

    def begin_forward(self, forward):
        return head_layout([Full()] * forward.model.num_heads, forward.token_layout, block_size=BLOCK, device=forward.device)

    def __call__(self, call, q, k, v):
        return call.prepared


METHODS = {
    "full": FullAttention,
    "static_all_true": lambda: StaticMaskAttention(lambda b, h, q, k: q >= 0, block_size=BLOCK),
    "head_layout": FullHeadLayout,
}


def _inputs(text_lens, dtype=torch.float32):
    kwargs = tiny.hunyuan_inputs(**LATENT, text_lens=text_lens, text_len=TEXT_LEN)
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in kwargs.items()}


def _swapped(kwargs):
    """The same two samples in the other order."""
    return {k: v.flip(0) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@pytest.fixture(scope="module")
def model():
    return tiny.tiny_hunyuan_transformer()


@pytest.fixture(scope="module")
def model64(model):
    return copy.deepcopy(model).double()


@pytest.mark.parametrize("text_lens", [(10, 3), (3,), (TEXT_LEN,)], ids=["two-prompts", "one-padded", "one-unpadded"])
@pytest.mark.parametrize("name", list(METHODS))
@torch.no_grad()
def test_matches_stock_with_padded_prompts(model, model64, name, text_lens):
    kwargs = _inputs(text_lens)
    stock = model(**kwargs)[0]
    ref64 = model64(**_inputs(text_lens, torch.float64))[0]
    with apply_sparse_attention(model, METHODS[name]()) as handle:
        ours = model(**kwargs)[0]
        forward = handle.trackers[0].current
    video_len = forward.token_layout.video_len
    if text_lens == (TEXT_LEN,):
        assert forward.kv_lens is None
    else:
        assert forward.kv_lens.dtype == torch.int32
        assert forward.kv_lens.tolist() == [video_len + n for n in text_lens]
    assert_close_to_reference(ours, ref64, stock, name=name)


@pytest.mark.parametrize("name", list(METHODS))
@torch.no_grad()
def test_swapping_the_prompts_only_swaps_the_outputs(model, name):
    method = METHODS[name]()
    kwargs = _inputs((10, 3))
    with apply_sparse_attention(model, method) as handle:
        out = model(**kwargs)[0]
        first = handle.trackers[0].current.prepared
        swapped = model(**_swapped(kwargs))[0]
        one = model(**{k: v[1:] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})[0]
        last = handle.trackers[0].current.prepared
    torch.testing.assert_close(swapped, out.flip(0), rtol=1e-6, atol=1e-6 * out.abs().max().item())
    torch.testing.assert_close(one[0], out[1], rtol=1e-6, atol=1e-6 * out.abs().max().item())
    if isinstance(method, StaticMaskAttention):
        assert last is first, "the layout must not depend on prompt length (padding is the processor's)"


@torch.no_grad()
def test_garbage_in_padded_text_does_not_reach_the_video(model):
    kwargs = _inputs((10, 3))
    with apply_sparse_attention(model, FullHeadLayout()):
        out = model(**kwargs)[0]
        kwargs["encoder_hidden_states"][1, 3:] = 1e3 * torch.randn(TEXT_LEN - 3, kwargs["encoder_hidden_states"].shape[-1])
        torch.testing.assert_close(model(**kwargs)[0], out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text_lens, keys", [((10, 3), [[138], [131]]), ((5, 5), [[133, 133]]), ((3,), [[131]])],
                         ids=["two-lengths", "same-length", "one-padded"])
@torch.no_grad()
def test_a_dense_call_attends_the_real_keys_unmasked(model, monkeypatch, text_lens, keys):
    """FullAttention's dense calls of a key-padded forward pass no mask to the backend: each sample's
    rows attend its real keys only (one call per distinct length), so diffusers' backend runs its
    unmasked kernel (flash / cuDNN); the output is the stock one (test above)."""
    from pipelines.processors import SparseAttnProcessorBase

    seen = []
    dense = SparseAttnProcessorBase._dense

    def recording(self, query, key, value, attn_mask, **kwargs):
        seen.append((attn_mask is None, query.shape[0], key.shape[1]))
        return dense(self, query, key, value, attn_mask, **kwargs)

    monkeypatch.setattr(SparseAttnProcessorBase, "_dense", recording)
    kwargs = _inputs(text_lens)
    stock = model(**kwargs)[0]
    with apply_sparse_attention(model, FullAttention()) as handle:
        ours = model(**kwargs)[0]
        layers = handle.trackers[0].current.model.num_layers
    video_len = 2 * 8 * 8
    assert all(n > video_len for group in keys for n in group)
    # one forward: per layer, one call per distinct key length, each with the samples of that length
    want = [(True, len(group) if len(set(group)) == 1 else 1, group[0]) for group in keys]
    assert seen == want * layers, seen
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5 * float(stock.abs().max()))
