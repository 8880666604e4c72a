"""A whole tiny WanPipeline (tiny UMT5, word-level tokenizer, tiny AutoencoderKLWan) runs end to
end with our processors and CFG; FullAttention gives the stock video; remove() restores it exactly."""

import torch

from pipelines import FullAttention, StaticMaskAttention, apply_sparse_attention
from pipelines import tiny
from pipelines.processors import SparseAttnProcessorBase


def _generate(pipe, output_type="latent"):
    return pipe(
        "a red bird flies over the river", negative_prompt="blurry low quality", num_frames=5, height=64, width=64,
        num_inference_steps=2, max_sequence_length=16, guidance_scale=5.0, output_type=output_type,
        generator=torch.Generator().manual_seed(0),
    ).frames


def test_wan_pipeline_end_to_end():
    pipe = tiny.tiny_wan_pipeline()
    pipe.set_progress_bar_config(disable=True)
    stock = _generate(pipe)

    with apply_sparse_attention(pipe, FullAttention()):
        full = _generate(pipe)
    torch.testing.assert_close(full, stock, rtol=1e-5, atol=1e-5 * stock.abs().max().item())

    # 2 x 4 x 4 = 32 tokens: per-frame attention through the block-sparse kernel (16-token blocks).
    frame_local = StaticMaskAttention.per_layout(
        lambda layout: lambda b, h, q, kv: q // layout.frame_len == kv // layout.frame_len, block_size=16
    )
    handle = apply_sparse_attention(pipe, frame_local)
    sparse = _generate(pipe, output_type="pt")  # decoded: the whole pipeline ran
    assert sparse.shape == (1, 5, 3, 64, 64)
    assert handle.trackers[0].current.prepared.density() == 0.5
    handle.remove()
    assert torch.isfinite(sparse).all()

    assert not any(isinstance(p, SparseAttnProcessorBase) for p in pipe.transformer.attn_processors.values())
    assert "set_timesteps" not in vars(pipe.scheduler)
    assert torch.equal(_generate(pipe), stock)
