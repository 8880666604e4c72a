"""Two processes on the CPU (gloo) run tiny Wan and HunyuanVideo under diffusers' Ulysses context
parallelism with FullAttention, a Sparse-vDiT plan (a different mode per head) and AdaSpa (every
phase), and match the same model in one process; the step tracker sees the whole sequence; each
rank's AdaSpa state holds its own heads' selections, equal to the one-process state's rows; a head
count the degree does not divide is refused at apply time, and runs with ``ulysses_anything``
(uneven heads; uneven token shares are covered in one process, tests/test_context_parallel.py:
diffusers gathers the output with ``dist.all_gather`` of unequal sizes, which gloo refuses); Wan's
blocks compiled with ``fullgraph=True`` run the exchange and AdaSpa's phases.

One spawn serves the whole module (each costs seconds of imports): the workers run every case,
save what they saw, and the tests below compare. The kernels take their PyTorch path in the
workers (the exchange is under test here; the Triton kernels have their own tests).

Tolerance: both sides compute the same float32 attention per head, in other tensor shapes and
orders (the exchange itself moves data and never rounds), so they differ by rounding only, which
the layers after attention carry forward: ``max |cp - one| <= RTOL * max(1, max |one|)`` with
RTOL = 1e-5, about 80 float32 ulps (measured: below 1e-6).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORLD = 2
RTOL = 1e-5
BLOCK = 16
TIMESTEPS = (900.0, 700.0, 500.0, 300.0, 100.0)
ADASPA_STEPS = 5  # dense, first search, sparse, cached search, sparse
PLAN_STEPS = 2


# ----------------------------------------------------------------------------- models (both sides)
def cp_wan(heads: int = 4, seed: int = 0):
    """A tiny Wan with ``heads`` heads x 32 (more heads than the shared tiny model, so a rank holds several)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=32, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    ).eval()


