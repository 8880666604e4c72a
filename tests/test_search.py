"""The offline plan search: the greedy decision, costs, calibration, the search run and its command.

The search only calls the public ops, which tests/test_kernels.py checks on the Triton
interpreter; here they run on the PyTorch fallback (the ``fallback`` fixture), which computes the
same functions fast enough for whole pipelines on the CPU."""

from __future__ import annotations

import dataclasses
import math
import types

import pytest
import torch

from helpers import diffusers_qkv, fresh_generator
from kernels.attention import attention_with_lse, block_sparse_attention
from kernels.reference import attention_ref
from search.calibration import combine_runs
from search.candidates import DEFAULT_CANDIDATES, check_candidates
from search.cost_model import CostShape, candidate_costs, flop_costs
from search.greedy import PlanSearch
from sparse_vdit.modes import Diagonal, Full, ModeBank, MultiDiagonal, Skip, VerticalStripe, mode_density
from sparse_vdit.token_layout import TokenLayout

TOKENS = TokenLayout(4, 8, 8)  # 256 tokens, 8 per latent row, 32 latent rows
BLOCK = 16


class StubCall:
    """The two bound ops ``PlanSearch.choose`` uses, without key padding."""

    attention_with_lse = staticmethod(lambda q, k, v: attention_with_lse(q, k, v))
    block_sparse_attention = staticmethod(lambda q, k, v, layout: block_sparse_attention(q, k, v, layout))


def structured_qkv(gen):
    """Head 0 attends its own latent row sharply (a Diagonal(0) head); head 1 is diffuse noise."""
    s, d = TOKENS.seq_len, 64
    row = torch.arange(s) // TOKENS.cols  # global latent row of each token
    code = torch.nn.functional.one_hot(row, 32).float() * 6.0  # same row -> q.k = 36, else 0
    q = torch.zeros(1, 2, s, d)
    k = torch.zeros(1, 2, s, d)
    q[0, 0, :, :32], k[0, 0, :, :32] = code, code
    q[0, 1], k[0, 1] = torch.randn(s, d, generator=gen) * 0.05, torch.randn(s, d, generator=gen) * 0.05
    v = torch.randn(1, 2, s, d, generator=gen)
    return q, k, v


def make_search(**kwargs):
    search = PlanSearch(kwargs.pop("candidates", (Skip(), Diagonal(1), MultiDiagonal(1, None))),
                        block_size=BLOCK, **kwargs)
    shape = CostShape(TOKENS, 2, 64, 1, BLOCK, torch.float32)
    search.costs, search.cost_source, search.gpu = candidate_costs(search.candidates, shape, torch.device("cpu"), "flops")
    bank = ModeBank((*search.candidates, Full()), TOKENS, block_size=BLOCK)
    return search, bank


def test_choose_picks_per_head_by_normalised_loss(fallback, request):
    gen = fresh_generator(request)
    q, k, v = structured_qkv(gen)
    search, bank = make_search(epsilon=0.2)
    modes, losses, out = search.choose(StubCall(), q, k, v, bank)
    # Independent float64 losses of every candidate, per head.
    dense, _ = attention_ref(q, k, v)
    want = {}
    for mode in search.candidates:
        o, _ = attention_ref(q, k, v, bank.layout([mode]).to_dense())
        err = ((o - dense) ** 2).sum(dim=(0, 2, 3)) / (dense**2).sum(dim=(0, 2, 3))
        want[mode] = err + 0.5 * search.costs[mode]
    for h in range(2):
        best = min(search.candidates, key=lambda m: float(want[m][h]))
        expect = best if float(want[best][h]) < 0.2 else Full()
        assert modes[h] == expect, (h, modes[h], {repr(m): float(w[h]) for m, w in want.items()})
    assert modes[0] == Diagonal(1), "the row-local head takes the cheapest mode that covers its row"
    assert modes[1] == Full(), "the diffuse head keeps full attention"
    assert losses[1] == 0.0 and math.isclose(losses[0], float(want[Diagonal(1)][0]), rel_tol=1e-3)
    # The returned output is each head's chosen computation (what later layers then see).
    chosen = bank.layout(list(modes))
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, chosen), rtol=0, atol=1e-5)


