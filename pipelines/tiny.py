"""Tiny random-weight models of the three families, built from configs (no downloads).

The project's proxy models: tests use them on the CPU, demos use them to show the API without a
GPU. Every transformer has 2 heads x 64 head_dim (the kernels' tuned head dim) and one or two
layers. Each family's tiny transformer and inputs live with its
record (``pipelines.families.<family>``) and are re-exported here; the whole pipeline is built here.

    tiny_wan_transformer()            WanTransformer3DModel, 2 layers
    tiny_hunyuan_transformer()        HunyuanVideoTransformer3DModel, 1 dual + 1 single block
    tiny_cogvideox_transformer()      CogVideoXTransformer3DModel (1.5 with patch_size_t=2)
    tiny_wan_pipeline()               a whole WanPipeline: tiny UMT5 encoder, word-level
                                      tokenizer, tiny AutoencoderKLWan, flow-matching scheduler
    *_inputs(...)                     matching random forward inputs
"""

from __future__ import annotations

import torch

from pipelines.families.cogvideox import cogvideox_inputs, tiny_cogvideox_transformer
from pipelines.families.hunyuan_video import hunyuan_inputs, tiny_hunyuan_transformer
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM
from pipelines.families.wan import tiny_wan_transformer, wan_inputs

__all__ = [
    "TINY_HEADS",
    "TINY_HEAD_DIM",
    "TINY_TEXT_DIM",
    "TINY_LATENT_CHANNELS",
    "WAN_VAE_Z_DIM",
    "tiny_wan_transformer",
    "tiny_hunyuan_transformer",
    "tiny_cogvideox_transformer",
    "tiny_wan_pipeline",
    "tiny_word_tokenizer",
    "wan_inputs",
    "hunyuan_inputs",
    "cogvideox_inputs",
]

WAN_VAE_Z_DIM = 16  # AutoencoderKLWan's latent channels: the pipeline's transformer must match
TINY_VOCAB = (
    "a cat dog bird runs jumps flies over under the green red blue field sky river slowly quickly "
    "in on with and video of high quality blurry low worst"
).split()


# ---------------------------------------------------------------------------------- pipeline
def tiny_word_tokenizer(words=TINY_VOCAB):
    """A word-level fast tokenizer over ``words`` (+ <pad>, <unk>, </s>): no files, no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def tiny_wan_pipeline(*, num_layers: int = 2, seed: int = 0):
    """A whole ``WanPipeline`` from configs: tiny UMT5 encoder (d_model 32), word-level tokenizer,
    tiny ``AutoencoderKLWan`` (4x temporal, 8x spatial, 16 latent channels), the tiny transformer
    and ``FlowMatchEulerDiscreteScheduler``. Call with ``max_sequence_length`` small (e.g. 16),
    ``num_frames=5``, ``height=width=32`` or larger multiples of 16.
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_word_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=TINY_TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
        )
    ).eval()
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=WAN_VAE_Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    transformer = tiny_wan_transformer(num_layers=num_layers, in_channels=WAN_VAE_Z_DIM, seed=seed)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
