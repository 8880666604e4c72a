"""The PSNR-against-speedup plot: settings that land on one point keep readable labels, and a CPU
run plots no speedup (its times are the PyTorch fallback's)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from sparse_vdit.cli.evaluation import plots  # noqa: E402
from sparse_vdit.cli.evaluation.report import EvalReport, EvalRow  # noqa: E402


def _row(method: str, setting: str, psnr: float, density: float, denoise_s: float) -> EvalRow:
    return EvalRow(method=method, setting=setting, prompt="p", seed=0, psnr=psnr, ssim=0.9, density=density, scan=0.0,
                   total_s=denoise_s, denoise_s=denoise_s, transformer_s=denoise_s)


def _report(device: str) -> EvalReport:
    rows = [_row("dense", "", float("inf"), 1.0, 1.5),
            # two settings of one baseline that give the same layout: the same point (RESULTS.md's svg rows 1 and 2)
            _row("svg", "rows=1", 33.1, 0.341, 2.6), _row("svg", "rows=2", 33.1, 0.341, 2.6),
            _row("plan", "eps=0.3", 24.6, 0.239, 1.03), _row("plan", "eps=0.5", 24.4, 0.169, 0.87)]
    return EvalReport(rows=rows, meta={"device": device, "model": "proxy"})


@pytest.fixture
def saved(monkeypatch):
    figures = []

    def keep(plt, fig, path):
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_labels_of_one_point_do_not_overlap(saved, tmp_path):
    plots.plot_psnr_speedup(_report("cuda:0"), tmp_path / "p.png")
    (fig,) = saved
    assert len(fig.axes) == 2  # speedup and density
    for ax in fig.axes:
        offsets = {text.get_text(): text.xyann for text in ax.texts}
        assert set(offsets) == {"rows=1", "rows=2", "eps=0.3", "eps=0.5"}
        assert offsets["rows=1"] != offsets["rows=2"]  # same point, labels apart
        assert offsets["rows=1"][1] * offsets["rows=2"][1] < 0  # one above, one below


def test_a_cpu_run_plots_density_only(saved, tmp_path):
    plots.plot_psnr_speedup(_report("cpu"), tmp_path / "p.png")
    (fig,) = saved
    (ax,) = [a for a in fig.axes if a.get_xlabel()]
    assert ax.get_xlabel().startswith("attention density")
    assert plots.CPU_NOTE in fig._suptitle.get_text()
