"""Allegro (``AllegroTransformer3DModel``): everything sparse-vdit knows about this family.

Self-attention ``transformer_blocks.{i}.attn1`` over video tokens only: the prompt reaches the
video through the cross-attention ``attn2`` (its padding as a bias there), which stays stock. Both
are diffusers' generic ``Attention`` with ``AllegroAttnProcessor2_0``: no q/k norm, 3-D RoPE (the
head split in three, t / h / w, each rotated by halves) applied to q and k of ``attn1`` from the
pipeline's ``image_rotary_emb`` (frequencies and per-token grid positions, frames major).

Heads are 24 x 96: the kernels zero-pad 96 to 128 (exact; a third more attention compute than a
native 96 kernel would do). The tiny model keeps 96 (its RoPE needs a head dim divisible by 3 and
is built for the real one).

Latent [B, C, T, H, W]. The model patches each frame alone (``pos_embed``, a 2-D ``PatchEmbed`` over
frames folded into the batch), so the token grid is (T, H / p, W / p) with p = ``patch_size``,
whatever ``patch_size_t`` says (1 in the released config). A self-attention mask (the model's
optional 4-D video ``attention_mask``, which ``AllegroPipeline`` never passes) makes the call
dense, as stock. diffusers 0.42 gives this model no ``set_attn_processor``, no
``_repeated_blocks`` and no ``_cp_plan``: processors are installed module by module and blocks
compile with ``block.compile()``.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

from pipelines.families.record import StandardSize, config_value
from pipelines.families.tiny_sizes import TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.families.wan import wan_family
from pipelines.processors import SparseAttnProcessorBase, legacy_attention_heads

__all__ = ["FAMILY", "AllegroSparseAttnProcessor", "allegro_inputs", "allegro_rotary_emb", "tiny_allegro_transformer"]

HEAD_DIM = 96  # Allegro's (24 heads); the tiny model's too


class AllegroSparseAttnProcessor(SparseAttnProcessorBase):
    """Allegro self-attention (``attn1``): stock projections and 3-D RoPE, then our attention step.

    hidden_states: [B, S, C] video tokens, S = frames x rows x cols; returns [B, S, C]. A
    cross-attention call (``encoder_hidden_states`` given, i.e. installed on ``attn2`` by mistake)
    is handed to the stock processor.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        image_rotary_emb=None,
    ) -> torch.Tensor:
        from diffusers.models.attention_processor import AllegroAttnProcessor2_0
        from diffusers.models.embeddings import apply_rotary_emb_allegro

        if encoder_hidden_states is not None:
            stock = self.stock_processor(attn, AllegroAttnProcessor2_0)
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, image_rotary_emb)
        query, key, value, attention_mask = legacy_attention_heads(attn, hidden_states, attention_mask)  # [B, H, S, D]
        if image_rotary_emb is not None:
            query = apply_rotary_emb_allegro(query, *image_rotary_emb)
            key = apply_rotary_emb_allegro(key, *image_rotary_emb)
        hidden_states = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask)
        hidden_states = attn.to_out[0](hidden_states.flatten(2, 3).to(query.dtype))
        return attn.to_out[1](hidden_states)


def _patch_size(config) -> tuple[int, int, int]:
    """(1, p, p): ``pos_embed`` patches each frame alone, never across frames."""
    p = int(config_value(config, "patch_size"))
    return 1, p, p


# ------------------------------------------------------------------------------- tiny test model
def tiny_allegro_transformer(*, num_layers: int = 2, seed: int = 0):
    """AllegroTransformer3DModel, 2 heads x 96 (Allegro's head dim), patch 2, ``num_layers``
    blocks, random weights."""
    from diffusers import AllegroTransformer3DModel

    torch.manual_seed(seed)
    return AllegroTransformer3DModel(
        patch_size=2, patch_size_t=1, num_attention_heads=TINY_HEADS, attention_head_dim=HEAD_DIM,
        in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, num_layers=num_layers,
        cross_attention_dim=TINY_HEADS * HEAD_DIM, caption_channels=TINY_TEXT_DIM, sample_frames=2, sample_height=8,
        sample_width=8,
    ).eval()


def allegro_rotary_emb(config, frames: int, height: int, width: int, device=None):
    """The ``image_rotary_emb`` ``AllegroPipeline`` passes for a latent of frames x height x width:
    its own helper, run on the latent (VAE scale 1)."""
    from diffusers import AllegroPipeline

    pipe = SimpleNamespace(vae_scale_factor_spatial=1, transformer=SimpleNamespace(config=config))
    return AllegroPipeline._prepare_rotary_positional_embeddings(pipe, 1, height, width, frames, device)


def allegro_inputs(model, frames: int = 2, height: int = 8, width: int = 8, *, text_lens=(5, 3), text_len: int = 6,
                   timestep: float = 500.0, seed: int = 0) -> dict:
    """kwargs of an AllegroTransformer3DModel forward as ``AllegroPipeline`` makes them: latent
    [B, C, T, H, W], one sample per entry of ``text_lens`` (both CFG branches in one batch), each
    prompt's real tokens padded to ``text_len`` (the mask reaches only the cross-attention), the
    pipeline's RoPE."""
    g = tiny_generator(seed)
    batch = len(text_lens)
    return dict(
        hidden_states=torch.randn(batch, TINY_LATENT_CHANNELS, frames, height, width, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        encoder_attention_mask=(torch.arange(text_len) < torch.tensor(text_lens).view(-1, 1)).long(),
        timestep=torch.full((batch,), float(timestep)),
        image_rotary_emb=allegro_rotary_emb(model.config, frames, height, width),
        return_dict=False,
    )


FAMILY = dataclasses.replace(
    wan_family(  # read as Wan is: video-only self-attention of a [B, C, T, H, W] latent
        "AllegroTransformer3DModel",
        patterns=(r"transformer_blocks\.(\d+)\.attn1",),
        processor_cls=AllegroSparseAttnProcessor,
        tiny_transformer=tiny_allegro_transformer,
        tiny_inputs=allegro_inputs,
        name="Allegro",
        pipelines=("AllegroPipeline",),
        # The pipeline's default: 88 frames of 720 x 1280 (the config's sample size x the VAE's 4x / 8x).
        standard=StandardSize("720 x 1280, 88 frames", {"patch_size": 2}, (22, 90, 160)),
    ),
    patch_size=_patch_size,
)
