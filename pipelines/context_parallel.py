"""Ulysses context parallelism in our processors: the all-to-all exchange, once, for every method.

diffusers' context parallelism (``transformer.enable_parallelism(config=ContextParallelConfig(
ulysses_degree=N))``) splits the token sequence over the N processes of a Ulysses group where the
model's ``_cp_plan`` says (Wan: at the input of ``blocks.0``), and inside ``dispatch_attention_fn``
exchanges each process's [B, S_r, H, D] for [B, S, H/N, D], the whole sequence for some heads. Our
processors do that exchange themselves (``SparseAttnProcessorBase.attend``), so that a method sees
the whole sequence, in the model's token order, for the heads this process computes:

    q, k, v [B, S_r, H, D]  --all-to-all-->  [B, S, h_r, D]    UlyssesGroup.to_heads
    the method on heads ``call.heads`` (a layout, its own output, or dense through diffusers)
    out [B, S, h_r, D]      --all-to-all-->  [B, S_r, H, D]    UlyssesGroup.to_sequence

Heads: equal shares in rank order (rank r computes heads [r H/N, (r+1) H/N), as diffusers' Ulysses
does). A head count the degree does not divide is an error, unless ``ulysses_anything`` is on:
then rank r gets ``torch.tensor_split``'s share (the first H % N ranks one head more, no rank
empty; diffusers' own uneven split pads the last rank instead, which some (H, N) refuse).

Tokens: the cp_plan splits the video tokens, and the text tokens of a joint sequence, each across
the ranks in order, in equal shares (``tensor_split`` shares under ``ulysses_anything``), so rank r
holds [video_r, text_r] (HunyuanVideo) or [text_r, video_r] (CogVideoX). After the exchange the
pieces sit in rank order, [video_0, text_0, video_1, text_1, ...]; the model's order is
[video, text], so they are put back in it (one copy; none without text) and put back again before
the return exchange. The shares follow from the whole token layout the step tracker saw and are
checked against the local shapes, with no collective; a cp_plan that splits otherwise (text not
split, say) gets an error saying so.

Ring attention (``ring_degree > 1``, alone or with Ulysses) is not served here: the processors run
it densely through diffusers' ring attention (logged once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from kernels.block_layout import INDEX_FIELDS, BlockLayout
from sparse_vdit.protocol import HeadShard
from sparse_vdit.token_layout import TokenLayout

__all__ = ["TokenSplit", "UlyssesGroup", "even_shares", "head_shares", "local_heads", "ulysses_group"]


def even_shares(total: int, parts: int) -> tuple[int, ...]:
    """``torch.tensor_split``'s sizes: ``total`` items in ``parts`` ordered shares, the first
    ``total % parts`` one larger (equal shares when ``parts`` divides ``total``)."""
    base, extra = divmod(int(total), int(parts))
    return tuple(base + (r < extra) for r in range(parts))


def _offsets(sizes: Sequence[int]) -> list[int]:
    out, at = [], 0
    for n in sizes:
        out.append(at)
        at += n
    return out


def head_shares(num_heads: int, degree: int, *, uneven_ok: bool) -> tuple[int, ...]:
    """Heads per rank of a Ulysses group of ``degree`` ranks (see the module docstring).

    Raises ``ValueError`` saying what to change when the degree does not divide ``num_heads`` and
    ``uneven_ok`` (diffusers' ``ulysses_anything``) is off, or when there are fewer heads than ranks.
    """
    if num_heads < degree:
        raise ValueError(
            f"Ulysses context parallelism splits heads across ranks, but the model has {num_heads} heads for "
            f"ulysses_degree={degree}: use a degree of at most {num_heads}"
        )
    if num_heads % degree and not uneven_ok:
        divisors = [d for d in range(2, num_heads + 1) if num_heads % d == 0][:6]
        raise ValueError(
            f"the model's {num_heads} attention heads do not split evenly over ulysses_degree={degree}: use a "
            f"degree that divides {num_heads} ({', '.join(map(str, divisors))}, ...), or "
            f"ContextParallelConfig(ulysses_degree={degree}, ulysses_anything=True) for uneven shares"
        )
    return even_shares(num_heads, degree)


@dataclass(frozen=True)
class TokenSplit:
    """How the ranks of a Ulysses group hold one attention call's joint sequence.

    Rank r holds ``video_sizes[r]`` video tokens and ``text_sizes[r]`` text tokens, text first when
    ``text_first`` (CogVideoX), else last (HunyuanVideo; no text: Wan); each kind in rank order.
    """

    video_sizes: tuple[int, ...]
    text_sizes: tuple[int, ...]
    text_first: bool = False

    @property
    def sizes(self) -> tuple[int, ...]:
        """Tokens per rank."""
        return tuple(v + t for v, t in zip(self.video_sizes, self.text_sizes))

    @property
    def reorders(self) -> bool:
        """Whether rank order differs from the model's order (text present on several ranks)."""
        return len(self.sizes) > 1 and sum(self.text_sizes) > 0

    def _pieces(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The (start, length) pieces of the sequence: in model order, each piece's start in rank
        order; and in rank order, each piece's start in model order."""
        video_total, text_total = sum(self.video_sizes), sum(self.text_sizes)
        video_at = [a + (text_total if self.text_first else 0) for a in _offsets(self.video_sizes)]
        text_at = [a + (0 if self.text_first else video_total) for a in _offsets(self.text_sizes)]
        in_rank_order, video_src, text_src = [], [], []
        for r, start in enumerate(_offsets(self.sizes)):
            v, t = self.video_sizes[r], self.text_sizes[r]
            first, second = ((text_at[r], t), (video_at[r], v)) if self.text_first else ((video_at[r], v), (text_at[r], t))
            in_rank_order += [first, second]
            text_src.append((start if self.text_first else start + v, t))
            video_src.append((start + t if self.text_first else start, v))
        in_model_order = (text_src + video_src) if self.text_first else (video_src + text_src)
        return in_model_order, in_rank_order

    def to_model_order(self, x: torch.Tensor) -> torch.Tensor:
        """x [S, ...] in rank order -> [S, ...] in the model's order (x itself when they agree)."""
        if not self.reorders:
            return x
        return torch.cat([x[a : a + n] for a, n in self._pieces()[0] if n])

    def to_rank_order(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``to_model_order``: x [S, ...] in the model's order -> rank order."""
        if not self.reorders:
            return x
        return torch.cat([x[a : a + n] for a, n in self._pieces()[1] if n])


def _wait(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed._functional_collectives as funcol

    return x.wait() if isinstance(x, funcol.AsyncCollectiveTensor) else x


@dataclass(frozen=True)
class UlyssesGroup(HeadShard):
    """This process's place in a Ulysses group: its heads (a ``HeadShard``) and the exchange.

    Attributes (besides ``heads`` and ``num_heads``):
        rank: this process's rank in the group.
        head_sizes: heads per rank, in rank order (sums to ``num_heads``).
        group: the torch.distributed process group of diffusers' Ulysses mesh.

    The exchange is split into pack / unpack around one ``all_to_all_single`` per tensor, so that
    the packing can be checked without processes (tests route the buffers themselves).
    """

    rank: int = 0
    head_sizes: tuple[int, ...] = ()
    group: Any = field(default=None, compare=False, repr=False)

    @property
    def degree(self) -> int:
        return len(self.head_sizes)

    @property
    def even(self) -> bool:
        return len(set(self.head_sizes)) == 1

    # ------------------------------------------------------------------ shares
    def token_split(self, token_layout: TokenLayout, local_tokens: int, local_text: int) -> TokenSplit:
        """The group's split of a call whose whole joint sequence is ``token_layout``, checked
        against this rank's ``local_tokens`` (of which ``local_text`` are text)."""
        text = token_layout.text_len
        split = TokenSplit(
            even_shares(token_layout.seq_len - text, self.degree),
            even_shares(text, self.degree),
            text_first=token_layout.text_position == "before",
        )
        expected = (split.sizes[self.rank], split.text_sizes[self.rank])
        if (local_tokens, local_text) != expected:
            raise ValueError(
                f"Ulysses context parallelism: rank {self.rank} of {self.degree} holds {local_tokens} tokens "
                f"({local_text} text) of this attention call, but the whole sequence is {token_layout.describe()}, "
                f"so sparse-vdit expects {expected[0]} ({expected[1]} text). The model's cp_plan must split the video "
                "tokens and the text tokens each across the ranks in order, in equal shares (tensor_split shares "
                "with ulysses_anything); for HunyuanVideo pass "
                "enable_parallelism(config=..., cp_plan=pipelines.families.hunyuan_video.hunyuan_video_cp_plan())"
            )
        return split

    # ------------------------------------------------------------------ sequence shards -> head shards
    def pack_to_heads(self, x: torch.Tensor, split: TokenSplit) -> tuple[torch.Tensor, list[int], list[int]]:
        """x [B, S_r, H, D] -> (send buffer, input split sizes, output split sizes): rank j gets
        this rank's tokens of its heads, as [S_r, B, h_j, D]."""
        b, s_r, _, d = x.shape
        if self.even:
            h = self.head_sizes[0]
            buf = x.reshape(b, s_r, self.degree, h, d).permute(2, 1, 0, 3, 4).contiguous().view(-1)
        else:
            bounds = _offsets(self.head_sizes)
            buf = torch.cat([x[:, :, a : a + n].permute(1, 0, 2, 3).reshape(-1) for a, n in zip(bounds, self.head_sizes)])
        unit = b * d
        return (
            buf,
            [s_r * n * unit for n in self.head_sizes],
            [s * self.head_sizes[self.rank] * unit for s in split.sizes],
        )

    def unpack_to_heads(self, buf: torch.Tensor, split: TokenSplit, batch: int, head_dim: int) -> torch.Tensor:
        """The received buffer (every rank's tokens of this rank's heads, in rank order) ->
        [B, S, h_r, D] in the model's token order (a view of the buffer when no reordering is needed)."""
        s = sum(split.sizes)
        x = buf.view(s, batch, self.head_sizes[self.rank], head_dim)
        return split.to_model_order(x).permute(1, 0, 2, 3)

    def to_heads(self, tensors: Sequence[torch.Tensor], split: TokenSplit) -> tuple[torch.Tensor, ...]:
        """Sequence shards [B, S_r, H, D] -> head shards [B, S, h_r, D] (model order), one
        all-to-all each; all are sent before any is waited on."""
        import torch.distributed._functional_collectives as funcol

        sent = []
        for x in tensors:
            buf, ins, outs = self.pack_to_heads(x, split)
            sent.append(funcol.all_to_all_single(buf, outs, ins, self.group))
        return tuple(
            self.unpack_to_heads(_wait(buf), split, x.shape[0], x.shape[3]) for buf, x in zip(sent, tensors)
        )

    # ------------------------------------------------------------------ head shards -> sequence shards
    def pack_to_sequence(self, y: torch.Tensor, split: TokenSplit) -> tuple[torch.Tensor, list[int], list[int]]:
        """y [B, S, h_r, D] in model order -> (send buffer, input split sizes, output split sizes):
        rank j gets its tokens of this rank's heads, as [S_j, B, h_r, D]."""
        b, _, h, d = y.shape
        buf = split.to_rank_order(y.permute(1, 0, 2, 3)).contiguous().view(-1)
        unit = b * d
        return buf, [s * h * unit for s in split.sizes], [split.sizes[self.rank] * n * unit for n in self.head_sizes]

    def unpack_to_sequence(self, buf: torch.Tensor, split: TokenSplit, batch: int, head_dim: int) -> torch.Tensor:
        """The received buffer (this rank's tokens of every rank's heads, in rank order) -> [B, S_r, H, D]."""
        s_r = split.sizes[self.rank]
        if self.even:
            h = self.head_sizes[0]
            x = buf.view(self.degree, s_r, batch, h, head_dim).permute(2, 1, 0, 3, 4)
            return x.reshape(batch, s_r, self.num_heads, head_dim)
        pieces = buf.split([s_r * batch * n * head_dim for n in self.head_sizes])
        x = torch.cat([p.view(s_r, batch, n, head_dim) for p, n in zip(pieces, self.head_sizes)], dim=2)
        return x.permute(1, 0, 2, 3)

    def to_sequence(self, y: torch.Tensor, split: TokenSplit) -> torch.Tensor:
        """Head shard [B, S, h_r, D] (model order) -> this rank's sequence shard [B, S_r, H, D]."""
        import torch.distributed._functional_collectives as funcol

        buf, ins, outs = self.pack_to_sequence(y, split)
        received = _wait(funcol.all_to_all_single(buf, outs, ins, self.group))
        return self.unpack_to_sequence(received, split, y.shape[0], y.shape[3])

    # ------------------------------------------------------------------ per-head values
    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[..., h_r] -> [..., num_heads]: one all-gather over the group (shares padded to the
        largest when uneven)."""
        import torch.distributed._functional_collectives as funcol

        widest = max(self.head_sizes)
        padded = torch.nn.functional.pad(x, (0, widest - x.shape[-1])).movedim(-1, 0).contiguous()
        all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor  # renamed in torch 2.10
        rows = _wait(all_gather(padded, 0, self.group))  # [degree * widest, ...]
        if not self.even:
            rows = torch.cat([rows[r * widest : r * widest + n] for r, n in enumerate(self.head_sizes)])
        return rows.movedim(0, -1)


def ulysses_group(parallel_config: Any, num_heads: int) -> UlyssesGroup | None:
    """This process's ``UlyssesGroup`` under a diffusers ``ParallelConfig`` (``transformer._parallel_config``)
    with Ulysses context parallelism only; None without context parallelism or with ring attention.

    Raises ``ValueError`` when the heads do not split over the degree (``head_shares``).
    """
    cp = getattr(parallel_config, "context_parallel_config", None)
    if cp is None or cp.ulysses_degree <= 1 or cp.ring_degree > 1:
        return None
    mesh = cp._ulysses_mesh
    if mesh is None:
        raise RuntimeError(
            "the context-parallel config has no Ulysses mesh yet: call transformer.enable_parallelism(config=...) "
            "after torch.distributed.init_process_group, before running the model"
        )
    sizes = head_shares(num_heads, cp.ulysses_degree, uneven_ok=bool(cp.ulysses_anything))
    rank = int(cp._ulysses_local_rank)
    start = sum(sizes[:rank])
    return UlyssesGroup(
        heads=range(start, start + sizes[rank]), num_heads=num_heads, rank=rank, head_sizes=sizes, group=mesh.get_group()
    )


def local_heads(layout: BlockLayout, heads: range, num_heads: int) -> BlockLayout:
    """``layout`` for the heads ``heads`` of a layer of ``num_heads``: a layout over every head is
    narrowed (a view: the head table, or the per-head index lists, sliced); one over ``len(heads)``
    heads or one broadcast head is returned as is. Raises ``ValueError`` for any other head count."""
    count = layout.shape[1]
    if count in (1, len(heads)):
        return layout
    if count != num_heads:
        raise ValueError(
            f"the layout covers {count} heads, but this call computes heads {heads.start}..{heads.stop - 1} of "
            f"{num_heads}: return a layout for every head of the layer, for call.heads, or one broadcast head"
        )
    rows = slice(heads.start, heads.stop)
    if layout.head_patterns is not None:
        view = dataclasses.replace(layout, head_patterns=layout.head_patterns[rows], check=False)
    else:
        per_pattern = {name: getattr(layout, name)[:, rows] for name in INDEX_FIELDS if name != "tile_masks"}
        view = dataclasses.replace(layout, **per_pattern, check=False)
    object.__setattr__(view, "tile_masks_i8", layout.tile_masks_i8)  # shared, not converted again
    return view
