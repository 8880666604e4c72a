"""Plots of an evaluation, with matplotlib when it is installed (``pip install 'sparse-vdit[plot]'``).

- ``plot_psnr_speedup``: PSNR against the measured speedup and against the attention density, one
  curve per method over its settings (epsilons, sparsities, window sizes), the dense reference at
  (1x, 1.0).
- ``plot_attention_maps``: for a plan, a few heads' block attention maps (log scale, from a dense
  generation) with the blocks of the mode the plan gave each head outlined.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sparse_vdit.cli.evaluation.report import DENSE, EvalReport

__all__ = ["PLOT_NOTE", "plots_available", "plot_psnr_speedup", "plot_attention_maps", "write_plots"]

PLOT_NOTE = "plots need matplotlib: pip install 'sparse-vdit[plot]'"


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


CPU_NOTE = "CPU run: times are the PyTorch fallback's, so no speedup is plotted; density is what a GPU would save"


def plot_psnr_speedup(report: EvalReport, path: str | Path) -> Path:
    """Two panels: PSNR vs speedup (denoising time), PSNR vs attention density; on the CPU only the
    density panel (the fallback's times are no speedup). Infinite PSNR (a method identical to
    dense) is drawn at the top of the axis. Setting labels alternate above and below their points
    so neighbours do not overlap."""
    plt = _pyplot()
    summary = [s for s in report.summary() if s.method != DENSE]
    finite = [s.psnr for s in summary if math.isfinite(s.psnr)]
    top = (max(finite) if finite else 40.0) + 5.0
    panels = ["density"] if report.on_cpu else ["speedup", "density"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    axes = dict(zip(panels, axes[0]))
    for method in dict.fromkeys(s.method for s in summary):
        points = sorted((s for s in summary if s.method == method), key=lambda s: s.density)
        psnr = [s.psnr if math.isfinite(s.psnr) else top for s in points]
        for panel, ax in axes.items():
            x = [getattr(s, panel) for s in points]
            ax.plot(x, psnr, marker="o", label=method)
            for i, (xi, yi, s) in enumerate(zip(x, psnr, points)):
                ax.annotate(s.setting, (xi, yi), fontsize=7, xytext=(4, 5 if i % 2 == 0 else -11),
                            textcoords="offset points")
    if "speedup" in axes:
        axes["speedup"].axvline(1.0, color="grey", lw=0.8, ls="--")
        axes["speedup"].set(xlabel="speedup over dense (denoising time)", ylabel="PSNR vs dense (dB)")
    axes["density"].set(xlabel="attention density (fraction computed)", ylabel="PSNR vs dense (dB)")
    axes["density"].invert_xaxis()
    notes = [n for n in (report.meta.get("note"), CPU_NOTE if report.on_cpu else None) if n]
    fig.suptitle("\n".join([str(report.meta.get("model", "")), *notes]), fontsize=9)
    for ax in axes.values():
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_attention_maps(recorder, plan, path: str | Path, *, num_steps: int, heads: int = 4) -> Path:
    """A grid: a row per recorded layer, ``heads`` heads each; block attention mass (log10) with
    the blocks of the head's mode in the plan (at the recorded step) outlined."""
    from sparse_vdit.modes import mode_block_map

    plt = _pyplot()
    layers = sorted(recorder.maps)
    modes = plan.modes_at(recorder.step, num_steps)
    n = min(heads, recorder.maps[layers[0]].shape[0])
    fig, axes = plt.subplots(len(layers), n, figsize=(2.6 * n, 2.6 * len(layers)), squeeze=False)
    for row, layer in enumerate(layers):
        for h in range(n):
            ax = axes[row][h]
            mass = recorder.maps[layer][h]
            ax.imshow(torch.log10(mass.clamp_min(1e-6)).numpy(), cmap="magma", interpolation="nearest")
            blocks = mode_block_map(modes[layer][h], recorder.token_layout, recorder.block_size).float()
            if 0 < float(blocks.mean()) < 1:
                ax.contour(blocks.numpy(), levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(f"layer {layer} head {h}\n{modes[layer][h]}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"block attention mass (log10, dense run, step {recorder.step}); outline: the plan's mode", fontsize=9)
    return _save(plt, fig, path)


def write_plots(report: EvalReport, methods: dict, pipe, out_dir: str | Path, *, prompt: str, seed: int,
                num_inference_steps: int, **call_kwargs) -> list[str]:
    """Write ``psnr_speedup.png`` and, when a plan is among ``methods`` (``{name: {setting: method}}``),
    ``attention_maps.png`` (one extra dense generation records the maps). Returns one line per file
    written, or the one-line ``PLOT_NOTE`` when matplotlib is not installed."""
    if not plots_available():
        return [PLOT_NOTE]
    out = Path(out_dir)
    lines = [f"plot: {plot_psnr_speedup(report, out / 'psnr_speedup.png')}"]
    plans = list(methods.get("plan", {}).values())
    if plans:
        from sparse_vdit.cli.evaluation.maps import record_attention_maps

        plan = plans[-1]  # the sparsest setting shows the most modes
        layers = sorted({0, plan.model.num_layers // 2, plan.model.num_layers - 1})
        step = num_inference_steps // 2
        recorder = record_attention_maps(pipe, prompt, seed, step=step, layers=layers, block_size=plan.block_size,
                                         num_inference_steps=num_inference_steps, **call_kwargs)
        path = plot_attention_maps(recorder, plan, out / "attention_maps.png", num_steps=num_inference_steps)
        lines.append(f"plot: {path}")
    return lines
