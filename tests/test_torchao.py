"""Our methods compose with what users already run: diffusers' ``TorchAoConfig`` float8 quantisation
of the linear layers (torchao) and regional compilation (``compile_repeated_blocks()``).

The tiny Wan transformer is saved and loaded back with ``from_pretrained(...,
quantization_config=TorchAoConfig(Float8WeightOnlyConfig()))``, the way a user quantises (every
``nn.Linear`` but the model's float32 modules gets float8 e4m3 weights with a per-row scale). On it:
``FullAttention`` gives the quantised stock output; a plan's heads and every kernel call of AdaSpa
(its first search's dense attention, its sparse steps) equal the float64 reference of their layout
on the q, k, v the quantised projections made (as tests/test_plan_pipelines.py checks them); and
with the blocks compiled by inductor, our processors give the compiled stock output, compile no
frame per layer, and a plan compiled gives its eager output.

Why weight-only on the CPU: ``Float8DynamicActivationFloat8WeightConfig`` (float8 activations too,
the float8 GEMMs the GPU timing uses) needs CUDA compute capability 8.9+ and torchao refuses it on
the CPU at ``quantize_`` time. ``Float8WeightOnlyConfig`` runs on the CPU (torchao 0.18, torch
2.13): the matmul dequantises the weight to the activations' dtype, so the attention still sees q,
k, v computed from float8 weights, which is what could break our processors. Skipped only where
torchao is not installed (``pip install -e '.[test]'`` installs it)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

pytest.importorskip("torchao", minversion="0.15.0", reason="needs torchao >= 0.15 (diffusers' TorchAoConfig): pip install -e '.[test]'")

import kernels.attention as kernel_ops  # noqa: E402
from helpers import assert_close_to_reference  # noqa: E402
from kernels.reference import attention_ref, block_sparse_attention_ref  # noqa: E402
from pipelines import FullAttention, apply_sparse_attention, tiny  # noqa: E402
from test_adaspa_pipelines import STEPS, config as adaspa_config, run_steps  # noqa: E402
from test_plan_pipelines import DENSE_LAYER, SEARCHED, STEP_MODES, TIMESTEPS, captured, check_heads_against_reference, plan_for  # noqa: E402, F401

from adaspa.schedule import CACHED_SEARCH, DENSE, FIRST_SEARCH, SPARSE  # noqa: E402

pytestmark = pytest.mark.slow

LAYERS = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Wan transformer (``LAYERS`` blocks) saved as a diffusers checkpoint."""
    path = tmp_path_factory.mktemp("tiny-wan")
    tiny.tiny_wan_transformer(num_layers=LAYERS).save_pretrained(path)
    return path


def load(checkpoint, quantized: bool = True):
    """The checkpoint as a user loads it, float8-quantised with diffusers' TorchAoConfig (or not)."""
    from diffusers import TorchAoConfig, WanTransformer3DModel
    from torchao.quantization import Float8WeightOnlyConfig

    config = TorchAoConfig(Float8WeightOnlyConfig()) if quantized else None
    return WanTransformer3DModel.from_pretrained(checkpoint, quantization_config=config, torch_dtype=torch.float32)


def assert_float8_projections(model) -> None:
    from torchao.quantization import Float8Tensor

    for i, block in enumerate(model.blocks):
        for name in ("to_q", "to_k", "to_v"):
            weight = getattr(block.attn1, name).weight
            assert isinstance(weight, Float8Tensor) and weight.qdata.dtype == torch.float8_e4m3fn, \
                f"blocks.{i}.attn1.{name} is not float8: {type(weight).__name__}"


def inputs(timestep: float = 500.0) -> dict:
    return tiny.wan_inputs(**SEARCHED, timestep=timestep)


# ----------------------------------------------------------------------------------- eager
@torch.no_grad()
def test_full_attention_gives_the_quantized_stock_output(checkpoint):
    model = load(checkpoint)
    assert_float8_projections(model)
    stock = model(**inputs())[0]
    unquantized = load(checkpoint, quantized=False)(**inputs())[0]
    assert (stock - unquantized).abs().max() > 1e-3 * unquantized.abs().max(), "the quantisation changed nothing"
    with apply_sparse_attention(model, FullAttention()):
        ours = model(**inputs())[0]
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5 * stock.abs().max().item())


@torch.no_grad()
def test_plan_heads_match_the_reference_of_their_mode(checkpoint, captured):  # noqa: F811
    """As tests/test_plan_pipelines.py: each head on the quantised projections' q, k, v."""
    model = load(checkpoint)
    with apply_sparse_attention(model, plan_for(model)) as handle:
        handle.trackers[0].start_generation(list(TIMESTEPS))
        for step, t in enumerate(TIMESTEPS):
            captured.__init__()
            model(**inputs(t))
            assert captured.dense == [DENSE_LAYER] and [c[0] for c in captured.sparse] == [0, 2]
            check_heads_against_reference(captured, STEP_MODES[step], handle.trackers[0].current.token_layout)


