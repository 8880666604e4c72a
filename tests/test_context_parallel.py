"""The plumbing of Ulysses context parallelism, in one process (the real collectives run in
tests/test_context_parallel_gloo.py): the exchange's packing for every rank, routed here by hand,
for even and uneven heads and token shares and for text after, before or absent; the shares and
their errors; the head subset on ``AttentionCall`` / ``ForwardContext``; a plan's per-head modes on
a head subset; AdaSpa's selection on a head subset ranks every head of the layer; a whole-layer
layout narrowed to a process's heads; the processor's exchange, method call and dense path with a
stand-in group whose collectives are the identity (degree 1)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adaspa.search import BlockGeometry, select_blocks
from helpers import fresh_generator
from kernels.block_layout import BlockLayout
from pipelines import AttentionMethod, FullAttention, apply_sparse_attention, model_info, tiny, token_layout_of
from pipelines.context_parallel import TokenSplit, UlyssesGroup, even_shares, head_shares, local_heads, ulysses_group
from sparse_vdit.modes import Diagonal, Full, Skip, VerticalStripe, head_layout
from sparse_vdit.protocol import AttentionCall, ForwardContext, HeadShard
from sparse_vdit.token_layout import TokenLayout


# ----------------------------------------------------------------------------- shares
def test_even_shares_are_tensor_split_sizes():
    for total, parts in [(90, 2), (75, 2), (7, 3), (40, 16), (3, 3)]:
        assert even_shares(total, parts) == tuple(len(c) for c in torch.arange(total).tensor_split(parts))


def test_head_shares_and_their_errors():
    assert head_shares(40, 8, uneven_ok=False) == (5,) * 8
    assert head_shares(40, 16, uneven_ok=True) == (3,) * 8 + (2,) * 8  # diffusers' own padding refuses (40, 16)
    with pytest.raises(ValueError, match=r"40 attention heads do not split evenly over ulysses_degree=16.*"
                                         r"2, 4, 5, 8, 10, 20.*ulysses_anything=True"):
        head_shares(40, 16, uneven_ok=False)
    with pytest.raises(ValueError, match="2 heads for ulysses_degree=4: use a degree of at most 2"):
        head_shares(2, 4, uneven_ok=True)


def test_no_ulysses_group_without_context_parallelism_or_with_ring():
    ring = dataclasses.make_dataclass("Cfg", ["ulysses_degree", "ring_degree"])(1, 2)
    unified = dataclasses.make_dataclass("Cfg", ["ulysses_degree", "ring_degree"])(2, 2)
    for config in (None, object(), dataclasses.make_dataclass("P", ["context_parallel_config"])(ring),
                   dataclasses.make_dataclass("P", ["context_parallel_config"])(unified)):
        assert ulysses_group(config, 4) is None


# ----------------------------------------------------------------------------- the exchange, routed by hand
def groups(num_heads: int, degree: int) -> list[UlyssesGroup]:
    sizes = head_shares(num_heads, degree, uneven_ok=True)
    starts = [sum(sizes[:r]) for r in range(degree)]
    return [UlyssesGroup(heads=range(a, a + n), num_heads=num_heads, rank=r, head_sizes=sizes)
            for r, (a, n) in enumerate(zip(starts, sizes))]


def route(sends: list[tuple[torch.Tensor, list[int], list[int]]]) -> list[torch.Tensor]:
    """all_to_all_single by hand: rank j receives, in rank order, the j-th piece of every rank's buffer."""
    pieces = [buf.split(ins) for buf, ins, _ in sends]
    received = []
    for j, (_, _, outs) in enumerate(sends):
        got = [pieces[i][j] for i in range(len(sends))]
        assert [p.numel() for p in got] == outs, "a rank expects other sizes than the others send it"
        received.append(torch.cat(got))
    return received


