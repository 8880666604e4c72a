"""AdaSpa's online search on synthetic structured q / k (local heads, global-column heads, diffuse
heads): the selection is each row's top-k by block mass with the text kept, its recall equals the
recall computed from the dense attention map in float64, LSE-cached mass equals fresh mass, the
three tiers average to s, and a sparse step computes exactly its selection."""

from __future__ import annotations

import math

import pytest
import torch

from adaspa import AdaSpaConfig, AdaSpaState, adaspa_attention
from adaspa.runtime import attend
from adaspa.search import (
    BlockGeometry,
    head_tiers,
    keep_count,
    layout_from_blocks,
    pack_blocks,
    select_blocks,
    tier_sparsities,
    unpack_blocks,
)
from adaspa.state import cache_bytes
from helpers import assert_close_to_reference, capture_cuda_graph, fresh_generator
from kernels.attention import attention_with_lse, block_attention_mass
from kernels.reference import attention_ref, key_padding_ref
from sparse_vdit.token_layout import TokenLayout

BLOCK = 16
S, H, D = 200, 4, 64  # 13 blocks, the last one crossing the sequence end
LOCAL, GLOBAL = 0, 1  # heads 2 and 3 attend diffusely
GLOBAL_KEYS = (5, 150, 152)  # in two blocks: the sparsest tier at s = 0.8 keeps two
AMPLITUDE = 7.0  # q.k * scale of a matching pair ~ AMPLITUDE^2 / sqrt(D) = 6.1