def test_epsilon_and_lambda_steer_the_choice(fallback, request):
    q, k, v = structured_qkv(fresh_generator(request))
    search, bank = make_search(epsilon=1e-9)
    assert search.choose(StubCall(), q, k, v, bank)[0] == (Full(), Full()), "tiny epsilon: nothing passes"
    search, bank = make_search(epsilon=10.0, lam=0.0)
    modes = search.choose(StubCall(), q, k, v, bank)[0]
    assert modes[1] == MultiDiagonal(1, None), "without a cost term the diffuse head takes the widest candidate"
    search, bank = make_search(epsilon=10.0, lam=100.0)
    assert search.choose(StubCall(), q, k, v, bank)[0] == (Skip(), Skip()), "a huge cost weight picks the cheapest"


def test_bad_search_arguments():
    for kwargs, match in (({"lam": -1}, "lambda"), ({"epsilon": 0}, "epsilon"), ({"block_size": 48}, "block_size"),
                          ({"candidates": [Full()]}, "at least one candidate"), ({"candidates": [Diagonal]}, "instance"),
                          ({"candidates": ["diagonal"]}, "not a mode")):
        with pytest.raises((ValueError, TypeError), match=match):
            PlanSearch(**kwargs)
    assert check_candidates([Diagonal(1), Full(), Diagonal(1)]) == (Diagonal(1),)


def test_flop_costs_are_densities():
    shape = CostShape(TOKENS, 2, 64, 1, BLOCK, torch.float32)
    costs = flop_costs(DEFAULT_CANDIDATES, shape)
    assert costs[Full()] == 1.0 and costs[Skip()] == 0.0
    for mode in DEFAULT_CANDIDATES:
        assert costs[mode] == mode_density(mode, TOKENS, BLOCK)
    costs, source, gpu = candidate_costs(DEFAULT_CANDIDATES, shape, torch.device("cpu"))
    assert source == "flops" and gpu is None
    with pytest.raises(ValueError, match="need a CUDA GPU"):
        candidate_costs(DEFAULT_CANDIDATES, shape, torch.device("cpu"), "measured")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measured costs need a GPU")
def test_measured_costs_are_cached(tmp_path):
    # A real shape (Wan 480p, 12 heads): at toy sizes the launch overhead, not the kernel, is timed.
    layout = TokenLayout(21, 30, 52)
    shape = CostShape(layout, 12, 128, 1, 128, torch.bfloat16)
    cands = (Skip(), Diagonal(1), MultiDiagonal(1, None))
    costs, source, gpu = candidate_costs(cands, shape, torch.device("cuda"), "measured", cache=tmp_path)
    assert source == "measured" and gpu and costs[Full()] == 1.0
    assert costs[Skip()] < costs[Diagonal(1)] < costs[MultiDiagonal(1, None)] < 1.0
    again, _, _ = candidate_costs(cands, shape, torch.device("cuda"), "measured", cache=tmp_path)
    assert again == costs, "the second search at the same shape reads the cache"


def test_combine_runs_majority_ties_and_report():
    a, b, c = Diagonal(1), MultiDiagonal(1, None), Full()
    costs = {a: 0.1, b: 0.3, c: 1.0}
    runs = [
        [[(a, c)]],
        [[(a, b)]],
        [[(b, a)]],
    ]  # 1 step, 1 layer, 2 heads
    plan, report = combine_runs(runs, costs)
    assert plan[0][0][0] == a  # 2 of 3
    assert plan[0][0][1] == c, "a three-way tie goes to the costliest (safest) mode"
    assert report["runs"] == 3
    assert math.isclose(report["consistency"], (2 / 3 + 1 / 3) / 2)
    assert math.isclose(report["kind_agreement"], (2 / 3 + 1 / 3) / 2)
    assert report["unanimous"] == 0.0
    assert "agreement_same_prompt" not in report  # no run keys given
    _, report = combine_runs(runs, costs, keys=[("p", 0), ("p", 1), ("q", 0)])
    assert math.isclose(report["agreement_same_prompt"], 1 / 2)  # runs 0, 1: head 0 agrees, head 1 not
    assert math.isclose(report["agreement_other_prompt"], (0 / 2 + 0 / 2) / 2)  # runs 0-2, 1-2: nothing alike
    with pytest.raises(ValueError, match="3 runs"):
        combine_runs(runs, costs, keys=[("p", 0)])
    with pytest.raises(ValueError, match="different step"):
        combine_runs([[[(a,)]], [[(a, b)]]], costs)