def local_shards(whole: torch.Tensor, split: TokenSplit) -> list[torch.Tensor]:
    """whole [B, S, H, D] in model order -> each rank's [B, S_r, H, D] as the cp_plan shards it."""
    video_total = sum(split.video_sizes)
    text_start = 0 if split.text_first else video_total
    video_start = sum(split.text_sizes) if split.text_first else 0
    out = []
    for r in range(len(split.sizes)):
        v0 = video_start + sum(split.video_sizes[:r])
        t0 = text_start + sum(split.text_sizes[:r])
        video = whole[:, v0 : v0 + split.video_sizes[r]]
        text = whole[:, t0 : t0 + split.text_sizes[r]]
        out.append(torch.cat([text, video] if split.text_first else [video, text], dim=1))
    return out


LAYOUTS = {
    "video only (Wan)": TokenLayout.from_latent(3, 6, 5),  # 90 tokens
    "odd video": TokenLayout.from_latent(3, 5, 5),  # 75 tokens
    "text after (HunyuanVideo)": TokenLayout.from_latent(2, 6, 6, text_len=12, text_position="after"),
    "text before (CogVideoX)": TokenLayout.from_latent(2, 4, 5, text_len=7, text_position="before"),
}


@pytest.mark.parametrize("heads,degree", [(4, 2), (3, 2), (6, 3), (5, 3)])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_exchange_gives_each_rank_its_heads_of_the_whole_sequence_and_back(request, name, heads, degree):
    layout = LAYOUTS[name]
    gen = fresh_generator(request)
    b, d = 2, 8
    whole = torch.randn(b, layout.seq_len, heads, d, generator=gen)
    ranks = groups(heads, degree)
    split = TokenSplit(even_shares(layout.seq_len - layout.text_len, degree), even_shares(layout.text_len, degree),
                       text_first=layout.text_position == "before")
    shards = [(g, g.token_split(layout, x.shape[1], split.text_sizes[g.rank]), x)
              for g, x in zip(ranks, local_shards(whole, split))]
    assert all(s == split for _, s, _ in shards)
    received = route([g.pack_to_heads(x, split) for g, split, x in shards])
    outs = []
    for (g, split, x), buf in zip(shards, received):
        heads_here = g.unpack_to_heads(buf, split, b, d)
        assert torch.equal(heads_here, whole[:, :, g.heads.start : g.heads.stop]), f"rank {g.rank}"
        outs.append(heads_here * 2.0 + 1.0)  # stands for the attention output of those heads
    back = route([g.pack_to_sequence(y, split) for (g, split, _), y in zip(shards, outs)])
    for (g, split, x), buf in zip(shards, back):
        assert torch.equal(g.unpack_to_sequence(buf, split, b, d), x * 2.0 + 1.0), f"rank {g.rank} back"


def test_model_order_round_trip_and_identity_without_text():
    split = TokenSplit((3, 2), (2, 2), text_first=False)  # rank 0 [v0 v1 v2 t0 t1], rank 1 [v3 v4 t2 t3]
    ranked = torch.tensor([0, 1, 2, 10, 11, 3, 4, 12, 13])
    assert split.to_model_order(ranked).tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13]
    assert torch.equal(split.to_rank_order(split.to_model_order(ranked)), ranked)
    before = TokenSplit((3, 2), (2, 2), text_first=True)  # rank 0 [t0 t1 v0 v1 v2], rank 1 [t2 t3 v3 v4]
    assert before.to_model_order(torch.tensor([10, 11, 0, 1, 2, 12, 13, 3, 4])).tolist() == [10, 11, 12, 13, 0, 1, 2, 3, 4]
    plain = TokenSplit((3, 2), (0, 0))
    x = torch.arange(5)
    assert plain.to_model_order(x) is x and plain.to_rank_order(x) is x and not plain.reorders