def structured_qkv(gen: torch.Generator, *, batch: int = 1, seq: int = S, dtype=torch.float32):
    """q, k, v [B, H, S, D] as diffusers-style views: head 0 attends its own 16-token block, head 1 a
    few global key tokens, heads 2-3 are noise (recall at s = 0.5 well below 0.8)."""
    q = torch.randn(batch, seq, H, D, generator=gen) * 0.5
    k = torch.randn(batch, seq, H, D, generator=gen) * 0.5
    v = torch.randn(batch, seq, H, D, generator=gen)
    clusters = torch.nn.functional.normalize(torch.randn(batch, -(-seq // BLOCK), D, generator=gen), dim=-1)
    own = clusters[:, torch.arange(seq) // BLOCK] * AMPLITUDE
    q[:, :, LOCAL] += own
    k[:, :, LOCAL] += own
    sink = torch.nn.functional.normalize(torch.randn(batch, 1, D, generator=gen), dim=-1) * AMPLITUDE
    q[:, :, GLOBAL] += sink
    k[:, list(GLOBAL_KEYS), GLOBAL] += sink
    return tuple(t.to(dtype).transpose(1, 2) for t in (q, k, v))


def probs64(q, k, kv_lens=None) -> torch.Tensor:
    """[B, H, S, S] float64 softmax of the dense attention map (padded keys excluded)."""
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    keys = key_padding_ref(kv_lens, k.shape[2])
    if keys is not None:
        s = s.masked_fill(~keys, float("-inf"))
    return torch.softmax(s, dim=-1)


def element_mask(blocks: torch.Tensor, seq: int, block: int = BLOCK) -> torch.Tensor:
    """[B, H, QB, KB] block map -> [B, H, S, S] element mask."""
    return blocks.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :seq, :seq]


def served_rows(geometry: BlockGeometry) -> torch.Tensor:
    """[S] bool: query rows outside text-only blocks (the rows a selection serves)."""
    return geometry.served_rows().repeat_interleave(geometry.block_size)[: geometry.seq_len]


def recall64(p: torch.Tensor, blocks: torch.Tensor, geometry: BlockGeometry, kv_lens=None) -> torch.Tensor:
    """[B, H] float64: attention mass the selection keeps, over the rows it serves that are not
    padding (rows of padded tokens carry no mass)."""
    rows = served_rows(geometry).view(1, 1, -1).double()
    if kv_lens is not None:
        rows = rows * (torch.arange(geometry.seq_len) < kv_lens.view(-1, 1, 1)).double()
    kept = (p * element_mask(blocks, geometry.seq_len, geometry.block_size)).sum(-1)
    return (kept * rows).sum(-1) / (p.sum(-1) * rows).sum(-1)


def config(sparsity=0.5, **kwargs) -> AdaSpaConfig:
    """Searches at steps 1 and 3, dense at step 0."""
    kwargs = {"block_size": BLOCK, "warmup_steps": 1, "search_steps": (1, 3), "schedule_steps": None, **kwargs}
    return AdaSpaConfig(sparsity=sparsity, **kwargs)


TEXT_CASES = {
    "no-text": None,
    "text-after": TokenLayout(1, 1, S - 20, text_len=20, text_position="after"),
    "text-before": TokenLayout(1, 1, S - 20, text_len=20, text_position="before"),
}


# --------------------------------------------------------------------------- top-k and recall
@pytest.mark.parametrize("case", list(TEXT_CASES))
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
@torch.no_grad()
def test_selection_is_rowwise_topk_and_recall_matches_float64(request, case, sparsity):
    q, k, v = structured_qkv(fresh_generator(request))
    layout = TEXT_CASES[case]
    cfg = config(sparsity)
    state = AdaSpaState()
    out = adaspa_attention(q, k, v, state, step=1, config=cfg, token_layout=layout)
    geometry = BlockGeometry.of(S, BLOCK, layout)
    blocks = state.selected_blocks(0)
    p = probs64(q, k)

    # The first search step's output is dense attention.
    ref, _ = attention_ref(q, k, v)
    assert_close_to_reference(out, ref, attention_ref(q, k, v, upcast=False)[0], name="first search output")

    # Recall the state reports == recall of its selection on the float64 attention map.
    torch.testing.assert_close(state.recall[0].double(), recall64(p, blocks, geometry), rtol=0, atol=2e-6)

    # Text key blocks in every served row; text-only rows select nothing (they run dense).
    text, rows = geometry.forced_keys(), geometry.served_rows()
    assert blocks[:, :, rows][..., text].all()
    assert not blocks[:, :, ~rows].any()

    # Per served row, the video blocks kept are the largest by float64 mass, as many as the head's tier says.
    mass64 = torch.nn.functional.pad(p, (0, geometry.num_blocks * BLOCK - S, 0, geometry.num_blocks * BLOCK - S))
    mass64 = mass64.unflatten(2, (-1, BLOCK)).unflatten(-1, (-1, BLOCK)).sum((3, 5))
    video = ~text
    kept_video = blocks & video
    for h in range(H):
        want = keep_count(float(state.head_sparsity[0][0, h]), geometry.selectable)
        counts = kept_video[0, h, rows].sum(-1)
        assert (counts == want).all(), f"head {h}: rows keep {counts.tolist()}, tier says {want}"
        m = mass64[0, h, rows]
        lowest_kept = torch.where(kept_video[0, h, rows], m, math.inf).amin(-1)
        highest_dropped = torch.where(~kept_video[0, h, rows] & video, m, -math.inf).amax(-1)
        assert (lowest_kept >= highest_dropped - 1e-6).all(), f"head {h}: a dropped block outweighs a kept one"

    # Structured heads recall more than diffuse ones, and get the sparser tier.
    assert state.recall[0][0, LOCAL] > 0.8 and state.recall[0][0, GLOBAL] > 0.8
    assert state.head_sparsity[0][0, LOCAL] > sparsity and state.head_sparsity[0][0, 2] < sparsity


@torch.no_grad()
def test_padded_keys_are_never_chosen_over_real_ones(request):
    """No text declared, 37 and 70 padded tokens: a block of padded keys has mass 0 and is never kept,
    even where the denser tier's k (10 of 13 blocks) exceeds the real blocks (9 in sample 1); rows
    of padded queries count for nothing in the recall."""
    q, k, v = structured_qkv(fresh_generator(request), batch=2)
    kv_lens = torch.tensor([S - 37, S - 70], dtype=torch.int32)
    state = AdaSpaState()
    adaspa_attention(q, k, v, state, step=1, config=config(0.5), kv_lens=kv_lens)
    blocks = state.selected_blocks(0)
    for b, n in enumerate(kv_lens.tolist()):
        assert not blocks[b, :, :, -(-n // BLOCK):].any(), "a block of padded keys was selected"
    geometry = BlockGeometry.of(S, BLOCK)
    torch.testing.assert_close(state.recall[0].double(), recall64(probs64(q, k, kv_lens), blocks, geometry, kv_lens),
                               rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- LSE cache
@torch.no_grad()
def test_cached_lse_mass_equals_fresh_mass(request):
    """The LSE kept (float32) at the first search gives the fresh mass (within a few float32 ulps of
    the LSE: the two passes sum in another order) and, on unchanged inputs, the same selection and
    recall at the next search."""
    q, k, v = structured_qkv(fresh_generator(request))
    cfg = config(0.8)
    state = AdaSpaState()
    adaspa_attention(q, k, v, state, step=1, config=cfg)
    first_blocks, first_recall = state.selected_blocks(0), state.recall[0]
    cached = state.cached_lse(0)
    assert cached.dtype == torch.float32 and tuple(cached.shape) == (1, H, S)

    fresh_mass, exact_lse = block_attention_mass(q, k, None, BLOCK, return_lse=True)
    cached_mass = block_attention_mass(q, k, cached, BLOCK)
    # exp(lse - lse_cached) scales each row; |lse - lse_cached| <= a few float32 ulps of |lse|.
    bound = math.expm1(float(exact_lse.abs().max()) * 2.0 ** -21)
    torch.testing.assert_close(cached_mass, fresh_mass, rtol=bound, atol=1e-7)

    adaspa_attention(q, k, v, state, step=3, config=cfg)  # the cached search, same inputs
    assert torch.equal(state.selected_blocks(0), first_blocks)
    torch.testing.assert_close(state.recall[0], first_recall, rtol=0, atol=4 * bound)
    assert state.cached_lse(0) is None, "the last search step drops the LSE cache"


class CountingOps:
    """The kernel ops, counting calls (and whether the mass pass got an LSE)."""

    kv_lens = None

    def __init__(self):
        self.calls = []

    def attention_with_lse(self, q, k, v):
        self.calls.append("attention_with_lse")
        return attention_with_lse(q, k, v)

    def block_attention_mass(self, q, k, lse, block_size):
        self.calls.append("mass(lse)" if lse is not None else "mass(fused)")
        return block_attention_mass(q, k, lse, block_size)

    def block_sparse_attention(self, q, k, v, layout):
        from kernels.attention import block_sparse_attention

        self.calls.append("block_sparse")
        return block_sparse_attention(q, k, v, layout)


@torch.no_grad()
def test_each_phase_runs_its_passes(request, fallback):
    """Step 0 dense (the caller's), step 1 dense + LSE then one mass pass, step 2 sparse only, step 3
    one mass pass with the cached LSE then sparse; a state that missed the first search runs one
    at a later search step or a sparse step."""
    q, k, v = structured_qkv(fresh_generator(request))
    cfg = config(0.5)
    geometry = BlockGeometry.of(S, BLOCK)
    state = AdaSpaState()
    seen = []
    for step in range(5):
        ops = CountingOps()
        out = attend(cfg, cfg.plan(step, None, geometry), state, 0, q, k, v, ops)
        seen.append((out is None, ops.calls))
    assert seen == [
        (True, []),
        (False, ["attention_with_lse", "mass(lse)"]),
        (False, ["block_sparse"]),
        (False, ["mass(lse)", "block_sparse"]),
        (False, ["block_sparse"]),
    ]
    ops = CountingOps()
    attend(cfg, cfg.plan(3, None, geometry), AdaSpaState(), 0, q, k, v, ops)
    assert ops.calls == ["attention_with_lse", "mass(lse)"], "a later search with no cached LSE searches afresh"
    ops = CountingOps()
    attend(cfg, cfg.plan(4, None, geometry), AdaSpaState(), 0, q, k, v, ops)
    assert ops.calls == ["attention_with_lse", "mass(lse)"], "a sparse step with no selection searches"


# --------------------------------------------------------------------------- sparse output
@pytest.mark.parametrize("case", ["text-after", "text-before", "no-text"])
@torch.no_grad()
def test_sparse_step_computes_its_selection_and_dense_text_rows(request, case):
    batch = 2 if case == "text-after" else 1
    q, k, v = structured_qkv(fresh_generator(request), batch=batch)
    layout = TEXT_CASES[case]
    kv_lens = torch.tensor([S, S - 9], dtype=torch.int32) if batch == 2 else None
    cfg = config(0.8)
    state = AdaSpaState()
    adaspa_attention(q, k, v, state, step=1, config=cfg, token_layout=layout, kv_lens=kv_lens)
    out = adaspa_attention(q, k, v, state, step=2, config=cfg, token_layout=layout, kv_lens=kv_lens)
    geometry = BlockGeometry.of(S, BLOCK, layout)
    mask = element_mask(state.selected_blocks(0), S)
    if layout is not None:
        mask[:, :, layout.text_slice] = True  # text rows attend every key
    keys = key_padding_ref(kv_lens, S)
    if keys is not None:
        mask = mask & keys
    ref, _ = attention_ref(q, k, v, mask)
    assert_close_to_reference(out, ref, attention_ref(q, k, v, mask, upcast=False)[0], name="sparse step")
    assert geometry.num_blocks == 13


# --------------------------------------------------------------------------- tiers
@pytest.mark.parametrize("sparsity", [0.0, 0.2, 1 / 3, 0.5, 0.8, 0.9, 0.95])
def test_tier_sparsities_average_to_s(sparsity):
    denser, base, sparser = tier_sparsities(sparsity)
    assert denser >= 0 and sparser < 1 and base == sparsity
    assert math.isclose((denser + sparser) / 2, sparsity, abs_tol=1e-12)
    if sparsity >= 1 / 3:  # the paper's (3s - 1) / 2 and (1 + s) / 2
        assert math.isclose(denser, (3 * sparsity - 1) / 2, abs_tol=1e-12)
        assert math.isclose(sparser, (1 + sparsity) / 2, abs_tol=1e-12)


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("threshold", [0.0, 0.8, 1.0])
@torch.no_grad()
def test_three_tiers_average_to_s_in_every_layer_and_sample(request, sparsity, threshold):
    """On a block mass with spread-out recalls, per (sample, layer) the heads' tier sparsities
    average exactly s, and the blocks kept average s up to the rounding of one block per tier."""
    gen = fresh_generator(request)
    b, h, nb = 2, 6, 40
    sharpness = torch.linspace(0.0, 4.0, h).view(1, h, 1, 1)  # head 0 diffuse ... head 5 peaked
    mass = torch.softmax(torch.randn(b, h, nb, nb, generator=gen) * sharpness, dim=-1) * BLOCK
    geometry = BlockGeometry(nb * BLOCK, BLOCK)
    sel = select_blocks(mass, geometry, sparsity=sparsity, recall_threshold=threshold)
    torch.testing.assert_close(sel.head_sparsity.double().mean(-1), torch.full((b,), sparsity, dtype=torch.float64),
                               rtol=0, atol=1e-6)
    kept = sel.blocks.float().mean((-1, -2))  # [B, H] density per head
    assert ((kept.mean(-1) - (1 - sparsity)).abs() <= 1.5 / nb).all()
    n = (sel.base_recall > threshold).sum(-1).clamp(max=h // 2)
    assert ((sel.head_sparsity > sparsity).sum(-1) == n).all()


def test_head_tiers_cap_and_ties():
    recall = torch.tensor([[0.9, 0.95, 0.99, 0.85, 0.97], [0.1, 0.9, 0.2, 0.3, 0.4]])
    tiers = head_tiers(recall, 0.8)
    # Sample 0: all 5 pass, n capped at 5 // 2 = 2: best two (2, 4) sparser, worst two (3, 0) denser.
    assert tiers[0].tolist() == [-1, 0, 1, -1, 1]
    # Sample 1: one passes: the best (1) sparser, the worst (0) denser.
    assert tiers[1].tolist() == [-1, 1, 0, 0, 0]
    assert head_tiers(recall, 1.0).abs().sum() == 0, "a threshold of 1 leaves every head at s"
    ties = head_tiers(torch.full((1, 4), 0.9), 0.8)
    assert ties.tolist() == [[1, 1, -1, -1]], "equal recalls rank the lower head first"


def test_tiers_off_keeps_every_head_at_s():
    mass = torch.softmax(torch.randn(1, 4, 10, 10) * torch.arange(4.0).view(1, 4, 1, 1), -1)
    sel = select_blocks(mass, BlockGeometry(10 * BLOCK, BLOCK), sparsity=0.7, recall_threshold=0.0, tiers=False)
    assert (sel.head_sparsity == 0.7).all() and (sel.blocks.sum(-1) == 3).all()


@torch.no_grad()
def test_sparsity_zero_keeps_every_block(request, fallback):
    q, k, v = structured_qkv(fresh_generator(request))
    state = AdaSpaState()
    layout = TEXT_CASES["text-before"]
    adaspa_attention(q, k, v, state, step=1, config=config(0.0), token_layout=layout)
    geometry = BlockGeometry.of(S, BLOCK, layout)
    rows = served_rows(geometry)[::BLOCK]
    assert state.selected_blocks(0)[:, :, rows].all()
    torch.testing.assert_close(state.recall[0], torch.ones(1, H), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- storage
@pytest.mark.parametrize("kb", [1, 8, 13, 64, 130])
def test_pack_unpack_and_layout_round_trip(kb):
    gen = torch.Generator().manual_seed(kb)
    blocks = torch.rand(2, 3, kb, kb, generator=gen) < 0.3
    blocks[..., 0] = True
    packed = pack_blocks(blocks)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == -(-kb // 8)
    assert torch.equal(unpack_blocks(packed, kb), blocks)
    seq = kb * BLOCK - 5  # the last block crosses the end
    geometry = BlockGeometry(seq, BLOCK)
    layout = layout_from_blocks(blocks, geometry, width=int(blocks.sum(-1).max()))
    full, part = layout.block_maps()
    assert torch.equal(full | part, blocks)


def test_geometry_of_text_before_and_after():
    after = BlockGeometry.of(S, BLOCK, TEXT_CASES["text-after"])  # text 180..199
    assert (after.dense_key_blocks, after.dense_query_blocks, after.selectable) == ((range(11, 13),), (range(12, 13),), 11)
    before = BlockGeometry.of(S, BLOCK, TEXT_CASES["text-before"])  # text 0..19
    assert (before.dense_key_blocks, before.dense_query_blocks, before.selectable) == ((range(0, 2),), (range(0, 1),), 11)
    with pytest.raises(ValueError, match="token layout describes"):
        BlockGeometry.of(S + 1, BLOCK, TEXT_CASES["text-after"])


@torch.no_grad()
def test_state_bytes_match_cache_bytes(request, fallback):
    q, k, v = structured_qkv(fresh_generator(request))
    state = AdaSpaState()
    for layer in range(3):
        adaspa_attention(q, k, v, state, step=1, config=config(0.8), layer=layer)
    assert state.nbytes() == cache_bytes(layers=3, heads=H, seq_len=S, block_size=BLOCK)["total"]
    adaspa_attention(q, k, v, state, step=3, config=config(0.8), layer=0)
    # The cached search's sparse call keeps layer 0's layout (on top of the formula, capped).
    assert set(state.layouts) == {0} and state.layout_bytes > 0
    assert state.nbytes() == (cache_bytes(layers=3, heads=H, seq_len=S, block_size=BLOCK)["total"] - H * S * 4
                              + state.layout_bytes)


@torch.no_grad()
def test_layouts_are_kept_between_searches_and_rebuilt_after_one(request, fallback, monkeypatch):
    import adaspa.state

    q, k, v = structured_qkv(fresh_generator(request))
    state = AdaSpaState()
    for step in (1, 2):  # first search (dense output), then a sparse step that builds and keeps the layout
        out = adaspa_attention(q, k, v, state, step=step, config=config(0.8))
    kept = state.layouts[0]
    again = adaspa_attention(q, k, v, state, step=2, config=config(0.8))
    assert state.layouts[0] is kept, "a sparse step must reuse the layout kept since the search"
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    built = state.layout_bytes
    q2 = torch.roll(q, shifts=3 * BLOCK, dims=1)  # another selection at the next search
    adaspa_attention(q2, k, v, state, step=3, config=config(0.8))
    assert state.layouts[0] is not kept and state.layout_bytes > 0
    assert torch.equal(state.layouts[0].kv_indices, state.layout(0).kv_indices)
    rebuilt = adaspa.state.layout_from_blocks(state.selected_blocks(0), state.geometry, state.widths[0])
    assert torch.equal(state.layouts[0].kv_indices, rebuilt.kv_indices), "the kept layout is the new selection's"
    assert built > 0
    # Past the cap nothing is kept: every sparse step rebuilds, with the same output.
    monkeypatch.setattr(adaspa.state, "LAYOUT_CACHE_BYTES", 0)
    capped = AdaSpaState()
    for step in (1, 2):
        got = adaspa_attention(q, k, v, capped, step=step, config=config(0.8))
    assert capped.layouts == {} and capped.layout_bytes == 0
    torch.testing.assert_close(got, out, rtol=0, atol=0)


def test_state_refuses_another_generation_shape(request, fallback):
    q, k, v = structured_qkv(fresh_generator(request))
    state = AdaSpaState()
    adaspa_attention(q, k, v, state, step=1, config=config(0.5))
    shorter = tuple(t[:, :, :150] for t in (q, k, v))
    with pytest.raises(ValueError, match="fresh state per generation"):
        adaspa_attention(*shorter, state, step=2, config=config(0.5))
    with pytest.raises(ValueError, match="batch 1"):
        adaspa_attention(*(t.expand(2, -1, -1, -1) for t in (q, k, v)), state, step=2, config=config(0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@torch.no_grad()
def test_cached_search_and_sparse_steps_capture_in_a_cuda_graph(request):
    """Neither a later search step (mass with the cached LSE, top-k, tiers, selection written to the
    state) nor a sparse step (layout rebuilt from the bitmask, block-sparse kernel) reads anything
    back to the host: both capture in a CUDA graph, and a replay equals the eager step."""
    q, k, v = (t.cuda() for t in structured_qkv(fresh_generator(request), seq=1000, dtype=torch.bfloat16))
    cfg = AdaSpaConfig(block_size=64, warmup_steps=0, search_steps=(0, 1, 2), schedule_steps=None)
    state = AdaSpaState()
    adaspa_attention(q, k, v, state, step=0, config=cfg)  # the first search, eager
    for step in (1, 3):  # a search step that keeps the LSE (step 2 follows), a sparse step
        def run():
            return adaspa_attention(q, k, v, state, step=step, config=cfg)

        want = run()
        graph, out = capture_cuda_graph(run)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want), f"step {step}: the replayed step differs from the eager one"


@torch.no_grad()
def test_large_scores_keep_the_cached_lse_finite(request, fallback):
    """Scores whose row LSE passes float16's range (65504) must not become rows of zeros at the
    cached search: at sparsity 0 the cached-search step equals dense attention."""
    q, k, v = structured_qkv(fresh_generator(request))
    q = q * 8000.0  # LSE ~ 7 x 10^4 on the local head
    state = AdaSpaState()
    adaspa_attention(q, k, v, state, step=1, config=config(0.0))
    assert float(attention_with_lse(q, k, v)[1].max()) > torch.finfo(torch.float16).max
    assert torch.isfinite(state.cached_lse(0)).all()
    out = adaspa_attention(q, k, v, state, step=3, config=config(0.0))
    dense, _ = attention_with_lse(q, k, v)
    assert state.selected_blocks(0).any(-1).all(), "every row keeps the blocks that hold its mass"
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_state_refuses_another_head_count(request, fallback):
    q, k, v = structured_qkv(fresh_generator(request))
    state = AdaSpaState()
    adaspa_attention(q, k, v, state, step=1, config=config(0.5))
    fewer = tuple(t[:, :2] for t in (q, k, v))
    with pytest.raises(ValueError, match=r"holds selections for 4 heads, but the call has 2.*fresh state"):
        adaspa_attention(*fewer, state, step=2, config=config(0.5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(step=-1), r"step must be an integer >= 0"),
        (dict(step=1.5), r"step must be an integer >= 0"),
        (dict(step=True), r"step must be an integer >= 0"),
        (dict(step=1, layer=-2), r"layer must be an integer >= 0"),
        (dict(step=1, layer=0.5), r"layer must be an integer >= 0"),
        (dict(step=1, num_steps=0), r"num_steps must be an integer >= 1"),
        (dict(step=1, num_steps=-4), r"num_steps must be an integer >= 1"),
        (dict(step=1, num_steps=2.5), r"num_steps must be an integer >= 1"),
        (dict(step=5, num_steps=5), r"step 5 is outside a 5-step generation"),
    ],
)
def test_functional_entry_refuses_bad_steps_and_layers(request, kwargs, message):
    q, k, v = structured_qkv(fresh_generator(request))
    with pytest.raises(ValueError, match=message):
        adaspa_attention(q, k, v, AdaSpaState(), config=config(0.5), **kwargs)