def cp_hunyuan(seed: int = 0):
    """A tiny HunyuanVideo with 4 heads x 32: 2 dual-stream blocks, 1 single-stream block."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=32, num_layers=2,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=1.0, patch_size=2, patch_size_t=1,
        guidance_embeds=False, text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(8, 12, 12),
    ).eval()


def head_modes(heads: int):
    """Two searched steps x three layers of per-head modes: every mode, a Skip head, an all-Full
    layer, and a layer whose heads are all Full on one rank only (dense there, sparse on the other)."""
    from sparse_vdit.modes import Diagonal, Full, MultiDiagonal, Skip, VerticalStripe

    cycle = [Diagonal(1), VerticalStripe((0, -1), 2), MultiDiagonal(1, 1), Skip(), Full()]
    mixed = tuple(cycle[i % len(cycle)] for i in range(heads))
    half = heads // 2
    one_rank_full = tuple([Full()] * half + [Diagonal(0)] * (heads - half))
    return [
        (mixed, tuple([Full()] * heads), one_rank_full),
        (tuple(reversed(mixed)), one_rank_full, mixed),
    ]


def make_plan(model, grid: dict):
    from pipelines import model_info, token_layout_of
    from sparse_vdit import Plan
    from test_plan import cost_table

    modes = head_modes(model_info(model).num_heads)
    used = {m for step in modes for layer in step for m in layer}
    layout = token_layout_of(model, grid["frames"], grid["height"], grid["width"], text_len=grid.get("text_len"))
    return Plan.from_step_modes(modes, model=model_info(model), token_layout=layout, block_size=BLOCK, lam=0.5,
                                epsilon=1.0, cost=cost_table(used))


def adaspa():
    from adaspa import AdaSpaConfig

    return AdaSpaConfig(sparsity=0.5, block_size=BLOCK, warmup_steps=1, search_steps=(1, 3), schedule_steps=None)


# ----------------------------------------------------------------------------- one run
def _at(kwargs: dict, timestep: float) -> dict:
    return {**kwargs, "timestep": torch.full_like(kwargs["timestep"], timestep)}


@torch.no_grad()
def run(model, kwargs: dict, method, steps: int) -> dict:
    """``steps`` denoising-step forwards (cache_context as a pipeline drives them) with ``method``
    applied (None: the stock processors). Returns outputs, and what the tracker and AdaSpa saw."""
    from pipelines import apply_sparse_attention

    handle = None if method is None else apply_sparse_attention(model, method)
    seen: dict = {"out": [], "layouts": [], "kv_lens": [], "heads": []}
    try:
        for i in range(steps):
            with model.cache_context("cond", step_index=i, num_inference_steps=steps):
                seen["out"].append(model(**_at(kwargs, TIMESTEPS[i]))[0])
            if handle is not None:
                forward = handle.trackers[0].current
                seen["layouts"].append(forward.token_layout)
                seen["kv_lens"].append(forward.kv_lens)
                seen["heads"].append(forward.heads)
        state = None if handle is None else handle.trackers[0].current.state
        if state is not None and hasattr(state, "selections"):
            seen["selections"] = {layer: state.selected_blocks(layer) for layer in sorted(state.selections)}
            seen["head_sparsity"] = dict(state.head_sparsity)
    finally:
        if handle is not None:
            handle.remove()
    return seen


def runs(model, kwargs: dict, methods: dict) -> dict:
    return {name: run(model, kwargs, make(), steps) for name, (make, steps) in methods.items()}


# ----------------------------------------------------------------------------- cases (in the workers)
WAN_GRID = dict(frames=3, height=12, width=10)  # 90 tokens: 45 per rank, blocks of 16 cross the shard edge
HUNYUAN_GRID = dict(frames=2, height=12, width=12, text_len=12)  # 72 video + 12 text; prompts of 10 and 3 tokens



def _methods(model, grid) -> dict:
    from pipelines import FullAttention

    return {
        "full": (FullAttention, ADASPA_STEPS),
        "plan": (lambda: make_plan(model, grid), PLAN_STEPS),
        "adaspa": (adaspa, ADASPA_STEPS),
    }


def case_wan() -> dict:
    from diffusers import ContextParallelConfig
    from pipelines import tiny

    model = cp_wan()
    kwargs = tiny.wan_inputs(**WAN_GRID)
    methods = {**_methods(model, WAN_GRID), "stock": (lambda: None, 1)}
    one = runs(model, kwargs, methods)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
    return {"one": one, "cp": runs(model, kwargs, methods)}


def case_hunyuan() -> dict:
    from diffusers import ContextParallelConfig
    from pipelines import tiny
    from pipelines.families.hunyuan_video import hunyuan_video_cp_plan

    model = cp_hunyuan()
    grid = {k: v for k, v in HUNYUAN_GRID.items() if k != "text_len"}
    kwargs = tiny.hunyuan_inputs(**grid, text_lens=(10, 3), text_len=HUNYUAN_GRID["text_len"])
    methods = _methods(model, HUNYUAN_GRID)
    one = runs(model, kwargs, methods)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD), cp_plan=hunyuan_video_cp_plan())
    return {"one": one, "cp": runs(model, kwargs, methods)}


def case_uneven() -> dict:
    """3 heads over 2 ranks: refused without ulysses_anything; with it, 2 + 1 heads."""
    from diffusers import ContextParallelConfig
    from pipelines import FullAttention, apply_sparse_attention, tiny

    refused = cp_wan(heads=3)
    refused.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
    try:
        apply_sparse_attention(refused, FullAttention()).remove()
        error = None
    except ValueError as exc:
        error = str(exc)
    model = cp_wan(heads=3)
    kwargs = tiny.wan_inputs(**WAN_GRID)
    methods = _methods(model, WAN_GRID)
    one = runs(model, kwargs, methods)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD, ulysses_anything=True))
    return {"error": error, "one": one, "cp": runs(model, kwargs, methods)}


def case_compiled() -> dict:
    """Wan's blocks after the first compiled with fullgraph=True (the exchange's functional
    collectives trace; diffusers' own split hook on blocks.0 does not, so that block stays eager)."""
    from diffusers import ContextParallelConfig
    from pipelines import FullAttention, tiny

    model = cp_wan()
    kwargs = tiny.wan_inputs(**WAN_GRID)
    methods = {"full": (FullAttention, 1), "adaspa": (adaspa, 3)}  # adaspa: dense, first search, sparse
    one = runs(model, kwargs, methods)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
    for block in list(model.blocks)[1:]:
        block.compile(fullgraph=True)
    return {"one": one, "cp": runs(model, kwargs, methods)}


CASES = {"wan": case_wan, "hunyuan": case_hunyuan, "uneven": case_uneven, "compiled": case_compiled}