def test_a_cp_plan_that_splits_otherwise_is_named():
    g = groups(4, 2)[1]
    layout = LAYOUTS["text after (HunyuanVideo)"]
    assert g.token_split(layout, 42, 6).sizes == (42, 42)
    with pytest.raises(ValueError, match=r"rank 1 of 2 holds 48 tokens \(12 text\).*expects 42 \(6 text\).*"
                                         r"hunyuan_video_cp_plan\(\)"):
        g.token_split(layout, 48, 12)  # text not split: every rank holds the whole prompt


# ----------------------------------------------------------------------------- the head subset a method sees
class FakeShard(HeadShard):
    """A HeadShard whose gather returns a known whole (and checks it was given this shard's part)."""

    def __init__(self, heads: range, num_heads: int, whole: torch.Tensor | None = None):
        super().__init__(heads=heads, num_heads=num_heads)
        object.__setattr__(self, "whole", whole)

    def gather(self, x):
        assert torch.equal(x, self.whole[..., self.heads.start : self.heads.stop]), "gather got another part"
        return self.whole


def forward_context(model, layout: TokenLayout, head_shard=None, step: int = 0, num_steps: int = 2) -> ForwardContext:
    return ForwardContext(
        generation=0, step_index=step, branch=0, branch_name=None, timestep=900.0, num_steps=num_steps,
        token_layout=layout, kv_lens=None, text_valid_lens=None, batch_size=1, device=torch.device("cpu"),
        dtype=torch.float32, model=model, head_shard=head_shard,
    )


def test_attention_call_names_its_heads():
    info = model_info(tiny.tiny_wan_transformer(num_layers=1))
    layout = TokenLayout.from_latent(2, 4, 4)
    whole = torch.arange(6.0).view(3, 2)
    for shard, heads in [(None, range(2)), (FakeShard(range(1, 2), 2, whole), range(1, 2))]:
        forward = forward_context(info, layout, shard)
        call = AttentionCall(0, "blocks.0.attn1", len(heads), 64, forward)
        assert call.heads == heads and forward.heads == heads
        part = whole[:, heads.start : heads.stop]
        assert torch.equal(call.gather_heads(part), whole if shard is not None else part)
    with pytest.raises(NotImplementedError, match="does not say how to gather"):
        HeadShard(range(0, 1), 2).gather(whole)


def test_plan_builds_each_process_its_heads_modes():
    from test_plan import make_plan

    info = dataclasses.replace(model_info(tiny.tiny_wan_transformer(num_layers=2)), num_heads=4)
    layout = TokenLayout.from_latent(3, 8, 8)
    step = ((Diagonal(1), VerticalStripe((0,), 1), Full(), Full()), (Skip(), Full(), Diagonal(0), Skip()))
    plan = make_plan([step], model=info, layout=layout)
    whole = plan.begin_forward(forward_context(info, layout, num_steps=1))
    for heads in (range(0, 2), range(2, 4)):
        here = plan.begin_forward(forward_context(info, layout, FakeShard(heads, 4), num_steps=1))
        for layer, modes in enumerate(step):
            local = modes[heads.start : heads.stop]
            if all(isinstance(m, Full) for m in local):
                assert here[layer] is None, f"layer {layer} heads {heads}: all Full here, so dense here"
                continue
            want = head_layout(list(local), layout, block_size=plan.block_size).to_dense()
            assert torch.equal(here[layer].to_dense(), want), f"layer {layer} heads {heads}"
            assert torch.equal(want, whole[layer].to_dense()[:, heads.start : heads.stop])


