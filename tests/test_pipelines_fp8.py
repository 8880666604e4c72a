"""apply_sparse_attention(..., precision="fp8"): every self-attention call of the method runs the
FP8 kernels (its sparse layouts, and its dense calls through our dense kernel), close to the
model's own precision; settings the kernels cannot serve are refused at install.

On the CPU the kernels run under the Triton interpreter (conftest), which keeps P in float32 (see
tests/test_kernels_fp8.py); the quantisation of q, k and v is the real one. With a GPU the models
run there.
"""

from __future__ import annotations

import pytest
import torch

import kernels.attention as kernel_ops
from pipelines import FullAttention, StaticMaskAttention, apply_sparse_attention, tiny
from pipelines.apply import check_precision

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _on_device(model, kwargs):
    return model.to(DEVICE), {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


@pytest.fixture
def quantise_calls(monkeypatch):
    """Counts the FP8 quantisations (one per attention call that runs at precision="fp8")."""
    calls = []
    original = kernel_ops.quantize_qkv

    def counting(q, k, v, kv_lens=None, *, scale):
        calls.append(tuple(q.shape))
        return original(q, k, v, kv_lens, scale=scale)

    monkeypatch.setattr(kernel_ops, "quantize_qkv", counting)
    return calls


@torch.no_grad()
@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_full_attention_fp8_is_dense_fp8_close_to_stock(family, quantise_calls):
    """FullAttention returns None (dense): at "fp8" that dense call runs our FP8 kernel, key
    padding included (HunyuanVideo's padded text)."""
    if family == "wan":
        model, kwargs = tiny.tiny_wan_transformer(), tiny.wan_inputs(frames=2, height=8, width=8)
    else:
        model, kwargs = tiny.tiny_hunyuan_transformer(), tiny.hunyuan_inputs(text_lens=(5, 3))
    layers = 2
    model, kwargs = _on_device(model, kwargs)
    stock = model(**kwargs)[0]
    handle = apply_sparse_attention(model, FullAttention(), precision="fp8")
    try:
        ours = model(**kwargs)[0]
    finally:
        handle.remove()
    assert len(quantise_calls) == layers, f"expected one FP8 call per self-attention layer, got {quantise_calls}"
    err = _rel(ours, stock)
    assert 0 < err < 0.01, f"FP8 forward differs from the stock one by {err:.3e} (relative L2)"


@torch.no_grad()
def test_static_pattern_fp8_runs_its_layout_in_fp8(quantise_calls):
    """A method's layouts run the FP8 block-sparse kernel (64 x 64 blocks over 256 tokens)."""
    # 4 x 8 x 8 = 256 tokens
    model, kwargs = _on_device(tiny.tiny_wan_transformer(), tiny.wan_inputs(frames=4, height=16, width=16))

    def band(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() < 96

    method = StaticMaskAttention(band, block_size=64)
    handle = apply_sparse_attention(model, method)
    try:
        want = model(**kwargs)[0]
    finally:
        handle.remove()
    assert not quantise_calls
    handle = apply_sparse_attention(model, StaticMaskAttention(band, block_size=64), precision="fp8")
    try:
        got = model(**kwargs)[0]
    finally:
        handle.remove()
    assert quantise_calls == [(1, 2, 256, 64)] * 2
    err = _rel(got, want)
    assert 0 < err < 0.01, f"FP8 forward differs from the bf16-path one by {err:.3e} (relative L2)"


def test_precision_refusals():
    model = tiny.tiny_wan_transformer()
    with pytest.raises(ValueError, match="precision must be one of"):
        apply_sparse_attention(model, FullAttention(), precision="int8")
    assert not any(type(p).__module__.startswith("pipelines") for p in model.attn_processors.values())
    with pytest.raises(ValueError, match="head dims .* not 96.*precision=None"):
        check_precision("fp8", 96)
    check_precision(None, 96)
    check_precision("fp8", 128)


@torch.no_grad()
def test_fp8_layout_blocks_too_small_says_so():
    """A layout whose blocks FP8 cannot serve fails at the call with the kernels' message."""
    model, kwargs = _on_device(tiny.tiny_wan_transformer(), tiny.wan_inputs(frames=2, height=8, width=8))
    handle = apply_sparse_attention(model, StaticMaskAttention(lambda b, h, q, k: q >= k, block_size=16),
                                    precision="fp8")
    try:
        with pytest.raises(ValueError, match="KV_BLOCK >= 32.*precision=None"):
            model(**kwargs)
    finally:
        handle.remove()



@torch.no_grad()
def test_evaluate_at_fp8_measures_full_attention_against_the_stock_reference(monkeypatch):
    """evaluate(precision="fp8"): FullAttention's row is dense FP8 against the stock (bf16-path)
    reference, so its PSNR is finite and high; the report says the precision."""
    from pipelines.proxy import SMOKE_CONFIG, build_proxy_pipeline
    from sparse_vdit.cli.evaluation import evaluate

    pipe = build_proxy_pipeline(SMOKE_CONFIG).to(DEVICE)
    report = evaluate(pipe, {"full": FullAttention()}, ["a red circle moves right"], num_inference_steps=2,
                      warmup=0, videos=False, progress=False, precision="fp8",
                      height=16, width=32, num_frames=9, max_sequence_length=16, guidance_scale=5.0)
    full = [r for r in report.rows if r.method == "full"]
    assert len(full) == 1 and report.meta["precision"] == "fp8"
    assert 30.0 < full[0].psnr < float("inf"), f"FP8 dense PSNR against stock: {full[0].psnr}"