def _worker(rank: int, world: int, store: str, out_dir: str, cases: dict) -> None:
    import torch.distributed as dist

    os.environ.pop("TRITON_INTERPRET", None)  # the kernels' PyTorch path (see the module docstring)
    # diffusers places rank r on accelerator r % device_count(), which is 0 on a CPU-only machine.
    torch.accelerator.device_count = lambda: 1
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    try:
        results = {name: case() for name, case in cases.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn_cases(tmp: Path, cases: dict) -> list[dict]:
    """Run ``cases`` ({name: a picklable function returning what it saw}) in ``WORLD`` gloo
    processes; each rank's {name: result}, in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(WORLD, str(tmp / "store"), str(tmp), cases), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return spawn_cases(tmp_path_factory.mktemp("gloo"), CASES)


# ----------------------------------------------------------------------------- checks
def assert_matches(cp: torch.Tensor, one: torch.Tensor, name: str) -> None:
    assert cp.shape == one.shape, f"{name}: shape {tuple(cp.shape)} != {tuple(one.shape)}"
    err = float((cp - one).abs().max())
    tol = RTOL * max(1.0, float(one.abs().max()))
    assert err <= tol, f"{name}: max |context parallel - one process| = {err:.2e} > {tol:.2e}"


def check_case(result: dict, rank: int, case: str) -> None:
    for method, one in result["one"].items():
        cp = result["cp"][method]
        for step, (a, b) in enumerate(zip(cp["out"], one["out"])):
            assert_matches(a, b, f"{case} rank {rank} {method} step {step}")
        assert cp["layouts"] == one["layouts"], f"{case} {method}: the tracker must see the whole sequence"
        for a, b in zip(cp["kv_lens"], one["kv_lens"]):
            assert (a is None and b is None) or torch.equal(a, b), f"{case} {method}: kv_lens differ"


@pytest.mark.parametrize("case", ["wan", "hunyuan", "uneven", "compiled"])
def test_context_parallel_matches_one_process(ranks, case):
    for rank, results in enumerate(ranks):
        check_case(results[case], rank, case)


@pytest.mark.parametrize("case", ["wan", "hunyuan", "uneven"])
def test_each_rank_computes_its_heads(ranks, case):
    """Rank r computes its share of the heads; together the ranks cover every head once."""
    seen = [results[case]["cp"]["full"]["heads"][0] for results in ranks]
    num_heads = ranks[0][case]["one"]["full"]["heads"][0].stop
    assert [h for r in seen for h in r] == list(range(num_heads)), f"{case}: ranks compute heads {seen}"
    assert [len(r) for r in seen] == ([2, 1] if case == "uneven" else [num_heads // 2] * 2)


@pytest.mark.parametrize("case", ["wan", "hunyuan", "uneven"])
def test_adaspa_state_lives_with_its_heads(ranks, case):
    """Each rank's AdaSpa state holds the selections and tier sparsities of its own heads, equal to
    the one-process state's rows for those heads (the tiers rank all heads of a layer)."""
    for results in ranks:
        one, cp = results[case]["one"]["adaspa"], results[case]["cp"]["adaspa"]
        heads = cp["heads"][-1]
        assert cp["selections"].keys() == one["selections"].keys() and cp["selections"]
        for layer, blocks in cp["selections"].items():
            assert torch.equal(blocks, one["selections"][layer][:, heads.start : heads.stop]), f"{case} layer {layer}"
            want = one["head_sparsity"][layer][:, heads.start : heads.stop]
            assert torch.equal(cp["head_sparsity"][layer], want), f"{case} layer {layer}: tiers differ"


@pytest.mark.parametrize("case", ["wan", "hunyuan", "uneven"])
def test_sparse_methods_compute_sparse_under_context_parallelism(ranks, case):
    """The plan and AdaSpa's sparse steps really differ from dense attention (else the tests above
    would pass on a dense fallback)."""
    for results in ranks:
        cp = results[case]["cp"]
        dense = cp["full"]["out"]
        for method, steps in (("plan", range(PLAN_STEPS)), ("adaspa", (2, 3, 4))):
            for step in steps:
                gap = float((cp[method]["out"][step] - dense[step]).abs().max())
                assert gap > 1e-3 * max(1.0, float(dense[step].abs().max())), f"{case} {method} step {step} is dense"


def test_full_attention_equals_diffusers_own_context_parallelism(ranks):
    """FullAttention under Ulysses gives what the stock processors give under the same parallelism."""
    for rank, results in enumerate(ranks):
        cp = results["wan"]["cp"]
        assert_matches(cp["full"]["out"][0], cp["stock"]["out"][0], f"rank {rank}: FullAttention vs stock")


def test_heads_the_degree_does_not_divide_are_refused(ranks):
    for results in ranks:
        error = results["uneven"]["error"]
        assert error is not None, "3 heads over ulysses_degree=2 must be refused at apply time"
        assert "3 attention heads" in error and "ulysses_anything=True" in error