def test_adaspa_selection_on_a_head_subset_ranks_every_head(request):
    """Each shard's selection equals the rows of the whole layer's selection: the tiers come from
    the gathered recall of every head, not from the shard's heads alone."""
    gen = fresh_generator(request)
    geometry = BlockGeometry(seq_len=8 * 16, block_size=16)
    peaked = torch.arange(1.0, 7.0).view(1, 6, 1, 1)  # heads from flat to peaked: recalls spread
    mass = torch.rand(2, 6, 8, 8, generator=gen) ** peaked
    mass = mass / mass.sum(-1, keepdim=True)
    recall = select_blocks(mass, geometry, sparsity=0.5, recall_threshold=1.0, tiers=False).base_recall[0]
    ranked = recall.sort(descending=True).values
    settings = dict(sparsity=0.5, recall_threshold=float(ranked[1] + ranked[2]) / 2)  # n = 2 in sample 0
    whole = select_blocks(mass, geometry, **settings)
    assert len(set(whole.head_sparsity[0].tolist())) == 3, "the test needs all three tiers"
    for heads in (range(0, 2), range(2, 5), range(5, 6)):
        part = select_blocks(mass[:, heads.start : heads.stop], geometry, **settings,
                             head_shard=FakeShard(heads, 6, whole.base_recall))
        for field in ("blocks", "recall", "base_recall", "head_sparsity"):
            assert torch.equal(getattr(part, field), getattr(whole, field)[:, heads.start : heads.stop]), field
    alone = select_blocks(mass[:, :2], geometry, **settings)
    assert not torch.equal(alone.head_sparsity, whole.head_sparsity[:, :2]), "ranking 2 heads alone differs"


def test_a_whole_layer_layout_is_narrowed_to_the_process_heads():
    layout = TokenLayout.from_latent(3, 8, 8)
    modes = [Diagonal(1), VerticalStripe((0,), 1), Full(), Skip()]
    shared = head_layout(modes, layout, block_size=16)  # a head table over shared patterns
    full, _ = shared.block_maps()
    per_head = BlockLayout.from_block_maps(full, block_size=16, seq_lengths=layout.seq_len, share_head_patterns=False)
    assert shared.head_patterns is not None and per_head.head_patterns is None
    for whole in (shared, per_head):
        for heads in (range(0, 2), range(1, 4)):
            narrowed = local_heads(whole, heads, 4)
            assert narrowed.shape[1] == len(heads)
            assert torch.equal(narrowed.to_dense(), whole.to_dense()[:, heads.start : heads.stop])
            assert local_heads(narrowed, heads, 4) is narrowed
    broadcast = head_layout([Diagonal(1)], layout, block_size=16)
    assert local_heads(broadcast, range(0, 2), 4) is broadcast
    with pytest.raises(ValueError, match="covers 3 heads, but this call computes heads 0..1 of 4"):
        local_heads(head_layout(modes[:3], layout, block_size=16), range(0, 2), 4)


# ----------------------------------------------------------------------------- the processor's path
class IdentityGroup(UlyssesGroup):
    """A one-rank Ulysses group: every collective is the identity, so the processor's exchange,
    method call and dense path run in one process."""

    exchanged: list = []

    def to_heads(self, tensors, split):
        IdentityGroup.exchanged.append(split)
        return tuple(self.unpack_to_heads(self.pack_to_heads(x, split)[0], split, x.shape[0], x.shape[3]) for x in tensors)

    def to_sequence(self, y, split):
        return self.unpack_to_sequence(self.pack_to_sequence(y, split)[0], split, y.shape[0], y.shape[3])

    def gather(self, x):
        return x


class Recorder(AttentionMethod):
    def __init__(self, result=None):
        self.calls = []
        self.result = result

    def __call__(self, call, q, k, v):
        self.calls.append((call.heads, call.num_heads, tuple(q.shape), call.token_layout.seq_len))
        return self.result(call) if self.result else None


