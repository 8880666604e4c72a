"""Evaluation of sparse attention methods against dense: fidelity, attention computed, latency.

    from sparse_vdit.cli.evaluation import evaluate, build_methods
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

from kernels.helpers import lazy_exports

# Loaded on first use: the eval command's parser imports the registry without torch.
_EXPORTS = {
    "evaluate": "sparse_vdit.cli.evaluation.run", "method_settings": "sparse_vdit.cli.evaluation.run",
    "build_methods": "sparse_vdit.cli.evaluation.methods", "parse_methods": "sparse_vdit.cli.evaluation.methods",
    "METHOD_NAMES": "sparse_vdit.cli.evaluation.methods",
    "EvalReport": "sparse_vdit.cli.evaluation.report", "EvalRow": "sparse_vdit.cli.evaluation.report",
    "EvalSummary": "sparse_vdit.cli.evaluation.report",
    "MeteredMethod": "sparse_vdit.cli.evaluation.metering", "MeterReading": "sparse_vdit.cli.evaluation.metering",
    "StepClock": "sparse_vdit.cli.evaluation.metering", "computed_fraction": "sparse_vdit.cli.evaluation.metering",
    "frame_psnr": "sparse_vdit.cli.evaluation.metrics", "video_psnr": "sparse_vdit.cli.evaluation.metrics",
    "video_ssim": "sparse_vdit.cli.evaluation.metrics", "psnr_quality": "sparse_vdit.cli.evaluation.metrics",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
