"""sparse_vdit.cli.evaluation: the attention density a method computes, PSNR / SSIM, the report (summary,
CSV, JSON, findings), and evaluate() end to end on a small proxy (videos, plots, timing)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from kernels.block_layout import BlockLayout
from sparse_vdit.cli.evaluation import (
    EvalReport,
    EvalRow,
    MeteredMethod,
    computed_fraction,
    evaluate,
    frame_psnr,
    method_settings,
    video_psnr,
    video_ssim,
)
from sparse_vdit.cli.evaluation.report import legend
from sparse_vdit.modes import Diagonal, Full, ModeBank, MultiDiagonal, Skip, mode_density
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo
from sparse_vdit.token_layout import TokenLayout


# ------------------------------------------------------------------ computed_fraction
def _brute_fraction(layout: BlockLayout) -> float:
    """Blocks computed (full or partial, whole), clipped at the sequence ends, by element count."""
    full, partial = layout.block_maps()
    (qblk, kvblk), (q_len, kv_len) = layout.block_size, layout.seq_lengths
    rows = torch.clamp(q_len - torch.arange(full.shape[2]) * qblk, max=qblk)
    cols = torch.clamp(kv_len - torch.arange(full.shape[3]) * kvblk, max=kvblk)
    counted = ((full | partial).double() * rows[:, None] * cols[None, :]).sum((-1, -2)) / (q_len * kv_len)
    return float(counted.mean())


@pytest.mark.parametrize("layout_args", [
    (TokenLayout(3, 5, 7), 16),  # 105 tokens: the last block is clipped
    (TokenLayout(3, 5, 7, text_len=9, text_position="after"), 32),
    (TokenLayout(2, 8, 8), 16),  # 128 tokens: no clipping
])
def test_computed_fraction_counts_blocks_clipped_at_the_end(layout_args):
    token_layout, block = layout_args
    modes = [Full(), Skip(), Diagonal(1), MultiDiagonal(0, None)]
    bank = ModeBank(modes, token_layout, block_size=block)
    for table in ([0, 1, 2, 3], [2, 2], [1], [3, 0]):
        layout = bank.layout([modes[i] for i in table])
        assert math.isclose(float(computed_fraction(layout)), _brute_fraction(layout), rel_tol=1e-6)
    assert math.isclose(float(computed_fraction(bank.layout([Full()]))), 1.0, rel_tol=1e-6)
    assert float(computed_fraction(bank.layout([Skip()]))) == 0.0


def test_computed_fraction_of_a_masked_layout_counts_partial_blocks_whole():
    s = 100
    layout = BlockLayout.from_mask_mod(lambda b, h, q, k: (q - k).abs() <= 3, None, None, s, s, block_size=16)
    assert math.isclose(float(computed_fraction(layout)), _brute_fraction(layout), rel_tol=1e-6)
    assert float(computed_fraction(layout)) > 7 * s / s**2  # more than the band's elements: whole blocks


# ------------------------------------------------------------------ MeteredMethod
INFO = ModelInfo("AnyVideoDiT", 1, 2, 64, ("blocks.0.attn",), "none", (1, 2, 2))
LAYOUT = TokenLayout(2, 4, 4)  # 32 tokens


def _metered_call(metered, step=0, num_steps=4):
    forward = ForwardContext(0, step, 0, None, 1.0, num_steps, LAYOUT, None, None, 1, torch.device("cpu"),
                             torch.float32, INFO, state=metered.new_state())
    prepared = metered.begin_forward(forward)
    forward = ForwardContext(0, step, 0, None, 1.0, num_steps, LAYOUT, None, None, 1, torch.device("cpu"),
                             torch.float32, INFO, state=forward.state, prepared=prepared)
    return AttentionCall(0, "blocks.0.attn", 2, 64, forward)


class _Returns(AttentionMethod):
    def __init__(self, what):
        self.what = what

    def __call__(self, call, q, k, v):
        if self.what == "layout":
            return ModeBank([Diagonal(0)], LAYOUT, block_size=16).layout([Diagonal(0)])
        if self.what == "tensor-by-ops":  # like AdaSpa's cached search: a mass scan, then a sparse pass
            _, lse = call.attention_with_lse(q, k, v)
            call.block_attention_mass(q, k, lse, 16)
            return call.block_sparse_attention(q, k, v, BlockLayout.dense(32, block_size=16))
        if self.what == "tensor":
            return torch.zeros_like(q)
        return None


@pytest.mark.parametrize("what, density, scan", [
    (None, 1.0, 0.0), ("layout", 0.5, 0.0), ("tensor-by-ops", 2.0, 1.0), ("tensor", 1.0, 0.0),
])
def test_metered_method_records_what_each_call_computed(what, density, scan, fallback):
    metered = MeteredMethod(_Returns(what))
    q, k, v = (torch.randn(1, 2, 32, 64) for _ in range(3))
    for _ in range(3):
        metered(_metered_call(metered), q, k, v)
    reading = metered.reading()
    assert reading.calls == 3
    assert math.isclose(reading.density, density, rel_tol=1e-6) and reading.scan == scan
    metered.reset()
    assert metered.reading().calls == 0


def test_metered_adaspa_counts_each_phase_honestly(fallback):
    """AdaSpa at 4 steps: step 0 dense (1.0), 1 first search (dense output: 1.0, plus a scan),
    2 cached search (its layout, plus a scan), 3 sparse (its layout)."""
    from adaspa import AdaSpaConfig

    metered = MeteredMethod(AdaSpaConfig(sparsity=0.5, block_size=16, tiers=False))
    state = metered.new_state()
    q, k, v = (torch.randn(1, 2, 32, 64, generator=torch.Generator().manual_seed(i)) for i in range(3))
    readings = []
    for step in range(4):
        forward = ForwardContext(0, step, 0, None, 1.0, 4, LAYOUT, None, None, 1, torch.device("cpu"), torch.float32,
                                 INFO, state=state)
        forward = ForwardContext(0, step, 0, None, 1.0, 4, LAYOUT, None, None, 1, torch.device("cpu"), torch.float32,
                                 INFO, state=state, prepared=metered.begin_forward(forward))
        metered.reset()
        metered(AttentionCall(0, "blocks.0.attn", 2, 64, forward), q, k, v)
        readings.append(metered.reading())
    assert [r.density for r in readings[:2]] == [1.0, 1.0]
    assert [r.scan for r in readings] == [0.0, 1.0, 1.0, 0.0]
    assert readings[2].density == readings[3].density == pytest.approx(0.5)  # 1 of 2 key blocks per row


# ------------------------------------------------------------------ metrics
def test_psnr_is_per_frame_then_averaged():
    ref = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    video = ref.clone()
    video[0] += 0.1  # mse 0.01 -> 20 dB
    video[1] += 0.01  # 40 dB
    video = video.clamp(0, 1)
    per_frame = frame_psnr(video, ref)
    mse = ((video - ref) ** 2).flatten(1).mean(1)
    assert torch.allclose(per_frame[:2], -10 * torch.log10(mse[:2].double()))
    assert per_frame[2] == math.inf
    assert video_psnr(video, ref) == pytest.approx(float((per_frame[0] + 2 * per_frame[1]) / 3))  # equal frame: best
    assert video_psnr(ref, ref) == math.inf
    with pytest.raises(ValueError, match="differ in shape"):
        frame_psnr(video[:2], ref)


def test_ssim_comes_from_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    ref = torch.rand(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noisy = (ref + 0.05 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert video_ssim(ref, ref) == pytest.approx(1.0)
    expected = float(structural_similarity_index_measure(noisy[0], ref[0], data_range=1.0))
    assert video_ssim(noisy, ref) == pytest.approx(expected) and expected < 0.99


# ------------------------------------------------------------------ report
def _row(method, setting, psnr, density, denoise, seed=0):
    return EvalRow(method, setting, "p", seed, psnr, 0.9, density, 0.0, denoise + 1.0, denoise, denoise * 0.9, (denoise,))


def test_report_summary_files_and_findings(tmp_path):
    rows = [_row("dense", "", math.inf, 1.0, 2.0), _row("dense", "", math.inf, 1.0, 2.0, seed=1),
            _row("plan", "eps=0.1", 18.0, 0.5, 1.0), _row("plan", "eps=0.1", 20.0, 0.5, 1.0, seed=1),
            _row("window", "rows=1", 25.0, 0.4, 1.0), _row("adaspa", "s=0.8", 30.0, 0.45, 1.0)]
    report = EvalReport(rows, meta={"device": "cpu", "note": "random weights"})
    by = {s.label: s for s in report.summary()}
    assert by["plan (eps=0.1)"].psnr == 19.0 and by["plan (eps=0.1)"].speedup == 2.0 and by["plan (eps=0.1)"].runs == 2
    findings = report.findings()
    assert len(findings) == 1 and findings[0].startswith("plan (eps=0.1) falls below the baseline window (rows=1)")
    assert "Why:" in findings[0]
    table = report.table()
    assert table.splitlines()[1].startswith("dense") and "ref" in table
    assert "PyTorch fallback" in legend(report) and "NOTE: random weights" in legend(report)
    with open(report.to_csv(tmp_path / "r.csv")) as f:
        read = list(csv.DictReader(f))
    assert len(read) == 6 and read[0]["psnr"] == "inf" and read[2]["step_s"] == "1.000000"
    data = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert data["rows"][0]["psnr"] == "inf" and data["findings"] == findings
    again = EvalReport.from_json(tmp_path / "r.json")
    assert again.rows == rows


def test_method_settings_flatten_and_refuse_dense():
    a, b = object(), object()
    assert method_settings({"x": a, "y": {"s=1": b, "s=2": None}}) == [("x", "", a), ("y", "s=1", b), ("y", "s=2", None)]
    with pytest.raises(ValueError, match="reference"):
        method_settings({"dense": a})


# ------------------------------------------------------------------ evaluate, end to end
@pytest.fixture(scope="module")
def smoke_pipe():
    from pipelines.proxy import SMOKE_CONFIG, build_proxy_pipeline

    return build_proxy_pipeline(SMOKE_CONFIG)


SMOKE_CALL = dict(height=16, width=32, num_frames=9, max_sequence_length=16, guidance_scale=5.0)


@pytest.mark.slow
def test_evaluate_end_to_end_writes_report_videos_and_plots(smoke_pipe, fallback, tmp_path):
    import imageio.v2 as imageio

    from adaspa import AdaSpaConfig
    from sparse_vdit.cli.evaluation.plots import write_plots
    from sparse_vdit.baselines import StaticWindowAttention

    methods = {"adaspa": {"s=0.5": AdaSpaConfig(0.5, block_size=16, tiers=False)},
               "window": {"rows=0": StaticWindowAttention(0, block_size=16)}, "stock": None}
    report = evaluate(smoke_pipe, methods, ["a red circle moves right"], seeds=[0, 1], num_inference_steps=3,
                      out_dir=tmp_path, warmup=1, progress=False, **SMOKE_CALL)
    assert [(r.method, r.seed) for r in report.rows][:4] == [("dense", 0), ("adaspa", 0), ("window", 0), ("stock", 0)]
    by = {s.label: s for s in report.summary()}
    assert by["stock"].psnr == math.inf and by["stock"].density == 1.0  # nothing applied: the dense video again
    # The smoke layout is 3 x 4 x 8 = 96 tokens, 6 blocks of 16. Of 3 steps, the window runs step 0
    # dense (warm-up 0.2 x 3, rounded) and Diagonal(0) after; AdaSpa (scaled schedule: warm-up 1,
    # searches at 1 and 2) runs step 0 dense, step 1 dense with a scan, step 2 its selection of
    # ceil(0.5 x 6) = 3 blocks per row with a scan.
    window = mode_density(Diagonal(0), TokenLayout(3, 4, 8), 16)
    assert by["window (rows=0)"].density == pytest.approx((1.0 + 2 * window) / 3) and math.isfinite(by["window (rows=0)"].psnr)
    assert by["adaspa (s=0.5)"].density == pytest.approx((1.0 + 1.0 + 3 / 6) / 3)
    assert by["adaspa (s=0.5)"].scan == pytest.approx(2 / 3)
    for row in report.rows:
        assert len(row.step_s) == 3 and row.denoise_s == pytest.approx(sum(row.step_s))
        assert 0 < row.transformer_s <= row.denoise_s <= row.total_s
    assert (tmp_path / "report.csv").exists() and (tmp_path / "report.json").exists()
    video = imageio.mimread(tmp_path / "videos" / "a_red_circle_moves_right" / "seed0" / "window_rows=0.mp4")
    # dense | method | difference, each 16 x 32 scaled 15x, under a 24-row strip of their names
    assert len(video) == 9 and video[0].shape == (24 + 240, 3 * 480, 3)
    lines = write_plots(report, {}, smoke_pipe, tmp_path, prompt="a red circle moves right", seed=0,
                        num_inference_steps=3, **SMOKE_CALL)
    assert lines == [f"plot: {tmp_path / 'psnr_speedup.png'}"] and (tmp_path / "psnr_speedup.png").stat().st_size > 0


@pytest.mark.slow
def test_attention_maps_plot_for_a_plan(smoke_pipe, fallback, tmp_path):
    from sparse_vdit.cli.evaluation.plots import write_plots
    from search.run import search_plan

    plan = search_plan(smoke_pipe, ["a green square moves up"], [0], num_inference_steps=2, epsilon=0.5, block_size=16,
                       progress=False, **SMOKE_CALL)
    report = EvalReport([_row("dense", "", math.inf, 1.0, 1.0), _row("plan", "eps=0.5", 20.0, 0.5, 0.5)])
    lines = write_plots(report, {"plan": {"eps=0.5": plan}}, smoke_pipe, tmp_path, prompt="a red circle moves right",
                        seed=0, num_inference_steps=2, **SMOKE_CALL)
    assert lines[-1] == f"plot: {tmp_path / 'attention_maps.png'}" and (tmp_path / "attention_maps.png").stat().st_size > 0


def test_without_matplotlib_plots_are_one_note(monkeypatch, tmp_path):
    import builtins

    from sparse_vdit.cli.evaluation import plots

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    report = EvalReport([_row("dense", "", math.inf, 1.0, 1.0)])
    assert plots.write_plots(report, {}, None, tmp_path, prompt="p", seed=0, num_inference_steps=1) == [plots.PLOT_NOTE]
    assert "pip install 'sparse-vdit[plot]'" in plots.PLOT_NOTE


def test_evaluate_refuses_what_it_sets_itself(smoke_pipe):
    with pytest.raises(ValueError, match="leave them out"):
        evaluate(smoke_pipe, {}, ["p"], num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match="at least one prompt"):
        evaluate(smoke_pipe, {}, [], num_inference_steps=1)


def test_mp4_without_imageio_ffmpeg_is_a_clear_error(monkeypatch, tmp_path):
    """Without imageio-ffmpeg imageio hands .mp4 to another plugin and fails with an unrelated error
    (seen on the GPU machine): write_video says what is missing instead."""
    import importlib.util

    from pipelines.videos import write_video

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    with pytest.raises(RuntimeError, match="pip install imageio-ffmpeg"):
        write_video(torch.zeros(2, 3, 16, 16), tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_evaluate_without_imageio_ffmpeg_fails_before_generating(smoke_pipe, monkeypatch, tmp_path):
    """An evaluation that will write videos checks the writer first (on the GPU machine it failed
    after the dense generation); without videos it runs."""
    import importlib.util

    from sparse_vdit.cli.evaluation import run as run_module

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    generated = []
    monkeypatch.setattr(run_module, "_generate", lambda *a, **k: generated.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(RuntimeError, match="--no-videos"):
        evaluate(smoke_pipe, {}, ["p"], num_inference_steps=1, out_dir=tmp_path)
    assert not generated
    with pytest.raises(AssertionError):  # videos off: it goes on to generate
        evaluate(smoke_pipe, {}, ["p"], num_inference_steps=1, out_dir=tmp_path, videos=False, progress=False)
    assert generated


@pytest.mark.slow
def test_evaluate_with_compiled_blocks_compiles_only_in_the_warm_ups(smoke_pipe, fallback, monkeypatch):
    """compile: the transformer's repeated blocks are compiled before anything runs; every frame is
    compiled in a warm-up generation (dense, FullAttention, AdaSpa's dense, search and sparse
    phases), none in a timed one; FullAttention stays exact; a short warm-up is refused first."""
    import torch._dynamo
    import torch._dynamo.testing

    from adaspa import AdaSpaConfig
    from pipelines import FullAttention
    from sparse_vdit.cli.evaluation import run as run_module

    methods = {"full": FullAttention(), "adaspa": {"s=0.5": AdaSpaConfig(
        0.5, block_size=16, tiers=False, warmup_steps=1, search_steps=(1, 2), schedule_steps=None)}}
    with pytest.raises(ValueError, match="full-length warm-up"):
        evaluate(smoke_pipe, methods, ["a red circle moves right"], num_inference_steps=4, warmup=2,
                 compile=True, progress=False, **SMOKE_CALL)
    counter = torch._dynamo.testing.CompileCounter()
    compiled_in = []  # (generation kind, frames compiled during it)
    seen = set()
    real = run_module._generate

    def counting(pipe, metered, *args):
        before = counter.frame_count
        result = real(pipe, metered, *args)
        kind = type(metered.method).__name__ if metered is not None else "dense"
        compiled_in.append(("warm-up" if kind not in seen else "timed", kind, counter.frame_count - before))
        seen.add(kind)
        return result

    monkeypatch.setattr(run_module, "_generate", counting)
    torch._dynamo.reset()
    try:
        report = evaluate(smoke_pipe, methods, ["a red circle moves right"], num_inference_steps=4, warmup=True,
                          compile=counter, progress=False, **SMOKE_CALL)
    finally:
        torch._dynamo.reset()
        for module in smoke_pipe.transformer.modules():  # back to eager for the tests after this one
            module._compiled_call_impl = None
    assert counter.frame_count > 0, "compile=backend compiled nothing"
    assert [c for c in compiled_in if c[0] == "timed" and c[2]] == [], compiled_in
    assert [c for c in compiled_in if c[0] == "warm-up" and c[2]], compiled_in
    full = next(r for r in report.rows if r.method == "full")
    assert full.psnr == float("inf") or full.psnr > 80, full.psnr


def test_eval_passes_the_cost_source_to_the_plan_search(smoke_pipe, monkeypatch):
    from sparse_vdit.cli.evaluation import methods as methods_module
    from search import run as search_run

    seen = []
    monkeypatch.setattr(search_run, "search_plan", lambda *a, **k: seen.append(k["cost"]) or "plan")
    out = methods_module.build_methods(smoke_pipe, ["plan"], block_size=16, epsilons=[0.1, 0.2], search_prompts=["p"],
                                       num_inference_steps=2, cost="flops", **SMOKE_CALL)
    assert out == {"plan": {"eps=0.1": "plan", "eps=0.2": "plan"}} and seen == ["flops", "flops"]


def test_cpu_times_are_not_shown_as_speedups(tmp_path, monkeypatch):
    from sparse_vdit.cli.evaluation import plots

    rows = [_row("dense", "", math.inf, 1.0, 2.0), _row("plan", "eps=0.1", 20.0, 0.5, 1.0),
            _row("plan", "eps=0.2", 18.0, 0.4, 0.9)]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: figures.append(fig) or Path(path))
    for device, shown in (("cpu", False), ("cuda:0", True)):
        report = EvalReport(rows, meta={"device": device})
        table = report.table()
        assert ("2.00x" in table) is shown and ("n/a (CPU)" in table) is not shown
        plots.plot_psnr_speedup(report, tmp_path / "p.png")
        labels = [ax.get_xlabel() for ax in figures[-1].axes]
        assert any("speedup" in label for label in labels) is shown
        assert ("no speedup is plotted" in figures[-1]._suptitle.get_text()) is not shown


def test_side_by_side_panels_are_scaled_up_and_named():
    from pipelines.videos import LABEL_HEIGHT, side_by_side

    gen = torch.Generator().manual_seed(0)
    dense, method = torch.rand(2, 3, 3, 32, 48, generator=gen).unbind(0)  # [F, C, H, W]
    frames = side_by_side(dense, method, label="plan eps=0.3")
    assert frames.shape == (3, LABEL_HEIGHT + 8 * 32, 3 * 8 * 48, 3) and frames.dtype == torch.uint8
    panels = frames[:, LABEL_HEIGHT:].float() / 255
    want = dense.permute(0, 2, 3, 1).repeat_interleave(8, 1).repeat_interleave(8, 2)
    assert torch.allclose(panels[:, :, : 8 * 48], want, atol=1 / 255)
    header = frames[0, :LABEL_HEIGHT]
    for third in header.chunk(3, dim=1):
        assert third.max() > 200, "each panel has its name written above it"


NEW_METHOD = '''
from sparse_vdit.cli.evaluation.methods import EvaluatedMethod
from sparse_vdit.static_methods import FullAttention


class HalfDense(FullAttention):
    def __init__(self, share):
        self.share = share


METHOD = EvaluatedMethod(
    name="halfdense", rank=9, settings="shares", defaults=(0.5,), kind=float, help="share of dense heads",
    label=lambda share: f"share={share:g}", build=lambda share, context: HalfDense(share), baseline=True,
    why_below_baseline="it is a test", exports={"HalfDense": __name__},
)
'''


def test_a_new_method_is_one_file(tmp_path, monkeypatch):
    """One file in the methods folder: the registry, build_methods, the eval options, the report's
    baselines and the public face all see it."""
    import sparse_vdit
    from sparse_vdit.cli.evaluation import methods as registry_module
    from sparse_vdit.cli import _build_parser

    (tmp_path / "halfdense.py").write_text(NEW_METHOD)
    monkeypatch.setattr(registry_module, "__path__", [*registry_module.__path__, str(tmp_path)])
    registry_module.registry.cache_clear()
    try:
        assert registry_module.method_names()[-1] == "halfdense" and "halfdense" in registry_module.baseline_names()
        built = registry_module.build_methods(None, ["halfdense"], block_size=16, num_inference_steps=1, shares=[0.25])
        method = built["halfdense"]["share=0.25"]
        assert type(method).__name__ == "HalfDense" and method.share == 0.25
        assert sparse_vdit.HalfDense is type(method)
        eval_parser = next(a for a in _build_parser()._actions if a.dest == "command").choices["eval"]
        args = eval_parser.parse_args(["--methods", "plan,halfdense", "--shares", "0.1,0.2"])
        assert args.methods == ["plan", "halfdense"] and args.shares == [0.1, 0.2]
        report = EvalReport([_row("dense", "", math.inf, 1.0, 2.0), _row("plan", "eps=0.1", 18.0, 0.5, 1.0),
                             _row("halfdense", "share=0.5", 25.0, 0.5, 1.0)])
        assert report.findings()[0].startswith("plan (eps=0.1) falls below the baseline halfdense (share=0.5)")
    finally:
        registry_module.registry.cache_clear()
