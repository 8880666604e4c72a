"""Tiny random-weight models of the three families, built from configs (no downloads).

The project's proxy models: tests use them on the CPU, demos use them to show the API without a
GPU. Every transformer has 2 heads x 64 head_dim (the block-sparse kernel needs a power-of-two
head_dim >= 16) and one or two layers.

    tiny_wan_transformer()            WanTransformer3DModel, 2 layers
    tiny_hunyuan_transformer()        HunyuanVideoTransformer3DModel, 1 dual + 1 single block
    tiny_cogvideox_transformer()      CogVideoXTransformer3DModel (1.5 with patch_size_t=2)
    tiny_wan_pipeline()               a whole WanPipeline: tiny UMT5 encoder, word-level
                                      tokenizer, tiny AutoencoderKLWan, flow-matching scheduler
    *_inputs(...)                     matching random forward inputs
"""

from __future__ import annotations

import torch

__all__ = [
    "TINY_HEADS",
    "TINY_HEAD_DIM",
    "tiny_wan_transformer",
    "tiny_hunyuan_transformer",
    "tiny_cogvideox_transformer",
    "tiny_wan_pipeline",
    "wan_inputs",
    "hunyuan_inputs",
    "cogvideox_inputs",
]

TINY_HEADS = 2
TINY_HEAD_DIM = 64
TINY_TEXT_DIM = 32
TINY_LATENT_CHANNELS = 4
WAN_VAE_Z_DIM = 16  # AutoencoderKLWan's latent channels: the pipeline's transformer must match
TINY_VOCAB = (
    "a cat dog bird runs jumps flies over under the green red blue field sky river slowly quickly "
    "in on with and video of high quality blurry low worst"
).split()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_wan_transformer(*, num_layers: int = 2, in_channels: int = TINY_LATENT_CHANNELS, seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=TINY_HEADS,
        attention_head_dim=TINY_HEAD_DIM,
        in_channels=in_channels,
        out_channels=in_channels,
        text_dim=TINY_TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    ).eval()


def tiny_hunyuan_transformer(*, num_layers: int = 1, num_single_layers: int = 1, seed: int = 0):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=TINY_LATENT_CHANNELS,
        out_channels=TINY_LATENT_CHANNELS,
        num_attention_heads=TINY_HEADS,
        attention_head_dim=TINY_HEAD_DIM,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        mlp_ratio=1.0,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=False,
        text_embed_dim=TINY_TEXT_DIM,
        pooled_projection_dim=16,
        rope_axes_dim=(16, 24, 24),
    ).eval()


def tiny_cogvideox_transformer(*, patch_size_t: int | None = None, num_layers: int = 1, max_text_seq_length: int = 8, seed: int = 0):
    """CogVideoX (``patch_size_t=None``) or CogVideoX1.5 (``patch_size_t=2``), with RoPE like the 5B models."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=TINY_HEADS,
        attention_head_dim=TINY_HEAD_DIM,
        in_channels=TINY_LATENT_CHANNELS,
        out_channels=TINY_LATENT_CHANNELS,
        time_embed_dim=16,
        text_embed_dim=TINY_TEXT_DIM,
        num_layers=num_layers,
        sample_width=16,
        sample_height=16,
        sample_frames=9,
        patch_size=2,
        patch_size_t=patch_size_t,
        max_text_seq_length=max_text_seq_length,
        use_rotary_positional_embeddings=True,
    ).eval()


# ----------------------------------------------------------------------------------- inputs
def wan_inputs(frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 1, text_len: int = 6, timestep: float = 500.0, seed: int = 0):
    """kwargs of a WanTransformer3DModel forward: latent [B, C, T, H, W], text [B, L, text_dim]."""
    g = _generator(seed)
    return dict(
        hidden_states=torch.randn(batch, TINY_LATENT_CHANNELS, frames, height, width, generator=g),
        timestep=torch.full((batch,), float(timestep)),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        return_dict=False,
    )


def hunyuan_inputs(frames: int = 2, height: int = 8, width: int = 8, *, text_lens=(5, 3), text_len: int = 6, timestep: float = 500.0, seed: int = 0):
    """kwargs of a HunyuanVideoTransformer3DModel forward; one sample per entry of ``text_lens``
    (real tokens of a prompt padded to ``text_len``)."""
    g = _generator(seed)
    batch = len(text_lens)
    mask = torch.zeros(batch, text_len, dtype=torch.long)
    for i, n in enumerate(text_lens):
        mask[i, :n] = 1
    return dict(
        hidden_states=torch.randn(batch, TINY_LATENT_CHANNELS, frames, height, width, generator=g),
        timestep=torch.full((batch,), float(timestep)),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, 16, generator=g),
        return_dict=False,
    )


def cogvideox_inputs(transformer, frames: int = 2, height: int = 8, width: int = 8, *, batch: int = 1, timestep: int = 500, seed: int = 0):
    """kwargs of a CogVideoXTransformer3DModel forward, RoPE computed as CogVideoXPipeline does.

    Latent is [B, T, C, H, W] (CogVideoX puts frames second).
    """
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    g = _generator(seed)
    cfg = transformer.config
    p, p_t = cfg.patch_size, cfg.patch_size_t
    grid_h, grid_w = height // p, width // p
    if p_t is None:
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim, crops_coords=((0, 0), (grid_h, grid_w)), grid_size=(grid_h, grid_w),
            temporal_size=frames, device="cpu",
        )
    else:
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=(grid_h, grid_w),
            temporal_size=-(-frames // p_t), grid_type="slice", max_size=(grid_h, grid_w), device="cpu",
        )
    return dict(
        hidden_states=torch.randn(batch, frames, TINY_LATENT_CHANNELS, height, width, generator=g),
        encoder_hidden_states=torch.randn(batch, cfg.max_text_seq_length, TINY_TEXT_DIM, generator=g),
        timestep=torch.full((batch,), int(timestep), dtype=torch.long),
        image_rotary_emb=(cos, sin),
        return_dict=False,
    )


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
