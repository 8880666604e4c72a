"""StaticMaskAttention (block-sparse kernel) matches the reference masked attention on all three
families, honours HunyuanVideo's padded text on the sparse path, and refuses a resolution its
raw-index mask was not written for."""

import pytest
import torch

from kernels.reference import attention_ref
from pipelines import AttentionMethod, StaticMaskAttention, apply_sparse_attention
from pipelines import tiny
from sparse_vdit.token_layout import TokenLayout

BLOCK = 32


def local_window(layout: TokenLayout, frames: int = 0, rows: int = 1, cols: int = 1):
    """mask_mod: video tokens attend a (2f+1) x (2r+1) x (2c+1) box around themselves; text rows and
    columns dense (text sink)."""

    def mask_mod(b, h, q_idx, kv_idx):
        qf, qr, qc = layout.position(q_idx)
        kf, kr, kc = layout.position(kv_idx)
        near = ((qf - kf).abs() <= frames) & ((qr - kr).abs() <= rows) & ((qc - kc).abs() <= cols)
        return near | layout.is_text(q_idx) | layout.is_text(kv_idx)

    return mask_mod


class ReferenceMaskAttention(AttentionMethod):
    """The reference: float64 dense attention under mask_mod & key padding (kernels.reference); it
    applies ``call.kv_lens`` itself, as a method computing its own output without the bound ops must."""

    def __init__(self, factory):
        self.factory = factory

    def __call__(self, call, q, k, v):
        layout = call.token_layout
        idx = torch.arange(layout.seq_len)
        mask = self.factory(layout)(
            torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, 1, dtype=torch.long),
            idx.view(1, 1, -1, 1), idx.view(1, 1, 1, -1),
        )
        if call.kv_lens is not None:  # padded keys: index >= kv_lens[b]
            mask = mask & (idx.view(1, 1, 1, -1) < call.kv_lens.view(-1, 1, 1, 1))
        out, _ = attention_ref(q, k, v, mask)
        return out.to(q.dtype)


CASES = {
    # latent T x H x W chosen so the joint sequence spans several 32-token blocks, not a multiple of 32
    "wan": (tiny.tiny_wan_transformer, lambda m: tiny.wan_inputs(frames=3, height=12, width=10)),
    "hunyuan": (tiny.tiny_hunyuan_transformer, lambda m: tiny.hunyuan_inputs(frames=2, height=16, width=16, text_lens=(6, 2))),
    "cogvideox": (tiny.tiny_cogvideox_transformer, lambda m: tiny.cogvideox_inputs(m, frames=4, height=16, width=12)),
    "cogvideox1.5": (lambda: tiny.tiny_cogvideox_transformer(patch_size_t=2), lambda m: tiny.cogvideox_inputs(m, frames=8, height=16, width=12)),
}


@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_static_window_matches_reference(name):
    build, make_inputs = CASES[name]
    model = build()
    kwargs = make_inputs(model)
    method = StaticMaskAttention.per_layout(local_window, block_size=BLOCK)
    handle = apply_sparse_attention(model, method)
    ours = model(**kwargs)[0]
    layout = handle.trackers[0].current.token_layout
    built = handle.trackers[0].current.prepared
    assert built.density() < 0.9, "the window should skip blocks, or the test proves nothing"
    handle.remove()
    handle = apply_sparse_attention(model, ReferenceMaskAttention(local_window))
    ref = model(**kwargs)[0]
    handle.remove()
    assert layout.seq_len % BLOCK
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@torch.no_grad()
def test_hunyuan_padded_text_is_masked_on_the_sparse_path():
    model = tiny.tiny_hunyuan_transformer()
    kwargs = tiny.hunyuan_inputs(frames=2, height=8, width=8, text_lens=(6, 2))
    handle = apply_sparse_attention(model, StaticMaskAttention(lambda b, h, q, kv: q >= 0, block_size=BLOCK))
    out = model(**kwargs)[0]
    forward = handle.trackers[0].current
    assert forward.text_valid_lens == (6, 2)
    assert forward.key_padding_mask.shape == (2, forward.token_layout.seq_len)
    assert forward.kv_lens.tolist() == [forward.token_layout.video_len + 6, forward.token_layout.video_len + 2]
    # Garbage in the padded text of sample 1 must not reach the video.
    kwargs["encoder_hidden_states"][1, 2:] = 1e3 * torch.randn(4, kwargs["encoder_hidden_states"].shape[-1])
    torch.testing.assert_close(model(**kwargs)[0], out, rtol=1e-5, atol=1e-5)
    handle.remove()


@torch.no_grad()
def test_layers_option_runs_the_others_dense():
    model = tiny.tiny_wan_transformer()
    kwargs = tiny.wan_inputs(frames=2, height=8, width=8)
    calls = []
    inner = StaticMaskAttention(lambda b, h, q, kv: (q - kv).abs() < 8, block_size=BLOCK, layers=[1])
    original_call = StaticMaskAttention.__call__

    class Spy(StaticMaskAttention):
        def __call__(self, call, q, k, v):
            out = original_call(self, call, q, k, v)
            calls.append((call.layer_index, out is not None))
            return out

    spy = Spy(inner.mask_mod, block_size=BLOCK, layers=[1])
    handle = apply_sparse_attention(model, spy)
    model(**kwargs)
    handle.remove()
    assert calls == [(0, False), (1, True)]


@torch.no_grad()
def test_mask_pinned_to_a_layout_refuses_another_resolution():
    model = tiny.tiny_wan_transformer()
    written_for = TokenLayout(frames=2, rows=4, cols=4)
    method = StaticMaskAttention(lambda b, h, q, kv: (q - kv).abs() < 4, block_size=BLOCK, token_layout=written_for)
    handle = apply_sparse_attention(model, method)
    model(**tiny.wan_inputs(frames=2, height=8, width=8))  # 2x4x4: fine
    with pytest.raises(ValueError, match=r"written for 2x4x4 video tokens.*runs 2x6x4"):
        model(**tiny.wan_inputs(frames=2, height=12, width=8))
    handle.remove()


def test_layout_is_built_once_per_shape():
    """The pattern is evaluated once per token layout: later forwards at that layout reuse the same
    BlockLayout object; a new resolution builds (and keeps) another."""
    model = tiny.tiny_wan_transformer()
    built = []

    def factory(layout):
        built.append(layout)
        return lambda b, h, q, kv: (q - kv).abs() < 4

    method = StaticMaskAttention.per_layout(factory, block_size=BLOCK)
    handle = apply_sparse_attention(model, method)
    prepared = []
    with torch.no_grad():
        for kwargs in (tiny.wan_inputs(timestep=900.0), tiny.wan_inputs(timestep=600.0), tiny.wan_inputs(height=12),
                       tiny.wan_inputs(timestep=300.0)):
            model(**kwargs)
            prepared.append(handle.trackers[0].current.prepared)
    handle.remove()
    assert len(built) == 2 and built[0] != built[1]
    assert prepared[0] is prepared[1] is prepared[3] and prepared[2] is not prepared[0]