def test_search_plan_on_the_proxy_and_replay(fallback):
    """A search on the tiny WanPipeline (2 prompts, 3 steps) gives a complete plan with its
    calibration; and greedy along the trajectory: a one-run plan, applied to the same prompt and
    seed, computes what the search computed (the search returned the chosen modes' outputs)."""
    from pipelines.apply import apply_sparse_attention
    from pipelines.loading import PROXY_DEFAULTS
    from pipelines.tiny import tiny_wan_pipeline
    from search.run import search_plan

    pipe = tiny_wan_pipeline()
    kwargs = PROXY_DEFAULTS.call_kwargs()
    prompts = list(PROXY_DEFAULTS.prompts[:2])
    plan = search_plan(pipe, prompts, [0], num_inference_steps=3, epsilon=0.5, block_size=16, progress=False,
                       **kwargs)
    assert plan.num_steps == 3 and plan.block_size == 16
    assert plan.model.num_layers == 2 and plan.model.num_heads == 2
    assert plan.cost.source == "flops" and plan.cost.gpu is None
    assert plan.calibration["runs"] == 2 and 0.0 <= plan.calibration["consistency"] <= 1.0
    assert plan.calibration["prompts"] == prompts
    modes = [m for r in plan.steps for layer in r.layers for m in layer]
    assert any(not isinstance(m, Full) for m in modes), "epsilon 0.5 on random weights should pick sparse modes"
    assert 0.0 < plan.expected_density < 1.0

    def generate():
        return pipe(prompts[0], num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                    output_type="latent", **kwargs).frames

    videos = []  # the search's own final latents
    original_call = type(pipe).__call__

    def capture(self, *args, **kw):
        out = original_call(self, *args, **kw)
        videos.append(out.frames)
        return out

    type(pipe).__call__ = capture
    try:
        one_run = search_plan(pipe, prompts[:1], [0], num_inference_steps=3, epsilon=0.5, block_size=16,
                              progress=False, **kwargs)
    finally:
        type(pipe).__call__ = original_call
    with apply_sparse_attention(pipe, one_run):
        replay = generate()
    dense = generate()
    err = (replay - videos[0]).abs().max().item()
    assert err < 1e-4, f"plan replay differs from the search's own output by {err}"
    assert (dense - videos[0]).abs().max().item() > 10 * max(err, 1e-6), "the plan must actually be sparse here"


def test_search_command_and_errors(fallback, tmp_path, capsys):
    from sparse_vdit.cli import main

    out = tmp_path / "plan.json"
    assert main(["search", "--steps", "2", "--out", str(out), "--prompt", "a cat runs", "--epsilon", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert out.exists() and "attention density" in printed and "layer 1" in printed and "consistency" in printed
    if not torch.cuda.is_available():
        assert main(["search", "--device", "cuda", "--out", str(out)]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["search", "--out", str(out), "--epsilon", "-1", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "epsilon" in err and len(err.strip().splitlines()) == 1


def test_an_all_full_plan_says_what_to_change_and_the_bar_counts_steps(fallback, monkeypatch):
    from pipelines.loading import PROXY_DEFAULTS
    from pipelines.tiny import tiny_wan_pipeline
    from search import run as search_run

    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.n, self.postfix = total, 0, []
            bars.append(self)

        def update(self, n):
            self.n += n

        def set_postfix_str(self, text):
            self.postfix.append(text)

        def close(self):
            pass

    monkeypatch.setattr(search_run, "tqdm", Bar)
    pipe = tiny_wan_pipeline()
    with pytest.warns(search_run.DensePlanWarning, match=r"the plan is all Full \(attention density 1.000\).*Raise epsilon"):
        plan = search_run.search_plan(pipe, ["a cat runs"], [0, 1], num_inference_steps=2, epsilon=1e-9, block_size=16,
                                      **PROXY_DEFAULTS.call_kwargs())
    assert plan.expected_density == 1.0
    assert [(b.total, b.n) for b in bars] == [(4, 4)], "one bar over every denoising step of every run"
    assert bars[0].postfix[-1].startswith("run 2/2")
    assert search_run.dense_plan_note(dataclasses.replace(plan, expected_density=0.5)) is None
