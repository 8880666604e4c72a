"""Mochi (``MochiTransformer3DModel``): everything sparse-vdit knows about this family.

Joint attention ``transformer_blocks.{i}.attn1`` over [video | text]: the stock processor runs
each sample alone on its real text tokens (the mask's, which lead the padded prompt) and leaves
the padded text rows zero. ``MochiSparseAttnProcessor`` runs the batch at once with the key
lengths (real keys: the video and the sample's real text), zeroes the padded text rows as stock,
and so gives the stock output. RoPE (per head) on the video only. Latent [B, C, T, H, W]; patch
(1, ``patch_size``, ``patch_size``). diffusers 0.42 gives this model no ``set_attn_processor``,
no ``_repeated_blocks`` and no ``_cp_plan``: ``apply_sparse_attention`` installs the processors
module by module.
"""

from __future__ import annotations

import torch

from pipelines.families.record import Family, StandardSize, prefix_text_lens, square_patch_size, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "MochiSparseAttnProcessor", "mochi_inputs", "tiny_mochi_transformer"]

PIPELINE_TEXT_LEN = 256  # MochiPipeline's max_sequence_length default


def _mochi_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Mochi's RoPE on even / odd pairs of x [B, S, H, D], as diffusers' MochiAttnProcessor2_0."""
    x_even, x_odd = x[..., 0::2].float(), x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


def _heads(x: torch.Tensor, heads: int, norm) -> torch.Tensor:
    x = x.unflatten(2, (heads, -1))
    return x if norm is None else norm(x)


class MochiSparseAttnProcessor(SparseAttnProcessorBase):
    """Mochi joint attention. hidden_states: [B, Sv, C] video, encoder_hidden_states: [B, St, Ct]
    text (padded), attention_mask: [B, St], nonzero on real text tokens (which lead); returns
    (video [B, Sv, C], text [B, St, Ct]) as stock."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        heads = attn.heads
        query = _heads(attn.to_q(hidden_states), heads, attn.norm_q)
        key = _heads(attn.to_k(hidden_states), heads, attn.norm_k)
        value = _heads(attn.to_v(hidden_states), heads, None)
        text_query = _heads(attn.add_q_proj(encoder_hidden_states), heads, attn.norm_added_q)
        text_key = _heads(attn.add_k_proj(encoder_hidden_states), heads, attn.norm_added_k)
        text_value = _heads(attn.add_v_proj(encoder_hidden_states), heads, None)
        if image_rotary_emb is not None:
            query = _mochi_rotary(query, *image_rotary_emb)
            key = _mochi_rotary(key, *image_rotary_emb)
        n_video, n_text = query.shape[1], text_query.shape[1]
        real = torch.cat([attention_mask.new_ones(attention_mask.shape[0], n_video), attention_mask], dim=1).bool()
        out = self.attend(
            torch.cat([query, text_query], dim=1), torch.cat([key, text_key], dim=1), torch.cat([value, text_value], dim=1),
            real[:, None, None, :], mask_is_key_padding=True, text_tokens=n_text,
        )
        out = out.flatten(2, 3).masked_fill(~real[..., None], 0.0)  # padded text rows are zero, as stock
        hidden_states, encoder_hidden_states = out.split_with_sizes((n_video, n_text), dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def _read_inputs(transformer, args: dict) -> ForwardInputs:
    text = args["encoder_hidden_states"]
    valid = prefix_text_lens(args.get("encoder_attention_mask"), text.shape[1], "Mochi's encoder_attention_mask")
    return ForwardInputs(**video_inputs(args["hidden_states"], args["timestep"], 2), text_len=text.shape[1], text_valid_lens=valid)


# ------------------------------------------------------------------------------- tiny test model
def tiny_mochi_transformer(*, num_layers: int = 2, seed: int = 0):
    """MochiTransformer3DModel, 2 heads x 64, ``num_layers`` blocks (the last one context-pre-only,
    as in the real model), random weights."""
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(seed)
    model = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM, num_layers=num_layers,
        pooled_projection_dim=16, in_channels=TINY_LATENT_CHANNELS, text_embed_dim=TINY_TEXT_DIM, time_embed_dim=16,
        max_sequence_length=16,
    ).eval()
    with torch.no_grad():  # the real checkpoints' RoPE frequencies are learned, not zero
        model.pos_frequencies.normal_(0.0, 0.5)
    return model


def mochi_inputs(frames: int = 2, height: int = 8, width: int = 8, *, text_lens=(5, 3), text_len: int = 6,
                 timestep: float = 500.0, seed: int = 0):
    """kwargs of a MochiTransformer3DModel forward; one sample per entry of ``text_lens`` (real
    tokens of a prompt padded to ``text_len``)."""
    g = tiny_generator(seed)
    batch = len(text_lens)
    return dict(
        hidden_states=torch.randn(batch, TINY_LATENT_CHANNELS, frames, height, width, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, TINY_TEXT_DIM, generator=g),
        timestep=torch.full((batch,), float(timestep)),
        encoder_attention_mask=(torch.arange(text_len) < torch.tensor(text_lens).view(-1, 1)).long(),
        return_dict=False,
    )


FAMILY = Family(
    class_name="MochiTransformer3DModel",
    processor_cls=MochiSparseAttnProcessor,
    patterns=(r"transformer_blocks\.(\d+)\.attn1",),
    text_position="after",
    patch_size=square_patch_size,
    default_text_len=lambda config: PIPELINE_TEXT_LEN,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_mochi_transformer,
    tiny_inputs=lambda transformer: mochi_inputs(),
    name="Mochi",
    pipelines=("MochiPipeline",),
    standard=StandardSize("480 x 848, 163 frames", {"patch_size": 2}, (28, 60, 106)),
)