@torch.no_grad()
def test_adaspa_kernel_calls_match_the_reference_of_their_layout(checkpoint, monkeypatch):
    """AdaSpa (s = 0.5) over its five phases: every call of our kernels equals the float64
    attention on the q, k, v the quantised projections made: dense with the LSE at the first
    search, under the layout it selected at the sparse steps (the cached search's included)."""
    calls = {"attention_with_lse": [], "block_sparse_attention": []}

    def recording(name):
        kernel = getattr(kernel_ops, name)

        def recorded(q, k, v, *args, **kwargs):
            out = kernel(q, k, v, *args, **kwargs)
            calls[name].append((q, k, v, args[0] if args else None, out[0] if name == "attention_with_lse" else out))
            return out

        monkeypatch.setattr(kernel_ops, name, recorded)

    recording("attention_with_lse")
    recording("block_sparse_attention")
    model = load(checkpoint)
    with apply_sparse_attention(model, adaspa_config(0.5)) as handle:
        run_steps(model, handle, {"cond": inputs()})
    phases = [adaspa_config(0.5).schedule(STEPS).phase(i) for i in range(STEPS)]
    assert phases == [DENSE, FIRST_SEARCH, SPARSE, CACHED_SEARCH, SPARSE]
    dense, sparse = calls["attention_with_lse"], calls["block_sparse_attention"]
    assert len(dense) == LAYERS, f"{len(dense)} dense calls with the LSE, expected one per layer at the first search"
    assert len(sparse) == 3 * LAYERS, f"{len(sparse)} sparse calls, expected one per layer at steps 2, 3 and 4"
    for i, (q, k, v, _, out) in enumerate(dense):
        assert_close_to_reference(out, attention_ref(q, k, v)[0], attention_ref(q, k, v, upcast=False)[0],
                                  name=f"first search, layer {i}")
    for i, (q, k, v, layout, out) in enumerate(sparse):
        mask = layout.to_element_mask().cpu()
        name = f"step {2 + i // LAYERS}, layer {i % LAYERS}"
        assert mask.any() and not mask.all(), f"{name}: the layout must be sparse, or the test proves nothing"
        lowp, _ = attention_ref(q, k, v, mask, upcast=False)
        assert_close_to_reference(out, block_sparse_attention_ref(q, k, v, layout)[0], lowp, name=name)


# ----------------------------------------------------------------------------------- compiled
@torch.no_grad()
def test_quantized_and_compiled_blocks_with_our_processors(checkpoint):
    """One quantised model, its blocks compiled by inductor once (``compile_repeated_blocks()``), run
    as a benchmark does: stock, then FullAttention (the compiled stock output), then a plan (its
    eager output). No frame per layer: when our processors replace the stock ones the blocks
    recompile no more frames than the stock compile took (one here; one per layer would be
    ``LAYERS``), and the plan after FullAttention recompiles nothing."""
    model = load(checkpoint)
    plan = plan_for(model)

    def stock_run():
        return [model(**inputs(t))[0] for t in TIMESTEPS]

    def plan_run():
        with apply_sparse_attention(model, plan) as handle:
            handle.trackers[0].start_generation(list(TIMESTEPS))
            return [model(**inputs(t))[0] for t in TIMESTEPS]

    def full_run():
        with apply_sparse_attention(model, FullAttention()):
            return stock_run()

    eager_plan = plan_run()
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    try:
        model.compile_repeated_blocks(backend=counter)
        stock = stock_run()
        stock_frames = counter.frame_count
        full = full_run()
        full_frames = counter.frame_count
        compiled_plan = plan_run()
        frames = counter.frame_count
    finally:
        torch._dynamo.reset()
    assert 0 < stock_frames < LAYERS
    assert full_frames - stock_frames <= stock_frames, \
        f"stock compiled {stock_frames} frames, ours {full_frames - stock_frames} more for {LAYERS} layers"
    assert frames == full_frames, f"the plan recompiled: {frames - full_frames} frames after FullAttention's"
    for step, (ours, theirs) in enumerate(zip(full, stock)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item(),
                                   msg=lambda m: f"FullAttention vs stock, compiled, step {step}: {m}")
    for step, (ours, eager) in enumerate(zip(compiled_plan, eager_plan)):
        torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item(),
                                   msg=lambda m: f"plan compiled vs eager, step {step}: {m}")
