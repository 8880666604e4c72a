"""Evaluation of sparse attention methods against dense: fidelity, attention computed, latency.

    from pipelines.evaluation import evaluate, build_methods
    methods = build_methods(pipe, ["plan", "adaspa", "svg", "window"], block_size=128, num_inference_steps=50,
                            search_prompts=["a dog runs on the beach"], height=480, width=832, num_frames=81)
    report = evaluate(pipe, methods, ["A cat walks on the grass"], seeds=[0, 1], num_inference_steps=50,
                      out_dir="eval", height=480, width=832, num_frames=81)
    print(report.table()); report.to_csv("eval.csv")

Modules: ``run`` (``evaluate``), ``methods`` (the compared methods by name), ``metrics`` (PSNR,
SSIM), ``metering`` (attention density per call, step clock), ``report`` (rows, summary, CSV,
JSON, findings), ``videos`` (side-by-side mp4s), ``plots`` and ``maps`` (matplotlib, optional),
``command`` (``sparse-vdit eval``).
"""

from pipelines.evaluation.metering import MeteredMethod, MeterReading, StepClock, computed_fraction
from pipelines.evaluation.methods import METHOD_NAMES, build_methods, parse_methods
from pipelines.evaluation.metrics import frame_psnr, psnr_quality, video_psnr, video_ssim
from pipelines.evaluation.report import EvalReport, EvalRow, EvalSummary
from pipelines.evaluation.run import evaluate, method_settings

__all__ = [
    "evaluate", "method_settings", "build_methods", "parse_methods", "METHOD_NAMES",
    "EvalReport", "EvalRow", "EvalSummary",
    "MeteredMethod", "MeterReading", "StepClock", "computed_fraction",
    "frame_psnr", "video_psnr", "video_ssim", "psnr_quality",
]
