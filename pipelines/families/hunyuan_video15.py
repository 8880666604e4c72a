"""HunyuanVideo-1.5 (``HunyuanVideo15Transformer3DModel``): everything sparse-vdit knows about it.

Joint attention ``transformer_blocks.{i}.attn`` (dual stream only) over [video | conditioning],
where the conditioning is the image tokens (SigLIP, 729; all padding in text-to-video), the ByT5
glyph tokens and the MLLM prompt tokens, each padded, reordered by the model so that every
sample's real tokens come first and its padding last: sample b's real keys are the first
``video_len + real_b``. The stock processor builds a query-and-key mask from the model's [B, St]
mask; ``HunyuanVideo15SparseAttnProcessor`` gives dense attention that same mask and every method
the key lengths (padded query rows never reach the video). The token refiner stays stock. Latent
[B, C, T, H, W] (image-to-video: the image latent and a mask are extra channels, on the grid);
patch (``patch_size_t``, ``patch_size``, ``patch_size``), 1 x 1 x 1 in the released models (a
16x spatial VAE). No ``_cp_plan`` in diffusers 0.42.
"""

from __future__ import annotations

import torch

from pipelines.families.hunyuan_video import HunyuanVideoSparseAttnProcessor
from pipelines.families.record import Family, StandardSize, square_patch_size, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "HunyuanVideo15SparseAttnProcessor", "hunyuan15_inputs", "tiny_hunyuan15_transformer"]

MLLM_TEXT_LEN = 1000  # HunyuanVideo15Pipeline.tokenizer_max_length
GLYPH_TEXT_LEN = 256  # its ByT5 tokenizer_2 max length
IMAGE_TOKENS = 729  # its vision_num_semantic_tokens
TINY_TEXT_2_DIM = 16
TINY_IMAGE_DIM = 16


class HunyuanVideo15SparseAttnProcessor(HunyuanVideoSparseAttnProcessor):
    """HunyuanVideo-1.5 joint attention: HunyuanVideo's dual-stream processor. Stock masks padded
    rows and columns with a [B, 1, S, S] mask built from the model's [B, St] text mask (real tokens
    lead); here a dense call attends each sample's real keys unmasked and zeroes the padded rows
    (SDPA's output for a fully masked row), and every method gets the key lengths.

    The square mask is built only where a dense call must take a mask (context parallelism's dense
    fallback): at 720p (113,585 tokens) it is 13 GB, and the stock processor's copy of it alone
    runs an 80 GB H100 out of memory (benchmarks/RESULTS.md).
    """

    dense_zeroes_padded_rows = True  # the stock mask is square: a padded row attends nothing (SDPA: 0)

    def dense_mask(self, attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
        """The key-padding mask [B, 1, 1, S] (True: a real key); ``_dense`` squares it."""
        if attention_mask is None:
            return None
        batch = attention_mask.shape[0]
        mask = torch.nn.functional.pad(attention_mask, (seq_len - attention_mask.shape[1], 0), value=True).bool()
        return mask.view(batch, 1, 1, seq_len)

    def _dense(self, query, key, value, attn_mask, *, parallel: bool = True) -> torch.Tensor:
        if attn_mask is not None and attn_mask.dim() == 4 and attn_mask.shape[2] == 1:  # as stock: rows & keys
            attn_mask = attn_mask & attn_mask.transpose(2, 3)
        return super()._dense(query, key, value, attn_mask, parallel=parallel)


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    texts = (args["encoder_hidden_states"], args.get("encoder_hidden_states_2"))
    masks = (args["encoder_attention_mask"], args.get("encoder_attention_mask_2"))
    image = args.get("image_embeds")
    # As the model does: text-to-video (all-zero image embeds) masks every image token.
    image_real = 0 if image is None or bool((image == 0).all()) else image.shape[1]
    padded = sum(t.shape[1] for t in texts if t is not None) + (0 if image is None else image.shape[1])
    real = sum(m.bool().sum(dim=1) for m in masks if m is not None) + image_real
    lens = tuple(int(n) for n in real.tolist())
    valid = lens if any(n < padded for n in lens) else None
    return ForwardInputs(**video_inputs(args["hidden_states"], args["timestep"], 2), text_len=padded, text_valid_lens=valid)


# ------------------------------------------------------------------------------- tiny test model
def tiny_hunyuan15_transformer(*, num_layers: int = 2, seed: int = 0):
    """HunyuanVideo15Transformer3DModel, 2 heads x 64, ``num_layers`` blocks, image-to-video channels
    (latent, image latent, mask), random weights."""
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(seed)
    return HunyuanVideo15Transformer3DModel(
        in_channels=2 * TINY_LATENT_CHANNELS + 1, out_channels=TINY_LATENT_CHANNELS, num_attention_heads=TINY_HEADS,
        attention_head_dim=TINY_HEAD_DIM, num_layers=num_layers, num_refiner_layers=1, mlp_ratio=1.0, patch_size=1,
        patch_size_t=1, text_embed_dim=TINY_TEXT_DIM, text_embed_2_dim=TINY_TEXT_2_DIM,
        image_embed_dim=TINY_IMAGE_DIM, rope_axes_dim=(16, 24, 24),
    ).eval()


def hunyuan15_inputs(frames: int = 2, height: int = 4, width: int = 4, *, text_lens=(5, 3), text_len: int = 6,
                     glyph_lens=(2, 1), glyph_len: int = 4, image_tokens: int = 3, image: bool = True,
                     timestep: float = 500.0, seed: int = 0):
    """kwargs of a HunyuanVideo15Transformer3DModel forward, one sample per entry of ``text_lens``
    (real MLLM tokens of ``text_len``; real glyph tokens of ``glyph_len``); ``image=False``:
    text-to-video (all-zero image embeds)."""
    g = tiny_generator(seed)
    batch = len(text_lens)

    def mask(lens, n):
        return (torch.arange(n) < torch.tensor(lens).view(-1, 1)).long()

    embeds = torch.randn(batch, image_tokens, TINY_IMAGE_DIM, generator=g)
    return dict(
        hidden_states=torch.randn(batch, 2 * TINY_LATENT_CHANNELS + 1, frames, height, width, generator=g),
        timestep=torch.full((batch,), float(timestep)),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        encoder_attention_mask=mask(text_lens, text_len),
        encoder_hidden_states_2=torch.randn(batch, glyph_len, TINY_TEXT_2_DIM, generator=g),
        encoder_attention_mask_2=mask(glyph_lens, glyph_len),
        image_embeds=embeds if image else torch.zeros_like(embeds),
        return_dict=False,
    )


FAMILY = Family(
    class_name="HunyuanVideo15Transformer3DModel",
    processor_cls=HunyuanVideo15SparseAttnProcessor,
    patterns=(r"transformer_blocks\.(\d+)\.attn",),
    text_position="after",
    patch_size=square_patch_size,
    default_text_len=lambda config: MLLM_TEXT_LEN + GLYPH_TEXT_LEN + IMAGE_TOKENS,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_hunyuan15_transformer,
    tiny_inputs=lambda transformer: hunyuan15_inputs(),
    name="HunyuanVideo-1.5",
    pipelines=("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline"),
    standard=StandardSize("720p, 121 frames", {"patch_size": 1, "patch_size_t": 1}, (31, 45, 80)),
)