@pytest.fixture
def one_rank_ulysses(monkeypatch):
    """The step tracker hands out an IdentityGroup, as it would a real group under Ulysses."""
    import pipelines.step_tracking as step_tracking

    def fake(config, num_heads):
        return IdentityGroup(heads=range(num_heads), num_heads=num_heads, rank=0, head_sizes=(num_heads,))

    monkeypatch.setattr(step_tracking, "ulysses_group", fake)
    monkeypatch.setattr(IdentityGroup, "exchanged", [])
    return IdentityGroup


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
@torch.no_grad()
def test_processor_exchange_path_equals_the_plain_path(family, one_rank_ulysses, fallback):
    """Through the Ulysses path (exchange, method on the heads, dense through diffusers with the
    key padding rebuilt from kv_lens, exchange back) the output equals the stock model's, and a
    layout-returning method equals its single-GPU run."""
    if family == "wan":
        model, kwargs = tiny.tiny_wan_transformer(), tiny.wan_inputs(frames=2, height=8, width=8)
    else:
        model, kwargs = tiny.tiny_hunyuan_transformer(), tiny.hunyuan_inputs(text_lens=(5, 3))
    stock = model(**kwargs)[0]
    grid = kwargs["hidden_states"].shape[2:]
    layout = token_layout_of(model, *grid, text_len=kwargs.get("encoder_hidden_states").shape[1] if family == "hunyuan" else None)
    diagonal = lambda call: head_layout([Diagonal(0), Diagonal(1)], call.token_layout, block_size=16)  # noqa: E731
    with apply_sparse_attention(model, Recorder(diagonal)):
        plain = model(**kwargs)[0]
    model._parallel_config = object()  # what enable_parallelism records; the fixture's group stands in
    try:
        for method, want in ((Recorder(), stock), (Recorder(diagonal), plain)):
            with apply_sparse_attention(model, method):
                out = model(**kwargs)[0]
            torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
            assert len(one_rank_ulysses.exchanged) == len(method.calls), "every call went through the exchange"
            one_rank_ulysses.exchanged.clear()
            assert method.calls and all(c[0] == range(2) and c[3] == layout.seq_len for c in method.calls)
    finally:
        model._parallel_config = None


@torch.no_grad()
def test_ring_attention_runs_dense_and_says_so_once(monkeypatch, caplog):
    """Ring attention (no Ulysses group): the method is not asked, dense attention goes through
    diffusers with the ring config, and the fallback is logged once."""
    import pipelines.processors as processors_mod

    model = tiny.tiny_wan_transformer(num_layers=1)
    kwargs = tiny.wan_inputs()
    stock = model(**kwargs)[0]
    ring, configs = object(), []
    original = processors_mod.dispatch_attention_fn

    def dense(*args, parallel_config=None, **kw):
        configs.append(parallel_config)
        return original(*args, **kw)  # no process group here: run it unparallel

    monkeypatch.setattr(processors_mod, "dispatch_attention_fn", dense)
    monkeypatch.setattr(processors_mod, "_WARNED", set())
    method = Recorder()
    with apply_sparse_attention(model, method) as handle:
        for processor in handle.attached[0].ours.values():
            processor._parallel_config = ring
        with caplog.at_level("WARNING", logger="pipelines.processors"):
            out = model(**kwargs)[0]
            model(**kwargs)
    assert not method.calls, "under ring attention the method is not asked"
    assert configs and all(c is ring for c in configs), "dense through diffusers, with the ring config"
    assert sum("ring attention" in r.message for r in caplog.records) == 1
    torch.testing.assert_close(out, stock, rtol=0, atol=0)


def test_apply_refuses_heads_the_degree_does_not_divide(monkeypatch):
    """The check runs at apply time when parallelism is already on, and nothing stays attached."""
    import pipelines.apply as apply_mod

    def degree_four(config, num_heads):
        return None if config is None else head_shares(num_heads, 4, uneven_ok=False)

    monkeypatch.setattr(apply_mod, "ulysses_group", degree_four)
    model = tiny.tiny_wan_transformer(num_layers=1)
    before = dict(model.attn_processors)
    model._parallel_config = object()
    try:
        with pytest.raises(ValueError, match="2 heads for ulysses_degree=4"):
            apply_sparse_attention(model, FullAttention())
    finally:
        model._parallel_config = None
    assert getattr(model, "_sparse_vdit_attached", None) is None, "nothing stays attached after the refusal"
    assert {k: type(v) for k, v in model.attn_processors.items()} == {k: type(v) for k, v in before.items()}
