"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): everything sparse-vdit knows about this family.

Joint attention in ``transformer_blocks.{i}.attn`` (dual stream, layers first) and
``single_transformer_blocks.{j}.attn`` (single stream, after them) over [video | text]; the text is
padded to a fixed length and ``encoder_attention_mask`` marks the real tokens of each prompt, so
sample b's real keys are the first ``video_len + text_valid_lens[b]``. The text-only token refiner
stays stock. Latent [B, C, T, H, W]; patch (``patch_size_t``, ``patch_size``, ``patch_size``).
Context parallelism: diffusers 0.42 has no ``_cp_plan`` for this model; ``hunyuan_video_cp_plan()``
is one that our processors serve.
"""

from __future__ import annotations

import torch

from pipelines.families.record import Family, StandardSize, square_patch_size, video_inputs
from pipelines.families.tiny_sizes import TINY_HEAD_DIM, TINY_HEADS, TINY_LATENT_CHANNELS, TINY_TEXT_DIM, tiny_generator
from pipelines.processors import SparseAttnProcessorBase
from pipelines.step_tracking import ForwardInputs

__all__ = ["FAMILY", "HunyuanVideoSparseAttnProcessor", "hunyuan_video_cp_plan", "tiny_hunyuan_transformer", "hunyuan_inputs"]

PIPELINE_TEXT_LEN = 256  # HunyuanVideoPipeline's max_sequence_length default


# ---------------------------------------------------------------------------------- processor
def _project(x: torch.Tensor, heads: int, to_q, to_k, to_v, norm_q, norm_k):
    """q, k, v [B, S, H, D] of x [B, S, C], q and k normed (when the norm exists), as stock."""
    query, key, value = (proj(x).unflatten(2, (heads, -1)) for proj in (to_q, to_k, to_v))
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key, value


def _rotary_on_video(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], n_text: int) -> torch.Tensor:
    """RoPE on the video tokens of x [B, S, H, D]: all of them but the last ``n_text`` (text, unrotated)."""
    from diffusers.models.embeddings import apply_rotary_emb

    if not n_text:
        return apply_rotary_emb(x, rotary, sequence_dim=1)
    return torch.cat([apply_rotary_emb(x[:, :-n_text], rotary, sequence_dim=1), x[:, -n_text:]], dim=1)


class HunyuanVideoSparseAttnProcessor(SparseAttnProcessorBase):
    """HunyuanVideo joint attention, dual-stream (``add_q_proj`` set) and single-stream blocks.

    hidden_states: [B, Sv, C] video tokens, encoder_hidden_states: [B, St, C] text (padded to St),
    attention_mask: [B, 1, 1, Sv + St] bool, False on padded text keys. The joint sequence is
    [video, text]; RoPE touches video only. Returns (video [B, Sv, C], text [B, St, C]) as stock.
    Also serves HunyuanVideo-Framepack, whose "video" tokens are its history latents and then the
    video (RoPE on both), and, through ``dense_mask``, HunyuanVideo-1.5.
    """

    def dense_mask(self, attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
        """The mask the stock processor gives ``dispatch_attention_fn`` for a joint sequence of
        ``seq_len`` tokens (HunyuanVideo: the model's own)."""
        return attention_mask

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        single_stream = attn.add_q_proj is None and encoder_hidden_states is not None
        if single_stream:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query, key, value = _project(hidden_states, attn.heads, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        if image_rotary_emb is not None:
            n_text = encoder_hidden_states.shape[1] if single_stream else 0
            query = _rotary_on_video(query, image_rotary_emb, n_text)
            key = _rotary_on_video(key, image_rotary_emb, n_text)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            text = _project(
                encoder_hidden_states, attn.heads, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                attn.norm_added_q, attn.norm_added_k,
            )
            query, key, value = (torch.cat([video, txt], dim=1) for video, txt in zip((query, key, value), text))

        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        mask = self.dense_mask(attention_mask, query.shape[1])
        hidden_states = self.attend(query, key, value, mask, mask_is_key_padding=True, text_tokens=n_text)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :-n_text], hidden_states[:, -n_text:]
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


# ------------------------------------------------------------------------------- context parallelism
def hunyuan_video_cp_plan() -> dict:
    """A ``cp_plan`` for diffusers' context parallelism on HunyuanVideo, which ships none:

        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2), cp_plan=hunyuan_video_cp_plan())

    The video tokens and the (padded) text tokens are each split across the ranks in order at the
    inputs of the first dual-stream block (the token refiner before it sees the whole text), the
    RoPE tables with the video, and the video is gathered at ``proj_out``: the split sparse-vdit's
    exchange expects (``pipelines.context_parallel``). The model's key-padding mask stays whole:
    our processors take key padding from the step tracker instead, in the whole sequence's order.
    Use it with sparse-vdit's processors: a stock processor would apply that whole mask to the
    exchanged sequence, whose text sits in rank order, which is wrong when prompts are padded.
    Needs video tokens and text length divisible by the degree (or ``ulysses_anything=True``).
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    tokens = ContextParallelInput(split_dim=1, expected_dims=3)
    rope = ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)
    return {
        "transformer_blocks.0": {"hidden_states": tokens, "encoder_hidden_states": tokens},
        "rope": {0: rope, 1: rope},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


# ------------------------------------------------------------------------------- forward inputs
def _read_inputs(transformer, args: dict) -> ForwardInputs:
    text = args["encoder_hidden_states"]
    mask = args.get("encoder_attention_mask")
    valid = None
    if mask is not None:
        # The stock model keeps the first sum(mask) text tokens of each sample (see its forward).
        lens = tuple(int(n) for n in mask.sum(dim=1).tolist())
        if any(n < text.shape[1] for n in lens):
            valid = lens
    return ForwardInputs(
        **video_inputs(args["hidden_states"], args["timestep"], 2), text_len=text.shape[1], text_valid_lens=valid
    )


# ------------------------------------------------------------------------------- tiny test model
def tiny_hunyuan_transformer(*, num_layers: int = 1, num_single_layers: int = 1, seed: int = 0):
    """HunyuanVideoTransformer3DModel, 2 heads x 64, 1 dual + 1 single block, random weights."""
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


def hunyuan_inputs(frames: int = 2, height: int = 8, width: int = 8, *, text_lens=(5, 3), text_len: int = 6, timestep: float = 500.0, seed: int = 0):
    """kwargs of a HunyuanVideoTransformer3DModel forward; one sample per entry of ``text_lens``
    (real tokens of a prompt padded to ``text_len``)."""
    g = tiny_generator(seed)
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


FAMILY = Family(
    class_name="HunyuanVideoTransformer3DModel",
    processor_cls=HunyuanVideoSparseAttnProcessor,
    patterns=(r"transformer_blocks\.(\d+)\.attn", r"single_transformer_blocks\.(\d+)\.attn"),
    text_position="after",
    patch_size=square_patch_size,
    default_text_len=lambda config: PIPELINE_TEXT_LEN,
    read_inputs=_read_inputs,
    tiny_transformer=tiny_hunyuan_transformer,
    tiny_inputs=lambda transformer: hunyuan_inputs(),
    name="HunyuanVideo",
    pipelines=("HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline", "HunyuanSkyreelsImageToVideoPipeline"),
    standard=StandardSize("720p, 129 frames", {"patch_size": 2, "patch_size_t": 1}, (33, 90, 160)),
    cp_plan=hunyuan_video_cp_plan,
)
